"""``unidg-rt eval``: SFT vs SFT+APO on the held-out procedural set (table, JSON, examples grid)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from unidg_rt.cli.common import (
    ConfigOption,
    DeviceOption,
    DtypeOption,
    EmbeddingsOption,
    pipeline_from_settings,
    progress_bar,
)
from unidg_rt.errors import InvalidInputError

console = Console()
err_console = Console(stderr=True)

#: (label, metric key, format) rows of the table
ROWS = (
    ("presence |Δ| in mask", "presence_mean", "{:.3f}"),
    ("presence rate", "presence_rate", "{:.0%}"),
    ("background max err", "background_max_error", "{:.0f}"),
    ("category consistency", "consistency", "{:.0%}"),
    ("diversity (seeds)", "diversity", "{:.3f}"),
    ("FD to real (lower=better)", "fd", "{:.2f}"),
    ("seconds / image", "s_per_image", "{:.2f}"),
)


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value)


def render_table(report) -> Table:
    """The side-by-side rich table of an :class:`~unidg_rt.evaluation.EvalReport`."""
    s = report.settings
    table = Table(
        title=f"unidg-rt eval — {s['num_cases']} cases × {s['num_seeds']} seeds, "
        f"{s['num_inference_steps']} steps, {s['generation_size'][0]}×{s['generation_size'][1]}",
        caption=f"presence rate: |Δ| > {s['presence_threshold']}; background in 8-bit levels, must be 0. "
        "real = ground-truth defect through the pipeline geometry (ceiling / FD noise floor); "
        "flat fill = mask filled with a flat colour (what the mask shape alone scores)",
    )
    table.add_column("metric")
    for name in report.variants:
        table.add_column(name, justify="right", style="bold")
    comp = report.comparison.get("metrics", {})
    if comp:
        table.add_column(f"{report.comparison['candidate']} vs {report.comparison['baseline']}")
    table.add_column("real", justify="right", style="dim")
    table.add_column("flat fill", justify="right", style="dim")
    for label, key, fmt in ROWS:
        cells = [_fmt(m.get(key), fmt) for m in report.variants.values()]
        if comp:
            verdict = comp.get(key, {}).get("verdict", "")
            colour = {"better": "green", "worse": "red", "FAIL": "bold red"}.get(verdict.split(" ")[0], "")
            cells.append(f"[{colour}]{verdict}[/]" if colour else verdict)
        cells += [_fmt(report.baselines[b].get(key), fmt) for b in ("real", "flat_fill")]
        table.add_row(label, *cells)
    return table


def eval_cmd(
    weights: Optional[Path] = typer.Option(
        None, "--weights", "--model", help="checkpoint (default: embedded model)"
    ),
    embeddings: EmbeddingsOption = None,
    cases: int = typer.Option(20, "--cases", help="number of held-out cases (seeds 1_000_000 + i)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="num_inference_steps (default: the model's)"),
    seeds: Optional[int] = typer.Option(
        None,
        "--seeds",
        help="generation seeds per case (default 2; diversity needs >= 2); with --downstream: "
        "training seeds (default 3)",
    ),
    categories: Optional[str] = typer.Option(
        None, help="comma-separated categories (default: the ten of issue 4 the model has embeddings for)"
    ),
    modes: str = typer.Option("reference,text", help="comma-separated: reference, text"),
    size: int = typer.Option(160, help="side of the procedural test images in pixels"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the full report as JSON"),
    markdown: Optional[Path] = typer.Option(None, help="write the table as markdown (README)"),
    grid: Optional[Path] = typer.Option(
        None, help="write an examples grid PNG (reference | target | results)"
    ),
    grid_only: bool = typer.Option(False, "--grid-only", help="only write --grid, skip the metrics"),
    classifier_cache: Optional[Path] = typer.Option(
        None, help="folder caching the defect classifier (default: <output_dir>/eval)"
    ),
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    config: ConfigOption = None,
    compare: Optional[Path] = typer.Option(
        None,
        "--compare",
        help="exported ONNX folder: compare --precisions against its fp32 instead (issue 7)",
    ),
    precisions: str = typer.Option("int8", "--precisions", help="with --compare: e.g. int8,fp8"),
    downstream: bool = typer.Option(
        False,
        "--downstream",
        help="instead: train a small defect segmenter on unidg_rt vs DRAEM-style vs CutPaste defects and "
        "score it on real procedural defects (pixel AP, image AUROC; issue 18)",
    ),
    train_images: Optional[int] = typer.Option(
        None, "--train-images", help="with --downstream: anomalous training images per method (default 128)"
    ),
    quick: bool = typer.Option(
        False, "--quick", help="with --downstream: a seconds-long run (tiny sizes, for CI and smoke tests)"
    ),
) -> None:
    """Evaluate SFT vs SFT+APO: presence, background, category consistency, diversity, FD.
    With ``--compare ONNX_DIR``: quantised precisions vs fp32 (latent cosine, PSNR/SSIM, size).
    With ``--downstream``: does a detector trained on the model's defects find real ones?"""
    if downstream:
        return downstream_cmd(
            weights=weights,
            embeddings=embeddings,
            config=config,
            device=device,
            dtype=dtype,
            seeds=seeds,
            train_images=train_images,
            quick=quick,
            steps=steps,
            json_path=json_path,
            markdown=markdown,
        )
    if quick or train_images is not None:
        raise InvalidInputError("--quick and --train-images belong to --downstream; add --downstream")
    seeds = 2 if seeds is None else seeds
    if compare is not None:
        from unidg_rt.cli.quantize_cmd import eval_compare

        return eval_compare(
            compare,
            precisions,
            cases=cases,
            steps=steps,
            seeds=seeds,
            categories=categories,
            modes=modes,
            size=size,
            classifier_cache=classifier_cache,
            json_path=json_path,
            markdown=markdown,
        )
    from unidg_rt.evaluation import (
        build_eval_set,
        default_categories,
        evaluate,
        report_markdown,
        save_examples_grid,
    )
    from unidg_rt.settings import load_settings

    if grid_only and grid is None:
        raise InvalidInputError("--grid-only needs --grid PATH.png")
    settings = load_settings(config, weights=weights, embeddings=embeddings, device=device, dtype=dtype)
    pipe = pipeline_from_settings(settings)
    cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else default_categories(pipe)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if grid is not None:
        t0 = time.perf_counter()
        with console.status("[bold]writing examples grid"):
            save_examples_grid(grid, pipe, num_inference_steps=steps, categories=cats)
        err_console.print(f"[green]wrote[/] {grid} in {time.perf_counter() - t0:.1f} s")
        if grid_only:
            return
    eval_cases = build_eval_set(cases, cats, modes=mode_list, size=size)
    cache = classifier_cache if classifier_cache is not None else settings.output_dir / "eval"
    with progress_bar(err_console) as progress:
        task = progress.add_task("classifier + references", total=None)

        def on_image(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        report = evaluate(
            pipe,
            eval_cases,
            num_seeds=seeds,
            num_inference_steps=steps,
            classifier_cache=cache,
            progress=on_image,
        )
    console.print(render_table(report))
    clf = report.classifier
    console.print(
        f"classifier: held-out accuracy {clf['test_accuracy']:.0%} on real defects at the generation size "
        f"({clf['test_accuracy_crisp']:.0%} as drawn, chance {clf['chance']:.0%}); FD space: "
        f"{report.settings['fd_space']}; wall {report.wall_s:.1f} s"
    )
    for name, m in report.variants.items():
        top = ", ".join(f"{c} {v:.0%}" for c, v in list((m.get("predicted_share") or {}).items())[:3])
        console.print(f"{name} results read as: {top}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    _write_reports(report, json_path, markdown, report_markdown)


def downstream_cmd(
    *, weights, embeddings, config, device, dtype, seeds, train_images, quick, steps, json_path, markdown
) -> None:
    """``eval --downstream``: the segmenter trained on each defect source, scored on real defects."""
    from unidg_rt.evaluation.downstream import METHOD_LABELS, DownstreamConfig, run_downstream
    from unidg_rt.evaluation.downstream_report import TABLE_COLUMNS, downstream_markdown, format_cell
    from unidg_rt.settings import load_settings

    overrides = {
        k: v
        for k, v in (("seeds", seeds), ("train_images", train_images), ("num_inference_steps", steps))
        if v is not None
    }
    cfg = (DownstreamConfig.quick(**overrides) if quick else DownstreamConfig(**overrides)).check()
    settings = load_settings(config, weights=weights, embeddings=embeddings, device=device, dtype=dtype)
    pipe = pipeline_from_settings(settings)
    label = str(weights) if weights is not None else "embedded default"
    with progress_bar(err_console) as progress:
        task = progress.add_task("downstream", total=None)

        def on_progress(label: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=label)

        report = run_downstream(pipe, cfg, model_label=label, progress=on_progress)
    s = report.settings
    table = Table(
        title=f"unidg-rt eval --downstream — {s['seeds']} seeds, {s['train_images']} training images per method, "
        f"{s['test_images']} + {s['test_images']} test images at {s['size']} px",
        caption="mean ± std over seeds; test defects are real procedural defects from the same procedural "
        "family the model was trained on",
    )
    table.add_column("training defects")
    for name, _ in TABLE_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("near-empty paints", justify="right", style="dim")
    for m, method_label in METHOD_LABELS.items():
        cells = [format_cell(report.methods[m].get(key)) for _, key in TABLE_COLUMNS]
        table.add_row(method_label, *cells, f"{report.paint['near_empty_share'][m]:.0%}")
    console.print(table)
    console.print(
        f"model: {label}; wall {report.wall_s:.1f} s (generate {report.timings['generate_s']:.0f} s, "
        f"train {report.timings['train_s']:.0f} s, CPU {report.timings['cpu_s']:.0f} s); chance pixel AP "
        f"{s['test']['chance_pixel_ap']['all']:.4f}; real bank defects near-empty: "
        f"{report.paint['real_bank_near_empty_share']:.0%}"
    )
    _write_reports(report, json_path, markdown, downstream_markdown)


def _write_reports(report, json_path, markdown, to_markdown) -> None:
    """``--json`` (the report's dict) and ``--markdown`` (``to_markdown(report)``), atomically."""
    from unidg_rt.cli.common import atomic_write_bytes, atomic_write_json

    if json_path is not None:
        atomic_write_json(json_path, report.to_dict())
        err_console.print(f"[green]wrote[/] {json_path}")
    if markdown is not None:
        atomic_write_bytes(markdown, to_markdown(report).encode())
        err_console.print(f"[green]wrote[/] {markdown}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
