"""What :func:`~unidg_rt.evaluation.evaluate` measured (:class:`EvalReport`) and its side-by-side
table as GitHub markdown; :class:`JsonReport`, the JSON form every evaluation report shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unidg_rt.artifacts.io import atomic_write_json, jsonable


class JsonReport:
    """A report dataclass as JSON: numpy scalars as numbers, floats rounded, non-finite as null
    (:func:`~unidg_rt.artifacts.io.jsonable`), written atomically."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)

    def save_json(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


@dataclass
class EvalReport(JsonReport):
    """Everything :func:`evaluate` measured. ``variants`` / ``baselines``: name → metrics;
    ``comparison``: per metric, how the last variant compares with the first."""

    settings: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    classifier: dict[str, Any]
    comparison: dict[str, Any]
    cases: list[dict[str, Any]]
    per_image: dict[str, list[dict[str, Any]]]
    wall_s: float
    notes: list[str] = field(default_factory=list)


def report_markdown(report: EvalReport) -> str:
    """The side-by-side table as GitHub markdown (for the README)."""
    cols = {
        **report.variants,
        "real (reference)": report.baselines["real"],
        "flat fill (reference)": report.baselines["flat_fill"],
    }
    rows = [
        ("defect presence: mean abs diff in mask", "presence_mean", "{:.3f}"),
        (f"defect presence: rate > {report.settings['presence_threshold']}", "presence_rate", "{:.0%}"),
        ("background max error outside paste alpha (levels)", "background_max_error", "{:.0f}"),
        ("category consistency (classifier top-1)", "consistency", "{:.0%}"),
        *[(f"— {mode} mode", ("consistency_by_mode", mode), "{:.0%}") for mode in report.settings["modes"]],
        ("diversity across seeds (mean pairwise abs diff in mask)", "diversity", "{:.3f}"),
        ("Fréchet distance to real defects (lower is better)", "fd", "{:.2f}"),
        ("seconds per image", "s_per_image", "{:.2f}"),
    ]
    head = "| metric | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for label, key, fmt in rows:
        cells = []
        for m in cols.values():
            v = m.get(key) if isinstance(key, str) else (m.get(key[0]) or {}).get(key[1])
            cells.append(
                "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    s = report.settings
    lines.append("")
    lines.append(
        f"{s['num_cases']} held-out cases (seeds {s['case_seeds'][0]}–{s['case_seeds'][1]}, modes "
        f"{', '.join(s['modes'])}), {s['num_seeds']} seeds each, {s['num_inference_steps']} steps, generation "
        f"{s['generation_size'][0]}×{s['generation_size'][1]}; classifier held-out accuracy "
        f"{report.classifier.get('test_accuracy') or float('nan'):.0%} (chance {report.classifier.get('chance') or 0:.0%})."
    )
    return "\n".join(lines + ["", *_category_markdown(report, cols)]) + "\n"


def _category_markdown(report: EvalReport, cols: dict[str, dict]) -> list[str]:
    """Per-category consistency of every column, and the share of all results the classifier
    gives each category (of the last model variant): which categories work, and what the model
    paints instead."""
    last = list(report.variants)[-1]
    share = report.variants[last].get("predicted_share") or {}
    cats = report.settings["categories"]
    lines = [
        f"| category | {' | '.join(cols)} | share of {last} results read as it |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for c in cats:
        cells = [
            "–"
            if (m.get("consistency_by_category") or {}).get(c) is None
            else f"{m['consistency_by_category'][c]:.0%}"
            for m in cols.values()
        ]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {share.get(c, 0.0):.0%} |")
    return lines
