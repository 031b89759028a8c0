"""Quality of quantised precisions against fp32 on the held-out set (issue 7, item 4):
``unidg-rt eval --compare ONNX_DIR --precisions int8,fp8``.

Every precision of an exported folder runs the same held-out cases and seeds
(:func:`unidg_rt.evaluation.build_eval_set`) through ``UniDGPipeline.from_onnx(dir, precision=p)``
inside :func:`unidg_rt.evaluation.evaluate` (category consistency, presence, background), while a
thin recorder keeps each call's per-step latents (``callback_on_step_end``), the transformer's
outputs and the output image. Paired per (case, seed) against the baseline: latent cosine
similarity per step (the latents carry the shared seed noise, so this is a forgiving measure; the
velocity cosine — the transformer output — shows the quantisation error directly), PSNR and SSIM inside the
paste region (alpha > 0: every pixel the generator may change), agreement of the classifier's
predicted category, and the transformer's file size. numpy only (SSIM: :mod:`~unidg_rt.evaluation.metrics`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation.cases import build_eval_set, default_categories
from unidg_rt.evaluation.evaluator import evaluate
from unidg_rt.evaluation.metrics import cosine, masked_psnr, masked_ssim
from unidg_rt.evaluation.report import JsonReport
from unidg_rt.evaluation.variants import Variant

logger = logging.getLogger(__name__)

#: a quantised precision "passes" when every one of these holds against fp32 (paired, same seeds)
THRESHOLDS = {
    "latent_cosine_min": 0.98,  # worst image, worst step
    "psnr_mask_db": 25.0,  # mean over images, inside the paste region
    "ssim_mask": 0.90,
    "agreement": 0.80,  # classifier predicts the same category as for the fp32 image
}
#: deployment targets → (preferred quantised precisions in order, float fallback, why)
TARGETS = {
    "Data-centre GPU (Hopper/Blackwell, full TensorRT)": (
        ("fp8",),
        "bf16",
        "FP8 tensor cores; BF16 keeps FLUX's activation range (FP16 can overflow at full size). "
        "TensorRT-RTX does not target sm 9.0/10.0: build with full TensorRT on the GPU.",
    ),
    "RTX PC (TensorRT-RTX: Ada sm 8.9 / Blackwell sm 12.x; Ampere sm 8.6)": (
        ("fp8",),
        "fp16",
        "FP8 on Ada and Blackwell only; FP16 everywhere (Ampere has no FP8). "
        "Plans AOT-build here for 8.6/8.9/12.0.",
    ),
    "Jetson Orin (JetPack 6, TensorRT 10.3, sm 8.7)": (
        ("int8",),
        "fp16",
        "no FP8 on Orin; INT8 halves weights and bandwidth on unified memory (see runtime/jetson/README.md).",
    ),
}


# ---------------------------------------------------------------------- recording
class _Recording:
    """A pipeline that keeps each call's per-step latents and first output image."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.records: list[dict[str, Any]] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        latents: list[np.ndarray] = []
        user_cb = kwargs.pop("callback_on_step_end", None)
        to_numpy = self._pipe.backend.to_numpy

        def on_step(pipe, i, t, tensors):
            latents.append(np.array(to_numpy(tensors["latents"]), dtype=np.float32, copy=True))
            return user_cb(pipe, i, t, tensors) if user_cb else tensors

        backend = self._pipe.backend
        runner, velocities = backend.transformer, []

        class _Tap:  # the transformer's output per call (= per step without true CFG)
            input_names = runner.input_names

            @staticmethod
            def infer(feed):
                out = runner.infer(feed)
                velocities.append(np.array(to_numpy(out["noise_pred"]), dtype=np.float32, copy=True))
                return out

        backend.transformer = _Tap()
        try:
            out = self._pipe(**kwargs, callback_on_step_end=on_step)
        finally:
            backend.transformer = runner
        self.records.append(
            {
                "latents": latents,
                "velocities": velocities,
                "image": np.asarray(out.images[0], np.float32),
                "alpha": np.asarray(out.masks, np.float32),
            }
        )
        return out


# ---------------------------------------------------------------------- report
@dataclass
class PrecisionReport(JsonReport):
    settings: dict[str, Any]
    precisions: dict[str, dict[str, Any]]  # name → metrics (the baseline too)
    recommendations: dict[str, dict[str, str]]
    thresholds: dict[str, float]
    evaluation: dict[str, Any]  # the EvalReport (without per-image rows)
    wall_s: float
    notes: list[str] = field(default_factory=list)


def _artifact_bytes(onnx_dir: Path, art: dict[str, Any]) -> int:
    side = onnx_dir / (art["onnx_file"].removesuffix(".onnx") + ".json")
    try:
        return int(json.loads(side.read_text())["total_bytes"])
    except (OSError, ValueError, KeyError):
        f = onnx_dir / art["onnx_file"]
        data = f.with_name(f.name + ".data")
        return f.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _quant_info(onnx_dir: Path, art: dict[str, Any]) -> dict[str, Any]:
    side = onnx_dir / (art["onnx_file"].removesuffix(".onnx") + ".json")
    try:
        q = json.loads(side.read_text()).get("quantization") or {}
    except (OSError, ValueError):
        return {}
    v = q.get("validation") or {}
    return {
        "quantizer": q.get("backend"),
        "high_precision": q.get("high_precision"),
        "coverage": v.get("coverage"),
        "calibration_samples": q.get("calibration_samples"),
    }


def compare_precisions(
    onnx_dir: str | Path,
    precisions: Sequence[str] = ("int8",),
    *,
    baseline: str = "fp32",
    cases=None,
    num_cases: int = 8,
    categories: Sequence[str] | None = None,
    modes: Sequence[str] = ("reference", "text"),
    size: int = 160,
    num_seeds: int = 1,
    num_inference_steps: int | None = None,
    classifier=None,
    classifier_cache: str | Path | None = None,
    attention_form: str | None = None,
    providers: list[str] | None = None,
    thresholds: dict[str, float] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> PrecisionReport:
    """Run ``baseline`` and every precision of ``onnx_dir`` on the same held-out cases and seeds;
    score them paired against the baseline. ``cases``: :class:`~unidg_rt.evaluation.EvalCase` list
    (default: ``build_eval_set(num_cases, categories, modes, size)``)."""
    from unidg_rt.runtime.pipeline import UniDGPipeline

    t0 = time.perf_counter()
    onnx_dir = Path(onnx_dir)
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    names = [baseline, *[p for p in precisions if p != baseline]]
    pipes: dict[str, _Recording] = {}
    for p in names:
        pipe = UniDGPipeline.from_onnx(
            onnx_dir, precision=p, attention_form=attention_form, providers=providers
        )
        got = pipe.backend.artifacts["transformer"]["precision"]
        if got != p:
            hint = "`unidg-rt quantize`" if p in ("int8", "fp8") else f"`unidg-rt export --precision {p}`"
            raise InvalidInputError(
                f"{onnx_dir} has no {p} transformer (only {got} matched): create it with {hint}"
            )
        pipes[p] = _Recording(pipe)
    base = pipes[baseline]
    if cases is None:
        cats = list(categories) if categories else default_categories(base._pipe)
        cases = build_eval_set(num_cases, cats, modes=list(modes), size=size)
    variants = [Variant(p, pipeline=pipes[p], adapter_scales=None, note=_note(pipes[p])) for p in names]
    ev = evaluate(
        base,
        cases,
        variants,
        num_seeds=num_seeds,
        num_inference_steps=num_inference_steps,
        classifier=classifier,
        classifier_cache=classifier_cache,
        progress=progress,
    )

    results: dict[str, dict[str, Any]] = {}
    ref = base.records
    ref_pred = [r["predicted"] for r in ev.per_image[baseline]]
    for p in names:
        recs = pipes[p].records
        if len(recs) != len(ref):
            raise InvalidInputError(f"{p}: {len(recs)} images recorded, baseline {len(ref)}")
        steps = np.array(
            [
                [cosine(a, b) for a, b in zip(r["latents"], q["latents"], strict=True)]
                for r, q in zip(ref, recs, strict=True)
            ]
        )
        vel = np.array(
            [
                [cosine(a, b) for a, b in zip(r["velocities"], q["velocities"], strict=True)]
                for r, q in zip(ref, recs, strict=True)
            ]
        )
        psnr = [masked_psnr(r["image"], q["image"], r["alpha"] > 0) for r, q in zip(ref, recs, strict=True)]
        ssim = [masked_ssim(r["image"], q["image"], r["alpha"] > 0) for r, q in zip(ref, recs, strict=True)]
        pred = [r["predicted"] for r in ev.per_image[p]]
        m = ev.variants[p]
        arts = pipes[p].backend.artifacts
        results[p] = {
            "latent_cosine_per_step": steps.mean(axis=0).tolist(),
            "latent_cosine_min": float(steps.min()),
            "latent_cosine_final": float(steps[:, -1].mean()),
            "velocity_cosine_per_call": vel.mean(axis=0).tolist(),
            "velocity_cosine_min": float(vel.min()),
            "psnr_mask_db": float(np.mean(psnr)),
            "psnr_mask_db_min": float(np.min(psnr)),
            "ssim_mask": float(np.mean(ssim)),
            "ssim_mask_min": float(np.min(ssim)),
            "consistency": m["consistency"],
            "agreement": float(np.mean([a == b for a, b in zip(pred, ref_pred, strict=True)])),
            "presence_rate": m["presence_rate"],
            "background_max_error": m["background_max_error"],
            "s_per_image": m["s_per_image"],
            "transformer_file": arts["transformer"]["onnx_file"],
            "transformer_bytes": _artifact_bytes(onnx_dir, arts["transformer"]),
            "pipeline_bytes": sum(_artifact_bytes(onnx_dir, a) for a in arts.values()),
            "vae_precision": arts["vae_decoder"]["precision"],
            **_quant_info(onnx_dir, arts["transformer"]),
        }
        if p != baseline:
            results[p]["passes"] = _passes(results[p], thresholds)
    evaluation = {k: v for k, v in ev.to_dict().items() if k != "per_image"}
    settings = {
        **ev.settings,
        "onnx_dir": str(onnx_dir),
        "baseline": baseline,
        "precisions": names,
        "region": "paste alpha > 0",
        "backend": base.backend.info,
    }
    return PrecisionReport(
        settings,
        results,
        recommend(results, baseline),
        thresholds,
        evaluation,
        time.perf_counter() - t0,
        list(ev.notes),
    )


def _note(rec: _Recording) -> str:
    art = rec.backend.artifacts["transformer"]
    return f"{art['onnx_file']} on {rec.backend.info.get('providers', ['?'])[0]}"


def _passes(m: dict[str, Any], th: dict[str, float]) -> dict[str, bool]:
    return {k: bool(m[k] >= v) for k, v in th.items() if k in m}


def recommend(results: dict[str, dict[str, Any]], baseline: str = "fp32") -> dict[str, dict[str, str]]:
    """Per deployment target: the first preferred quantised precision that was measured and passed
    every threshold, else the float fallback."""
    out = {}
    for target, (preferred, fallback, why) in TARGETS.items():
        choice, reason = fallback.upper(), ""
        for p in preferred:
            m = results.get(p)
            if m is None:
                reason = f"{p.upper()} not measured; {fallback.upper()}"
                continue
            failed = [k for k, ok in m.get("passes", {}).items() if not ok]
            if failed:
                reason = f"{p.upper()} misses {', '.join(failed)}; {fallback.upper()}"
                continue
            choice, reason = f"{p.upper()} (quality within thresholds)", f"{fallback.upper()} if in doubt"
            break
        out[target] = {"precision": choice, "alternative": reason, "why": why}
    return out


def report_markdown(report: PrecisionReport) -> str:
    """README-ready: the metrics table (one column per precision) and the recommendations."""
    s, th = report.settings, report.thresholds
    names = list(report.precisions)
    rows = [
        (
            "latent cosine vs fp32, per step (mean)",
            lambda m: " / ".join(f"{c:.5f}" for c in m["latent_cosine_per_step"]),
        ),
        (
            f"latent cosine, worst image+step (≥ {th['latent_cosine_min']})",
            lambda m: f"{m['latent_cosine_min']:.5f}",
        ),
        (
            "transformer output (velocity) cosine, worst call — the direct quantisation error",
            lambda m: f"{m['velocity_cosine_min']:.5f}",
        ),
        (
            f"PSNR in paste region, dB (mean ≥ {th['psnr_mask_db']:g}; worst)",
            lambda m: f"{m['psnr_mask_db']:.1f}; {m['psnr_mask_db_min']:.1f}",
        ),
        (
            f"SSIM in paste region (mean ≥ {th['ssim_mask']}; worst)",
            lambda m: f"{m['ssim_mask']:.4f}; {m['ssim_mask_min']:.4f}",
        ),
        ("category consistency (classifier top-1)", lambda m: f"{m['consistency']:.0%}"),
        (f"same category as fp32 (≥ {th['agreement']:.0%})", lambda m: f"{m['agreement']:.0%}"),
        ("background max error (levels)", lambda m: f"{m['background_max_error']:.0f}"),
        ("transformer ONNX size", lambda m: f"{m['transformer_bytes'] / 1e6:.2f} MB"),
        (
            "VAE precision; pipeline ONNX size",
            lambda m: f"{m['vae_precision']}; {m['pipeline_bytes'] / 1e6:.2f} MB",
        ),
        (
            "quantiser / rest of graph",
            lambda m: f"{m.get('quantizer') or '–'} / {m.get('high_precision') or '–'}",
        ),
        ("seconds per image (ORT CPU)", lambda m: f"{m['s_per_image']:.2f}"),
        (
            "passes thresholds",
            lambda m: (
                "–"
                if "passes" not in m
                else (
                    "yes"
                    if all(m["passes"].values())
                    else "no: " + ", ".join(k for k, v in m["passes"].items() if not v)
                )
            ),
        ),
    ]
    lines = ["| metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for label, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(report.precisions[n]) for n in names) + " |")
    lines += [
        "",
        f"{s['num_cases']} held-out cases × {s['num_seeds']} seed(s), {s['num_inference_steps']} steps, "
        f"generation {s['generation_size'][0]}×{s['generation_size'][1]}, same seeds for every precision; "
        f"model: {s.get('model') or 'unnamed'}.",
        "",
        "| target | recommended | otherwise | why |",
        "|---|---|---|---|",
    ]
    for target, r in report.recommendations.items():
        lines.append(f"| {target} | {r['precision']} | {r['alternative']} | {r['why']} |")
    return "\n".join(lines) + "\n"
