"""Evaluation of defect generation (issue 4, item 5): a held-out seeded procedural case set,
pure metrics, a small defect classifier, ``evaluate()`` comparing pipeline variants side by
side (SFT vs SFT+APO, later FP32 vs ONNX / INT8), and an examples grid. numpy + PIL only;
the pipeline brings its own backend.

Importing this package pulls in no optional dependency; ``evaluate`` and the grid need a
pipeline (``UniDGPipeline``) to run.
"""

from __future__ import annotations

from unidg_rt.evaluation.cases import (
    DEFAULT_CATEGORIES,
    EVAL_SEED_BASE,
    EvalCase,
    build_eval_set,
    default_categories,
    flat_fill,
    paste_like_pipeline,
)
from unidg_rt.evaluation.classifier import (
    CLASSIFIER_TEST_SEED,
    CLASSIFIER_TRAIN_SEED,
    DefectClassifier,
    fit_classifier,
    load_or_train,
    train_classifier,
)
from unidg_rt.evaluation.evaluator import evaluate
from unidg_rt.evaluation.features import FEATURE_NAMES, defect_features
from unidg_rt.evaluation.grid import grid_size, save_examples_grid
from unidg_rt.evaluation.metrics import (
    background_error,
    consistency,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
    pairwise_diversity,
    presence_rate,
    presence_score,
)
from unidg_rt.evaluation.report import EvalReport, report_markdown
from unidg_rt.evaluation.variants import Variant, default_variants

__all__ = [
    "CLASSIFIER_TEST_SEED",
    "CLASSIFIER_TRAIN_SEED",
    "DEFAULT_CATEGORIES",
    "EVAL_SEED_BASE",
    "FEATURE_NAMES",
    "DefectClassifier",
    "EvalCase",
    "EvalReport",
    "Variant",
    "background_error",
    "build_eval_set",
    "consistency",
    "default_categories",
    "default_variants",
    "defect_features",
    "evaluate",
    "fit_classifier",
    "flat_fill",
    "frechet_distance",
    "frechet_distance_features",
    "gaussian_stats",
    "grid_size",
    "load_or_train",
    "pairwise_diversity",
    "paste_like_pipeline",
    "presence_rate",
    "presence_score",
    "report_markdown",
    "save_examples_grid",
    "train_classifier",
]
