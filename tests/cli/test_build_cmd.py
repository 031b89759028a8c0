"""``unidg-rt build --profile NAME|PATH``: a build profile (``engines/profiles/*.toml``) supplies the
builder options, explicit flags win, errors are one line. The option mapping is checked with a
recording ``build_engine``; one real TensorRT-RTX AOT build (marked ``trt``, like
tests/engines/test_rtx_build.py) runs ``export --profile rtx-ada`` → ``build --profile rtx-ada``."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """``build_engine`` replaced by a recorder; a folder with an fp16 and a bf16 transformer ONNX."""
    import unidg_rt.engines.build as build_mod

    calls = []

    def fake_build_engine(onnx_path, out_dir, **kw):
        calls.append({"onnx": onnx_path.name, **kw})
        manifest = {"plan": {"bytes": 1}, "build_seconds": 0.0, "layer_report": None}
        return build_mod.PlanInfo(tmp_path / "x.plan", tmp_path / "x.json", manifest, 0.0)

    monkeypatch.setattr(build_mod, "build_engine", fake_build_engine)
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    for precision in ("fp16", "bf16"):
        (onnx_dir / f"transformer.fold.{precision}.onnx").write_bytes(b"")
    return calls, onnx_dir


def test_profile_supplies_builder_options(run_cli, recorded):
    calls, onnx_dir = recorded
    run = run_cli("build", onnx_dir, "--profile", "h100", "--out", onnx_dir.parent / "plans")
    assert run.code == 0, run.stderr
    assert "build profile h100" in run.stderr
    (call,) = calls
    assert call["onnx"] == "transformer.fold.bf16.onnx"  # the profile's precision picks the export
    assert call["builder"] == "tensorrt" and call["precision"] == "bf16" and call["target"] == ["9.0"]
    assert call["workspace"] == 16 * 2**30 and call["opt_level"] == 3
    assert call["refit"] is False and call["weight_streaming"] is False and call["strongly_typed"] is True


def test_flags_win_over_the_profile(run_cli, recorded, tmp_path):
    calls, onnx_dir = recorded
    profile = tmp_path / "line.toml"
    profile.write_text(
        'builder = "tensorrt"\ntargets = ["8.7"]\nprecision = "bf16"\nrefit = true\nopt_level = 2\n'
    )
    run = run_cli(
        "build",
        onnx_dir,
        "--profile",
        profile,
        "--builder",
        "tensorrt-rtx",
        "--target",
        "8.9",
        "--target",
        "12.0",
        "--precision",
        "fp16",
        "--no-refit",
        "--opt-level",
        "5",
        "--out",
        tmp_path / "plans",
    )
    assert run.code == 0, run.stderr
    (call,) = calls
    assert call["onnx"] == "transformer.fold.fp16.onnx"
    assert (
        call["builder"] == "tensorrt-rtx"
        and call["precision"] == "fp16"
        and call["target"] == ["8.9", "12.0"]
    )
    assert call["refit"] is False and call["opt_level"] == 5


def test_without_profile_defaults_unchanged(run_cli, recorded):
    calls, onnx_dir = recorded
    assert run_cli("build", onnx_dir, "--out", onnx_dir.parent / "plans").code == 0
    (call,) = calls
    assert call["builder"] == "tensorrt-rtx" and call["precision"] == "fp16" and call["target"] is None
    assert call["workspace"] is None and call["opt_level"] is None and call["size_range"] is None
    assert call["refit"] is False and call["strongly_typed"] is True and call["timing_cache"] is None


def test_profile_errors_are_one_line(run_cli, recorded, tmp_path):
    _, onnx_dir = recorded
    run_cli("build", onnx_dir, "--profile", "jetson-xavier").one_line_error(
        "engines profile 'jetson-xavier' not found", "available:", "rtx-ada", "jetson-orin"
    )
    run_cli("build", tmp_path / "missing", "--profile", "rtx-ada").one_line_error(
        "does not exist", "unidg-rt export --profile rtx-ada"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('builder = "tensorrt-llm"\n')
    run_cli("build", onnx_dir, "--profile", bad).one_line_error("builder='tensorrt-llm' unknown", str(bad))


@pytest.mark.trt
def test_export_and_build_with_the_rtx_ada_profile(run_cli, tiny_checkpoint, tmp_path):
    """The shipped rtx-ada profiles end to end: fp16 fold ONNX with batch 1..4, one AOT plan for sm 8.9."""
    trt = pytest.importorskip(
        "tensorrt_rtx_bindings",
        reason="TensorRT-RTX bindings missing: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
    )
    pytest.importorskip("onnxscript", reason="the exporter needs the export extra (onnx, onnxscript)")
    onnx_dir = tmp_path / "onnx"
    run = run_cli(
        "export",
        "--weights",
        tiny_checkpoint,
        "--profile",
        "rtx-ada",
        "--components",
        "transformer",
        "--out",
        onnx_dir,
    )
    assert run.code == 0, run.stderr
    run = run_cli("build", onnx_dir, "--profile", "rtx-ada", "--out", tmp_path / "plans", "--json")
    assert run.code == 0, run.stderr
    (m,) = json.loads(run.stdout)
    assert m["builder"] == "tensorrt-rtx" and m["builder_version"] == trt.__version__
    assert m["precision"] == "fp16" and m["component_tag"] == "transformer-fold"
    assert m["target"]["compute_capabilities"] == ["8.9"] and ".sm89." in m["plan"]["name"]
    assert m["profiles"][0]["hidden_states"][0][0] == 1 and m["profiles"][0]["hidden_states"][2][0] == 4
