"""Training levers of issue 18 used by the SFT stage, each opt-in through :class:`SFTRecipe`:

- :class:`EMA` — exponential moving average of the weights (``sft.ema``);
- :class:`FreshStream` — a latent bank whose oldest pair is replaced by a freshly generated and
  encoded one every ``sft.fresh_every`` steps (``data.num_pairs`` pairs in the ring);
- :func:`heldout_latents` / :func:`heldout_losses` — a fixed held-out set of *independent* pairs
  (disjoint seed stream, no copy pairs) and its reference- / text-mode flow loss, the learning
  curve of ``sft.eval_every``;
- :func:`warm_start` — transformer + category table from an existing checkpoint (``sft.init_from``).

Everything is deterministic in the run seed: fresh pair ``j`` is pair ``num_pairs + j`` of the
same :func:`~unidg_rt.train.dataset.pair_rows` stream, so a resumed run (the bank travels in the
checkpoint) draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from unidg_rt.train.dataset import LatentSet, encode_diptych_set, pair_rows, rows_to_set, training_categories
from unidg_rt.train.recipe import DataRecipe, SFTRecipe

logger = logging.getLogger(__name__)
HELDOUT_PAIR_OFFSET = 1 << 41  #: held-out pairs: indices from here (training uses < 2**40)


class EMA:
    """``shadow ← decay · shadow + (1 - decay) · param`` after every optimiser step."""

    def __init__(self, params, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"sft.ema={decay!r} must be in (0, 1) (0 turns EMA off)")
        self.decay = float(decay)
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s)

    @contextlib.contextmanager
    def applied(self):
        """The parameters hold the EMA weights inside the block (restored after)."""
        saved = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, saved, strict=True):
                    p.copy_(v)

    def state_dict(self) -> list[torch.Tensor]:
        return [s.detach().cpu().clone() for s in self.shadow]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, v in zip(self.shadow, state, strict=True):
                s.copy_(v)


class FreshStream:
    """Replaces one pair (4 consecutive rows) of ``lat`` every ``every`` steps, in ring order."""

    def __init__(self, vae, data: DataRecipe, seed: int, every: int, num_pairs: int):
        self.vae, self.data, self.seed, self.every, self.num_pairs = (
            vae,
            data,
            seed,
            int(every),
            int(num_pairs),
        )
        self.cats = training_categories()

    def refresh(self, lat: LatentSet, step: int) -> bool:
        if self.every <= 0 or step == 0 or step % self.every:
            return False
        j = step // self.every - 1  # refresh number
        slot = j % self.num_pairs
        fresh = encode_diptych_set(
            self.vae, rows_to_set(pair_rows(self.data, self.seed, self.num_pairs + j, self.cats), self.cats)
        )
        rows = slice(4 * slot, 4 * slot + 4)
        for name in (
            "x0",
            "cond",
            "mask",
            "groups",
            "category",
            "text_mode",
            "defect",
            "reference",
            "reference_mask",
        ):
            dst = getattr(lat, name)
            if dst is not None:
                dst[rows] = getattr(fresh, name).to(dst.dtype)
        return True


def heldout_latents(vae, data: DataRecipe, seed: int, num_pairs: int, copies: bool = False) -> LatentSet:
    """Pairs from a stream disjoint from training's, encoded: independent pairs, or with
    ``copies`` copy pairs (every pair of a copyable category), whose reference-mode loss shows
    whether the model uses the reference (it falls below the independent pairs' if it copies)."""
    from unidg_rt.train.dataset import build_diptych_set

    dset = build_diptych_set(data, seed, num_pairs, start=HELDOUT_PAIR_OFFSET, copy_fraction=float(copies))
    return encode_diptych_set(vae, dset, data.encode_batch)


@torch.no_grad()
def heldout_losses(
    model,
    table,
    lat: LatentSet,
    recipe: SFTRecipe,
    seed: int,
    device="cpu",
    n_batches: int = 4,
    prefix: str = "heldout",
    modes: tuple[str, ...] = ("ref", "text"),
) -> dict[str, float]:
    """Flow loss on fixed batches of ``lat``: reference mode and text mode separately, full
    conditioning (the same draw every call, so the curve is comparable across steps and runs)."""
    from unidg_rt.train.common import step_rng
    from unidg_rt.train.flow import batch_to, predict, sft_flow_batch, weighted_mse

    out = {}
    for mode in modes:
        text = mode == "text"
        idx_all = lat.indices(text)
        vals = []
        for i in range(n_batches):
            rng, gen = step_rng(seed + 20_000 + int(text), "sft", i)
            idx = idx_all[rng.integers(0, len(idx_all), recipe.batch_size)]
            keep = torch.ones(len(idx), dtype=torch.bool)
            b = batch_to(sft_flow_batch(lat, idx, keep, table, gen, recipe), device)
            vals.append(float(weighted_mse(predict(model, b), b.target, b.weights).mean()))
        out[f"{prefix}_{mode}"] = round(float(np.mean(vals)), 5)
    return out


def warm_start(model, table, path: str | Path, categories: list[str]) -> None:
    """Load ``model`` (strict) from a UniDG checkpoint and ``table`` from the embeddings cache
    beside it (rows in ``categories`` order)."""
    from unidg_rt.embeddings import EmbeddingsCache
    from unidg_rt.models.loading import load_transformer

    path = Path(path)
    src = load_transformer(path, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    emb = path.parent / "embeddings.safetensors"
    if not emb.is_file():
        raise FileNotFoundError(
            f"sft.init_from={path}: no embeddings.safetensors beside it to warm-start the table"
        )
    e, p = EmbeddingsCache.load(emb).stack(categories)
    with torch.no_grad():
        table.embeds.copy_(torch.from_numpy(e))
        table.pooled.copy_(torch.from_numpy(p))
    logger.info("warm start from %s (+ %s)", path, emb.name)
