"""unidg_rt: inference runtime for UniDG-style universal defect generation.

Importing this package has no side effects and pulls no optional dependency
(torch, onnxruntime, tensorrt are imported lazily by the parts that need them).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "UniDGPipeline", "UniDGPipelineOutput"]


def __getattr__(name: str):  # lazy: keeps `import unidg_rt` cheap and torch-free
    if name in ("UniDGPipeline", "UniDGPipelineOutput"):
        from unidg_rt.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'unidg_rt' has no attribute {name!r}")
