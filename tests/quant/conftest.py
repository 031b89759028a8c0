"""Shared quantisation fixtures (export and quantisation cost seconds of CPU each: built once).

- ``calibrated``: the tiny checkpoint exported to fp32 ONNX (``fold``) + calibration captured by
  running that ONNX pipeline on 4 procedural cases at every step (12 transformer samples).
- ``quantized``: the same folder after ``quantize_folder`` to INT8 and (with ModelOpt) FP8.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

TINY_CATEGORIES = ("scratch", "hole", "black spot")
CALIBRATION = {
    "seed": 11,
    "num_cases": 4,
    "categories": ["scratch", "hole", "black spot"],
    "image_size": 96,
    "text_mode_fraction": 0.5,
    "num_inference_steps": 3,
    "capture_steps": [0, 1, 2],
}


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level("WARNING")
    yield


@pytest.fixture(scope="session")
def calibrated(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from unidg_rt.export.pipeline import export_pipeline
    from unidg_rt.quant.calibration import capture, load_manifest
    from unidg_rt.runtime.pipeline import UniDGPipeline

    root = tmp_path_factory.mktemp("quant")
    onnx_dir = root / "onnx"
    export_pipeline(tiny_checkpoint, onnx_dir)
    (root / "calibration.json").write_text(json.dumps(CALIBRATION))
    pipe = UniDGPipeline.from_onnx(onnx_dir)
    capture(pipe, load_manifest(root / "calibration.json"), root / "cal")
    return SimpleNamespace(
        root=root, onnx_dir=onnx_dir, cal=root / "cal", fp32=onnx_dir / "transformer.fold.fp32.onnx"
    )


@pytest.fixture(scope="session")
def quantized(calibrated):
    """INT8 (+ FP8 when ModelOpt is installed) registered in a copy of the exported folder. FP8
    tests take ``needs_modelopt`` too: it skips with ModelOpt's import error outside CI and fails
    in CI (tests/conftest.py turns dependency skips into failures there)."""
    from unidg_rt.quant.artifacts import quantize_folder
    from unidg_rt.quant.quantizers import modelopt_available

    onnx_dir = calibrated.root / "onnx_q"
    shutil.copytree(calibrated.onnx_dir, onnx_dir)
    precisions = ["int8", "fp8"] if modelopt_available() else ["int8"]
    results = {p: quantize_folder(onnx_dir, calibrated.cal, p)[0] for p in precisions}
    return SimpleNamespace(
        onnx_dir=onnx_dir,
        cal=calibrated.cal,
        results=results,
        precisions=precisions,
        paths={p: onnx_dir / r["file"] for p, r in results.items()},
    )


@pytest.fixture(scope="session")
def tiny_classifier():
    from unidg_rt.evaluation import train_classifier

    return train_classifier(TINY_CATEGORIES, gen_size=(64, 64), n_train=12, n_test=6)


@pytest.fixture
def needs_modelopt():
    """Skip (fail under CI=true) with the reason ModelOpt's ONNX quantizer does not import."""
    from unidg_rt.quant.quantizers import modelopt_unavailable_reason

    reason = modelopt_unavailable_reason()
    if reason is not None:
        pytest.skip(f"FP8 Q/DQ needs nvidia-modelopt: {reason}")
