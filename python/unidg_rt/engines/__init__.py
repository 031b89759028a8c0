"""Engines: TensorRT / TensorRT-RTX builders (:mod:`.build`), plan naming + sidecars + checks
(:mod:`.manifest`), and the builder's layer report (:mod:`.layers`).

Nothing here imports TensorRT at import time; :func:`build_engine` loads the bindings it needs.
"""

from __future__ import annotations

from unidg_rt.engines.build import EngineBuildError, PlanInfo, build_engine, load_trt, normalize_profiles
from unidg_rt.engines.manifest import check_plan, inspect_plan, plan_name

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
