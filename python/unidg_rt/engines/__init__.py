"""Engines: TensorRT / TensorRT-RTX builders (:mod:`.build`, :mod:`.build_config`), the bindings
loader (:mod:`.bindings`) and the builder's layer report (:mod:`.layers`). Plan naming, sidecars
and checks live on floor 0 (:mod:`unidg_rt.artifacts.plan`), re-exported here.

Nothing here imports TensorRT at import time, and importing the package imports none of its
modules (the runtime reads plans through :mod:`unidg_rt.artifacts.plan` and :mod:`.bindings`
without the builder); the names below resolve on first use.
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

_BUILD, _BINDINGS, _PLAN = "unidg_rt.engines.build", "unidg_rt.engines.bindings", "unidg_rt.artifacts.plan"
_WHERE = {
    **dict.fromkeys(("EngineBuildError", "PlanInfo", "build_engine", "normalize_profiles"), _BUILD),
    "load_trt": _BINDINGS,
    **dict.fromkeys(("check_plan", "inspect_plan", "plan_name"), _PLAN),
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'unidg_rt.engines' has no attribute {name!r}")
