"""Downstream test (issue 18): do unidg_rt's defects help a detector?

A tiny supervised defect segmenter (:mod:`unidg_rt.evaluation.segmenter`) is trained, per
seed, three times on the *same* normal procedural images with defects inserted by

* ``unidg_rt`` — the model in reference mode, from a small fixed bank of procedural reference
  defects; the target mask is the reference's own footprint, rotated/mirrored and moved
  (:func:`~unidg_rt.evaluation.anomalies.transplant_mask`); label = that mask;
* ``draem`` — DRAEM-style Perlin-noise masks filled with foreign textures;
* ``cutpaste`` — CutPaste (normal + scar);

each with the same number of anomalous images, the same clean normals, the same init and batch
order. It is scored on held-out procedural images with *real* procedural defects (and as many
normal images): pixel AP over all test pixels and image AUROC (image score = top-k mean of the
pixel map). The test defects come from the same procedural family the model was trained on.

Seed ranges (disjoint from each other and from :mod:`unidg_rt.evaluation.cases`' 1e6–4e6):

* reference bank: ``BANK_SEED_BASE + 1000 * j + t`` = 5_000_000 + … (fixed; categories
  :data:`BANK_CATEGORIES` on surfaces :data:`BANK_SURFACES`, see :func:`build_bank`);
* training normals of run seed ``s``: ``TRAIN_SEED_BASE + 100_000 * s + i``;
* test defects ``TEST_DEFECT_SEED_BASE + i`` (5 bank + 5 other categories × all surfaces),
  test normals ``TEST_NORMAL_SEED_BASE + i``.

Label noise: the model may paint little or nothing in part of a mask; the label stays the
mask, and the share of near-empty paints (mean |Δ| in the mask below
:data:`NEAR_EMPTY_DELTA`) is reported beside the same measure on the real bank defects.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation.anomalies import cutpaste_anomaly, draem_anomaly, transplant_mask
from unidg_rt.evaluation.downstream_report import DownstreamReport, summarise
from unidg_rt.evaluation.segmenter import (
    SegmenterConfig,
    average_precision,
    image_scores,
    predict_maps,
    roc_auc,
    train_segmenter,
)

logger = logging.getLogger(__name__)

BANK_SEED_BASE = 5_000_000
TRAIN_SEED_BASE = 5_100_000
TEST_DEFECT_SEED_BASE = 6_000_000
TEST_NORMAL_SEED_BASE = 6_500_000
BANK_CATEGORIES = ("scratch", "hole", "black spot", "dirt", "discoloration")
OTHER_CATEGORIES = ("breakage", "foreign matter", "wrinkle", "abrasion", "misprint")
BANK_SURFACES = ("brushed_metal", "wood", "fabric", "pcb")
#: smallest reference mask in the bank, as a share of the image
BANK_MIN_AREA = 0.003
METHODS = ("unidg_rt", "draem", "cutpaste", "procedural")
METHOD_LABELS = {
    "unidg_rt": "unidg_rt (reference mode)",
    "draem": "DRAEM-style",
    "cutpaste": "CutPaste",
    "procedural": "procedural, bank categories (reference row)",
}
#: a paint is near-empty when its mean max-channel |Δ| inside the mask is below this (in [0, 1])
NEAR_EMPTY_DELTA = 0.03
METRICS = ("pixel_ap", "image_auroc", "pixel_ap_bank_categories", "pixel_ap_other_categories", "pixel_auroc")

Progress = Callable[[str, int, int], None]


@dataclass
class DownstreamConfig:
    """Sizes of one downstream run (defaults: the measured run; :meth:`quick`: the CI run)."""

    seeds: int = 3
    train_images: int = 128  #: anomalous training images per method (and as many clean normals)
    test_images: int = 80  #: test images with real defects (and as many normal ones)
    size: int = 128  #: side of every image
    bank_per_category: int = 2  #: references per bank category
    topk: int = 20  #: image score = mean of the top-k pixel scores
    num_inference_steps: int | None = None  #: the model's sampling steps (None = its default)
    threads: int = 1  #: torch threads during the run (restored afterwards)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    @classmethod
    def quick(cls, **overrides: Any) -> DownstreamConfig:
        """A seconds-long run for CI: 6 images per method, 8 + 8 test images, 64 px, 15 steps."""
        base = cls(
            seeds=2,
            train_images=6,
            test_images=8,
            size=64,
            bank_per_category=1,
            topk=8,
            segmenter=SegmenterConfig(steps=15, batch_size=4),
        )
        return dataclasses.replace(base, **overrides)

    def check(self) -> DownstreamConfig:
        for name in ("seeds", "train_images", "test_images", "bank_per_category", "topk", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name}={value!r} must be a positive integer")
        if self.size < 32 or self.size % 8:
            raise InvalidInputError(f"size={self.size!r} must be a multiple of 8 and at least 32")
        if self.bank_per_category > 10:
            raise InvalidInputError(
                f"bank_per_category={self.bank_per_category} must be at most 10 (seed range)"
            )
        if self.test_images >= 500_000:
            raise InvalidInputError(f"test_images={self.test_images} must be below 500000 (seed range)")
        if self.train_images >= 100_000:
            raise InvalidInputError(f"train_images={self.train_images} must be below 100000 (seed range)")
        return self


# ---------------------------------------------------------------------------- data
def build_bank(cfg: DownstreamConfig) -> list:
    """The fixed reference bank: ``bank_per_category`` procedural defects per bank category,
    slot ``j`` on surface ``BANK_SURFACES[j % 4]``, from the first seed ``BANK_SEED_BASE +
    1000 * j + t`` whose mask covers at least :data:`BANK_MIN_AREA` of the image (a user picks
    visible references, not 2-pixel specks)."""
    from unidg_rt.data import generate_quadruplet

    bank = []
    for j in range(len(BANK_CATEGORIES) * cfg.bank_per_category):
        cat = BANK_CATEGORIES[j % len(BANK_CATEGORIES)]
        surface = BANK_SURFACES[j % len(BANK_SURFACES)]
        for t in range(1000):
            q = generate_quadruplet(BANK_SEED_BASE + 1000 * j + t, cat, surface, cfg.size)
            if q.mask.mean() >= BANK_MIN_AREA:
                break
        bank.append(q)
    return bank


def build_test_set(cfg: DownstreamConfig) -> dict[str, np.ndarray]:
    """Held-out test images: ``test_images`` real defects (category ``i % 10`` of bank + other,
    surface ``(i + i // 10) % 8``) then as many normals. Returns images, masks, image labels and
    the split per image (``bank`` / ``other`` / ``normal``) and its surface kind."""
    from unidg_rt.data import SURFACE_KINDS, generate_quadruplet, make_surface

    cats = BANK_CATEGORIES + OTHER_CATEGORIES
    images, masks, split, surfaces = [], [], [], []
    for i in range(cfg.test_images):
        # 10 a + b -> category b on surface (3 a + b) % 8: 80 images hold every pair once
        cat, surface = cats[i % len(cats)], SURFACE_KINDS[(i + i // len(cats)) % len(SURFACE_KINDS)]
        q = generate_quadruplet(TEST_DEFECT_SEED_BASE + i, cat, surface, cfg.size)
        images.append(q.abnormal)
        masks.append(q.mask)
        split.append("bank" if cat in BANK_CATEGORIES else "other")
        surfaces.append(surface)
    for i in range(cfg.test_images):
        kind = SURFACE_KINDS[i % len(SURFACE_KINDS)]
        images.append(make_surface(kind, cfg.size, np.random.default_rng(TEST_NORMAL_SEED_BASE + i)))
        masks.append(np.zeros((cfg.size, cfg.size), bool))
        split.append("normal")
        surfaces.append(kind)
    split_arr = np.array(split)
    return {
        "images": np.stack(images),
        "masks": np.stack(masks),
        "labels": split_arr != "normal",
        "split": split_arr,
        "surface": np.array(surfaces),
    }


def training_normals(seed: int, cfg: DownstreamConfig) -> tuple[np.ndarray, list[str]]:
    """``train_images`` normal procedural images of run ``seed`` and their surface kinds."""
    from unidg_rt.data import SURFACE_KINDS, make_surface

    images, kinds = [], []
    for i in range(cfg.train_images):
        rng = np.random.default_rng(TRAIN_SEED_BASE + 100_000 * seed + i)
        kind = SURFACE_KINDS[int(rng.integers(len(SURFACE_KINDS)))]
        images.append(make_surface(kind, cfg.size, rng))
        kinds.append(kind)
    return np.stack(images), kinds


def paint_delta(result: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the mask of the max-channel |result − normal|, in [0, 1]."""
    diff = np.abs(result.astype(np.int16) - normal.astype(np.int16)).max(axis=-1) / 255.0
    return float(diff[mask].mean())


def synthesize(
    method: str,
    normals: np.ndarray,
    kinds: list[str],
    seed: int,
    cfg: DownstreamConfig,
    pipeline=None,
    bank: list | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Insert one anomaly per normal image with ``method``; returns images, masks and the
    paint |Δ| per image (:func:`paint_delta`)."""
    from unidg_rt.data import apply_defect, sample_scale

    if method not in METHODS:
        raise InvalidInputError(f"method={method!r} is not known; use one of {METHODS}")
    if method == "unidg_rt" and (pipeline is None or not bank):
        raise InvalidInputError("method='unidg_rt' needs pipeline= (a UniDGPipeline) and a non-empty bank=")
    rng = np.random.default_rng([TRAIN_SEED_BASE, seed, METHODS.index(method)])
    images, masks, deltas = [], [], []
    for i, (normal, kind) in enumerate(zip(normals, kinds, strict=True)):
        if method == "draem":
            img, mask = draem_anomaly(normal, rng, surface=kind)
        elif method == "cutpaste":
            img, mask = cutpaste_anomaly(normal, rng)
        elif method == "procedural":  # what the model imitates: real renderer output, bank categories
            cat = BANK_CATEGORIES[int(rng.integers(len(BANK_CATEGORIES)))]
            img, mask = apply_defect(normal, cat, rng, scale=sample_scale(cat, rng))
        else:
            ref = bank[int(rng.integers(len(bank)))]
            mask = transplant_mask(ref.mask, normal.shape[:2], rng)
            out = pipeline(
                image=normal,
                mask_image=mask,
                reference_image=ref.abnormal,
                reference_mask=ref.mask,
                seed=int(rng.integers(2**31)),
                num_inference_steps=cfg.num_inference_steps,
                output_type="np",
            )
            img = np.clip(np.rint(out.images[0] * 255.0), 0, 255).astype(np.uint8)
        images.append(img)
        masks.append(mask)
        deltas.append(paint_delta(img, normal, mask))
        if progress is not None:
            progress(f"seed {seed}: {METHOD_LABELS[method]} images", i + 1, len(normals))
    return np.stack(images), np.stack(masks), deltas


# ---------------------------------------------------------------------------- scoring
def score_maps(maps: np.ndarray, test: dict[str, np.ndarray], topk: int) -> dict[str, float]:
    """Pixel AP / AUROC over all test pixels, image AUROC, and pixel AP per category split and
    per surface split (bank references' surfaces or not): that split's defect images + all
    normal images."""
    masks, split = test["masks"], test["split"]
    img_scores = image_scores(maps, topk)
    out = {
        "pixel_ap": average_precision(maps, masks),
        "pixel_auroc": roc_auc(maps, masks),
        "image_auroc": roc_auc(img_scores, test["labels"]),
    }
    for name in ("bank", "other"):
        keep = (split == name) | (split == "normal")
        if (split == name).any():
            out[f"pixel_ap_{name}_categories"] = average_precision(maps[keep], masks[keep])
            out[f"image_auroc_{name}_categories"] = roc_auc(img_scores[keep], test["labels"][keep])
    bank_surface = np.isin(test["surface"], BANK_SURFACES)
    for name, on in (("bank", bank_surface), ("other", ~bank_surface)):  # surfaces of the bank references
        keep = on & (split != "normal") | (split == "normal")
        if (on & (split != "normal")).any():
            out[f"pixel_ap_{name}_surfaces"] = average_precision(maps[keep], masks[keep])
    return out


def _load_average() -> float | None:
    """The 1-minute load average (a shared machine slows the wall time, not the CPU time)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_downstream(
    pipeline,
    config: DownstreamConfig | None = None,
    *,
    model_label: str = "embedded default",
    progress: Progress | None = None,
) -> DownstreamReport:
    """Train and score the segmenter for every method and seed (see the module docstring)."""
    import torch

    cfg = (config or DownstreamConfig()).check()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start, cpu_start, load_start = time.perf_counter(), time.process_time(), _load_average()
    timings = {"data_s": 0.0, "generate_s": 0.0, "train_s": 0.0, "score_s": 0.0}
    try:
        t0 = time.perf_counter()
        bank = build_bank(cfg)
        test = build_test_set(cfg)
        timings["data_s"] += time.perf_counter() - t0
        per_method: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
        deltas: dict[str, list[float]] = {m: [] for m in METHODS}
        for seed in range(cfg.seeds):
            t0 = time.perf_counter()
            normals, kinds = training_normals(seed, cfg)
            timings["data_s"] += time.perf_counter() - t0
            for method in METHODS:
                t0 = time.perf_counter()
                images, masks, d = synthesize(method, normals, kinds, seed, cfg, pipeline, bank, progress)
                timings["generate_s" if method == "unidg_rt" else "data_s"] += time.perf_counter() - t0
                deltas[method] += d
                t0 = time.perf_counter()

                def on_step(done: int, total: int, _m: str = method, _s: int = seed) -> None:
                    if progress is not None:
                        progress(f"seed {_s}: training on {METHOD_LABELS[_m]}", done, total)

                model = train_segmenter(images, masks, normals, seed, cfg.segmenter, on_step)
                timings["train_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                scores = score_maps(predict_maps(model, test["images"]), test, cfg.topk)
                timings["score_s"] += time.perf_counter() - t0
                for key, value in scores.items():
                    per_method[method].setdefault(key, []).append(value)
                logger.info("seed %d %s: %s", seed, method, {k: round(v, 4) for k, v in scores.items()})
    finally:
        torch.set_num_threads(old_threads)
    real = [paint_delta(q.abnormal, q.normal, q.mask) for q in bank]
    # a random pixel ranking scores AP = the share of defect pixels (per split: its images + normals)
    chance = {"all": float(test["masks"].mean())} | {
        name: float(test["masks"][(test["split"] == name) | (test["split"] == "normal")].mean())
        for name in ("bank", "other")
    }
    paint = {
        "near_empty_delta": NEAR_EMPTY_DELTA,
        "near_empty_share": {m: float(np.mean(np.asarray(d) < NEAR_EMPTY_DELTA)) for m, d in deltas.items()},
        "mean_delta": {m: float(np.mean(d)) for m, d in deltas.items()},
        "real_bank_near_empty_share": float(np.mean(np.asarray(real) < NEAR_EMPTY_DELTA)),
        "real_bank_mean_delta": float(np.mean(real)),
    }
    settings = dataclasses.asdict(cfg) | {
        "model": model_label,
        "methods": {m: METHOD_LABELS[m] for m in METHODS},
        "bank": [{"seed": int(q.seed), "category": q.category, "surface": q.surface} for q in bank],
        "bank_categories": list(BANK_CATEGORIES),
        "other_categories": list(OTHER_CATEGORIES),
        "test": {
            "defect_images": cfg.test_images,
            "normal_images": cfg.test_images,
            "defect_seeds": [TEST_DEFECT_SEED_BASE, TEST_DEFECT_SEED_BASE + cfg.test_images - 1],
            "normal_seeds": [TEST_NORMAL_SEED_BASE, TEST_NORMAL_SEED_BASE + cfg.test_images - 1],
            "chance_pixel_ap": chance,
        },
        "label": "mask (the inpainting / inserted region), also where the model painted little",
        "image_score": f"mean of the top-{cfg.topk} pixel scores",
    }
    notes = [
        "test defects are real procedural defects from the same procedural family (unidg_rt.data) the "
        "default model was trained on; categories outside the bank are still procedural",
    ]
    timings["cpu_s"] = time.process_time() - cpu_start
    settings["machine"] = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_1min": [load_start, _load_average()],
    }
    methods = {m: {k: summarise(v) for k, v in per_method[m].items()} for m in METHODS}
    return DownstreamReport(settings, methods, paint, timings, time.perf_counter() - t_start, notes)
