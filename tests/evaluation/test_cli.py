"""``unidg-rt eval`` on the tiny checkpoint (typer CliRunner)."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner


def test_eval_cli_prints_the_table_and_writes_json_and_grid(
    tmp_path, tiny_checkpoint, tiny_classifier, monkeypatch
):
    import unidg_rt.evaluation.evaluator as E
    from unidg_rt.cli.app import app

    monkeypatch.setattr(E, "load_or_train", lambda *a, **k: tiny_classifier)  # skip the 30 s training
    out_json, out_png, out_md = tmp_path / "r.json", tmp_path / "g.png", tmp_path / "t.md"
    args = [
        "eval",
        "--weights",
        str(tiny_checkpoint),
        "--cases",
        "2",
        "--steps",
        "2",
        "--seeds",
        "2",
        "--categories",
        "scratch,hole",
        "--json",
        str(out_json),
        "--grid",
        str(out_png),
        "--markdown",
        str(out_md),
        "--classifier-cache",
        str(tmp_path / "cache"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SFT+APO" in result.output and "consistency" in result.output
    assert "SFT+APO results read as:" in result.output
    data = json.loads(out_json.read_text())
    assert data["variants"]["SFT"]["background_max_error"] == 0
    assert data["settings"]["num_cases"] == 2
    with Image.open(out_png) as im:
        assert im.width > 0 and im.height > 0
    md = out_md.read_text()
    assert md.startswith("| metric |") and "| category | SFT | SFT+APO |" in md


def test_eval_cli_grid_only_needs_grid(tiny_checkpoint):
    from unidg_rt.cli.app import app

    result = CliRunner().invoke(app, ["eval", "--weights", str(tiny_checkpoint), "--grid-only"])
    assert result.exit_code != 0
