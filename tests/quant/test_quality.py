"""INT8/FP8 Q/DQ graphs run in the pipeline on ORT CPU and stay within the stated quality
thresholds against fp32 (same cases, same seeds); the CLI. The report's SSIM/PSNR helpers:
tests/evaluation/test_metrics.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from unidg_rt.evaluation.precision_report import (  # noqa: E402
    THRESHOLDS,
    compare_precisions,
    report_markdown,
)
from unidg_rt.runtime.pipeline import UniDGPipeline  # noqa: E402

#: the README's pass thresholds (evaluation.precision_report.THRESHOLDS)
EXPECTED = {"latent_cosine_min": 0.98, "psnr_mask_db": 25.0, "ssim_mask": 0.90, "agreement": 0.8}
#: regression bounds for this random tiny checkpoint, well inside what was measured on ORT CPU
#: (3 cases, 3 steps; INT8 / FP8): worst latent cosine 0.99997 / 0.99996, worst velocity cosine
#: 0.99988 / 0.99980, PSNR 56.0 / 55.2 dB, SSIM 0.99981 / 0.99978, same category 100 %
TINY_BOUNDS = {
    "latent_cosine_min": 0.999,
    "velocity_cosine_min": 0.995,
    "psnr_mask_db": 40.0,
    "ssim_mask": 0.99,
}


def test_int8_runs_in_the_pipeline(quantized):
    pipe = UniDGPipeline.from_onnx(quantized.onnx_dir, precision="int8")
    arts = pipe.backend.artifacts
    assert arts["transformer"]["onnx_file"] == "transformer.fold.int8.onnx"
    assert arts["vae_decoder"]["precision"] == "fp32"  # no INT8 VAE exported: falls back
    assert pipe.backend.info["precision"] == "int8"
    img = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    mask = np.zeros((96, 96), bool)
    mask[30:60, 30:60] = True
    out = pipe(image=img, mask_image=mask, defect_category="scratch", seed=3, output_type="np")
    assert out.images.shape == (1, 96, 96, 3) and np.isfinite(out.images).all()


@pytest.fixture(scope="module")
def report(quantized, tiny_classifier):
    from unidg_rt.evaluation import build_eval_set

    cases = build_eval_set(3, ["scratch", "hole", "black spot"], modes=["reference", "text"], size=96)
    return compare_precisions(
        quantized.onnx_dir, quantized.precisions, cases=cases, num_seeds=1, classifier=tiny_classifier
    )


def test_quality_within_thresholds(report, quantized, request):
    assert THRESHOLDS == EXPECTED  # the README states these
    base = report.precisions["fp32"]
    assert base["latent_cosine_min"] == pytest.approx(1.0) and base["psnr_mask_db"] == 100.0
    for p in quantized.precisions:
        m = report.precisions[p]
        assert len(m["latent_cosine_per_step"]) == 3
        for key, bound in TINY_BOUNDS.items():
            assert m[key] >= bound, (p, key, m[key])
        # 3 images: one category flip (a classifier boundary case) must not fail CI on another CPU
        assert m["agreement"] >= 2 / 3, p
        assert m["background_max_error"] == 0  # outside the paste region nothing changes
        assert all(ok for k, ok in m["passes"].items() if k != "agreement"), m["passes"]
        assert m["transformer_bytes"] < base["transformer_bytes"]
        assert m["quantizer"] and m["coverage"] == 1.0
    rec = report.recommendations
    jetson = next(v for k, v in rec.items() if k.startswith("Jetson"))
    assert jetson["precision"].startswith("INT8")
    md = report_markdown(report)
    assert "| target | recommended |" in md and "latent cosine" in md and "PSNR" in md
    assert report.to_dict()["precisions"]["int8"]["passes"]
    if "fp8" not in quantized.precisions:  # INT8 checked above; FP8 skips with ModelOpt's reason
        request.getfixturevalue("needs_modelopt")


def test_cli_quantize_and_eval_compare(calibrated, tmp_path):
    """`unidg-rt quantize` (onnxruntime quantizer: fast) then `unidg-rt eval --compare`."""
    import shutil

    from typer.testing import CliRunner

    from unidg_rt.cli.app import app

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(calibrated.onnx_dir, onnx_dir)
    runner = CliRunner()
    res = runner.invoke(
        app, ["quantize", str(onnx_dir), "--calibration", str(tmp_path / "none"), "--backend", "ort"]
    )
    assert res.exit_code != 0 and "random scales never ship" in str(res.exception)
    res = runner.invoke(
        app,
        [
            "quantize",
            str(onnx_dir),
            "--calibration",
            str(calibrated.cal),
            "--backend",
            "ort",
            "--precision",
            "int8",
            "--max-samples",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (onnx_dir / "transformer.fold.int8.onnx").is_file() and (
        onnx_dir / "transformer.fold.int8.json"
    ).is_file()
    md = tmp_path / "cmp.md"
    res = runner.invoke(
        app,
        [
            "eval",
            "--compare",
            str(onnx_dir),
            "--precisions",
            "int8",
            "--cases",
            "2",
            "--seeds",
            "1",
            "--categories",
            "scratch,hole",
            "--size",
            "96",
            "--markdown",
            str(md),
            "--classifier-cache",
            str(tmp_path / "clf"),
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    text = md.read_text()
    assert "| metric | fp32 | int8 |" in text and "Jetson Orin" in text
