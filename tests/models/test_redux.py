"""Redux image-prompt encoder: projector == diffusers' ReduxImageEncoder; SigLIP from a local dir;
the pipeline appends the reference-crop tokens after the text slots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unidg_rt.models.redux import ImagePromptEncoder, ReduxProjector, load_redux_projector


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("redux")
    cfg = transformers.SiglipVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    transformers.SiglipVisionModel(cfg).save_pretrained(root / "siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    proj = ReduxProjector(redux_dim=24, txt_in_features=32)
    (root / "redux").mkdir()
    save_file(
        {k: v.contiguous() for k, v in proj.state_dict().items()},
        root / "redux" / "diffusion_pytorch_model.safetensors",
    )
    (root / "redux" / "config.json").write_text(json.dumps({"redux_dim": 24, "txt_in_features": 32}))
    return root


def test_projector_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    ref = ReduxImageEncoder(redux_dim=24, txt_in_features=32)
    ours = ReduxProjector(24, 32)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 16, 24)
    assert (ours(x) - ref(x).image_embeds).abs().max() <= 1e-6
    del diffusers


def test_encoder_and_pipeline(encoder_dirs, tiny_checkpoint, sample_inputs):
    import transformers

    enc = ImagePromptEncoder.from_dirs(encoder_dirs / "siglip", encoder_dirs / "redux")
    img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    tokens = enc.encode([img])
    assert tokens.shape == (1, 16, 32)
    proc = transformers.SiglipImageProcessor.from_pretrained(encoder_dirs / "siglip")
    vision = transformers.SiglipVisionModel.from_pretrained(encoder_dirs / "siglip")
    with torch.no_grad():
        direct = vision(**proc(images=[img], return_tensors="pt")).last_hidden_state
    proj = load_redux_projector(encoder_dirs / "redux")
    assert torch.allclose(tokens, proj(direct), atol=1e-5)

    from unidg_rt.runtime.pipeline import UniDGPipeline

    plain = UniDGPipeline.from_pretrained(tiny_checkpoint)
    with_redux = UniDGPipeline.from_pretrained(tiny_checkpoint, image_prompt_encoder=enc)
    t, m, r, rm = sample_inputs
    a = plain(t, m, r, rm, seed=0, output_type="np").images
    b = with_redux(t, m, r, rm, seed=0, output_type="np").images
    assert a.shape == b.shape and not np.array_equal(a, b)
