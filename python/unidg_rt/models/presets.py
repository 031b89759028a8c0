"""Named architecture presets (transformer + VAE) used by tests, bench and the default model."""

from __future__ import annotations

import torch

from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.vae import AutoencoderKLFlux, VAEConfig


def tiny_vae_config(**overrides) -> VAEConfig:
    """A 2-level-per-8× VAE small enough for CPU tests (still 8× down, 16 latent channels)."""
    base = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
    base.update(overrides)
    return VAEConfig(**base)


def default_transformer_config() -> FluxConfig:
    """The embedded default model: FLUX-Fill layout (384 in-channels, guidance), ~5.3M parameters.

    Width 192 (3 heads × 64), 2 double + 4 single blocks: sized so Diversity-SFT + APO train in
    the ≤ 50 min CPU budget of :mod:`unidg_rt.train` (see its recipe)."""
    return FluxConfig(
        in_channels=384,
        out_channels=64,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=64,
        num_attention_heads=3,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        guidance_embeds=True,
        axes_dims_rope=(8, 28, 28),
    )


def default_vae_config(**overrides) -> VAEConfig:
    """The embedded default VAE: FLUX family (8× down, 16 latent channels), narrow blocks (~1.0M
    parameters; the 16-wide full-resolution level keeps CPU training and decoding cheap). 4 GroupNorm
    groups: with 2 channels per group (8 groups) a GroupNorm of flat regions is nearly binary and
    the tiny decoder learned colours much more slowly."""
    base = dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=4)
    base.update(overrides)
    return VAEConfig(**base)


PRESETS = {
    "default": (default_transformer_config, default_vae_config),
    "tiny": (lambda: FluxConfig.tiny(), tiny_vae_config),
    "flux-fill": (FluxConfig.flux_fill, VAEConfig.flux),
    "flux-dev": (FluxConfig.flux_dev, VAEConfig.flux),
}


def build_random(preset: str = "tiny", seed: int = 0, device="cpu", dtype=torch.float32):
    """Randomly initialised (transformer, vae) of a preset; deterministic in ``seed``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    tcfg_fn, vcfg_fn = PRESETS[preset]
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = FluxTransformer(tcfg_fn()).to(dtype).eval().requires_grad_(False)
        vae = AutoencoderKLFlux(vcfg_fn()).to(dtype).eval().requires_grad_(False)
    return transformer, vae
