"""The held-out evaluation set: seeded procedural reference-mode and text-mode cases.

Seed ranges (keep training data out of them):

* evaluation cases: ``EVAL_SEED_BASE + i`` = 1_000_000, 1_000_001, … (this module);
* classifier train / test defects: 2_000_000 + i / 3_000_000 + i; Fréchet-distance floor:
  4_000_000 + i (:mod:`unidg_rt.evaluation.classifier`).

Training recipes should draw items from seeds below 10**6; ``unidg_rt.train`` draws 62-bit
per-pair seeds, which hit these ranges with probability ~1e-9 (held out in practice).

Case ``i`` evaluates category ``categories[i % K]`` in mode ``modes[(i // K) % M]``, so the
first ``K`` cases cover every category once and ``K * M`` cases cover every (category, mode).
Reference mode: ``make_reference_pair(seed, category)``: a defect on one item and a different
item (of the same surface kind, or another one for ``cross_surface`` of them) with a target mask (the footprint of a real same-category defect
there, whose abnormal image is kept as ground truth). Text mode: ``generate_quadruplet(seed,
category)``: normal image + mask + the real abnormal image as ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError

EVAL_SEED_BASE = 1_000_000
EVAL_IMAGE_SIZE = 160  #: side of the procedural images (the training recipe's source_size)
#: the pipeline dilates target masks 7×7 ×2 before inpainting (prepare_diptych's default)
REGION_DILATE = (7, 2)
MODES = ("reference", "text")
#: evaluated when the pipeline has no embeddings cache to take the category list from
DEFAULT_CATEGORIES = (
    "scratch",
    "hole",
    "black spot",
    "dirt",
    "discoloration",
    "breakage",
    "foreign matter",
    "wrinkle",
    "abrasion",
    "misprint",
)


@dataclass(eq=False)
class EvalCase:
    """One evaluation input. Images uint8 ``[H, W, 3]``, masks bool ``[H, W]``."""

    index: int
    seed: int
    mode: str  # "reference" | "text"
    category: str  # vocabulary name, e.g. "black spot"
    surface: str  # surface kind of the target
    image: np.ndarray  # normal target
    mask: np.ndarray  # target mask
    real: np.ndarray  # the target with a real procedural defect of `category` in `mask`
    reference_image: np.ndarray | None = None
    reference_mask: np.ndarray | None = None
    reference_surface: str | None = None

    @property
    def case_id(self) -> str:
        return f"{self.index:03d}-{self.mode}-{self.category.replace(' ', '_')}-{self.surface}"

    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline arguments of this case (no seed, no settings)."""
        kw: dict[str, Any] = {"image": self.image, "mask_image": self.mask}
        if self.mode == "reference":
            kw.update(reference_image=self.reference_image, reference_mask=self.reference_mask)
        else:
            kw["defect_category"] = self.category
        return kw

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.case_id,
            "seed": self.seed,
            "mode": self.mode,
            "category": self.category,
            "surface": self.surface,
            "reference_surface": self.reference_surface,
        }


def default_categories(pipeline=None) -> list[str]:
    """The categories to evaluate: :data:`DEFAULT_CATEGORIES` (the ten the issue lists) that
    the pipeline's embeddings cache holds, so text mode works for every case. Without a cache,
    all ten; if the cache holds fewer than two of them, its procedural categories (minus
    "combined", which is a mix of the others)."""
    from unidg_rt.data import get_category, implemented_categories
    from unidg_rt.errors import UnknownCategoryError

    cache = getattr(pipeline, "embeddings", None)
    if cache is None:
        return list(DEFAULT_CATEGORIES)
    cached = []
    for name in cache.categories:
        try:
            cached.append(get_category(name).name)
        except UnknownCategoryError:
            continue
    chosen = [c for c in DEFAULT_CATEGORIES if c in cached]
    if len(chosen) >= 2:
        return chosen
    implemented = set(implemented_categories()) - {"combined"}
    return list(dict.fromkeys(c for c in cached if c in implemented)) or list(DEFAULT_CATEGORIES)


def build_eval_set(
    n: int,
    categories: Sequence[str] | None = None,
    *,
    modes: Sequence[str] = MODES,
    size: int = EVAL_IMAGE_SIZE,
    seed_base: int = EVAL_SEED_BASE,
    cross_surface: float = 0.25,
) -> list[EvalCase]:
    """``n`` cases, case ``i`` from seed ``seed_base + i`` (see the module docstring).
    ``cross_surface``: share of reference cases whose target is another surface kind (drawn
    from the case seed), as in the training recipe."""
    from unidg_rt.data import SURFACE_KINDS, generate_quadruplet, get_category, make_reference_pair

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"n={n!r} must be a positive number of cases")
    cats = [get_category(c).name for c in (categories or DEFAULT_CATEGORIES)]
    modes = list(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InvalidInputError(f"modes={modes!r}: use one or both of {MODES}")
    cases = []
    for i in range(n):
        seed = seed_base + i
        cat, mode = cats[i % len(cats)], modes[(i // len(cats)) % len(modes)]
        if mode == "reference":
            rng = np.random.default_rng([seed, 1])  # independent of make_reference_pair's stream
            other = (
                SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))] if rng.random() < cross_surface else None
            )
            pair = make_reference_pair(seed, cat, target_surface=other, size=size)
            tgt = pair.target
            cases.append(
                EvalCase(
                    i,
                    seed,
                    mode,
                    cat,
                    tgt.surface,
                    tgt.normal,
                    tgt.mask,
                    tgt.abnormal,
                    pair.reference_image,
                    pair.reference_mask,
                    pair.reference.surface,
                )
            )
        else:
            q = generate_quadruplet(seed, cat, size=size)
            cases.append(EvalCase(i, seed, mode, cat, q.surface, q.normal, q.mask, q.abnormal))
    return cases


def paste_like_pipeline(
    normal: np.ndarray,
    abnormal: np.ndarray,
    mask: np.ndarray,
    height: int,
    width: int,
    feather: int = 8,
    crop: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What a *perfect* generator would return: the real ``abnormal`` image seen through the
    pipeline's geometry (dilated mask, adaptive crop, resize to ``height × width``, resize back,
    feathered paste-back). Returns ``(result uint8 [H, W, 3], alpha float32 [H, W])``.

    Used for the "real" reference column and to train the classifier on defects at the
    pipeline's generation resolution. ``crop``: the pipeline's crop rule (``pipeline.crop_rule``)."""
    from unidg_rt.crops import crop_resize
    from unidg_rt.diptych import prepare_diptych

    dip = prepare_diptych(normal, mask, height=height, width=width, **(crop or {}))
    generated = crop_resize(abnormal, dip.target_box, (height, width))  # [h, w, 3] in [0, 1]
    return dip.paste(generated, feather=feather)


def flat_fill(normal: np.ndarray, mask: np.ndarray, feather: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A content-free "generator": the paste region filled with its own mean colour.

    Its category consistency measures how much the mask's geometry alone (through the feature
    crop) tells the classifier; a model must beat it to show it drew the category."""
    from unidg_rt.crops import dilate_mask, feather_alpha, to_uint8_rgb

    base = to_uint8_rgb(normal, "normal")
    region = dilate_mask(mask, *REGION_DILATE)
    alpha = feather_alpha(region, feather)
    colour = base[region].mean(axis=0)  # [3]
    out = base.astype(np.float32) * (1 - alpha[..., None]) + colour * alpha[..., None]
    out = np.where(alpha[..., None] > 0, np.rint(out), base).astype(np.uint8)
    return out, alpha
