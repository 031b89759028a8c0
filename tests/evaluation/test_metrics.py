"""Each metric on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation import metrics as M


def _img(value, shape=(8, 8)):
    return np.full((*shape, 3), value, dtype=np.uint8)


def test_presence_score_is_mean_abs_diff_inside_region():
    normal = _img(100)
    result = normal.copy()
    result[2:4, 2:4] = 151  # +51 levels = 0.2 on 4 pixels
    region = np.zeros((8, 8), bool)
    region[2:6, 2:6] = True  # 16 pixels, 4 changed
    assert M.presence_score(result, normal, region) == pytest.approx(0.2 * 4 / 16)
    assert M.presence_score(normal, normal, region) == 0.0
    assert math.isnan(M.presence_score(result, normal, np.zeros((8, 8), bool)))


def test_presence_score_float_and_uint8_agree():
    normal = _img(0)
    result = _img(255)
    region = np.ones((8, 8), bool)
    assert M.presence_score(result, normal, region) == pytest.approx(1.0)
    assert M.presence_score(result / 255.0, normal / 255.0, region) == pytest.approx(1.0)


def test_presence_rate_counts_strictly_above_and_nan_as_absent():
    assert M.presence_rate([0.0, 0.01, 0.03, 0.5], 0.02) == 0.5
    assert M.presence_rate([0.02, float("nan")], 0.02) == 0.0
    assert math.isnan(M.presence_rate([], 0.02))


def test_background_error_ignores_the_alpha_region_only():
    normal = _img(10)
    alpha = np.zeros((8, 8), np.float32)
    alpha[3:5, 3:5] = 0.5
    result = normal.copy()
    result[3:5, 3:5] = 200  # inside alpha > 0: not background
    assert M.background_error(result, normal, alpha) == 0.0
    result[0, 7, 1] = 13  # one channel of one background pixel, +3 levels
    assert M.background_error(result, normal, alpha) == pytest.approx(3.0)


def test_pairwise_diversity():
    region = np.zeros((8, 8), bool)
    region[:4] = True
    a, b, c = _img(0), _img(0), _img(0)
    b[:4] = 51  # 0.2 everywhere in region
    c[:4] = 102  # 0.4
    # pairs: (a,b)=0.2 (a,c)=0.4 (b,c)=0.2
    assert M.pairwise_diversity([a, b, c], region) == pytest.approx((0.2 + 0.4 + 0.2) / 3)
    assert M.pairwise_diversity([a], region) == 0.0
    assert M.pairwise_diversity([a, a.copy()], region) == 0.0
    b[4:] = 255  # outside the region: ignored
    assert M.pairwise_diversity([a, b], region) == pytest.approx(0.2)


def test_consistency():
    assert M.consistency(["hole", "scratch", "hole"], ["hole", "hole", "hole"]) == pytest.approx(2 / 3)
    with pytest.raises(InvalidInputError):
        M.consistency(["hole"], ["hole", "dirt"])


def test_frechet_distance_closed_forms():
    mu = np.zeros(3)
    eye = np.eye(3)
    assert M.frechet_distance(mu, eye, mu, eye) == pytest.approx(0.0, abs=1e-9)
    # shifted means: |Δμ|²
    assert M.frechet_distance(mu, eye, mu + [1, 2, 2], eye) == pytest.approx(9.0)
    # isotropic scales s1², s2²: d * (s1 - s2)²
    assert M.frechet_distance(mu, 4 * eye, mu, 9 * eye) == pytest.approx(3 * (2 - 3) ** 2)
    # singular covariances (few samples) stay real and non-negative
    sing = np.diag([1.0, 0.0, 0.0])
    assert M.frechet_distance(mu, sing, mu, eye) == pytest.approx(2.0)


def test_frechet_distance_features_is_zero_on_identical_sets_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    assert M.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-8)
    assert M.frechet_distance_features(x, x + 1.0) == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(InvalidInputError):
        M.gaussian_stats(x[:1])


def test_paired_fidelity_metrics():
    """cosine, masked PSNR and SSIM of the precision-vs-fp32 report."""
    rng = np.random.default_rng(0)
    a = rng.random((24, 20, 3))
    mask = np.zeros((24, 20), bool)
    mask[5:15, 4:12] = True
    assert M.masked_ssim(a, a, mask) == pytest.approx(1.0)
    assert M.masked_psnr(a, a, mask) == 100.0
    b = a.copy()
    b[~mask] = 0  # outside the mask does not count for PSNR
    assert M.masked_psnr(a, b, mask) == 100.0
    noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 1) for s in (0.01, 0.05, 0.2)]
    ssims = [M.masked_ssim(a, n, mask) for n in noisy]
    psnrs = [M.masked_psnr(a, n, mask) for n in noisy]
    assert ssims == sorted(ssims, reverse=True) and psnrs == sorted(psnrs, reverse=True)
    assert M.masked_ssim(a, noisy[1], mask) == pytest.approx(M.masked_ssim(noisy[1], a, mask))
    # constant images: SSIM = luminance term (2xy + C1) / (x² + y² + C1)
    x, y, c1 = 0.3, 0.6, 0.01**2
    assert M.ssim_map(np.full((9, 9), x), np.full((9, 9), y)).mean() == pytest.approx(
        (2 * x * y + c1) / (x * x + y * y + c1)
    )
    assert M.masked_psnr(np.zeros((4, 4)), np.full((4, 4), 0.1), np.ones((4, 4), bool)) == pytest.approx(20.0)
    assert M.cosine(a, 2 * a) == pytest.approx(1.0) and M.cosine(a, -a) == pytest.approx(-1.0)
