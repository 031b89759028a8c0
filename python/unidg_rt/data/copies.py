"""Copy pairs: a reference and a target that carry the *same* defect instance.

In an ordinary :func:`~unidg_rt.data.make_reference_pair` the two defects are drawn
independently, so all a target can learn from its reference is the category average. A copy pair
renders one defect instance twice: the renderer gets the same random stream (same shape, colour
and every other parameter it draws) and the same pixel size, on the reference surface as drawn and
on a *similarity-warped* view of another surface — so the target shows that instance at another
placement, scale and rotation. Copying the reference is then the best prediction of the target.

Target frame ``y`` ↔ canvas frame ``x`` (the reference's frame, where the renderer runs)::

    y = center_t + s · R(θ) · (x - center_r)

The canvas is the target's normal image sampled at ``y(x)``; the rendered colour and alpha are
sampled back at ``x(y)`` and blended as :func:`unidg_rt.data.apply_defect` blends (only where
alpha ≥ ``MASK_THRESHOLD``, every other pixel bit-identical to the normal image).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from unidg_rt.data._noise import sample_bilinear, to_uint8
from unidg_rt.data.defects import MASK_THRESHOLD, RENDERERS, sample_scale
from unidg_rt.data.quadruplets import Quadruplet, ReferencePair, check_category, check_seed
from unidg_rt.data.surfaces import SURFACE_KINDS, SURFACE_NOUNS, check_surface_kind, make_surface
from unidg_rt.data.vocab import get_category
from unidg_rt.errors import InvalidInputError

_SEED_MAX = 2**63
_ATTEMPTS = 12  # instance redraws before a copy pair is refused


@dataclass(frozen=True)
class DefectInstance:
    """What a copy pair's two defects share (``seed``: the renderer's stream) and how the target's
    copy is placed (``scale``, ``angle`` in radians, ``center_t``)."""

    category: str
    seed: int
    size: float  # pixels, in the reference frame
    center_r: tuple[float, float]
    scale: float
    angle: float
    center_t: tuple[float, float]


def copy_categories() -> list[str]:
    """Categories a copy pair can carry (every renderer; not the multi-defect "combined")."""
    from unidg_rt.data.defects import implemented_categories

    return [c for c in implemented_categories() if c in RENDERERS]


def _blend(normal: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = normal.astype(np.float32)
    alpha = np.clip(alpha, 0.0, 1.0)
    mask = alpha >= MASK_THRESHOLD
    blended = to_uint8(img + (np.asarray(target, np.float32) - img) * alpha[..., None])
    return np.where(mask[..., None], blended, normal), mask


def render_instance(
    normal: np.ndarray, inst: DefectInstance, reference: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(abnormal, mask)``: ``inst`` on ``normal`` — as drawn (``reference``) or warped."""
    renderer = RENDERERS[inst.category]
    rng = np.random.default_rng(inst.seed)
    if reference:
        target, alpha = renderer(normal.astype(np.float32), rng, inst.size, inst.center_r)
        return _blend(normal, target, alpha)
    h, w = normal.shape[:2]
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    c, s = float(np.cos(inst.angle)), float(np.sin(inst.angle))
    (ry, rx), (ty, tx), k = inst.center_r, inst.center_t, inst.scale
    # canvas (reference frame) -> target frame: the canvas shows the target surface
    dy, dx = yy - ry, xx - rx
    canvas = sample_bilinear(
        normal.astype(np.float32), ty + k * (c * dy - s * dx), tx + k * (s * dy + c * dx)
    )
    target_c, alpha_c = renderer(canvas, rng, inst.size, inst.center_r)
    # target frame -> canvas: x = center_r + R(-θ)(y - center_t) / s; outside the canvas: no defect
    dy, dx = (yy - ty) / k, (xx - tx) / k
    cy, cx = ry + c * dy + s * dx, rx - s * dy + c * dx
    inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
    alpha = sample_bilinear(np.asarray(alpha_c, np.float32), cy, cx) * inside
    target = sample_bilinear(np.broadcast_to(np.asarray(target_c, np.float32), normal.shape), cy, cx)
    return _blend(normal, target, alpha)


def make_copy_pair(
    seed: int,
    category: str,
    reference_surface: str | None = None,
    target_surface: str | None = None,
    size: int = 160,
    scale_range: tuple[float, float] = (0.7, 1.4),
) -> tuple[ReferencePair, DefectInstance]:
    """A :class:`ReferencePair` whose two defects are one instance (see the module doc).

    Surfaces: two different items (``target_surface`` None = the reference's kind); the copy is
    scaled by a log-uniform factor in ``scale_range``, rotated by a uniform angle and placed at a
    new centre. Deterministic in its arguments."""
    rng = np.random.default_rng(check_seed(seed))
    category = check_category(category)
    if category not in RENDERERS:
        raise InvalidInputError(
            f"category={category!r} has no single renderer; use one of {copy_categories()}"
        )
    if not isinstance(size, (int, np.integer)) or not 32 <= int(size) <= 4096:
        raise InvalidInputError(f"size={size!r} must be an int side in 32..4096")
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise InvalidInputError(f"scale_range={scale_range!r} must be 0 < low <= high")
    ref_kind = check_surface_kind(reference_surface) if reference_surface else None
    drawn = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
    ref_kind = ref_kind or drawn
    tgt_kind = check_surface_kind(target_surface) if target_surface else ref_kind
    ref_normal = make_surface(ref_kind, (size, size), np.random.default_rng(int(rng.integers(0, _SEED_MAX))))
    tgt_normal = make_surface(tgt_kind, (size, size), np.random.default_rng(int(rng.integers(0, _SEED_MAX))))
    scale = sample_scale(category, rng)
    px = max(1.5, scale * size)
    k = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    margin_r, margin_t = min(px / 2, 0.45 * size), min(k * px / 2, 0.45 * size)
    center_r = (float(rng.uniform(margin_r, size - margin_r)), float(rng.uniform(margin_r, size - margin_r)))
    center_t = (float(rng.uniform(margin_t, size - margin_t)), float(rng.uniform(margin_t, size - margin_t)))
    inst = DefectInstance(
        category,
        int(rng.integers(0, _SEED_MAX)),
        float(px),
        center_r,
        k,
        float(rng.uniform(0, 2 * np.pi)),
        center_t,
    )
    # A copy that rounds away (tiny, or, for renderers that move their centre such as "missing"
    # at a part's edge, warped off the target): redraw the instance's stream, larger and centred.
    for _ in range(_ATTEMPTS):
        ref_abn, ref_mask = render_instance(ref_normal, inst, reference=True)
        tgt_abn, tgt_mask = render_instance(tgt_normal, inst, reference=False)
        if (ref_abn[ref_mask] != ref_normal[ref_mask]).any() and (
            tgt_abn[tgt_mask] != tgt_normal[tgt_mask]
        ).any():
            break
        inst = dataclasses.replace(
            inst,
            seed=int(rng.integers(0, _SEED_MAX)),
            size=min(inst.size * 1.25, 0.9 * size),
            center_t=(size / 2.0, size / 2.0),
        )
    else:
        raise InvalidInputError(
            f"copy pair seed={seed} category={category!r}: the defect renders empty; try another seed"
        )
    cat = get_category(category)
    ref = Quadruplet(
        ref_normal,
        ref_abn,
        ref_mask,
        cat.render_caption(SURFACE_NOUNS[ref_kind], scale),
        category,
        ref_kind,
        None,
    )
    tgt = Quadruplet(
        tgt_normal,
        tgt_abn,
        tgt_mask,
        cat.render_caption(SURFACE_NOUNS[tgt_kind], scale * k),
        category,
        tgt_kind,
        None,
    )
    return ReferencePair(reference=ref, target=tgt), inst
