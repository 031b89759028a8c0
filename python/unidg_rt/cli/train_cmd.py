"""``unidg-rt train vae|sft|apo|all``: train the embedded default model from procedural data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from unidg_rt.errors import InvalidInputError

console = Console(stderr=True)
STAGES = ("vae", "sft", "refenc", "apo", "all", "ship")


def train(
    stage: str = typer.Argument(
        ...,
        help="vae | sft | refenc | apo | all (each stage reads the previous one's files) | ship (copy a finished run)",
    ),
    seed: Optional[int] = typer.Option(None, help="random seed (default: the recipe's, 0)"),
    steps: Optional[int] = typer.Option(None, help="override the training steps (of every stage for 'all')"),
    out: Path = typer.Option(
        Path("outputs/train"), "--out", "-o", help="run folder (weights, report, checkpoints)"
    ),
    recipe: Optional[Path] = typer.Option(None, help="recipe JSON overriding unidg_rt.train.recipe defaults"),
    ship: bool = typer.Option(
        False, help="copy the result into the package (assets/default) + regenerate samples"
    ),
    preview: bool = typer.Option(
        False, help="write <out>/preview.png (reference | target | SFT | SFT+APO | GT)"
    ),
    device: Optional[str] = typer.Option(
        None,
        help="SFT stage device: cpu | cuda (default: the recipe's, cpu); VAE / APO stages run on the CPU",
    ),
    log_level: str = typer.Option("INFO", help="logging level"),
) -> None:
    """Train the tiny UniDG model: VAE → Diversity-SFT → APO (CPU-sized recipe, seeded)."""
    if stage not in STAGES:
        raise InvalidInputError(f"stage {stage!r} unknown: use one of {', '.join(STAGES)}")
    from unidg_rt.cli.app import setup_logging
    from unidg_rt.train.recipe import Recipe
    from unidg_rt.train.run import run_stage

    setup_logging(log_level)
    rec = Recipe.load(recipe).with_steps(stage, steps)
    if seed is not None:
        rec.seed = int(seed)
    if device is not None:
        rec.device = device
    _check_device(rec.device)
    t0 = time.perf_counter()
    if stage == "ship" and not (out / "train_report.json").is_file():
        raise InvalidInputError(f"{out} holds no finished run: train first (unidg-rt train all --out {out})")
    if stage == "ship":  # ship a finished run without training
        report, ship = json.loads((out / "train_report.json").read_text()), True
    else:
        report = run_stage(stage, rec, out)
    elapsed = time.perf_counter() - t0
    if ship or preview:
        from unidg_rt.artifacts.assets import samples_dir
        from unidg_rt.train.ship import preview_grid, sample_pair, ship_assets, write_samples

        if ship:
            sizes = ship_assets(out, recipe=rec)
            write_samples(samples_dir(), rec.ship)
            console.print(f"[green]shipped[/] {json.dumps(sizes)}")
        if preview:
            path = preview_grid(out / "model.safetensors", out / "preview.png", [sample_pair(rec.ship)])
            console.print(f"[green]wrote[/] {path}")
    table = Table(title=f"unidg-rt train {stage} → {out}")
    for col in ("stage", "steps", "loss start", "loss end", "wall s"):
        table.add_column(col)
    for name, s in report.get("stages", {}).items():
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(
            name,
            str(s.get("steps", "")),
            fmt(s.get("loss_start")),
            fmt(s.get("loss_end")),
            f"{s.get('wall_s', 0):.1f}",
        )
    Console().print(table)
    console.print(f"done in {elapsed:.1f} s; report: {out / 'train_report.json'}")


def _check_device(device: str) -> None:
    import torch

    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidInputError(f"--device {device!r} unknown: use cpu or cuda (cuda:N)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {device}: torch sees no CUDA device here; use --device cpu")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
