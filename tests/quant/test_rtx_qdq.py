"""INT8 and FP8 Q/DQ graphs AOT-build with TensorRT-RTX for sm 8.9 (Ada: FP8 and INT8 tensor
cores) on this CPU-only machine. The graphs are strongly typed: Q/DQ carry the precision, the
rest is the fp16 ModelOpt wrote (so the attention fuses into one MHA kernel, which fp32 does not).
Nothing runs an engine here (no RTX GPU)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.trt
trt = pytest.importorskip(
    "tensorrt_rtx_bindings",
    reason="TensorRT-RTX bindings missing: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_builds_for_ada(quantized, precision, tmp_path):
    from unidg_rt.engines.build import build_engine
    from unidg_rt.engines.manifest import check_plan, parse_plan_name

    if precision not in quantized.paths:
        pytest.skip("FP8 Q/DQ needs nvidia-modelopt")
    path = quantized.paths[precision]
    info = build_engine(path, tmp_path, builder="tensorrt-rtx", precision=precision, target="8.9")
    fields = parse_plan_name(info.plan_path)
    assert fields["component"] == "transformer-fold" and fields["precision"] == precision
    assert info.manifest["flags"]["strongly_typed"] and info.manifest["flags"]["precision_flags"] == []
    assert info.manifest["plan"]["bytes"] > 0
    verdict = info.attention["verdict"]
    assert verdict.startswith("fused MHA x4"), verdict  # 2 double + 2 single blocks
    check_plan(info.plan_path, onnx_path=path, device_cc="8.9")


def test_fp8_needs_ada_int8_builds_for_ampere(quantized, tmp_path):
    """TensorRT-RTX 1.7 refuses FP8 for sm 8.6 (RTX 30xx: no FP8 tensor cores) — asserted, with
    its reason; the INT8 graph builds for the same target."""
    from unidg_rt.engines.build import EngineBuildError, build_engine

    if "fp8" not in quantized.paths:
        pytest.skip("FP8 Q/DQ needs nvidia-modelopt")
    with pytest.raises(EngineBuildError, match=r"sm86.*HW-specific datatypes: fp8"):
        build_engine(quantized.paths["fp8"], tmp_path, builder="tensorrt-rtx", precision="fp8", target="8.6")
    info = build_engine(
        quantized.paths["int8"], tmp_path, builder="tensorrt-rtx", precision="int8", target="8.6"
    )
    assert info.plan_path.is_file()
