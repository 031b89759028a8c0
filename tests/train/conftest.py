"""Tiny fixtures for the training tests: a few procedural diptychs, tiny VAE / MM-DiT configs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

TINY_RECIPE = {
    "arch": "tiny",
    "checkpoint_every_s": 1e9,
    "data": {"num_pairs": 2, "gen_size": 32, "source_size": 64, "text_seq_len": 4, "encode_batch": 8},
    "vae": {"steps": 2, "batch_size": 2, "crop": 32, "stats_images": 4, "warmup": 1},
    "sft": {"steps": 2, "batch_size": 4, "warmup": 1, "ref_width": 8},  # with the reference encoder
    "refenc": {"bank_size": 8, "heldout": 4, "steps": 2, "batch_size": 4, "warmup": 1},
    "apo": {"steps": 2, "batch_size": 4, "warmup": 1},
}


@pytest.fixture(scope="session")
def tiny_recipe():
    from unidg_rt.train.recipe import Recipe

    return lambda: Recipe.from_dict(TINY_RECIPE)


@pytest.fixture(scope="session")
def tiny_diptychs():
    from unidg_rt.train.dataset import build_diptych_set
    from unidg_rt.train.recipe import Recipe

    r = Recipe.from_dict(TINY_RECIPE)
    return build_diptych_set(r.data, seed=0)


@pytest.fixture(scope="session")
def tiny_latents(tiny_diptychs):
    import torch

    from unidg_rt.models.presets import tiny_vae_config
    from unidg_rt.models.vae import AutoencoderKLFlux
    from unidg_rt.train.dataset import encode_diptych_set

    torch.manual_seed(0)
    vae = AutoencoderKLFlux(tiny_vae_config()).eval()
    return encode_diptych_set(vae, tiny_diptychs, batch=8)
