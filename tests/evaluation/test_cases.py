"""The held-out case set and the model-free reference generators."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation import (
    EVAL_SEED_BASE,
    build_eval_set,
    default_categories,
    flat_fill,
    paste_like_pipeline,
)
from unidg_rt.evaluation.metrics import background_error


def test_eval_set_is_seeded_held_out_and_covers_categories_and_modes():
    cats = ["scratch", "hole", "black spot"]
    cases = build_eval_set(6, cats, size=64)
    assert [c.seed for c in cases] == [EVAL_SEED_BASE + i for i in range(6)]
    assert min(c.seed for c in cases) >= 10**6  # training draws seeds below 10**6
    assert [c.category for c in cases] == cats * 2
    assert [c.mode for c in cases] == ["reference"] * 3 + ["text"] * 3
    again = build_eval_set(6, cats, size=64)
    for a, b in zip(cases, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.case_id == b.case_id
    ref, text = cases[0], cases[3]
    assert ref.reference_image is not None and ref.reference_mask.any()
    assert set(ref.call_kwargs()) == {"image", "mask_image", "reference_image", "reference_mask"}
    assert text.call_kwargs()["defect_category"] == "scratch"
    assert ref.mask.any() and (ref.real != ref.image).any()
    assert (ref.real[~ref.mask] == ref.image[~ref.mask]).all()  # ground truth only differs in the mask


def test_eval_set_rejects_bad_arguments():
    with pytest.raises(InvalidInputError):
        build_eval_set(0)
    with pytest.raises(InvalidInputError):
        build_eval_set(2, modes=("painting",))


def test_default_categories_follow_the_embeddings_cache():
    class Cache:
        categories = ("black_spot", "scratch", "not_a_defect_name")

    class Pipe:
        embeddings = Cache()

    assert default_categories(Pipe()) == ["scratch", "black spot"]  # the ten, in their order
    assert len(default_categories(None)) == 10
    Cache.categories = ("graze", "combined", "scratch")  # < 2 of the ten: the cache's own, minus "combined"
    assert default_categories(Pipe()) == ["graze", "scratch"]


def test_reference_generators_keep_the_background_exactly():
    case = build_eval_set(1, ["hole"], size=64)[0]
    res, alpha = paste_like_pipeline(case.image, case.real, case.mask, 32, 32)
    assert res.dtype == np.uint8 and res.shape == case.image.shape
    assert background_error(res, case.image, alpha) == 0.0
    assert (alpha[case.mask] == 1.0).all()
    res, alpha = flat_fill(case.image, case.mask)
    assert background_error(res, case.image, alpha) == 0.0
    assert (res[alpha == 1.0] == res[alpha == 1.0][0]).all()  # one flat colour
