"""``unidg-rt calibrate``: capture real transformer / VAE inputs for quantisation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def calibrate(
    manifest: str = typer.Option(
        "default",
        help="calibration manifest: a name in calibration/ (default: calibration/default.json, the bundled "
        "sample + procedural held-out cases) or a .json path",
    ),
    out: Path = typer.Option(Path("calibration/out"), help="output folder for *.npz"),
    weights: Optional[Path] = typer.Option(None, help="checkpoint (default: embedded model)"),
) -> None:
    """Run the pipeline on the manifest's cases and save the inputs at the chosen steps."""
    from unidg_rt.quant.calibration import capture, load_manifest
    from unidg_rt.runtime.pipeline import UniDGPipeline

    cases = load_manifest(manifest)  # before loading the model: a wrong name fails fast
    pipe = UniDGPipeline.from_pretrained(weights)
    paths = capture(pipe, cases, out)
    listed, drawn = len(cases["cases"]), cases["num_cases"]
    console.print(f"calibration manifest {cases['_path']}: {listed} listed + {drawn} procedural cases")
    for name, p in paths.items():
        console.print(f"[green]wrote[/] {p} ({name})")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
