"""Q/DQ quantisation of an exported ONNX graph from captured calibration data (issue 7).

INT8: per-output-channel symmetric weights, per-tensor symmetric activations (zero points 0).
FP8: E4M3 weights (per channel) and activations (per tensor). Only the inputs of
``MatMul`` / ``Gemm`` / ``Conv`` are quantised; weights are stored quantised with a
``DequantizeLinear`` in front (weight-only DQ: the file shrinks), activations get a
``QuantizeLinear → DequantizeLinear`` pair whose scale comes from the calibration data.
Everything else (norms, softmax, RoPE, residuals) stays in the high-precision dtype.

**Quantiser.** NVIDIA ModelOpt's ONNX PTQ (``modelopt.onnx.quantization.quantize``) is used when
importable: it calibrates on ONNX Runtime's CPU execution provider here, writes standard
opset-19 Q/DQ that TensorRT and TensorRT-RTX consume, and can cast the non-quantised part to
fp16 (``high_precision="fp16"``, its default here: TensorRT-RTX then fuses the attention, which
it leaves unfused in fp32). Install the base package plus the few modules its ONNX path imports,
**not** the ``[onnx]`` extra (that extra pulls ``onnxruntime-gpu`` over ``onnxruntime`` and pins an
older ``onnx``)::

    pip install nvidia-modelopt onnx_graphsurgeon polygraphy onnxslim onnxconverter-common lief

Without ModelOpt, INT8 falls back to ``onnxruntime.quantization.quantize_static`` (QDQ format,
``per_channel=True``, symmetric activations and weights, MinMax/entropy calibration; the rest
stays fp32). ORT's FP8 path needs its distribution calibrator and is not offered: FP8 needs
ModelOpt. The backend used is recorded in the sidecar and the model metadata.

**Layers kept in high precision** (``keep``): fnmatch patterns over the module path of each
node (from the exporter's ``pkg.torch.onnx.name_scopes`` metadata; the bias/weight initializer
names when that is missing), matched against the path and every ancestor. Defaults: the first
and last layers and the adaLN modulation linears (:data:`DEFAULT_KEEP`). Attention math
(``MatMul`` of two activations: QKᵀ and PV) is always kept unless ``quantize_attention=True``.

**No calibration, no quantisation.** Calibration data is read with
:func:`unidg_rt.quant.calibration.load_calibration`, which refuses a missing capture; ModelOpt's
random-data fallback is never reached. :func:`validate_qdq` checks every result before it ships.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.artifacts.adapters import AdapterScales, artifact_adapters
from unidg_rt.artifacts.feeds import GraphFeed, TransformerFeed
from unidg_rt.errors import ConfigError, InvalidInputError, UniDGError
from unidg_rt.quant.graph import (  # noqa: F401 - re-exported: the quantisation API lives here
    COMPUTE_OPS,
    DEFAULT_KEEP,
    METADATA_KEY,
    QDQReport,
    QuantPlan,
    keep_matches,
    load_model,
    node_module,
    plan_quantization,
    restore_kept_inputs,
    validate_qdq,
)
from unidg_rt.quant.quantizers import (
    resolve_backend,
    run_modelopt,
    run_ort,
)

logger = logging.getLogger(__name__)

QDQ_PRECISIONS = ("int8", "fp8")
#: minimum fraction of the non-kept MatMul/Gemm/Conv nodes that must come out quantised
DEFAULT_MIN_COVERAGE = 0.9
_ORT_TYPES = {1: "tensor(float)", 10: "tensor(float16)", 11: "tensor(double)", 7: "tensor(int64)",
              6: "tensor(int32)", 9: "tensor(bool)"}  # fmt: skip


class QuantizationError(UniDGError):
    """A quantised graph failed validation (or the quantiser failed); it is not written."""


# ---------------------------------------------------------------------- calibration feeds
class _GraphInputs:
    """A graph's non-initializer inputs (name, ORT type name, shape), as an ORT session lists them."""

    class _Arg:
        def __init__(self, name, type_, shape):
            self.name, self.type, self.shape = name, type_, shape

    def __init__(self, model):
        inits = {i.name for i in model.graph.initializer}
        self._inputs = []
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            t = vi.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            self._inputs.append(self._Arg(vi.name, _ORT_TYPES.get(t.elem_type, "?"), shape))

    def get_inputs(self):
        return self._inputs


def calibration_feeds(
    onnx_path: str | Path,
    calibration: str | Path,
    component: str = "transformer",
    max_samples: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """One feed per captured sample, prepared exactly like the ORT backend prepares a pipeline
    feed (defaults filled, group tables broadcast). Refuses missing or mismatched data."""
    from unidg_rt.quant.calibration import load_calibration

    data = load_calibration(calibration, component)  # refuses a missing capture
    model = load_model(onnx_path)
    shim = _GraphInputs(model)
    runner = (TransformerFeed if component == "transformer" else GraphFeed)(shim.get_inputs(), component)
    if component == "transformer":  # data captured without strengths (torch backend): 1.0 each
        sidecar = Path(onnx_path).with_suffix(".json")
        names = artifact_adapters(json.loads(sidecar.read_text())) if sidecar.is_file() else []
        runner.adapters = AdapterScales(names)
    counts = {k: v.shape[0] for k, v in data.items()}
    if not counts or len(set(counts.values())) != 1:
        raise InvalidInputError(
            f"calibration data for {component} is empty or ragged {counts}: re-run calibrate"
        )
    n = next(iter(counts.values()))
    idx = np.arange(n) if not max_samples or max_samples >= n else np.linspace(0, n - 1, max_samples).round()
    feeds = []
    for i in np.unique(idx.astype(int)):
        try:
            feed = runner.prepare({k: v[i] for k, v in data.items()})
        except (InvalidInputError, KeyError) as exc:
            raise InvalidInputError(
                f"calibration data for {component} does not fit {Path(onnx_path).name}: {exc}; "
                "re-run `unidg-rt calibrate` with this model"
            ) from exc
        for arg in shim.get_inputs():
            got = feed[arg.name].shape
            if len(got) != len(arg.shape) or any(
                isinstance(d, int) and d and d != s for d, s in zip(arg.shape, got, strict=False)
            ):
                raise InvalidInputError(
                    f"calibration input {arg.name!r} has shape {got}, the graph wants {arg.shape}: the capture "
                    f"is from another model; re-run `unidg-rt calibrate --weights <this checkpoint>`"
                )
        feeds.append(feed)
    return feeds


@dataclass
class QuantResult:
    path: Path
    precision: str
    plan: QuantPlan
    report: QDQReport
    settings: dict[str, Any]
    seconds: float


def quantize_onnx(
    src: str | Path,
    out: str | Path,
    calibration: str | Path,
    precision: str = "int8",
    *,
    component: str = "transformer",
    keep: Sequence[str] | None = None,
    quantize_attention: bool = False,
    backend: str = "auto",
    high_precision: str | None = None,
    calibration_method: str = "max",
    max_samples: int | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> QuantResult:
    """Quantise the fp32 ONNX ``src`` into ``out`` with the captured ``calibration`` (folder of
    ``{component}.npz`` or the file). Validates the result (:func:`validate_qdq`) and raises
    :class:`QuantizationError` rather than writing a graph that fails. ``high_precision``: dtype
    of everything not quantised, ``fp16`` (default with ModelOpt) / ``bf16`` / ``fp32`` (ORT)."""
    import onnx

    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if precision not in QDQ_PRECISIONS:
        raise ConfigError(f"precision={precision!r}: Q/DQ quantisation is {' or '.join(QDQ_PRECISIONS)}")
    if calibration_method not in ("max", "entropy") + (("percentile",) if backend == "ort" else ()):
        raise ConfigError(f"calibration_method={calibration_method!r}: choose max or entropy")
    # refusal first: nothing runs (and ModelOpt never falls back to random data) without a capture
    feeds = calibration_feeds(src, calibration, component, max_samples)
    backend = resolve_backend(backend, precision)
    high_precision = high_precision or ("fp16" if backend == "modelopt" else "fp32")
    if high_precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"high_precision={high_precision!r}: choose fp32, fp16 or bf16")
    if backend == "ort" and high_precision != "fp32":
        raise ConfigError(
            "the onnxruntime quantizer keeps the rest of the graph fp32: pass high_precision='fp32'"
        )
    model = load_model(src)
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        raise ConfigError(
            f"{src.name} has custom-domain nodes (the plugin form?): calibrate a form ORT can run"
        )
    plan = plan_quantization(model, component, keep, quantize_attention)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    settings = {
        "precision": precision,
        "component": component,
        "keep_patterns": list(plan.keep_patterns),
        "quantize_attention": quantize_attention,
        "high_precision": high_precision,
        "calibration_method": calibration_method,
        "calibration_samples": len(feeds),
        "weights": "per-channel symmetric",
        "activations": "per-tensor symmetric",
        "plan": plan.summary(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        tmp_out = tmp / out.name
        # the quantisers get a copy: ModelOpt runs shape inference *in place* on its input file
        # (which would break the fp32 export's sha256 in its sidecar and the engine manifests)
        work = tmp / f"{src.stem}.source.onnx"
        shutil.copy2(src, work)
        for loc in _external_files(model):
            (tmp / loc).symlink_to((src.parent / loc).resolve())
        try:
            if backend == "modelopt":
                settings.update(
                    run_modelopt(
                        work, tmp_out, feeds, precision, plan, high_precision, calibration_method, external
                    )
                )
            else:
                settings.update(run_ort(work, tmp_out, feeds, precision, plan, calibration_method, external))
        except (InvalidInputError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - a quantiser failure is reported with its cause
            raise QuantizationError(
                f"{settings.get('backend', backend)} failed on {src.name}: {type(exc).__name__}: {exc}"
            ) from exc
        qmodel = onnx.load(str(tmp_out), load_external_data=False)
        settings["kept_inputs_restored"] = restore_kept_inputs(qmodel, plan.keep)
        meta = {
            "precision": precision,
            "component": component,
            "keep_nodes": sorted(plan.keep),
            "min_coverage": min_coverage,
            "backend": settings["backend"],
            "high_precision": high_precision,
        }
        _set_metadata(qmodel, {METADATA_KEY: json.dumps(meta), "unidg_rt.precision": precision})
        onnx.save(qmodel, str(tmp_out))
        report = validate_qdq(tmp_out, precision=precision, keep_nodes=plan.keep, min_coverage=min_coverage)
        if not report.ok:
            raise QuantizationError(
                f"{out.name} failed validation, not written:\n  " + "\n  ".join(report.problems)
            )
        for loc in _external_files(qmodel):  # the quantised weights' data file(s) first, the .onnx last
            shutil.move(str(tmp / loc), out.parent / loc)
        tmp_out.replace(out)
        report.path = str(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    logger.info(
        "quantised %s → %s (%s, %s) in %.1f s: coverage %.0f%%",
        src.name,
        out.name,
        precision,
        settings["backend"],
        seconds,
        100 * report.coverage,
    )
    return QuantResult(out, precision, plan, report, settings, seconds)


def _external_files(model) -> list[str]:
    return sorted({d.value for t in model.graph.initializer for d in t.external_data if d.key == "location"})


def _set_metadata(model, props: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            p = model.metadata_props.add()
            p.key, p.value = k, v
