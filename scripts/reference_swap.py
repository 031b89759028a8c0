"""Reference-swap test: does reference mode copy the reference's category?

Builds reference-mode evaluation cases (default: the tuning seeds 5·10⁶ + i, outside the
held-out 10⁶ range), then generates each target twice per seed: with its own reference and with
the reference of the next case (another category: cases cycle through the categories). The
evaluation classifier reads every result; the report gives the share that matches the target's
own category ("own", with its own reference), and, with the swapped reference, the share that
matches the *swapped* reference's category ("follows_swapped") and the share that still matches
the target's category ("stays_own"). Chance is 1 / K. Writes JSON::

    .venv/bin/python scripts/reference_swap.py --weights /work/runs/v2/model.safetensors \\
        --cases 100 --out benchmarks/results/reference-swap-v2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("reference_swap")


def main() -> None:
    import torch

    from unidg_rt.evaluation import build_eval_set, default_categories
    from unidg_rt.evaluation.classifier import load_or_train
    from unidg_rt.evaluation.features import defect_features
    from unidg_rt.runtime.pipeline import UniDGPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the embedded model)")
    ap.add_argument("--embeddings", type=Path, default=None)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seed-base", type=int, default=5_000_000)
    ap.add_argument("--classifier-cache", type=Path, default=Path("outputs/eval"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    pipe = UniDGPipeline.from_pretrained(args.weights, embeddings=args.embeddings)
    cats = default_categories(pipe)
    cases = build_eval_set(args.cases, cats, modes=["reference"], seed_base=args.seed_base)
    gen_hw = (int(pipe.defaults["height"]), int(pipe.defaults["width"]))
    clf = load_or_train(args.classifier_cache, cats, gen_size=gen_hw)
    t0 = time.perf_counter()
    own, follows, stays, n = 0, 0, 0, 0
    for i, case in enumerate(cases):
        donor = cases[(i + 1) % len(cases)]
        if donor.category == case.category:
            continue
        for k in range(args.seeds):
            for swapped in (False, True):
                ref = donor if swapped else case
                out = pipe(image=case.image, mask_image=case.mask, reference_image=ref.reference_image,
                           reference_mask=ref.reference_mask, seed=case.seed + k, output_type="np")  # fmt: skip
                result = np.clip(np.rint(out.images[0] * 255.0), 0, 255).astype(np.uint8)
                proba = clf.predict_proba(defect_features(result, case.image, out.masks >= 1.0))[0]
                pred = clf.categories[int(np.argmax(proba))]
                if swapped:
                    follows += pred == donor.category
                    stays += pred == case.category
                else:
                    own += pred == case.category
            n += 1
    report = {
        "weights": str(args.weights or "embedded default"), "cases": args.cases, "seeds": args.seeds,
        "seed_base": args.seed_base, "images_per_arm": n, "categories": cats, "chance": 1.0 / len(cats),
        "own": own / n, "follows_swapped": follows / n, "stays_own": stays / n,
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("%s", report)


if __name__ == "__main__":
    main()
