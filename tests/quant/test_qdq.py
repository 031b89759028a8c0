"""Q/DQ graphs: which layers are quantised, post-validation, refusals, the folder registration."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from unidg_rt.artifacts.io import sha256_file  # noqa: E402
from unidg_rt.artifacts.onnx_folder import read_manifest  # noqa: E402
from unidg_rt.errors import InvalidInputError  # noqa: E402
from unidg_rt.quant.artifacts import quantize_folder  # noqa: E402
from unidg_rt.quant.qdq import plan_quantization, quantize_onnx, validate_qdq  # noqa: E402

LAYERS = 4  # tiny: 2 double + 2 single blocks


def test_plan_keeps_first_last_modulation_and_attention(calibrated):
    plan = plan_quantization(calibrated.fp32)
    assert not plan.unmapped  # every MatMul/Gemm knows its module (exporter name scopes)
    kept = {plan.modules[n] for n in plan.keep}
    for module in (
        "x_embedder",
        "context_embedder",
        "proj_out",
        "norm_out.linear",
        "time_text_embed.timestep_embedder.linear_1",
        "transformer_blocks.0.norm1.linear",
        "transformer_blocks.1.norm1_context.linear",
        "single_transformer_blocks.1.norm.linear",
    ):
        assert module in kept, module
    attention = [n for n, r in plan.keep.items() if r.startswith("attention")]
    assert len(attention) == 2 * LAYERS  # QKᵀ and PV per layer
    quantised = {plan.modules[n] for n in plan.to_quantize}
    assert {
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.1.ff.net.2",
        "single_transformer_blocks.0.proj_out",
    } <= quantised
    assert not any(m.startswith(("x_embedder", "time_text_embed", "norm_out")) for m in quantised)
    everything = plan_quantization(calibrated.fp32, keep=(), quantize_attention=True)
    assert not everything.keep


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_graph_validates(quantized, precision, request):
    if precision == "fp8":
        request.getfixturevalue("needs_modelopt")
    path = quantized.paths[precision]
    rep = validate_qdq(path)  # arguments from the model metadata the quantiser wrote
    assert rep.ok, rep.problems
    assert rep.precision == precision
    assert rep.quantized_dtypes == (["INT8"] if precision == "int8" else ["FLOAT8E4M3FN"])
    assert rep.coverage == 1.0 and rep.eligible_compute == 34 and rep.kept_nodes == 24
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    # weights per output channel (DQ of a constant, scale vector); activations per tensor (scalar scale)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weight_dq = [n for n in dq if n.input[0] in inits]
    act_dq = [n for n in dq if n.input[0] not in inits]
    assert weight_dq and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in weight_dq)
    assert act_dq and all(inits[n.input[1]].ndim == 0 for n in act_dq)
    side = quantized.results[precision]["sidecar"]
    assert side["precision"] == precision and side["quantization"]["calibration_samples"] == 12
    assert side["total_bytes"] < side["quantization"]["source_total_bytes"]  # quantised weights are stored
    entry = {(a["component"], a["precision"]): a for a in read_manifest(quantized.onnx_dir)["artifacts"]}
    assert entry[("transformer", precision)]["onnx_file"] == path.name
    assert read_manifest(quantized.onnx_dir)["precision"] == "fp32"  # the default stays
    # the fp32 source is untouched (ModelOpt would run shape inference on it in place)
    fp32_side = json.loads((quantized.onnx_dir / "transformer.fold.fp32.json").read_text())
    assert sha256_file(quantized.onnx_dir / "transformer.fold.fp32.onnx") == fp32_side["onnx_sha256"]


def _save(model, path):
    onnx.save(model, str(path))
    return path


def test_validation_catches_bad_graphs(quantized, calibrated, tmp_path):
    path = quantized.paths["int8"]
    rep = validate_qdq(calibrated.fp32, precision="int8")
    assert not rep.ok and any("not quantised" in p for p in rep.problems)
    assert any("coverage" in p for p in validate_qdq(path, min_coverage=1.01).problems)
    model = onnx.load(str(path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    quantised = next(
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[0]) == "DequantizeLinear"
    )
    assert any("has a quantised input" in p for p in validate_qdq(path, keep_nodes=[quantised]).problems)
    # a non-zero zero point (asymmetric) and a custom-domain Q/DQ
    bad = onnx.load(str(path))
    q = next(n for n in bad.graph.node if n.op_type == "QuantizeLinear")
    zp = next(t for t in bad.graph.initializer if t.name == q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    bad.graph.node.append(helper.make_node("DequantizeLinear", ["x", "s"], ["y"], domain="com.microsoft"))
    problems = validate_qdq(_save(bad, tmp_path / "bad.onnx")).problems
    assert any("non-zero zero point" in p for p in problems)
    assert any("custom-domain" in p for p in problems)


def test_refused_without_calibration(calibrated, tmp_path):
    empty = tmp_path / "no-calibration"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="random scales never ship"):
        quantize_folder(calibrated.onnx_dir, empty, "int8")
    with pytest.raises(InvalidInputError, match="random scales never ship"):
        quantize_onnx(calibrated.fp32, tmp_path / "x.onnx", empty, "int8")
    assert not list(calibrated.onnx_dir.glob("*.int8.*"))


def test_refused_with_calibration_of_another_model(calibrated, tmp_path):
    data = dict(np.load(calibrated.cal / "transformer.npz"))
    data["hidden_states"] = data["hidden_states"][..., :100]  # another model's channels
    np.savez(tmp_path / "transformer.npz", **data)
    with pytest.raises(InvalidInputError, match="another model"):
        quantize_onnx(calibrated.fp32, tmp_path / "x.onnx", tmp_path, "int8")


def test_ort_quantizer_and_custom_keep(quantized, calibrated, tmp_path):
    """The onnxruntime fallback (also after ModelOpt patched ORT's calibrators in this process),
    with the first double block kept in high precision instead of the defaults."""
    import onnxruntime as ort

    out = tmp_path / "transformer.fold.int8.onnx"
    res = quantize_onnx(
        calibrated.fp32, out, calibrated.cal, "int8", backend="ort", keep=("transformer_blocks.0",)
    )
    assert res.report.ok, res.report.problems
    assert res.settings["backend"] == "onnxruntime.quantization" and res.settings["high_precision"] == "fp32"
    kept_modules = {res.plan.modules[n] for n, r in res.plan.keep.items() if r.startswith("keep")}
    assert kept_modules and all(m.startswith("transformer_blocks.0.") for m in kept_modules)
    assert "x_embedder" in {res.plan.modules[n] for n in res.plan.to_quantize}
    feed = _feed(calibrated)
    ref = ort.InferenceSession(str(calibrated.fp32), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert _cos(ref, got) > 0.999


def _feed(calibrated):
    from unidg_rt.quant.qdq import calibration_feeds

    return calibration_feeds(calibrated.fp32, calibrated.cal, max_samples=1)[0]


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_up_to_date_is_skipped(quantized):
    (res,) = quantize_folder(quantized.onnx_dir, quantized.cal, "int8")
    assert (
        res["skipped"]
        and res["sidecar"]["onnx_sha256"] == quantized.results["int8"]["sidecar"]["onnx_sha256"]
    )


def test_vae_decoder_int8_is_opt_in(calibrated, tmp_path):
    """INT8 VAE only when asked (``components``): conv_in/conv_out and the mid-block attention math
    stay high precision; ``from_onnx(precision="int8")`` then picks it up."""
    import shutil

    from unidg_rt.runtime.pipeline import UniDGPipeline

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(calibrated.onnx_dir, onnx_dir)
    (res,) = quantize_folder(onnx_dir, calibrated.cal, "int8", components=("vae_decoder",), backend="ort")
    q = res["sidecar"]["quantization"]
    assert q["validation"]["ok"] and q["validation"]["coverage"] == 1.0
    kept = {r for r in q["kept_nodes"].values()}
    assert kept == {
        "keep pattern '*conv_in'",
        "keep pattern '*conv_out'",
        "attention math (activation x activation)",
    }
    pipe = UniDGPipeline.from_onnx(onnx_dir, precision="int8")
    assert pipe.backend.artifacts["vae_decoder"]["precision"] == "int8"
    assert (
        pipe.backend.artifacts["transformer"]["precision"] == "fp32"
    )  # no INT8 transformer here: falls back
    # a later export of the same weights keeps the quantised entry in the manifest
    from unidg_rt.export.pipeline import export_pipeline

    manifest = export_pipeline(
        json.loads((onnx_dir / "unidg_onnx.json").read_text())["source"]["path"], onnx_dir
    )
    assert all(r["skipped"] for r in manifest["results"])
    assert ("vae_decoder", "int8") in {(a["component"], a["precision"]) for a in manifest["artifacts"]}
