"""``unidg-rt synth``: run a job manifest (or a folder of normal images + a plan) into a folder.

Resumable: run the same command again after a crash or kill and only unfinished jobs run.
Exit code 0 when every job is ok, 1 when some failed (see ``results.jsonl``), 2 on a setup
error (bad settings, missing weights, folder in use).
"""

from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from unidg_rt.cli.common import (
    ConfigOption,
    DeviceOption,
    DtypeOption,
    EmbeddingsOption,
    FastPathOption,
    HeightOption,
    PrecisionOption,
    WeightsOption,
    WidthOption,
)

console = Console(stderr=True)


class DatasetFormat(str, Enum):
    plain = "plain"
    mvtec = "mvtec"
    quadruplet = "quadruplet"


def synth(
    source: Path = typer.Argument(..., help="JSONL manifest, or a folder of normal images (needs a plan)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (re-run the same command to resume)"),
    plan: Optional[Path] = typer.Option(None, help="plan file (JSON/TOML) for a folder source"),
    per_image: Optional[int] = typer.Option(None, help="plan: defects per normal image"),
    categories: Optional[str] = typer.Option(None, help="plan: comma-separated categories to draw from"),
    plan_seed: Optional[int] = typer.Option(None, help="plan: seed for categories, masks and noise"),
    mask_strategy: Optional[str] = typer.Option(None, help="plan: random_blob / random_box / center_box"),
    product: Optional[str] = typer.Option(
        None, help="plan: product name (MVTec class folder; default: folder name)"
    ),
    dataset_format: DatasetFormat = typer.Option(
        DatasetFormat.plain, "--format", help="also export a dataset layout"
    ),
    dataset_dir: Optional[Path] = typer.Option(
        None, help="dataset folder (default OUT/mvtec or OUT/quadruplets)"
    ),
    test_good_fraction: float = typer.Option(0.2, help="mvtec: share of normal images put in test/good"),
    ray: bool = typer.Option(False, "--ray", help="run on Ray Data (needs ray with its 'data' extra)"),
    workers: int = typer.Option(1, help="--ray: number of actors (one model each)"),
    gpus_per_worker: float = typer.Option(0.0, help="--ray: GPUs per actor (1 = one model per GPU)"),
    cpus_per_worker: float = typer.Option(1.0, help="--ray: CPUs per actor"),
    ray_address: Optional[str] = typer.Option(
        None, help="--ray: cluster address (default: start a local one)"
    ),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (per actor with --ray)"),
    weights: WeightsOption = None,
    embeddings: EmbeddingsOption = None,
    steps: Optional[int] = typer.Option(None, "--steps", help="num_inference_steps for every job"),
    guidance: Optional[float] = typer.Option(None, help="guidance_scale for every job"),
    height: HeightOption = None,
    width: WidthOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    fast_path: FastPathOption = None,
    precision: PrecisionOption = None,
    paste_mode: Optional[str] = typer.Option(
        None, help="replace / residual for every job (default: the model's)"
    ),
    config: ConfigOption = None,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Synthesise defects in batch: crash-safe, resumable, with a per-job results.jsonl."""
    from unidg_rt.cli.app import setup_logging
    from unidg_rt.errors import ConfigError
    from unidg_rt.jobs.manifest import load_plan
    from unidg_rt.jobs.runner import as_manifest, run_jobs
    from unidg_rt.runtime.session import build_pipeline
    from unidg_rt.settings import load_settings

    settings = load_settings(
        config,
        weights=weights,
        embeddings=embeddings,
        device=device,
        dtype=dtype,
        fast_path=fast_path,
        precision=precision,
        paste_mode=paste_mode,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
    )
    setup_logging(settings.log_level)
    the_plan = None
    if source.is_dir():
        cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
        if plan is None and not cats:
            raise ConfigError(
                f"{source} is a folder: pass a plan, e.g. --categories scratch,hole --per-image 2, "
                "or --plan plan.json"
            )
        the_plan = load_plan(
            plan,
            defects_per_image=per_image,
            categories=cats,
            seed=plan_seed,
            mask_strategy=mask_strategy,
            product=product,
        )
    manifest = as_manifest(source, the_plan)
    defaults = settings_defaults(settings)
    factory = functools.partial(build_pipeline, settings)

    with Progress(
        TextColumn("[bold]synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=len(manifest))

        def on_record(rec):
            progress.update(task, advance=1, description=f"{rec['id']} {rec['status']}")

        if ray:
            from unidg_rt.jobs.ray_runner import run_jobs_ray

            summary = run_jobs_ray(
                factory,
                manifest,
                out,
                defaults=defaults,
                num_workers=workers,
                num_gpus_per_worker=gpus_per_worker,
                num_cpus_per_worker=cpus_per_worker,
                torch_threads=threads,
                ray_address=ray_address,
                on_record=on_record,
            )
        else:
            if threads:
                try:
                    import torch
                except ImportError as exc:
                    raise typer.BadParameter(
                        "--threads sets torch's CPU threads; torch is not installed"
                    ) from exc
                torch.set_num_threads(threads)
            summary = run_jobs(factory, manifest, out, defaults=defaults, on_record=on_record)

    dataset = None
    if dataset_format is DatasetFormat.mvtec:
        from unidg_rt.jobs.datasets import export_mvtec

        dataset = export_mvtec(out, dataset_dir, test_good_fraction=test_good_fraction)
    elif dataset_format is DatasetFormat.quadruplet:
        from unidg_rt.jobs.datasets import export_quadruplets

        dataset = export_quadruplets(out, dataset_dir)

    if as_json:
        payload = summary.as_dict()
        if dataset is not None:
            payload["dataset"] = {
                "root": str(dataset.root),
                "abnormal": dataset.abnormal,
                "normal": dataset.normal,
            }
        typer.echo(json.dumps(payload, indent=2))
    _print_summary(summary, dataset)
    raise typer.Exit(code=summary.exit_code)


def settings_defaults(settings):
    """The batch-wide :class:`~unidg_rt.jobs.manifest.GenerationOverrides` from ``Settings``:
    every generation setting applies unless a job's own ``settings`` override it."""
    from unidg_rt.jobs.manifest import GenerationOverrides

    return GenerationOverrides(
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        paste_mode=settings.paste_mode,
        segments=settings.segments,
    )


def _print_summary(summary, dataset) -> None:
    table = Table(title=f"synth → {summary.out_dir}", show_header=False)
    table.add_row("jobs", str(summary.total))
    table.add_row("[green]ok (this run)", str(summary.ok))
    table.add_row("already done", str(summary.skipped))
    table.add_row("[red]failed" if summary.failed else "failed", str(summary.failed))
    table.add_row("time", f"{summary.elapsed_s:.1f} s")
    if dataset is not None:
        table.add_row(
            "dataset", f"{dataset.root} ({dataset.abnormal} defect, {dataset.normal} normal images)"
        )
    console.print(table)
    for job_id, reason in summary.failures[:20]:
        console.print(f"[red]failed[/] {job_id}: {reason}")
    if len(summary.failures) > 20:
        console.print(f"… and {len(summary.failures) - 20} more: see {summary.out_dir / 'results.jsonl'}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
