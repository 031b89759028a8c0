"""``unidg-rt bench``: side-by-side timing against diffusers (rich table + ``--json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from unidg_rt.cli.common import atomic_write_json

console = Console()
SIZES = {"tiny": (64, 64), "flux-fill": (512, 512), "default": (128, 128), "flux-dev": (512, 512)}


def bench(
    preset: str = typer.Option("tiny", help="tiny (CPU ok) | default | flux-fill (12B, random weights)"),
    size: Optional[int] = typer.Option(
        None, help="per-side size (diptych = size x 2*size); flux-fill: 512 or 768"
    ),
    steps: int = typer.Option(8, help="denoising steps for the end-to-end loop"),
    runs: int = typer.Option(10, help="timed runs per measurement (median/p90)"),
    warmup: int = typer.Option(3, help="untimed warm-up calls"),
    text_len: Optional[int] = typer.Option(None, help="text tokens (FLUX: 512)"),
    device: Optional[str] = typer.Option(None, help="cuda / cpu (default: cuda if available)"),
    dtype: Optional[str] = typer.Option(None, help="bfloat16 / float16 / float32"),
    variants: Optional[str] = typer.Option(
        None, help="comma list (default: all), e.g. ours-fast,ours-fast-fp8,diffusers-eager,diffusers-mask"
    ),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="write the result as JSON here (rewritten after each variant: complete=false)"
    ),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (1 avoids stalls on a busy machine)"),
    fast_path: str = typer.Option(
        "auto", "--fast-path", help="ours-fast* variants: auto (product fast path on CUDA) / on / off"
    ),
    e2e: bool = typer.Option(True, "--e2e/--no-e2e", help="also time reference mode end to end (pipeline)"),
) -> None:
    """Time our torch variants and diffusers on the same weights and inputs, in one process."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from unidg_rt.benchmark import BenchConfig, run_bench

    side = size or SIZES.get(preset, (64, 64))[0]
    cfg = BenchConfig(
        preset=preset,
        height=side,
        width=side,
        steps=steps,
        runs=runs,
        warmup=warmup,
        fast_path=fast_path,
        e2e=e2e,
    )
    cfg.text_len = text_len or (512 if preset.startswith("flux") else 8)
    if device:
        cfg.device = device
    if dtype:
        cfg.dtype = dtype
    if variants:
        cfg.variants = tuple(v.strip() for v in variants.split(","))
    progress = (lambda partial: atomic_write_json(json_out, partial)) if json_out else None
    result = run_bench(cfg, on_progress=progress)
    table = Table(title=f"unidg-rt bench — {preset} {side}x{2 * side}, {cfg.device} {cfg.dtype}")
    for col in ("variant", "median ms", "p90 ms", "vs diffusers", f"e2e {steps} steps ms", "peak GB"):
        table.add_column(col)
    ratios = result["ratios_vs_diffusers_eager"]
    for name, entry in result["results"].items():
        if name == "attention":
            continue
        stat = entry.get("dit_step", entry) if isinstance(entry, dict) else {}
        if "skipped" in entry:
            table.add_row(name, "—", "—", "—", "—", entry["skipped"][:60])
            continue
        e2e_ms = entry.get(f"e2e_{steps}_steps", {}).get("median_ms")
        table.add_row(
            name,
            f"{stat.get('median_ms', 0):.3f}",
            f"{stat.get('p90_ms', 0):.3f}",
            f"{ratios[name]:.3f}x" if name in ratios else "",
            f"{e2e_ms:.1f}" if e2e_ms else "",
            str(entry.get("peak_memory_gb", "")),
        )
    console.print(table)
    att = result["results"]["attention"]
    console.print(f"attention ({att['tokens']} tokens): " + json.dumps(att.get("ratio_vs_unmasked", {})))
    if json_out:
        atomic_write_json(json_out, result)
        console.print(f"[green]wrote[/] {json_out}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
