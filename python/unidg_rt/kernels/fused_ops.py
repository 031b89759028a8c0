"""Fused glue kernels for the FLUX block, each with its torch reference and a dispatcher.

- ``rmsnorm_rope``: per-head RMSNorm on q/k followed by FLUX's rotary embedding (diffusers
  ``apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)``: interleaved (re, im) pairs).
- ``layernorm_modulate``: ``LayerNorm(x) * (1 + scale) + shift`` (AdaLayerNormZero's body).
- ``gated_residual``: ``x + gate * y`` (the residual adds after attention / MLP).

Each op reads its input once and writes once, instead of the 3–6 elementwise passes of the
unfused torch graph. Arithmetic is fp32 inside; outputs take ``x``'s dtype. In fp32 the
kernels match the references to rounding; in bf16/fp16 the unfused diffusers graph rounds
some intermediates to the input dtype, so results differ by about one ulp of that dtype.

Dispatchers (``use_triton=None``) take the Triton kernel for CUDA tensors when triton is
usable and the torch reference otherwise — including CPU under ``TRITON_INTERPRET=1``, where
the interpreter would be orders of magnitude slower than torch. ``use_triton=True`` forces
the kernel (tests run it through the interpreter that way). Triton 3.9's interpreter
truncates fp32→bf16 casts (the GPU rounds to nearest-even): interpreted bf16 outputs can
differ from the GPU's by one bf16 ulp.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from unidg_rt.errors import BackendUnavailableError, InvalidInputError
from unidg_rt.kernels import triton_available

try:
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # references still work; the dispatchers never launch a kernel then
    triton = tl = None

    def _jit(fn):
        return fn


logger = logging.getLogger(__name__)

__all__ = [
    "rmsnorm_rope",
    "rmsnorm_rope_reference",
    "rmsnorm_rope_triton",
    "layernorm_modulate",
    "layernorm_modulate_reference",
    "layernorm_modulate_triton",
    "gated_residual",
    "gated_residual_reference",
    "gated_residual_triton",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------- kernels


@_jit
def _rmsnorm_rope_kernel(
    X,
    Out,
    W,
    Cos,
    Sin,
    stride_xb,
    stride_xn,
    stride_xh,
    seq_len,
    num_heads,
    head_dim,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program = one token, all heads: the token's cos/sin row is loaded once for H heads.
    pid = tl.program_id(0)  # = b * seq_len + n
    b = (pid // seq_len).to(tl.int64)
    n = (pid % seq_len).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < head_dim)
    row = b * stride_xb + n * stride_xn + offs_h[:, None] * stride_xh  # [BLOCK_H, 1]

    x = tl.load(X + row + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 1) / head_dim + eps)  # [BLOCK_H]
    y = x * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(W + offs_d, mask=offs_d < head_dim, other=0.0).to(tl.float32)
        y = y * w[None, :]
    # The unfused graph hands RMSNorm's output to RoPE in x's dtype; round the same way.
    y = y.to(Out.dtype.element_ty).to(tl.float32)

    if HAS_ROPE:
        # Pairs (2i, 2i+1) rotate together. Rather than reshaping the tile, load each element's
        # partner (d ^ 1) a second time (an L1 hit) and normalise it with the same rstd.
        partner = offs_d ^ 1
        xp = tl.load(X + row + partner[None, :], mask=mask, other=0.0).to(tl.float32)
        yp = xp * rstd[:, None]
        if HAS_WEIGHT:
            wp = tl.load(W + partner, mask=partner < head_dim, other=0.0).to(tl.float32)
            yp = yp * wp[None, :]
        yp = yp.to(Out.dtype.element_ty).to(tl.float32)
        rotated = tl.where((offs_d % 2 == 0)[None, :], -yp, yp)  # stack([-imag, real])
        cs_off = n * head_dim + offs_d
        cos = tl.load(Cos + cs_off, mask=offs_d < head_dim, other=0.0)
        sin = tl.load(Sin + cs_off, mask=offs_d < head_dim, other=0.0)
        y = y * cos[None, :] + rotated * sin[None, :]

    out_row = pid.to(tl.int64) * num_heads * head_dim + offs_h[:, None] * head_dim
    tl.store(Out + out_row + offs_d[None, :], y.to(Out.dtype.element_ty), mask=mask)


@_jit
def _layernorm_modulate_kernel(
    X,
    Out,
    Shift,
    Scale,
    stride_shift_b,
    stride_scale_b,
    seq_len,
    channels,
    eps,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # = b * seq_len + n over the contiguous [B·N, C] view
    b = row // seq_len
    offs = tl.arange(0, BLOCK_C)
    mask = offs < channels
    x = tl.load(X + row * channels + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / channels
    xc = tl.where(mask, x - mean, 0.0)  # two-pass variance: exact like F.layer_norm, no cancellation
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / channels + eps)
    shift = tl.load(Shift + b * stride_shift_b + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(Scale + b * stride_scale_b + offs, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * (1.0 + scale) + shift
    tl.store(Out + row * channels + offs, y.to(Out.dtype.element_ty), mask=mask)


@_jit
def _gated_residual_kernel(X, Gate, Y, Out, stride_gate_b, seq_len, channels, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // seq_len
    offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs < channels
    x = tl.load(X + row * channels + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + row * channels + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(Gate + b * stride_gate_b + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * channels + offs, (x + gate * y).to(Out.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- helpers


def _check_float(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise InvalidInputError(f"{name} must be float16/bfloat16/float32, got {t.dtype}")


def _check_same_device(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise InvalidInputError(f"tensors must be on one device, got {devices}")


def _check_batch_vector(name: str, t: torch.Tensor, batch: int, channels: int) -> None:
    _check_float(name, t)
    if t.shape != (batch, channels) or t.stride(-1) != 1:
        raise InvalidInputError(
            f"{name} must be [B, C] = [{batch}, {channels}] with unit stride on C, got "
            f"shape {tuple(t.shape)} strides {t.stride()}"
        )


def _require_triton(device: torch.device, kernel) -> None:
    if triton is None or not triton_available():
        raise BackendUnavailableError(
            "triton is not usable here (install the 'kernels' extra; on CPU set TRITON_INTERPRET=1)"
        )
    interpreted = not isinstance(kernel, triton.runtime.JITFunction)
    if device.type == "cpu" and not interpreted:
        raise BackendUnavailableError(
            "CPU tensors need Triton's interpreter, and TRITON_INTERPRET=1 must be set before "
            "unidg_rt.kernels.fused_ops is imported (triton picks GPU vs interpreter at import)"
        )
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailableError(f"Triton kernels run on CUDA (or CPU interpreter), not {device}")


def _use_triton(use_triton: bool | None, x: torch.Tensor) -> bool:
    if use_triton is None:
        return x.is_cuda and triton is not None and triton_available()
    return bool(use_triton)


def _warps(device: torch.device, block: int) -> int:
    if device.type != "cuda":
        return 1
    return 4 if block <= 2048 else 8


# --------------------------------------------------------------------------- rmsnorm + rope


def _check_rmsnorm_rope(x, weight, cos, sin) -> None:
    _check_float("x", x)
    if x.ndim != 4:
        raise InvalidInputError(f"x must be [B, N, H, D], got shape {tuple(x.shape)}")
    _, seq_len, _, head_dim = x.shape
    if weight is not None:
        _check_float("weight", weight)
        if weight.shape != (head_dim,):
            raise InvalidInputError(f"weight must be [D] = [{head_dim}], got {tuple(weight.shape)}")
    if (cos is None) != (sin is None):
        raise InvalidInputError("pass both cos and sin for RoPE, or neither")
    if cos is not None:
        _check_float("cos", cos)
        _check_float("sin", sin)
        if cos.shape != (seq_len, head_dim) or sin.shape != (seq_len, head_dim):
            raise InvalidInputError(
                f"cos and sin must be [N, D] = [{seq_len}, {head_dim}], got "
                f"{tuple(cos.shape)} and {tuple(sin.shape)}"
            )
        if head_dim % 2:
            raise InvalidInputError(f"RoPE rotates pairs: head dim must be even, got {head_dim}")
    _check_same_device(x=x, weight=weight, cos=cos, sin=sin)


def rmsnorm_rope_reference(x, weight, cos=None, sin=None, eps: float = 1e-6) -> torch.Tensor:
    """Torch reference: ``RMSNorm(x) * weight`` (fp32) then diffusers' real-valued RoPE."""
    _check_rmsnorm_rope(x, weight, cos, sin)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    y = y.to(x.dtype)
    if cos is None:
        return y
    # diffusers apply_rotary_emb(use_real=True, use_real_unbind_dim=-1, sequence_dim=1)
    y_real, y_imag = y.reshape(*y.shape[:-1], -1, 2).unbind(-1)  # [B, N, H, D/2] each
    rotated = torch.stack([-y_imag, y_real], dim=-1).flatten(3)  # [B, N, H, D]
    cos = cos.float()[None, :, None, :]  # [1, N, 1, D]
    sin = sin.float()[None, :, None, :]
    return (y.float() * cos + rotated.float() * sin).to(x.dtype)


def rmsnorm_rope_triton(x, weight, cos=None, sin=None, eps: float = 1e-6) -> torch.Tensor:
    """Triton kernel for :func:`rmsnorm_rope_reference`; returns a contiguous ``[B, N, H, D]``."""
    _check_rmsnorm_rope(x, weight, cos, sin)
    _require_triton(x.device, _rmsnorm_rope_kernel)
    batch, seq_len, heads, head_dim = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    has_rope = cos is not None
    # cos/sin are per-token tables shared by all heads; fp32 contiguous (a no-op for FLUX's).
    cos = cos.float().contiguous() if has_rope else x  # dummy pointer, never read
    sin = sin.float().contiguous() if has_rope else x
    w = weight.contiguous() if weight is not None else x  # dummy pointer, never read
    block_h = triton.next_power_of_2(heads)
    block_d = triton.next_power_of_2(head_dim)
    _rmsnorm_rope_kernel[(batch * seq_len,)](
        x,
        out,
        w,
        cos,
        sin,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        seq_len,
        heads,
        head_dim,
        float(eps),
        HAS_WEIGHT=weight is not None,
        HAS_ROPE=has_rope,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=_warps(x.device, block_h * block_d),
    )
    return out


def rmsnorm_rope(x, weight, cos=None, sin=None, eps: float = 1e-6, *, use_triton: bool | None = None):
    """Per-head RMSNorm + optional RoPE on ``x [B, N, H, D]``; ``cos, sin: [N, D]``.

    ``use_triton``: None = kernel on CUDA when triton is usable, else torch; True/False force.
    """
    if _use_triton(use_triton, x):
        return rmsnorm_rope_triton(x, weight, cos, sin, eps)
    return rmsnorm_rope_reference(x, weight, cos, sin, eps)


# --------------------------------------------------------------------------- layernorm + modulate


def _check_bnc(x) -> None:
    _check_float("x", x)
    if x.ndim != 3:
        raise InvalidInputError(f"x must be [B, N, C], got shape {tuple(x.shape)}")


def layernorm_modulate_reference(x, shift, scale, eps: float = 1e-6) -> torch.Tensor:
    """Torch reference: ``LayerNorm(no affine)(x) * (1 + scale[:, None]) + shift[:, None]`` in fp32."""
    _check_bnc(x)
    _check_batch_vector("shift", shift, x.shape[0], x.shape[2])
    _check_batch_vector("scale", scale, x.shape[0], x.shape[2])
    y = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return (y * (1.0 + scale.float()[:, None]) + shift.float()[:, None]).to(x.dtype)


def layernorm_modulate_triton(x, shift, scale, eps: float = 1e-6) -> torch.Tensor:
    """Triton kernel for :func:`layernorm_modulate_reference` (one program per token row)."""
    _check_bnc(x)
    _check_batch_vector("shift", shift, x.shape[0], x.shape[2])
    _check_batch_vector("scale", scale, x.shape[0], x.shape[2])
    _check_same_device(x=x, shift=shift, scale=scale)
    _require_triton(x.device, _layernorm_modulate_kernel)
    batch, seq_len, channels = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    # shift/scale are usually chunks of one [B, 6C] modulation tensor: read them through
    # their batch stride instead of copying.
    block_c = triton.next_power_of_2(channels)
    _layernorm_modulate_kernel[(batch * seq_len,)](
        x,
        out,
        shift,
        scale,
        shift.stride(0),
        scale.stride(0),
        seq_len,
        channels,
        float(eps),
        BLOCK_C=block_c,
        num_warps=_warps(x.device, block_c),
    )
    return out


def layernorm_modulate(x, shift, scale, eps: float = 1e-6, *, use_triton: bool | None = None):
    """``LayerNorm(x) * (1 + scale) + shift`` for ``x [B, N, C]``, ``shift, scale [B, C]``."""
    if _use_triton(use_triton, x):
        return layernorm_modulate_triton(x, shift, scale, eps)
    return layernorm_modulate_reference(x, shift, scale, eps)


# --------------------------------------------------------------------------- gated residual


def _check_gated(x, gate, y) -> None:
    _check_bnc(x)
    _check_float("y", y)
    if y.shape != x.shape:
        raise InvalidInputError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    _check_batch_vector("gate", gate, x.shape[0], x.shape[2])


def gated_residual_reference(x, gate, y) -> torch.Tensor:
    """Torch reference: ``x + gate[:, None] * y`` in fp32, returned in ``x``'s dtype."""
    _check_gated(x, gate, y)
    return (x.float() + gate.float()[:, None] * y.float()).to(x.dtype)


def gated_residual_triton(x, gate, y) -> torch.Tensor:
    """Triton kernel for :func:`gated_residual_reference`."""
    _check_gated(x, gate, y)
    _check_same_device(x=x, gate=gate, y=y)
    _require_triton(x.device, _gated_residual_kernel)
    batch, seq_len, channels = x.shape
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    block_c = min(1024, triton.next_power_of_2(channels))
    grid = (batch * seq_len, triton.cdiv(channels, block_c))
    _gated_residual_kernel[grid](
        x,
        gate,
        y,
        out,
        gate.stride(0),
        seq_len,
        channels,
        BLOCK_C=block_c,
        num_warps=_warps(x.device, block_c),
    )
    return out


def gated_residual(x, gate, y, *, use_triton: bool | None = None) -> torch.Tensor:
    """``x + gate[:, None] * y`` for ``x, y [B, N, C]``, ``gate [B, C]``."""
    if _use_triton(use_triton, x):
        return gated_residual_triton(x, gate, y)
    return gated_residual_reference(x, gate, y)
