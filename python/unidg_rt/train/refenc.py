"""Stage ``refenc``: fit the reference encoder to the category table on a large reference bank.

Trained only jointly in Diversity-SFT (3200 diptychs, 1600 references), the tiny CNN memorised
its references (98 % train / 23 % held-out category accuracy, measured) and its output collapsed
towards the mean table row — reference mode stayed at chance. This stage gives it what it lacks:

- data: a fresh bank of procedural reference crops, many more than the SFT set, cropped exactly
  as :func:`unidg_rt.diptych.prepare_diptych` crops a reference (same card crop rule and side),
  with flips / 90° turns (defects have no orientation);
- loss: ``CE(-‖v - t_c‖² / τ) + align · ‖v - t_y‖²`` where ``v = [embeds ‖ pooled]`` of the crop
  and ``t_c`` the (frozen) table rows: a prototype classifier whose prototypes are the very
  conditioning the transformer learned to follow in text mode, so the output moves to the
  right row instead of to the mean.

The transformer is frozen and not used; the table is the SFT stage's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unidg_rt.models.refenc import ReferenceEncoder, cut_out, pixels_to_input
from unidg_rt.train.common import LossLog, cosine_lr, set_lr, stage_seed, step_rng

logger = logging.getLogger(__name__)


@dataclass
class ReferenceBank:
    pixels: np.ndarray  # uint8 [N, S, S, 3]: reference crops as the diptych's left half
    category: np.ndarray  # int64 [N]: row of the category table
    masks: np.ndarray  # bool [N, S, S]: the reference mask in the crop

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def inputs(self, idx, rng: np.random.Generator | None = None, cutout: bool = False) -> torch.Tensor:
        """``[B, 3, S, S]`` in [-1, 1] (``cutout``: gray outside the mask, :func:`cut_out`); with
        ``rng`` each crop gets a random flip / 90° turn."""
        idx = np.asarray(idx)
        x = pixels_to_input(self.pixels[idx], self.pixels.shape[1])  # [B, 3, S, S]
        if cutout:
            x = cut_out(x, torch.from_numpy(self.masks[idx]))
        if rng is None:
            return x
        out = []
        for xi, k, flip in zip(x, rng.integers(0, 4, len(x)), rng.random(len(x)) < 0.5, strict=True):
            xi = torch.rot90(xi, int(k), dims=(1, 2))
            out.append(xi.flip(2) if flip else xi)
        return torch.stack(out)


def build_reference_bank(data, seed: int, num: int, categories: list[str], offset: int = 0) -> ReferenceBank:
    """``num`` reference crops, item ``i`` of category ``i mod C`` on a random surface, from seeds
    :func:`stage_seed` ``(seed, "refbank", offset + i)`` (disjoint streams for train / held-out)."""
    from unidg_rt.data import SURFACE_KINDS, generate_quadruplet
    from unidg_rt.diptych import prepare_diptych

    s = data.gen_size
    pix, cat, masks = [], [], []
    for i in range(num):
        rng = np.random.default_rng(stage_seed(seed, "refbank", offset + i))
        c = i % len(categories)
        surface = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
        q = generate_quadruplet(int(rng.integers(0, 2**62)), categories[c], surface, data.source_size)
        dip = prepare_diptych(q.normal, q.mask, q.abnormal, q.mask, height=s, width=s, **data.crop)
        pix.append(np.clip(np.round(dip.image[:, :s] * 255.0), 0, 255).astype(np.uint8))
        cat.append(c)
        masks.append(dip.reference_mask.astype(bool))
    return ReferenceBank(np.stack(pix), np.asarray(cat, np.int64), np.stack(masks))


def prototype_logits(encoder: ReferenceEncoder, x: torch.Tensor, rows: torch.Tensor, tau: float):
    """(logits ``[B, C]`` = ``-mean_d (v - t_c)² / τ``, ``v [B, T·D + P]``)."""
    e, p = encoder(x)
    v = torch.cat([e.flatten(1), p], dim=1)  # [B, T*D + P]
    return -(v[:, None, :] - rows[None]).pow(2).mean(dim=2) / tau, v


def table_rows(table) -> torch.Tensor:
    """``[C, T·D + P]``: the frozen category table as prototype vectors."""
    return torch.cat([table.embeds.detach().flatten(1), table.pooled.detach()], dim=1)


@torch.no_grad()
def bank_accuracy(
    encoder: ReferenceEncoder, bank: ReferenceBank, rows: torch.Tensor, batch: int = 64
) -> float:
    """Share of crops whose nearest table row is their category (what reference mode needs)."""
    hits = 0
    for s in range(0, len(bank), batch):
        idx = np.arange(s, min(s + batch, len(bank)))
        logits, _ = prototype_logits(encoder, bank.inputs(idx, cutout=encoder.config.cutout), rows, 1.0)
        hits += int((logits.argmax(1).numpy() == bank.category[idx]).sum())
    return hits / max(1, len(bank))


def train_reference_encoder(encoder: ReferenceEncoder, table, bank: ReferenceBank, recipe, seed: int):
    """Fit ``encoder`` (in place) to the frozen ``table`` on ``bank``; returns a summary. With
    ``recipe.cutout`` the encoder's config switches to the cut-out input convention first."""
    if recipe.cutout:
        encoder.config = dataclasses.replace(encoder.config, cutout=True)
    rows = table_rows(table)
    encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(encoder.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    log = LossLog("refenc", recipe.steps)
    t0 = time.perf_counter()
    for step in range(recipe.steps):
        rng, _ = step_rng(seed, "refenc", step)
        idx = rng.integers(0, len(bank), recipe.batch_size)
        set_lr(opt, cosine_lr(step, recipe.steps, recipe.lr, recipe.warmup, recipe.min_lr_frac))
        x = bank.inputs(idx, rng if recipe.augment else None, cutout=encoder.config.cutout)
        logits, v = prototype_logits(encoder, x, rows, recipe.tau)
        y = torch.from_numpy(bank.category[idx])
        loss = nn.functional.cross_entropy(logits, y) + recipe.align * (v - rows[y]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(encoder.parameters()), recipe.grad_clip)
        opt.step()
        log.add(step, float(loss.detach()))
    encoder.eval().requires_grad_(False)
    return {"steps": recipe.steps, "wall_s": round(time.perf_counter() - t0, 1), **log.summary()}
