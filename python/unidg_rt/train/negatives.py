"""APO losers: the frozen SFT model's own samples, spliced into the ground-truth diptych.

A preference pair shares everything but the target region: the winner is the ground-truth
diptych latent ``x0``; the loser is ``x0`` with its ``TARGET_REGION`` tokens replaced by what the
SFT model samples there (same conditioning, ``steps`` Euler steps of the FLUX schedule, true CFG
in text mode as the shipped sampler does). Those samples are the model's typical failure — a
soft blob instead of a sharp defect of the asked category — so the pairwise loss of
:mod:`unidg_rt.train.apo` pushes the adapter away from exactly that, not just towards the data.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from unidg_rt.groups import TokenGroup
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.sampling import euler_step, flux_sigmas, pack_latents
from unidg_rt.train.dataset import LatentSet
from unidg_rt.train.flow import CategoryTable, flow_batch

logger = logging.getLogger(__name__)


def negative_pool(lat: LatentSet, num: int, seed: int) -> np.ndarray:
    """A fixed random subset of diptych indices (sorted) that gets a loser each."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(lat), size=min(num, len(lat)), replace=False))


@torch.no_grad()
def sample_losers(
    model: FluxTransformer,
    table: CategoryTable,
    lat: LatentSet,
    idx: np.ndarray,
    sft,
    seed: int,
    steps: int = 8,
    true_cfg_scale: float = 1.0,
    batch: int = 32,
) -> torch.Tensor:
    """Loser latents ``[len(idx), N_img, 64]`` (packed): ``x0`` outside the target region, the
    model's own ``steps``-step sample inside it, conditioned as at inference
    (:meth:`CategoryTable.condition`: category row / reference encoder / zeros) with
    ``true_cfg_scale`` against zero conditioning where the conditioning is not already zero."""
    model.eval()
    sig = flux_sigmas(steps, lat.mask.shape[1])  # the sampler's schedule for N_img tokens
    out = []
    t0 = time.perf_counter()
    for s in range(0, len(idx), batch):
        part = np.asarray(idx[s : s + batch])
        gen = torch.Generator().manual_seed(seed + s)
        keep = torch.ones(len(part), dtype=torch.bool)
        fb = flow_batch(
            lat,
            part,
            keep,
            table,
            gen,
            guidance=sft.guidance,
            group_bias_lambda=sft.group_bias_lambda,
            context_weight=sft.context_weight,
        )
        x0 = pack_latents(lat.x0[torch.as_tensor(part)])  # [B, N_img, 64]
        cond = fb.feed["hidden_states"][..., x0.shape[-1] :]  # [B, N_img, 320]: masked latents + mask
        z = torch.randn(x0.shape, generator=gen)
        e, p = fb.feed["encoder_hidden_states"], fb.feed["pooled_projections"]
        guided_rows = (e.abs().sum(dim=(1, 2)) + p.abs().sum(dim=1)) > 0  # [B]: CFG has a second branch
        uncond = None
        if true_cfg_scale > 1.0 and bool(guided_rows.any()):
            uncond = {"encoder_hidden_states": torch.zeros_like(e), "pooled_projections": torch.zeros_like(p)}
        for i in range(steps):
            feed = {**fb.feed, "hidden_states": torch.cat([z, cond], dim=2)}  # [B, N_img, 384]
            sigma = torch.full((len(part),), float(sig[i]))
            v = model(timestep=sigma, **feed)
            if uncond is not None:
                v_u = model(timestep=sigma, **{**feed, **uncond})
                guided = v_u + true_cfg_scale * (v - v_u)
                v = torch.where(guided_rows[:, None, None], guided, v)
            z = euler_step(z, v, sig[i], sig[i + 1])
        region = (lat.groups[torch.as_tensor(part)] == int(TokenGroup.TARGET_REGION))[..., None]
        out.append(torch.where(region, z, x0))
    logger.info("APO losers: %d SFT samples (%d steps) in %.1f s", len(idx), steps, time.perf_counter() - t0)
    return torch.cat(out)
