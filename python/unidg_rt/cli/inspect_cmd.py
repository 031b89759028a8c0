"""``unidg-rt inspect``: what a weights file, ONNX file or engine plan holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from unidg_rt.errors import InvalidInputError

console = Console()


def inspect_weights(path: Path) -> dict:
    from safetensors import safe_open

    from unidg_rt.models.loading import read_card, read_metadata

    meta = read_metadata(path)
    card = read_card(path)
    counts: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            sl = f.get_slice(key)
            n = 1
            for s in sl.get_shape():
                n *= s
            comp = key.split(".", 1)[0] if card is not None else "transformer"
            counts[comp] = counts.get(comp, 0) + n
            dtypes[sl.get_dtype()] = dtypes.get(sl.get_dtype(), 0) + n
    return {
        "path": str(path),
        "format": card.format if card else "bare safetensors",
        "transformer": card.transformer.to_dict() if card else None,
        "vae": card.vae if card else None,
        "defaults": card.defaults if card else None,
        "parameters": counts,
        "dtypes": dtypes,
        "metadata_keys": sorted(meta),
    }


def inspect(
    path: Path = typer.Argument(..., help=".safetensors weights, .onnx file or .plan engine"),
) -> None:
    """Print config, parameter counts and dtypes (weights), I/O and profiles (ONNX / plans)."""
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist: pass a .safetensors, .onnx or .plan file")
    if path.suffix == ".safetensors":
        info = inspect_weights(path)
    elif path.suffix == ".onnx":
        from unidg_rt.export.inspect import inspect_onnx

        info = inspect_onnx(path)
    elif path.suffix in (".plan", ".engine"):
        from unidg_rt.artifacts.plan import inspect_plan

        info = inspect_plan(path)
    else:
        raise InvalidInputError(
            f"{path}: unknown file type {path.suffix!r}; expected .safetensors, .onnx or .plan"
        )
    console.print_json(json.dumps(info, default=str))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
