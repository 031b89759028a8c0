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
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unidg_rt.groups import TokenGroup, default_group_bias, text_token_groups
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig
from unidg_rt.runtime.backend import latent_image_ids, pack_latents
from unidg_rt.sampling import calculate_shift, scale_noise
from unidg_rt.train.common import Checkpointer, LossLog, cosine_lr, load_checkpoint_state, set_lr, step_rng
from unidg_rt.train.dataset import LatentSet
from unidg_rt.train.recipe import SFTRecipe

logger = logging.getLogger(__name__)


class CategoryTable(nn.Module):
    """Learned "text" conditioning per defect category: ``[C, T, D]`` + pooled ``[C, P]``, and
    the optional reference encoder that conditions reference-mode samples."""

    def __init__(self, num: int, seq_len: int, dim: int, pooled_dim: int, init_std: float = 0.5,
                 encoder: ReferenceEncoder | None = None):  # fmt: skip
        super().__init__()
        self.embeds = nn.Parameter(torch.randn(num, seq_len, dim) * init_std)
        self.pooled = nn.Parameter(torch.randn(num, pooled_dim) * init_std)
        self.encoder = encoder

    def forward(self, category: torch.Tensor, use: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``category [B]`` where ``use [B]`` (text mode), zeros elsewhere (reference mode)."""
        dev = self.embeds.device
        category, u = category.to(dev), use.to(device=dev, dtype=self.embeds.dtype)
        return self.embeds[category] * u[:, None, None], self.pooled[category] * u[:, None]

    def encode(self, lat: LatentSet, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's ``([B, T, D], [B, P])`` for the reference crops of samples ``idx``."""
        x = lat.reference_input(torch.as_tensor(idx), self.encoder.config.cutout)
        return self.encoder(x.to(self.embeds.device))

    def condition(self, lat: LatentSet, idx, keep: torch.Tensor):
        """Conditioning ``([B, T, D], [B, P])`` of samples ``idx`` as the pipeline feeds it:
        text-mode rows their category row, reference-mode rows the encoder's output of their
        reference crop (zeros without an encoder), zeros where ``keep [B]`` is False; third, the
        encoder's output for every row (None when it did not run)."""
        idx_t = torch.as_tensor(idx)
        text = lat.text_mode[idx_t]
        embeds, pooled = self(lat.category[idx_t], keep & text)
        ref = keep & ~text
        if self.encoder is None or lat.reference is None or not bool(ref.any()):
            return embeds, pooled, None
        e_r, p_r = self.encode(lat, idx_t)  # [B, T, D], [B, P]
        ref = ref.to(embeds.device)
        embeds, pooled = torch.where(ref[:, None, None], e_r, embeds), torch.where(ref[:, None], p_r, pooled)
        return embeds, pooled, (e_r, p_r)

    def alignment(self, lat: LatentSet, idx, encoded=None) -> torch.Tensor:
        """``[B]``: ``mean ‖enc(ref) - sg(embeds[c])‖² + mean ‖pooled_enc - sg(pooled[c])‖²`` on
        reference-mode samples, 0 on text-mode ones; ``encoded``: :meth:`encode`'s output for
        ``idx`` when the batch already has it."""
        idx_t = torch.as_tensor(idx)
        e_r, p_r = encoded if encoded is not None else self.encode(lat, idx_t)
        cat = lat.category[idx_t].to(e_r.device)
        err = (e_r - self.embeds[cat].detach()).pow(2).mean(dim=(1, 2))
        err = err + (p_r - self.pooled[cat].detach()).pow(2).mean(dim=1)
        return err * (~lat.text_mode[idx_t]).float().to(err.device)

    def entries(self, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        e, p = self.embeds.detach().cpu().numpy(), self.pooled.detach().cpu().numpy()
        return {n: (e[i], p[i]) for i, n in enumerate(names)}


def init_dit(model: FluxTransformer) -> None:
    """DiT-style init: zero adaLN modulation and output projection, so every block starts as the
    identity and the prediction starts at 0 (trains much faster than PyTorch's default init)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (name.endswith("norm1.linear") or name.endswith("norm1_context.linear")
                                              or name.endswith("norm.linear") or name == "norm_out.linear"
                                              or name == "proj_out"):  # fmt: skip
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- one batch
@dataclass
class FlowBatch:
    feed: dict  # FluxTransformer kwargs except timestep
    sigma: torch.Tensor  # [B]
    target: torch.Tensor  # [B, N_img, 64]: noise - x0
    weights: torch.Tensor  # [B, N_img]
    noise: torch.Tensor  # [B, N_img, 64]: the draw behind ``target`` (loser batches reuse it)
    index: np.ndarray | None = None  # [B]: the samples' rows in the LatentSet
    encoded: tuple | None = None  # the reference encoder's output for the rows (training graph)

    def with_x0(self, x0: torch.Tensor) -> FlowBatch:
        """The same noise, sigma and conditioning around another clean latent ``x0 [B, N_img, 64]``."""
        z = scale_noise(x0, self.noise, self.sigma[:, None, None])
        hidden = self.feed["hidden_states"]  # [B, N_img, 64 + 320]
        feed = {**self.feed, "hidden_states": torch.cat([z, hidden[..., z.shape[-1] :]], dim=2)}
        return FlowBatch(feed=feed, sigma=self.sigma, target=self.noise - x0, weights=self.weights,
                         noise=self.noise, index=self.index, encoded=self.encoded)  # fmt: skip


def sample_sigmas(
    n: int, gen: torch.Generator, mean: float, std: float, n_tokens: int | None
) -> torch.Tensor:
    """Logit-normal sigmas, then FLUX's resolution-dependent shift (``n_tokens`` None = unshifted)."""
    s = torch.sigmoid(torch.randn(n, generator=gen) * std + mean)
    if n_tokens is None:
        return s
    e = math.exp(calculate_shift(n_tokens))
    return e / (e + (1.0 / s - 1.0))


def flow_batch(
    lat: LatentSet,
    idx: np.ndarray,
    use: torch.Tensor,
    table: CategoryTable,
    gen: torch.Generator,
    *,
    guidance: float,
    group_bias_lambda: float | None,
    context_weight: float,
    defect_weight: float = 0.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    time_shift: bool = True,
) -> FlowBatch:
    """Model inputs for samples ``idx``; ``use [B]``: conditioning kept (False = zeros, the
    unconditional branch); see :meth:`CategoryTable.condition`."""
    idx_t = torch.as_tensor(idx)
    b = len(idx)
    _, _, h, w = lat.x0.shape
    x0 = pack_latents(lat.x0[idx_t])  # [B, C, h, w] -> [B, N_img, 4C]
    cond = torch.cat([pack_latents(lat.cond[idx_t]), lat.mask[idx_t].float()], dim=2)  # [B, N_img, 4C + 256]
    n_img = x0.shape[1]
    noise = torch.randn(x0.shape, generator=gen)
    sigma = sample_sigmas(b, gen, logit_mean, logit_std, n_img if time_shift else None)
    z = scale_noise(x0, noise, sigma[:, None, None])
    embeds, pooled, encoded = table.condition(lat, idx_t, use)
    t_len = embeds.shape[1]
    groups = lat.groups[idx_t]  # [B, N_img]
    feed = {
        "hidden_states": torch.cat([z, cond], dim=2),  # [B, N_img, 384]
        "encoder_hidden_states": embeds,
        "pooled_projections": pooled,
        "img_ids": torch.from_numpy(latent_image_ids(h, w)),
        "txt_ids": torch.zeros(t_len, 3),
        "guidance": torch.full((b,), float(guidance)),
        "token_groups": None,
        "group_bias": None,
    }
    if group_bias_lambda is not None:
        txt = torch.from_numpy(text_token_groups(t_len).astype(np.int64))[None].expand(b, -1)
        feed["token_groups"] = torch.cat([txt, groups], dim=1)  # [B, N_txt + N_img]
        feed["group_bias"] = torch.from_numpy(default_group_bias(float(group_bias_lambda)))
    weights = torch.where(groups == int(TokenGroup.TARGET_REGION), 1.0, float(context_weight))
    if defect_weight and lat.defect is not None:  # tokens holding defect pixels: the rare, hard part
        weights = weights + float(defect_weight) * (lat.defect[idx_t] > 0).float()
    return FlowBatch(
        feed=feed,
        sigma=sigma,
        target=noise - x0,
        weights=weights,
        noise=noise,
        index=np.asarray(idx),
        encoded=encoded,
    )


def batch_to(batch: FlowBatch, device) -> FlowBatch:
    """The batch with every tensor on ``device`` (built on the CPU: the random draws stay the
    CPU generators' whatever the device)."""
    if str(device) == "cpu":
        return batch
    mv = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    feed = {k: mv(v) for k, v in batch.feed.items()}
    return FlowBatch(feed=feed, sigma=mv(batch.sigma), target=mv(batch.target), weights=mv(batch.weights),
                     noise=mv(batch.noise), index=batch.index, encoded=batch.encoded)  # fmt: skip


def predict(model: FluxTransformer, batch: FlowBatch) -> torch.Tensor:
    """``v_θ`` (keyword ``timestep`` so adapter gates see it)."""
    return model(timestep=batch.sigma, **batch.feed)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample ``Σ_n w_n·mean_c (pred - target)² / Σ_n w_n`` → ``[B]``."""
    per_token = (pred.float() - target).pow(2).mean(dim=2)  # [B, N_img]
    return (per_token * weights).sum(1) / weights.sum(1).clamp_min(1e-8)


def draw_indices(
    lat: LatentSet, rng: np.random.Generator, batch: int, text_fraction: float, cond_dropout: float
) -> tuple[np.ndarray, torch.Tensor]:
    """A mixed batch: indices and ``keep`` (conditioning not dropped)."""
    text_idx, ref_idx = lat.indices(True), lat.indices(False)
    is_text = rng.random(batch) < text_fraction
    if len(text_idx) == 0:
        is_text[:] = False
    if len(ref_idx) == 0:
        is_text[:] = True
    idx = np.where(
        is_text,
        text_idx[rng.integers(0, max(1, len(text_idx)), batch)] if len(text_idx) else 0,
        ref_idx[rng.integers(0, max(1, len(ref_idx)), batch)] if len(ref_idx) else 0,
    )
    keep = rng.random(batch) >= cond_dropout
    return idx, torch.from_numpy(keep)


def sft_step_batch(
    lat: LatentSet, table: CategoryTable, recipe: SFTRecipe, seed: int, step: int
) -> FlowBatch:
    rng, gen = step_rng(seed, "sft", step)
    idx, use = draw_indices(lat, rng, recipe.batch_size, recipe.text_fraction, recipe.cond_dropout)
    return flow_batch(
        lat, idx, use, table, gen, guidance=recipe.guidance, group_bias_lambda=recipe.group_bias_lambda,
        context_weight=recipe.context_weight, defect_weight=recipe.defect_weight,
        logit_mean=recipe.logit_mean, logit_std=recipe.logit_std, time_shift=recipe.time_shift,
    )  # fmt: skip


# ----------------------------------------------------------------------------- training loop
def new_sft_models(config: FluxConfig, lat: LatentSet, text_seq_len: int, recipe: SFTRecipe, seed: int):
    torch.manual_seed(seed)
    model = FluxTransformer(config)
    init_dit(model)
    encoder = None
    if recipe.ref_width > 0 and lat.reference is not None:
        encoder = ReferenceEncoder(ReferenceEncoderConfig(
            seq_len=text_seq_len, dim=config.joint_attention_dim, pooled_dim=config.pooled_projection_dim,
            width=recipe.ref_width, image_size=int(lat.reference.shape[1])))  # fmt: skip
    table = CategoryTable(len(lat.categories), text_seq_len, config.joint_attention_dim,
                          config.pooled_projection_dim, recipe.embed_init_std, encoder)  # fmt: skip
    if recipe.init_from:
        from unidg_rt.train.levers import warm_start

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
    from unidg_rt.train.levers import EMA, heldout_losses

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
        ),  # fmt: skip
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
        return {"step": step, "model": model.state_dict(), "table": table.state_dict(), "opt": opt.state_dict(),
                "wall_s": prev_wall + time.perf_counter() - t0, "losses": list(log.values), "curve": list(curve),
                **({"ema": ema.state_dict()} if ema is not None else {}),
                **({"bank": dict(lat.__dict__)} if fresh is not None else {})}  # fmt: skip

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
            logger.warning("sft: sft.max_wall_s=%.0f reached at step %d of %d: stopping", recipe.max_wall_s,
                           step, recipe.steps)  # fmt: skip
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
def fixed_batch_loss(model: FluxTransformer, lat: LatentSet, table: CategoryTable, recipe: SFTRecipe,
                     seed: int, n_batches: int = 4) -> float:  # fmt: skip
    """Loss on a few fixed held-out-stream batches (same draw every call): a stable metric."""
    vals = []
    for i in range(n_batches):
        batch = sft_step_batch(lat, table, recipe, seed + 10_000, i)
        vals.append(float(weighted_mse(predict(model, batch), batch.target, batch.weights).mean()))
    return float(np.mean(vals))
