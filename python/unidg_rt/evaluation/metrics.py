"""Evaluation metrics: pure functions over arrays (numpy only).

Images are uint8 ``[H, W, 3]`` or float ``[H, W, 3]`` in [0, 1]; distances are reported in
[0, 1] units (1 = black vs white), except :func:`background_error`, which is in 8-bit levels
so that "exactly 0" reads as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from unidg_rt.errors import InvalidInputError


def _unit(image, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"{name} must be [H, W, 3], got shape {arr.shape}")
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


def _region(region, shape: tuple[int, ...], name: str = "region") -> np.ndarray:
    reg = np.asarray(region)
    if reg.shape != shape[:2]:
        raise InvalidInputError(f"{name} must be [H, W] = {shape[:2]}, got {reg.shape}")
    return reg.astype(bool) if reg.dtype == bool else reg > 0.5


def presence_score(result, normal, region) -> float:
    """Defect presence: mean ``|result - normal|`` over the pixels of ``region`` and the three
    channels, in [0, 1] units (0 = nothing was drawn). NaN for an empty region."""
    a, b = _unit(result, "result"), _unit(normal, "normal")
    if a.shape != b.shape:
        raise InvalidInputError(f"result {a.shape} and normal {b.shape} differ in size")
    reg = _region(region, a.shape)
    if not reg.any():
        return float("nan")
    return float(np.abs(a - b)[reg].mean())


def presence_rate(scores: Sequence[float], threshold: float) -> float:
    """Fraction of ``scores`` strictly above ``threshold`` (NaN scores count as absent)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return float("nan")
    return float(np.mean(np.nan_to_num(s, nan=-np.inf) > threshold))


def background_error(result, normal, alpha) -> float:
    """Background preservation: max ``|result - normal|`` over pixels with ``alpha == 0``
    (outside the paste mask and its feather), in 8-bit levels. Must be exactly 0."""
    a, b = _unit(result, "result"), _unit(normal, "normal")
    if a.shape != b.shape:
        raise InvalidInputError(f"result {a.shape} and normal {b.shape} differ in size")
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != a.shape[:2]:
        raise InvalidInputError(f"alpha must be [H, W] = {a.shape[:2]}, got {alpha.shape}")
    outside = alpha == 0
    if not outside.any():
        return 0.0
    return float(np.abs(a - b)[outside].max() * 255.0)


def pairwise_diversity(images: Sequence, region) -> float:
    """Diversity across seeds: mean over all pairs of the mean ``|a - b|`` inside ``region``
    ([0, 1] units). 0 for fewer than two images (or identical ones)."""
    arrs = [_unit(im, f"images[{i}]") for i, im in enumerate(images)]
    if len(arrs) < 2:
        return 0.0
    if any(a.shape != arrs[0].shape for a in arrs):
        raise InvalidInputError("images must all have the same size")
    reg = _region(region, arrs[0].shape)
    if not reg.any():
        return float("nan")
    return float(np.mean([np.abs(a - b)[reg].mean() for a, b in combinations(arrs, 2)]))


def consistency(predicted: Sequence[str], intended: Sequence[str]) -> float:
    """Category consistency: fraction of predictions equal to the intended category."""
    if len(predicted) != len(intended):
        raise InvalidInputError(f"{len(predicted)} predictions for {len(intended)} intended categories")
    if not predicted:
        return float("nan")
    return float(np.mean([p == t for p, t in zip(predicted, intended, strict=True)]))


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and (unbiased) covariance ``[D, D]`` of features ``[N, D]``."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidInputError(f"feats must be [N, D] with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½)``: the Fréchet (2-Wasserstein)
    distance between two Gaussians, as in FID. Symmetric PSD square roots via ``eigh``, so no
    complex parts appear for singular covariances (few samples)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InvalidInputError(
            f"shapes mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape} do not match"
        )
    r1 = _sqrt_psd(s1)
    cross = _sqrt_psd(r1 @ s2 @ r1)
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))
    return max(d, 0.0)


def frechet_distance_features(a, b) -> float:
    """:func:`frechet_distance` between the Gaussian fits of two feature sets ``[N, D]``."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ---------------------------------------------------------------------- paired fidelity
# (a quantised pipeline's output against the fp32 one: evaluation.precision_report)
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask)
    m = m > 0 if m.dtype != bool else m
    if m.shape != tuple(shape[:2]):
        raise InvalidInputError(f"mask {m.shape} does not match the image {shape[:2]}")
    return m


def masked_psnr(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float = 1.0, cap: float = 100.0
) -> float:
    """PSNR (dB) over the pixels where ``mask`` is set (all channels); ``cap`` for identical pixels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = _mask(mask, a.shape)
    if not m.any():
        raise InvalidInputError("masked_psnr: the mask is empty")
    mse = float(np.mean((a[m] - b[m]) ** 2))
    return cap if mse == 0 else min(cap, 10 * math.log10(data_range**2 / mse))


def _gaussian_window(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable filter of ``x [H, W]`` with symmetric padding (same size out)."""
    r = len(w) // 2
    h, wd = x.shape
    xp = np.pad(x, ((r, r), (0, 0)), mode="symmetric")
    y = sum(w[k] * xp[k : k + h] for k in range(len(w)))
    yp = np.pad(y, ((0, 0), (r, r)), mode="symmetric")
    return sum(w[k] * yp[:, k : k + wd] for k in range(len(w)))


def ssim_map(
    a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5, radius: int = 5
) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian 11×11 window, σ = 1.5, K1 = 0.01, K2 = 0.03),
    averaged over channels for ``[H, W, C]`` inputs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise InvalidInputError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return np.mean(
            [ssim_map(a[..., c], b[..., c], data_range, sigma, radius) for c in range(a.shape[2])], axis=0
        )
    w = _gaussian_window(sigma, radius)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _blur(a, w), _blur(b, w)
    var_a = _blur(a * a, w) - mu_a**2
    var_b = _blur(b * b, w) - mu_b**2
    cov = _blur(a * b, w) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float = 1.0) -> float:
    """Mean of the SSIM map over the pixels where ``mask`` is set (windows see the context)."""
    m = _mask(mask, np.shape(a))
    if not m.any():
        raise InvalidInputError("masked_ssim: the mask is empty")
    return float(ssim_map(a, b, data_range)[m].mean())
