"""APO losers (the SFT model's own samples): pairwise loss by hand, loser batches share noise and
conditioning, losers equal the ground truth outside the target region, the "self" recipe trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unidg_rt.groups import TokenGroup
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.sampling import pack_latents
from unidg_rt.train.apo import apo_loss, train_apo
from unidg_rt.train.flow import CategoryTable
from unidg_rt.train.negatives import negative_pool, sample_losers
from unidg_rt.train.recipe import APORecipe, SFTRecipe
from unidg_rt.train.sft import sft_step_batch


def test_pairwise_apo_loss_equals_hand_computation():
    e_w, r_w = torch.tensor([0.30, 0.10]), torch.tensor([0.20, 0.20])
    e_l, r_l = torch.tensor([0.40, 0.10]), torch.tensor([0.20, 0.30])
    beta = torch.tensor([10.0, 5.0])
    # margin = (e_w - r_w) - (e_l - r_l) = [0.1 - 0.2, -0.1 + 0.2] = [-0.1, 0.1]
    hand = (math.log(1 + math.exp(10 * -0.1)) + math.log(1 + math.exp(5 * 0.1))) / 2
    assert abs(float(apo_loss(e_w, r_w, beta, e_l, r_l)) - hand) < 1e-6
    # equal loser errors on both sides: the positives-only loss exactly
    assert float(apo_loss(e_w, r_w, beta, r_l, r_l)) == float(apo_loss(e_w, r_w, beta))


def _frozen(lat):
    torch.manual_seed(0)
    model = FluxTransformer(FluxConfig.tiny()).eval().requires_grad_(False)
    table = CategoryTable(len(lat.categories), 4, 32, 16).requires_grad_(False)
    return model, table


def test_loser_batch_shares_noise_sigma_and_conditioning(tiny_latents):
    _, table = _frozen(tiny_latents)
    batch = sft_step_batch(tiny_latents, table, SFTRecipe(batch_size=3), seed=0, step=0)
    x0 = batch.noise - batch.target
    same = batch.with_x0(x0)
    torch.testing.assert_close(same.feed["hidden_states"], batch.feed["hidden_states"], rtol=0, atol=1e-6)
    other = batch.with_x0(torch.zeros_like(x0))
    torch.testing.assert_close(other.target, batch.noise)
    c = x0.shape[-1]
    assert torch.equal(other.feed["hidden_states"][..., c:], batch.feed["hidden_states"][..., c:])
    s = batch.sigma[:, None, None]
    torch.testing.assert_close(other.feed["hidden_states"][..., :c], s * batch.noise)
    assert torch.equal(other.sigma, batch.sigma) and torch.equal(other.weights, batch.weights)


def test_losers_keep_ground_truth_outside_the_target_region(tiny_latents):
    model, table = _frozen(tiny_latents)
    pool = negative_pool(tiny_latents, 3, seed=1)
    assert len(set(pool.tolist())) == 3 and np.all(np.diff(pool) > 0)
    losers = sample_losers(model, table, tiny_latents, pool, SFTRecipe(), seed=0, steps=2, true_cfg_scale=4.0)
    batch = sft_step_batch(tiny_latents, table, SFTRecipe(batch_size=1), seed=0, step=0)  # for shapes only
    assert losers.shape == (3, *batch.target.shape[1:])
    x0 = pack_latents(tiny_latents.x0[torch.as_tensor(pool)])
    region = tiny_latents.groups[torch.as_tensor(pool)] == int(TokenGroup.TARGET_REGION)
    assert torch.equal(losers[~region], x0[~region])
    assert not torch.allclose(losers[region], x0[region])
    again = sample_losers(model, table, tiny_latents, pool, SFTRecipe(), seed=0, steps=2, true_cfg_scale=4.0)
    assert torch.equal(losers, again)  # seeded


def test_apo_with_self_negatives_trains_and_rejects_unknown_modes(tiny_latents):
    model, table = _frozen(tiny_latents)
    recipe = APORecipe(steps=3, batch_size=2, negatives="self", num_negatives=4, negative_steps=2, rank=2)
    mgr, summary = train_apo(model, table, tiny_latents, recipe, SFTRecipe(), seed=0)
    assert summary["steps"] == 3 and math.isfinite(summary["loss_end"])
    assert "apo" in mgr.adapters
    with pytest.raises(ValueError, match="negatives"):
        train_apo(model, table, tiny_latents, APORecipe(steps=1, negatives="blur"), SFTRecipe(), seed=0)
