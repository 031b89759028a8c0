"""Real TensorRT-RTX AOT builds on a CPU-only machine (CI installs the bindings):

    pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116

The shipped default model's transformer (bias-folding and decomposed forms), VAE encoder/decoder
and reference encoder (a random one at the model's dims while the shipped model has none) are
exported in fp16 (:func:`unidg_rt.export.pipeline.export_pipeline`) and
AOT-built for RTX targets; the builder's layer table says whether each attention became one fused MHA kernel
(summarised at the end of the pytest output). The plugin form cannot be built without its
plugin library: that failure is asserted, not skipped. Nothing here *runs* an engine (no RTX
GPU is reachable; the H100 is sm 9.0, which TensorRT-RTX does not target).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.trt
trt = pytest.importorskip(
    "tensorrt_rtx_bindings",
    reason="TensorRT-RTX bindings missing: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
)
pytest.importorskip("onnxscript", reason="the exporter needs the export extra (onnx, onnxscript)")

from unidg_rt.artifacts import plan as mf  # noqa: E402
from unidg_rt.engines.build import EngineBuildError, build_engine  # noqa: E402
from unidg_rt.errors import EngineMismatchError  # noqa: E402

#: three RTX generations (Ampere, Ada, Blackwell) in one plan per component
ALL_RTX = ["8.6", "8.9", "12.0"]
#: per component: compute capabilities to AOT-build for
TARGETS = {
    tag: ALL_RTX
    for tag in (
        "transformer-fold",
        "transformer-decomposed",
        "vae_encoder",
        "vae_decoder",
        "reference_encoder",
    )
}


def _default_arch():
    """Attention count and folded head dim of the shipped default model (read from its card)."""
    from unidg_rt.groups import NUM_GROUPS
    from unidg_rt.models.loading import read_card
    from unidg_rt.runtime.assets import default_model_path

    cfg = read_card(default_model_path()).transformer
    d = cfg.attention_head_dim + NUM_GROUPS
    return cfg.total_layers, d + (-d) % 8  # fold pads q/k to a multiple of 8


DEFAULT_LAYERS, FOLDED_HEAD_DIM = _default_arch()


def _with_reference_encoder(folder):
    """The default model (weights byte-identical) with a random reference encoder beside it, named in
    its card defaults, at the model's dims — for as long as the shipped model has none."""
    import shutil

    import torch

    from unidg_rt.models.loading import read_card
    from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig, save_reference_encoder
    from unidg_rt.runtime.assets import default_model_path
    from unidg_rt.train.ship import rewrite_card_defaults

    src = default_model_path()
    card = read_card(src)
    if card.defaults.get("reference_encoder"):
        return src
    path = folder / "model.safetensors"
    shutil.copyfile(src, path)
    for spec in (card.defaults.get("adapters") or {}).values():  # the card's adapters travel with it
        shutil.copyfile(src.parent / spec["file"], folder / spec["file"])
    rewrite_card_defaults(
        path, {**card.defaults, "reference_encoder": {"file": "reference_encoder.safetensors"}}
    )
    cfg, d = card.transformer, card.defaults
    config = ReferenceEncoderConfig(
        seq_len=int(d.get("text_seq_len", 8)),
        dim=cfg.joint_attention_dim,
        pooled_dim=cfg.pooled_projection_dim,
        image_size=int(d.get("height", 96)),
    )
    torch.manual_seed(0)
    save_reference_encoder(folder / "reference_encoder.safetensors", ReferenceEncoder(config))
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """fp16 ONNX of the shipped default model (``unidg_rt.export.pipeline.export_pipeline``):
    transformer in the fold and decomposed forms, VAE encoder, VAE decoder, reference encoder +
    ``unidg_onnx.json``."""
    from unidg_rt.engines.inputs import component_from_path
    from unidg_rt.export.pipeline import export_pipeline

    out = tmp_path_factory.mktemp("onnx")
    checkpoint = _with_reference_encoder(tmp_path_factory.mktemp("default_ref"))
    export_pipeline(checkpoint, out, forms=("fold", "decomposed"), precision="fp16")
    return {component_from_path(p): p for p in sorted(out.glob("*.onnx"))}


@pytest.fixture(scope="session")
def plans(exported, tmp_path_factory, rtx_reports):
    """One AOT build per exported ONNX; profiles come from the exporter's sidecar IOSpec."""
    out = tmp_path_factory.mktemp("plans")
    built = {}
    for tag, path in exported.items():
        info = build_engine(path, out, builder="tensorrt-rtx", precision="fp16", target=TARGETS[tag])
        report = info.attention
        rtx_reports.append(
            (f"{tag} fp16 {'+'.join(TARGETS[tag])}", report.get("verdict", "?"), info.build_seconds)
        )
        built[tag] = info
    return built


@pytest.mark.parametrize("tag", list(TARGETS))
def test_plan_and_manifest(plans, exported, tag):
    info = plans[tag]
    fields = mf.parse_plan_name(info.plan_path)
    assert fields["component"] == tag and fields["precision"] == "fp16"
    assert fields["target"] == mf.target_tag(TARGETS[tag]) and fields["builder"] == "tensorrt-rtx"
    assert fields["builder_version"] == trt.__version__
    m = json.loads(info.manifest_path.read_text())
    assert m["onnx"]["sha256"] == mf.onnx_sha256(exported[tag])
    assert m["target"]["compute_capabilities"] == TARGETS[tag] and m["flags"]["strongly_typed"]
    assert m["profiles"] and all(len(v) == 3 for v in m["profiles"][0].values())
    assert m["flags"]["timing_cache"] == "not requested"
    assert m["metadata"]["latent_channels"] == 16  # pipeline facts from unidg_onnx.json (from_engines)
    inputs = [t["name"] for t in m["io"]["inputs"]]
    if tag.startswith("transformer"):  # the card's APO adapter is in the plan, its strengths an input
        assert m["metadata"]["carried_adapters"] == ["apo"] and "adapter_scales" in inputs
        assert m["metadata"]["defaults"]["adapters"]["apo"]["file"] == "apo.safetensors"
    else:
        assert "adapter_scales" not in inputs
    for cc in TARGETS[tag]:
        mf.check_plan(info.plan_path, onnx_path=exported[tag], device_cc=cc, builder_version=trt.__version__)


def test_fold_form_fuses_without_mask(plans):
    """Bias folding: every attention layer (double + single blocks, from the card) is one fused MHA
    kernel with only q, k, v (head dim + the group columns, padded to a multiple of 8), so the N×N
    bias never exists — with the card's APO adapter carried as LoRA branches of q/k/v and the
    projections (the branches are added before attention, so the fusion is unchanged)."""
    r = plans["transformer-fold"].attention
    assert r["fused_mha"] == DEFAULT_LAYERS, r["verdict"]
    assert r["fused_mha_with_mask_input"] == 0 and r["unfused_softmax"] == 0
    assert r["mha_head_dims"] == [FOLDED_HEAD_DIM]


def test_decomposed_form_fuses_with_materialised_mask(plans):
    """Decomposed: TensorRT-RTX still fuses MatMul+Add+Softmax+MatMul into one MHA kernel, but the
    gathered ``[B, H, N, N]`` bias is a 4th input that is materialised (memory O(N²))."""
    r = plans["transformer-decomposed"].attention
    assert r["fused_mha"] == DEFAULT_LAYERS and r["fused_mha_with_mask_input"] == DEFAULT_LAYERS, r["verdict"]
    assert len(r["mask_input_dims"][0]) == 4


@pytest.mark.parametrize("tag", ["vae_encoder", "vae_decoder"])
def test_vae_mid_attention_fuses_for_ada_and_blackwell_not_with_ampere(
    plans, exported, tag, tmp_path, rtx_reports
):
    """The VAE's one mid-block attention fuses into one MHA kernel for sm 8.9 + 12.0; a plan that
    also targets sm 8.6 leaves it unfused (GEMM + softmax + GEMM) — TensorRT-RTX 1.7's sm 8.6 MHA
    kernels do not take it (measured per target: 8.6 alone unfused, 8.9 or 12.0 alone fused)."""
    r = plans[tag].attention  # built for ALL_RTX
    assert r["fused_mha"] == 0 and r["unfused_softmax"] == 1, r["verdict"]
    targets = ["8.9", "12.0"]
    info = build_engine(exported[tag], tmp_path, builder="tensorrt-rtx", precision="fp16", target=targets)
    rtx_reports.append((f"{tag} fp16 {'+'.join(targets)}", info.attention["verdict"], info.build_seconds))
    r = info.attention
    assert r["fused_mha"] == 1 and r["fused_mha_with_mask_input"] == 0 and r["unfused_softmax"] == 0, r[
        "verdict"
    ]


def test_reference_encoder_plan_io(plans):
    """The reference encoder's plan keeps the one I/O vocabulary with a static crop side S (what
    ``TRTBackend`` resizes crops to) and a dynamic batch."""
    from unidg_rt.artifacts.plan_folder import reference_image_size

    m = plans["reference_encoder"].manifest
    size = m["metadata"]["spec_attrs"]["image_size"]  # 96 for the default model's dims
    (images,) = m["io"]["inputs"]
    assert images["name"] == "images" and images["shape"] == [-1, 3, size, size]
    assert [t["name"] for t in m["io"]["outputs"]] == ["encoder_hidden_states", "pooled_projections"]
    assert reference_image_size(m) == size and m["profiles"][0]["images"][2] == [4, 3, size, size]
    assert m["metadata"]["defaults"]["reference_encoder"]["file"]


def test_real_plan_refusals(plans, exported, tmp_path):
    import onnx

    info = plans["transformer-decomposed"]
    with pytest.raises(EngineMismatchError) as err:  # the lent H100
        mf.check_plan(info.plan_path, device_cc="9.0")
    assert "TensorRT-RTX does not support" in str(err.value)
    with pytest.raises(EngineMismatchError) as err:  # an RTX 2080 (sm 7.5) for an Ampere+ plan
        mf.check_plan(info.plan_path, device_cc="7.5")
    assert "--target 7.5" in str(
        err.value
    ) and f"--component transformer-decomposed --out {info.plan_path.parent}" in str(err.value)
    changed = tmp_path / exported["transformer-decomposed"].name
    model = onnx.load(str(exported["transformer-decomposed"]))
    model.producer_version = "changed"
    onnx.save(model, str(changed))
    with pytest.raises(
        EngineMismatchError, match=r"the model or its export changed\)\. Rebuild it with:\n  unidg-rt build "
    ):
        mf.check_plan(info.plan_path, onnx_path=changed)


def test_plugin_form_cannot_build_without_plugin(tmp_path, rtx_reports):
    """The ``plugin`` form's ``unidg::GroupBiasAttention`` node needs a TensorRT plugin library; none
    is built or registered (``engines/plugins`` holds no compiled plugin), so the parser must fail
    on exactly that node — asserted here so a silent skip cannot hide it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    qkv = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 2, 8, 16]) for n in "qkv"]
    groups = helper.make_tensor_value_info("token_groups", TensorProto.INT64, [8])
    bias = numpy_helper.from_array(np.zeros((2, 6, 6), np.float16), "group_bias")
    node = helper.make_node(
        "GroupBiasAttention",
        ["q", "k", "v", "token_groups", "group_bias"],
        ["out"],
        domain="unidg",
        scale=0.25,
    )
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 2, 8, 16])
    graph = helper.make_graph([node], "plugin", [*qkv, groups], [out], [bias])
    path = tmp_path / "transformer.plugin.fp16.onnx"
    onnx.save(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("unidg", 1)]
        ),
        str(path),
    )
    with pytest.raises(EngineBuildError) as err:
        build_engine(path, tmp_path / "plans", builder="tensorrt-rtx", precision="fp16", target="8.9")
    msg = str(err.value)
    assert "GroupBiasAttention" in msg and "Plugin not found" in msg, msg
    rtx_reports.append(
        ("transformer-plugin fp16 8.9", "NOT BUILT: no unidg::GroupBiasAttention plugin registered", 0.0)
    )


def test_cli_build_and_inspect(exported, tmp_path):
    from typer.testing import CliRunner

    from unidg_rt.cli.app import app

    onnx_dir = exported["vae_decoder"].parent
    out = tmp_path / "plans"
    res = CliRunner().invoke(
        app,
        [
            "build",
            str(onnx_dir),
            "--builder",
            "tensorrt-rtx",
            "--target",
            "8.9",
            "--precision",
            "fp16",
            "--component",
            "vae_decoder",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    (plan,) = out.glob("vae_decoder.fp16.sm89.trtrtx-*.plan")
    res = CliRunner().invoke(app, ["inspect", str(plan)])
    assert res.exit_code == 0 and '"status": "ok: sidecar present, plan hash matches"' in res.output
    res = CliRunner().invoke(app, ["build", str(onnx_dir), "--precision", "bf16", "--out", str(out)])
    assert res.exit_code != 0  # nothing exported in bf16: a typed error, not a traceback
