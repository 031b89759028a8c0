"""Cost of the issue-18 training levers at the default size, and where the shipped model starts.

Warm-starts SFT from a UniDG checkpoint (default: the embedded model) and runs a few steps each:
plain, + EMA, + fresh data ring (one new pair per step), on a small latent bank of copy +
independent pairs; reports seconds per step, the cost of one fresh pair, and the held-out flow
loss of the starting checkpoint on independent pairs (reference / text mode) and on copy pairs
(reference mode). Writes JSON (``--out``)::

    .venv/bin/python scripts/measure_levers.py --out benchmarks/results/levers-v2-cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from unidg_rt.train.common import environment, setup_torch
from unidg_rt.train.dataset import build_diptych_set, encode_diptych_set
from unidg_rt.train.levers import FreshStream, heldout_latents
from unidg_rt.train.recipe import Recipe
from unidg_rt.train.run import arch_configs
from unidg_rt.train.sft import train_sft

logger = logging.getLogger("measure_levers")


def main() -> None:
    import unidg_rt
    from unidg_rt.models.loading import load_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, default=None, help="checkpoint (default: the embedded model)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--bank-pairs", type=int, default=64)
    ap.add_argument("--heldout-pairs", type=int, default=64)
    ap.add_argument("--copy-fraction", type=float, default=0.5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    init = args.init or Path(unidg_rt.__file__).parent / "assets" / "default" / "model.safetensors"
    rec = Recipe()
    rec.data.copy_fraction = args.copy_fraction
    setup_torch(rec.threads, rec.seed)
    vae = load_vae(init, dtype=torch.float32).float().eval()
    tcfg, _ = arch_configs(rec)

    t0 = time.perf_counter()
    lat = encode_diptych_set(
        vae, build_diptych_set(rec.data, rec.seed, args.bank_pairs), rec.data.encode_batch
    )
    bank_s = time.perf_counter() - t0
    heldout = {
        "heldout": heldout_latents(vae, rec.data, rec.seed, args.heldout_pairs),
        "heldout_copy": heldout_latents(vae, rec.data, rec.seed, args.heldout_pairs, copies=True),
    }
    results: dict = {"init": str(init), "steps": args.steps, "batch_size": rec.sft.batch_size,
                     "bank_pairs": args.bank_pairs, "heldout_pairs": args.heldout_pairs,
                     "bank_build_encode_s_per_pair": round(bank_s / args.bank_pairs, 4)}  # fmt: skip
    # "start": 0 steps, the held-out losses of the checkpoint as loaded; "warmup": a short untimed
    # arm so that the first timed arm does not pay one-off costs (allocator, lazy imports)
    arms = {"start": {}, "warmup": {}, "plain": {}, "ema": {"ema": 0.999},
            "ema+fresh1": {"ema": 0.999, "fresh_every": 1}}  # fmt: skip
    for name, levers in arms.items():
        steps = {"start": 0, "warmup": 3}.get(name, args.steps)
        sft = dataclasses.replace(rec.sft, steps=steps, init_from=str(init), eval_every=1, warmup=0,
                                  **levers)  # fmt: skip
        lat_i = dataclasses.replace(
            lat, **{k: v.clone() for k, v in lat.__dict__.items() if torch.is_tensor(v)}
        )
        fresh = (
            FreshStream(vae, rec.data, rec.seed, sft.fresh_every, args.bank_pairs)
            if sft.fresh_every
            else None
        )
        _, _, summary = train_sft(lat_i, sft, tcfg, rec.seed, rec.data.text_seq_len, fresh=fresh,
                                  heldout=heldout if name == "start" else None)  # fmt: skip
        if name == "start":  # curve[0]: the checkpoint as loaded (before any step)
            results["start_heldout"] = {
                k: v for k, v in summary["curve"][0].items() if k.startswith("heldout")
            }
        elif name != "warmup":
            results[name] = {"s_per_step": round(summary["wall_s"] / args.steps, 4), **levers}
            logger.info("%s: %s", name, results[name])
    results["environment"] = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))  # noqa: T201 (script output)


if __name__ == "__main__":
    main()
