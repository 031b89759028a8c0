"""Recipe as data; training diptychs built with the runtime's own helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unidg_rt.diptych import pack_mask, prepare_diptych
from unidg_rt.errors import ConfigError
from unidg_rt.groups import TokenGroup
from unidg_rt.train.recipe import Recipe


def test_recipe_round_trip_and_overrides(tmp_path):
    r = Recipe()
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"seed": 3, "sft": {"steps": 5}}))
    r2 = Recipe.load(path)
    assert (r2.seed, r2.sft.steps, r2.vae.steps) == (3, 5, r.vae.steps)
    r3 = r2.with_steps("all", 7)
    assert (r3.vae.steps, r3.sft.steps, r3.refenc.steps, r3.apo.steps) == (7, 7, 7, 7) and r2.sft.steps == 5
    with pytest.raises(ConfigError, match="unknown recipe.sft key"):
        Recipe.from_dict({"sft": {"stepz": 1}})


def test_diptychs_match_the_pipeline_composition(tiny_diptychs):
    d = tiny_diptychs
    assert len(d) == 8 and d.text_mode.sum() == 4  # 2 pairs x (2 reference + 2 text)
    s = d.size
    assert d.image_gt.shape == (8, s, 2 * s, 3)
    assert not d.inpaint[:, :, :s].any() and d.inpaint[:, :, s:].any(axis=(1, 2)).all()
    # masked image = the pipeline's masked image: exactly 0.5 gray inside the inpaint mask
    masked = d.float_images(np.arange(len(d)), "masked")  # [-1, 1]
    assert (masked.permute(0, 2, 3, 1)[d.inpaint] == 0).all()
    # text mode: empty (gray) left half; reference mode: groups contain REF_DEFECT tokens
    gt = d.float_images(np.flatnonzero(d.text_mode), "gt")
    assert (gt[..., :s] == 0).all()
    ref_groups = d.groups[~d.text_mode]
    assert (ref_groups == TokenGroup.REF_DEFECT).any(axis=1).all()
    assert not (d.groups[d.text_mode] == TokenGroup.REF_DEFECT).any()
    # reference masks of the left half: present in reference mode, empty in text mode
    assert d.reference_mask.shape == (8, s, s)
    assert d.reference_mask[~d.text_mode].any(axis=(1, 2)).all() and not d.reference_mask[d.text_mode].any()
    # packed mask = runtime packing
    np.testing.assert_array_equal(d.packed_masks()[0], pack_mask(d.inpaint[0].astype(np.float32)) > 0.5)


def test_recipe_crop_rule_reaches_the_diptychs_and_vae_overrides_the_preset():
    from unidg_rt.data import make_reference_pair
    from unidg_rt.diptych import prepare_diptych
    from unidg_rt.train.dataset import _pair_samples
    from unidg_rt.train.run import arch_configs

    pair = make_reference_pair(5, "hole", size=64)
    tight = {"context": 0.02, "min_side": 16, "max_margin": 0.2}
    got = _pair_samples(pair, 0, 32, tight)[1]  # (gt, masked, inpaint, groups, row, text): text mode
    want = prepare_diptych(pair.target.normal, pair.target.mask, height=32, width=32, **tight)
    wide = prepare_diptych(pair.target.normal, pair.target.mask, height=32, width=32)
    np.testing.assert_array_equal(got[1][:, 32:], np.clip(np.round(want.image[:, 32:] * 255), 0, 255))
    assert want.target_box.width <= wide.target_box.width
    r = Recipe.from_dict({"vae": {"config": {"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4}}})
    _, vcfg = arch_configs(r)
    assert vcfg.block_out_channels == (8, 16, 16, 16) and vcfg.latent_channels == 16


def test_diptych_set_is_deterministic(tiny_diptychs):
    from unidg_rt.train.dataset import build_diptych_set

    again = build_diptych_set(
        Recipe.from_dict({"data": {"num_pairs": 2, "gen_size": 32, "source_size": 64}}).data, 0
    )
    np.testing.assert_array_equal(again.image_gt, tiny_diptychs.image_gt)
    np.testing.assert_array_equal(again.groups, tiny_diptychs.groups)


def test_ground_truth_differs_from_input_inside_mask_only():
    from unidg_rt.data import make_reference_pair

    pair = make_reference_pair(5, "hole", size=96)
    kw = dict(reference_image=pair.reference_image, reference_mask=pair.reference_mask, height=32, width=32)
    dip = prepare_diptych(pair.target.normal, pair.target_mask, **kw)
    gt = prepare_diptych(pair.target.abnormal, pair.target_mask, **kw)
    assert dip.target_box == gt.target_box  # same mask -> same crop
    np.testing.assert_array_equal(dip.token_groups, gt.token_groups)
