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
    run = run_cli(
        "export",
        "--weights",
        tiny_checkpoint,
        "--out",
        tmp_path / "o",
        "--components",
        "transformer",
        "--lora",
        f"ink={lora}@0.5",
        "--json",
    )
    assert run.code == 0, run.stderr
    manifest = json.loads(run.stdout)
    assert manifest["adapters"]["ink"]["strength"] == 0.5
    run_cli(
        "export", "--weights", tiny_checkpoint, "--out", tmp_path / "o", "--lora", f"{lora}@big"
    ).one_line_error("--lora", "not a number")


# ----------------------------------------------------------------------------- --profile
def test_export_with_profile_flags_win(run_cli, tiny_checkpoint, tmp_path):
    """``--profile PATH``: its forms, components and ranges apply; an explicit ``--precision`` wins over
    its precision; a range without sides/text follows the checkpoint (64 px side, text 8)."""
    profile = tmp_path / "line.toml"
    profile.write_text(
        'description = "test line"\nforms = ["decomposed"]\nprecision = "fp16"\ncomponents = ["transformer"]\n'
        "[ranges.small]\nbatch = [1, 1, 2]\n[ranges.fixed]\nsides = [48, 48, 48]\ntext = [8, 8, 8]\n"
    )
    run = run_cli(
        "export",
        "--weights",
        tiny_checkpoint,
        "--profile",
        profile,
        "--precision",
        "fp32",
        "--out",
        tmp_path / "o",
        "--json",
    )
    assert run.code == 0, run.stderr
    manifest = json.loads(run.stdout)
    assert manifest["precision"] == "fp32" and manifest["attention_form"] == "decomposed"
    assert [r["component"] for r in manifest["results"]] == ["transformer"]
    tr = manifest["profiles"]["transformer"]
    assert list(tr) == ["small", "fixed"]
    # sides 32/64/96 around the checkpoint's 64 px: img tokens (s/16)·(2s/16); text 8 from its card
    assert tr["small"]["img_tokens"] == [8, 32, 72] and tr["small"]["text_tokens"] == [8, 8, 8]
    assert tr["small"]["batch"] == [1, 1, 2] and tr["fixed"]["img_tokens"] == [18, 18, 18]
    assert tr["fixed"]["batch"] == [1, 1, 4]


def test_export_profile_errors_are_one_line(run_cli, tiny_checkpoint, tmp_path):
    run_cli("export", "--weights", tiny_checkpoint, "--profile", "jetson-xavier").one_line_error(
        "export profile 'jetson-xavier' not found", "available:", "jetson-orin", "rtx-ada"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[ranges.default]\nsides = [100, 200, 300]\n")
    run_cli("export", "--weights", tiny_checkpoint, "--profile", bad, "--out", tmp_path / "o").one_line_error(
        str(bad), "ranges.default", "multiples of 16"
    )
