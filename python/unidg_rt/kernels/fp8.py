"""FP8 (E4M3) linears for the torch fast path (Hopper/Ada; numerics also run on CPU).

Weights are quantised once at load with a per-output-channel (row-wise) scale; activations
get a dynamic per-token (row-wise) scale, or a static per-tensor scale from calibration
(:func:`unidg_rt.quant.fp8.calibrated_act_scales` derives them from the inputs ``unidg-rt
calibrate`` captured, for ``quantize_linears_fp8(model, act_scales=...)``).
The GEMM is ``torch._scaled_mm`` (fp8 × fp8 → bf16/fp32).
``_scaled_mm`` wants K and N multiples of 16: other layers stay in high precision.
"""

from __future__ import annotations

import fnmatch
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
#: kept in high precision by default: tiny/sensitive layers (embedders, modulation, output)
DEFAULT_SKIP = (
    "x_embedder",
    "context_embedder",
    "time_text_embed.*",
    "norm_out.*",
    "proj_out",
    "*norm*.linear",
)


def quantize_rowwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` → ``(w_fp8 [N, K], scale [N, 1] fp32)`` with ``w ≈ w_fp8 * scale``."""
    amax = w.detach().abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12)
    scale = amax / E4M3_MAX
    return (w.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class FP8Linear(nn.Module):
    """Drop-in for ``nn.Linear`` with an FP8 weight; output in ``out_dtype`` (input dtype)."""

    def __init__(self, linear: nn.Linear, act_scale: float | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w8, ws = quantize_rowwise(linear.weight)
        self.register_buffer("weight_fp8", w8)
        self.register_buffer("weight_scale", ws.t().contiguous())  # [1, N] for _scaled_mm scale_b
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.register_buffer("act_scale", None if act_scale is None else torch.tensor(float(act_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [M, K]
        if self.act_scale is not None:  # static per-tensor (calibrated)
            xs = self.act_scale.to(torch.float32).expand(x2.shape[0], 1)
        else:  # dynamic per-row
            xs = x2.detach().abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / E4M3_MAX
        x8 = (x2.float() / xs).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
        y = torch._scaled_mm(
            x8, self.weight_fp8.t(), scale_a=xs.contiguous(), scale_b=self.weight_scale, out_dtype=out_dtype
        )
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y.reshape(*shape[:-1], self.out_features)


def quantize_linears_fp8(
    model: nn.Module, skip=DEFAULT_SKIP, act_scales: dict[str, float] | None = None
) -> list[str]:
    """Replace eligible ``nn.Linear`` modules in place; returns the names converted."""
    done = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or any(fnmatch.fnmatchcase(name, p) for p in skip):
            continue
        if mod.in_features % 16 or mod.out_features % 16 or mod._forward_hooks:
            continue  # _scaled_mm alignment; LoRA-hooked layers stay high precision
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, FP8Linear(mod, (act_scales or {}).get(name)))
        done.append(name)
    logger.info("FP8: %d linears converted, %s skipped by pattern", len(done), skip)
    return done
