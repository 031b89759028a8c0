"""``unidg_rt.evaluation.downstream``: data splits, anomaly sources, an end-to-end quick run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation import downstream as D
from unidg_rt.evaluation.downstream_report import downstream_markdown


@pytest.fixture(scope="module")
def default_pipeline():
    from unidg_rt.runtime.pipeline import UniDGPipeline

    return UniDGPipeline.from_pretrained(None)  # the embedded default model


def test_seed_ranges_are_disjoint():
    from unidg_rt.evaluation.cases import EVAL_SEED_BASE
    from unidg_rt.evaluation.classifier import CLASSIFIER_TEST_SEED, CLASSIFIER_TRAIN_SEED

    cfg = D.DownstreamConfig(bank_per_category=10, train_images=99_999, seeds=3, test_images=400_000)
    bank = (D.BANK_SEED_BASE, D.BANK_SEED_BASE + 1000 * len(D.BANK_CATEGORIES) * cfg.bank_per_category)
    train = (D.TRAIN_SEED_BASE, D.TRAIN_SEED_BASE + 100_000 * cfg.seeds)
    test_defect = (D.TEST_DEFECT_SEED_BASE, D.TEST_DEFECT_SEED_BASE + cfg.test_images)
    test_normal = (D.TEST_NORMAL_SEED_BASE, D.TEST_NORMAL_SEED_BASE + cfg.test_images)
    ranges = sorted([bank, train, test_defect, test_normal])
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert max(EVAL_SEED_BASE, CLASSIFIER_TRAIN_SEED, CLASSIFIER_TEST_SEED) + 1_000_000 <= ranges[0][0]


def test_bank_is_fixed_visible_and_in_its_categories():
    cfg = D.DownstreamConfig(size=64, bank_per_category=2)
    bank, again = D.build_bank(cfg), D.build_bank(cfg)
    assert len(bank) == 2 * len(D.BANK_CATEGORIES)
    assert {q.category for q in bank} == set(D.BANK_CATEGORIES)
    assert {q.surface for q in bank} <= set(D.BANK_SURFACES)
    assert all(q.mask.mean() >= D.BANK_MIN_AREA for q in bank)
    for a, b in zip(bank, again, strict=True):
        np.testing.assert_array_equal(a.abnormal, b.abnormal)


def test_test_set_has_real_defects_of_bank_and_other_categories():
    cfg = D.DownstreamConfig(size=64, test_images=20)
    test = D.build_test_set(cfg)
    assert test["images"].shape == (40, 64, 64, 3) and test["masks"].shape == (40, 64, 64)
    assert test["labels"].sum() == 20 and set(test["split"]) == {"bank", "other", "normal"}
    assert all(test["masks"][i].any() for i in range(20))
    assert not test["masks"][20:].any()
    assert set(test["surface"][:20]) - set(D.BANK_SURFACES)  # defects on surfaces the bank lacks


@pytest.mark.parametrize("method", ["draem", "cutpaste", "procedural"])
def test_baseline_sources_change_only_their_masks(method):
    cfg = D.DownstreamConfig(size=64, train_images=4)
    normals, kinds = D.training_normals(0, cfg)
    images, masks, deltas = D.synthesize(method, normals, kinds, 0, cfg)
    assert images.shape == normals.shape and masks.shape == normals.shape[:3]
    assert all(m.any() for m in masks) and len(deltas) == 4
    for img, normal, mask in zip(images, normals, masks, strict=True):
        np.testing.assert_array_equal(img[~mask], normal[~mask])


def test_model_source_paints_into_transplanted_bank_masks(default_pipeline):
    cfg = D.DownstreamConfig.quick(train_images=2)
    normals, kinds = D.training_normals(0, cfg)
    bank = D.build_bank(cfg)
    images, masks, deltas = D.synthesize("unidg_rt", normals, kinds, 0, cfg, default_pipeline, bank)
    assert images.shape == normals.shape and images.dtype == np.uint8
    assert all(m.sum() in {q.mask.sum() for q in bank} for m in masks)  # a bank footprint, moved
    assert all(0.0 <= d <= 1.0 for d in deltas)
    with pytest.raises(InvalidInputError, match="pipeline"):
        D.synthesize("unidg_rt", normals, kinds, 0, cfg)


def test_paint_delta():
    normal = np.zeros((4, 4, 3), np.uint8)
    result = normal.copy()
    result[0, 0] = (51, 0, 0)
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    assert D.paint_delta(result, normal, mask) == pytest.approx(0.1)


def test_config_is_checked():
    with pytest.raises(InvalidInputError, match="size"):
        D.DownstreamConfig(size=60).check()
    with pytest.raises(InvalidInputError, match="seeds"):
        D.DownstreamConfig(seeds=0).check()
    with pytest.raises(InvalidInputError, match="method"):
        D.synthesize("gan", np.zeros((1, 8, 8, 3), np.uint8), ["wood"], 0, D.DownstreamConfig())


def test_quick_run_end_to_end(default_pipeline):
    """Structure and finite metrics in [0, 1]; the values themselves are what the run measures."""
    report = D.run_downstream(default_pipeline, D.DownstreamConfig.quick(seeds=2))
    assert set(report.methods) == set(D.METHODS)
    for metrics in report.methods.values():
        for key in (
            "pixel_ap",
            "image_auroc",
            "pixel_ap_bank_categories",
            "pixel_ap_other_categories",
            "pixel_ap_other_surfaces",
        ):
            summary = metrics[key]
            assert len(summary["per_seed"]) == 2
            assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in summary["per_seed"])
            assert summary["min"] <= summary["mean"] <= summary["max"] and summary["std"] >= 0
    assert set(report.paint["near_empty_share"]) == set(D.METHODS)
    assert report.wall_s > 0 and report.settings["model"] == "embedded default"
    md = downstream_markdown(report)
    assert md.startswith("| training defects | pixel AP | image AUROC |")
    assert all(label in md for label in D.METHOD_LABELS.values())
    assert "same procedural family" in md and "Chance pixel AP" in md
    assert 0 < report.settings["test"]["chance_pixel_ap"]["all"] < 1
