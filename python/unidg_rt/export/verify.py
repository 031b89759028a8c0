"""ONNX Runtime ↔ torch parity (DESIGN §5, rung 2): run an exported file on ORT CPU and the
export wrapper eagerly on the same feed, report max/mean absolute differences per output."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import BackendUnavailableError
from unidg_rt.export import ExportError
from unidg_rt.export.spec import IOSpec

logger = logging.getLogger(__name__)


@dataclass
class ParityReport:
    """Per-output ``max_abs`` / ``mean_abs``; ``passed`` when every ``max_abs <= atol``."""

    path: str
    atol: float
    max_abs: dict[str, float] = field(default_factory=dict)
    mean_abs: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.max_abs.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return self.worst <= self.atol

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "atol": self.atol,
            "passed": self.passed,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }


def ort_session(path: str | Path, providers: list[str] | None = None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError("parity checks need onnxruntime: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_ort(session, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feed]
    if missing:
        raise ExportError(f"feed lacks graph inputs {missing}")
    outs = session.run(None, {n: feed[n] for n in names})
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outs, strict=True)}


def compare(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], atol: float, path=""
) -> ParityReport:
    report = ParityReport(str(path), atol)
    for name, exp in expected.items():
        if name not in actual:
            raise ExportError(f"{path}: output {name!r} missing from the ONNX results {sorted(actual)}")
        got = np.asarray(actual[name], dtype=np.float64)
        exp = np.asarray(exp, dtype=np.float64)
        if got.shape != exp.shape:
            raise ExportError(f"{path}: output {name!r} has shape {got.shape}, torch gives {exp.shape}")
        diff = np.abs(got - exp)
        report.max_abs[name] = float(diff.max()) if diff.size else 0.0
        report.mean_abs[name] = float(diff.mean()) if diff.size else 0.0
        report.shapes[name] = tuple(got.shape)
    return report


def torch_outputs(module: Callable, spec: IOSpec, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an export wrapper eagerly on a numpy feed → ``{output name: array}``."""
    import torch

    from unidg_rt.export.wrappers import torch_feed

    with torch.inference_mode():
        out = module(**torch_feed(spec, dict(feed)))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {name: o.detach().float().cpu().numpy() for name, o in zip(spec.output_names, outs, strict=False)}


def verify_onnx(
    path: str | Path,
    module: Callable,
    spec: IOSpec,
    feeds: list[Mapping[str, np.ndarray]] | None = None,
    atol: float = 1e-4,
    providers: list[str] | None = None,
) -> ParityReport:
    """ORT vs ``module`` (an export wrapper, run eagerly) on each feed (default: the spec's min
    and opt points); the report keeps the worst difference per output over all feeds."""
    session = ort_session(path, providers)
    feeds = feeds or [spec.sample_inputs(point="min"), spec.sample_inputs(point="opt", seed=1)]
    total = ParityReport(str(path), atol)
    for feed in feeds:
        rep = compare(torch_outputs(module, spec, feed), run_ort(session, feed), atol, path)
        for k, v in rep.max_abs.items():
            total.max_abs[k] = max(v, total.max_abs.get(k, 0.0))
            total.mean_abs[k] = max(rep.mean_abs[k], total.mean_abs.get(k, 0.0))
            total.shapes[k] = rep.shapes[k]
    logger.info(
        "parity %s: max |Δ| %.3g (atol %.1g) %s",
        Path(path).name,
        total.worst,
        atol,
        "ok" if total.passed else "FAILED",
    )
    return total
