"""``unidg-rt train`` is registered and runs a tiny recipe end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from unidg_rt.cli.app import app

from .conftest import TINY_RECIPE


def test_train_cli_tiny(tmp_path):
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["train", "all", "--recipe", str(recipe), "--out", str(out), "--steps", "1"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "train_report.json").read_text())
    assert report["stages"]["sft"]["steps"] == 1
    for f in (
        "model.safetensors",
        "embeddings.safetensors",
        "apo.safetensors",
        "reference_encoder.safetensors",
    ):
        assert (out / f).is_file()
        assert report["files_bytes"][f] == (out / f).stat().st_size  # sizes as of the last stage
    # the run folder is a loadable UniDG checkpoint with the APO adapter and default segments
    from unidg_rt.runtime.pipeline import UniDGPipeline

    pipe = UniDGPipeline.from_pretrained(out / "model.safetensors")
    assert "apo" in pipe.backend.adapters.adapters and pipe.defaults["segments"]
    assert pipe.reference_encoder is not None  # the card names the learned reference encoder
    assert pipe.defaults["reference_encoder"]["cutout"]  # refitted by stage refenc on cut-out crops
    folder = UniDGPipeline.from_pretrained(out)  # the run folder itself loads the same model
    assert "apo" in folder.backend.adapters.adapters and folder.defaults == pipe.defaults


def test_train_cli_rejects_unknown_stage():
    res = CliRunner().invoke(app, ["train", "everything"])
    assert res.exit_code != 0
