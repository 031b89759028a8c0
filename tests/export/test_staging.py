"""Staged artifacts: unchanged inputs skip the export, changed weights rebuild it; precision,
external data and the TorchScript fallback."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from unidg_rt.export import ExportError
from unidg_rt.export.onnx import export_component
from unidg_rt.export.spec import GenerationRange, component_spec
from unidg_rt.export.verify import verify_onnx
from unidg_rt.export.wrappers import wrap
from unidg_rt.models.presets import tiny_vae_config
from unidg_rt.models.vae import AutoencoderKLFlux

RANGE = GenerationRange((32, 64, 96), (8, 8, 8), (1, 1, 2))


@pytest.fixture()
def vae():
    torch.manual_seed(0)
    return AutoencoderKLFlux(tiny_vae_config()).eval().requires_grad_(False)


def test_pipeline_export_is_skipped_when_nothing_changed(onnx_export, tiny_checkpoint):
    from unidg_rt.export.pipeline import export_pipeline

    out, first = onnx_export
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    again = export_pipeline(tiny_checkpoint, out)
    assert all(r["skipped"] for r in again["results"]) and len(again["results"]) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == mtimes
    assert again["artifacts"] == first["artifacts"]


def test_fp16_stage_skip_and_rebuild_on_new_weights(vae, tmp_path):
    spec = component_spec("vae_decoder", vae.config, RANGE)
    first = export_component("vae_decoder", vae, spec, tmp_path, precision="fp16")
    assert not first.skipped and first.path.name == "vae_decoder.default.fp16.onnx"
    # fp16 weights inside, float32 I/O at the edges
    import onnx

    model = onnx.load(str(first.path))
    assert {t.data_type for t in model.graph.initializer if len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # ORT CPU runs fp16 convolutions; compare with torch's fp16 decoder
    report = verify_onnx(first.path, wrap("vae_decoder", copy.deepcopy(vae).half(), spec), spec, atol=2e-2)
    assert report.passed, report.to_dict()

    second = export_component("vae_decoder", vae, spec, tmp_path, precision="fp16")
    assert second.skipped and second.info["stage_key"] == first.info["stage_key"]

    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.1)  # new weights → new source hash → new stage
    third = export_component("vae_decoder", vae, spec, tmp_path, precision="fp16", external_data=True)
    assert not third.skipped and third.info["source_sha256"] != first.info["source_sha256"]
    assert (tmp_path / "vae_decoder.default.fp16.onnx.data").stat().st_size > 0
    assert third.info["external_data"] == "vae_decoder.default.fp16.onnx.data"
    report = verify_onnx(third.path, wrap("vae_decoder", copy.deepcopy(vae).half(), spec), spec, atol=2e-2)
    assert report.passed, report.to_dict()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_fallback_is_logged(vae, tmp_path, monkeypatch, caplog):
    import unidg_rt.export.onnx as export_onnx

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(export_onnx, "_export_dynamo", broken)
    spec = component_spec("vae_decoder", vae.config, RANGE)
    with caplog.at_level(logging.WARNING, logger="unidg_rt.export.onnx"):
        result = export_component("vae_decoder", vae, spec, tmp_path)
    assert f"torch {torch.__version__}" in caplog.text and "simulated dynamo failure" in caplog.text
    side = json.loads(result.sidecar_path.read_text())
    assert side["exporter"] == "torchscript" and "simulated" in side["fallback_reason"]
    report = verify_onnx(result.path, wrap("vae_decoder", vae, spec), spec, atol=1e-3)
    assert report.passed, report.to_dict()
    # the opset-23 Attention op and the plugin node have no TorchScript path: fail loudly
    from unidg_rt.models.config import FluxConfig
    from unidg_rt.models.mmdit import FluxTransformer

    tiny = FluxTransformer(FluxConfig.tiny(num_layers=1, num_single_layers=0)).eval()
    tspec = component_spec("transformer", tiny.config, RANGE)
    with pytest.raises(ExportError, match="TorchScript exporter cannot express it"):
        export_component("transformer", tiny, tspec, tmp_path, attention_form="plugin")


def test_spec_only_component_has_no_exporter(tmp_path):
    spec = component_spec("image_encoder")
    with pytest.raises(ExportError, match="spec only"):
        export_component("image_encoder", torch.nn.Linear(1, 1), spec, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_state_dict_hash_tracks_weights(vae):
    from unidg_rt.export.onnx import state_dict_sha256

    a = state_dict_sha256(vae)
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] += 1e-3
    assert state_dict_sha256(vae) != a
    with torch.device("meta"):
        meta = AutoencoderKLFlux(tiny_vae_config())
    assert state_dict_sha256(meta) is None
    assert np.isfinite(vae.encoder.conv_in.weight.sum().item())
