from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.data import (
    SURFACE_NOUNS,
    Quadruplet,
    generate_dataset,
    generate_quadruplet,
    make_reference_pair,
)
from unidg_rt.errors import InvalidInputError, UnknownCategoryError


def _same(a: Quadruplet, b: Quadruplet) -> bool:
    return (
        a.normal.tobytes() == b.normal.tobytes()
        and a.abnormal.tobytes() == b.abnormal.tobytes()
        and a.mask.tobytes() == b.mask.tobytes()
        and (a.caption, a.category, a.surface, a.seed) == (b.caption, b.category, b.surface, b.seed)
    )


def test_same_seed_is_byte_identical():
    assert _same(generate_quadruplet(1234, size=96), generate_quadruplet(1234, size=96))
    assert _same(generate_quadruplet(5, "crack", "wood", 64), generate_quadruplet(5, "crack", "wood", 64))


def test_different_seeds_differ():
    a, b = generate_quadruplet(1, size=64), generate_quadruplet(2, size=64)
    assert not np.array_equal(a.normal, b.normal)


def test_quadruplet_contents():
    q = generate_quadruplet(11, category="Black_Spot", surface="tile", size=(64, 96))
    assert q.category == "black spot" and q.surface == "tile" and q.seed == 11
    assert q.normal.shape == q.abnormal.shape == (64, 96, 3)
    assert q.mask.shape == (64, 96) and q.mask.any()
    assert np.array_equal(q.abnormal[~q.mask], q.normal[~q.mask])
    assert SURFACE_NOUNS["tile"] in q.caption and "black spot" in q.caption


def test_dataset_items_regenerate_from_their_seed():
    items = list(
        generate_dataset(4, seed=3, categories=["hole", "scratch"], surfaces=["fabric", "pcb"], size=64)
    )
    assert len(items) == 4
    assert {q.category for q in items} <= {"hole", "scratch"}
    assert {q.surface for q in items} <= {"fabric", "pcb"}
    assert len({q.seed for q in items}) == 4
    for q in items[:2]:
        assert _same(q, generate_quadruplet(q.seed, q.category, q.surface, 64))
    again = list(
        generate_dataset(4, seed=3, categories=["hole", "scratch"], surfaces=["fabric", "pcb"], size=64)
    )
    assert all(_same(a, b) for a, b in zip(items, again, strict=True))


def test_reference_pair_same_category_different_items():
    pair = make_reference_pair(9, category="dirt", size=64)
    assert pair.reference.category == pair.target.category == pair.category == "dirt"
    assert pair.reference.surface == pair.target.surface
    assert pair.reference.seed != pair.target.seed
    assert not np.array_equal(pair.reference_image, pair.target_image)
    assert pair.reference_mask.any() and pair.target_mask.any()
    cross = make_reference_pair(9, category="dirt", reference_surface="wood", target_surface="label", size=64)
    assert (cross.reference.surface, cross.target.surface) == ("wood", "label")


def test_bad_arguments():
    with pytest.raises(InvalidInputError, match="seed"):
        generate_quadruplet(-1)
    with pytest.raises(InvalidInputError, match="size"):
        generate_quadruplet(0, size=8)
    with pytest.raises(InvalidInputError, match="no procedural generator"):
        generate_quadruplet(0, category="unknown")
    with pytest.raises(UnknownCategoryError):
        generate_quadruplet(0, category="nope")
    with pytest.raises(InvalidInputError, match="surface"):
        generate_quadruplet(0, surface="glass")
    with pytest.raises(InvalidInputError, match="n="):
        list(generate_dataset(-1, 0))
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="differ in size"):
        Quadruplet(img, np.zeros((8, 9, 3), np.uint8), np.zeros((8, 8), bool), "c", "hole")
    with pytest.raises(InvalidInputError, match="mask"):
        Quadruplet(img, img, np.zeros((4, 4), bool), "c", "hole")
