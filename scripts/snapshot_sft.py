"""Write a loadable SFT checkpoint from a running (or interrupted) run's resume file.

Reads ``<run>/ckpt/sft.pt`` (the periodic SFT checkpoint), takes the EMA weights when the run has
them (else the raw ones), and writes ``<dest>/model.safetensors`` (card without adapters, fp16
storage as shipped) + ``<dest>/embeddings.safetensors``, so a model mid-run can be evaluated
(``unidg-rt eval --weights <dest>/model.safetensors``) without touching the run::

    .venv/bin/python scripts/snapshot_sft.py /work/runs/v2 /work/runs/v2-snap
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger("snapshot_sft")


def main() -> None:
    from unidg_rt.embeddings import EmbeddingsCache
    from unidg_rt.models.loading import save_checkpoint
    from unidg_rt.train.dataset import training_categories
    from unidg_rt.train.recipe import Recipe
    from unidg_rt.train.run import _DTYPES, _prompts, arch_configs, card_defaults
    from unidg_rt.train.sft import CategoryTable
    from unidg_rt.train.vae import load_vae_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rec = Recipe.from_dict(json.loads((args.run / "train_report.json").read_text())["recipe"])
    state = torch.load(args.run / "ckpt" / "sft.pt", map_location="cpu", weights_only=False)
    from unidg_rt.models.mmdit import FluxTransformer

    tcfg, _ = arch_configs(rec)
    model = FluxTransformer(tcfg)
    model.load_state_dict(state["model"])
    cats = training_categories()
    emb = state["table"]["embeds"]
    table = CategoryTable(len(cats), emb.shape[1], emb.shape[2], state["table"]["pooled"].shape[1])
    table.load_state_dict(state["table"])
    if "ema" in state:  # EMA shadows are in model.parameters() + table.parameters() order
        params = list(model.parameters()) + list(table.parameters())
        with torch.no_grad():
            for p, s in zip(params, state["ema"], strict=True):
                p.copy_(s)
    vae = load_vae_file(args.run / "vae.safetensors")
    args.dest.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.dest / "model.safetensors", model.eval(), vae, defaults=card_defaults(rec, with_apo=False),
                    dtype=_DTYPES[rec.ship.storage_dtype])  # fmt: skip
    from unidg_rt.embeddings import normalize_category

    names = [normalize_category(c) for c in cats]
    EmbeddingsCache.save(args.dest / "embeddings.safetensors", table.entries(names), prompts=_prompts(names),
                         encoder="unidg-rt learned category table (Diversity-SFT)")  # fmt: skip
    info = {"run": str(args.run), "step": state["step"], "wall_s": round(state["wall_s"], 1), "ema": "ema" in state,
            "curve": state.get("curve", [])}  # fmt: skip
    (args.dest / "snapshot.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("snapshot of step %d (ema=%s) in %s", state["step"], "ema" in state, args.dest)


if __name__ == "__main__":
    main()
