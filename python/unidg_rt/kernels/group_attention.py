"""Fused group-bias attention: ``softmax(q kᵀ·scale + T[h, g_q, g_k]) v`` without an N×N bias.

A FlashAttention-2 style forward kernel (online softmax, fp32 accumulation). Each program
owns one ``BLOCK_M`` block of queries of one (batch, head); it loads the query group ids
once, then per ``BLOCK_N`` key block gathers ``T[h, g_q, g_k]`` straight from the small
``[G, G]`` table (a ``BLOCK_M × BLOCK_N`` gather that hits L1/L2 — the table is a few
hundred bytes). Memory traffic is that of plain attention plus ``N`` int32 group ids.

Semantics (same as :func:`unidg_rt.models.attention.reference_attention`):

- ``-inf`` table entries exclude those keys exactly. A query row whose every key is
  ``-inf`` has no defined softmax; the kernel returns NaN there (as SDPA with an all-``-inf``
  mask row does) — callers must not build such tables.
- Group ids outside ``[0, G)`` are not read from memory: the bias becomes NaN, so the
  affected rows come out NaN — loud, and no out-of-bounds read, and no host sync to check.

On GPU the kernel is compiled by Triton; on CPU it runs under Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which is how CI tests it.
Interpreter caveats (triton 3.9): bf16 dot operands are upcast first (its ``create_dot``
multiplies the raw uint16 bits), and its fp32→bf16 casts truncate instead of rounding to
nearest-even, so interpreted bf16 results sit up to one bf16 ulp off the GPU's.
"""

from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

from unidg_rt.errors import BackendUnavailableError, InvalidInputError
from unidg_rt.kernels import interpreter_enabled

logger = logging.getLogger(__name__)

__all__ = ["triton_group_attention"]

_LOG2E = 1.4426950408889634
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256  # the q/acc tiles live in registers; beyond this they spill badly


@triton.jit
def _group_attn_fwd(
    Q,
    K,
    V,
    Out,
    Groups,
    Table,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_on,
    stride_gb,
    stride_th,
    num_heads,
    seq_len,
    head_dim,
    num_groups,
    qk_scale,  # softmax scale · log2(e): the kernel works in base 2 (exp2 is one MUFU op)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,  # upcast dot operands (interpreter cannot multiply bf16, see wrapper)
    INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)  # int64: b·stride overflows int32 for big batches
    h = (pid_bh % num_heads).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)  # BLOCK_D is D rounded up to a power of two; mask the tail
    m_valid = offs_m < seq_len
    d_valid = offs_d < head_dim

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if DOT_FP32:
        q = q.to(tl.float32)

    g_base = Groups + b * stride_gb
    g_q = tl.load(g_base + offs_m, mask=m_valid, other=0)  # [BLOCK_M] int32
    q_group_ok = (g_q >= 0) & (g_q < num_groups)
    t_rows = Table + h * stride_th + g_q * num_groups  # [BLOCK_M] pointers to T[h, g_q, :]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max (base-2 logits)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for start_n in range(0, seq_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < seq_len

        # K loaded transposed ([BLOCK_D, BLOCK_N]) so q @ kᵀ is a plain dot
        k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]
        k = tl.load(k_ptrs, mask=d_valid[:, None] & n_valid[None, :], other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]

        g_k = tl.load(g_base + offs_n, mask=n_valid, other=0)  # [BLOCK_N]
        k_group_ok = (g_k >= 0) & (g_k < num_groups)
        bias = tl.load(
            t_rows[:, None] + g_k[None, :],
            mask=q_group_ok[:, None] & k_group_ok[None, :],
            other=float("nan"),  # bad group id -> NaN row instead of an out-of-bounds read
        )
        s = s + bias * 1.4426950408889634  # log2(e)
        s = tl.where(n_valid[None, :], s, float("-inf"))  # keys past the end take no weight

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # While a row has seen only -inf logits, m_new is -inf and (-inf) - (-inf) is NaN;
        # subtracting 0 instead makes every exp2 below exactly 0 and keeps the row clean.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)

        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        v = tl.load(v_ptrs, mask=n_valid[:, None] & d_valid[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        p_v = p.to(v.dtype)  # P in the input precision, as FlashAttention does (tensor cores)
        if DOT_FP32:
            p_v = p_v.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=INPUT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]  # l_i == 0 only for all -inf rows: NaN, documented as undefined
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])


def _check_inputs(q, k, v, token_groups, group_bias) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("token_groups", token_groups), ("group_bias", group_bias)):
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.ndim != 4:
        raise InvalidInputError(f"q must be [B, H, N, D] (SDPA layout), got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise InvalidInputError(
            f"q, k, v must have the same shape [B, H, N, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype not in _FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise InvalidInputError(
            f"q, k, v must share one dtype among float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    batch, heads, seq_len, head_dim = q.shape
    if head_dim > _MAX_HEAD_DIM:
        raise InvalidInputError(f"head dim {head_dim} > {_MAX_HEAD_DIM} is not supported by the kernel")
    devices = {t.device for t in (q, k, v, token_groups, group_bias)}
    if len(devices) != 1:
        raise InvalidInputError(
            f"q, k, v, token_groups, group_bias must be on one device, got {sorted(map(str, devices))}"
        )
    if (
        token_groups.dtype.is_floating_point
        or token_groups.dtype.is_complex
        or token_groups.dtype == torch.bool
    ):
        raise InvalidInputError(f"token_groups must be an integer tensor, got {token_groups.dtype}")
    if token_groups.ndim == 1:
        ok = token_groups.shape[0] == seq_len
    elif token_groups.ndim == 2:
        ok = token_groups.shape[0] in (1, batch) and token_groups.shape[1] == seq_len
    else:
        ok = False
    if not ok:
        raise InvalidInputError(
            f"token_groups must be [N] or [B, N] with N={seq_len}, B={batch}; got {tuple(token_groups.shape)}"
        )
    if not group_bias.dtype.is_floating_point:
        raise InvalidInputError(f"group_bias must be a float tensor, got {group_bias.dtype}")
    if group_bias.ndim not in (2, 3) or group_bias.shape[-1] != group_bias.shape[-2]:
        raise InvalidInputError(f"group_bias must be [G, G] or [H, G, G], got {tuple(group_bias.shape)}")
    if group_bias.ndim == 3 and group_bias.shape[0] not in (1, heads):
        raise InvalidInputError(f"group_bias has {group_bias.shape[0]} heads, expected 1 or {heads}")
    if group_bias.shape[-1] == 0:
        raise InvalidInputError("group_bias must have at least one group")


def _check_device(device: torch.device) -> None:
    interpreted = not isinstance(_group_attn_fwd, triton.runtime.JITFunction)
    if device.type == "cuda":
        if interpreted:
            logger.debug("Triton interpreter active: CUDA tensors are copied to the host per launch")
        return
    if device.type == "cpu" and interpreted:
        return
    if device.type == "cpu" and interpreter_enabled():
        raise BackendUnavailableError(
            "TRITON_INTERPRET=1 was set after unidg_rt.kernels.group_attention was imported; "
            "triton decides GPU vs interpreter at import, so set it before importing"
        )
    raise BackendUnavailableError(
        f"triton_group_attention needs CUDA tensors (got device {device}); on CPU run with "
        "TRITON_INTERPRET=1 (slow, for tests) or use attention(..., form='reference'/'fold')"
    )


def _block_sizes(device: torch.device, dtype: torch.dtype, block_d: int) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` — fixed, no autotune (predictable first call)."""
    if device.type != "cuda":
        # Interpreter: every tl op is one numpy call per program, so cost ≈ programs × ops;
        # 32×32 keeps small-N tests at a few programs while still exercising the tail masks.
        return 32, 32, 1, 1
    if dtype == torch.float32:
        # ieee fp32 tiles are twice as wide: one stage keeps shared memory at ~80 KB for D=128,
        # under sm86's 100 KB limit; D=256 takes 32×32 tiles (~70 KB) (AOT-checked, triton 3.9).
        return (64, 64, 4, 1) if block_d <= 128 else (32, 32, 4, 1)
    # bf16/fp16, D ≤ 128: 64×64 tiles, 4 warps, double-buffered K/V (~48-56 KB shared), no
    # spills; D = 256 doubles the fp32 accumulator, so spread it over 8 warps.
    return 64, 64, 4 if block_d <= 128 else 8, 2


def triton_group_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_groups: torch.Tensor,
    group_bias: torch.Tensor,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ·scale + T[h, g_q, g_k]) v`` with the bias gathered in-kernel.

    Args:
        q, k, v: ``[B, H, N, D]`` (SDPA layout), one dtype among fp16/bf16/fp32; any strides.
        token_groups: int ``[N]`` or ``[B, N]`` group id per token, each in ``[0, G)``.
        group_bias: float ``[G, G]`` or ``[H, G, G]`` table ``T`` (used in fp32); may hold ``-inf``.
        scale: softmax scale; default ``1/√D``.
        block_m, block_n: tile sizes override (powers of two ≥ 16), for tests and tuning.

    Returns:
        ``[B, H, N, D]`` in ``q``'s dtype (accumulation is fp32).
    """
    _check_inputs(q, k, v, token_groups, group_bias)
    _check_device(q.device)
    batch, heads, seq_len, head_dim = q.shape
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.numel() == 0:
        return out

    # The kernel assumes a unit stride on D only; .contiguous() is a no-op for the usual
    # SDPA-layout views whose last dim is already dense.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    groups = token_groups.to(torch.int32)
    if groups.ndim == 1:
        groups = groups[None]  # [N] -> [1, N]
    groups = groups.contiguous()
    stride_gb = 0 if groups.shape[0] == 1 else groups.stride(0)  # one row shared by every batch
    table = group_bias.to(torch.float32)
    if table.ndim == 2:
        table = table[None]  # [G, G] -> [1, G, G]
    table = table.contiguous()
    stride_th = 0 if table.shape[0] == 1 else table.stride(0)  # one table shared by every head

    block_d = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs every dim ≥ 16
    bm, bn, num_warps, num_stages = _block_sizes(q.device, q.dtype, block_d)
    bm, bn = block_m or bm, block_n or bn
    for name, value in (("block_m", bm), ("block_n", bn)):
        if value < 16 or value & (value - 1):
            raise InvalidInputError(f"{name} must be a power of two >= 16, got {value}")
    interpreted = not isinstance(_group_attn_fwd, triton.runtime.JITFunction)
    # Triton's interpreter multiplies bf16 dot operands as raw uint16 bits (triton 3.9,
    # interpreter.py create_dot), so under it bf16 tiles are upcast first (values unchanged).
    dot_fp32 = interpreted and q.dtype == torch.bfloat16
    # fp32 inputs mean "exact": without "ieee" tl.dot silently uses TF32 on Ampere+.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"

    grid = (triton.cdiv(seq_len, bm), batch * heads)
    _group_attn_fwd[grid](
        q,
        k,
        v,
        out,
        groups,
        table,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        stride_gb,
        stride_th,
        heads,
        seq_len,
        head_dim,
        table.shape[-1],
        float(scale) * _LOG2E,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=block_d,
        DOT_FP32=dot_fp32,
        INPUT_PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
