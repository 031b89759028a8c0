"""A small defect-category classifier for the "category consistency" metric. numpy only.

Multinomial logistic regression on the z-scored hand-crafted change features of
:mod:`unidg_rt.evaluation.features`. Trained on *real* procedural defects
(``generate_quadruplet``) of the evaluated categories, each seen twice: as drawn, and through
the pipeline's geometry at its generation size (:func:`~unidg_rt.evaluation.cases.paste_like_pipeline`:
crop → resize → resize back → paste), because generated defects always come back that way.
Seeds: :data:`CLASSIFIER_TRAIN_SEED` + i (train), :data:`CLASSIFIER_TEST_SEED` + i (held-out
test), disjoint from the evaluation cases (``EVAL_SEED_BASE``) and from training data (< 10**6).

Deterministic: same categories + settings + data generator → same weights, same accuracy.
Training takes ~15-30 s on one core; :func:`load_or_train` caches the result as ``.npz``
keyed by a fingerprint of the settings *and of the data generator's and feature code's
source*, so editing the procedural generator retrains it instead of reusing a stale file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from unidg_rt.artifacts.io import atomic_path
from unidg_rt.crops import dilate_mask
from unidg_rt.errors import InvalidInputError, WeightsError
from unidg_rt.evaluation.cases import EVAL_IMAGE_SIZE, REGION_DILATE, paste_like_pipeline
from unidg_rt.evaluation.features import NUM_FEATURES, defect_features

logger = logging.getLogger(__name__)

CLASSIFIER_TRAIN_SEED = 2_000_000  #: classifier training defects: seeds 2_000_000 + i
CLASSIFIER_TEST_SEED = 3_000_000  #: classifier held-out defects: seeds 3_000_000 + i
FORMAT = "unidg-defect-classifier/1"
PCA_DIM = 8  #: dimension of the feature space the Fréchet distance is computed in


@dataclass
class DefectClassifier:
    """z-score → linear → softmax; ``pca`` spans the z-scored features (Fréchet distance)."""

    categories: tuple[str, ...]
    mean: np.ndarray  # [F]
    std: np.ndarray  # [F]
    weight: np.ndarray  # [F, K]
    bias: np.ndarray  # [K]
    pca: np.ndarray  # [F, PCA_DIM]
    meta: dict = field(default_factory=dict)

    def standardise(self, feats: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(feats).astype(np.float64) - self.mean) / self.std  # [B, F]

    def logits(self, feats: np.ndarray) -> np.ndarray:
        """``[B, K]`` from raw features ``[B, F]``."""
        return self.standardise(feats) @ self.weight + self.bias

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        return _softmax(self.logits(feats))

    def predict(self, feats: np.ndarray) -> list[str]:
        return [self.categories[i] for i in np.argmax(self.logits(feats), axis=1)]

    def embed(self, feats: np.ndarray) -> np.ndarray:
        """``[B, PCA_DIM]`` coordinates for the Fréchet distance."""
        return self.standardise(feats) @ self.pca

    @property
    def accuracy(self) -> float | None:
        """Held-out accuracy on real defects at the generation resolution (None if untested)."""
        return self.meta.get("test_accuracy")

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        header = json.dumps({"format": FORMAT, "categories": list(self.categories), "meta": self.meta})
        arrays = {
            "mean": self.mean,
            "std": self.std,
            "weight": self.weight,
            "bias": self.bias,
            "pca": self.pca,
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, **arrays, header=np.array(header))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DefectClassifier:
        path = Path(path)
        try:
            with np.load(path) as z:
                header = json.loads(str(z["header"]))
                arrays = {k: z[k] for k in ("mean", "std", "weight", "bias", "pca")}
        except (OSError, KeyError, ValueError) as exc:
            raise WeightsError(
                f"defect classifier {path} is unreadable ({exc}); delete it to retrain"
            ) from exc
        if header.get("format") != FORMAT:
            raise WeightsError(f"{path} is not a {FORMAT} file; delete it to retrain")
        return cls(categories=tuple(header["categories"]), meta=header.get("meta", {}), **arrays)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- data
def defect_region(mask: np.ndarray) -> np.ndarray:
    """Region the features of a real defect are computed in: the mask dilated like the
    pipeline's paste mask, so real and generated defects are cropped alike."""
    return dilate_mask(mask, *REGION_DILATE)


def real_defect_features(
    categories: Sequence[str],
    n_per_class: int,
    seed_base: int,
    size: int = EVAL_IMAGE_SIZE,
    gen_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of procedural defects: item ``i`` of category ``k`` is
    ``generate_quadruplet(seed_base + k * n + i, category)``. Without ``gen_size``: ``[K*n, F]``
    as drawn; with it: ``[2*K*n, F]``, as drawn then through the pipeline geometry at that size."""
    from unidg_rt.data import generate_quadruplet

    crisp, piped, labels = [], [], []
    for k, cat in enumerate(categories):
        for i in range(n_per_class):
            q = generate_quadruplet(seed_base + k * n_per_class + i, category=cat, size=size)
            crisp.append(defect_features(q.abnormal, q.normal, defect_region(q.mask)))
            if gen_size is not None:
                res, alpha = paste_like_pipeline(q.normal, q.abnormal, q.mask, *gen_size)
                piped.append(defect_features(res, q.normal, alpha >= 1.0))
            labels.append(k)
    y = np.asarray(labels, dtype=np.int64)
    x = np.stack(crisp + piped).astype(np.float64)
    return x, (np.concatenate([y, y]) if piped else y)


# ---------------------------------------------------------------------- training
def fit_classifier(
    feats: np.ndarray,
    labels: np.ndarray,
    categories: Sequence[str],
    *,
    l2: float = 1e-3,
    iterations: int = 500,
    lr: float = 0.05,
) -> DefectClassifier:
    """Full-batch Adam on softmax cross-entropy + L2 from zero weights: convex, deterministic."""
    k = len(categories)
    if feats.ndim != 2 or feats.shape[1] != NUM_FEATURES or len(labels) != len(feats):
        raise InvalidInputError(f"feats must be [N, {NUM_FEATURES}] with one label per row")
    if k < 2 or labels.min() < 0 or labels.max() >= k:
        raise InvalidInputError("need >= 2 categories and labels in [0, K)")
    mean = feats.mean(axis=0)
    std = feats.std(axis=0) + 1e-6
    x = (feats - mean) / std  # [N, F]
    y = np.eye(k)[labels]  # [N, K]
    w, b = np.zeros((x.shape[1], k)), np.zeros(k)
    m, v = [np.zeros_like(w), np.zeros_like(b)], [np.zeros_like(w), np.zeros_like(b)]
    b1, b2 = 0.9, 0.999
    for t in range(1, iterations + 1):
        g = (_softmax(x @ w + b) - y) / len(x)  # [N, K]
        for i, (param, grad) in enumerate(((w, x.T @ g + l2 * w), (b, g.sum(axis=0)))):
            m[i] = b1 * m[i] + (1 - b1) * grad
            v[i] = b2 * v[i] + (1 - b2) * grad**2
            param -= lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + 1e-8)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    pca = vt[:PCA_DIM].T  # [F, PCA_DIM]
    pca = pca * np.sign(pca[np.argmax(np.abs(pca), axis=0), np.arange(pca.shape[1])])  # fixed signs
    train_acc = float((np.argmax(x @ w + b, axis=1) == labels).mean())
    return DefectClassifier(tuple(categories), mean, std, w, b, pca, {"train_accuracy": train_acc})


def accuracy(clf: DefectClassifier, feats: np.ndarray, labels: np.ndarray) -> float:
    return float((np.argmax(clf.logits(feats), axis=1) == labels).mean())


def train_classifier(
    categories: Sequence[str],
    *,
    gen_size: tuple[int, int] | None = (64, 64),
    n_train: int = 60,
    n_test: int = 25,
    size: int = EVAL_IMAGE_SIZE,
) -> DefectClassifier:
    """Train on ``n_train`` procedural defects per category; ``meta`` records the held-out
    accuracy on ``n_test`` more per category: ``test_accuracy`` (at the generation resolution
    ``gen_size`` when given — the number that matters for generated images),
    ``test_accuracy_crisp`` (as drawn), ``per_category``, ``confusion``, ``chance``."""
    cats = canonical_categories(categories)
    gen = tuple(int(s) for s in gen_size) if gen_size is not None else None
    t0 = time.perf_counter()
    x_tr, y_tr = real_defect_features(cats, n_train, CLASSIFIER_TRAIN_SEED, size, gen)
    x_te, y_te = real_defect_features(cats, n_test, CLASSIFIER_TEST_SEED, size, gen)
    clf = fit_classifier(x_tr, y_tr, cats)
    n = len(y_te) // (2 if gen else 1)
    pred = np.argmax(clf.logits(x_te), axis=1)
    main = slice(n, None) if gen else slice(None)  # the pipeline-resolution half when there is one
    conf = np.zeros((len(cats), len(cats)), dtype=int)
    np.add.at(conf, (y_te[main], pred[main]), 1)
    clf.meta.update(
        test_accuracy=float((pred[main] == y_te[main]).mean()),
        test_accuracy_crisp=float((pred[:n] == y_te[:n]).mean()),
        chance=1.0 / len(cats),
        per_category={c: float(conf[i, i] / max(conf[i].sum(), 1)) for i, c in enumerate(cats)},
        confusion=conf.tolist(),
        gen_size=list(gen) if gen else None,
        n_train=n_train,
        n_test=n_test,
        size=size,
        train_s=round(time.perf_counter() - t0, 2),
        fingerprint=fingerprint(cats, gen, n_train, n_test, size),
    )
    logger.info(
        "defect classifier: %d categories, held-out accuracy %.3f at %s (%.3f as drawn; chance %.3f), %.1f s",
        len(cats),
        clf.meta["test_accuracy"],
        gen,
        clf.meta["test_accuracy_crisp"],
        clf.meta["chance"],
        clf.meta["train_s"],
    )
    return clf


def canonical_categories(categories: Sequence[str]) -> tuple[str, ...]:
    """Vocabulary names, deduplicated, order kept."""
    from unidg_rt.data import get_category

    cats = tuple(dict.fromkeys(get_category(c).name for c in categories))
    if len(cats) < 2:
        raise InvalidInputError(
            f"categories={list(categories)!r}: the classifier needs at least 2 categories"
        )
    return cats


def fingerprint(categories: Sequence[str], gen_size, n_train: int, n_test: int, size: int) -> str:
    """Hash of the settings + the source of the data generator and of the feature code."""
    h = hashlib.sha256(json.dumps([FORMAT, list(categories), gen_size, n_train, n_test, size]).encode())
    sources = [e for e in resources.files("unidg_rt.data").iterdir() if e.name.endswith((".py", ".json"))]
    sources += [
        resources.files("unidg_rt.evaluation") / n for n in ("features.py", "classifier.py", "cases.py")
    ]
    for entry in sorted(sources, key=lambda e: e.name):
        h.update(entry.name.encode())
        h.update(entry.read_bytes())
    return h.hexdigest()[:16]


def load_or_train(
    cache_dir: str | Path | None,
    categories: Sequence[str],
    *,
    gen_size: tuple[int, int] | None = (64, 64),
    n_train: int = 60,
    n_test: int = 25,
    size: int = EVAL_IMAGE_SIZE,
) -> DefectClassifier:
    """The classifier cached in ``cache_dir`` for these settings, else a freshly trained one
    (saved there when ``cache_dir`` is not None)."""
    cats = canonical_categories(categories)
    gen = tuple(int(s) for s in gen_size) if gen_size is not None else None
    key = fingerprint(cats, gen, n_train, n_test, size)
    path = Path(cache_dir) / f"defect-classifier-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            clf = DefectClassifier.load(path)
            if clf.categories == cats:
                logger.info("defect classifier loaded from %s", path)
                return clf
        except WeightsError as exc:
            logger.warning("%s; retraining", exc)
    clf = train_classifier(cats, gen_size=gen, n_train=n_train, n_test=n_test, size=size)
    if path is not None:
        clf.save(path)
    return clf
