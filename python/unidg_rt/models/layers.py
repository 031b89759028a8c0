"""FLUX MM-DiT building blocks, flat and numerically identical to diffusers' Flux modules.

Module and parameter names equal diffusers' so a diffusers checkpoint loads unchanged.
Shapes: B batch, N tokens (text first, then image), C = inner dim, H heads, D head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unidg_rt.models.attention import attention, selected_form


# --------------------------------------------------------------------------- embeddings
def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, ``cos`` first (diffusers ``Timesteps(flip_sin_to_cos=True, shift=0)``)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t[:, None].float() * torch.exp(exponent)[None, :]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, dim]


class MLPEmbedder(nn.Module):
    """linear_1 → SiLU → linear_2 (diffusers TimestepEmbedding / PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbed(nn.Module):
    """temb = MLP(t) [+ MLP(guidance)] + MLP(pooled text). Keys: ``time_text_embed.*``."""

    def __init__(self, dim: int, pooled_dim: int, guidance: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        self.guidance_embedder = MLPEmbedder(256, dim) if guidance else None
        self.text_embedder = MLPEmbedder(pooled_dim, dim)

    def forward(self, timestep, guidance, pooled):
        dtype = pooled.dtype
        emb = self.timestep_embedder(timestep_embedding(timestep).to(dtype))  # [B, C]
        if self.guidance_embedder is not None and guidance is not None:
            emb = emb + self.guidance_embedder(timestep_embedding(guidance).to(dtype))
        return emb + self.text_embedder(pooled)


def rope_frequencies(ids: torch.Tensor, axes_dim, theta: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE over (t, h, w) ids ``[N, 3]`` → ``cos, sin: [N, D]`` (interleaved pairs, fp32).

    Frequencies are computed in float64 like diffusers (float32 on MPS, which has no f64)."""
    f_dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    pos = ids.float()
    cos_out, sin_out = [], []
    for i, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=f_dtype, device=ids.device) / dim))  # [d/2]
        angles = torch.outer(pos[:, i].to(f_dtype), freqs)  # [N, d/2]
        cos_out.append(angles.cos().repeat_interleave(2, dim=1).float())  # [N, d]
        sin_out.append(angles.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos_out, dim=-1), torch.cat(sin_out, dim=-1)  # [N, D]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, N, H, D]; rotate interleaved (real, imag) pairs."""
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)  # [B, N, H, D/2] each
    x_rot = torch.stack([-x_imag, x_real], dim=-1).flatten(3)  # [B, N, H, D]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # [1, N, 1, D]
    return (x.float() * cos + x_rot.float() * sin).to(x.dtype)


# --------------------------------------------------------------------------- norms
class AdaLayerNormZero(nn.Module):
    """6-way modulation: returns norm(x)·(1+scale_msa)+shift_msa and the other five vectors."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x, emb):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(F.silu(emb)).chunk(
            6, dim=1
        )
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroSingle(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x, emb):
        shift, scale, gate = self.linear(F.silu(emb)).chunk(3, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None], gate


class AdaLayerNormContinuous(nn.Module):
    """Final norm; diffusers' order is (scale, shift) — BFL's is (shift, scale), see convert.py."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x, emb):
        scale, shift = self.linear(F.silu(emb).to(x.dtype)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


# --------------------------------------------------------------------------- MLP / attention
class GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """Keys ``net.0.proj`` / ``net.2`` (``net.1`` is diffusers' Dropout, kept for indices)."""

    def __init__(self, dim: int, mult: float = 4.0):
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.ModuleList([GELUProj(dim, hidden), nn.Dropout(0.0), nn.Linear(hidden, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class FluxAttention(nn.Module):
    """Joint attention. With ``context=True`` (double blocks) the text stream has its own
    projections (``add_*_proj``) and output (``to_add_out``); single blocks have no ``to_out``."""

    def __init__(self, dim: int, heads: int, head_dim: int, context: bool, eps: float = 1e-6):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.context = context
        if context:
            self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
            self.norm_added_q = nn.RMSNorm(head_dim, eps=eps)
            self.norm_added_k = nn.RMSNorm(head_dim, eps=eps)
            self.add_q_proj = nn.Linear(dim, inner)
            self.add_k_proj = nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.to_add_out = nn.Linear(inner, dim)
        # per-model settings, set through FluxTransformer.set_attention_form / set_fused_ops:
        self.form = "reference"  # registry name (models.attention); attention_form() overrides it
        self.fused_ops = False  # one Triton RMSNorm+RoPE kernel instead of RMSNorm then apply_rope

    def _heads(self, x):
        return x.unflatten(-1, (-1, self.head_dim))  # [B, N, C] -> [B, N, H, D]

    # ------------------------------------------------------------------ fast path (GPU)
    @torch.no_grad()
    def fuse_projections(self) -> bool:
        """Replace ``to_q/k/v`` (and ``add_*_proj``) by one concatenated GEMM each. Skipped
        when a LoRA hook sits on a projection (fuse the LoRA first). Returns whether fused."""
        if any(m._forward_hooks for m in (self.to_q, self.to_k, self.to_v)):
            return False
        self.to_qkv = _concat_linears(self.to_q, self.to_k, self.to_v)
        del self.to_q, self.to_k, self.to_v
        if self.context and not any(
            m._forward_hooks for m in (self.add_q_proj, self.add_k_proj, self.add_v_proj)
        ):
            self.to_added_qkv = _concat_linears(self.add_q_proj, self.add_k_proj, self.add_v_proj)
            del self.add_q_proj, self.add_k_proj, self.add_v_proj
        return True

    def _qkv(self, x):
        if hasattr(self, "to_qkv"):
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        return self._heads(q), self._heads(k), self._heads(v)

    def _added_qkv(self, c):
        if hasattr(self, "to_added_qkv"):
            q, k, v = self.to_added_qkv(c).chunk(3, dim=-1)
        else:
            q, k, v = self.add_q_proj(c), self.add_k_proj(c), self.add_v_proj(c)
        return self._heads(q), self._heads(k), self._heads(v)

    def _norm_rope(self, x, norm, rope, start, end):
        """RMSNorm then RoPE on tokens [start, end) — one fused kernel when enabled."""
        cos, sin = (None, None) if rope is None else (rope[0][start:end], rope[1][start:end])
        if self.fused_ops:
            from unidg_rt.kernels.fused_ops import rmsnorm_rope

            return rmsnorm_rope(x, norm.weight, cos, sin, norm.eps)
        x = norm(x)
        return x if rope is None else apply_rope(x, cos, sin)

    def forward(self, x, context=None, rope=None, token_groups=None, group_bias=None):
        q, k, v = self._qkv(x)  # [B, N_img, H, D] each (N = all tokens in single blocks)
        n_txt = 0 if context is None else context.shape[1]
        n_all = n_txt + x.shape[1]
        q = self._norm_rope(q, self.norm_q, rope, n_txt, n_all)
        k = self._norm_rope(k, self.norm_k, rope, n_txt, n_all)
        if context is not None:
            cq, ck, cv = self._added_qkv(context)
            cq = self._norm_rope(cq, self.norm_added_q, rope, 0, n_txt)
            ck = self._norm_rope(ck, self.norm_added_k, rope, 0, n_txt)
            q, k, v = torch.cat([cq, q], dim=1), torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, H, D] -> [B, H, N, D]
        out = attention(q, k, v, token_groups, group_bias, form=selected_form(self.form))
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # [B, H, N, D] -> [B, N, C]
        if context is None:
            return out
        ctx_out, img_out = out[:, :n_txt], out[:, n_txt:]
        return self.to_out[0](img_out.contiguous()), self.to_add_out(ctx_out.contiguous())


def _concat_linears(*linears: nn.Linear) -> nn.Linear:
    w = torch.cat([m.weight for m in linears], dim=0)
    fused = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
    fused.weight.copy_(w)
    fused.bias.copy_(torch.cat([m.bias for m in linears], dim=0))
    return fused.requires_grad_(False)
