"""`unidg-rt synth` in-process: manifest and folder + plan sources, formats, exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from unidg_rt.cli.app import app

FAST = ["--height", "16", "--width", "16", "--steps", "1", "--threads", "1"]


def _run(*args):
    result = CliRunner().invoke(app, ["synth", *map(str, args), *FAST, "--json"])
    summary = json.loads(result.stdout[result.stdout.index("{") :]) if "{" in result.stdout else None
    return result, summary


def test_manifest_with_bad_job_exits_1_and_exports_quadruplets(inputs_dir, kit, tiny_checkpoint):
    jobs = kit.good_jobs(2) + [
        {"id": "bad", "image": "nope.png", "mask_strategy": "center_box", "category": "hole"}
    ]
    m = kit.write_manifest(inputs_dir / "m.jsonl", jobs)
    result, summary = _run(
        m, "--out", inputs_dir / "out", "--weights", tiny_checkpoint, "--format", "quadruplet"
    )
    assert result.exit_code == 1, result.output
    assert (summary["ok"], summary["failed"], summary["dataset"]["abnormal"]) == (2, 1, 2)
    assert summary["failures"][0][0] == "bad" and "does not exist" in summary["failures"][0][1]
    assert len((inputs_dir / "out" / "quadruplets" / "captions.jsonl").read_text().splitlines()) == 2


def test_folder_with_plan_exits_0_and_resumes(inputs_dir, tiny_checkpoint):
    folder = inputs_dir / "normals"
    folder.mkdir()
    for i in range(2):
        (inputs_dir / f"normal_{i}.png").rename(folder / f"n{i}.png")
    args = [
        folder,
        "--out",
        inputs_dir / "out",
        "--weights",
        tiny_checkpoint,
        "--per-image",
        "2",
        "--categories",
        "scratch,hole",
        "--plan-seed",
        "1",
        "--product",
        "tile",
        "--format",
        "mvtec",
    ]
    result, summary = _run(*args)
    assert result.exit_code == 0, result.output
    assert (summary["ok"], summary["dataset"]["abnormal"], summary["dataset"]["normal"]) == (4, 4, 2)
    assert (inputs_dir / "out" / "mvtec" / "tile" / "train" / "good").is_dir()
    result, summary = _run(*args)
    assert result.exit_code == 0 and (summary["ok"], summary["skipped"]) == (0, 4)
    result, _ = _run(folder, "--out", inputs_dir / "out2", "--weights", tiny_checkpoint)
    assert result.exit_code != 0 and "pass a plan" in str(result.exception)
