"""Features and the defect classifier: determinism, accuracy above chance, caching."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.evaluation import (
    FEATURE_NAMES,
    DefectClassifier,
    defect_features,
    fit_classifier,
    load_or_train,
)
from unidg_rt.evaluation.classifier import real_defect_features


def test_features_are_deterministic_finite_and_zero_change_is_flat():
    from unidg_rt.data import generate_quadruplet

    q = generate_quadruplet(7, category="scratch", size=64)
    region = q.mask.copy()
    f1 = defect_features(q.abnormal, q.normal, region)
    f2 = defect_features(q.abnormal.copy(), q.normal.copy(), region)
    assert f1.shape == (len(FEATURE_NAMES),)
    assert np.isfinite(f1).all()
    np.testing.assert_array_equal(f1, f2)
    f0 = defect_features(q.normal, q.normal, region)  # no change at all
    assert not np.array_equal(f0, f1)
    assert f0[FEATURE_NAMES.index("d_abs_mean")] == 0.0


def test_classifier_is_deterministic_and_well_above_chance(tiny_classifier):
    clf = tiny_classifier
    chance = 1 / len(clf.categories)
    assert clf.meta["test_accuracy"] >= chance + 0.3, clf.meta
    assert clf.meta["test_accuracy_crisp"] >= chance + 0.3, clf.meta
    x, y = real_defect_features(clf.categories, 4, 9_000_000, gen_size=None)
    again = fit_classifier(
        *real_defect_features(clf.categories, 12, 2_000_000, gen_size=(64, 64)), clf.categories
    )
    np.testing.assert_array_equal(again.weight, clf.weight)
    np.testing.assert_array_equal(again.logits(x), clf.logits(x))
    assert set(clf.predict(x)) <= set(clf.categories)
    assert clf.embed(x).shape == (len(x), clf.pca.shape[1])


def test_save_load_roundtrip_and_cache(tmp_path, tiny_classifier, monkeypatch):
    path = tiny_classifier.save(tmp_path / "c.npz")
    back = DefectClassifier.load(path)
    assert back.categories == tiny_classifier.categories
    np.testing.assert_array_equal(back.weight, tiny_classifier.weight)
    assert back.meta["test_accuracy"] == tiny_classifier.meta["test_accuracy"]

    import unidg_rt.evaluation.classifier as C

    calls = []
    monkeypatch.setattr(C, "train_classifier", lambda cats, **kw: calls.append(kw) or tiny_classifier)
    first = load_or_train(tmp_path / "cache", tiny_classifier.categories, n_train=12, n_test=6)
    second = load_or_train(tmp_path / "cache", tiny_classifier.categories, n_train=12, n_test=6)
    assert len(calls) == 1  # the second call read the cached file
    np.testing.assert_array_equal(first.weight, second.weight)
    assert len(list((tmp_path / "cache").glob("defect-classifier-*.npz"))) == 1


def test_fit_rejects_bad_shapes():
    from unidg_rt.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        fit_classifier(np.zeros((4, 3)), np.zeros(4, int), ["a", "b"])
