"""Triton kernels for the torch GPU path (DESIGN §4, §5).

- :mod:`unidg_rt.kernels.group_attention` — flash-style group-bias attention that reads
  per-token group ids and the small ``T`` table; the ``N×N`` bias is never built.
- :mod:`unidg_rt.kernels.fused_ops` — fused glue: RMSNorm+RoPE, LayerNorm+modulate,
  gated residual, each with a torch reference and an auto dispatcher.
- :mod:`unidg_rt.kernels.fp8` — FP8 (E4M3) linears on ``torch._scaled_mm`` (fast path
  ``precision="fp8"``).

Importing this package imports neither triton nor torch: the submodules do, when used.
Triton decides at *decoration* time whether a kernel is compiled for the GPU or run by its
CPU interpreter, so ``TRITON_INTERPRET=1`` must be set before a submodule is imported.
"""

from __future__ import annotations

import os

__all__ = ["triton_available", "interpreter_enabled"]


def interpreter_enabled() -> bool:
    """True when Triton is asked to run kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    try:
        from triton import knobs  # triton >= 3.4 parses the variable itself; use its answer

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_available() -> bool:
    """True when triton imports and kernels can run: a CUDA device, or the CPU interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:  # not installed, or installed but broken (e.g. mismatched wheel)
        return False
    if interpreter_enabled():
        return True
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
