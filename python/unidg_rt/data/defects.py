"""Procedural defect insertion: `apply_defect(normal, category, rng, scale)`.

A renderer draws the defect over the whole image as a target colour + alpha; the result is
composited *only inside the mask* (`alpha >= MASK_THRESHOLD`), so every pixel outside the
returned mask is bit-identical to the input. Defect size is a fraction of the image's short
side, drawn log-uniformly from the category's `scale_range` in categories.json.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from unidg_rt.data import _defects_blobs as blobs
from unidg_rt.data import _defects_marks as marks
from unidg_rt.data import _defects_relief as relief
from unidg_rt.data._noise import to_uint8
from unidg_rt.data.vocab import get_category, procedural_categories
from unidg_rt.errors import ConfigError, InvalidInputError

logger = logging.getLogger(__name__)

Renderer = Callable[
    [np.ndarray, np.random.Generator, float, tuple[float, float]], tuple[np.ndarray, np.ndarray]
]

MASK_THRESHOLD = 0.03  # alpha below this changes a pixel by < 3 % of the contrast: not defect
MIN_SCALE, MAX_SCALE = 0.005, 1.0
_MAX_ATTEMPTS = 4

RENDERERS: dict[str, Renderer] = {
    "missing": blobs.missing,
    "deformation": relief.deformation,
    "discoloration": blobs.discoloration,
    "breakage": blobs.breakage,
    "dirt": blobs.dirt,
    "scratch": marks.scratch,
    "dehiscence": relief.dehiscence,
    "bruise": blobs.bruise,
    "raised": relief.raised,
    "foreign matter": marks.foreign_matter,
    "abrasion": marks.abrasion,
    "indentation": relief.indentation,
    "hole": blobs.hole,
    "black spot": blobs.black_spot,
    "fold": relief.fold,
    "misprint": marks.misprint,
    "wrinkle": relief.wrinkle,
    "graze": marks.graze,
    "watermark": blobs.watermark,
    "scraped": marks.scraped,
    "glue": blobs.glue,
    "crack": marks.crack,
    "stain": blobs.stain,
    "contamination": marks.contamination,
    "burr": marks.burr,
    "bent": relief.bent,
}
_COMBINED = "combined"


def implemented_categories() -> list[str]:
    """Categories `apply_defect` can render (vocabulary order); checked against the JSON flags."""
    names = procedural_categories()
    missing = [n for n in names if n not in RENDERERS and n != _COMBINED]
    if missing:
        raise ConfigError(
            f"categories.json marks {missing} procedural but no renderer exists; set 'procedural': false."
        )
    return names


def sample_scale(category: str, rng: np.random.Generator) -> float:
    """Defect extent (fraction of the short side), log-uniform in the category's scale_range."""
    cat = get_category(category)
    lo, hi = cat.scale_range or (0.05, 0.3)
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _check_image(normal: object) -> np.ndarray:
    if (
        not isinstance(normal, np.ndarray)
        or normal.dtype != np.uint8
        or normal.ndim != 3
        or normal.shape[2] != 3
    ):
        desc = f"{normal.dtype} {normal.shape}" if isinstance(normal, np.ndarray) else type(normal).__name__
        raise InvalidInputError(
            f"normal must be a uint8 array [H, W, 3], got {desc}; convert with np.asarray(img.convert('RGB'))."
        )
    if min(normal.shape[:2]) < 16:
        raise InvalidInputError(f"normal is {normal.shape[:2]}; both sides must be >= 16 pixels.")
    return normal


def _render_once(
    normal: np.ndarray, name: str, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = normal.shape[:2]
    side = min(h, w)
    size = max(1.5, scale * side)
    margin = min(size / 2, 0.45 * side)
    center = (float(rng.uniform(margin, h - margin)), float(rng.uniform(margin, w - margin)))
    img = normal.astype(np.float32)
    target, alpha = RENDERERS[name](img, rng, size, center)
    alpha = np.clip(alpha, 0.0, 1.0)
    mask = alpha >= MASK_THRESHOLD
    blended = to_uint8(img + (np.asarray(target, np.float32) - img) * alpha[..., None])
    abnormal = np.where(mask[..., None], blended, normal)
    return abnormal, mask


def _render(
    normal: np.ndarray, name: str, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Render, retrying at a new position when nothing visible came out (e.g. a misprint
    ghost over a blank area, or a tiny defect that rounds away)."""
    for attempt in range(_MAX_ATTEMPTS):
        abnormal, mask = _render_once(normal, name, rng, scale)
        if (abnormal[mask] != normal[mask]).any():
            return abnormal, mask
        logger.debug("defect %r attempt %d changed no pixel; retrying", name, attempt)
        scale = min(MAX_SCALE, scale * 1.5)
    # Last resort so callers always get a non-empty, visible defect: one dark dot.
    h, w = normal.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[h // 2, w // 2] = True
    abnormal = normal.copy()
    abnormal[h // 2, w // 2] = 255 - abnormal[h // 2, w // 2]
    return abnormal, mask


def _combined(normal: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    choices = [n for n in implemented_categories() if n not in (_COMBINED, "missing")]
    picks = rng.choice(len(choices), size=int(rng.integers(2, 4)), replace=False)
    abnormal, mask = normal, np.zeros(normal.shape[:2], bool)
    for i in picks:
        name = choices[int(i)]
        lo, hi = get_category(name).scale_range or (0.05, 0.3)
        sub_scale = float(np.clip(scale * rng.uniform(0.6, 1.2), lo, hi))
        abnormal, sub_mask = _render(abnormal, name, rng, sub_scale)
        mask |= sub_mask
    return abnormal, mask


def apply_defect(
    normal: np.ndarray,
    category: str,
    rng: np.random.Generator,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert a procedural defect of `category` into `normal`.

    Args:
        normal: uint8 `[H, W, 3]` defect-free image.
        category: a vocabulary name or alias (see categories.json) with a procedural generator.
        rng: `np.random.default_rng(seed)`; the output is a pure function of its state.
        scale: defect extent as a fraction of the short side (0.005..1); None samples it from
            the category's `scale_range`.

    Returns:
        `(abnormal uint8 [H, W, 3], mask bool [H, W])`; `mask` is non-empty and
        `abnormal[~mask] == normal[~mask]` exactly.
    """
    normal = _check_image(normal)
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}."
        )
    cat = get_category(category)
    if not cat.procedural:
        raise InvalidInputError(
            f"category={category!r} has no procedural generator; use one of {implemented_categories()}."
        )
    if scale is None:
        scale = sample_scale(cat.name, rng)
    elif not (MIN_SCALE <= float(scale) <= MAX_SCALE):
        raise InvalidInputError(
            f"scale={scale!r} must be in [{MIN_SCALE}, {MAX_SCALE}] (fraction of the short side)."
        )
    if cat.name == _COMBINED:
        return _combined(normal, rng, float(scale))
    return _render(normal, cat.name, rng, float(scale))
