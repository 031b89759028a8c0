"""One rectified-flow training batch, as the pipeline feeds the transformer: the learned
per-category conditioning (:class:`CategoryTable`), :class:`FlowBatch` and its builder
:func:`flow_batch`, the prediction and the token-weighted loss. Shared by SFT
(:mod:`unidg_rt.train.sft`), APO, the held-out curves (:mod:`unidg_rt.train.levers`) and the
negatives; the objective is written out in :mod:`unidg_rt.train.sft`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unidg_rt.groups import TokenGroup, default_group_bias, text_token_groups
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.refenc import ReferenceEncoder
from unidg_rt.sampling import calculate_shift, latent_image_ids, pack_latents, scale_noise
from unidg_rt.train.dataset import LatentSet
from unidg_rt.train.recipe import SFTRecipe


# ----------------------------------------------------------------------------- conditioning
class CategoryTable(nn.Module):
    """Learned "text" conditioning per defect category: ``[C, T, D]`` + pooled ``[C, P]``, and
    the optional reference encoder that conditions reference-mode samples."""

    def __init__(
        self,
        num: int,
        seq_len: int,
        dim: int,
        pooled_dim: int,
        init_std: float = 0.5,
        encoder: ReferenceEncoder | None = None,
    ):
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
        return FlowBatch(
            feed=feed,
            sigma=self.sigma,
            target=self.noise - x0,
            weights=self.weights,
            noise=self.noise,
            index=self.index,
            encoded=self.encoded,
        )


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


def sft_flow_batch(
    lat: LatentSet,
    idx: np.ndarray,
    use: torch.Tensor,
    table: CategoryTable,
    gen: torch.Generator,
    recipe: SFTRecipe,
) -> FlowBatch:
    """:func:`flow_batch` with the SFT recipe's guidance, group bias, token weights and sigma draw."""
    return flow_batch(
        lat,
        idx,
        use,
        table,
        gen,
        guidance=recipe.guidance,
        group_bias_lambda=recipe.group_bias_lambda,
        context_weight=recipe.context_weight,
        defect_weight=recipe.defect_weight,
        logit_mean=recipe.logit_mean,
        logit_std=recipe.logit_std,
        time_shift=recipe.time_shift,
    )


def batch_to(batch: FlowBatch, device) -> FlowBatch:
    """The batch with every tensor on ``device`` (built on the CPU: the random draws stay the
    CPU generators' whatever the device)."""
    if str(device) == "cpu":
        return batch
    mv = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    feed = {k: mv(v) for k, v in batch.feed.items()}
    return FlowBatch(
        feed=feed,
        sigma=mv(batch.sigma),
        target=mv(batch.target),
        weights=mv(batch.weights),
        noise=mv(batch.noise),
        index=batch.index,
        encoded=batch.encoded,
    )


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
