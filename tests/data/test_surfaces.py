from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.data import SURFACE_KINDS, SURFACE_NOUNS, make_surface
from unidg_rt.errors import InvalidInputError


def test_at_least_six_kinds_with_nouns():
    assert len(SURFACE_KINDS) >= 6
    assert set(SURFACE_NOUNS) == set(SURFACE_KINDS)


@pytest.mark.parametrize("kind", SURFACE_KINDS)
def test_surface_shape_determinism_and_variety(kind):
    a = make_surface(kind, (96, 128), np.random.default_rng(3))
    b = make_surface(kind, (96, 128), np.random.default_rng(3))
    c = make_surface(kind, (96, 128), np.random.default_rng(4))
    assert a.shape == (96, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 2.0  # textured, not flat


def test_bad_arguments():
    with pytest.raises(InvalidInputError, match="wood"):
        make_surface("woood", 64, np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="size_hw"):
        make_surface("wood", (8, 64), np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="rng"):
        make_surface("wood", 64, 0)
