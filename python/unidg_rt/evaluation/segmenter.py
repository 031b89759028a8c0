"""The downstream detector: a tiny supervised defect segmenter (a 4-level U-Net, ~64 k
parameters at width 8), its CPU training loop, and the ranking metrics it is scored with
(average precision and ROC AUC, numpy, no sklearn).

Used by :mod:`unidg_rt.evaluation.downstream`; torch is imported lazily so the evaluation
package stays importable without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unidg_rt.errors import InvalidInputError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- metrics
def _ranking_inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise InvalidInputError(
            f"scores ({s.size}) and labels ({y.size}) must have the same number of entries"
        )
    if not np.isfinite(s).all():
        raise InvalidInputError("scores must be finite; check the model output for NaN/inf")
    if y.all() or not y.any():
        raise InvalidInputError("labels need both positives and negatives to rank")
    return s, y


def average_precision(scores, labels) -> float:
    """Area under the precision-recall curve as a step sum, ``Σ (R_n − R_{n−1}) P_n`` over
    the distinct score thresholds (ties share a threshold) — sklearn's definition."""
    s, y = _ranking_inputs(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tps = np.cumsum(y, dtype=np.int64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp, seen = tps[last], last + 1
    precision = tp / seen
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2
    (Mann–Whitney U with average ranks)."""
    s, y = _ranking_inputs(scores, labels)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first entry
    ranks = (first + (counts + 1) / 2.0)[inverse]  # average 1-based ranks
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def image_scores(maps: np.ndarray, topk: int) -> np.ndarray:
    """Image anomaly score = mean of the ``topk`` highest pixel scores of each map ``[N, H, W]``."""
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    k = int(min(max(1, topk), flat.shape[1]))
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


# ---------------------------------------------------------------------------- model
def build_unet(width: int = 8):
    """A tiny U-Net: full-resolution stem, three stride-2 stages, nearest-upsampling decoder
    with skips, 1-channel logits at the input resolution (sides must be multiples of 8)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv(i: int, o: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    c = int(width)

    class TinyUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e1 = conv(3, c)
            self.e2 = nn.Sequential(conv(c, 2 * c, 2), conv(2 * c, 2 * c))
            self.e3 = nn.Sequential(conv(2 * c, 4 * c, 2), conv(4 * c, 4 * c))
            self.e4 = nn.Sequential(conv(4 * c, 4 * c, 2), conv(4 * c, 4 * c))
            self.d3, self.d2, self.d1 = conv(8 * c, 4 * c), conv(6 * c, 2 * c), conv(3 * c, c)
            self.head = nn.Conv2d(c, 1, 1)

        def forward(self, x):  # [B, 3, H, W] in [-1, 1] -> logits [B, 1, H, W]
            a = self.e1(x)
            b = self.e2(a)
            m = self.e3(b)
            d = self.e4(m)
            m = self.d3(torch.cat([F.interpolate(d, scale_factor=2.0), m], 1))
            b = self.d2(torch.cat([F.interpolate(m, scale_factor=2.0), b], 1))
            a = self.d1(torch.cat([F.interpolate(b, scale_factor=2.0), a], 1))
            return self.head(a)

    return TinyUNet()


@dataclass
class SegmenterConfig:
    """Training settings of :func:`train_segmenter`."""

    steps: int = 800
    batch_size: int = 8
    lr: float = 2e-3
    width: int = 8
    normal_share: float = 0.25  #: share of each batch drawn from the clean normal images
    crop: int | None = 64  #: train on random crops of this side (None: whole images); predict on whole images
    focus: float = 0.5  #: share of anomalous crops placed to contain a defect pixel


def _crop_box(mask, size: int, crop: int, focus: float, gen: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``crop`` window, around a random mask pixel with probability ``focus``."""
    if mask is not None and gen.random() < focus:
        ys, xs = np.nonzero(mask)
        if ys.size:
            k = int(gen.integers(ys.size))
            y0 = int(np.clip(ys[k] - gen.integers(crop), 0, size - crop))
            x0 = int(np.clip(xs[k] - gen.integers(crop), 0, size - crop))
            return y0, x0
    return int(gen.integers(size - crop + 1)), int(gen.integers(size - crop + 1))


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    normals: np.ndarray,
    seed: int,
    config: SegmenterConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """Train :func:`build_unet` on anomalous ``images`` uint8 ``[N, H, W, 3]`` with ``masks``
    bool ``[N, H, W]`` and clean ``normals`` uint8 ``[M, H, W, 3]`` (label 0 everywhere).
    Loss: BCE + soft Dice; Adam with cosine decay; random rot90/flip per batch. The init and
    the batch order depend on ``seed`` only, so two anomaly sources trained with the same seed
    see the same schedule."""
    import torch
    from torch.nn import functional as F

    cfg = config or SegmenterConfig()
    if images.shape[0] != masks.shape[0] or images.shape[:3] != masks.shape or len(images) == 0:
        raise InvalidInputError(
            f"images {images.shape} and masks {masks.shape} must be [N, H, W, 3] / [N, H, W], N ≥ 1"
        )
    if images.shape[1] % 8 or images.shape[2] % 8:
        raise InvalidInputError(f"image sides {images.shape[1:3]} must be multiples of 8; use size=128")
    side = images.shape[1]
    crop = side if cfg.crop is None or cfg.crop >= min(images.shape[1:3]) else int(cfg.crop)
    if crop % 8 or images.shape[1] != images.shape[2]:
        raise InvalidInputError(
            f"crop={cfg.crop} must be a multiple of 8 and images square; got {images.shape[1:3]}"
        )
    torch.manual_seed(seed)
    gen = np.random.default_rng([seed, 17])
    model = build_unet(cfg.width)
    x_syn, y_syn = _to_tensor(images), torch.from_numpy(masks[:, None].astype(np.float32))
    x_norm = _to_tensor(normals)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
    model.train()
    for step in range(cfg.steps):
        clean = gen.random(cfg.batch_size) < cfg.normal_share
        xs, ys = [], []
        for is_clean in clean:
            if is_clean:
                y0, x0 = _crop_box(None, side, crop, 0.0, gen)
                xs.append(x_norm[int(gen.integers(len(x_norm))), :, y0 : y0 + crop, x0 : x0 + crop])
                ys.append(torch.zeros((1, crop, crop)))
            else:
                j = int(gen.integers(len(x_syn)))
                y0, x0 = _crop_box(masks[j], side, crop, cfg.focus, gen)
                xs.append(x_syn[j, :, y0 : y0 + crop, x0 : x0 + crop])
                ys.append(y_syn[j, :, y0 : y0 + crop, x0 : x0 + crop])
        x, y = torch.stack(xs), torch.stack(ys)
        k = int(gen.integers(4))
        x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))
        if gen.random() < 0.5:
            x, y = x.flip(3), y.flip(3)
        logits = model(x)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, cfg.steps)
        if step == cfg.steps - 1 or step % 50 == 0:
            logger.debug("segmenter step %d/%d loss %.4f", step + 1, cfg.steps, loss.item())
    model.eval()
    return model


def predict_maps(model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Pixel anomaly probabilities float32 ``[N, H, W]`` of uint8 ``images [N, H, W, 3]``."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(torch.sigmoid(model(_to_tensor(images[i : i + batch_size])))[:, 0].numpy())
    return np.concatenate(out).astype(np.float32)
