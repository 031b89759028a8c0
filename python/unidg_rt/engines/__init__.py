"""Engines: TensorRT / TensorRT-RTX builders (:mod:`.build`), plan naming + sidecars + checks
(:mod:`.manifest`), the bindings loader (:mod:`.bindings`) and the builder's layer report
(:mod:`.layers`).

Nothing here imports TensorRT at import time, and importing the package imports none of its
modules (the runtime reads plans through :mod:`.manifest` and :mod:`.bindings` without the
builder); the names below resolve on first use.
"""

from __future__ import annotations

__all__ = [
    "EngineBuildError",
    "PlanInfo",
    "build_engine",
    "check_plan",
    "inspect_plan",
    "load_trt",
    "normalize_profiles",
    "plan_name",
]

_WHERE = {
    "EngineBuildError": "build", "PlanInfo": "build", "build_engine": "build", "normalize_profiles": "build",
    "load_trt": "bindings", "check_plan": "manifest", "inspect_plan": "manifest", "plan_name": "manifest",
}  # fmt: skip


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"unidg_rt.engines.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'unidg_rt.engines' has no attribute {name!r}")
