"""APO condition-mismatch pairs: text rows get another category's row, reference rows another
category's reference half (target half, noise and sigma untouched), weights = target region, and
the recipe term trains."""

from __future__ import annotations

import math

import numpy as np
import torch

from unidg_rt.groups import TokenGroup
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.sampling import pack_latents
from unidg_rt.train.apo import train_apo
from unidg_rt.train.flow import CategoryTable
from unidg_rt.train.mismatch import left_half_tokens, mismatch_batch, other_categories, target_weights
from unidg_rt.train.recipe import APORecipe, SFTRecipe
from unidg_rt.train.sft import sft_step_batch


def _table(lat):
    torch.manual_seed(0)
    return CategoryTable(len(lat.categories), 4, 32, 16).requires_grad_(False)


def test_other_categories_never_repeat_the_own_one():
    cat = np.arange(1000) % 7
    other = other_categories(cat, 7, np.random.default_rng(0))
    assert np.all(other != cat) and set(other.tolist()) == set(range(7))


def test_left_half_tokens_follow_the_packing():
    x = torch.zeros(1, 2, 4, 8)  # [B, C, h, w]: left half columns 0..3
    x[..., :4] = 1.0
    packed = pack_latents(x)  # [1, 2*4, 8]
    left = left_half_tokens(2, 4)
    assert torch.all(packed[0, left] == 1.0) and torch.all(packed[0, ~left] == 0.0)


def test_mismatch_batch_changes_only_the_condition(tiny_latents):
    lat, table = tiny_latents, _table(tiny_latents)
    batch = sft_step_batch(lat, table, SFTRecipe(batch_size=8, cond_dropout=0.0), seed=0, step=0)
    mis = mismatch_batch(lat, table, batch, np.random.default_rng(0))
    idx = torch.as_tensor(batch.index)
    text, cat = lat.text_mode[idx], lat.category[idx]
    assert text.any() and (~text).any()
    # same noise, sigma; weights = the target region
    assert torch.equal(mis.noise, batch.noise) and torch.equal(mis.sigma, batch.sigma)
    region = lat.groups[idx] == int(TokenGroup.TARGET_REGION)
    assert torch.equal(target_weights(batch, lat), region.float()) and torch.equal(
        mis.weights, region.float()
    )
    # the right (target) half is untouched: its noised latents, conditioning and target
    _, _, h, w = lat.x0.shape
    right = ~left_half_tokens(h // 2, w // 2)
    assert torch.equal(mis.feed["hidden_states"][:, right], batch.feed["hidden_states"][:, right])
    assert torch.equal(mis.target[:, right], batch.target[:, right])
    for i in range(len(idx)):
        e = mis.feed["encoder_hidden_states"][i]
        if text[i]:  # another category's row, same reference half
            hits = [c for c in range(len(lat.categories)) if torch.equal(e, table.embeds[c])]
            assert hits and cat[i].item() not in hits
            assert torch.equal(mis.feed["hidden_states"][i], batch.feed["hidden_states"][i])
        else:  # conditioning kept; the reference half differs where a donor of another category exists
            assert torch.equal(e, batch.feed["encoder_hidden_states"][i])
            donors = np.flatnonzero((~lat.text_mode).numpy() & (lat.category.numpy() != cat[i].item()))
            if len(donors):
                assert not torch.equal(mis.feed["hidden_states"][i], batch.feed["hidden_states"][i])


def test_apo_with_mismatch_pairs_trains(tiny_latents):
    torch.manual_seed(0)
    model = FluxTransformer(FluxConfig.tiny()).eval().requires_grad_(False)
    table = _table(tiny_latents)
    for negatives in ("none", "self"):
        recipe = APORecipe(
            steps=2,
            batch_size=4,
            negatives=negatives,
            num_negatives=4,
            negative_steps=1,
            rank=2,
            mismatch=1.0,
        )
        mgr, summary = train_apo(model, table, tiny_latents, recipe, SFTRecipe(), seed=0)
        assert math.isfinite(summary["loss_end"]) and "apo" in mgr.adapters
        mgr.detach()


def test_apo_mismatch_margins_survive_a_resume(tiny_latents, tmp_path):
    from unidg_rt.train.common import load_checkpoint_state

    torch.manual_seed(0)
    model = FluxTransformer(FluxConfig.tiny()).eval().requires_grad_(False)
    table, ckpt = _table(tiny_latents), tmp_path / "apo.pt"
    kw = dict(batch_size=2, negatives="none", rank=2, mismatch=1.0)
    mgr, first = train_apo(
        model,
        table,
        tiny_latents,
        APORecipe(steps=2, **kw),
        SFTRecipe(),
        seed=0,
        ckpt_path=ckpt,
        checkpoint_every_s=0.0,
    )
    mgr.detach()
    assert len(load_checkpoint_state(ckpt)["mismatch_margins"]) == 2
    mgr, resumed = train_apo(
        model,
        table,
        tiny_latents,
        APORecipe(steps=3, **kw),
        SFTRecipe(),
        seed=0,
        ckpt_path=ckpt,
        checkpoint_every_s=0.0,
    )
    mgr.detach()
    assert len(load_checkpoint_state(ckpt)["mismatch_margins"]) == 3
    assert resumed["mismatch_margin_start"] == first["mismatch_margin_start"]  # step 0's, from the checkpoint
