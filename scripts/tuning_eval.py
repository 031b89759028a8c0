"""Evaluate a checkpoint on the tuning seeds (issue 18): consistency, FD, reference swap, held-out loss.

``unidg-rt eval`` scores the held-out cases (seeds 10⁶ + i); lever and guidance choices are made
here instead, on the tuning cases (seeds 5·10⁶ + i, also those of ``scripts/reference_swap.py``),
with the same :func:`unidg_rt.evaluation.evaluate`. One variant per ``--reference-cfg`` value
(1 = off, the card's segments as they are; s > 1 adds ``reference_cfg_scale`` s to every segment),
optionally with the adapters off (``--no-adapters``: the SFT variant, segments keep their true
CFG); an SFT-only run's card has no segments: ``--true-cfg 4`` samples it as the shipped card does. ``--swap``: the reference-swap test of every variant on the reference-mode cases (target
generated with the next case's reference; chance 1 / K). ``--heldout``: the training recipe's
held-out flow loss (independent pairs: reference / text mode; copy pairs: reference mode) of the
checkpoint's transformer (float32) and its ``embeddings.safetensors``::

    nice -n 19 .venv/bin/python scripts/tuning_eval.py --cases 60 --seeds 1 \\
        --reference-cfg 1,1.5,2,3,4 --modes reference --swap --out benchmarks/results/reference-cfg-sweep.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("tuning_eval")
TUNING_SEED_BASE = 5_000_000


def variants(pipe, scales: list[float], adapters_off: bool, true_cfg: float | None):
    from unidg_rt.evaluation import Variant

    plain = {"start": 0.0, "end": 1.0, **({"true_cfg_scale": true_cfg} if true_cfg else {})}
    segs = pipe.defaults.get("segments") or [plain]
    names = list(pipe.defaults.get("adapters") or {})
    off = {n: 0.0 for n in names} if adapters_off else None
    out = []
    for s in scales:
        seg = [{**g, **({"adapter_scales": dict(off)} if off else {})} for g in segs]
        if s > 1:
            seg = [{**g, "reference_cfg_scale": s} for g in seg]
        out.append(Variant(f"reference_cfg {s:g}", call_kwargs={"segments": seg}, adapter_scales=off))
    return out


def swap_test(pipe, cases, var, clf, seeds: int) -> dict:
    from unidg_rt.evaluation import defect_features
    from unidg_rt.evaluation.variants import apply_adapter_scales

    ref = [c for c in cases if c.mode == "reference"]
    follows = stays = n = 0
    for i, case in enumerate(ref):
        donor = ref[(i + 1) % len(ref)]
        if donor.category == case.category:
            continue
        for k in range(seeds):
            apply_adapter_scales(pipe, var.adapter_scales)
            out = pipe(image=case.image, mask_image=case.mask, reference_image=donor.reference_image,
                       reference_mask=donor.reference_mask, seed=case.seed + k, output_type="np",
                       **var.call_kwargs)  # fmt: skip
            result = np.clip(np.rint(out.images[0] * 255.0), 0, 255).astype(np.uint8)
            proba = clf.predict_proba(defect_features(result, case.image, out.masks >= 1.0))[0]
            pred = clf.categories[int(np.argmax(proba))]
            follows += pred == donor.category
            stays += pred == case.category
            n += 1
    return {"swap_images": n, "swap_follows": follows / max(n, 1), "swap_stays_own": stays / max(n, 1)}


def heldout(weights: Path, pairs: int) -> dict:
    from unidg_rt.embeddings import EmbeddingsCache
    from unidg_rt.models.loading import load_transformer, load_vae
    from unidg_rt.train.flow import CategoryTable
    from unidg_rt.train.levers import heldout_latents, heldout_losses
    from unidg_rt.train.recipe import Recipe

    rec = Recipe()
    vae = load_vae(weights, dtype=torch.float32).float().eval()
    model = load_transformer(weights, dtype=torch.float32).eval()
    out = {}
    for copies, prefix, modes in ((False, "heldout", ("ref", "text")), (True, "heldout_copy", ("ref",))):
        lat = heldout_latents(vae, rec.data, rec.seed, pairs, copies=copies)
        e, p = EmbeddingsCache.load(weights.parent / "embeddings.safetensors").stack(lat.categories)
        table = CategoryTable(len(lat.categories), e.shape[1], e.shape[2], p.shape[1])
        table.load_state_dict({"embeds": torch.from_numpy(e), "pooled": torch.from_numpy(p)})
        out.update(heldout_losses(model, table, lat, rec.sft, rec.seed, prefix=prefix, modes=modes))
    out["copy_over_ref"] = round(out["heldout_copy_ref"] / out["heldout_ref"], 4)
    return out


def main() -> None:
    from unidg_rt.artifacts.assets import default_model_path
    from unidg_rt.evaluation import build_eval_set, default_categories, evaluate
    from unidg_rt.evaluation.classifier import load_or_train
    from unidg_rt.runtime.pipeline import UniDGPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the embedded model)")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--modes", default="reference,text")
    ap.add_argument("--reference-cfg", default="1", help="comma-separated reference_cfg_scale values")
    ap.add_argument("--no-adapters", action="store_true", help="adapters at strength 0 (the SFT variant)")
    ap.add_argument("--true-cfg", type=float, default=None,
                    help="for a card without segments (an SFT-only run): one segment with this "
                    "true_cfg_scale (the shipped card's is 4)")  # fmt: skip
    ap.add_argument("--swap", action="store_true", help="also the reference-swap test per variant")
    ap.add_argument("--heldout", type=int, default=0, help="held-out flow loss on this many pairs (0 = off)")
    ap.add_argument("--classifier-cache", type=Path, default=Path("outputs/eval"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    # first: the held-out loss imports train/ late otherwise (a long eval outlives edits to the tree)
    held = heldout(args.weights or default_model_path(), args.heldout) if args.heldout else None
    if held:
        logger.info("held-out flow loss: %s", held)
    pipe = UniDGPipeline.from_pretrained(args.weights)
    cats = default_categories(pipe)
    cases = build_eval_set(args.cases, cats, modes=args.modes.split(","), seed_base=TUNING_SEED_BASE)
    clf = load_or_train(
        args.classifier_cache, cats, gen_size=(pipe.defaults["height"], pipe.defaults["width"])
    )
    scales = [float(s) for s in args.reference_cfg.split(",")]
    vars_ = variants(pipe, scales, args.no_adapters, args.true_cfg)
    report = evaluate(pipe, cases, vars_, num_seeds=args.seeds, classifier=clf).to_dict()
    keys = ("consistency", "consistency_se", "consistency_by_mode", "consistency_by_category", "fd",
            "diversity", "presence_rate", "background_max_error", "s_per_image")  # fmt: skip
    summary = {}
    for var in vars_:
        m = report["variants"][var.name]
        summary[var.name] = {k: m.get(k) for k in keys}
        if args.swap:
            summary[var.name].update(swap_test(pipe, cases, var, clf, args.seeds))
        logger.info("%s: %s", var.name, summary[var.name])
    result = {
        "weights": str(args.weights or "embedded default"), "cases": args.cases, "seeds": args.seeds,
        "seed_base": TUNING_SEED_BASE, "modes": args.modes, "adapters_off": args.no_adapters,
        "segments": {v.name: v.call_kwargs["segments"] for v in vars_}, "categories": cats,
        "chance": 1.0 / len(cats), "summary": summary,
        "real_ceiling": {k: report["baselines"]["real"].get(k) for k in ("consistency", "fd")},
        "per_image": report["per_image"],
    }  # fmt: skip
    if held:
        result["heldout"] = held
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
