"""Builder feature detection against fake bindings (TensorRT-RTX 1.7, JetPack 6's TensorRT 10.3,
TensorRT 8.6): no TensorRT needed. The real TensorRT-RTX builds are in test_rtx_build.py."""

from __future__ import annotations

import json

import pytest

from unidg_rt.artifacts.plan import check_plan, parse_plan_name
from unidg_rt.engines import build as B
from unidg_rt.engines import build_config
from unidg_rt.engines import layers as L
from unidg_rt.engines.inputs import component_from_path, normalize_profiles, profiles_from_spec
from unidg_rt.errors import BackendUnavailableError, ConfigError

PROFILE = {"hidden_states": ((1, 4, 8), (1, 16, 8), (2, 64, 8))}


def test_network_flags_by_feature(fake_trt):
    rtx, t103, t86 = fake_trt("rtx"), fake_trt("trt103"), fake_trt("trt86")
    assert B.network_flags(rtx, True) == (1 << int(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED), True)
    assert B.network_flags(t103, True) == (1 << int(t103.NetworkDefinitionCreationFlag.STRONGLY_TYPED), True)
    assert B.network_flags(t103, False) == (0, False)  # 10.x: explicit batch is implied
    # 8.6 has no strongly typed networks: falls back to weak typing with EXPLICIT_BATCH
    assert B.network_flags(t86, True) == (1 << int(t86.NetworkDefinitionCreationFlag.EXPLICIT_BATCH), False)


def test_precision_flags_weak_vs_strong(fake_trt):
    t103, rtx = fake_trt("trt103"), fake_trt("rtx")
    cfg = t103.Builder(None).create_builder_config()
    assert B.precision_flags(t103, cfg, "fp16", strongly_typed=True) == []  # types come from the ONNX
    assert B.precision_flags(t103, cfg, "int8", strongly_typed=False) == ["INT8", "FP16"]
    with pytest.raises(ConfigError, match="strongly typed only"):
        B.precision_flags(rtx, rtx.Builder(None).create_builder_config(), "fp16", strongly_typed=False)
    with pytest.raises(ConfigError, match="FP8"):
        B.precision_flags(fake_trt("trt86"), cfg, "fp8", strongly_typed=False)


def test_rtx_targets(fake_trt):
    rtx = fake_trt("rtx")
    cfg = rtx.Builder(None).create_builder_config()
    rec = B.apply_target(rtx, cfg, "tensorrt-rtx", ["8.6", "12.0", "8.9"])
    assert cfg.num_compute_capabilities == 3 and cfg.ccs == {0: "SM86", 1: "SM89", 2: "SM120"}
    assert rec["compute_capabilities"] == ["8.6", "8.9", "12.0"] and "12.1" in rec["builder_supported"]
    portable = B.apply_target(rtx, rtx.Builder(None).create_builder_config(), "tensorrt-rtx", [])
    assert portable["compute_capabilities"] is None
    with pytest.raises(ConfigError, match=r"9\.0.*full TensorRT: --builder tensorrt"):
        B.apply_target(rtx, cfg, "tensorrt-rtx", ["9.0"])


def test_full_trt_targets(fake_trt, monkeypatch):
    t103 = fake_trt("trt103")
    cfg = t103.Builder(None).create_builder_config()
    monkeypatch.setattr(build_config, "local_device_cc", lambda: "8.7")  # a Jetson Orin
    assert B.apply_target(t103, cfg, "tensorrt", [])["compute_capabilities"] == ["8.7"]
    with pytest.raises(ConfigError, match="builds for this GPU"):
        B.apply_target(t103, cfg, "tensorrt", ["8.9"])
    rec = B.apply_target(t103, cfg, "tensorrt", ["ampere+"])
    assert (
        rec["hardware_compatibility"] == "AMPERE_PLUS"
        and cfg.hardware_compatibility_level.name == "AMPERE_PLUS"
    )
    monkeypatch.setattr(build_config, "local_device_cc", lambda: None)
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        B.apply_target(t103, cfg, "tensorrt", [])
    assert B.apply_target(t103, cfg, "tensorrt", ["8.7"])["compute_capabilities"] == ["8.7"]  # bare JetPack


def test_options_refit_weight_streaming_workspace(fake_trt):
    t86, t103 = fake_trt("trt86"), fake_trt("trt103")
    cfg = t103.Builder(None).create_builder_config()
    applied = B.apply_options(
        t103, cfg, workspace=1 << 30, refit=True, weight_streaming=True, strongly_typed=True, opt_level=5
    )
    assert applied == {
        "workspace": 1 << 30,
        "refit": True,
        "weight_streaming": True,
        "builder_optimization_level": 5,
    }
    assert cfg.pool == {"WORKSPACE": 1 << 30} and {"REFIT", "WEIGHT_STREAMING"} <= set(cfg.flags_set)
    assert cfg.profiling_verbosity.name == "DETAILED"
    cfg86 = t86.Builder(None).create_builder_config()
    applied = B.apply_options(
        t86, cfg86, workspace=None, refit=False, weight_streaming=True, strongly_typed=False, opt_level=None
    )
    assert applied == {"weight_streaming": False}  # 8.6 has no WEIGHT_STREAMING: detected, recorded off
    with pytest.raises(ConfigError, match="strongly typed"):
        B.apply_options(
            t103,
            cfg,
            workspace=None,
            refit=False,
            weight_streaming=True,
            strongly_typed=False,
            opt_level=None,
        )


def test_timing_cache_load_save_and_rtx_noop(fake_trt, tmp_path):
    t103, rtx = fake_trt("trt103"), fake_trt("rtx")
    path = tmp_path / "timing.cache"
    cache, state = B.attach_timing_cache(t103.Builder(None).create_builder_config(), path)
    assert state == "created" and cache is not None
    path.write_bytes(b"old")
    cache, state = B.attach_timing_cache(t103.Builder(None).create_builder_config(), path)
    assert state == "loaded" and cache.data == b"old"
    cache, state = B.attach_timing_cache(rtx.Builder(None).create_builder_config(), path)
    assert cache is None and "no-op" in state


def test_build_engine_with_fake_rtx_records_flags_profiles_and_builder_log(
    fake_trt, tiny_onnx, mha_line, tmp_path
):
    """Over fake bindings: what build_engine asks the builder for (strong typing, target, profile)
    and that the builder's verbose layer log reaches the sidecar. What a real builder fuses is
    asserted only by the TensorRT-RTX builds (test_rtx_build.py); the fake's log line is canned."""

    rtx = fake_trt("rtx")
    info = B.build_engine(
        tiny_onnx,
        tmp_path / "plans",
        builder="tensorrt-rtx",
        precision="fp16",
        profiles=PROFILE,
        target="8.9",
        trt_module=rtx,
    )
    fields = parse_plan_name(info.plan_path)
    assert fields["component"] == "transformer-fold" and fields["target"] == "sm89"
    assert fields["builder"] == "tensorrt-rtx" and fields["builder_version"] == "1.7.1.116"
    m = json.loads(info.manifest_path.read_text())
    assert m["target"]["compute_capabilities"] == ["8.9"] and m["flags"]["strongly_typed"] is True
    assert m["profiles"] == [{"hidden_states": [[1, 4, 8], [1, 16, 8], [2, 64, 8]]}]
    assert m["layer_report"] == L.attention_summary(L.parse_log_layers([mha_line]))  # passed through
    assert rtx.Builder.last.config.profiles[0].shapes == {"hidden_states": PROFILE["hidden_states"]}
    assert check_plan(info.plan_path, onnx_path=tiny_onnx, device_cc="8.9")["component"] == "transformer"


def test_build_engine_checks_inputs(fake_trt, tiny_onnx, tmp_path):
    rtx = fake_trt("rtx")
    with pytest.raises(ConfigError, match="dynamic dims"):
        B.build_engine(tiny_onnx, tmp_path, builder="tensorrt-rtx", precision="fp16", trt_module=rtx)
    with pytest.raises(ConfigError, match="export it with --precision fp32"):  # fp16 weights, fp32 asked
        B.build_engine(
            tiny_onnx, tmp_path, builder="tensorrt-rtx", precision="fp32", profiles=PROFILE, trt_module=rtx
        )
    with pytest.raises(ConfigError, match="Q/DQ"):
        B.build_engine(
            tiny_onnx, tmp_path, builder="tensorrt-rtx", precision="int8", profiles=PROFILE, trt_module=rtx
        )


def test_load_trt_missing_says_how_to_install(monkeypatch):
    import sys

    for name in ("tensorrt_rtx_bindings", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)  # import → ImportError
    with pytest.raises(
        BackendUnavailableError, match="pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
    ):
        B.load_trt("tensorrt-rtx")


def test_profiles_adapter_from_iospec():
    from unidg_rt.export.spec import GenerationRange, vae_decoder_spec
    from unidg_rt.models.presets import tiny_vae_config

    spec = vae_decoder_spec(tiny_vae_config(), {"line": GenerationRange(sides=(32, 64, 96), batch=(1, 1, 2))})
    prof = profiles_from_spec(spec, "line")
    assert prof == {"latent": ((1, 16, 4, 8), (1, 16, 8, 16), (2, 16, 12, 24))}
    assert profiles_from_spec(spec.to_dict()) == prof  # the exporter's sidecar form
    assert normalize_profiles(prof) == [prof]
    with pytest.raises(ConfigError, match="min ≤ opt ≤ max"):
        normalize_profiles({"latent": ((2, 16, 4, 8), (1, 16, 8, 16), (2, 16, 12, 24))})


def test_component_tags(tmp_path):
    from pathlib import Path

    assert component_from_path(Path("transformer.fold.fp16.onnx")) == "transformer-fold"
    assert component_from_path(Path("vae_decoder.default.bf16.onnx")) == "vae_decoder"
    assert component_from_path(Path("x/vae_encoder.onnx")) == "vae_encoder"


# ----------------------------------------------------------------------------- layer reports
def _line(name, inputs, meta="node_Softmax_1"):
    ins = ", ".join(
        f"{{ Name: t{i}, Dimensions: [{','.join(map(str, d))}], Strides: [1], StrideOrder: [0], Datatype: Half, Format: x }}"
        for i, d in enumerate(inputs)
    )
    return f"Name: {name}, LayerType: kgen, Inputs: [{ins}], Constants: [], Outputs: [], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: {meta}]"


def test_attention_summary_forms(mha_line):
    fold = L.attention_summary(L.parse_log_layers([mha_line] * 4))
    assert fold["fused_mha"] == 4 and fold["fused_mha_with_mask_input"] == 0 and fold["mha_head_dims"] == [24]
    assert fold["verdict"].startswith("fused MHA x4") and "no mask input" in fold["verdict"]
    dec = L.attention_summary(
        L.parse_log_layers(
            [_line("_gemm_mha_v2_myl0_23", [[-1, -1, 16], [-1, 16, -1], [-1, 1, -1, -1], [-1, -1, 16]])]
        )
    )
    assert dec["fused_mha_with_mask_input"] == 1 and dec["mask_input_dims"] == [[-1, 1, -1, -1]]
    unfused = L.attention_summary(
        L.parse_log_layers([_line("__myl_SlicReshMaxrSubExpSumDivMul_myl0_23", [[2, -1, -1]])])
    )
    assert unfused["fused_mha"] == 0 and unfused["verdict"].startswith("attention NOT fused")
    assert L.attention_summary([])["verdict"] == "no layer information from this builder"


def test_inspector_json():
    text = json.dumps(
        {
            "Layers": [
                {
                    "Name": "mha_fused_1",
                    "LayerType": "Myelin",
                    "Inputs": [{"Name": "q", "Dimensions": [1, 2, 8, 64], "Format/Datatype": "Half"}],
                    "Metadata": "[ONNX Layer: attn]",
                },
                "plain",
            ]
        }
    )
    layers = L.parse_inspector_json(text)
    assert layers[0]["onnx_nodes"] == ["attn"] and layers[1]["name"] == "plain"
    assert L.attention_summary(layers)["fused_mha"] == 1
