"""Reading a job's inputs: images and masks from untrusted files, or masks drawn by a strategy.

Every failure is an :class:`~unidg_rt.errors.InvalidInputError` naming the job field and the
fix, so the runner can record it and go on. Decoders of corrupt files raise a zoo of types
(``OSError``, ``SyntaxError``, ``struct.error``, ``ValueError``, ``DecompressionBombError`` …
depending on the Pillow plugin), hence the broad ``except`` in :func:`read_image_bytes`.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unidg_rt.errors import InvalidInputError
from unidg_rt.jobs.io import sha256_bytes
from unidg_rt.jobs.manifest import Job, MaskStrategy

logger = logging.getLogger(__name__)

#: refuse larger images before decoding them (a 1 kB PNG can claim 2^31 pixels)
MAX_PIXELS = 64_000_000
_MASK_SALT = 0x6D61736B  # "mask": keeps mask randomness independent of the noise seed


@dataclass
class JobInputs:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    reference_image: np.ndarray | None
    reference_mask: np.ndarray | None
    checksums: dict[str, str]  # field -> sha256 of the file bytes (files only)


def read_image_bytes(data: bytes, field: str, path: Path | str, *, as_mask: bool = False) -> np.ndarray:
    """Decode image bytes → uint8 ``[H, W, 3]`` (or bool ``[H, W]`` for masks, threshold 127)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InvalidInputError(
                    f"{field} {path} is {w}x{h} pixels, over the {MAX_PIXELS} pixel limit: downscale it"
                )
            im.load()
            if as_mask:
                if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                    arr = np.asarray(im).astype(np.float64)
                    top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                    return np.ascontiguousarray(arr > top / 2)
                return np.ascontiguousarray(np.asarray(im.convert("L")) > 127)
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except InvalidInputError:
        raise
    except MemoryError as exc:
        raise InvalidInputError(f"{field} {path} is too large to decode: downscale it") from exc
    except Exception as exc:  # noqa: BLE001 — see module docstring: decoders raise many types
        detail = (
            "unknown format" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        )
        raise InvalidInputError(
            f"{field} {path} is not a readable image ({detail}); pass a PNG, JPEG, BMP or TIFF file"
        ) from exc


def read_file(path: Path, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise InvalidInputError(f"{field} {path} does not exist: fix the path in the manifest") from exc
    except OSError as exc:
        raise InvalidInputError(f"{field} {path} cannot be read ({exc}): check permissions") from exc


def _check_mask(mask: np.ndarray, image: np.ndarray, field: str, image_field: str) -> None:
    if mask.shape != image.shape[:2]:
        raise InvalidInputError(
            f"{field} is {mask.shape[1]}x{mask.shape[0]} (WxH) but {image_field} is "
            f"{image.shape[1]}x{image.shape[0]}: pass the mask drawn on this image"
        )
    if not mask.any():
        raise InvalidInputError(f"{field} is empty (no pixel > 127): paint the defect region white")


def draw_mask(strategy: MaskStrategy, height: int, width: int, seed: int) -> np.ndarray:
    """bool ``[height, width]`` mask from a strategy; deterministic in ``seed``."""
    rng = np.random.default_rng([seed, _MASK_SALT])
    short = min(height, width)
    if strategy.strategy == "box":
        x0, y0, x1, y1 = strategy.box
        if x1 > width or y1 > height:
            raise InvalidInputError(
                f"mask_strategy.box {list(strategy.box)} lies outside the {width}x{height} image: "
                f"keep x1 <= {width} and y1 <= {height}"
            )
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = True
        return mask
    lo, hi = strategy.scale
    if strategy.strategy == "center_box":
        side = max(1, round((lo + hi) / 2 * short))
        y0, x0 = (height - side) // 2, (width - side) // 2
        mask = np.zeros((height, width), bool)
        mask[y0 : y0 + side, x0 : x0 + side] = True
        return mask
    extent = float(rng.uniform(lo, hi)) * short  # defect diameter in pixels
    radius = max(extent / 2, 0.5)
    cy = float(rng.uniform(radius, max(radius, height - radius)))
    cx = float(rng.uniform(radius, max(radius, width - radius)))
    # evaluate only a window around the defect: full-image float grids of a 4k image would
    # cost ~100 MB each (the blob reaches at most 0.8 + 1/4 + 1/6 + 1/10 < 1.35 radii out)
    reach = 1.35 * radius * (math.sqrt(2.0) if strategy.strategy == "random_box" else 1.0) + 1
    y0, y1 = max(0, int(cy - reach)), min(height, int(math.ceil(cy + reach)))
    x0, x1 = max(0, int(cx - reach)), min(width, int(math.ceil(cx + reach)))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5  # pixel centres of the window
    if strategy.strategy == "random_box":
        aspect = float(rng.uniform(0.5, 2.0))
        ry, rx = radius / math.sqrt(aspect), radius * math.sqrt(aspect)
        window = (np.abs(yy - cy) <= max(ry, 0.5)) & (np.abs(xx - cx) <= max(rx, 0.5))
    else:  # random_blob: a star-shaped blob, radius r(θ) = R (0.8 + Σ a_k cos(kθ + φ_k))
        theta = np.arctan2(yy - cy, xx - cx)
        wobble = np.zeros_like(theta)
        for k in (2, 3, 5):
            wobble += rng.uniform(0.0, 0.5 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        window = np.hypot(yy - cy, xx - cx) <= radius * (0.8 + wobble)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = window
    if not mask.any():  # sub-pixel defects on tiny images: keep at least the centre pixel
        mask[min(int(cy), height - 1), min(int(cx), width - 1)] = True
    return mask


def load_job_inputs(job: Job) -> JobInputs:
    """Read and validate everything a job needs; raises InvalidInputError with the field name."""
    checksums: dict[str, str] = {}

    def load(field: str, as_mask: bool = False):
        path = getattr(job, field)
        data = read_file(path, field)
        checksums[field] = sha256_bytes(data)
        return read_image_bytes(data, field, path, as_mask=as_mask)

    image = load("image")
    if job.mask is not None:
        mask = load("mask", as_mask=True)
    else:
        mask = draw_mask(job.mask_strategy, image.shape[0], image.shape[1], job.seed)
    _check_mask(mask, image, "mask" if job.mask is not None else "mask_strategy", "image")
    ref = ref_mask = None
    if job.reference_image is not None:
        ref = load("reference_image")
        ref_mask = load("reference_mask", as_mask=True)
        _check_mask(ref_mask, ref, "reference_mask", "reference_image")
    return JobInputs(image, mask, ref, ref_mask, checksums)
