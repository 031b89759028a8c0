"""``evaluate(pipeline, cases, variants=...)``: run every variant on every case and seed, score
the results, compare the variants side by side (issue 4, item 5).

A :class:`Variant` is just "which pipeline, which extra call arguments, which adapter
strengths", so the same function compares SFT vs SFT+APO today and FP32 vs ONNX Runtime vs
INT8 pipelines later (``Variant("INT8", pipeline=int8_pipe)``).

Next to the variants the report carries two model-free reference columns computed on the same
cases: ``real`` — the ground-truth procedural defect seen through the pipeline's geometry (a
perfect generator at this resolution; its consistency is the ceiling, its Fréchet distance the
noise floor at this sample size) — and ``flat_fill`` — the paste region filled with a flat
colour (what the classifier "recognises" from the mask geometry alone).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation import metrics as M
from unidg_rt.evaluation.cases import EvalCase, flat_fill, paste_like_pipeline
from unidg_rt.evaluation.classifier import DefectClassifier, load_or_train
from unidg_rt.evaluation.features import defect_features
from unidg_rt.evaluation.report import EvalReport
from unidg_rt.evaluation.variants import Variant, adapter_strengths, apply_adapter_scales, default_variants

logger = logging.getLogger(__name__)

FD_REAL_SEED = 4_000_000  #: independent real defects for the Fréchet-distance noise floor
PRESENCE_THRESHOLD = 0.02  #: ≈ 5 / 255 mean change inside the target mask counts as "a defect is there"
#: metric → True when higher is better, None: must be exactly 0, "info": no better/worse
#: (a larger mean change is not a better defect; the rate above the threshold is the verdict)
DIRECTIONS = {
    "presence_mean": "info",
    "presence_rate": True,
    "background_max_error": None,
    "consistency": True,
    "diversity": True,
    "fd": False,
}


# ---------------------------------------------------------------------- scoring helpers
def _score(clf: DefectClassifier, result: np.ndarray, case: EvalCase, region: np.ndarray, alpha) -> dict:
    feats = defect_features(result, case.image, region)
    proba = clf.predict_proba(feats)[0]
    k = clf.categories.index(case.category)
    return {
        "presence": M.presence_score(result, case.image, case.mask),
        "background": M.background_error(result, case.image, alpha),
        "predicted": clf.categories[int(np.argmax(proba))],
        "p_intended": float(proba[k]),
        "_feats": feats,
    }


def _summarise(rows: list[dict], cases: Sequence[EvalCase], clf, ref_embed, threshold) -> dict[str, Any]:
    """Aggregate per-image rows (each with ``case`` index) into the variant's metrics."""
    intended = [cases[r["case"]].category for r in rows]
    predicted = [r["predicted"] for r in rows]
    correct = np.array([p == t for p, t in zip(predicted, intended, strict=True)], dtype=np.float64)
    out: dict[str, Any] = {
        "images": len(rows),
        "presence_mean": float(np.nanmean([r["presence"] for r in rows])),
        "presence_rate": M.presence_rate([r["presence"] for r in rows], threshold),
        "background_max_error": float(max(r["background"] for r in rows)),
        "consistency": M.consistency(predicted, intended),
        "consistency_se": float(np.sqrt(correct.mean() * (1 - correct.mean()) / len(correct))),
        "consistency_prob": float(np.mean([r["p_intended"] for r in rows])),
    }
    for key, groups in (("by_category", lambda c: c.category), ("by_mode", lambda c: c.mode)):
        acc: dict[str, list[float]] = {}
        for r, ok in zip(rows, correct, strict=True):
            acc.setdefault(groups(cases[r["case"]]), []).append(ok)
        out[f"consistency_{key}"] = {g: float(np.mean(v)) for g, v in acc.items()}
    # what the classifier reads the results as, most frequent first: a model that paints the same
    # blob for every request shows up as one or two categories taking most of the share
    counts = sorted(Counter(predicted).items(), key=lambda kv: (-kv[1], kv[0]))
    out["predicted_share"] = {c: n / len(rows) for c, n in counts}
    feats = np.stack([r["_feats"] for r in rows])
    out["fd"] = M.frechet_distance_features(clf.embed(feats), ref_embed) if len(rows) >= 2 else float("nan")
    return out


def _compare(variants: dict[str, dict], per_image: dict[str, list[dict]]) -> dict[str, Any]:
    """Last variant vs first: per metric better / same / worse, with the paired noise on
    consistency (± 2 standard errors of the per-image difference)."""
    names = list(variants)
    if len(names) < 2:
        return {}
    a, b = names[0], names[-1]
    out: dict[str, Any] = {"baseline": a, "candidate": b, "metrics": {}}
    for metric, higher in DIRECTIONS.items():
        va, vb = variants[a][metric], variants[b][metric]
        if higher is None:
            verdict = "ok" if va == 0 and vb == 0 else "FAIL"
        elif higher == "info":
            verdict = ""
        elif not (math.isfinite(va) and math.isfinite(vb)) or abs(vb - va) <= 1e-9 * max(1.0, abs(va)):
            verdict = "same"
        else:
            verdict = "better" if (vb > va) == higher else "worse"
        out["metrics"][metric] = {"delta": vb - va, "verdict": verdict}
    ca = np.array([r["predicted"] == r["intended"] for r in per_image[a]], dtype=np.float64)
    cb = np.array([r["predicted"] == r["intended"] for r in per_image[b]], dtype=np.float64)
    if len(ca) == len(cb) and len(ca) > 1:
        noise = 2 * float((cb - ca).std(ddof=1) / np.sqrt(len(ca)))
        out["metrics"]["consistency"]["noise_2se"] = noise
        if (
            out["metrics"]["consistency"]["verdict"] in ("better", "worse")
            and abs(cb.mean() - ca.mean()) < noise
        ):
            out["metrics"]["consistency"]["verdict"] += " (within noise)"
    return out


# ---------------------------------------------------------------------- main entry
def evaluate(
    pipeline,
    cases: Sequence[EvalCase],
    variants: Sequence[Variant] | None = None,
    *,
    num_seeds: int = 2,
    num_inference_steps: int | None = None,
    classifier: DefectClassifier | None = None,
    classifier_cache: str | Path | None = None,
    presence_threshold: float = PRESENCE_THRESHOLD,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalReport:
    """Generate ``num_seeds`` images per case and variant (seeds ``case.seed + k``, the same for
    every variant: paired comparison) and score them.

    Metrics per variant (see :mod:`unidg_rt.evaluation.metrics`): ``presence_mean`` /
    ``presence_rate`` (mean |result - normal| inside the case's target mask, fraction above
    ``presence_threshold``), ``background_max_error`` (outside the paste alpha, 8-bit levels,
    must be 0), ``consistency`` (classifier top-1 = intended category; the classifier crops
    around the dilated paste mask), ``diversity`` (mean pairwise distance between the seeds of
    a case, inside the target mask), ``fd`` (Fréchet distance of classifier-PCA features,
    generated vs the cases' real defects), ``s_per_image``.
    ``progress(done, total, label)`` is called after every image."""
    if not cases:
        raise InvalidInputError("cases is empty: build some with build_eval_set(n)")
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise InvalidInputError(f"num_seeds={num_seeds!r} must be an int >= 1")
    variants = list(variants) if variants is not None else default_variants(pipeline)
    if len({v.name for v in variants}) != len(variants):
        raise InvalidInputError(f"variant names must be unique: {[v.name for v in variants]}")
    t_start = time.perf_counter()
    gen_hw = (pipeline.card.defaults.height, pipeline.card.defaults.width)
    feather = pipeline.card.defaults.feather
    crop = getattr(pipeline, "crop_rule", None)  # the real defects go through the model's geometry
    categories = list(dict.fromkeys(c.category for c in cases))
    clf = classifier or load_or_train(classifier_cache, _classifier_categories(categories), gen_size=gen_hw)
    missing = [c for c in categories if c not in clf.categories]
    if missing:
        raise InvalidInputError(f"the classifier does not know {missing}; train it on {categories}")

    # references: the cases' real defects through the pipeline geometry (+ an independent set)
    real_rows, fill_rows, floor_feats = [], [], []
    for i, case in enumerate(cases):
        res, alpha = paste_like_pipeline(case.image, case.real, case.mask, *gen_hw, feather, crop)
        real_rows.append({"case": i, **_score(clf, res, case, alpha >= 1.0, alpha)})
        res, alpha = flat_fill(case.image, case.mask, feather)
        fill_rows.append({"case": i, **_score(clf, res, case, alpha >= 1.0, alpha)})
        floor_feats += _independent_real(case, num_seeds, gen_hw, feather, crop)
    ref_embed = clf.embed(np.stack([r["_feats"] for r in real_rows]))

    saved = {id(v.pipeline or pipeline): adapter_strengths(v.pipeline or pipeline) for v in variants}
    total, done = len(variants) * len(cases) * num_seeds, 0
    results: dict[str, dict[str, Any]] = {}
    per_image: dict[str, list[dict]] = {}
    steps_used = None
    try:
        for var in variants:
            pipe = var.pipeline or pipeline
            rows: list[dict] = []
            diversity = []
            gen_s = 0.0  # pipeline calls only (scoring excluded: comparable across backends)
            t0 = time.perf_counter()
            for i, case in enumerate(cases):
                images = []
                for k in range(num_seeds):
                    apply_adapter_scales(pipe, var.adapter_scales)
                    kwargs = {
                        **case.call_kwargs(),
                        "seed": case.seed + k,
                        "output_type": "np",
                        **var.call_kwargs,
                    }
                    if num_inference_steps is not None:
                        kwargs["num_inference_steps"] = num_inference_steps
                    t_call = time.perf_counter()
                    out = pipe(**kwargs)
                    gen_s += time.perf_counter() - t_call
                    steps_used = out.info.get("num_inference_steps", steps_used)
                    result = np.clip(np.rint(out.images[0] * 255.0), 0, 255).astype(np.uint8)
                    region = out.masks >= 1.0  # the (dilated) paste mask
                    rows.append(
                        {"case": i, "seed": case.seed + k, **_score(clf, result, case, region, out.masks)}
                    )
                    images.append(result)
                    done += 1
                    if progress is not None:
                        progress(done, total, f"{var.name} {case.case_id} seed {case.seed + k}")
                diversity.append(M.pairwise_diversity(images, case.mask))
            wall = time.perf_counter() - t0
            results[var.name] = {
                **_summarise(rows, cases, clf, ref_embed, presence_threshold),
                "diversity": float(np.nanmean(diversity)) if num_seeds > 1 else float("nan"),
                "s_per_image": gen_s / max(len(rows), 1),
                "wall_s": wall,
                "note": var.note,
            }
            per_image[var.name] = [_public(r, cases) for r in rows]
    finally:
        for var in variants:
            pipe = var.pipeline or pipeline
            if saved.get(id(pipe)):
                pipe.backend.set_adapter_scales(saved[id(pipe)])

    baselines = {
        "real": {
            **_summarise(real_rows, cases, clf, ref_embed, presence_threshold),
            "diversity": float("nan"),
            "fd": _floor_fd(clf, floor_feats, ref_embed),
            "note": "ground-truth defect through the pipeline geometry; fd = noise floor (independent real set)",
        },
        "flat_fill": {
            **_summarise(fill_rows, cases, clf, ref_embed, presence_threshold),
            "diversity": 0.0,
            "note": "paste region filled with its mean colour: what the mask geometry alone gives",
        },
    }
    notes = _notes(results, baselines, clf)
    report = EvalReport(
        settings={
            "num_cases": len(cases),
            "num_seeds": num_seeds,
            "num_inference_steps": steps_used,
            "generation_size": list(gen_hw),
            "image_size": list(cases[0].image.shape[:2]),
            "categories": categories,
            "modes": sorted({c.mode for c in cases}),
            "case_seeds": [cases[0].seed, cases[-1].seed],
            "generation_seeds": "case.seed + k, k < num_seeds",
            "presence_threshold": presence_threshold,
            "fd_space": f"PCA-{clf.pca.shape[1]} of the classifier's z-scored hand-crafted change features",
            "model": pipeline.card.defaults.description,
            "backend": getattr(pipeline.backend, "info", {}),
            "variants": {
                v.name: {
                    "note": v.note,
                    "call_kwargs": _jsonable_kwargs(v.call_kwargs),
                    "adapter_scales": v.adapter_scales,
                }
                for v in variants
            },
        },
        variants=results,
        baselines=baselines,
        classifier={
            k: clf.meta.get(k)
            for k in (
                "test_accuracy",
                "test_accuracy_crisp",
                "chance",
                "per_category",
                "n_train",
                "n_test",
                "gen_size",
                "train_s",
                "fingerprint",
            )
        },
        comparison=_compare(results, per_image),
        cases=[c.describe() for c in cases],
        per_image=per_image,
        wall_s=time.perf_counter() - t_start,
        notes=notes,
    )
    return report


def _classifier_categories(categories: list[str]) -> list[str]:
    if len(categories) >= 2:
        return categories
    from unidg_rt.evaluation.cases import DEFAULT_CATEGORIES

    return categories + [c for c in DEFAULT_CATEGORIES if c not in categories][:1]  # needs K >= 2


def _independent_real(case: EvalCase, n: int, gen_hw, feather, crop=None) -> list[np.ndarray]:
    from unidg_rt.data import generate_quadruplet

    out = []
    for k in range(n):
        size = case.image.shape[:2]
        q = generate_quadruplet(FD_REAL_SEED + case.index * n + k, case.category, case.surface, size)
        res, alpha = paste_like_pipeline(q.normal, q.abnormal, q.mask, *gen_hw, feather, crop)
        out.append(defect_features(res, q.normal, alpha >= 1.0))
    return out


def _floor_fd(clf, feats: list[np.ndarray], ref_embed) -> float:
    if len(feats) < 2 or len(ref_embed) < 2:
        return float("nan")
    return M.frechet_distance_features(clf.embed(np.stack(feats)), ref_embed)


def _public(row: dict, cases: Sequence[EvalCase]) -> dict[str, Any]:
    case = cases[row["case"]]
    return {
        "case": case.case_id,
        "seed": row.get("seed"),
        "intended": case.category,
        "predicted": row["predicted"],
        "p_intended": row["p_intended"],
        "presence": row["presence"],
        "background": row["background"],
    }


def _jsonable_kwargs(kwargs: dict) -> dict:
    return {
        k: (v if isinstance(v, (int, float, str, list, dict, type(None))) else repr(v))
        for k, v in kwargs.items()
    }


def _notes(results: dict, baselines: dict, clf: DefectClassifier) -> list[str]:
    notes = []
    for name, m in results.items():
        if m["background_max_error"] != 0:
            notes.append(
                f"{name}: background changed outside the paste mask (max {m['background_max_error']:.0f} levels)"
            )
        chance = clf.meta.get("chance", 0.0)
        if m["consistency"] <= chance:
            notes.append(f"{name}: consistency {m['consistency']:.2f} is at or below chance ({chance:.2f})")
        elif m["consistency"] <= baselines["flat_fill"]["consistency"]:
            notes.append(
                f"{name}: consistency {m['consistency']:.2f} is not above the flat-fill baseline "
                f"({baselines['flat_fill']['consistency']:.2f}): the defects are not recognisable"
            )
    if clf.accuracy is not None:
        notes.append(
            f"classifier held-out accuracy {clf.accuracy:.2f} on real defects at the generation size "
            f"(chance {clf.meta.get('chance', 0):.2f}): consistency cannot exceed roughly this"
        )
    return notes
