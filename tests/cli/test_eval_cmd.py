"""``unidg-rt eval --downstream`` end to end (quick sizes) and its option checks."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner


def test_eval_downstream_quick_prints_the_table_and_writes_json(tmp_path):
    from unidg_rt.cli.app import app
    from unidg_rt.evaluation.downstream import METHOD_LABELS, METHODS

    out_json, out_md = tmp_path / "d.json", tmp_path / "d.md"
    args = [
        "eval",
        "--downstream",
        "--quick",
        "--seeds",
        "2",
        "--train-images",
        "4",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pixel AP" in result.output and "CutPaste" in result.output  # the table (80 columns wraps)
    assert "same procedural family" in " ".join(result.output.split())
    data = json.loads(out_json.read_text())
    assert data["settings"]["seeds"] == 2 and data["settings"]["train_images"] == 4
    assert data["settings"]["model"] == "embedded default"
    assert set(data["methods"]) == set(METHODS)
    for metrics in data["methods"].values():
        for key in ("pixel_ap", "image_auroc"):
            assert len(metrics[key]["per_seed"]) == 2
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in metrics[key]["per_seed"])
    md = out_md.read_text()
    assert all(label in md for label in METHOD_LABELS.values())


def test_eval_downstream_takes_a_model_path(tmp_path):
    from unidg_rt.cli.app import app

    result = CliRunner().invoke(
        app, ["eval", "--downstream", "--quick", "--model", str(tmp_path / "missing.safetensors")]
    )
    assert result.exit_code != 0


def test_downstream_options_need_downstream():
    from unidg_rt.cli.app import app

    result = CliRunner().invoke(app, ["eval", "--quick"])
    assert result.exit_code != 0
    assert "--downstream" in result.output or "--downstream" in str(result.exception)
