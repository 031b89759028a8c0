"""Synthetic (normal, abnormal, mask, caption) quadruplets, deterministic from a seed.

Everything is drawn from one `np.random.default_rng(seed)`: the same seed gives byte-identical
arrays on every platform numpy supports. The category and surface are always drawn first, so
`generate_quadruplet(q.seed, q.category, q.surface)` reproduces a dataset item exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from unidg_rt.data.defects import apply_defect, implemented_categories, sample_scale
from unidg_rt.data.surfaces import SURFACE_KINDS, SURFACE_NOUNS, check_surface_kind, make_surface
from unidg_rt.data.vocab import get_category
from unidg_rt.errors import InvalidInputError

logger = logging.getLogger(__name__)

_SEED_MAX = 2**63


@dataclass(eq=False)
class Quadruplet:
    """One training/test sample: a defect-free image, the same image with a defect, the
    defect mask and a caption. `surface`/`seed` are None for real data."""

    normal: np.ndarray  # uint8 [H, W, 3]
    abnormal: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    caption: str
    category: str
    surface: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("normal", "abnormal"):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise InvalidInputError(f"Quadruplet.{name} must be a uint8 array [H, W, 3].")
        if self.normal.shape != self.abnormal.shape:
            raise InvalidInputError(
                f"Quadruplet.normal {self.normal.shape} and .abnormal {self.abnormal.shape} differ in size; "
                "resize one to match."
            )
        if not isinstance(self.mask, np.ndarray) or self.mask.shape != self.normal.shape[:2]:
            shape = getattr(self.mask, "shape", None)
            raise InvalidInputError(f"Quadruplet.mask must be [H, W] = {self.normal.shape[:2]}, got {shape}.")
        if self.mask.dtype != bool:
            self.mask = self.mask > (127 if self.mask.dtype == np.uint8 and self.mask.max() > 1 else 0)


@dataclass(eq=False)
class ReferencePair:
    """Reference-mode training pair: a defect on one item (`reference.abnormal` + mask) and a
    different item of the same category to insert it into (`target.normal` + `target.mask`);
    `target.abnormal` is a same-category ground truth for the target."""

    reference: Quadruplet
    target: Quadruplet

    @property
    def category(self) -> str:
        return self.reference.category

    @property
    def reference_image(self) -> np.ndarray:
        return self.reference.abnormal

    @property
    def reference_mask(self) -> np.ndarray:
        return self.reference.mask

    @property
    def target_image(self) -> np.ndarray:
        return self.target.normal

    @property
    def target_mask(self) -> np.ndarray:
        return self.target.mask


def check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < _SEED_MAX:
        raise InvalidInputError(f"{name}={seed!r} must be an integer in [0, 2**63).")
    return int(seed)


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or any(not isinstance(s, (int, np.integer)) or s < 32 or s > 4096 for s in hw):
        raise InvalidInputError(f"size={size!r} must be an int or (height, width) with sides in 32..4096.")
    return int(hw[0]), int(hw[1])


def check_category(category: str) -> str:
    cat = get_category(category)
    if not cat.procedural:
        raise InvalidInputError(
            f"category={category!r} has no procedural generator; use one of {implemented_categories()}."
        )
    return cat.name


def generate_quadruplet(
    seed: int,
    category: str | None = None,
    surface: str | None = None,
    size: int | tuple[int, int] = 256,
) -> Quadruplet:
    """A synthetic quadruplet, a pure function of its arguments.

    `category` / `surface` None draw them from the seed (among the implemented categories and
    `SURFACE_KINDS`); `size` is the side or (height, width).
    """
    rng = np.random.default_rng(check_seed(seed))
    hw = _check_size(size)
    cats = implemented_categories()
    drawn_cat = cats[int(rng.integers(len(cats)))]  # drawn even when given: same stream either way
    drawn_surf = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
    category = check_category(category) if category is not None else drawn_cat
    surface = check_surface_kind(surface) if surface is not None else drawn_surf
    normal = make_surface(surface, hw, rng)
    scale = sample_scale(category, rng)
    abnormal, mask = apply_defect(normal, category, rng, scale=scale)
    caption = get_category(category).render_caption(SURFACE_NOUNS[surface], scale)
    return Quadruplet(normal, abnormal, mask, caption, category, surface, int(seed))


def _check_choices(values: Sequence[str] | None, all_values: Sequence[str], check, name: str) -> list[str]:
    if values is None:
        return list(all_values)
    if isinstance(values, str):
        values = [values]
    out = [check(v) for v in values]
    if not out:
        raise InvalidInputError(f"{name} is empty; pass None for all of {list(all_values)}.")
    return out


def generate_dataset(
    n: int,
    seed: int,
    categories: Sequence[str] | None = None,
    surfaces: Sequence[str] | None = None,
    size: int | tuple[int, int] = 256,
) -> Iterator[Quadruplet]:
    """Yield `n` quadruplets; item `i` has its own seed (stored in `.seed`), so any item can
    be regenerated alone with `generate_quadruplet(q.seed, q.category, q.surface, size)`."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidInputError(f"n={n!r} must be a non-negative integer.")
    cats = _check_choices(categories, implemented_categories(), check_category, "categories")
    surfs = _check_choices(surfaces, SURFACE_KINDS, check_surface_kind, "surfaces")
    _check_size(size)
    picker = np.random.default_rng(check_seed(seed))
    for _ in range(int(n)):
        item_seed = int(picker.integers(0, _SEED_MAX))
        category = cats[int(picker.integers(len(cats)))]
        surface = surfs[int(picker.integers(len(surfs)))]
        yield generate_quadruplet(item_seed, category, surface, size)


def make_reference_pair(
    seed: int,
    category: str | None = None,
    reference_surface: str | None = None,
    target_surface: str | None = None,
    size: int | tuple[int, int] = 256,
) -> ReferencePair:
    """Two different items with a defect of the same category: the reference (defect to copy)
    and the target (normal image + where to insert). `target_surface` None = a different item
    of the reference's surface kind; pass another kind for cross-product transfer."""
    rng = np.random.default_rng(check_seed(seed))
    ref_seed, tgt_seed = (int(s) for s in rng.integers(0, _SEED_MAX, size=2))
    cats = implemented_categories()
    drawn = cats[int(rng.integers(len(cats)))]
    category = check_category(category) if category is not None else drawn
    reference = generate_quadruplet(ref_seed, category, reference_surface, size)
    target = generate_quadruplet(tgt_seed, category, target_surface or reference.surface, size)
    return ReferencePair(reference=reference, target=target)
