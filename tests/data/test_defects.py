from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.data import SURFACE_KINDS, apply_defect, implemented_categories, make_surface
from unidg_rt.errors import InvalidInputError, UnknownCategoryError

SIZE = 128


@pytest.fixture(scope="module")
def surfaces():
    return {k: make_surface(k, SIZE, np.random.default_rng(i)) for i, k in enumerate(SURFACE_KINDS)}


@pytest.mark.parametrize("category", implemented_categories())
def test_every_category_on_every_surface(category, surfaces):
    for i, (kind, normal) in enumerate(surfaces.items()):
        before = normal.copy()
        abnormal, mask = apply_defect(normal, category, np.random.default_rng(100 + i))
        assert np.array_equal(normal, before), "input must not be modified"
        assert abnormal.shape == normal.shape and abnormal.dtype == np.uint8
        assert mask.shape == normal.shape[:2] and mask.dtype == bool
        assert mask.any(), f"{category} on {kind}: empty mask"
        assert np.array_equal(abnormal[~mask], normal[~mask]), (
            f"{category} on {kind}: pixels outside the mask changed"
        )
        assert (abnormal[mask] != normal[mask]).any(), (
            f"{category} on {kind}: nothing changed inside the mask"
        )


def test_deterministic_in_rng(surfaces):
    normal = surfaces["wood"]
    a = apply_defect(normal, "crack", np.random.default_rng(7))
    b = apply_defect(normal, "crack", np.random.default_rng(7))
    c = apply_defect(normal, "crack", np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def _extent(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    return int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1


@pytest.mark.parametrize("category", ["hole", "scratch", "dirt", "foreign matter"])
def test_sampled_scale_varies(category, surfaces):
    extents = [
        _extent(apply_defect(surfaces["tile"], category, np.random.default_rng(s))[1]) for s in range(12)
    ]
    assert max(extents) >= 3 * min(extents), extents


def test_explicit_scale_controls_size(surfaces):
    small = apply_defect(surfaces["fabric"], "hole", np.random.default_rng(0), scale=0.02)[1]
    large = apply_defect(surfaces["fabric"], "hole", np.random.default_rng(0), scale=0.4)[1]
    assert _extent(small) <= 0.06 * SIZE + 3
    assert _extent(large) >= 0.3 * SIZE
    assert large.sum() > 20 * small.sum()


def test_bad_arguments(surfaces):
    normal = surfaces["wood"]
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="normal"):
        apply_defect(normal.astype(np.float32), "hole", rng)
    with pytest.raises(InvalidInputError, match="normal"):
        apply_defect(normal[..., 0], "hole", rng)
    with pytest.raises(InvalidInputError, match="no procedural generator"):
        apply_defect(normal, "unknown", rng)
    with pytest.raises(InvalidInputError, match="scale"):
        apply_defect(normal, "hole", rng, scale=2.0)
    with pytest.raises(UnknownCategoryError, match="hole"):
        apply_defect(normal, "hol", rng)
    with pytest.raises(InvalidInputError, match="rng"):
        apply_defect(normal, "hole", 0)
