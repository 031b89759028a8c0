"""VAE encoder/decoder (normalisation folded into the graph) and CLIP/T5 text encoders:
ORT CPU parity with torch on tiny configs."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.export.inspect import inspect_onnx
from unidg_rt.export.spec import component_spec
from unidg_rt.export.verify import verify_onnx
from unidg_rt.export.wrappers import wrap


def test_vae_decoder_parity(onnx_dir, tiny_models):
    vae = tiny_models[1]
    spec = component_spec("vae_decoder", vae.config)
    feeds = [
        spec.sample_inputs(point="min"),
        spec.sample_inputs({"batch": 2, "latent_height": 6, "latent_width": 10}),
    ]
    report = verify_onnx(
        onnx_dir / "vae_decoder.default.fp32.onnx", wrap("vae_decoder", vae, spec), spec, feeds, atol=1e-3
    )
    assert report.passed, report.to_dict()
    assert report.shapes["images"] == (2, 3, 48, 80)


def test_vae_encoder_parity_and_folded_normalisation(onnx_dir, tiny_models):
    import torch

    vae = tiny_models[1]
    spec = component_spec("vae_encoder", vae.config)
    feed = spec.sample_inputs({"batch": 1, "latent_height": 4, "latent_width": 8})
    report = verify_onnx(
        onnx_dir / "vae_encoder.default.fp32.onnx", wrap("vae_encoder", vae, spec), spec, [feed]
    )
    assert report.worst <= 1e-4, report.to_dict()
    with torch.inference_mode():  # the graph's output is the normalised latent the DiT sees
        raw = vae.encode(torch.from_numpy(feed["images"]))
    from unidg_rt.export.verify import ort_session, run_ort

    got = run_ort(ort_session(onnx_dir / "vae_encoder.default.fp32.onnx"), feed)["latent"]
    want = ((raw - vae.config.shift_factor) * vae.config.scaling_factor).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    info = inspect_onnx(onnx_dir / "vae_encoder.default.fp32.onnx")
    assert info["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert info["outputs"][0]["shape"] == ["batch", 16, "latent_height", "latent_width"]


@pytest.fixture(scope="module")
def tiny_text_models():
    tf = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    clip = tf.CLIPTextModel(
        tf.CLIPTextConfig(
            vocab_size=100,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            projection_dim=16,
            bos_token_id=98,
            eos_token_id=99,
            pad_token_id=0,
        )
    ).eval()
    t5 = tf.T5EncoderModel(
        tf.T5Config(
            vocab_size=100,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
        )
    ).eval()
    return {"clip": clip, "t5": t5}


@pytest.mark.parametrize("component", ["clip", "t5"])
def test_text_encoder_parity(tiny_text_models, tmp_path, component):
    from unidg_rt.export.onnx import export_component

    model = tiny_text_models[component]
    spec = component_spec(component, model.config)
    result = export_component(component, model, spec, tmp_path)
    feeds = [spec.sample_inputs(point="min"), spec.sample_inputs({"batch": 3}, seed=1)]
    if component == "t5":  # dynamic text length
        feeds.append(spec.sample_inputs({"batch": 2, "text_tokens": 13}, seed=2))
    report = verify_onnx(result.path, wrap(component, model, spec), spec, feeds)
    assert report.worst <= 1e-4, report.to_dict()
    out = inspect_onnx(result.path)["outputs"][0]
    assert out["name"] == spec.output_names[0]
