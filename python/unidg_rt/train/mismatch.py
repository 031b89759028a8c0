"""APO condition-mismatch pairs: the same target under its own condition vs another category's.

The ``self`` losers of :mod:`unidg_rt.train.negatives` teach the adapter what a bad sample looks
like; they say nothing about *which category* the condition asks for, and category consistency
is where the embedded model is weakest (README). A mismatch pair holds the image fixed and
changes the condition instead:

- winner: the ground-truth diptych under its own condition (text mode: its category row;
  reference mode: its own reference half);
- loser: the same noised target under a condition of another category (text mode: another
  row of the table; reference mode: the reference half — latents, Fill conditioning, mask and
  token groups — of a reference-mode diptych of another category).

Both are scored on the target region only (the only tokens the two share), with the same noise
and sigma, in the pairwise Diffusion-DPO form of :func:`unidg_rt.train.apo.apo_loss`: the
adapter is rewarded when the true condition explains the real defect better than a wrong one
does, relative to the frozen SFT model — the preference "this defect, not that category's".
"""

from __future__ import annotations

import numpy as np
import torch

from unidg_rt.groups import TokenGroup
from unidg_rt.sampling import left_half_tokens, pack_latents, scale_noise
from unidg_rt.train.dataset import LatentSet
from unidg_rt.train.flow import CategoryTable, FlowBatch


def target_weights(batch: FlowBatch, lat: LatentSet) -> torch.Tensor:
    """``[B, N_img]``: 1 on the target region's tokens, 0 elsewhere."""
    groups = lat.groups[torch.as_tensor(batch.index)]
    return (groups == int(TokenGroup.TARGET_REGION)).float()


def other_categories(category: np.ndarray, num_categories: int, rng: np.random.Generator) -> np.ndarray:
    """For each row a uniformly drawn category ``!= category[i]``."""
    shift = rng.integers(1, num_categories, len(category))
    return (np.asarray(category) + shift) % num_categories


def mismatch_batch(
    lat: LatentSet, table: CategoryTable, batch: FlowBatch, rng: np.random.Generator
) -> FlowBatch:
    """The loser side of a mismatch pair for every row of ``batch`` (see module docstring).

    Text-mode rows get the table row of another category; reference-mode rows the reference half
    of a random reference-mode diptych of another category (a row stays as it is when the set has
    none). Noise, sigma, the target half and ``target`` are ``batch``'s; weights are the target
    region, so the swapped half is conditioning only."""
    idx = np.asarray(batch.index)
    cat = lat.category[torch.as_tensor(idx)].numpy()
    text = lat.text_mode[torch.as_tensor(idx)].numpy()
    wrong = other_categories(cat, len(lat.categories), rng)
    feed = dict(batch.feed)

    # text mode: another category's row (reference rows keep their conditioning, zeros or encoder)
    rows = torch.as_tensor(wrong)
    e_w, p_w = table.embeds[rows].detach(), table.pooled[rows].detach()
    t = torch.as_tensor(text)
    feed["encoder_hidden_states"] = torch.where(t[:, None, None], e_w, feed["encoder_hidden_states"])
    feed["pooled_projections"] = torch.where(t[:, None], p_w, feed["pooled_projections"])

    # reference mode: another category's reference half
    donor = idx.copy()
    ref_pool = lat.indices(False)
    ref_cat = lat.category[torch.as_tensor(ref_pool)].numpy()
    for i in np.flatnonzero(~text):
        cands = ref_pool[ref_cat != cat[i]]
        if len(cands):
            donor[i] = cands[rng.integers(len(cands))]
    _, _, h, w = lat.x0.shape
    left = torch.from_numpy(left_half_tokens(h // 2, w // 2))[None, :, None]  # [1, N_img, 1]
    d = torch.as_tensor(donor)
    x0_d = pack_latents(lat.x0[d])  # [B, N_img, 64]
    c = x0_d.shape[-1]
    hidden = feed["hidden_states"]  # [B, N_img, 64 + 320]
    z = torch.where(left, scale_noise(x0_d, batch.noise, batch.sigma[:, None, None]), hidden[..., :c])
    cond_d = torch.cat([pack_latents(lat.cond[d]), lat.mask[d].float()], dim=2)  # [B, N_img, 320]
    feed["hidden_states"] = torch.cat([z, torch.where(left, cond_d, hidden[..., c:])], dim=2)
    if feed.get("token_groups") is not None:
        t_len = feed["encoder_hidden_states"].shape[1]
        img_groups = torch.where(left[..., 0], lat.groups[d], feed["token_groups"][:, t_len:])
        feed["token_groups"] = torch.cat([feed["token_groups"][:, :t_len], img_groups], dim=1)
    return FlowBatch(
        feed=feed,
        sigma=batch.sigma,
        target=batch.target,
        weights=target_weights(batch, lat),
        noise=batch.noise,
        index=batch.index,
        encoded=None,
    )
