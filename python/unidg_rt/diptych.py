"""Reference-mode pre/post-processing: adaptive crops, the diptych, token groups, paste-back.

DESIGN §1 steps 1-3 and 5, in numpy + PIL only (no torch: the runtime must run without it).

Layout of the diptych (per-side size ``H × W``, both multiples of 16)::

    image         [H, 2W, 3]  = [reference crop | target crop]       float32 in [0, 1]
    inpaint_mask  [H, 2W]     = [0 ............ | target crop mask]  float32 in {0, 1}
    token_groups  [(H/16) * (2W/16)]  row-major over 16×16 pixel patches (FLUX's packing order:
                  8× VAE downsampling, then 2×2 latent patches)

Text mode (no reference) keeps the same shapes with an empty (0.5 gray) left half.

Cropping, dilation and paste-back live in :mod:`unidg_rt.crops`; they are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from unidg_rt.crops import (
    CropBox,
    adaptive_crop_box,
    crop_resize,
    crop_resize_mask,
    dilate_mask,
    feather_alpha,
    paste_back,
    quantise_uint8,
    to_mask_array,
    to_pixels,
    to_rgb_array,
)
from unidg_rt.errors import InvalidInputError
from unidg_rt.groups import TokenGroup

logger = logging.getLogger(__name__)

__all__ = [
    "MASKED_VALUE",
    "PATCH_SIZE",
    "CropBox",
    "Diptych",
    "adaptive_crop_box",
    "check_generation_size",
    "crop_resize",
    "crop_resize_mask",
    "diptych_token_groups",
    "dilate_mask",
    "feather_alpha",
    "pack_mask",
    "paste_back",
    "prepare_diptych",
    "to_mask_array",
    "to_rgb_array",
]

#: Pixels per image token side: VAE 8× downsampling × FLUX 2×2 latent patches.
PATCH_SIZE = 16
_VAE_SCALE = 8
#: Value of masked pixels in ``masked_image``; FluxFill computes ``image * (1 - mask)`` in
#: ``[-1, 1]``, i.e. 0 there, which is 0.5 in ``[0, 1]``.
MASKED_VALUE = 0.5


def check_generation_size(height: int, width: int) -> None:
    """Raise if ``height``/``width`` (the diptych side) is not a positive multiple of 16."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{name} must be an int (a multiple of {PATCH_SIZE}), got {value!r}")
        if value < PATCH_SIZE or value % PATCH_SIZE:
            low = max(PATCH_SIZE, int(value) // PATCH_SIZE * PATCH_SIZE)
            high = max(PATCH_SIZE, -(-int(value) // PATCH_SIZE) * PATCH_SIZE)
            fix = f"use {low}" if low == high else f"use {low} or {high}"
            raise InvalidInputError(
                f"{name}={value} is not a positive multiple of {PATCH_SIZE} (the per-side generation "
                f"size; input images of any size are cropped and resized to it): {fix}"
            )


def diptych_token_groups(reference_mask: np.ndarray, target_mask: np.ndarray) -> np.ndarray:
    """Group id per image token of the ``[H, 2W]`` diptych: int32 ``[(H/16) * (2W/16)]``.

    ``reference_mask`` and ``target_mask`` are the cropped ``[H, W]`` masks of the left and
    right halves. A left patch is ``REF_DEFECT`` if any of its 16×16 pixels is in the reference
    mask, else ``REF_CONTEXT``; a right patch is ``TARGET_REGION`` / ``TARGET_CONTEXT`` likewise.
    Text tokens are not included (prepend :func:`unidg_rt.groups.text_token_groups`).
    """
    ref = np.asarray(reference_mask) > 0
    tgt = np.asarray(target_mask) > 0
    if ref.ndim != 2 or ref.shape != tgt.shape:
        raise InvalidInputError(
            f"reference_mask {ref.shape} and target_mask {tgt.shape} must both be [H, W] of the same shape"
        )
    h, w = ref.shape
    if h % PATCH_SIZE or w % PATCH_SIZE:
        raise InvalidInputError(f"mask size {h}x{w} (HxW) must be a multiple of {PATCH_SIZE} on both sides")
    hp, wp = h // PATCH_SIZE, w // PATCH_SIZE
    ref_any = ref.reshape(hp, PATCH_SIZE, wp, PATCH_SIZE).any(axis=(1, 3))  # [H, W] -> [hp, wp]
    tgt_any = tgt.reshape(hp, PATCH_SIZE, wp, PATCH_SIZE).any(axis=(1, 3))  # [H, W] -> [hp, wp]
    left = np.where(ref_any, TokenGroup.REF_DEFECT, TokenGroup.REF_CONTEXT)
    right = np.where(tgt_any, TokenGroup.TARGET_REGION, TokenGroup.TARGET_CONTEXT)
    grid = np.concatenate([left, right], axis=1)  # [hp, 2 * wp]
    return grid.reshape(-1).astype(np.int32)  # row-major, = FLUX token order


def pack_mask(inpaint_mask: np.ndarray) -> np.ndarray:
    """FLUX-Fill mask packing: float ``[H, W2]`` -> float32 ``[(H/16) * (W2/16), 256]``.

    Exactly diffusers' ``FluxFillPipeline.prepare_mask_latents`` (steps 5-6) followed by
    ``_pack_latents``, for one image: each 8×8 pixel block becomes 64 channels of its latent
    pixel, then 2×2 latent pixels are packed into one token (channel = c * 4 + dy * 2 + dx).
    """
    mask = np.asarray(inpaint_mask, dtype=np.float32)
    if mask.ndim != 2 or mask.shape[0] % PATCH_SIZE or mask.shape[1] % PATCH_SIZE:
        raise InvalidInputError(
            f"inpaint_mask must be [H, W2] with both sides multiples of {PATCH_SIZE}, got {mask.shape}"
        )
    h8, w8 = mask.shape[0] // _VAE_SCALE, mask.shape[1] // _VAE_SCALE
    m = mask.reshape(h8, _VAE_SCALE, w8, _VAE_SCALE)  # [H, W2] -> [h8, 8, w8, 8]
    m = m.transpose(1, 3, 0, 2)  # [8, 8, h8, w8]
    m = m.reshape(_VAE_SCALE * _VAE_SCALE, h8, w8)  # [64, h8, w8]
    m = m.reshape(64, h8 // 2, 2, w8 // 2, 2)  # [64, h8/2, 2, w8/2, 2]
    m = m.transpose(1, 3, 0, 2, 4)  # [h8/2, w8/2, 64, 2, 2]
    return np.ascontiguousarray(m.reshape((h8 // 2) * (w8 // 2), 64 * 4))  # [N_img, 256]


@dataclass
class Diptych:
    """Everything the sampler needs, plus what paste-back needs.

    ``H, W`` below are the per-side generation size; ``H0, W0`` the original target size.
    """

    image: np.ndarray  # float32 [H, 2W, 3] in [0, 1]: [reference crop | target crop]
    inpaint_mask: np.ndarray  # float32 [H, 2W] in {0, 1}: 0 on the left half
    masked_image: np.ndarray  # float32 [H, 2W, 3]: image, MASKED_VALUE where inpaint_mask == 1
    reference_mask: np.ndarray  # bool [H, W]: cropped reference mask (all False in text mode)
    target_mask: np.ndarray  # bool [H, W]: cropped target mask (= inpaint_mask[:, W:] > 0)
    token_groups: np.ndarray  # int32 [(H/16) * (2W/16)], FLUX token order
    target_box: CropBox  # crop of the original target image (may extend outside it)
    reference_box: CropBox | None  # crop of the reference image; None in text mode
    target_image: np.ndarray  # uint8 [H0, W0, 3]: original target, for paste-back
    paste_mask: np.ndarray  # bool [H0, W0]: (dilated) target mask, alpha == 1 region

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Per-side width (the diptych is ``2 * width`` wide)."""
        return int(self.image.shape[1] // 2)

    @property
    def num_image_tokens(self) -> int:
        return int(self.token_groups.shape[0])

    @property
    def is_text_mode(self) -> bool:
        return self.reference_box is None

    def packed_mask(self) -> np.ndarray:
        """:func:`pack_mask` of :attr:`inpaint_mask`: float32 ``[N_img, 256]``."""
        return pack_mask(self.inpaint_mask)

    def without_reference(self) -> Diptych:
        """The same target in text-mode composition (gray left half, no reference groups): what
        :func:`prepare_diptych` returns without a reference, without cropping the target again
        (the unconditional branch of reference CFG)."""
        w = self.width
        gray = np.full((self.height, w, 3), MASKED_VALUE, dtype=np.float32)
        image = np.concatenate([gray, self.image[:, w:]], axis=1)  # [H, 2W, 3]
        masked = np.where(self.inpaint_mask[..., None] > 0, np.float32(MASKED_VALUE), image)
        no_ref = np.zeros_like(self.reference_mask)
        return dataclasses.replace(
            self,
            image=image.astype(np.float32),
            masked_image=masked.astype(np.float32),
            reference_mask=no_ref,
            token_groups=diptych_token_groups(no_ref, self.target_mask),
            reference_box=None,
        )

    def paste(self, generated: np.ndarray, feather: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Paste a generated diptych ``[H, 2W, 3]`` (or its right half ``[H, W, 3]``) back.

        Returns ``(result uint8 [H0, W0, 3], alpha float32 [H0, W0])``; see :func:`paste_back`.
        """
        gen = to_rgb_array(generated, "generated")
        if gen.shape[:2] == (self.height, 2 * self.width):
            gen = gen[:, self.width :]  # [H, 2W, 3] -> right half [H, W, 3]
        elif gen.shape[:2] != (self.height, self.width):
            raise InvalidInputError(
                f"generated has size {gen.shape[0]}x{gen.shape[1]} (HxW); expected the diptych "
                f"{self.height}x{2 * self.width} or its right half {self.height}x{self.width}"
            )
        return paste_back(self.target_image, gen, self.target_box, self.paste_mask, feather=feather)


def _check_same_size(image: np.ndarray, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    if image.shape[:2] != mask.shape:
        ih, iw = image.shape[:2]
        mh, mw = mask.shape
        raise InvalidInputError(
            f"{mask_name} is {mw}x{mh} (WxH) but {image_name} is {iw}x{ih}: pass the mask drawn on "
            f"this {image_name}, or resize it to {iw}x{ih} with nearest-neighbour interpolation"
        )


def _check_not_empty(mask: np.ndarray, name: str) -> None:
    if not mask.any():
        raise InvalidInputError(
            f"{name} is empty (no pixel > 0.5): paint the region of the defect white (1 / 255) "
            "on a black background"
        )


def prepare_diptych(
    image,
    mask_image,
    reference_image=None,
    reference_mask=None,
    *,
    height: int,
    width: int,
    dilate_target: bool = True,
    dilate_kernel: int = 7,
    dilate_iterations: int = 2,
    reference_on_white: bool = False,
    pad_value: float = 1.0,
    context: float = 0.15,
    max_margin: float = 1.5,
    min_side: int = 64,
) -> Diptych:
    """Crop target (and reference) adaptively and compose the ``[H, 2W]`` diptych.

    Args:
        image, mask_image: the normal target image and the region where the defect goes
            (anything :func:`to_rgb_array` / :func:`to_mask_array` accept; same size).
        reference_image, reference_mask: the abnormal reference and its defect mask (same
            size as each other, any size relative to the target); both or neither
            (neither = text mode, empty left half).
        height, width: per-side generation size, multiples of 16.
        dilate_target: dilate the target mask (``dilate_kernel`` square, ``dilate_iterations``
            times, as Insert-Anything does: 7×7 ×2) before cropping, inpainting and pasting.
        reference_on_white: set reference pixels outside the reference mask (dilated like the
            target when ``dilate_target``) to white, as Insert-Anything does. Off by default:
            UniDG's ``REF_CONTEXT`` tokens carry the reference context.
        pad_value: value of crop pixels outside the source image (1.0 = white).
        context, max_margin, min_side: the adaptive crop rule, see :func:`adaptive_crop_box`.
    """
    check_generation_size(height, width)
    target = to_pixels(image, "image")  # uint8 (8-bit sources) or float32 [H0, W0, 3]
    target_mask = to_mask_array(mask_image, "mask_image")
    _check_same_size(target, target_mask, "image", "mask_image")
    _check_not_empty(target_mask, "mask_image")
    if reference_image is not None and reference_mask is None:
        raise InvalidInputError(
            "reference_image was given without reference_mask: pass the defect mask of the "
            "reference image (defect white), or drop reference_image for text mode"
        )
    if reference_mask is not None and reference_image is None:
        raise InvalidInputError(
            "reference_mask was given without reference_image: pass the reference (abnormal) "
            "image it belongs to, or drop reference_mask for text mode"
        )
    if reference_image is not None:
        ref = to_pixels(reference_image, "reference_image")
        ref_mask = to_mask_array(reference_mask, "reference_mask")
        _check_same_size(ref, ref_mask, "reference_image", "reference_mask")
        _check_not_empty(ref_mask, "reference_mask")
    aspect = width / height
    crop_args = {"context": context, "max_margin": max_margin, "min_side": min_side}

    # 1. target: dilate, crop around the (dilated) mask, resize to the side size
    paste_mask = target_mask
    if dilate_target:
        paste_mask = dilate_mask(target_mask, dilate_kernel, dilate_iterations)
    target_box = adaptive_crop_box(paste_mask, aspect, **crop_args)
    target_crop = crop_resize(target, target_box, (height, width), pad_value)  # [H, W, 3]
    target_crop_mask = crop_resize_mask(paste_mask, target_box, (height, width))  # [H, W]

    # 2. reference: crop around its mask, optionally cut out on white (text mode: gray, empty)
    reference_box = None
    if reference_image is None:
        ref_crop = np.full((height, width, 3), MASKED_VALUE, dtype=np.float32)
        ref_crop_mask = np.zeros((height, width), dtype=bool)
    else:
        if reference_on_white:
            keep = dilate_mask(ref_mask, dilate_kernel, dilate_iterations) if dilate_target else ref_mask
            white = np.array(255 if ref.dtype == np.uint8 else 1.0, dtype=ref.dtype)
            ref = np.where(keep[..., None], ref, white)  # [H0r, W0r, 3]
        reference_box = adaptive_crop_box(ref_mask, aspect, **crop_args)
        ref_crop = crop_resize(ref, reference_box, (height, width), pad_value)  # [H, W, 3]
        ref_crop_mask = crop_resize_mask(ref_mask, reference_box, (height, width))  # [H, W]

    # 3. compose
    diptych = np.concatenate([ref_crop, target_crop], axis=1)  # [H, 2W, 3]
    inpaint = np.concatenate([np.zeros_like(target_crop_mask), target_crop_mask], axis=1)  # [H, 2W]
    inpaint = inpaint.astype(np.float32)
    masked = np.where(inpaint[..., None] > 0, np.float32(MASKED_VALUE), diptych).astype(np.float32)
    groups = diptych_token_groups(ref_crop_mask, target_crop_mask)
    logger.debug(
        "diptych %dx%d: target_box=%s reference_box=%s tokens=%d",
        height,
        2 * width,
        target_box,
        reference_box,
        groups.size,
    )
    return Diptych(
        image=diptych.astype(np.float32),
        inpaint_mask=inpaint,
        masked_image=masked,
        reference_mask=ref_crop_mask,
        target_mask=target_crop_mask,
        token_groups=groups,
        target_box=target_box,
        reference_box=reference_box,
        target_image=target.copy() if target.dtype == np.uint8 else quantise_uint8(target),
        paste_mask=paste_mask,
    )
