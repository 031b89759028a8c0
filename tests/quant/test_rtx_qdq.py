"""INT8 and FP8 Q/DQ graphs AOT-build with TensorRT-RTX for sm 8.9 (Ada) and sm 12.0 (Blackwell),
both FP8- and INT8-capable, in one plan each, on this CPU-only machine. The graphs are strongly
typed: Q/DQ carry the precision, the rest is the fp16 ModelOpt wrote (so the attention fuses into
one MHA kernel per layer, which fp32 does not). Nothing runs an engine here (no RTX GPU)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.trt
trt = pytest.importorskip(
    "tensorrt_rtx_bindings",
    reason="TensorRT-RTX bindings missing: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
)

#: the README's Q/DQ claim: "AOT-build with TensorRT-RTX for sm 8.9/12.0"
QDQ_TARGETS = ["8.9", "12.0"]


def _attention_layers(checkpoint) -> int:
    from unidg_rt.models.loading import read_card

    cfg = read_card(checkpoint).transformer
    return cfg.num_layers + cfg.num_single_layers


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_builds_for_ada_and_blackwell(quantized, tiny_checkpoint, precision, tmp_path, request):
    from unidg_rt.artifacts.plan import check_plan, parse_plan_name, target_tag
    from unidg_rt.engines.build import build_engine

    if precision == "fp8":
        request.getfixturevalue("needs_modelopt")
    path = quantized.paths[precision]
    info = build_engine(path, tmp_path, builder="tensorrt-rtx", precision=precision, target=QDQ_TARGETS)
    fields = parse_plan_name(info.plan_path)
    assert fields["component"] == "transformer-fold" and fields["precision"] == precision
    assert fields["target"] == target_tag(QDQ_TARGETS)
    assert info.manifest["target"]["compute_capabilities"] == QDQ_TARGETS
    assert info.manifest["flags"]["strongly_typed"] and info.manifest["flags"]["precision_flags"] == []
    assert info.manifest["plan"]["bytes"] > 0
    r = info.attention
    layers = _attention_layers(tiny_checkpoint)
    assert r["fused_mha"] == layers and r["fused_mha_with_mask_input"] == 0, r["verdict"]
    for cc in QDQ_TARGETS:
        check_plan(info.plan_path, onnx_path=path, device_cc=cc)


def test_fp8_needs_ada_int8_builds_for_ampere(quantized, tmp_path, needs_modelopt):
    """TensorRT-RTX 1.7 refuses FP8 for sm 8.6 (RTX 30xx: no FP8 tensor cores) — asserted, with
    its reason; the INT8 graph builds for the same target."""
    from unidg_rt.engines.build import EngineBuildError, build_engine

    with pytest.raises(EngineBuildError, match=r"sm86.*HW-specific datatypes: fp8"):
        build_engine(quantized.paths["fp8"], tmp_path, builder="tensorrt-rtx", precision="fp8", target="8.6")
    info = build_engine(
        quantized.paths["int8"], tmp_path, builder="tensorrt-rtx", precision="int8", target="8.6"
    )
    assert info.plan_path.is_file()
