"""Input normalisation: images and masks in the forms the API accepts (PIL in any mode, numpy
``[H, W]`` / ``[H, W, 1|3]`` uint8, uint16 or float in [0, 1]) -> validated numpy pixels, with
errors that name the argument and the fix. numpy + PIL only; used by :mod:`unidg_rt.crops` and
:mod:`unidg_rt.diptych` (DESIGN §1 step 1).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from unidg_rt.errors import InvalidInputError


def _type_error(value, name: str, what: str) -> InvalidInputError:
    hint = ""
    if type(value).__module__.startswith("torch"):
        hint = "; convert a tensor with t.permute(1, 2, 0).cpu().numpy() (CHW -> HWC)"
    return InvalidInputError(f"{name} must be {what}, got {type(value).__name__}{hint}")


def _check_not_empty_array(arr: np.ndarray, name: str) -> None:
    if arr.size == 0 or 0 in arr.shape[:2]:
        raise InvalidInputError(
            f"{name} is empty (shape {arr.shape}): pass an image with at least 1x1 pixels"
        )


def _check_float_range(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or inf: pass finite values in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise InvalidInputError(
            f"{name} is float with values in [{lo:.4g}, {hi:.4g}]; expected [0, 1]: "
            "divide 0-255 data by 255 (or pass uint8), map [-1, 1] data with (x + 1) / 2"
        )


def _scale_to_unit(arr: np.ndarray, name: str) -> np.ndarray:
    """uint8 / uint16 / float array -> float32 in [0, 1] (float input is range-checked)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(arr.dtype, np.floating):
        _check_float_range(arr, name)
        return arr.astype(np.float32)
    raise InvalidInputError(
        f"{name} has dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]: "
        f"convert it, e.g. {name}.astype(np.uint8)"
    )


def to_pixels(image, name: str = "image") -> np.ndarray:
    """Validated ``[H, W, 3]`` pixels: uint8 for 8-bit sources (no copy), else float32 in [0, 1].

    Accepts what :func:`to_rgb_array` accepts. Keeping 8-bit data as uint8 lets crops convert
    only the cropped region and paste-back return untouched pixels bit-identical.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "F"):
            arr = np.asarray(image)
            arr = arr.astype(np.uint16) if image.mode != "F" else arr
        else:
            arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise _type_error(image, name, "a PIL.Image.Image or a numpy array [H, W, 3]")
    if arr.ndim == 2:
        arr = arr[..., None]  # [H, W] -> [H, W, 1]
    if arr.ndim != 3:
        raise InvalidInputError(f"{name} must be [H, W, 3] (HWC), got shape {arr.shape}: drop the batch axis")
    if arr.shape[2] not in (1, 3):
        fix = "transpose CHW to HWC with .transpose(1, 2, 0)" if arr.shape[0] in (1, 3) else "pass RGB"
        if arr.shape[2] == 4:
            fix = f"drop the alpha channel with {name}[..., :3]"
        raise InvalidInputError(f"{name} must have 1 or 3 channels last (HWC), got shape {arr.shape}: {fix}")
    _check_not_empty_array(arr, name)
    if arr.dtype != np.uint8:
        arr = _scale_to_unit(arr, name)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)  # [H, W, 1] -> [H, W, 3]
    return arr


def unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 or float pixels -> float32 in [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels.astype(np.float32, copy=False)


def to_rgb_array(image, name: str = "image") -> np.ndarray:
    """PIL image (any mode) or numpy ``[H, W]`` / ``[H, W, 1|3]`` -> float32 ``[H, W, 3]`` in [0, 1].

    numpy: uint8 (/255), uint16 (/65535) or float already in [0, 1]. PIL: 16-bit and float
    modes are scaled like numpy; every other mode goes through ``convert("RGB")`` (alpha is
    dropped, as diffusers does). ``name`` is the caller's argument name for error messages.
    """
    return np.ascontiguousarray(unit_float(to_pixels(image, name)))


def to_uint8_rgb(image, name: str = "image") -> np.ndarray:
    """Like :func:`to_rgb_array` but uint8 ``[H, W, 3]``; exact (and no copy) for 8-bit inputs.

    Float and 16-bit inputs are quantised with ``round(x * 255)``.
    """
    pixels = to_pixels(image, name)
    return pixels if pixels.dtype == np.uint8 else quantise_uint8(pixels)


def quantise_uint8(image: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 with ``round(x * 255)`` (inverse of ``/ 255`` for 8-bit data)."""
    return np.clip(np.rint(image * np.float32(255.0)), 0, 255).astype(np.uint8)


def to_mask_array(mask, name: str = "mask_image") -> np.ndarray:
    """PIL image or numpy ``[H, W]`` / ``[H, W, 1]`` -> bool ``[H, W]``, threshold half range.

    uint8 > 127, uint16 > 32767, float > 0.5 (float must be in [0, 1]), bool as is. PIL
    colour modes are converted to grayscale ("L") first.
    """
    if isinstance(mask, Image.Image):
        if mask.mode == "1":
            arr = np.asarray(mask, dtype=bool)
        elif mask.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            arr = np.asarray(mask).astype(np.uint16)
        elif mask.mode == "F":
            arr = np.asarray(mask)
        else:
            arr = np.asarray(mask.convert("L"))
    elif isinstance(mask, np.ndarray):
        arr = mask
    else:
        raise _type_error(mask, name, "a PIL.Image.Image or a numpy array [H, W]")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]  # [H, W, 1] -> [H, W]
    if arr.ndim != 2:
        fix = f"pass a single channel, e.g. {name}[..., 0] or a PIL 'L' image"
        if arr.ndim == 3 and arr.shape[0] == 1:
            fix = f"drop the leading axis with {name}[0]"
        raise InvalidInputError(f"{name} must be [H, W] or [H, W, 1], got shape {arr.shape}: {fix}")
    _check_not_empty_array(arr, name)
    if arr.dtype == bool:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(_scale_to_unit(arr, name) > 0.5)
