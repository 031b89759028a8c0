"""Stage 2: Diversity-SFT of the MM-DiT with the rectified-flow objective on diptychs.

Per sample (FLUX / SD3 rectified flow, FLUX-Fill inputs, exactly the pipeline's feed)::

    sigma ~ time_shift(mu(N_img), sigmoid(N(logit_mean, logit_std)))
    z     = (1 - sigma)·x0 + sigma·noise                  # sampling.scale_noise
    input = [pack(z) | pack(masked-image latents) | packed mask]   # 64 + 64 + 256 = 384
    loss  = Σ_tokens w·‖v_θ(input, c, sigma) - (noise - x0)‖² / Σ w

with ``w = 1`` on ``TARGET_REGION`` tokens and ``context_weight`` elsewhere (paste-back keeps
only the masked region), plus ``defect_weight`` on tokens that hold ground-truth defect pixels
(a few tokens per sample; without the boost the model learned to inpaint background only).
Batches mix reference mode (reference crop on the left; its conditioning is the learned
:class:`~unidg_rt.models.refenc.ReferenceEncoder` of the crop, trained jointly, or zeros without
one) and text mode (empty left half, a *learned* per-category embedding table ``[C, T, D]`` +
pooled ``[C, P]`` trained jointly). ``cond_dropout`` of all samples get zero conditioning, so a
two-pass CFG segment has a meaningful unconditional branch in both modes. With an encoder,
``ref_align · ‖enc(ref) - sg(table[category])‖²`` on reference-mode samples ties its output to
the table (the category labels are the only supervision the tiny data has). Token groups and the
default group-bias table ``T(λ)`` enter attention exactly as in :meth:`UniDGPipeline._static_feed`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig
from unidg_rt.train.common import Checkpointer, LossLog, cosine_lr, load_checkpoint_state, set_lr, step_rng
from unidg_rt.train.dataset import LatentSet
from unidg_rt.train.flow import (
    CategoryTable,
    FlowBatch,
    batch_to,
    draw_indices,
    predict,
    sft_flow_batch,
    weighted_mse,
)
from unidg_rt.train.levers import EMA, heldout_losses, warm_start
from unidg_rt.train.recipe import SFTRecipe

logger = logging.getLogger(__name__)


def init_dit(model: FluxTransformer) -> None:
    """DiT-style init: zero adaLN modulation and output projection, so every block starts as the
    identity and the prediction starts at 0 (trains much faster than PyTorch's default init)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (
            name.endswith("norm1.linear")
            or name.endswith("norm1_context.linear")
            or name.endswith("norm.linear")
            or name == "norm_out.linear"
            or name == "proj_out"
        ):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


def sft_step_batch(
    lat: LatentSet, table: CategoryTable, recipe: SFTRecipe, seed: int, step: int
) -> FlowBatch:
    rng, gen = step_rng(seed, "sft", step)
    idx, use = draw_indices(lat, rng, recipe.batch_size, recipe.text_fraction, recipe.cond_dropout)
    return sft_flow_batch(lat, idx, use, table, gen, recipe)


# ----------------------------------------------------------------------------- training loop
def new_sft_models(config: FluxConfig, lat: LatentSet, text_seq_len: int, recipe: SFTRecipe, seed: int):
    torch.manual_seed(seed)
    model = FluxTransformer(config)
    init_dit(model)
    encoder = None
    if recipe.ref_width > 0 and lat.reference is not None:
        encoder = ReferenceEncoder(
            ReferenceEncoderConfig(
                seq_len=text_seq_len,
                dim=config.joint_attention_dim,
                pooled_dim=config.pooled_projection_dim,
                width=recipe.ref_width,
                image_size=int(lat.reference.shape[1]),
            )
        )
    table = CategoryTable(
        len(lat.categories),
        text_seq_len,
        config.joint_attention_dim,
        config.pooled_projection_dim,
        recipe.embed_init_std,
        encoder,
    )
    if recipe.init_from:
        warm_start(model, table, recipe.init_from, lat.categories)
    return model, table


def train_sft(
    lat: LatentSet,
    recipe: SFTRecipe,
    config: FluxConfig,
    seed: int,
    text_seq_len: int = 8,
    ckpt_path: Path | None = None,
    checkpoint_every_s: float = 180.0,
    *,
    device: str = "cpu",
    fresh=None,
    heldout: LatentSet | dict[str, LatentSet] | None = None,
) -> tuple[FluxTransformer, CategoryTable, dict]:
    """``fresh``: a :class:`~unidg_rt.train.levers.FreshStream` refreshing ``lat`` in place;
    ``heldout``: the set (or ``{prefix: set}``, ``"heldout"`` in reference and text mode, any other
    in reference mode) of the ``eval_every`` learning curve; ``recipe.ema``: the returned model
    and table hold the EMA weights."""
    model, table = new_sft_models(config, lat, text_seq_len, recipe, seed)
    model.to(device).train()
    table.to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {
                "params": [table.embeds, table.pooled],
                "weight_decay": 0.0,
                "lr_scale": recipe.embed_lr / recipe.lr,
            },
        ]
        + (
            [{"params": list(table.encoder.parameters()), "weight_decay": recipe.weight_decay}]
            if table.encoder is not None
            else []
        ),
        lr=recipe.lr,
    )
    log = LossLog("sft", recipe.steps)
    params = list(model.parameters()) + list(table.parameters())
    ema = EMA(params, recipe.ema) if recipe.ema else None
    curve: list[dict] = []
    start, prev_wall = 0, 0.0
    state = load_checkpoint_state(ckpt_path) if ckpt_path is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        table.load_state_dict(state["table"])
        opt.load_state_dict(state["opt"])
        start, prev_wall, log.values = state["step"], state["wall_s"], state["losses"]
        curve = list(state.get("curve", []))
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if "bank" in state:  # the fresh-data ring as it was
            for k, v in state["bank"].items():
                setattr(lat, k, v)
    t0 = time.perf_counter()
    ckpt = Checkpointer(ckpt_path, checkpoint_every_s) if ckpt_path is not None else None

    def snapshot(step):
        return {
            "step": step,
            "model": model.state_dict(),
            "table": table.state_dict(),
            "opt": opt.state_dict(),
            "wall_s": prev_wall + time.perf_counter() - t0,
            "losses": list(log.values),
            "curve": list(curve),
            **({"ema": ema.state_dict()} if ema is not None else {}),
            **({"bank": dict(lat.__dict__)} if fresh is not None else {}),
        }

    sets = heldout if isinstance(heldout, dict) or heldout is None else {"heldout": heldout}

    def evaluate_heldout(step):
        if not sets or not recipe.eval_every:
            return
        entry = {"step": step, "wall_s": round(prev_wall + time.perf_counter() - t0, 1)}
        with ema.applied() if ema is not None else contextlib.nullcontext():
            for name, hl in sets.items():  # "heldout": ref + text; others (copy pairs): ref only
                modes = ("ref", "text") if name == "heldout" else ("ref",)
                entry.update(heldout_losses(model, table, hl, recipe, seed, device, prefix=name, modes=modes))
        curve.append(entry)
        logger.info("sft held-out %s", entry)

    done = recipe.steps
    for step in range(start, recipe.steps):
        if recipe.max_wall_s and prev_wall + time.perf_counter() - t0 >= recipe.max_wall_s:
            done = step
            logger.warning(
                "sft: sft.max_wall_s=%.0f reached at step %d of %d: stopping",
                recipe.max_wall_s,
                step,
                recipe.steps,
            )
            break
        if fresh is not None:
            fresh.refresh(lat, step)
        if recipe.eval_every and step % recipe.eval_every == 0 and (not curve or curve[-1]["step"] != step):
            evaluate_heldout(step)
        batch = batch_to(sft_step_batch(lat, table, recipe, seed, step), device)
        set_lr(opt, cosine_lr(step, recipe.steps, recipe.lr, recipe.warmup, recipe.min_lr_frac))
        loss = weighted_mse(predict(model, batch), batch.target, batch.weights).mean()
        if table.encoder is not None and recipe.ref_align:
            loss = loss + recipe.ref_align * table.alignment(lat, batch.index, batch.encoded).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        if ema is not None:
            ema.update()
        log.add(step, float(loss.detach()))
        if ckpt is not None:
            ckpt.maybe_save(lambda s=step: snapshot(s + 1))
    if recipe.eval_every and (not curve or curve[-1]["step"] != done):
        evaluate_heldout(done)
    wall = prev_wall + time.perf_counter() - t0
    if ema is not None:
        ema.copy_to_params()
    model.eval().requires_grad_(False).to("cpu")
    table.requires_grad_(False).to("cpu")
    summary = {"steps": done, "wall_s": round(wall, 1), "device": str(device), **log.summary()}
    if done != recipe.steps:
        summary["steps_planned"] = recipe.steps
    if curve:
        summary["curve"] = curve
    return model, table, summary


@torch.no_grad()
def fixed_batch_loss(
    model: FluxTransformer,
    lat: LatentSet,
    table: CategoryTable,
    recipe: SFTRecipe,
    seed: int,
    n_batches: int = 4,
) -> float:
    """Loss on a few fixed held-out-stream batches (same draw every call): a stable metric."""
    vals = []
    for i in range(n_batches):
        batch = sft_step_batch(lat, table, recipe, seed + 10_000, i)
        vals.append(float(weighted_mse(predict(model, batch), batch.target, batch.weights).mean()))
    return float(np.mean(vals))
