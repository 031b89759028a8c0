"""AutoencoderKLFlux == diffusers AutoencoderKL on tiny configs, same weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unidg_rt.errors import ConfigError, WeightsError
from unidg_rt.models.vae import AutoencoderKLFlux, VAEConfig, convert_legacy_vae_keys

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5

CONFIGS = {
    # FLUX-shaped: 16 latent channels, no quant convs, mid-block attention
    "flux_tiny": VAEConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16),
    # SD-shaped: quant convs, 3 levels, 2 layers per block, groups 8
    "sd_tiny": VAEConfig(
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        latent_channels=4,
        scaling_factor=0.18215,
        shift_factor=0.0,
        use_quant_conv=True,
        use_post_quant_conv=True,
    ),
    "no_attention": VAEConfig(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False
    ),
}


def _randomize(model: torch.nn.Module) -> None:
    """Random GroupNorm affines too (convs/linears are already randomly initialised)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def _pair(cfg: VAEConfig):
    ref = diffusers.AutoencoderKL.from_config(cfg.to_diffusers_config()).eval()
    _randomize(ref)
    ours = AutoencoderKLFlux.from_state_dict(ref.state_dict(), cfg)
    return ref, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers(name):
    cfg = CONFIGS[name]
    ref, ours = _pair(cfg)
    assert list(ours.state_dict()) == list(ref.state_dict())
    f = cfg.downsample_factor
    x = torch.rand(2, 3, 4 * f, 6 * f) * 2 - 1
    z = torch.randn(2, cfg.latent_channels, 4, 6)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        moments = ours.encode_moments(x)
        assert moments.shape == (2, 2 * cfg.latent_channels, 4, 6)
        assert (moments - dist.parameters).abs().max() <= TOL
        assert (ours.encode(x) - dist.mode()).abs().max() <= TOL
        sample_ref = dist.sample(generator=torch.Generator().manual_seed(7))
        sample = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        assert (sample - sample_ref).abs().max() <= TOL
        out = ours.decode(z)
        assert out.shape == (2, cfg.out_channels, 4 * f, 6 * f)
        assert (out - ref.decode(z).sample).abs().max() <= TOL
        assert (ours(x) - ref(x).sample).abs().max() <= TOL


def test_flux_config_keys_match_diffusers_on_meta():
    cfg = VAEConfig.flux()
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL.from_config(cfg.to_diffusers_config())
        ours = AutoencoderKLFlux(cfg)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
    assert cfg.downsample_factor == 8 and cfg.latent_channels == 16


def test_legacy_attention_keys():
    cfg = CONFIGS["flux_tiny"]
    ref, _ = _pair(cfg)
    legacy = {}
    for k, v in ref.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        if ".proj_attn.weight" in k:
            v = v[:, :, None, None]  # conv-shaped [C, C, 1, 1] as in LDM checkpoints
        legacy[k] = v
    assert any(".query." in k for k in legacy)
    converted = convert_legacy_vae_keys(legacy)
    assert set(converted) == set(ref.state_dict())
    ours = AutoencoderKLFlux.from_state_dict(legacy, cfg)
    z = torch.randn(1, cfg.latent_channels, 3, 5)
    with torch.no_grad():
        assert (ours.decode(z) - ref.decode(z).sample).abs().max() <= TOL


def test_normalize_round_trip():
    vae = AutoencoderKLFlux(VAEConfig(block_out_channels=(8,), layers_per_block=1, norm_num_groups=8))
    z = torch.randn(2, 16, 4, 4)
    n = vae.normalize_latents(z)
    torch.testing.assert_close(n, (z - 0.1159) * 0.3611)
    torch.testing.assert_close(vae.denormalize_latents(n), z, atol=1e-6, rtol=1e-6)


def test_config_round_trip_and_diffusers_json():
    flux_json = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.30.0.dev0",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 2,
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    }
    assert VAEConfig.from_diffusers_config(flux_json) == VAEConfig.flux()
    cfg = CONFIGS["sd_tiny"]
    assert VAEConfig.from_diffusers_config(cfg.to_dict()) == cfg
    assert VAEConfig.from_diffusers_config({**cfg.to_dict(), "shift_factor": None}).shift_factor == 0.0
    with pytest.raises(ConfigError, match="down_block_types"):
        VAEConfig.from_diffusers_config({**flux_json, "down_block_types": ["AttnDownEncoderBlock2D"] * 4})
    with pytest.raises(ConfigError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(24, 48), norm_num_groups=32)


def test_mismatched_weights_raise(tmp_path):
    cfg = CONFIGS["sd_tiny"]
    ref, _ = _pair(cfg)
    with pytest.raises(WeightsError, match="quant_conv"):
        AutoencoderKLFlux.from_state_dict(ref.state_dict(), dataclasses.replace(cfg, use_quant_conv=False))
    with pytest.raises(WeightsError, match="size mismatch"):
        AutoencoderKLFlux.from_state_dict(ref.state_dict(), dataclasses.replace(cfg, latent_channels=8))
    with pytest.raises(WeightsError, match="not found"):
        AutoencoderKLFlux.from_diffusers_dir(tmp_path / "nope")


def test_from_diffusers_dir(tmp_path):
    cfg = CONFIGS["flux_tiny"]
    ref, _ = _pair(cfg)
    ref.save_pretrained(tmp_path / "vae")
    ours = AutoencoderKLFlux.from_diffusers_dir(tmp_path / "vae")
    assert ours.config == cfg
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert (ours.encode(x) - ref.encode(x).latent_dist.mode()).abs().max() <= TOL


def test_bad_input_shapes():
    vae = AutoencoderKLFlux(CONFIGS["no_attention"])
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(torch.zeros(1, 4, 8, 8))
