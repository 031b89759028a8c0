"""``unidg-rt calibrate [--manifest NAME|PATH]``: the default manifest by name, listed cases that
point at the bundled samples, one-line errors."""

from __future__ import annotations

import json


def test_calibrate_listed_sample_case(run_cli, tiny_checkpoint, tmp_path):
    sample = "unidg_rt:assets/samples/"
    manifest = tmp_path / "line.json"
    manifest.write_text(
        json.dumps(
            {
                "num_inference_steps": 2,
                "capture_steps": [0],
                "num_cases": 0,
                "cases": [
                    {
                        "name": "sample",
                        "image": sample + "target.png",
                        "mask": sample + "target_mask.png",
                        "reference": sample + "reference.png",
                        "reference_mask": sample + "reference_mask.png",
                    }
                ],
            }
        )
    )
    run = run_cli(
        "calibrate", "--manifest", manifest, "--weights", tiny_checkpoint, "--out", tmp_path / "cal"
    )
    assert run.code == 0, run.stderr
    assert "1 listed + 0 procedural cases" in " ".join(run.stderr.split())  # rich wraps lines
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert summary["num_cases"] == 1 and summary["samples"]["vae_encoder"] == 1


def test_calibrate_errors_are_one_line(run_cli, tmp_path):
    run_cli("calibrate", "--manifest", "nope").one_line_error(
        "calibration manifest 'nope' not found", "available: default"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": [{"image": "a.png", "mask": "m.png"}]}))
    run_cli("calibrate", "--manifest", bad, "--out", tmp_path / "cal").one_line_error(
        "calibration case 0 lacks", "'category'"
    )
