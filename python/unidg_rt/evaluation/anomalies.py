"""Baseline synthetic anomalies for the downstream test (:mod:`unidg_rt.evaluation.downstream`):
DRAEM-style Perlin-noise anomalies with foreign textures and CutPaste, plus the mask transplant
that places a bank reference's footprint on a new image. numpy + PIL only, no downloads.

Every function takes a ``np.random.Generator`` and returns ``(image uint8 [H, W, 3], mask bool
[H, W])`` with a non-empty mask; pixels outside the mask are the input's, bit for bit.

* DRAEM (Zavrtanik et al., ICCV 2021): a Perlin-noise field at a random lattice scale
  ``2**k`` per axis, thresholded at 0.5, is the mask; inside it the image is blended with a
  foreign texture, ``(1 - beta) * texture + beta * image`` with ``beta ~ U(0, 0.8)``. DRAEM
  takes its textures from DTD; here they are the procedural surfaces of *other* surface kinds
  (colour-jittered) or random Perlin colour textures.
* CutPaste (Li et al., CVPR 2021): a rectangle of the same image (area 2–15 %, aspect
  0.3–3.3) with a small colour jitter is pasted elsewhere; the "scar" variant is a thin long
  rotated strip. Both are drawn with equal probability.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from unidg_rt.errors import InvalidInputError

_MAX_TRIES = 20


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            "image must be a uint8 array [H, W, 3]; convert it with np.asarray(..., np.uint8)"
        )
    return image


def perlin_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise, float32 ``shape``, roughly in [-1, 1], with ``res`` lattice
    cells along (y, x). Any shape works (no divisibility needed): value 0 on lattice points."""
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if min(h, w, ry, rx) < 1:
        raise InvalidInputError(f"perlin_2d: shape={shape!r} and res={res!r} need positive sides")
    angles = rng.uniform(0.0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [ry+1, rx+1, 2] as (gy, gx)
    y = (np.arange(h) + 0.5) * ry / h
    x = (np.arange(w) + 0.5) * rx / w
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]  # [h, 1], [1, w]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[(iy + dy)[:, None], (ix + dx)[None, :]]  # [h, w, 2]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    ty, tx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return (np.sqrt(2.0) * (top * (1 - ty) + bottom * ty)).astype(np.float32)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, max_scale: int = 6) -> np.ndarray:
    """DRAEM's anomaly mask: Perlin noise at lattice ``2**ky × 2**kx`` (``k ~ U{0..max_scale-1}``)
    thresholded at 0.5; redrawn until non-empty."""
    for _ in range(_MAX_TRIES):
        ky, kx = (int(k) for k in rng.integers(0, max_scale, size=2))
        mask = perlin_2d(shape, (2**ky, 2**kx), rng) > 0.5
        if mask.any():
            return mask
    raise InvalidInputError(f"perlin_mask: no non-empty mask in {_MAX_TRIES} draws for shape={shape!r}")


def noise_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random colour texture: Perlin octaves mapped between two random colours + grain."""
    h, w = shape
    field = np.zeros((h, w), np.float32)
    base = int(rng.integers(2, 9))
    for octave in range(3):
        field += perlin_2d((h, w), (base * 2**octave, base * 2**octave), rng) / 2**octave
    t = np.clip(0.5 + 0.6 * field, 0, 1)[..., None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 * (1 - t) + c1 * t + rng.normal(0.0, rng.uniform(0, 12), (h, w, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def foreign_texture(
    shape: tuple[int, int], rng: np.random.Generator, exclude: str | None = None
) -> np.ndarray:
    """A texture foreign to the image: a procedural surface of another kind than ``exclude``
    (channel-permuted, brightness-jittered), or :func:`noise_texture`, with equal probability."""
    from unidg_rt.data import SURFACE_KINDS, make_surface

    if rng.random() < 0.5:
        return noise_texture(shape, rng)
    kinds = [k for k in SURFACE_KINDS if k != exclude]
    tex = make_surface(kinds[int(rng.integers(len(kinds)))], shape, rng)[..., rng.permutation(3)]
    gain = rng.uniform(0.6, 1.4)
    return np.clip(np.rint(tex.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def draem_anomaly(
    image: np.ndarray, rng: np.random.Generator, surface: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style anomaly on ``image``; ``surface``: its kind, excluded from the textures."""
    img = _check_image(image)
    mask = perlin_mask(img.shape[:2], rng)
    texture = foreign_texture(img.shape[:2], rng, exclude=surface).astype(np.float32)
    beta = rng.uniform(0.0, 0.8)
    blend = (1 - beta) * texture + beta * img.astype(np.float32)
    out = img.copy()
    out[mask] = np.clip(np.rint(blend[mask]), 0, 255).astype(np.uint8)
    return out, mask


def _colour_jitter(patch: np.ndarray, rng: np.random.Generator, amount: float = 0.1) -> np.ndarray:
    p = patch.astype(np.float32)
    mean = p.mean()
    p = (p - mean) * rng.uniform(1 - amount, 1 + amount) + mean * rng.uniform(1 - amount, 1 + amount)
    return np.clip(np.rint(p), 0, 255).astype(np.uint8)


def _paste(
    image: np.ndarray, patch: np.ndarray, footprint: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    ph, pw = footprint.shape
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    mask = np.zeros((h, w), bool)
    mask[y : y + ph, x : x + pw] = footprint
    out = image.copy()
    out[mask] = patch[footprint]
    return out, mask


def cutpaste_anomaly(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste (normal or scar, 50/50) on ``image``: a patch of the image pasted elsewhere."""
    img = _check_image(image)
    h, w = img.shape[:2]
    if rng.random() < 0.5:  # CutPaste-normal: a rectangle
        area = rng.uniform(0.02, 0.15) * h * w
        aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3))))
        ph = int(np.clip(round(np.sqrt(area * aspect)), 2, h - 1))
        pw = int(np.clip(round(np.sqrt(area / aspect)), 2, w - 1))
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = _colour_jitter(img[y : y + ph, x : x + pw], rng)
        footprint = np.ones((ph, pw), bool)
    else:  # CutPaste-scar: a thin strip (2–16 × 10–25 px at 256 px), rotated ±45°
        s = min(h, w) / 256
        pw = int(max(1, round(rng.uniform(2, 16) * s)))
        ph = int(max(3, round(rng.uniform(10, 25) * s)))
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        strip = _colour_jitter(img[y : y + ph, x : x + pw], rng)
        angle = float(rng.uniform(-45, 45))
        patch = np.asarray(Image.fromarray(strip).rotate(angle, Image.BILINEAR, expand=True))
        footprint = (
            np.asarray(
                Image.fromarray(np.full((ph, pw), 255, np.uint8)).rotate(angle, Image.NEAREST, expand=True)
            )
            > 127
        )
        if not footprint.any() or footprint.shape[0] > h or footprint.shape[1] > w:
            footprint, patch = np.ones((ph, pw), bool), strip
    return _paste(img, patch, footprint, rng)


def transplant_mask(
    reference_mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """The reference's defect footprint (its bounding box) rotated by a multiple of 90°,
    maybe mirrored, and placed at a random position fully inside an image of ``shape``."""
    ref = np.asarray(reference_mask, bool)
    if not ref.any():
        raise InvalidInputError("reference_mask is empty; pass the mask of a reference defect")
    ys, xs = np.nonzero(ref)
    box = ref[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    box = np.rot90(box, int(rng.integers(4)))
    if rng.random() < 0.5:
        box = box[:, ::-1]
    h, w = shape
    box = box[:h, :w]  # a footprint larger than the target is clipped
    y, x = int(rng.integers(0, h - box.shape[0] + 1)), int(rng.integers(0, w - box.shape[1] + 1))
    mask = np.zeros((h, w), bool)
    mask[y : y + box.shape[0], x : x + box.shape[1]] = box
    return mask
