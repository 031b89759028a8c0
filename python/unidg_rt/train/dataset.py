"""Training diptychs from procedural reference pairs, built with the runtime's own helpers.

Every sample is composed by :func:`unidg_rt.diptych.prepare_diptych` exactly as the pipeline
composes its input (same adaptive crops, dilation, token groups, FLUX-Fill mask packing), then
the ground truth is the same diptych with the *abnormal* target in place of the normal one
(same mask → same crop box). One :func:`unidg_rt.data.make_reference_pair` (items A, B of one
category) gives four samples:

- reference mode A→B: ``[crop of A's defect | B]``, inpaint B's mask, ground truth B abnormal;
- reference mode B→A (roles swapped);
- text mode on B and on A: ``[gray | target]`` with the category as conditioning.

Images are stored as uint8 (the 0.5-gray blanks are restored exactly from the masks); latents
(VAE posterior mean, FLUX-normalised) are precomputed once by :func:`encode_diptych_set`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unidg_rt.artifacts.io import atomic_path
from unidg_rt.diptych import MASKED_VALUE, pack_mask, prepare_diptych
from unidg_rt.embeddings import normalize_category
from unidg_rt.train.common import stage_seed
from unidg_rt.train.recipe import DataRecipe

logger = logging.getLogger(__name__)
DEFECT_THRESHOLD = 12  #: |ground truth - normal| above this (8-bit levels) marks a defect pixel


def training_categories() -> list[str]:
    """Procedural categories (the learned embedding table's rows), in vocabulary order."""
    from unidg_rt.data import implemented_categories

    return list(implemented_categories())


@dataclass
class DiptychSet:
    """N diptychs ``[H, 2W]`` (H = W = gen_size) as arrays."""

    image_gt: np.ndarray  # uint8 [N, H, 2W, 3]: [reference crop (or gray) | abnormal target crop]
    image_masked: np.ndarray  # uint8 [N, H, 2W, 3]: the pipeline's masked image (normal target)
    inpaint: np.ndarray  # bool [N, H, 2W]: the inpaint mask (0 on the left half)
    groups: np.ndarray  # int8 [N, N_img]: token groups of the image tokens
    category: np.ndarray  # int64 [N]: row of the category table
    text_mode: np.ndarray  # bool [N]
    categories: list[str]  # normalised names of the table rows
    reference_mask: np.ndarray | None = None  # bool [N, H, W]: reference mask in the left half

    def __len__(self) -> int:
        return int(self.image_gt.shape[0])

    @property
    def size(self) -> int:
        return int(self.image_gt.shape[1])

    def float_images(self, idx, which: str) -> torch.Tensor:
        """``[B, 3, H, 2W]`` float32 in [-1, 1] (``which`` = ``"gt"`` or ``"masked"``) with the
        exact 0.5 gray of the runtime where it blanks pixels."""
        idx = np.asarray(idx)
        src = self.image_gt if which == "gt" else self.image_masked
        x = src[idx].astype(np.float32) / 255.0  # [B, H, 2W, 3]
        w = self.size
        x[self.text_mode[idx], :, :w] = MASKED_VALUE  # text mode: empty (gray) left half
        if which == "masked":
            x[self.inpaint[idx]] = MASKED_VALUE
        return torch.from_numpy(x).permute(0, 3, 1, 2).mul(2).sub(1).contiguous()  # [B, 3, H, 2W]

    def defect_pixels(self, i: int, threshold: int = DEFECT_THRESHOLD) -> np.ndarray:
        """bool ``[H, 2W]``: where diptych ``i``'s ground truth differs from the normal input by
        more than ``threshold``/255 — the defect's own footprint (never on the left half)."""
        diff = np.abs(self.image_gt[i].astype(np.int16) - self.image_masked[i].astype(np.int16))
        return diff.max(-1) > threshold

    def defect_fraction(self, threshold: int = DEFECT_THRESHOLD) -> np.ndarray:
        """Per image token, the fraction of its 16×16 :meth:`defect_pixels` (float32 ``[N, N_img]``)."""
        out = []
        for i in range(len(self)):
            diff = self.defect_pixels(i, threshold)  # [H, 2W]
            h, w2 = diff.shape
            patches = diff.reshape(h // 16, 16, w2 // 16, 16)  # [H, 2W] -> [h16, 16, w16, 16]
            out.append(patches.mean(axis=(1, 3)).reshape(-1))
        return np.stack(out).astype(np.float32)

    def packed_masks(self) -> np.ndarray:
        """FLUX-Fill packed masks, bool ``[N, N_img, 256]`` (:func:`pack_mask`, exact 0/1)."""
        return np.stack([pack_mask(m.astype(np.float32)) > 0.5 for m in self.inpaint])


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _pair_samples(pair, category_row: int, size: int, crop: dict | None = None) -> list[tuple]:
    """The four diptychs of one reference pair (see module doc); ``crop``: the adaptive crop
    rule's keyword arguments (``context``, ``min_side``, ``max_margin``)."""
    out = []
    for ref, tgt in ((pair.reference, pair.target), (pair.target, pair.reference)):
        for text in (False, True):
            kwargs = dict(crop or {})
            if not text:
                kwargs.update(reference_image=ref.abnormal, reference_mask=ref.mask)
            dip = prepare_diptych(tgt.normal, tgt.mask, height=size, width=size, **kwargs)
            gt = prepare_diptych(tgt.abnormal, tgt.mask, height=size, width=size, **kwargs)
            out.append(
                (
                    _quantise(gt.image),
                    _quantise(dip.image),
                    dip.inpaint_mask > 0.5,
                    dip.token_groups.astype(np.int8),
                    category_row,
                    text,
                    dip.reference_mask.astype(bool),
                )
            )
    return out


def pair_rows(
    recipe: DataRecipe, seed: int, i: int, cats: list[str], copy_fraction: float | None = None
) -> list[tuple]:
    """The four diptych rows of pair ``i`` (category ``i mod C``, seeds from :func:`stage_seed`);
    with ``copy_fraction`` (default: the recipe's) of the pairs a copy pair
    (:func:`unidg_rt.data.copies.make_copy_pair`), decided by a stream of its own so the
    independent pairs are the same with or without copies."""
    from unidg_rt.data import SURFACE_KINDS, make_reference_pair
    from unidg_rt.data.copies import copy_categories, make_copy_pair

    frac = recipe.copy_fraction if copy_fraction is None else copy_fraction
    cat = cats[i % len(cats)]
    rng = np.random.default_rng(stage_seed(seed, "data", i))
    ref_surface = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
    tgt_surface = ref_surface
    if rng.random() < recipe.cross_surface:
        tgt_surface = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
    pair_seed = int(rng.integers(0, 2**62))
    if frac > 0 and cat in copy_categories():
        copy_rng = np.random.default_rng([stage_seed(seed, "data", i), 1])
        if copy_rng.random() < frac:
            pair, _ = make_copy_pair(
                pair_seed, cat, ref_surface, tgt_surface, recipe.source_size, tuple(recipe.copy_scale_range)
            )
            return _pair_samples(pair, i % len(cats), recipe.gen_size, recipe.crop)
    pair = make_reference_pair(pair_seed, cat, ref_surface, tgt_surface, recipe.source_size)
    return _pair_samples(pair, i % len(cats), recipe.gen_size, recipe.crop)


def rows_to_set(rows: list[tuple], cats: list[str]) -> DiptychSet:
    gt, masked, inpaint, groups, cat, text, ref_mask = zip(*rows, strict=True)
    return DiptychSet(
        image_gt=np.stack(gt),
        image_masked=np.stack(masked),
        inpaint=np.stack(inpaint),
        groups=np.stack(groups),
        category=np.asarray(cat, np.int64),
        text_mode=np.asarray(text, bool),
        categories=[normalize_category(c) for c in cats],
        reference_mask=np.stack(ref_mask),
    )


def build_diptych_set(
    recipe: DataRecipe,
    seed: int,
    num_pairs: int | None = None,
    *,
    start: int = 0,
    copy_fraction: float | None = None,
) -> DiptychSet:
    """Deterministic in ``(recipe, seed)``: pairs ``start … start + n - 1`` (:func:`pair_rows`), so
    the set does not depend on thread count or build order; ``copy_fraction`` overrides the
    recipe's (held-out sets use 0)."""
    cats = training_categories()
    n = recipe.num_pairs if num_pairs is None else num_pairs
    rows = []
    for i in range(start, start + n):
        rows.extend(pair_rows(recipe, seed, i, cats, copy_fraction))
    logger.info("built %d diptychs (%d pairs, %dx%d)", len(rows), n, recipe.gen_size, 2 * recipe.gen_size)
    return rows_to_set(rows, cats)


@dataclass
class LatentSet:
    """Precomputed model inputs: FLUX-normalised VAE latents + packed masks + groups."""

    x0: torch.Tensor  # float32 [N, C, h, w]: ground-truth diptych latents
    cond: torch.Tensor  # float32 [N, C, h, w]: masked-image latents (the Fill conditioning)
    mask: torch.Tensor  # bool [N, N_img, 256]: packed inpaint mask
    groups: torch.Tensor  # int64 [N, N_img]
    category: torch.Tensor  # int64 [N]
    text_mode: torch.Tensor  # bool [N]
    categories: list[str]
    defect: torch.Tensor | None = None  # float32 [N, N_img]: defect pixel fraction per token
    reference: torch.Tensor | None = None  # uint8 [N, S, S, 3]: left half (the reference crop) pixels
    reference_mask: torch.Tensor | None = None  # bool [N, S, S]: the reference mask in that crop

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.__dict__, tmp)

    @classmethod
    def load(cls, path: Path) -> LatentSet:
        return cls(**torch.load(path, map_location="cpu", weights_only=False))

    def indices(self, text: bool) -> np.ndarray:
        return np.flatnonzero(self.text_mode.numpy() == text)

    def reference_input(self, idx, cutout: bool = False) -> torch.Tensor:
        """The reference crops of samples ``idx`` as the reference encoder's input ``[B, 3, S, S]``
        in [-1, 1] (text-mode rows hold their gray left half); ``cutout``: gray outside the
        reference mask (:func:`unidg_rt.models.refenc.cut_out`)."""
        from unidg_rt.models.refenc import cut_out, pixels_to_input

        idx = torch.as_tensor(idx)
        x = pixels_to_input(self.reference[idx].numpy(), self.reference.shape[1])  # [B, 3, S, S]
        if not cutout:
            return x
        if self.reference_mask is None:
            raise ValueError("cutout needs LatentSet.reference_mask (rebuild the latents)")
        return cut_out(x, self.reference_mask[idx])


@torch.no_grad()
def encode_diptych_set(vae, dset: DiptychSet, batch: int = 32) -> LatentSet:
    """Encode like the runtime's ``vae_encoder`` runner: ``normalize_latents(encode(x))``."""
    vae = vae.eval()
    x0, cond = [], []
    for s in range(0, len(dset), batch):
        idx = np.arange(s, min(s + batch, len(dset)))
        x0.append(vae.normalize_latents(vae.encode(dset.float_images(idx, "gt"))))
        cond.append(vae.normalize_latents(vae.encode(dset.float_images(idx, "masked"))))
    return LatentSet(
        x0=torch.cat(x0),
        cond=torch.cat(cond),
        mask=torch.from_numpy(dset.packed_masks()),
        groups=torch.from_numpy(dset.groups.astype(np.int64)),
        category=torch.from_numpy(dset.category),
        text_mode=torch.from_numpy(dset.text_mode),
        categories=list(dset.categories),
        defect=torch.from_numpy(dset.defect_fraction()),
        reference=torch.from_numpy(np.ascontiguousarray(dset.image_gt[:, :, : dset.size])),
        reference_mask=torch.from_numpy(dset.reference_mask) if dset.reference_mask is not None else None,
    )
