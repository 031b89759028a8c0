"""Transformer export per attention form: ORT CPU parity with the torch reference (fp32, ≤ 1e-4),
and the graph structure each form promises (node counts per form).

``fold`` comes from the pipeline export of the tiny checkpoint (2+2 layers), the other forms from
a 1+1-layer tiny transformer (``form_exports``) to keep the suite fast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unidg_rt.errors import ConfigError
from unidg_rt.export.inspect import inspect_onnx
from unidg_rt.export.passes import check_attention_form
from unidg_rt.export.spec import component_spec
from unidg_rt.export.verify import verify_onnx
from unidg_rt.export.wrappers import wrap
from unidg_rt.groups import NUM_GROUPS

RUNNABLE_FORMS = ("decomposed", "fold", "attention_op")  # plugin: TensorRT only
PIPELINE_LAYERS = 4  # tiny preset: 2 double + 2 single blocks
FORM_LAYERS = 2  # form_exports: 1 + 1


def _spec(tiny_models):
    return component_spec("transformer", tiny_models[0].config)


def _artifact(form, onnx_dir, form_exports, tiny_models):
    """(path, export wrapper, spec, layers) of ``form``'s transformer export."""
    if form == "fold":
        spec = _spec(tiny_models)
        return (
            onnx_dir / "transformer.fold.fp32.onnx",
            wrap("transformer", tiny_models[0], spec),
            spec,
            PIPELINE_LAYERS,
        )
    out, model, spec = form_exports
    return out / f"transformer.{form}.fp32.onnx", wrap("transformer", model, spec), spec, FORM_LAYERS


@pytest.mark.parametrize("form", RUNNABLE_FORMS)
def test_ort_parity_per_form(onnx_dir, form_exports, tiny_models, form):
    path, module, spec, _ = _artifact(form, onnx_dir, form_exports, tiny_models)
    feeds = [
        spec.sample_inputs(point="min"),  # batch 1, 8 image + 8 text tokens
        spec.sample_inputs({"batch": 2, "img_tokens": 40, "text_tokens": 5}, seed=1),
    ]
    report = verify_onnx(path, module, spec, feeds)
    assert report.passed, report.to_dict()
    assert report.worst <= 1e-4


@pytest.mark.parametrize("form", RUNNABLE_FORMS)
def test_blocking_bias_entries(onnx_dir, form_exports, tiny_models, form):
    """-inf entries (blocking) work; fold clamps them to FOLD_NEG, which is exact in fp32."""
    path, module, spec, _ = _artifact(form, onnx_dir, form_exports, tiny_models)
    feed = spec.sample_inputs({"img_tokens": 12, "text_tokens": 4})
    table = feed["group_bias"].copy()
    table[:, :, 1, 3] = -np.inf  # REF_DEFECT never attends to TARGET_REGION
    table[:, :, 4, 0] = -np.inf  # TARGET_CONTEXT never attends to text
    feed["group_bias"] = table
    report = verify_onnx(path, module, spec, [feed])
    assert report.worst <= 1e-4, report.to_dict()


def test_graph_io_follows_the_spec(onnx_dir, tiny_models):
    spec = _spec(tiny_models)
    info = inspect_onnx(onnx_dir / "transformer.fold.fp32.onnx")
    assert [i["name"] for i in info["inputs"]] == list(spec.input_names)
    shapes = {i["name"]: i["shape"] for i in info["inputs"] + info["outputs"]}
    assert shapes["hidden_states"] == ["batch", "img_tokens", 384]
    assert shapes["img_ids"] == ["img_tokens", 3] and shapes["txt_ids"] == ["text_tokens", 3]
    assert shapes["token_groups"] == ["tokens"]
    assert shapes["group_bias"] == [PIPELINE_LAYERS, 2, NUM_GROUPS, NUM_GROUPS]
    assert shapes["noise_pred"] == ["batch", "img_tokens", 64]
    dtypes = {i["name"]: i["dtype"] for i in info["inputs"]}
    assert dtypes["token_groups"] == "int64" and dtypes["hidden_states"] == "float32"


def test_node_counts_per_form(onnx_dir, form_exports):
    att = {
        f: inspect_onnx(form_exports[0] / f"transformer.{f}.fp32.onnx")["attention"]
        for f in ("decomposed", "attention_op", "plugin")
    }
    att["fold"] = inspect_onnx(onnx_dir / "transformer.fold.fp32.onnx")["attention"]
    n = FORM_LAYERS
    # decomposed: every Softmax gets an additive N×N mask gathered from the group table
    assert att["decomposed"]["softmax"] == n and att["decomposed"]["softmax_with_bias_mask"] == n
    assert att["decomposed"]["mask_gathers"] == n
    # fold: no mask reaches any Softmax, and no N×N gather exists at all
    assert att["fold"]["softmax"] == PIPELINE_LAYERS and att["fold"]["softmax_with_bias_mask"] == 0
    assert att["fold"]["mask_gathers"] == 0 and att["fold"]["attention_op"] == 0
    # attention_op: one ONNX Attention node per layer, each with attn_mask; no Softmax left
    assert att["attention_op"]["attention_op"] == n == att["attention_op"]["attention_op_with_mask"]
    assert att["attention_op"]["softmax"] == 0
    # plugin: one custom node per layer, no N×N anything
    assert att["plugin"]["plugin"] == n
    assert att["plugin"]["softmax"] == att["plugin"]["mask_gathers"] == att["plugin"]["attention_op"] == 0


def test_attention_op_opset_and_plugin_node(form_exports):
    import onnx

    out = form_exports[0]
    assert inspect_onnx(out / "transformer.attention_op.fp32.onnx")["opsets"]["ai.onnx"] == 23
    info = inspect_onnx(out / "transformer.plugin.fp32.onnx")
    assert (
        info["custom_domains"] == ["unidg"] and info["op_counts"]["unidg::GroupBiasAttention"] == FORM_LAYERS
    )
    model = onnx.load(str(out / "transformer.plugin.fp32.onnx"))
    nodes = [n for n in model.graph.node if n.domain == "unidg"]
    assert all(len(n.input) == 5 and n.input[3] == "token_groups" for n in nodes)
    assert {a.name: a.f for a in nodes[0].attribute} == {"scale": pytest.approx(0.25)}  # 1/sqrt(16)
    with pytest.raises(Exception, match="GroupBiasAttention"):  # ORT has no kernel for the plugin
        import onnxruntime as ort

        ort.InferenceSession(str(out / "transformer.plugin.fp32.onnx"))


def test_structure_check_rejects_the_wrong_form(form_exports):
    import onnx

    from unidg_rt.export import ExportError

    model = onnx.load(str(form_exports[0] / "transformer.decomposed.fp32.onnx"), load_external_data=False)
    check_attention_form(model, "decomposed", FORM_LAYERS)
    with pytest.raises(ExportError, match="'fold' attention structure"):
        check_attention_form(model, "fold", FORM_LAYERS)


def test_sidecar_records_sources_and_versions(onnx_dir, tiny_checkpoint):
    from unidg_rt.artifacts.io import sha256_file

    side = json.loads((onnx_dir / "transformer.fold.fp32.json").read_text())
    assert side["source_sha256"] == sha256_file(tiny_checkpoint)
    assert side["onnx_sha256"] == sha256_file(onnx_dir / "transformer.fold.fp32.onnx")
    assert side["exporter"] == "dynamo" and side["fallback_reason"] is None
    assert {"torch", "onnx", "onnxscript", "unidg_rt"} <= set(side["versions"])
    assert side["spec"]["component"] == "transformer" and side["opset"] == 18
    assert side["external_data"] is None and not side["dry_run"]


def test_bad_form_and_opset_are_config_errors(tiny_models, tmp_path):
    from unidg_rt.export.onnx import export_component

    spec = _spec(tiny_models)
    with pytest.raises(ConfigError, match="attention_form='flash'"):
        export_component("transformer", tiny_models[0], spec, tmp_path, attention_form="flash")
    with pytest.raises(ConfigError, match="opset >= 23"):
        export_component(
            "transformer", tiny_models[0], spec, tmp_path, attention_form="attention_op", opset=18
        )
    with pytest.raises(ConfigError, match="precision='int4'"):
        export_component("transformer", tiny_models[0], spec, tmp_path, precision="int4")
