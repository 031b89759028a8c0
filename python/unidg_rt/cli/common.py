"""Shared CLI helpers: atomic writes, JSON records, pipeline construction from settings, and the
settings options every pipeline-running command takes (declared once, as ``Annotated`` types)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from unidg_rt.artifacts.io import atomic_write_bytes, atomic_write_json  # temp + fsync + rename

__all__ = [
    "atomic_save_png",
    "atomic_write_bytes",
    "atomic_write_json",
    "pipeline_from_settings",
    "progress_bar",
]

# settings overrides (``load_settings`` keywords) shared by generate, synth and eval; a command
# declares ``weights: WeightsOption = None``
WeightsOption = Annotated[Optional[Path], typer.Option(help="checkpoint (default: embedded model)")]
EmbeddingsOption = Annotated[Optional[Path], typer.Option(help="category embeddings cache")]
HeightOption = Annotated[Optional[int], typer.Option(help="per-side height, multiple of 16")]
WidthOption = Annotated[Optional[int], typer.Option(help="per-side width, multiple of 16")]
DeviceOption = Annotated[Optional[str], typer.Option(help="cpu / cuda")]
DtypeOption = Annotated[Optional[str], typer.Option(help="auto / float32 / bfloat16 / float16")]
FastPathOption = Annotated[
    Optional[str], typer.Option("--fast-path", help="torch GPU fast path: auto (on for CUDA) / on / off")
]
PrecisionOption = Annotated[
    Optional[str],
    typer.Option(help="onnxruntime/tensorrt: exported precision to run; torch: fp8 (FP8 fast path)"),
]
ConfigOption = Annotated[Optional[Path], typer.Option(help="settings TOML")]


def atomic_save_png(path: Path, image) -> None:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def progress_bar(console, label: str = "{task.description}"):
    """The commands' transient progress bar: ``label | bar | done/total | elapsed`` on ``console``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def pipeline_from_settings(settings):
    """Build a UniDGPipeline for the configured backend: the one factory,
    :func:`unidg_rt.runtime.session.build_pipeline` (sessions and ``synth`` use it too)."""
    from unidg_rt.runtime.session import build_pipeline

    return build_pipeline(settings)
