"""Shared CLI helpers: atomic writes, JSON records, pipeline construction from settings."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_png(path: Path, image) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def pipeline_from_settings(settings):
    """Build a UniDGPipeline for the configured backend."""
    from unidg_rt.runtime.pipeline import UniDGPipeline

    if settings.backend == "onnxruntime":
        return UniDGPipeline.from_onnx(settings.onnx_dir, embeddings=settings.embeddings)
    if settings.backend == "tensorrt":
        return UniDGPipeline.from_engines(settings.engines_dir, embeddings=settings.embeddings)
    return UniDGPipeline.from_pretrained(
        settings.weights,
        device=settings.device,
        dtype=settings.dtype,
        attention_form=settings.attention_form,
        embeddings=settings.embeddings,
    )
