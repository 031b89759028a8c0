"""Shared training helpers: seeding, per-step random streams, LR schedule, checkpoints, report.

Determinism: every random draw of step ``i`` comes from generators seeded by ``(seed, stage, i)``
(:func:`step_rng`), so a run resumed from a checkpoint draws exactly what an uninterrupted run
draws, and two runs with the same seed produce identical weights (single-threaded CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unidg_rt.artifacts.io import atomic_path

logger = logging.getLogger(__name__)

_STAGE_IDS = {
    "vae": 1,
    "data": 2,
    "sft": 3,
    "apo": 4,
    "stats": 5,
    "init": 6,
    "refbank": 7,
    "refenc": 8,
    "apo-mismatch": 9,
}


def setup_torch(threads: int, seed: int) -> None:
    """One intra-op thread by default: on a shared 2-core CPU, OpenMP barriers with 2 threads
    were 5-7× slower than 1 thread when other processes competed (measured, torch 2.13)."""
    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)


def stage_seed(seed: int, stage: str, index: int = 0) -> int:
    """A 63-bit seed for (run seed, stage, step/item index), stable across platforms."""
    ss = np.random.SeedSequence([int(seed), _STAGE_IDS[stage], int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def step_rng(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """(numpy, torch) generators for one training step."""
    s = stage_seed(seed, stage, step)
    return np.random.default_rng(s), torch.Generator().manual_seed(s)


def cosine_lr(step: int, total: int, base: float, warmup: int, min_frac: float) -> float:
    """Linear warm-up then cosine decay to ``min_frac · base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float, scale_key: str = "lr_scale") -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get(scale_key, 1.0)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save`` (a crash mid-write never leaves a truncated checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    logger.info("resuming from %s", path)
    return torch.load(path, map_location="cpu", weights_only=False)


class Checkpointer:
    """Saves ``state_fn()`` every ``every_s`` seconds of wall time (and when asked)."""

    def __init__(self, path: Path, every_s: float):
        self.path, self.every_s = path, every_s
        self._last = time.monotonic()

    def maybe_save(self, state_fn, force: bool = False) -> None:
        if force or time.monotonic() - self._last >= self.every_s:
            save_checkpoint_state(self.path, state_fn())
            self._last = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- logging / report
class LossLog:
    """Running losses: first/last window means for the report, periodic log lines."""

    def __init__(self, stage: str, total: int, window: int = 20, every: int = 50):
        self.stage, self.total, self.window, self.every = stage, total, window, every
        self.values: list[float] = []
        self.t0 = time.perf_counter()

    def add(self, step: int, value: float, **extra) -> None:
        self.values.append(float(value))
        if step % self.every == 0 or step == self.total - 1:
            recent = np.mean(self.values[-self.window :])
            rate = (time.perf_counter() - self.t0) / max(1, len(self.values))
            more = " ".join(f"{k}={v:.4g}" for k, v in extra.items())
            logger.info(
                "%s step %d/%d loss %.4f (avg %.4f) %.2f s/step %s",
                self.stage,
                step + 1,
                self.total,
                value,
                recent,
                rate,
                more,
            )

    def summary(self) -> dict[str, Any]:
        v = self.values
        w = min(self.window, max(1, len(v) // 4)) if v else 0
        return {
            "loss_start": float(np.mean(v[:w])) if v else None,
            "loss_end": float(np.mean(v[-w:])) if v else None,
            "loss_window": w,
            "steps_logged": len(v),
        }


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",  # of the CPU stages; the SFT stage records its own ("device" in its entry)
    }


def update_report(path: Path, stage: str, entry: dict[str, Any], **top) -> dict[str, Any]:
    """Merge one stage's entry into ``train_report.json`` (created if missing)."""
    report = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    report.setdefault("stages", {})[stage] = entry
    report.update(top)
    report["total_wall_s"] = round(sum(s.get("wall_s", 0.0) for s in report["stages"].values()), 1)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
