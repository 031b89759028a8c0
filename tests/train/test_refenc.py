"""Stage refenc: the reference bank is cropped like the pipeline, seeded; the prototype loss
trains; accuracy is the nearest-table-row rule."""

from __future__ import annotations

import numpy as np
import torch

from unidg_rt.diptych import prepare_diptych
from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig
from unidg_rt.train.flow import CategoryTable
from unidg_rt.train.recipe import Recipe, RefEncRecipe
from unidg_rt.train.refenc import (
    bank_accuracy,
    build_reference_bank,
    prototype_logits,
    table_rows,
    train_reference_encoder,
)

from .conftest import TINY_RECIPE

CATS = ["scratch", "hole", "black spot"]


def _bank(n=6, offset=0):
    return build_reference_bank(Recipe.from_dict(TINY_RECIPE).data, 0, n, CATS, offset=offset)


def _table_and_encoder():
    torch.manual_seed(0)
    enc = ReferenceEncoder(ReferenceEncoderConfig(seq_len=4, dim=32, pooled_dim=16, width=8, image_size=32))
    return CategoryTable(len(CATS), 4, 32, 16).requires_grad_(False), enc


def test_bank_is_seeded_and_cropped_like_the_pipeline():
    from unidg_rt.data import SURFACE_KINDS, generate_quadruplet
    from unidg_rt.train.common import stage_seed

    a, b = _bank(), _bank()
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.category, b.category)
    assert a.pixels.shape == (6, 32, 32, 3) and a.pixels.dtype == np.uint8
    assert list(a.category) == [0, 1, 2, 0, 1, 2]
    assert not np.array_equal(_bank(offset=100).pixels, a.pixels)  # disjoint held-out stream
    data = Recipe.from_dict(TINY_RECIPE).data  # item 1 rebuilt by hand: the diptych's left half
    rng = np.random.default_rng(stage_seed(0, "refbank", 1))
    surface = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
    q = generate_quadruplet(int(rng.integers(0, 2**62)), "hole", surface, data.source_size)
    dip = prepare_diptych(q.normal, q.mask, q.abnormal, q.mask, height=32, width=32, **data.crop)
    assert np.array_equal(a.pixels[1], np.round(dip.image[:, :32] * 255).astype(np.uint8))


def test_bank_masks_and_cutout_input():
    bank = _bank()
    assert bank.masks.shape == (6, 32, 32) and bank.masks.any(axis=(1, 2)).all()
    x, cut = bank.inputs([0, 1]), bank.inputs([0, 1], cutout=True)
    m = torch.from_numpy(bank.masks[[0, 1]])[:, None].expand_as(x)
    assert torch.equal(cut[m], x[m]) and (cut[~m] == 0).all()


def test_augmentation_only_turns_and_flips():
    bank = _bank()
    x = bank.inputs([0, 1])
    aug = bank.inputs([0, 1], np.random.default_rng(0))
    for xi, ai in zip(x, aug, strict=True):
        variants = [torch.rot90(xi, k, dims=(1, 2)) for k in range(4)]
        variants += [v.flip(2) for v in variants]
        assert any(torch.equal(ai, v) for v in variants)


def test_prototype_logits_and_accuracy_follow_the_nearest_row():
    table, enc = _table_and_encoder()
    bank = _bank()
    rows = table_rows(table)
    logits, v = prototype_logits(enc, bank.inputs(range(6)), rows, 0.5)
    hand = -((v[:, None] - rows[None]) ** 2).mean(2) / 0.5
    torch.testing.assert_close(logits, hand)
    acc = bank_accuracy(enc, bank, rows)
    assert acc == float((logits.argmax(1).numpy() == bank.category).mean())


def test_training_decreases_the_loss_and_leaves_the_table():
    table, enc = _table_and_encoder()
    before = table_rows(table).clone()
    bank = _bank(12)
    recipe = RefEncRecipe(steps=30, batch_size=12, warmup=1, lr=3e-3, augment=False, cutout=False)
    summary = train_reference_encoder(enc, table, bank, recipe, seed=0)
    assert summary["loss_end"] < summary["loss_start"]
    assert torch.equal(table_rows(table), before)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.config.cutout
    train_reference_encoder(enc, table, bank, RefEncRecipe(steps=1, batch_size=4), seed=0)
    assert enc.config.cutout  # the recipe default: the encoder now expects cut-out crops
