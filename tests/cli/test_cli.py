"""CLI: generate (reference + text mode) writes PNG + JSON; inspect; config show; clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from unidg_rt.cli.app import app

runner = CliRunner()


def _write_inputs(tmp_path, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    paths = {}
    for name, arr in (
        ("image", img),
        ("mask", mask.astype(np.uint8) * 255),
        ("reference", ref),
        ("reference-mask", rmask.astype(np.uint8) * 255),
    ):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(arr).save(paths[name])
    return paths


def test_generate_reference_and_text_mode(tiny_checkpoint, sample_inputs, tmp_path):
    p = _write_inputs(tmp_path, sample_inputs)
    out = tmp_path / "out.png"
    args = ["generate", "--weights", str(tiny_checkpoint), "--seed", "3", "--output", str(out)]
    args += [f"--{k}={v}" for k, v in p.items()]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert Image.open(out).size == (120, 100)
    assert record["seed"] == 3 and record["pipeline"]["mode"] == "reference"
    out2 = tmp_path / "text.png"
    res = runner.invoke(
        app,
        [
            "generate",
            "--weights",
            str(tiny_checkpoint),
            "--image",
            str(p["image"]),
            "--mask",
            str(p["mask"]),
            "--category",
            "hole",
            "--output",
            str(out2),
            "--num-images",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "text_0.png").exists() and (tmp_path / "text_1.json").exists()


def test_inspect_and_config(tiny_checkpoint, tmp_path, monkeypatch):
    res = runner.invoke(app, ["inspect", str(tiny_checkpoint)])
    assert res.exit_code == 0 and '"in_channels": 384' in res.output
    monkeypatch.setenv("UNIDG_NUM_INFERENCE_STEPS", "5")
    res = runner.invoke(app, ["config", "show"])
    assert res.exit_code == 0 and json.loads(res.output)["num_inference_steps"] == 5


def test_bad_input_is_one_clean_line(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unidg_rt",
            "generate",
            "--weights",
            str(tiny_checkpoint),
            "--image",
            str(bad),
            "--mask",
            str(bad),
            "--category",
            "hole",
            "--output",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--image" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()
