"""Generation wall time against the token budget and the transformer width (issue 18).

Times one ``UniDGPipeline`` call (crop, encode, the card's steps, decode, paste back) per
(model, per-side size, mode) on the CPU, all in one process: the shipped model as shipped
(with its APO adapter), the shipped transformer without adapters (width 1×), and randomly
initialised wider transformers (same depth, more heads / wider heads; the shipped VAE and card
minus adapters). Reference mode runs one transformer pass per step (no reference encoder: zero
conditioning, no true CFG), text mode two (true CFG 4 of the card's segments). Wall and process
CPU time (one torch thread: the cost on an idle core), median of ``--runs`` interleaved rounds
after ``--warmup`` calls; the load average is recorded per round.
Weights: the float16 checkpoint as ``unidg-rt train`` ships it (+ the APO adapter file)::

    nice -n 19 .venv/bin/python scripts/capacity_timing.py --out benchmarks/results/capacity-timing.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger("capacity_timing")
#: width label → (heads, head dim, rope axes); the shipped transformer is 3 × 64 = 192
SHIPPED = "shipped (1x, APO)"
WIDTHS = {"1.33x": (4, 64, (8, 28, 28)), "1.5x": (6, 48, (8, 20, 20)), "2x": (6, 64, (8, 28, 28))}


def _plain_card(defaults: dict) -> dict:
    """The shipped card without adapters: segments keep their true-CFG scales only."""
    d = {k: v for k, v in defaults.items() if k != "adapters"}
    d["segments"] = [
        {k: v for k, v in s.items() if k != "adapter_scales"} for s in defaults.get("segments", [])
    ]
    return d


def _write_model(folder: Path, transformer, vae, defaults: dict, emb: Path) -> Path:
    from unidg_rt.models.loading import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(emb, folder / "embeddings.safetensors")
    return save_checkpoint(
        folder / "model.safetensors", transformer, vae, defaults=defaults, dtype=torch.float16
    )


def _summary(times: list[float], cpu: list[float], ratios: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "cpu_median_s": round(statistics.median(cpu), 4),
            "cpu_min_s": round(min(cpu), 4), "runs": len(times),
            "cpu_vs_shipped_96": round(statistics.median(ratios), 3)}  # fmt: skip


def main() -> None:
    import unidg_rt
    from unidg_rt.evaluation import build_eval_set
    from unidg_rt.models.loading import load_transformer, load_vae, read_card
    from unidg_rt.models.mmdit import FluxTransformer
    from unidg_rt.runtime.pipeline import UniDGPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="96,128", help="per-side generation sizes")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    shipped = Path(unidg_rt.__file__).parent / "assets" / "default" / "model.safetensors"
    emb = shipped.parent / "embeddings.safetensors"
    card = read_card(shipped)
    base = load_transformer(shipped, dtype=torch.float32)
    vae = load_vae(shipped, dtype=torch.float32).float()
    plain = _plain_card(card.defaults)
    cases = {c.mode: c for c in build_eval_set(2, ["hole"], modes=["reference", "text"])}
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    results, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {SHIPPED: shipped.parent,
                   "1x": _write_model(Path(tmp) / "1x", base, vae, plain, emb).parent}  # fmt: skip
        for label, (heads, dim, rope) in WIDTHS.items():
            cfg = dataclasses.replace(base.config, num_attention_heads=heads, attention_head_dim=dim,
                                      axes_dims_rope=rope)  # fmt: skip
            torch.manual_seed(0)
            folders[label] = _write_model(
                Path(tmp) / label, FluxTransformer(cfg).eval(), vae, plain, emb
            ).parent
        calls = {}  # (model, size, mode) -> (pipe, kwargs)
        for label, folder in folders.items():
            pipe = UniDGPipeline.from_pretrained(folder / "model.safetensors")
            model = pipe.backend.transformer_model
            files = {
                f.name: f.stat().st_size
                for f in folder.glob("*.safetensors")
                if f.name != "embeddings.safetensors"
            }
            models[label] = {
                "hidden": model.config.inner_dim, "heads": model.config.num_attention_heads,
                "head_dim": model.config.attention_head_dim,
                "transformer_params": sum(p.numel() for p in model.parameters()),
                "weights_mb": round(sum(files.values()) / 1e6, 2), "files_bytes": files,
            }  # fmt: skip
            for size in sizes:
                for mode, case in cases.items():
                    kw = {**case.call_kwargs(), "seed": case.seed, "height": size, "width": size,
                          "output_type": "np"}  # fmt: skip
                    calls[(label, size, mode)] = (pipe, kw)
        for pipe, kw in calls.values():  # warm-up
            for _ in range(args.warmup):
                pipe(**kw)
        # interleaved rounds: every configuration once per round, so load drift hits all alike;
        # each call's CPU time is also divided by the shipped model's (same mode, same round)
        # (process CPU time, one thread: what the call costs on an idle core; wall time: what it
        # took on this shared machine)
        times: dict = {k: [] for k in calls}
        cpu: dict = {k: [] for k in calls}
        loads = []
        for _ in range(args.runs):
            for k, (pipe, kw) in calls.items():
                t0, c0 = time.perf_counter(), time.process_time()
                pipe(**kw)
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
            loads.append(round(os.getloadavg()[0], 2))
        for (label, size, mode), ts in times.items():
            cs = cpu[(label, size, mode)]
            ratios = [t / b for t, b in zip(cs, cpu[(SHIPPED, sizes[0], mode)], strict=True)]
            row = {"model": label, "size": size, "tokens_per_half": (size // 16) ** 2, "mode": mode,
                   **_summary(ts, cs, ratios)}  # fmt: skip
            logger.info("%s", row)
            results.append(row)
    report = {
        "what": "UniDGPipeline call wall time on the CPU (crop, encode, steps, decode, paste back)",
        "num_inference_steps": card.defaults["num_inference_steps"], "threads": args.threads,
        "cpu_count": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()], "load_avg_1min_per_round": loads, "torch": torch.__version__,
        "note": "wider models are random-init (timing only); 1x = the shipped transformer without APO",
        "models": models, "timings": results,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
