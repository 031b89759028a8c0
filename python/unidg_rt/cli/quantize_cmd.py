"""``unidg-rt quantize``: an exported fp32 ONNX folder + captured calibration data → INT8 / FP8 Q/DQ
``{component}.{form}.{precision}.onnx`` (+ sidecar) in the same folder, registered in
``unidg_onnx.json`` (``UniDGPipeline.from_onnx(dir, precision="int8")``).

    unidg-rt export --out export/out/default                 # fp32
    unidg-rt calibrate --out calibration/out
    unidg-rt quantize export/out/default --calibration calibration/out --precision int8
    unidg-rt eval --compare export/out/default --precisions int8,fp8

Also holds :func:`eval_compare`, the ``unidg-rt eval --compare`` implementation.
"""

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


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def quantize(
    onnx_dir: Path = typer.Argument(..., help="exported folder with fp32 ONNX (`unidg-rt export`)"),
    calibration: Path = typer.Option(
        ..., "--calibration", "-c", help="folder of captured inputs (`unidg-rt calibrate --out`)"
    ),
    precision: str = typer.Option("int8", help="int8 | fp8 (Q/DQ)"),
    components: str = typer.Option(
        "transformer", help="comma-separated: transformer, vae_encoder, vae_decoder"
    ),
    form: Optional[str] = typer.Option(None, help="transformer attention form (default: the folder's)"),
    keep: list[str] = typer.Option(
        [],
        "--keep",
        help="module pattern kept in high precision, repeatable (fnmatch over module paths, "
        "e.g. 'transformer_blocks.0.*'); replaces the defaults (first/last layers, adaLN); 'none' = keep nothing",
    ),
    quantize_attention: bool = typer.Option(
        False,
        "--quantize-attention",
        help="also quantise QKᵀ / PV (attention math; off: stays high precision)",
    ),
    backend: str = typer.Option("auto", help="auto (ModelOpt if installed) | modelopt | ort"),
    high_precision: Optional[str] = typer.Option(
        None, help="dtype of the non-quantised graph: fp16 (ModelOpt default) | bf16 | fp32 (ORT)"
    ),
    method: str = typer.Option("max", "--method", help="activation calibration: max | entropy"),
    max_samples: Optional[int] = typer.Option(None, help="use at most this many captured samples"),
    min_coverage: Optional[float] = typer.Option(
        None, help="fail below this fraction of quantised non-kept MatMul/Gemm/Conv (default 0.9)"
    ),
    force: bool = typer.Option(False, "--force", help="re-quantise even when up to date"),
    as_json: bool = typer.Option(False, "--json", help="print the sidecars as JSON on stdout"),
) -> None:
    """Quantise exported ONNX to INT8/FP8 Q/DQ from captured calibration data (never without it)."""
    from unidg_rt.quant.artifacts import quantize_folder
    from unidg_rt.quant.qdq import DEFAULT_MIN_COVERAGE

    keep_patterns = None if not keep else ([] if [k.lower() for k in keep] == ["none"] else list(keep))
    t0 = time.perf_counter()
    results = quantize_folder(
        onnx_dir,
        calibration,
        precision.lower(),
        components=_split(components),
        form=form,
        keep=keep_patterns,
        quantize_attention=quantize_attention,
        backend=backend,
        high_precision=high_precision,
        calibration_method=method,
        max_samples=max_samples,
        min_coverage=DEFAULT_MIN_COVERAGE if min_coverage is None else min_coverage,
        force=force,
    )
    if as_json:
        typer.echo(json.dumps([r["sidecar"] for r in results], indent=2, default=str))
        return
    table = Table(title=f"quantised → {onnx_dir}")
    for col in ("file", "status", "MB", "fp32 MB", "coverage", "kept"):
        table.add_column(col)
    for r in results:
        q = r["sidecar"].get("quantization", {})
        v = q.get("validation", {})
        table.add_row(
            r["file"],
            "[dim]up to date[/]" if r["skipped"] else "[green]written[/]",
            f"{r['sidecar']['total_bytes'] / 1e6:.2f}",
            f"{q.get('source_total_bytes', 0) / 1e6:.2f}",
            f"{v.get('coverage', 0):.0%} of {v.get('eligible_compute', '?')}",
            str(v.get("kept_nodes", "?")),
        )
        console.print(
            f"{r['file']}: {q.get('backend')} {q.get('backend_version', '')}, rest of graph "
            f"{q.get('high_precision')}, {q.get('calibration_samples')} calibration samples"
        )
    console.print(table)
    console.print(
        f"done in {time.perf_counter() - t0:.1f} s; run with "
        f"UniDGPipeline.from_onnx({str(onnx_dir)!r}, precision={precision.lower()!r})"
    )


def eval_compare(
    onnx_dir: Path,
    precisions: str = "int8",
    *,
    cases: int = 8,
    steps: int | None = None,
    seeds: int = 1,
    categories: str | None = None,
    modes: str = "reference,text",
    size: int = 160,
    classifier_cache: Path | None = None,
    json_path: Path | None = None,
    markdown: Path | None = None,
) -> None:
    """``unidg-rt eval --compare ONNX_DIR``: each precision vs fp32 on the held-out set."""
    from unidg_rt.cli.common import atomic_write_bytes, atomic_write_json
    from unidg_rt.evaluation.precision_report import compare_precisions, report_markdown
    from unidg_rt.settings import load_settings

    names = _split(precisions)
    if not names:
        raise InvalidInputError("--precisions is empty: e.g. --precisions int8,fp8")
    with console.status(f"[bold]fp32 vs {', '.join(names)} on {cases} held-out cases"):
        report = compare_precisions(
            onnx_dir,
            names,
            num_cases=cases,
            num_inference_steps=steps,
            num_seeds=seeds,
            categories=_split(categories) or None,
            modes=_split(modes),
            size=size,
            classifier_cache=classifier_cache
            if classifier_cache is not None
            else load_settings().output_dir / "eval",
        )
    md = report_markdown(report)
    Console().print(_table(report))
    for target, r in report.recommendations.items():
        Console().print(f"[bold]{target}[/]: {r['precision']} — otherwise {r['alternative']}")
    if json_path is not None:
        atomic_write_json(json_path, report.to_dict())
        console.print(f"[green]wrote[/] {json_path}")
    if markdown is not None:
        atomic_write_bytes(markdown, md.encode())
        console.print(f"[green]wrote[/] {markdown}")


def _table(report) -> Table:
    s = report.settings
    table = Table(
        title=f"precisions vs {s['baseline']} — {s['num_cases']} cases × {s['num_seeds']} seeds, "
        f"{s['num_inference_steps']} steps"
    )
    table.add_column("metric")
    for n in report.precisions:
        table.add_column(n, justify="right")
    keys = (
        ("latent cos (worst)", "latent_cosine_min", "{:.5f}"),
        ("latent cos (final step)", "latent_cosine_final", "{:.5f}"),
        ("velocity cos (worst)", "velocity_cosine_min", "{:.5f}"),
        ("PSNR mask dB", "psnr_mask_db", "{:.1f}"),
        ("SSIM mask", "ssim_mask", "{:.4f}"),
        ("consistency", "consistency", "{:.0%}"),
        ("agreement w/ fp32", "agreement", "{:.0%}"),
        ("background max err", "background_max_error", "{:.0f}"),
        ("s / image", "s_per_image", "{:.2f}"),
    )
    for label, key, fmt in keys:
        table.add_row(label, *[fmt.format(m[key]) for m in report.precisions.values()])
    table.add_row(
        "transformer MB", *[f"{m['transformer_bytes'] / 1e6:.2f}" for m in report.precisions.values()]
    )
    table.add_row(
        "passes",
        *[
            "–" if "passes" not in m else ("yes" if all(m["passes"].values()) else "[red]no[/]")
            for m in report.precisions.values()
        ],
    )
    return table


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
