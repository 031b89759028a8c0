"""The precision-vs-fp32 report's metric helpers (numpy only); the report on quantised
pipelines runs in tests/quant/test_quality.py (it needs the quantisation fixtures)."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.evaluation.precision_report import cosine, masked_psnr, masked_ssim, ssim_map


def test_metric_helpers():
    rng = np.random.default_rng(0)
    a = rng.random((24, 20, 3))
    mask = np.zeros((24, 20), bool)
    mask[5:15, 4:12] = True
    assert masked_ssim(a, a, mask) == pytest.approx(1.0)
    assert masked_psnr(a, a, mask) == 100.0
    b = a.copy()
    b[~mask] = 0  # outside the mask does not count for PSNR
    assert masked_psnr(a, b, mask) == 100.0
    noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 1) for s in (0.01, 0.05, 0.2)]
    ssims = [masked_ssim(a, n, mask) for n in noisy]
    psnrs = [masked_psnr(a, n, mask) for n in noisy]
    assert ssims == sorted(ssims, reverse=True) and psnrs == sorted(psnrs, reverse=True)
    assert masked_ssim(a, noisy[1], mask) == pytest.approx(masked_ssim(noisy[1], a, mask))
    # constant images: SSIM = luminance term (2xy + C1) / (x² + y² + C1)
    x, y, c1 = 0.3, 0.6, 0.01**2
    assert ssim_map(np.full((9, 9), x), np.full((9, 9), y)).mean() == pytest.approx(
        (2 * x * y + c1) / (x * x + y * y + c1)
    )
    assert masked_psnr(np.zeros((4, 4)), np.full((4, 4), 0.1), np.ones((4, 4), bool)) == pytest.approx(20.0)
    assert cosine(a, 2 * a) == pytest.approx(1.0) and cosine(a, -a) == pytest.approx(-1.0)
