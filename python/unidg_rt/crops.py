"""Adaptive defect crops, mask dilation and feathered paste-back; the input normalisation they
use lives in :mod:`unidg_rt.pixels` (its names are importable from here too).

numpy + PIL only. Used by :mod:`unidg_rt.diptych` (DESIGN §1 steps 1 and 5).

Adaptive crop rule (:func:`adaptive_crop_box`), for a mask bounding box ``bw × bh`` in an
image ``W × H`` and a crop aspect ``a = width / height``:

1. ``rel = sqrt(bw * bh / (W * H))`` — the defect's linear size relative to the image.
2. ``margin = min(context / rel, max_margin)`` — context on each side, as a fraction of the
   bbox side: small defects get proportionally more (defaults: a defect spanning the whole
   image gets 0.15 per side, i.e. the ×1.3 of Insert-Anything; one spanning 10 % gets the
   maximum 1.5 per side, i.e. a crop 4× the defect).
3. Wanted content ``need_w = bw * (1 + 2 margin)``, ``need_h = bh * (1 + 2 margin)``, each at
   least ``min_side`` on the box's shorter side, each clamped to the image extent.
4. The box is the smallest one of aspect ``a`` covering ``need_w × need_h`` (sides rounded up).
5. Placement per axis: a box side that fits in the image is centred on the bbox and shifted to
   stay inside the image; one that is longer than the image is centred on the image (the crop
   is padded there, so the image is "clamped and padded to the aspect").

The bbox is always inside the box.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from unidg_rt.errors import InvalidInputError
from unidg_rt.pixels import quantise_uint8, to_mask_array, to_pixels, to_rgb_array, to_uint8_rgb, unit_float

__all__ = [
    "CropBox",
    "adaptive_crop_box",
    "crop_resize",
    "crop_resize_mask",
    "dilate_mask",
    "feather_alpha",
    "mask_bbox",
    "paste_back",
    # input normalisation, from unidg_rt.pixels
    "quantise_uint8",
    "to_mask_array",
    "to_pixels",
    "to_rgb_array",
    "to_uint8_rgb",
]

logger = logging.getLogger(__name__)

_RESAMPLE = Image.Resampling.BICUBIC


# ---------------------------------------------------------------- crop boxes


@dataclass(frozen=True)
class CropBox:
    """Half-open pixel box ``[x0, x1) × [y0, y1)``; may extend outside the image (padding)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def is_inside(self, height: int, width: int) -> bool:
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height

    def contains(self, other: CropBox) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and self.x1 >= other.x1 and self.y1 >= other.y1


def mask_bbox(mask: np.ndarray, name: str = "mask") -> CropBox:
    """Tight bounding box of the set pixels of a bool ``[H, W]`` mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InvalidInputError(f"{name} is empty (no pixel > 0.5): paint the defect region white")
    return CropBox(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _place(size: int, extent: int, b0: int, b1: int) -> int:
    """Start of a box side of ``size`` on an axis of ``extent`` pixels holding the bbox ``[b0, b1)``."""
    if size > extent:
        return -((size - extent) // 2)  # longer than the image: centre on the image, pad both ends
    start = int(math.floor((b0 + b1) / 2 - size / 2 + 0.5))  # centred on the bbox
    start = min(max(start, b1 - size), b0)  # keep the bbox inside
    return min(max(start, 0), extent - size)  # keep the box inside (always compatible)


def adaptive_crop_box(
    mask: np.ndarray,
    aspect: float = 1.0,
    *,
    context: float = 0.15,
    max_margin: float = 1.5,
    min_side: int = 64,
) -> CropBox:
    """Crop box of aspect ``width / height = aspect`` around the mask, context adapted to size.

    See the module docstring for the rule. ``mask`` is bool ``[H, W]`` (anything
    :func:`to_mask_array` accepts) and must not be empty.
    """
    mask = to_mask_array(mask, "mask")
    if not (math.isfinite(aspect) and aspect > 0):
        raise InvalidInputError(f"aspect must be a positive finite width/height ratio, got {aspect!r}")
    if not (context >= 0 and max_margin >= 0):
        raise InvalidInputError(f"context ({context}) and max_margin ({max_margin}) must be >= 0")
    if min_side < 1:
        raise InvalidInputError(f"min_side must be >= 1 pixel, got {min_side}")
    img_h, img_w = mask.shape
    bbox = mask_bbox(mask)
    bw, bh = bbox.width, bbox.height
    rel = math.sqrt(bw * bh / (img_w * img_h))
    margin = min(context / rel, max_margin)
    scale = 1.0 + 2.0 * margin
    need_w = min(max(bw * scale, min_side * max(aspect, 1.0)), img_w)
    need_h = min(max(bh * scale, min_side * max(1.0 / aspect, 1.0)), img_h)
    box_h = math.ceil(max(need_h, need_w / aspect) - 1e-9)
    box_w = max(round(box_h * aspect), math.ceil(need_w - 1e-9), 1)
    x0 = _place(box_w, img_w, bbox.x0, bbox.x1)
    y0 = _place(box_h, img_h, bbox.y0, bbox.y1)
    box = CropBox(x0, y0, x0 + box_w, y0 + box_h)
    logger.debug("adaptive_crop_box: bbox=%s rel=%.3f margin=%.3f -> %s", bbox, rel, margin, box)
    return box


def _intersection(box: CropBox, height: int, width: int, name: str) -> CropBox:
    inter = CropBox(max(box.x0, 0), max(box.y0, 0), min(box.x1, width), min(box.y1, height))
    if box.width <= 0 or box.height <= 0 or inter.width <= 0 or inter.height <= 0:
        raise InvalidInputError(
            f"{name} {box} does not overlap the {width}x{height} (WxH) image: "
            "compute it with adaptive_crop_box() on a mask of this image"
        )
    return inter


def _crop_padded(arr: np.ndarray, box: CropBox, fill, name: str, convert=None) -> np.ndarray:
    """``arr[box]`` with ``fill`` where the box lies outside ``arr``: ``[box.h, box.w, ...]``.

    ``convert`` (e.g. uint8 -> float) is applied to the part inside the image only.
    """
    height, width = arr.shape[:2]
    inter = _intersection(box, height, width, name)
    inside = arr[inter.y0 : inter.y1, inter.x0 : inter.x1]
    if convert is not None:
        inside = convert(inside)
    out = np.empty((box.height, box.width) + arr.shape[2:], dtype=inside.dtype)
    out[...] = fill
    out[inter.y0 - box.y0 : inter.y1 - box.y0, inter.x0 - box.x0 : inter.x1 - box.x0] = inside
    return out


def _resize_float(arr: np.ndarray, size_hw: tuple[int, int], resample) -> np.ndarray:
    """Resize float32 ``[h, w]`` or ``[h, w, C]`` per channel in PIL mode "F" (no 8-bit loss)."""
    out_h, out_w = size_hw
    if arr.shape[:2] == (out_h, out_w):
        return arr.astype(np.float32, copy=True)
    if arr.ndim == 2:
        img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
        return np.asarray(img.resize((out_w, out_h), resample), dtype=np.float32)
    chans = [_resize_float(arr[..., c], size_hw, resample) for c in range(arr.shape[2])]
    return np.stack(chans, axis=-1)  # C x [h, w] -> [h, w, C]


def _check_size_hw(size_hw) -> tuple[int, int]:
    if len(size_hw) != 2 or min(int(size_hw[0]), int(size_hw[1])) < 1:
        raise InvalidInputError(f"size_hw must be (height, width) with both >= 1, got {size_hw!r}")
    return int(size_hw[0]), int(size_hw[1])


def crop_resize(
    image: np.ndarray, box: CropBox, size_hw: tuple[int, int], pad_value=1.0, resample=_RESAMPLE
) -> np.ndarray:
    """Crop ``[H, W, 3]`` to ``box`` (``pad_value`` outside the image), resize to ``size_hw``.

    ``image``: float in [0, 1] or uint8 (only the cropped part is converted). ``pad_value``: a
    float or an RGB triple in [0, 1]. Returns float32 ``[h, w, 3]`` in [0, 1] (bicubic overshoot
    is clipped).
    """
    out_hw = _check_size_hw(size_hw)
    pad = np.asarray(pad_value, dtype=np.float32)
    if pad.shape not in ((), (3,)) or not np.all((pad >= 0) & (pad <= 1)):
        raise InvalidInputError(f"pad_value must be a float or RGB triple in [0, 1], got {pad_value!r}")
    crop = _crop_padded(np.asarray(image), box, pad, "box", convert=unit_float)  # [box.h, box.w, 3]
    return np.clip(_resize_float(crop, out_hw, resample), 0.0, 1.0)


def _area_resize_axis(arr: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Exact area-average resize of one axis (float64), via interpolated cumulative sums.

    Output pixel ``o`` averages the input over ``[o, o + 1) * n_in / n_out``, fractional
    input pixels weighted by their overlap. PIL's BOX filter samples filter values at pixel
    centres instead, and can drop a pixel that sits exactly on a footprint edge.
    """
    arr = np.moveaxis(arr, axis, -1)
    n_in = arr.shape[-1]
    cums = np.zeros(arr.shape[:-1] + (n_in + 1,), dtype=np.float64)
    np.cumsum(arr, axis=-1, out=cums[..., 1:])
    edges = np.arange(n_out + 1) * (n_in / n_out)  # input coordinate of each output pixel edge
    idx = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    frac = edges - idx
    at_edges = cums[..., idx] + frac * (cums[..., idx + 1] - cums[..., idx])  # [..., n_out + 1]
    out = (at_edges[..., 1:] - at_edges[..., :-1]) * (n_out / n_in)  # [..., n_out]
    return np.moveaxis(out, -1, axis)


def crop_resize_mask(
    mask: np.ndarray, box: CropBox, size_hw: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """Crop bool ``[H, W]`` to ``box`` (False outside the image), resize to bool ``size_hw``.

    An output pixel is set when more than ``threshold`` of its area is covered by the mask.
    If that would erase a non-empty mask (a defect thinner than an output pixel), every
    output pixel it touches is kept instead, so a defect never disappears from the crop.
    """
    out_h, out_w = _check_size_hw(size_hw)
    crop = _crop_padded(np.asarray(mask, dtype=bool), box, False, "box")  # [box.h, box.w]
    coverage = _area_resize_axis(crop, out_w, axis=1)  # [box.h, w]
    coverage = _area_resize_axis(coverage, out_h, axis=0)  # [h, w]
    out = coverage > threshold
    if not out.any() and crop.any():
        out = coverage > 1e-9
    return out


# ---------------------------------------------------------------- dilation, feathering, paste-back


def _dilate_square(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation by a ``size × size`` square (separable max), outside counts as False."""
    r = size // 2
    height, width = mask.shape
    padded = np.pad(mask, ((0, 0), (r, r)))  # [H, W + 2r]
    rows = np.zeros_like(mask)
    for d in range(size):
        rows |= padded[:, d : d + width]
    padded = np.pad(rows, ((r, r), (0, 0)))  # [H + 2r, W]
    out = np.zeros_like(mask)
    for d in range(size):
        out |= padded[d : d + height]
    return out


def _window(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """Bounding box of ``mask`` grown by ``pad`` pixels, clipped to it; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (
        slice(max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 + pad, height)),
        slice(max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 + pad, width)),
    )


def dilate_mask(mask: np.ndarray, kernel: int = 7, iterations: int = 2) -> np.ndarray:
    """``cv2.dilate(mask, np.ones((kernel, kernel)), iterations=iterations)`` in numpy -> bool.

    ``iterations`` dilations by a ``k × k`` square equal one by ``(k - 1) * iterations + 1``.
    Only the mask's bounding box (plus the radius) is processed.
    """
    mask = to_mask_array(mask, "mask")
    if kernel < 1 or kernel % 2 == 0 or iterations < 0:
        raise InvalidInputError(
            f"dilate kernel must be an odd size >= 1 and iterations >= 0, got kernel={kernel}, "
            f"iterations={iterations}: use e.g. kernel=7, iterations=2"
        )
    size = (kernel - 1) * iterations + 1
    win = _window(mask, size // 2)
    out = mask.copy()
    if size > 1 and win is not None:
        out[win] = _dilate_square(mask[win], size)
    return out


def feather_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """float32 alpha: 1 on ``mask``, smoothstep down to 0 over ``feather`` pixels outside it.

    Distance is the chessboard distance to the mask; pixels farther than ``feather`` get
    exactly 0.
    """
    if feather < 0:
        raise InvalidInputError(f"feather must be >= 0 pixels, got {feather}")
    alpha = np.zeros(mask.shape, dtype=np.float32)
    win = _window(mask, feather)
    if win is None:
        return alpha
    reached = mask[win]
    sub = reached.astype(np.float32)
    for k in range(1, feather + 1):
        grown = _dilate_square(reached, 3)
        t = 1.0 - k / (feather + 1)
        sub[grown & ~reached] = t * t * (3.0 - 2.0 * t)
        reached = grown
    alpha[win] = sub
    return alpha


def paste_back(
    target_image, generated, box: CropBox, target_mask, feather: int = 8, resample=_RESAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the generated crop into the target image, only inside the feathered mask.

    Args:
        target_image: original target, uint8 ``[H, W, 3]`` (or anything :func:`to_rgb_array`
            accepts; float / 16-bit is quantised with ``round(x * 255)`` before blending).
        generated: float ``[h, w, 3]`` in [0, 1] (or uint8): the right half of the diptych.
        box: the target crop box (may extend outside the image).
        target_mask: bool ``[H, W]``, the (dilated) target mask: alpha is 1 there.
        feather: width in pixels of the soft edge outside the mask.

    Returns ``(result uint8 [H, W, 3], alpha float32 [H, W])``. Pixels with ``alpha == 0``
    (outside the mask + feather, and everything outside ``box``) are bit-identical to the
    (quantised) target image.
    """
    base = to_uint8_rgb(target_image, "target_image")
    gen = to_rgb_array(generated, "generated")
    mask = to_mask_array(target_mask, "target_mask")
    height, width = base.shape[:2]
    if mask.shape != (height, width):
        raise InvalidInputError(
            f"target_mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but target_image is {width}x{height}: "
            "pass the (dilated) mask of this target image (Diptych.paste_mask)"
        )
    if feather < 0:
        raise InvalidInputError(f"feather must be >= 0 pixels, got {feather}")
    inter = _intersection(box, height, width, "box")
    inside = np.zeros_like(mask)  # alpha is 0 outside the box: there is no generated content
    inside[inter.y0 : inter.y1, inter.x0 : inter.x1] = mask[inter.y0 : inter.y1, inter.x0 : inter.x1]
    if inside.sum() != mask.sum():
        logger.warning("paste_back: part of target_mask lies outside box %s and is not pasted", box)
    result = base.copy()
    alpha = np.zeros((height, width), dtype=np.float32)
    win = _window(inside, feather)
    if win is None:
        logger.warning("paste_back: target_mask has no pixel inside box %s; nothing pasted", box)
        return result, alpha
    ys = slice(max(win[0].start, inter.y0), min(win[0].stop, inter.y1))  # window ∩ box
    xs = slice(max(win[1].start, inter.x0), min(win[1].stop, inter.x1))
    alpha[ys, xs] = feather_alpha(inside[ys, xs], feather)

    # generated crop at box size; the window's part of it
    gen_box = _resize_float(gen, (box.height, box.width), resample)  # [box.h, box.w, 3]
    gen_win = gen_box[ys.start - box.y0 : ys.stop - box.y0, xs.start - box.x0 : xs.stop - box.x0]
    a = alpha[ys, xs]  # [h_win, w_win]
    out = result[ys, xs]  # view; alpha == 0 pixels are never written: untouched bits
    full = a == 1.0
    out[full] = quantise_uint8(np.clip(gen_win[full], 0.0, 1.0))  # [n_full, 3]
    ring = (a > 0) & ~full
    a_ring = a[ring][:, None]  # [n_ring, 1]
    blended = out[ring] * (1.0 - a_ring) + np.clip(gen_win[ring], 0.0, 1.0) * (255.0 * a_ring)
    out[ring] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result, alpha
