"""Stage 3: Anomaly Preference Optimization (APO) with a time-gated LoRA on the frozen SFT model.

The preference loss of DESIGN §1 (seed 2), in velocity form (the DiT predicts ``v = noise - x0``,
which is the ε-form up to a σ-dependent affine map)::

    L = E[ -log σ( -β_t · (‖v_θ(z_t, c, t) - v‖² - ‖v_ref(z_t, c, t) - v‖²) ) ]

Positives are the real (ground-truth procedural) abnormal targets; ``v_ref`` is the frozen SFT
model — the same network with the adapter switched off (strength 0 skips the adapter hook, so
it is the base output exactly); ``v_θ`` adds the LoRA ``B·diag(k(t))·A`` whose time-aware
capacity gate ``G_t = diag(k(t))`` (:class:`unidg_rt.models.adapters.TimeGate`) is trained
jointly. Errors are the same token-weighted MSE as SFT (target region weight 1).

``β_t`` schedule: ``β · (floor + (1 - floor)·(1 - t)^power)`` — full strength at low noise
(fidelity of the final details), ``floor·β`` at pure noise (leave the coarse layout diverse).
With positives only (``negatives="none"``), the loss is a sigmoid-saturated reweighting of SFT
relative to the reference: samples where θ already beats the reference by a margin stop
contributing — measured here, it left consistency where SFT had it.

``negatives="self"`` adds losers (:mod:`unidg_rt.train.negatives`): the same diptych with its
target region replaced by the frozen SFT model's own sample, noised with the *same* noise and
sigma, in the pairwise (Diffusion-DPO) form
``-log σ(-β_t ((err_θ - err_ref) - (err_θ,l - err_ref,l)))``. Alone it mostly pushes the loser
error up and lets the winner error rise too (measured: held-out flow error 0.19 → 0.30); the
``anchor`` term ``anchor · mean(β_t (err_θ - err_ref))`` on the winners holds their fit.

``mismatch > 0`` adds condition-mismatch pairs (:mod:`unidg_rt.train.mismatch`): the same target
under its own condition (winner) vs another category's text row / reference half (loser), on the
target region, weighted by ``mismatch``; it composes with either kind of losers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unidg_rt.models.adapters import AdapterManager
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.train.common import Checkpointer, LossLog, cosine_lr, load_checkpoint_state, set_lr, step_rng
from unidg_rt.train.dataset import LatentSet
from unidg_rt.train.flow import CategoryTable, FlowBatch, draw_indices, predict, sft_flow_batch, weighted_mse
from unidg_rt.train.mismatch import mismatch_batch, target_weights
from unidg_rt.train.negatives import negative_pool, sample_losers
from unidg_rt.train.recipe import APORecipe

logger = logging.getLogger(__name__)
ADAPTER = "apo"


def beta_schedule(t: torch.Tensor, beta: float, floor: float = 0.25, power: float = 1.0) -> torch.Tensor:
    """``β_t = β · (floor + (1 - floor)·(1 - t)^power)`` for sigma ``t ∈ [0, 1]``."""
    return beta * (floor + (1.0 - floor) * (1.0 - t).clamp(0, 1) ** power)


def apo_loss(
    err_theta: torch.Tensor,
    err_ref: torch.Tensor,
    beta_t: torch.Tensor | float,
    err_theta_l: torch.Tensor | None = None,
    err_ref_l: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean(-log σ(-β_t (err_θ - err_ref)))`` over the batch; all arguments per sample ``[B]``.

    With loser errors it is the pairwise (Diffusion-DPO) form
    ``-log σ(-β_t ((err_θ - err_ref) - (err_θ,l - err_ref,l)))``."""
    margin = err_theta - err_ref
    if err_theta_l is not None:
        margin = margin - (err_theta_l - err_ref_l)
    return -F.logsigmoid(-beta_t * margin).mean()


def apo_errors(
    model: FluxTransformer,
    mgr: AdapterManager,
    batch: FlowBatch,
    name: str = ADAPTER,
    weights: tuple[torch.Tensor, ...] | None = None,
):
    """``(err_θ, err_ref)`` per sample: with the adapter at strength 1, and off (no grad),
    weighted by ``batch.weights``; with ``weights`` (a tuple of ``[B, N_img]``) one such pair per
    weighting, from the same two forward passes."""
    mgr.set_scales({name: 0.0})
    with torch.no_grad():
        pred_ref = predict(model, batch)
    mgr.set_scales({name: 1.0})
    pred_theta = predict(model, batch)
    pairs = tuple(
        (weighted_mse(pred_theta, batch.target, w), weighted_mse(pred_ref, batch.target, w))
        for w in (weights if weights is not None else (batch.weights,))
    )
    return pairs if weights is not None else pairs[0]


def apo_step_batch(
    lat: LatentSet,
    table: CategoryTable,
    recipe: APORecipe,
    sft,
    seed: int,
    step: int,
    pool: np.ndarray | None = None,
):
    """A mixed batch like SFT's (same guidance, λ, weighting), from APO's own random stream.

    With a loser ``pool`` the samples are drawn from it (in their own mode); returns
    ``(batch, positions in pool or None)``."""
    rng, gen = step_rng(seed + recipe.data_seed_offset, "apo", step)
    pos = None
    if pool is None:
        idx, use = draw_indices(lat, rng, recipe.batch_size, recipe.text_fraction, 0.0)
    else:
        pos = rng.integers(0, len(pool), recipe.batch_size)
        idx = pool[pos]
        use = torch.ones(len(idx), dtype=torch.bool)
    return sft_flow_batch(lat, idx, use, table, gen, sft), pos


def train_apo(
    model: FluxTransformer,
    table: CategoryTable,
    lat: LatentSet,
    recipe: APORecipe,
    sft_recipe,
    seed: int,
    ckpt_path: Path | None = None,
    checkpoint_every_s: float = 180.0,
) -> tuple[AdapterManager, dict]:
    """Adds a gated LoRA ``"apo"`` to the frozen ``model`` and trains it; returns the manager."""
    model.eval().requires_grad_(False)
    table.requires_grad_(False)
    if recipe.negatives not in ("none", "self"):
        raise ValueError(f"APORecipe.negatives={recipe.negatives!r}: use 'none' or 'self'")
    pool = losers = None
    if recipe.negatives == "self":  # sampled before the adapter exists: the frozen SFT model's
        pool = negative_pool(lat, recipe.num_negatives, seed + recipe.data_seed_offset)
        losers = sample_losers(
            model,
            table,
            lat,
            pool,
            sft_recipe,
            seed + recipe.data_seed_offset,
            recipe.negative_steps,
            recipe.negative_cfg,
        )
    torch.manual_seed(seed + recipe.data_seed_offset)
    mgr = AdapterManager(model)
    ad = mgr.add(ADAPTER, rank=recipe.rank, alpha=recipe.alpha, gated=True)
    trainable = nn.ModuleDict({"pairs": ad.pairs, "gate": ad.gate})
    opt = torch.optim.AdamW(trainable.parameters(), lr=recipe.lr, weight_decay=0.0)
    log = LossLog("apo", recipe.steps)
    margins: list[float] = []
    mismatch_margins: list[float] = []
    start, prev_wall = 0, 0.0
    state = load_checkpoint_state(ckpt_path) if ckpt_path is not None else None
    if state is not None:
        trainable.load_state_dict(state["adapter"])
        opt.load_state_dict(state["opt"])
        start, prev_wall, log.values, margins = (
            state["step"],
            state["wall_s"],
            state["losses"],
            state["margins"],
        )
        mismatch_margins = list(state.get("mismatch_margins", []))
    t0 = time.perf_counter()
    ckpt = Checkpointer(ckpt_path, checkpoint_every_s) if ckpt_path is not None else None

    def snapshot(step):
        return {
            "step": step,
            "adapter": trainable.state_dict(),
            "opt": opt.state_dict(),
            "margins": list(margins),
            "mismatch_margins": list(mismatch_margins),
            "wall_s": prev_wall + time.perf_counter() - t0,
            "losses": list(log.values),
        }

    for step in range(start, recipe.steps):
        batch, pos = apo_step_batch(lat, table, recipe, sft_recipe, seed, step, pool)
        set_lr(opt, cosine_lr(step, recipe.steps, recipe.lr, recipe.warmup, recipe.min_lr_frac))
        beta_t = beta_schedule(batch.sigma, recipe.beta, recipe.beta_floor, recipe.beta_power)
        mismatch_term = None
        if recipe.mismatch:  # condition-mismatch pair on the target region (train/mismatch.py)
            (err_theta, err_ref), (tw_theta, tw_ref) = apo_errors(
                model, mgr, batch, weights=(batch.weights, target_weights(batch, lat))
            )
            rng, _ = step_rng(seed + recipe.data_seed_offset, "apo-mismatch", step)
            err_theta_m, err_ref_m = apo_errors(model, mgr, mismatch_batch(lat, table, batch, rng))
            mismatch_term = recipe.mismatch * apo_loss(tw_theta, tw_ref, beta_t, err_theta_m, err_ref_m)
            # < 0 once the adapter fits the true condition better than the wrong one (vs the SFT model)
            mm = float(((tw_theta - tw_ref) - (err_theta_m - err_ref_m)).detach().mean())
            mismatch_margins.append(mm)
        else:
            err_theta, err_ref = apo_errors(model, mgr, batch)
        if losers is None:
            loss = apo_loss(err_theta, err_ref, beta_t)
        else:
            err_theta_l, err_ref_l = apo_errors(model, mgr, batch.with_x0(losers[torch.as_tensor(pos)]))
            loss = apo_loss(err_theta, err_ref, beta_t, err_theta_l, err_ref_l)
            if recipe.anchor:  # Diffusion-DPO alone raises both errors; this holds the winners' fit
                loss = loss + recipe.anchor * (beta_t * (err_theta - err_ref)).mean()
        if mismatch_term is not None:
            loss = loss + mismatch_term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(trainable.parameters()), recipe.grad_clip)
        opt.step()
        margin = float((err_theta - err_ref).detach().mean())
        margins.append(margin)
        extra = {"mismatch_margin": mismatch_margins[-1]} if mismatch_term is not None else {}
        log.add(step, float(loss.detach()), margin=margin, **extra)
        if ckpt is not None:
            ckpt.maybe_save(lambda s=step: snapshot(s + 1))
    wall = prev_wall + time.perf_counter() - t0
    trainable.requires_grad_(False)
    w = min(20, max(1, len(margins) // 4))
    summary = {
        "steps": recipe.steps,
        "wall_s": round(wall, 1),
        **log.summary(),
        "margin_start": float(sum(margins[:w]) / w) if margins else None,
        "margin_end": float(sum(margins[-w:]) / w) if margins else None,
        **(
            {
                "mismatch_margin_start": sum(mismatch_margins[:w]) / w,
                "mismatch_margin_end": sum(mismatch_margins[-w:]) / w,
            }
            if mismatch_margins
            else {}
        ),
        "gate_k_at_t": {
            f"{t:.2f}": round(float(ad.gate(torch.tensor([t]))[0].mean()), 4)
            for t in (0.0, 0.25, 0.5, 0.75, 1.0)
        },
    }
    return mgr, summary
