"""Collect the default-model v2 measurements into one JSON (benchmarks/results/levers-v2.json).

Inputs: the run folder (``train_report.json``: recipe, wall times, the held-out curve), any
number of evaluated checkpoints (``NAME=PATH[,PATH…]``: JSON files from ``unidg-rt eval --json``,
``scripts/reference_swap.py`` and ``scripts/snapshot_sft.py``, or folders holding them as
``eval.json`` / ``swap.json`` / ``snapshot.json``), and the lever cost file::

    .venv/bin/python scripts/levers_summary.py --run /work/runs/v2 \\
        --point v1=benchmarks/results/eval-default.json,benchmarks/results/reference-swap-v1.json \\
        --point step1530=/work/runs/v2-snap1530 ... \\
        --out benchmarks/results/levers-v2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_KEYS = ("consistency", "consistency_se", "consistency_by_mode", "consistency_by_category", "fd", "diversity",
         "presence_rate", "background_max_error", "s_per_image")  # fmt: skip


def _eval_summary(path: Path) -> dict:
    rep = json.loads(path.read_text())
    out = {"cases": rep["settings"]["num_cases"], "seeds": rep["settings"]["num_seeds"]}
    for name, v in rep["variants"].items():
        out[name] = {k: v[k] for k in _KEYS if k in v}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--point", action="append", default=[], help="NAME=DIR (eval.json / swap.json inside)")
    ap.add_argument("--cost", type=Path, default=Path("benchmarks/results/levers-v2-cost.json"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    report = json.loads((args.run / "train_report.json").read_text())
    sft = report["stages"].get("sft", {})
    out: dict = {
        "run": str(args.run),
        "recipe": report["recipe"],
        "stages_wall_s": {k: v.get("wall_s") for k, v in report["stages"].items()},
        "sft": {
            k: sft.get(k)
            for k in (
                "steps",
                "steps_planned",
                "fresh_pairs",
                "loss_start",
                "loss_end",
                "fixed_batch_loss",
                "device",
            )
        },  # fmt: skip
        "heldout_curve": sft.get("curve", []),
        "cost": json.loads(args.cost.read_text()) if args.cost.is_file() else None,
        "points": {},
    }
    for spec in args.point:
        name, _, paths = spec.partition("=")
        files: list[Path] = []
        for p in (Path(x) for x in paths.split(",")):
            files += [p / f for f in ("eval.json", "swap.json", "snapshot.json")] if p.is_dir() else [p]
        point: dict = {}
        for f in (f for f in files if f.is_file()):
            data = json.loads(f.read_text())
            if "variants" in data:
                point["eval"] = _eval_summary(f)
            elif "follows_swapped" in data:
                point["reference_swap"] = data
            elif "step" in data:
                point["snapshot"] = {k: data[k] for k in ("step", "wall_s", "ema")}
        out["points"][name] = point
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
