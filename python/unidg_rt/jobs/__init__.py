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

_WHERE = {
    "BatchSummary": "runner", "run_jobs": "runner",
    "GenerationOverrides": "manifest", "Job": "manifest", "Manifest": "manifest", "MaskStrategy": "manifest",
    "Plan": "manifest", "expand_plan": "manifest", "load_manifest": "manifest", "load_plan": "manifest",
    "parse_manifest_bytes": "manifest",
    "export_mvtec": "datasets", "export_quadruplets": "datasets",
    "run_jobs_ray": "ray_runner",
}  # fmt: skip


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"unidg_rt.jobs.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'unidg_rt.jobs' has no attribute {name!r}")
