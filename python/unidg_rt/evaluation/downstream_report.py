"""What the downstream test (:mod:`unidg_rt.evaluation.downstream`) reports: per-method metric
summaries over seeds (:class:`DownstreamReport`, :func:`summarise`) and their markdown table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DownstreamReport:
    """Per-method metric summaries (``mean``, ``std`` over seeds, ``min``, ``max``, ``per_seed``)."""

    settings: dict[str, Any]
    methods: dict[str, dict[str, dict[str, Any]]]
    paint: dict[str, Any]
    timings: dict[str, float]
    wall_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarise(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "per_seed": [float(v) for v in arr],
    }


TABLE_COLUMNS = (
    ("pixel AP", "pixel_ap"),
    ("image AUROC", "image_auroc"),
    ("pixel AP, bank categories", "pixel_ap_bank_categories"),
    ("pixel AP, other categories", "pixel_ap_other_categories"),
)


def format_cell(summary: dict[str, Any] | None) -> str:
    """``mean ± std`` of a :func:`summarise` record (– when missing)."""
    if not summary:
        return "–"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def downstream_markdown(report: DownstreamReport) -> str:
    """The README / docs table of a report."""
    s = report.settings
    head = "| training defects | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " | near-empty paints |"
    lines = [head, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for m, label in s["methods"].items():
        cells = [format_cell(report.methods[m].get(key)) for _, key in TABLE_COLUMNS]
        share = report.paint["near_empty_share"].get(m)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {share:.0%} |")
    lines.append("")
    lines.append(
        f"{s['seeds']} seeds (mean ± std), {s['train_images']} anomalous + {s['train_images']} normal training "
        f"images per method, {s['test_images']} + {s['test_images']} test images at {s['size']} px, "
        f"{s['segmenter']['steps']} segmenter steps; model: {s['model']}; wall {report.wall_s:.0f} s. "
        f"Chance pixel AP {s['test']['chance_pixel_ap']['all']:.4f} (bank categories "
        f"{s['test']['chance_pixel_ap']['bank']:.4f}, other {s['test']['chance_pixel_ap']['other']:.4f}). "
        f"Test defects come from the same procedural family the model was trained on."
    )
    return "\n".join(lines) + "\n"
