"""IOSpec: names (one vocabulary), symbolic dims, profiles from generation ranges, sample feeds."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.export.spec import (
    COMPONENTS,
    GenerationRange,
    component_spec,
    eval_dim,
    sample_inputs,
    transformer_spec,
)
from unidg_rt.groups import NUM_GROUPS
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.presets import tiny_vae_config
from unidg_rt.models.vae import VAEConfig
from unidg_rt.runtime.torch_backend import TRANSFORMER_INPUTS


def test_transformer_spec_uses_the_io_vocabulary_and_flux_profiles():
    spec = transformer_spec(FluxConfig.flux_fill())
    assert spec.input_names == TRANSFORMER_INPUTS
    assert spec.output_names == ("noise_pred",)
    assert spec.tensor("token_groups").shape == ("tokens",)
    assert spec.tensor("group_bias").shape == (57, 24, NUM_GROUPS, NUM_GROUPS)
    assert spec.derived == {"tokens": "text_tokens+img_tokens"}
    # 256/512/768 px per side → 256×512 … 768×1536 diptychs → 512 … 4608 image tokens
    assert spec.profile()["img_tokens"] == (512, 2048, 4608)
    shapes = spec.profile_shapes()
    assert shapes["hidden_states"] == ((1, 512, 384), (1, 2048, 384), (4, 4608, 384))
    assert shapes["token_groups"] == ((1024,), (2560,), (5120,))
    assert shapes["encoder_hidden_states"][2] == (4, 512, 4096)
    assert spec.attrs["total_layers"] == 57


def test_no_guidance_input_without_guidance_embeds():
    spec = transformer_spec(FluxConfig.tiny(guidance=False))
    assert "guidance" not in spec.input_names


def test_generation_range_around_and_validation():
    assert GenerationRange.around(512, 512).sides == (256, 512, 768)
    assert GenerationRange.around(64, 8).sides == (32, 64, 96)
    with pytest.raises(ConfigError, match="multiples of 16"):
        GenerationRange(sides=(250, 512, 768))
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        GenerationRange(text=(8, 4, 16))


def test_vae_specs_fold_the_downsample_factor_into_derived_dims():
    enc = component_spec("vae_encoder", VAEConfig.flux())
    dec = component_spec("vae_decoder", tiny_vae_config().to_dict())
    assert enc.derived == {"height": "8*latent_height", "width": "8*latent_width"}
    assert enc.profile()["latent_height"] == (32, 64, 96) and enc.profile()["latent_width"] == (64, 128, 192)
    feed = enc.sample_inputs({"latent_height": 3, "latent_width": 5, "batch": 2})
    assert feed["images"].shape == (2, 3, 24, 40) and feed["images"].min() >= -1
    assert dec.sample_inputs()["latent"].shape == (1, 16, 32, 64)
    assert enc.attrs["scaling_factor"] == pytest.approx(0.3611)


def test_text_and_image_encoder_specs():
    clip = component_spec("clip")
    t5 = component_spec("t5", {"d_model": 32, "vocab_size": 100}, GenerationRange(text=(8, 16, 32)))
    image = component_spec("image_encoder")
    assert clip.tensor("input_ids").shape == ("batch", 77)
    assert clip.output_names == ("pooled_projections",)
    assert t5.output_names == ("encoder_hidden_states",)
    ids = t5.sample_inputs(point="max")["input_ids"]
    assert ids.shape == (4, 32) and ids.dtype == np.int64 and ids.max() < 100
    assert image.tensor("image_prompt_embeds").shape == ("batch", 729, 4096)
    assert not image.exportable and "spec only" in image.notes
    assert set(COMPONENTS) == {
        "transformer",
        "vae_encoder",
        "vae_decoder",
        "clip",
        "t5",
        "reference_encoder",
        "image_encoder",
    }


def test_sample_inputs_are_valid_and_export_dims_avoid_specialisation():
    cfg = FluxConfig.tiny()
    feed = sample_inputs("transformer", cfg, {"img_tokens": 6, "text_tokens": 3})
    assert feed["token_groups"].shape == (9,) and feed["token_groups"].max() < NUM_GROUPS
    assert feed["hidden_states"].shape == (1, 6, 384) and feed["hidden_states"].dtype == np.float32
    assert feed["img_ids"][:, 0].max() == 0 and feed["txt_ids"].max() == 0
    assert np.all((feed["timestep"] > 0) & (feed["timestep"] <= 1))
    dims = transformer_spec(cfg, GenerationRange((16, 16, 32), (1, 1, 1), (1, 1, 1))).export_dims()
    free = [dims[d] for d in ("batch", "img_tokens", "text_tokens")]
    assert min(free) >= 2 and len(set(free)) == 3
    assert dims["tokens"] == dims["img_tokens"] + dims["text_tokens"]


def test_spec_errors_name_the_argument():
    with pytest.raises(InvalidInputError, match="component='unet'"):
        component_spec("unet")
    with pytest.raises(InvalidInputError, match="FluxConfig"):
        component_spec("transformer")
    with pytest.raises(InvalidInputError, match="target='jetson'"):
        transformer_spec(FluxConfig.tiny()).dims(target="jetson")
    with pytest.raises(ConfigError, match="no value"):
        eval_dim("8*h", {})
    assert eval_dim("2*a+b", {"a": 3, "b": 4}) == 10


def test_spec_serialises_and_fingerprints():
    spec = transformer_spec(FluxConfig.tiny())
    d = spec.to_dict()
    assert d["inputs"][0]["name"] == "hidden_states" and d["profiles"]["default"]["batch"] == [1, 1, 4]
    assert spec.fingerprint() == transformer_spec(FluxConfig.tiny()).fingerprint()
    assert spec.fingerprint() != transformer_spec(FluxConfig.tiny(num_layers=1)).fingerprint()
