"""Merge the outputs of scripts/gpu-check.sh into one JSON: ``<results-dir>/<gpu-name>.json``.

Reads ``WORK/steps.tsv`` (name, status, rc, seconds, last log line), ``WORK/bench-<size>.json``
(``unidg-rt bench --json``), ``WORK/generate/{fast,eager}.json`` (+ PNGs, compared pixel-wise),
``WORK/gpu-tests.xml`` (junit of ``pytest -m gpu``), ``WORK/ort/ort.json``; checks issue 15's
targets (ratios vs diffusers eager bf16 in the same run) and writes the merged record. Numbers
are only copied from those files, never made up: a missing measurement is ``null`` with the
step's status beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

logger = logging.getLogger("gpu_check_report")

#: issue 15's targets: (name, what, bound); value = numerator / denominator of DiT step medians
RATIO_TARGETS = (
    ("dit_step_fast_vs_diffusers", ("ours-fast", "diffusers-eager"), 0.60),
    ("dit_step_bias_vs_nobias", ("ours-fast", "ours-fast-nobias"), 1.05),
    ("dit_step_fp8_vs_diffusers", ("ours-fast-fp8", "diffusers-eager"), 0.35),
)
E2E_TARGET = ("e2e_8_steps_fp8_512_ms", "ours-fast-fp8", 512, 450.0)


def read_steps(work: Path) -> dict[str, dict]:
    steps = {}
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, rc, seconds, last = (line.split("\t") + [""] * 5)[:5]
        steps[name] = {"status": status, "rc": None if rc == "-" else int(rc), "seconds": int(seconds),
                       "last_line": last}  # fmt: skip
    return steps


def read_junit(path: Path) -> dict | None:
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    out["failed_tests"] = [
        f"{c.get('classname')}::{c.get('name')}"
        for c in root.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    return out


def read_generate(work: Path) -> dict:
    out: dict = {}
    for name in ("fast", "eager"):
        rec_path = work / "generate" / f"{name}.json"
        if rec_path.is_file():
            rec = json.loads(rec_path.read_text())
            p = rec.get("pipeline", {})
            out[name] = {"elapsed_s": rec.get("elapsed_s"), "fast_path": p.get("fast_path"),
                         "device": p.get("device"), "dtype": p.get("dtype"), "settings_fast_path":
                         rec.get("settings", {}).get("fast_path")}  # fmt: skip
    a, b = work / "generate" / "fast.png", work / "generate" / "eager.png"
    if a.is_file() and b.is_file():
        import numpy as np
        from PIL import Image

        x = np.asarray(Image.open(a), np.int16)
        y = np.asarray(Image.open(b), np.int16)
        if x.shape == y.shape:
            d = np.abs(x - y)
            out["fast_vs_eager"] = {"max_abs_levels": int(d.max()), "mean_abs_levels": round(float(d.mean()), 4),
                                    "pixels_differing": round(float((d.max(axis=-1) > 0).mean()), 6)}  # fmt: skip
    return out


def _median(bench: dict, variant: str, key: str = "dit_step") -> float | None:
    entry = bench.get("results", {}).get(variant, {})
    return entry.get(key, {}).get("median_ms") if isinstance(entry, dict) else None


def targets(benches: dict[int, dict]) -> dict:
    out = {}
    for size, bench in sorted(benches.items()):
        for name, (num, den), bound in RATIO_TARGETS:
            a, b = _median(bench, num), _median(bench, den)
            value = round(a / b, 4) if a and b else None
            out[f"{name}@{size}"] = {
                "value": value,
                "target": f"<= {bound}",
                "met": None if value is None else value <= bound,
            }
    name, variant, size, bound = E2E_TARGET
    steps = benches.get(size, {}).get("config", {}).get("steps")
    value = _median(benches.get(size, {}), variant, f"e2e_{steps}_steps") if steps == 8 else None
    out[name] = {"value": value, "target": f"<= {bound}", "met": None if value is None else value <= bound}
    return out


def gpu_name(benches: dict[int, dict], dry_run: bool) -> str:
    if dry_run:
        return "cpu-dry-run"
    for bench in benches.values():
        if bench.get("environment", {}).get("gpu"):
            return bench["environment"]["gpu"]
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:
        pass
    return "no-gpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def build_report(work: Path, dry_run: bool = False) -> dict:
    benches = {}
    for path in sorted(work.glob("bench-*.json")):
        benches[int(path.stem.split("-")[1])] = json.loads(path.read_text())
    ort_rec = work / "ort" / "ort.json"
    ort = None
    if ort_rec.is_file():
        rec = json.loads(ort_rec.read_text())
        ort = {"elapsed_s": rec.get("elapsed_s"), "pipeline": rec.get("pipeline", {})}
    env = next(iter(benches.values()), {}).get("environment", {})
    steps = read_steps(work)
    return {
        "gpu": gpu_name(benches, dry_run),
        "dry_run": dry_run,
        "environment": env,
        "steps": steps,
        "all_ok": bool(steps) and all(s["status"] in ("ok", "skipped") for s in steps.values()),
        "gpu_tests": read_junit(work / "gpu-tests.xml"),
        "generate": read_generate(work),
        "bench": {str(k): v for k, v in sorted(benches.items())},
        "ort_cuda": ort
        if ort is not None
        else {
            "status": steps.get("ort-cuda", {}).get("status"),
            "reason": steps.get("ort-cuda", {}).get("last_line"),
        },  # fmt: skip
        "targets": targets(benches),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", type=Path, required=True, help="the folder gpu-check.sh wrote its step outputs to"
    )
    ap.add_argument("--results-dir", type=Path, required=True)
    ap.add_argument("--copy-to", type=Path, help="also write <copy-to>/benchmarks/results/<gpu>.json")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    report = build_report(args.work, args.dry_run)
    name = slug(report["gpu"]) + ".json"
    text = json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    target = args.results_dir / name
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    logger.info("wrote %s", target)
    if args.copy_to is not None:
        dest = args.copy_to / "benchmarks" / "results" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, dest)
        logger.info("wrote %s", dest)
    for key, t in report["targets"].items():
        logger.info(
            "target %-32s %-10s %s",
            key,
            t["value"],
            {True: "met", False: "MISSED", None: "not measured"}[t["met"]],
        )
    for key, s in report["steps"].items():
        logger.info("step %-10s %s (%ss)", key, s["status"], s["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
