"""Property checks over random seeds, sizes and categories (few examples: kept fast)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unidg_rt.data import SURFACE_KINDS, generate_quadruplet, implemented_categories


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    category=st.sampled_from(implemented_categories()),
    surface=st.sampled_from(SURFACE_KINDS),
    height=st.integers(32, 160),
    width=st.integers(32, 160),
)
def test_mask_is_nonempty_and_exact(seed, category, surface, height, width):
    q = generate_quadruplet(seed, category, surface, size=(height, width))
    assert q.abnormal.shape == (height, width, 3) and q.mask.shape == (height, width)
    assert q.mask.any()
    assert np.array_equal(q.abnormal[~q.mask], q.normal[~q.mask])
    assert (q.abnormal[q.mask] != q.normal[q.mask]).any()
