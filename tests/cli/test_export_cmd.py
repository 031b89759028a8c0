"""``unidg-rt export --lora [NAME=]PATH[@SCALE]``: parsing, the manifest record, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unidg_rt.cli.export_cmd import parse_lora
from unidg_rt.errors import InvalidInputError


def test_parse_lora():
    assert parse_lora("a/style.safetensors") == (Path("a/style.safetensors"), "style", 1.0)
    assert parse_lora("ink=a/b.safetensors@0.5") == (Path("a/b.safetensors"), "ink", 0.5)
    with pytest.raises(InvalidInputError, match="scale 'x' is not a number"):
        parse_lora("a.safetensors@x")
    with pytest.raises(InvalidInputError, match="names no file"):
        parse_lora("ink=@0.5")


def test_export_with_lora(run_cli, tiny_checkpoint, tmp_path):
    import torch

    from unidg_rt.models.adapters import AdapterManager
    from unidg_rt.models.loading import load_transformer

    manager = AdapterManager(load_transformer(tiny_checkpoint))
    manager.add("x", rank=2)
    lora = manager.save("x", tmp_path / "x.safetensors")
    torch.manual_seed(0)
    run = run_cli("export", "--weights", tiny_checkpoint, "--out", tmp_path / "o", "--components", "transformer",
                  "--lora", f"ink={lora}@0.5", "--json")  # fmt: skip
    assert run.code == 0, run.stderr
    manifest = json.loads(run.stdout)
    assert manifest["adapters"]["ink"]["strength"] == 0.5
    run_cli(
        "export", "--weights", tiny_checkpoint, "--out", tmp_path / "o", "--lora", f"{lora}@big"
    ).one_line_error("--lora", "not a number")
