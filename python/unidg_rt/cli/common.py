"""Shared CLI helpers: atomic writes, JSON records, pipeline construction from settings."""

from __future__ import annotations

from pathlib import Path

from unidg_rt.artifacts.io import atomic_write_bytes, atomic_write_json  # temp + fsync + rename

__all__ = ["atomic_save_png", "atomic_write_bytes", "atomic_write_json", "pipeline_from_settings"]


def atomic_save_png(path: Path, image) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def pipeline_from_settings(settings):
    """Build a UniDGPipeline for the configured backend: the one factory,
    :func:`unidg_rt.runtime.session.build_pipeline` (sessions and ``synth`` use it too)."""
    from unidg_rt.runtime.session import build_pipeline

    return build_pipeline(settings)
