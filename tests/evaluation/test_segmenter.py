"""The downstream segmenter's metrics (hand-computed cases) and its training loop."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation.segmenter import (
    SegmenterConfig,
    average_precision,
    image_scores,
    predict_maps,
    roc_auc,
    train_segmenter,
)


def test_average_precision_hand_computed():
    # ranked: + - + -  -> precision at the two recall steps: 1/1, 2/3; AP = 0.5 * 1 + 0.5 * 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0.1, 0.2, 0.3], [0, 0, 1]) == pytest.approx(1.0)


def test_average_precision_ties_share_one_threshold():
    # all tied: one threshold, precision 2/4 at recall 1
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == pytest.approx(0.5)
    # tie between a positive and a negative at the top: precision 1/2 at recall 1/2, then 2/3
    assert average_precision([0.9, 0.9, 0.1], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_roc_auc_hand_computed():
    # positives {0.9, 0.7} vs negatives {0.8, 0.6}: 3 of 4 pairs ordered right
    assert roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts 1/2
    assert roc_auc([0.1, 0.9], [1, 0]) == pytest.approx(0.0)


def test_roc_auc_matches_pairwise_count_on_random_data():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(200), 2)  # many ties
    y = rng.random(200) < 0.3
    pos, neg = s[y][:, None], s[~y][None, :]
    expected = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert roc_auc(s, y) == pytest.approx(expected)


def test_metrics_reject_one_class_and_nan():
    with pytest.raises(InvalidInputError, match="positives and negatives"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(InvalidInputError, match="finite"):
        average_precision([np.nan, 0.2], [1, 0])


def test_image_scores_top_k_mean():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, :3] = [1.0, 0.5, 0.25]
    np.testing.assert_allclose(image_scores(maps, 2), [0.75, 0.0])
    np.testing.assert_allclose(image_scores(maps, 1), [1.0, 0.0])


def test_segmenter_learns_an_obvious_defect():
    """White squares on grey noise: a few dozen steps must rank their pixels first."""
    rng = np.random.default_rng(0)
    n, size = 8, 32
    normals = np.clip(rng.normal(120, 10, (n, size, size, 3)), 0, 255).astype(np.uint8)
    images, masks = normals.copy(), np.zeros((n, size, size), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + 8, x : x + 8] = True
        images[i][masks[i]] = 255
    model = train_segmenter(
        images, masks, normals, seed=0, config=SegmenterConfig(steps=40, batch_size=4, lr=1e-2)
    )
    maps = predict_maps(model, images)
    assert maps.shape == masks.shape and np.isfinite(maps).all()
    assert average_precision(maps, masks) > 0.8


def test_segmenter_rejects_bad_shapes():
    img = np.zeros((2, 30, 30, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="multiples of 8"):
        train_segmenter(img, np.zeros((2, 30, 30), bool), img, seed=0)
