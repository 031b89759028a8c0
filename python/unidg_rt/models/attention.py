"""Group-bias attention: one semantics, several forms (DESIGN §4).

``attention(q, k, v, token_groups, group_bias) = softmax(q kᵀ/√d + T[g_q, g_k]) v``

Layout everywhere here is SDPA's: ``q, k, v: [B, H, N, D]``; ``token_groups: [B, N]`` or
``[N]`` (int); ``group_bias: [G, G]`` or ``[H, G, G]`` (float). Forms:

- ``reference``: explicit N×N additive mask through SDPA — the oracle (tests, CPU).
- ``fold``: bias folding — append ``T[g_q]`` columns to Q and one-hot group columns to K,
  so any standard fused MHA computes ``q kᵀ + T[g_q, g_k]`` with no mask input. Exact for
  finite ``T``; ``-inf`` is clamped to ``FOLD_NEG`` (exp underflows to exactly 0 in fp32).
- ``triton``: the fused flash-style kernel in :mod:`unidg_rt.kernels` (no N×N).
- plain SDPA when ``group_bias`` is ``None``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unidg_rt.vocab import TORCH_FORMS

#: logit value that stands for -inf in the folded form; exp(-1e4) == 0 in fp32/bf16/fp16.
FOLD_NEG = -1.0e4
ATTENTION_FORMS = TORCH_FORMS  # the one list: unidg_rt.vocab


def _groups_2d(token_groups: torch.Tensor, batch: int) -> torch.Tensor:
    g = token_groups.long()
    if g.ndim == 1:
        g = g[None].expand(batch, -1)  # [N] -> [B, N]
    return g


def _table_3d(group_bias: torch.Tensor, heads: int) -> torch.Tensor:
    t = group_bias
    if t.ndim == 2:
        t = t[None]  # [G, G] -> [1, G, G]
    if t.shape[0] not in (1, heads):
        raise ValueError(f"group_bias has {t.shape[0]} heads, expected 1 or {heads}")
    return t


def group_bias_mask(
    token_groups: torch.Tensor, group_bias: torch.Tensor, batch: int, heads: int
) -> torch.Tensor:
    """Materialise ``B[b, h, i, j] = T[h, g[b, i], g[b, j]]`` — ``[B, H|1, N, N]``. Oracle only."""
    g = _groups_2d(token_groups, batch)  # [B, N]
    t = _table_3d(group_bias, heads)  # [H|1, G, G]
    rows = t[:, g]  # [H|1, B, N, G]
    idx = g[None, :, None, :].expand(rows.shape[0], -1, g.shape[1], -1)  # [H|1, B, N, N]
    mask = torch.gather(rows, 3, idx)  # [H|1, B, N, N]
    return mask.permute(1, 0, 2, 3)  # [B, H|1, N, N]


def reference_attention(q, k, v, token_groups=None, group_bias=None) -> torch.Tensor:
    """The oracle: explicit additive N×N bias through SDPA."""
    if group_bias is None or token_groups is None:
        return F.scaled_dot_product_attention(q, k, v)
    mask = group_bias_mask(token_groups, group_bias.to(q.dtype), q.shape[0], q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def fold_group_bias(q, k, v, token_groups, group_bias):
    """Return ``(q', k', v', scale)`` such that ``SDPA(q', k', v', scale=scale)[..., :D]`` is the
    biased attention. Head dim is padded to a multiple of 8 (fused kernels want that)."""
    b, h, _, d = q.shape
    g = _groups_2d(token_groups, b)  # [B, N]
    t = _table_3d(group_bias, h).to(torch.promote_types(q.dtype, torch.float32))
    t = torch.nan_to_num(t, neginf=FOLD_NEG).clamp_min(FOLD_NEG)
    num_groups = t.shape[-1]
    pad = (-(d + num_groups)) % 8
    # split the √d factor across both sides so fp16 never overflows (|1e4·d^¼| < 65504 for d ≤ 256)
    root = d**0.25
    q_ext = t[:, g].permute(1, 0, 2, 3) * root  # [B, H|1, N, G]
    q_ext = q_ext.expand(b, h, -1, -1).to(q.dtype)
    k_ext = F.one_hot(g, num_groups).to(k.dtype)[:, None] * root  # [B, 1, N, G]
    k_ext = k_ext.expand(b, k.shape[1], -1, -1)
    zq = q.new_zeros(b, h, q.shape[2], pad)
    zk = k.new_zeros(b, k.shape[1], k.shape[2], pad)
    q2 = torch.cat([q, q_ext, zq], dim=-1)  # [B, H, N, D+G+pad]
    k2 = torch.cat([k, k_ext, zk], dim=-1)  # [B, H, N, D+G+pad]
    v2 = F.pad(v, (0, num_groups + pad))  # [B, H, N, D+G+pad]
    return q2, k2, v2, 1.0 / math.sqrt(d)


def folded_attention(q, k, v, token_groups, group_bias) -> torch.Tensor:
    """Bias folding through plain SDPA (FlashAttention-eligible: no mask input)."""
    d = q.shape[-1]
    q2, k2, v2, scale = fold_group_bias(q, k, v, token_groups, group_bias)
    out = F.scaled_dot_product_attention(q2, k2, v2, scale=scale)  # [B, H, N, D']
    return out[..., :d]


def attention(q, k, v, token_groups=None, group_bias=None, form: str = "reference") -> torch.Tensor:
    """Dispatch to one attention form. All forms agree with ``reference`` (tested)."""
    if group_bias is None or token_groups is None or form == "sdpa":
        if form == "sdpa" and group_bias is not None:
            raise ValueError("form='sdpa' ignores group_bias; use 'reference', 'fold' or 'triton'")
        return F.scaled_dot_product_attention(q, k, v)
    if form == "reference":
        return reference_attention(q, k, v, token_groups, group_bias)
    if form == "fold":
        return folded_attention(q, k, v, token_groups, group_bias)
    if form == "triton":
        from unidg_rt.kernels.group_attention import triton_group_attention

        return triton_group_attention(q, k, v, token_groups, group_bias)
    raise ValueError(f"unknown attention form {form!r}; choose one of {ATTENTION_FORMS}")
