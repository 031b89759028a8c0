"""Defect data: the 28-category vocabulary, procedural surfaces and defects, synthetic
quadruplets, and readers for MVTec-AD / quadruplet folders. numpy + PIL only."""

from __future__ import annotations

from unidg_rt.data.defects import apply_defect, implemented_categories, sample_scale
from unidg_rt.data.preview import save_preview_grid
from unidg_rt.data.quadruplets import (
    Quadruplet,
    ReferencePair,
    generate_dataset,
    generate_quadruplet,
    make_reference_pair,
)
from unidg_rt.data.readers import (
    MVTecRecord,
    ReferenceDefect,
    build_reference_bank,
    iter_mvtec,
    load_image,
    load_mask,
    read_quadruplets,
    write_quadruplets,
)
from unidg_rt.data.surfaces import SURFACE_KINDS, SURFACE_NOUNS, make_surface
from unidg_rt.data.vocab import (
    Category,
    category_id,
    category_names,
    get_category,
    load_categories,
    match_category,
    procedural_categories,
)

__all__ = [
    "SURFACE_KINDS",
    "SURFACE_NOUNS",
    "Category",
    "MVTecRecord",
    "Quadruplet",
    "ReferenceDefect",
    "ReferencePair",
    "apply_defect",
    "build_reference_bank",
    "category_id",
    "category_names",
    "generate_dataset",
    "generate_quadruplet",
    "get_category",
    "implemented_categories",
    "iter_mvtec",
    "load_categories",
    "load_image",
    "load_mask",
    "make_reference_pair",
    "make_surface",
    "match_category",
    "procedural_categories",
    "read_quadruplets",
    "sample_scale",
    "save_preview_grid",
    "write_quadruplets",
]
