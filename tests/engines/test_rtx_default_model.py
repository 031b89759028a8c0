"""Acceptance (issue 5), the forms test_rtx_build.py does not cover: the shipped default model's
transformer in the opset-23 ``attention_op`` form, the ``plugin`` form (must fail on its plugin
node, reason asserted) and fp32 ``fold`` (builds, but TensorRT-RTX 1.7 leaves fp32 attention
unfused — the reason engines are built in fp16/bf16). ``slow`` (three more transformer exports):
``pytest -m "trt and slow" tests/engines``."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.trt, pytest.mark.slow]
trt = pytest.importorskip(
    "tensorrt_rtx_bindings",
    reason="TensorRT-RTX bindings missing: pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
)
pytest.importorskip("onnxscript", reason="the exporter needs the export extra (onnx, onnxscript)")

#: (form, precision) → what TensorRT-RTX 1.7 makes of it for sm89; ``None`` = must not build
EXPECTED = {
    ("attention_op", "fp16"): "fused MHA x4 (_gemm_mha_v2) with an additive mask input",
    ("plugin", "fp16"): None,
    ("fold", "fp32"): "attention NOT fused",
}


@pytest.mark.parametrize(("form", "precision"), list(EXPECTED))
def test_default_model_other_forms(form, precision, tmp_path, rtx_reports):
    from unidg_rt.engines.build import EngineBuildError, build_engine
    from unidg_rt.engines.manifest import check_plan
    from unidg_rt.export.pipeline import export_pipeline

    onnx_dir = tmp_path / "onnx"
    export_pipeline(None, onnx_dir, forms=(form,), precision=precision, components=("transformer",))
    (path,) = onnx_dir.glob(f"transformer.{form}.{precision}.onnx")
    name = f"default transformer-{form} {precision} 8.9"
    if EXPECTED[(form, precision)] is None:
        with pytest.raises(EngineBuildError, match="GroupBiasAttention.*Plugin not found"):
            build_engine(path, tmp_path / "plans", builder="tensorrt-rtx", precision=precision, target="8.9")
        rtx_reports.append((name, "NOT BUILT: no unidg::GroupBiasAttention plugin registered", 0.0))
        return
    info = build_engine(path, tmp_path / "plans", builder="tensorrt-rtx", precision=precision, target="8.9")
    verdict = info.attention["verdict"]
    rtx_reports.append((name, verdict, info.build_seconds))
    assert verdict.startswith(EXPECTED[(form, precision)]), verdict
    check_plan(info.plan_path, onnx_path=path, device_cc="8.9")
