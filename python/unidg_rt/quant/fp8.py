"""Static FP8 activation scales for the torch fast path's FP8 linears, from calibration.

:func:`calibrated_act_scales` runs the model on the transformer inputs ``unidg-rt calibrate``
captured (issue 7) and returns ``amax / 448`` per linear — the same data the FP8 Q/DQ ONNX is
calibrated on — for :func:`unidg_rt.kernels.fp8.quantize_linears_fp8` ``(model, act_scales=...)``.
The linears themselves are torch-level and live in :mod:`unidg_rt.kernels.fp8`.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from unidg_rt.kernels.fp8 import DEFAULT_SKIP, E4M3_MAX


def calibrated_act_scales(
    model: nn.Module, calibration, skip=DEFAULT_SKIP, max_samples: int | None = None
) -> dict[str, float]:
    """Static per-tensor FP8 activation scales (``amax / 448``) of every linear
    :func:`quantize_linears_fp8` would convert, from captured transformer inputs (a
    ``unidg-rt calibrate`` folder or its ``transformer.npz``; a missing capture is refused).
    Run it on the high-precision model, before converting."""
    import numpy as np

    from unidg_rt.quant.calibration import load_calibration

    data = load_calibration(calibration, "transformer")
    n = next(iter(data.values())).shape[0]
    idx = (
        range(n)
        if not max_samples or max_samples >= n
        else np.linspace(0, n - 1, max_samples).round().astype(int)
    )
    amax: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in skip):

            def hook(_m, args, _name=name):
                amax[_name] = max(amax.get(_name, 0.0), float(args[0].detach().abs().amax()))

            hooks.append(mod.register_forward_pre_hook(hook))
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            for i in sorted(set(idx)):
                kwargs = {}
                for k, v in data.items():
                    t = torch.from_numpy(np.ascontiguousarray(v[i])).to(param.device)
                    kwargs[k] = t.long() if not t.is_floating_point() else t.to(param.dtype)
                model(**kwargs)
    finally:
        for h in hooks:
            h.remove()
    return {k: max(v, 1e-12) / E4M3_MAX for k, v in amax.items()}
