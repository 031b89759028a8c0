"""The TensorRT / TensorRT-RTX Python bindings and the local GPU: loaded lazily, shared by the
builder (:mod:`unidg_rt.engines.build`) and the runtime's TensorRT backend, which loads plans and
never needs the builder."""

from __future__ import annotations

import importlib

from unidg_rt.artifacts import plan as mf
from unidg_rt.errors import BackendUnavailableError

PIP_RTX = "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
#: builder -> the module names its bindings import as, in order of preference
MODULES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx_bindings", "tensorrt_rtx")}


def load_trt(builder: str = "tensorrt"):
    """Import the Python bindings of ``builder`` (lazily; never at ``import unidg_rt``)."""
    builder = mf.normalize_builder(builder)
    for name in MODULES[builder]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    hint = (
        f"`{PIP_RTX}` (the `tensorrt-rtx` meta packages are download stubs that fail)"
        if builder == "tensorrt-rtx"
        else "`pip install tensorrt` on the GPU machine, or JetPack's python3-libnvinfer on Jetson"
    )
    raise BackendUnavailableError(f"builder={builder!r} needs its Python bindings: install them with {hint}")


def local_device_cc() -> str | None:
    """Compute capability of CUDA device 0, or ``None`` on a machine without one."""
    try:
        import torch

        if torch.cuda.is_available():
            return mf.normalize_cc(torch.cuda.get_device_capability(0))
    except ImportError:  # pragma: no cover - torch-free deployments
        pass
    return None
