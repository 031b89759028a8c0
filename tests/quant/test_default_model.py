"""Acceptance (issue 7) on the shipped default model (``python/unidg_rt/assets/default``):
calibrate with the shipped manifest → quantise INT8 → run on ORT CPU in the pipeline → quality
within the README thresholds against fp32 on held-out cases.

The manifest's categories are restricted to those the model has embeddings for (the shipped
``calibration/default.json`` also lists ``crack`` and ``stain``) and its case count is halved to
keep CI short; capture runs the exported fp32 ONNX pipeline (same inputs as the torch one, faster).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MANIFEST = Path(__file__).resolve().parents[2] / "calibration" / "default.json"


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    from unidg_rt.evaluation import build_eval_set, train_classifier
    from unidg_rt.export.pipeline import export_pipeline
    from unidg_rt.quant.artifacts import quantize_folder
    from unidg_rt.quant.calibration import capture, load_manifest
    from unidg_rt.quant.report import compare_precisions
    from unidg_rt.runtime.pipeline import UniDGPipeline

    root = tmp_path_factory.mktemp("default_q")
    export_pipeline(None, root / "onnx")
    pipe = UniDGPipeline.from_onnx(root / "onnx")
    known = {c.replace("_", " ") for c in pipe.embeddings.categories}
    manifest = json.loads(MANIFEST.read_text())
    manifest["categories"] = [c for c in manifest["categories"] if c in known]
    manifest["num_cases"] = max(4, manifest["num_cases"] // 2)
    (root / "manifest.json").write_text(json.dumps(manifest))
    capture(pipe, load_manifest(root / "manifest.json"), root / "cal")
    (res,) = quantize_folder(root / "onnx", root / "cal", "int8")
    cats = manifest["categories"][:4]
    cases = build_eval_set(4, cats, modes=["reference", "text"], size=96)
    clf = train_classifier(cats, gen_size=(int(pipe.defaults["height"]), int(pipe.defaults["width"])),
                           n_train=12, n_test=6)  # fmt: skip
    return res, compare_precisions(root / "onnx", ["int8"], cases=cases, classifier=clf), pipe.defaults


def test_default_model_int8_within_thresholds(default_report):
    res, report, defaults = default_report
    v = res["sidecar"]["quantization"]["validation"]
    assert v["ok"] and v["coverage"] >= 0.9
    m = report.precisions["int8"]
    keys = (
        "latent_cosine_min",
        "velocity_cosine_min",
        "psnr_mask_db",
        "ssim_mask",
        "agreement",
        "transformer_bytes",
    )
    summary = json.dumps({k: m[k] for k in keys})
    fp32_bytes = report.precisions["fp32"]["transformer_bytes"]
    print(
        f"\ndefault model ({defaults.get('description', '?')}): INT8 vs fp32 {summary}; fp32 transformer {fp32_bytes} B"
    )
    failed = [k for k, ok in m["passes"].items() if not ok and k != "agreement"]
    assert not failed, (failed, m)
    assert m["agreement"] >= 0.75 and m["background_max_error"] == 0
