"""The defect vocabulary is data (categories.json) and lookups are forgiving but strict."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from unidg_rt.data import category_id, get_category, load_categories, match_category, procedural_categories
from unidg_rt.data.defects import implemented_categories
from unidg_rt.errors import InvalidInputError, UnknownCategoryError

UDG_ORDER = [
    "missing", "combined", "deformation", "discoloration", "breakage", "dirt", "scratch", "dehiscence",
    "bruise", "raised", "foreign matter", "abrasion", "indentation", "unknown", "hole", "black spot",
    "fold", "misprint", "wrinkle", "graze", "watermark", "scraped", "glue",
]  # fmt: skip


def test_json_has_28_entries_with_unique_ids_and_names():
    raw = json.loads(resources.files("unidg_rt.data").joinpath("categories.json").read_text())["categories"]
    assert len(raw) == 28
    assert sorted(e["id"] for e in raw) == list(range(28))
    assert len({e["name"] for e in raw}) == 28
    for e in raw:
        assert "{object}" in e["caption"] and e["source"] in ("udg", "assumed")


def test_order_follows_the_paper_and_assumed_ones_are_marked():
    cats = load_categories()
    assert [c.name for c in cats[:23]] == UDG_ORDER
    assert all(c.source == "udg" for c in cats[:23])
    assert [c.source for c in cats[23:]] == ["assumed"] * 5
    assert [c.id for c in cats] == list(range(28))


def test_lookup_is_case_space_underscore_insensitive_and_knows_aliases():
    assert category_id("Black_Spot") == category_id("  black-spot ") == 15
    assert category_id("FOREIGN_MATTER") == 10
    assert get_category("crease").name == "fold"
    assert get_category("broken").name == "breakage"
    assert get_category("scratches").name == "scratch"
    assert get_category(6).name == "scratch"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownCategoryError, match="scratch") as err:
        category_id("scrach")
    assert isinstance(err.value, InvalidInputError) and isinstance(err.value, KeyError)
    assert "categories.json" in str(err.value)
    with pytest.raises(UnknownCategoryError):
        get_category(99)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("broken_large", "breakage"),
        ("metal_contamination", "contamination"),
        ("scratch_head", "scratch"),
        ("faulty_imprint", "misprint"),
        ("bent_wire", "bent"),
        ("color", "discoloration"),
        ("a ceramic tile with a small black spot", "black spot"),
        ("manipulated_front", None),
    ],
)
def test_match_category_maps_dataset_labels(label, expected):
    cat = match_category(label)
    assert (cat.name if cat else None) == expected


def test_procedural_flags_match_the_generator():
    assert procedural_categories() == implemented_categories()
    assert len(implemented_categories()) >= 10
    assert "unknown" not in implemented_categories()


def test_caption_rendering():
    cat = get_category("crack")
    assert cat.render_caption("ceramic tile", 0.03) == "a ceramic tile with a tiny crack"
    assert "large" in cat.render_caption("ceramic tile", 0.35)
