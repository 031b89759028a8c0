"""scripts/gpu-check.sh: the one-call GPU acceptance script, proven on CPU in --dry-run mode
(tiny sizes, no installs) and its report merger (scripts/gpu_check_report.py) unit-tested."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
STEPS = ("install", "gpu-tests", "generate", "bench-16", "bench-32", "ort-cuda")


def _report_module():
    spec = importlib.util.spec_from_file_location(
        "gpu_check_report", REPO / "scripts" / "gpu_check_report.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, **env):
    full = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "OUT": str(tmp_path / "out"),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--results-dir", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        env=full,
        cwd=REPO,
        timeout=600,
    )


def test_script_is_strict_bash():
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text and "|| true" not in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """Every step runs (CPU stand-ins: pytest -m gpu collected, generate on the default model,
    bench at 16 and 32 per side, the ORT step skipped with its reason) and one merged JSON is
    written to the results folder and to $OUT/benchmarks/results."""
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "cpu-dry-run.json").read_text())
    assert (tmp_path / "out" / "benchmarks" / "results" / "cpu-dry-run.json").read_text() == json.dumps(
        report, indent=2, sort_keys=True
    ) + "\n"
    assert report["dry_run"] and report["all_ok"] and set(report["steps"]) == set(STEPS)
    assert {s["status"] for n, s in report["steps"].items() if n not in ("install", "ort-cuda")} == {"ok"}
    assert "tests collected" in report["steps"]["gpu-tests"]["last_line"]
    gen = report["generate"]
    assert gen["fast"]["settings_fast_path"] == "auto" and gen["eager"]["settings_fast_path"] == "off"
    assert gen["fast_vs_eager"]["max_abs_levels"] == 0  # CPU: auto = eager, same seed
    for size in ("16", "32"):
        res = report["bench"][size]["results"]
        assert report["bench"][size]["config"]["height"] == int(size)
        for variant in ("ours-eager", "ours-fast", "ours-fast-nobias", "diffusers-eager", "diffusers-mask"):
            assert res[variant]["dit_step"]["median_ms"] > 0, variant
        assert "skipped" in res["ours-fast-fp8"]  # no FP8 on CPU: a reason, not a number
        assert res["ours-fast"]["e2e_1_steps"]["runs"] >= 1
    targets = report["targets"]
    assert targets["dit_step_fp8_vs_diffusers@16"] == {"value": None, "target": "<= 0.35", "met": None}
    assert targets["dit_step_fast_vs_diffusers@32"]["value"] > 0
    ort = report["ort_cuda"]
    if report["steps"]["ort-cuda"]["status"] == "skipped":
        assert "CUDAExecutionProvider" in ort["reason"] or "does not import" in ort["reason"]


def test_gpu_check_spent_budget_fails_and_still_reports(tmp_path):
    """A step that cannot run (here: no time left) fails the script, and the JSON is still written."""
    proc = _run(tmp_path, GPU_CHECK_BUDGET_S="5")
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads((tmp_path / "results" / "cpu-dry-run.json").read_text())
    assert not report["all_ok"] and report["steps"]["generate"]["status"] == "not-run"
    assert "budget" in report["steps"]["generate"]["last_line"]


def test_unknown_argument_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


def test_report_targets_and_names():
    mod = _report_module()
    bench = {
        "config": {"steps": 8},
        "results": {
            "ours-fast": {"dit_step": {"median_ms": 50.0}, "e2e_8_steps": {"median_ms": 500.0}},
            "ours-fast-nobias": {"dit_step": {"median_ms": 49.0}},
            "ours-fast-fp8": {"skipped": "no FP8"},
            "diffusers-eager": {"dit_step": {"median_ms": 100.0}},
        },
    }
    t = mod.targets({512: bench})
    assert t["dit_step_fast_vs_diffusers@512"] == {"value": 0.5, "target": "<= 0.6", "met": True}
    assert (
        t["dit_step_bias_vs_nobias@512"]["value"] == round(50 / 49, 4)
        and t["dit_step_bias_vs_nobias@512"]["met"]
    )
    assert t["dit_step_fp8_vs_diffusers@512"]["met"] is None  # not measured: never counted as met
    assert t["e2e_8_steps_fp8_512_ms"]["met"] is None
    assert mod.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
