"""Copy pairs carry one defect instance: identical when the warp is the identity, the copy's
extent follows the drawn scale, its colour is the reference's, pixels outside the mask untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unidg_rt.data.copies import copy_categories, make_copy_pair, render_instance
from unidg_rt.errors import InvalidInputError


@pytest.mark.parametrize("category", ["black spot", "scratch", "hole", "wrinkle"])
def test_identity_warp_reproduces_the_reference_exactly(category):
    pair, inst = make_copy_pair(11, category, "tile", "tile", size=96)
    ident = dataclasses.replace(inst, scale=1.0, angle=0.0, center_t=inst.center_r)
    abnormal, mask = render_instance(pair.reference.normal, ident, reference=False)
    np.testing.assert_array_equal(abnormal, pair.reference.abnormal)
    np.testing.assert_array_equal(mask, pair.reference.mask)


def test_copy_shares_the_instance_not_the_placement():
    pair, inst = make_copy_pair(3, "black spot", "wood", "carpet", size=160)
    ref, tgt = pair.reference, pair.target
    assert ref.surface == "wood" and tgt.surface == "carpet" and ref.category == tgt.category == "black spot"
    assert not np.array_equal(ref.normal, tgt.normal)
    # outside the masks both images are their normal images, bit for bit
    np.testing.assert_array_equal(ref.abnormal[~ref.mask], ref.normal[~ref.mask])
    np.testing.assert_array_equal(tgt.abnormal[~tgt.mask], tgt.normal[~tgt.mask])
    # a black spot's colour is drawn by the renderer: the copy's darkest pixels match the reference's
    ref_core = np.sort(ref.abnormal[ref.mask].mean(-1))[:3].mean()
    tgt_core = np.sort(tgt.abnormal[tgt.mask].mean(-1))[:3].mean()
    assert abs(ref_core - tgt_core) < 12, (ref_core, tgt_core)


def test_copy_extent_follows_the_scale():
    ratios = []
    for seed in range(6):
        pair, inst = make_copy_pair(seed, "stain", "tile", "tile", size=160, scale_range=(0.6, 1.6))
        area_r, area_t = pair.reference.mask.sum(), pair.target.mask.sum()
        ratios.append(np.log(area_t / area_r) / np.log(inst.scale**2) if abs(inst.scale - 1) > 0.1 else 1.0)
    assert 0.6 < float(np.median(ratios)) < 1.4, ratios  # area ∝ scale² (edges clipped: loose)


def test_every_single_renderer_gives_a_visible_copy_and_combined_is_refused():
    for i, cat in enumerate(copy_categories()):
        pair, _ = make_copy_pair(100 + i, cat, size=64)
        assert pair.reference.mask.any() and pair.target.mask.any(), cat
    with pytest.raises(InvalidInputError):
        make_copy_pair(0, "combined")
