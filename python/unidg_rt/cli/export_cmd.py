"""``unidg-rt export``: a checkpoint → ONNX folder (transformer per attention form, VAE encoder and
decoder, the reference encoder where the checkpoint has one, ``unidg_onnx.json`` manifest);
unchanged stages are skipped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from unidg_rt.artifacts.profiles import ExportProfile, load_export_profile
from unidg_rt.errors import ConfigError, InvalidInputError

console = Console(stderr=True)


def _split(value: str, name: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise InvalidInputError(f"--{name} is empty: pass a comma-separated list, e.g. --{name} fold")
    return items


def parse_lora(value: str) -> tuple[Path, str, float]:
    """``[NAME=]PATH[@SCALE]`` → ``(path, name, scale)`` (name: the file's stem; scale: 1.0)."""
    spec, _, scale = value.rpartition("@") if "@" in value else (value, "", "1")
    name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    try:
        strength = float(scale)
    except ValueError:
        raise InvalidInputError(
            f"--lora {value!r}: scale {scale!r} is not a number; use NAME=PATH@0.8"
        ) from None
    if not path:
        raise InvalidInputError(f"--lora {value!r} names no file; use [NAME=]PATH[@SCALE]")
    return Path(path), name or Path(path).stem, strength


def export_ranges(profile: ExportProfile, weights: Optional[Path]) -> dict | None:
    """The profile's ``[ranges.NAME]`` as ``GenerationRange`` records; a range's missing ``sides`` /
    ``text`` / ``batch`` follow the checkpoint (as ``export_pipeline`` does without ranges)."""
    from unidg_rt.export.spec import GenerationRange

    if not profile.ranges:
        return None
    side, text_len = 512, 512  # export_pipeline's fallbacks for a checkpoint without a card
    if any(r.sides is None or r.text is None for r in profile.ranges.values()):
        from unidg_rt.artifacts.assets import default_model_path
        from unidg_rt.artifacts.card import Defaults
        from unidg_rt.models.loading import read_card

        path = weights if weights is not None else default_model_path()
        card = read_card(path) if path.is_file() else None
        if card is not None:
            defaults = Defaults.from_dict(card.defaults)
            side, text_len = defaults.height, defaults.text_seq_len
    around = GenerationRange.around(side, text_len)
    ranges = {}
    for name, r in profile.ranges.items():
        try:
            ranges[name] = GenerationRange(
                sides=r.sides or around.sides, text=r.text or around.text, batch=r.batch or around.batch
            )
        except ConfigError as exc:
            raise ConfigError(f"profile {profile.path}: ranges.{name}: {exc}") from exc
    return ranges


def export(
    weights: Optional[Path] = typer.Option(
        None, help="UniDG checkpoint or diffusers folder (default: embedded model)"
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="output folder (default: export/out/<name>, with --profile export/out/<name>-<profile>)",
    ),
    profile: Optional[str] = typer.Option(
        None,
        "--profile",
        help="export profile: a name in export/profiles/ (jetson-orin, rtx-ada, h100, flux-fill) or a .toml path; "
        "its shapes, forms and precision are defaults that the flags below override",
    ),
    forms: Optional[str] = typer.Option(
        None, help="attention forms, comma-separated: decomposed,fold,attention_op,plugin (default: fold)"
    ),
    precision: Optional[str] = typer.Option(
        None, help="fp32 / fp16 / bf16 (I/O stays float32; default fp32)"
    ),
    components: Optional[str] = typer.Option(
        None,
        help="components, comma-separated (default: transformer,vae_encoder,vae_decoder,reference_encoder; "
        "reference_encoder only where the checkpoint has one)",
    ),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default per form: 18, attention_op 23)"),
    external_data: Optional[bool] = typer.Option(
        None, "--external-data/--no-external-data", help="weights in .onnx.data (default: only above 1.5 GiB)"
    ),
    force: bool = typer.Option(False, "--force", help="re-export even when a stage is up to date"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON on stdout"),
    lora: list[str] = typer.Option(
        [],
        "--lora",
        help="extra LoRA to carry in the transformer graph, [NAME=]PATH[@SCALE] (repeatable); "
        "the card's adapters are always carried",
    ),
) -> None:
    """Export a checkpoint to ONNX for the onnxruntime backend and engine builds."""
    from unidg_rt.export.pipeline import PIPELINE_COMPONENTS, export_pipeline

    prof = load_export_profile(profile) if profile is not None else ExportProfile("", Path())
    name = (weights.stem if weights.is_file() else weights.name) if weights is not None else "default"
    out_dir = out or Path("export/out") / (f"{name}-{prof.name}" if profile is not None else name)
    parts = (
        _split(components, "components") if components is not None else prof.components or PIPELINE_COMPONENTS
    )
    ranges = export_ranges(prof, weights)
    if profile is not None:
        console.print(f"export profile {prof.name} ({prof.path}): {prof.description}")
    t0 = time.perf_counter()
    manifest = export_pipeline(
        weights,
        out_dir,
        forms=_split(forms, "forms") if forms is not None else (prof.forms or ("fold",)),
        precision=precision or prof.precision or "fp32",
        components=parts,
        opset=opset if opset is not None else prof.opset,
        ranges=ranges,
        external_data=external_data if external_data is not None else prof.external_data,
        force=force,
        loras=[parse_lora(v) for v in lora],
    )
    elapsed = time.perf_counter() - t0
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, default=str))
        return
    table = Table(title=f"ONNX export → {out_dir}")
    for col in ("component", "file", "status"):
        table.add_column(col)
    for r in manifest["results"]:
        table.add_row(
            r["component"], r["file"], "[dim]up to date[/]" if r["skipped"] else "[green]exported[/]"
        )
    console.print(table)
    if manifest["adapters"]:
        carried = ", ".join(
            f"{n} ({a['source']}, strength {a['strength']:g})" for n, a in manifest["adapters"].items()
        )
        console.print(f"adapters in the transformer graph: {carried}")
    console.print(f"default attention form: {manifest['attention_form']}, precision {manifest['precision']} "
                  f"({elapsed:.1f} s); run with --backend onnxruntime --onnx-dir {out_dir}")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("export")(export)
