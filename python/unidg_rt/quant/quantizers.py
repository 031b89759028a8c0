"""The two Q/DQ quantisers behind :func:`unidg_rt.quant.qdq.quantize_onnx`: NVIDIA ModelOpt's ONNX
PTQ (INT8 and FP8, max calibration) and ONNX Runtime's ``quantize_static`` (INT8), fed the
calibration samples by one data reader; which one runs (:func:`resolve_backend`) is feature-detected."""

from __future__ import annotations

import contextlib
import logging
import re

import numpy as np

from unidg_rt.errors import BackendUnavailableError, ConfigError
from unidg_rt.quant.graph import COMPUTE_OPS

logger = logging.getLogger(__name__)

MODELOPT_HINT = "pip install nvidia-modelopt onnx_graphsurgeon polygraphy onnxslim onnxconverter-common lief"


def calibration_reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            self.i += 1
            return feeds[self.i - 1] if self.i <= len(feeds) else None

        def get_first(self):  # ModelOpt peeks at one sample to trace outputs
            return feeds[0]

        def rewind(self):
            self.i = 0

        def __len__(self):
            return len(feeds)

    return FeedReader()


# ---------------------------------------------------------------------- quantisers
def modelopt_unavailable_reason() -> str | None:
    """Why ModelOpt's ONNX quantizer cannot be used here (the import error and the install
    command), or ``None`` when it imports (it needs onnx_graphsurgeon, polygraphy, lief… besides)."""
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or its optional deps failing at import
        return f"ModelOpt's ONNX quantizer does not import ({type(exc).__name__}: {exc}); {MODELOPT_HINT}"
    return None


def modelopt_available() -> bool:
    """ModelOpt's ONNX quantizer imports; when not, the reason is logged (INFO) and
    :func:`modelopt_unavailable_reason` returns it."""
    reason = modelopt_unavailable_reason()
    if reason is not None:
        logger.info("%s", reason)
    return reason is None


def resolve_backend(backend: str, precision: str) -> str:
    if backend not in ("auto", "modelopt", "ort"):
        raise ConfigError(f"backend={backend!r}: choose auto, modelopt or ort")
    if backend == "auto":
        backend = "modelopt" if modelopt_available() else "ort"
    if backend == "modelopt" and not modelopt_available():
        raise BackendUnavailableError(
            "ModelOpt's ONNX quantizer is not importable: pip install nvidia-modelopt onnx_graphsurgeon polygraphy "
            "onnxslim onnxconverter-common lief (not the [onnx] extra: it replaces onnxruntime with onnxruntime-gpu)"
        )
    if backend == "ort" and precision == "fp8":
        raise BackendUnavailableError(
            "FP8 Q/DQ needs ModelOpt (onnxruntime's quantizer has no max-calibrated FP8): " + MODELOPT_HINT
        )
    return backend


@contextlib.contextmanager
def ort_quantization_restored():
    """ModelOpt monkey-patches onnxruntime.quantization's calibrators and op registries on every
    call; put them back afterwards so ``quantize_static`` (and anything else) works unchanged."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer, registry

    classes = [
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        calibrate.CalibraterBase,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(c, dict(vars(c))) for c in classes]
    modules = [(calibrate, "create_calibrator", calibrate.create_calibrator)]
    registries = [(r, dict(r)) for r in (registry.QDQRegistry, registry.QLinearOpsRegistry)]
    try:
        yield
    finally:
        for cls, attrs in saved:
            for k in set(vars(cls)) - set(attrs):
                delattr(cls, k)
            for k, v in attrs.items():
                if vars(cls).get(k) is not v and not k.startswith("__dict__") and k != "__weakref__":
                    setattr(cls, k, v)
        for mod, name, value in modules:
            setattr(mod, name, value)
        for reg, content in registries:
            reg.clear()
            reg.update(content)


def run_modelopt(src, out, feeds, precision, plan, high_precision, method, external):
    import onnxruntime as ort
    from modelopt.onnx.quantization import quantize

    eps = ["cuda:0", "cpu"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]
    logging.getLogger("modelopt").setLevel(logging.WARNING)
    with ort_quantization_restored():
        _modelopt_quantize(quantize, src, out, feeds, precision, plan, high_precision, method, external, eps)
    import modelopt

    return {"backend": "modelopt", "backend_version": modelopt.__version__, "calibration_eps": eps}


def _modelopt_quantize(quantize, src, out, feeds, precision, plan, high_precision, method, external, eps):
    quantize(
        str(src),
        quantize_mode=precision,
        calibration_data_reader=calibration_reader(feeds),
        calibration_eps=eps,
        calibration_method=method,
        high_precision_dtype=high_precision,
        output_path=str(out),
        log_level="WARNING",
        dq_only=True,
        op_types_to_quantize=list(COMPUTE_OPS),
        disable_mha_qdq=True,
        nodes_to_exclude=[f"^{re.escape(n)}$" for n in plan.keep] or None,
        use_external_data_format=external,
    )


def run_ort(src, out, feeds, precision, plan, method, external):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "max": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    quantize_static(
        str(src),
        str(out),
        calibration_reader(feeds),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(COMPUTE_OPS),
        nodes_to_exclude=list(plan.keep),
        calibrate_method=methods[method],
        use_external_data_format=external,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return {"backend": "onnxruntime.quantization", "backend_version": ort.__version__}
