"""End to end: ``UniDGPipeline.from_onnx`` (ORT CPU) vs ``from_pretrained`` (torch) on the tiny
checkpoint with the same seed; the OrtBackend's contract and errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from unidg_rt.errors import BackendUnavailableError, ConfigError, WeightsError
from unidg_rt.runtime.pipeline import UniDGPipeline


@pytest.fixture(scope="module")
def pipes(onnx_dir, tiny_checkpoint):
    return UniDGPipeline.from_onnx(onnx_dir), UniDGPipeline.from_pretrained(tiny_checkpoint)


def _close(a, b, image, atol=1e-3):
    """Decoded diptychs within atol; pasted uint8 images identical outside the mask."""
    assert np.abs(a.diptychs - b.diptychs).max() <= atol
    a8 = np.round(a.images[0] * 255).astype(np.uint8)
    b8 = np.round(b.images[0] * 255).astype(np.uint8)
    outside = a.masks == 0
    assert outside.sum() > 0.5 * outside.size
    assert np.array_equal(a8[outside], b8[outside]) and np.array_equal(a8[outside], image[outside])
    assert np.abs(a8.astype(int) - b8.astype(int)).max() <= 1  # inside: at most one uint8 step


def test_reference_mode_matches_torch(pipes, sample_inputs):
    ort_pipe, torch_pipe = pipes
    img, mask, ref, rmask = sample_inputs
    a = ort_pipe(img, mask, ref, rmask, seed=5, output_type="np")
    b = torch_pipe(img, mask, ref, rmask, seed=5, output_type="np")
    _close(a, b, img)
    assert a.info["backend"] == "onnxruntime" and a.info["attention_form"] == "fold"
    assert a.info["providers"][-1] == "CPUExecutionProvider"
    assert a.seeds == b.seeds == [5]


def test_text_mode_segments_and_batch_match_torch(pipes, sample_inputs):
    ort_pipe, torch_pipe = pipes
    img, mask, _, _ = sample_inputs
    segs = [
        {"start": 0.0, "end": 0.5, "true_cfg_scale": 2.0},
        {"start": 0.5, "end": 1.0, "guidance_scale": 1.0},
    ]
    kwargs = dict(defect_category="scratch", seed=2, segments=segs, num_images_per_prompt=2, output_type="np")
    a, b = ort_pipe(img, mask, **kwargs), torch_pipe(img, mask, **kwargs)
    assert a.images.shape == (2, 100, 120, 3)
    assert np.abs(a.diptychs - b.diptychs).max() <= 1e-3


def test_manifest_is_self_describing(onnx_dir, onnx_export):
    manifest = json.loads((onnx_dir / "unidg_onnx.json").read_text())
    assert manifest["format"] == "unidg-onnx/1"
    assert manifest["pipeline"] == {
        "text_seq_len": 8,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 16,
        "latent_channels": 16,
        "vae_scale_factor": 8,
        "guidance_embeds": True,
    }
    assert manifest["attention_form"] == "fold" and manifest["precision"] == "fp32"
    files = sorted(a["onnx_file"] for a in manifest["artifacts"])
    assert files == [
        "transformer.fold.fp32.onnx",
        "vae_decoder.default.fp32.onnx",
        "vae_encoder.default.fp32.onnx",
    ]
    assert (
        manifest["embeddings"] == "embeddings.safetensors" and (onnx_dir / "embeddings.safetensors").is_file()
    )
    assert manifest["defaults"]["height"] == 64
    assert manifest["profiles"]["transformer"]["default"]["img_tokens"] == [8, 32, 72]


def test_io_binding_and_runner_contract(onnx_dir):
    from unidg_rt.runtime.ort_backend import OrtBackend

    plain, bound = OrtBackend(onnx_dir), OrtBackend(onnx_dir, io_binding=True)
    rng = np.random.default_rng(0)
    feed = {
        "hidden_states": rng.standard_normal((1, 8, 384)).astype(np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 8, 32)).astype(np.float32),
        "pooled_projections": rng.standard_normal((1, 16)).astype(np.float32),
        "timestep": np.array([0.5], np.float32),
        "img_ids": np.zeros((8, 3), np.float32),
        "txt_ids": np.zeros((8, 3), np.float32),
        "guidance": np.array([3.5], np.float32),
        "token_groups": None,  # the torch model treats None as "no bias": zeros here
        "group_bias": None,
    }
    assert plain.transformer.input_names[-2:] == ("token_groups", "group_bias")
    a = plain.transformer.infer(feed)["noise_pred"]
    b = bound.transformer.infer(feed)["noise_pred"]
    assert a.shape == (1, 8, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    # a [G, G] table is broadcast to the graph's [L, H, G, G]; zeros == no bias
    zeros = dict(feed, token_groups=np.zeros((1, 16), np.int32), group_bias=np.zeros((5, 5)))
    np.testing.assert_array_equal(plain.transformer.infer(zeros)["noise_pred"], a)
    assert isinstance(plain.asarray(np.zeros(3, np.float64)), np.ndarray)
    assert plain.asarray(np.zeros(3), "int").dtype == np.int64


def test_backend_errors(onnx_dir, tmp_path, monkeypatch):
    from unidg_rt.runtime import ort_backend

    with pytest.raises(ConfigError, match="precision='int8': no component"):
        ort_backend.OrtBackend(onnx_dir, precision="int8")  # nothing exported in INT8 here
    with pytest.raises(WeightsError, match="unidg_onnx.json"):
        ort_backend.OrtBackend(tmp_path)
    with pytest.raises(ConfigError, match="plugin form needs TensorRT"):
        ort_backend.OrtBackend(onnx_dir, attention_form="plugin")
    with pytest.raises(ConfigError, match="attention_op"):
        ort_backend.OrtBackend(onnx_dir, attention_form="attention_op")  # not exported here
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        ort_backend.OrtBackend(onnx_dir, providers=["NoSuchExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # simulate a missing install
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime"):
        ort_backend.OrtBackend(onnx_dir)


def test_default_providers_feature_detection():
    import onnxruntime as ort

    from unidg_rt.runtime.ort_backend import default_providers

    providers = default_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == (
        "CUDAExecutionProvider" in ort.get_available_providers()
    )


def test_precision_pick_is_explicit_for_the_transformer_and_most_precise_for_the_rest():
    from unidg_rt.runtime.ort_backend import _pick

    def art(component, precision, form=None):
        return {"component": component, "precision": precision, "attention_form": form, "file": "x"}

    manifest = {
        "precision": "int8",
        "attention_form": "decomposed",
        "artifacts": [
            art("transformer", "fp32", "decomposed"),
            art("transformer", "int8", "decomposed"),
            art("vae_decoder", "fp16"),
            art("vae_decoder", "fp32"),
        ],
    }
    assert _pick(manifest, "transformer", None, None)["precision"] == "int8"
    assert _pick(manifest, "transformer", None, "fp32")["precision"] == "fp32"
    assert _pick(manifest, "transformer", None, "fp8")["precision"] == "fp32"  # most precise
    # the VAE has no int8 export: the most precise one, whatever the listing order
    assert _pick(manifest, "vae_decoder", None, None)["precision"] == "fp32"
    assert _pick(manifest, "vae_decoder", None, "fp16")["precision"] == "fp16"
