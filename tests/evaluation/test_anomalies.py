"""DRAEM-style and CutPaste anomalies, Perlin noise, the mask transplant."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation.anomalies import (
    cutpaste_anomaly,
    draem_anomaly,
    foreign_texture,
    perlin_2d,
    perlin_mask,
    transplant_mask,
)


def _surface(size=64, seed=0):
    from unidg_rt.data import make_surface

    return make_surface("wood", size, np.random.default_rng(seed))


def test_perlin_is_zero_on_the_lattice_and_bounded():
    rng = np.random.default_rng(0)
    noise = perlin_2d((64, 64), (4, 4), rng)
    assert noise.shape == (64, 64) and noise.dtype == np.float32
    assert np.abs(noise).max() <= np.sqrt(2) + 1e-6 and noise.std() > 0.05
    # any shape, no divisibility needed; same rng state -> same field
    a = perlin_2d((50, 37), (3, 5), np.random.default_rng(1))
    b = perlin_2d((50, 37), (3, 5), np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    # smooth: neighbouring pixels differ far less than the field's range
    assert np.abs(np.diff(noise, axis=1)).max() < 0.3


def test_perlin_rejects_empty_shapes():
    with pytest.raises(InvalidInputError, match="positive"):
        perlin_2d((0, 8), (2, 2), np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(5))
def test_anomalies_touch_only_their_mask(seed):
    img = _surface(seed=seed)
    for fn in (draem_anomaly, cutpaste_anomaly):
        out, mask = fn(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert mask.dtype == bool and mask.any() and not mask.all()
        np.testing.assert_array_equal(out[~mask], img[~mask])


def test_draem_changes_the_masked_pixels():
    img = _surface()
    out, mask = draem_anomaly(img, np.random.default_rng(3), surface="wood")
    assert np.abs(out[mask].astype(int) - img[mask]).mean() > 5
    assert perlin_mask((64, 64), np.random.default_rng(0)).any()


def test_foreign_texture_excludes_the_surface_kind():
    tex = foreign_texture((32, 32), np.random.default_rng(0), exclude="wood")
    assert tex.shape == (32, 32, 3) and tex.dtype == np.uint8


def test_anomalies_reject_non_uint8():
    with pytest.raises(InvalidInputError, match="uint8"):
        draem_anomaly(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


def test_transplant_keeps_the_footprint_area():
    ref = np.zeros((64, 64), bool)
    ref[5:15, 20:26] = True
    ref[15, 20] = True
    for seed in range(6):
        m = transplant_mask(ref, (48, 40), np.random.default_rng(seed))
        assert m.shape == (48, 40) and m.sum() == ref.sum()
    with pytest.raises(InvalidInputError, match="empty"):
        transplant_mask(np.zeros((8, 8), bool), (8, 8), np.random.default_rng(0))
