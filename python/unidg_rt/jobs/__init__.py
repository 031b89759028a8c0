"""Batch defect synthesis: job manifests, a crash-safe resumable runner, dataset writers, Ray.

Import the pieces from their modules (``unidg_rt.jobs.runner.run_jobs`` …); this package
imports nothing heavy (no torch, no ray) on its own.
"""

from __future__ import annotations

__all__ = [
    "BatchSummary",
    "GenerationOverrides",
    "Job",
    "Manifest",
    "MaskStrategy",
    "Plan",
    "export_mvtec",
    "export_quadruplets",
    "expand_plan",
    "load_manifest",
    "load_plan",
    "parse_manifest_bytes",
    "run_jobs",
    "run_jobs_ray",
]

#: the module of each public name (imported on first use)
_MODULES = {
    "runner": ("BatchSummary", "run_jobs"),
    "manifest": (
        "GenerationOverrides",
        "Job",
        "Manifest",
        "MaskStrategy",
        "Plan",
        "expand_plan",
        "load_manifest",
        "load_plan",
        "parse_manifest_bytes",
    ),
    "datasets": ("export_mvtec", "export_quadruplets"),
    "ray_runner": ("run_jobs_ray",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"unidg_rt.jobs.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'unidg_rt.jobs' has no attribute {name!r}")
