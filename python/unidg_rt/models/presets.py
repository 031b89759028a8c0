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


PRESETS = {
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
