"""ONNX Runtime backend: numpy arrays in, numpy arrays out (DESIGN §5).

Reads an exported folder (``unidg_onnx.json`` manifest + ``{component}.{form}.{precision}.onnx``
files, written by :func:`unidg_rt.export.pipeline.export_pipeline`) and serves the three
runners of the backend protocol, plus the checkpoint's reference encoder when it was exported
(:class:`~unidg_rt.runtime.conditioning.ReferenceEncoderRunner`); :meth:`OrtBackend.open` returns
the backend and the folder's card. ``onnxruntime`` is imported
lazily; execution providers are feature-detected (``CUDAExecutionProvider`` when onnxruntime-gpu
is installed, else CPU). No torch import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.artifacts.adapters import graph_adapters
from unidg_rt.artifacts.card import Card, card_from_manifest
from unidg_rt.artifacts.feeds import GraphFeed, TransformerFeed
from unidg_rt.artifacts.onnx_folder import MANIFEST_NAME, read_manifest
from unidg_rt.errors import BackendUnavailableError, ConfigError, WeightsError
from unidg_rt.runtime.backend import GraphAdapters
from unidg_rt.runtime.conditioning import ReferenceEncoderRunner
from unidg_rt.vocab import ORT_FORMS, PRECISIONS

logger = logging.getLogger(__name__)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "the ONNX Runtime backend needs onnxruntime: pip install onnxruntime "
            "(or onnxruntime-gpu for the CUDA execution provider)"
        ) from exc
    return onnxruntime


def default_providers(ort=None) -> list[str]:
    """CUDA EP first when this onnxruntime build has it (onnxruntime-gpu), CPU always last."""
    ort = ort or _onnxruntime()
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]


def _pick(manifest, component: str, form: str | None, precision: str | None) -> dict[str, Any]:
    arts = [a for a in manifest.get("artifacts", []) if a["component"] == component]
    if not arts:
        raise WeightsError(f"the ONNX folder has no {component} export; re-run `unidg-rt export` with it")
    precision = precision or manifest.get("precision")
    if component == "transformer":
        form = form or manifest.get("attention_form")
        exported = sorted({a["attention_form"] for a in arts})
        if form not in ORT_FORMS:
            raise ConfigError(
                f"attention_form={form!r} cannot run on ONNX Runtime (the plugin form needs TensorRT); "
                f"choose one of {[f for f in exported if f in ORT_FORMS]}"
            )
        arts = [a for a in arts if a["attention_form"] == form]
        if not arts:
            raise ConfigError(f"no transformer export with attention_form={form!r}; exported: {exported}")
    exact = [a for a in arts if a["precision"] == precision]
    if exact:
        return exact[0]
    have = sorted({a["precision"] for a in arts})
    # a component kept in another precision (an fp32 transformer beside an INT8 VAE, a quantized
    # transformer's fp32 VAE): its most precise export, whatever order the manifest lists them in
    best = min(arts, key=lambda a: PRECISIONS.index(a["precision"]) if a["precision"] in PRECISIONS else 99)
    logger.info("%s: no %s export, using %s (exported: %s)", component, precision, best["precision"], have)
    return best


class OrtRunner(GraphFeed):
    """One session, the ``infer(feed) -> dict`` contract. Inputs are cast to the graph's dtypes
    (:class:`~unidg_rt.artifacts.feeds.GraphFeed`); float outputs come back as float32."""

    def __init__(self, session, component: str, io_binding: bool = False):
        self.session = session
        self.io_binding = io_binding
        super().__init__(session.get_inputs(), component)
        self.output_names = tuple(o.name for o in session.get_outputs())

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = self.prepare(feed)
        if self.io_binding:
            binding = self.session.io_binding()
            for name, arr in arrays.items():
                binding.bind_cpu_input(name, arr)
            for name in self.output_names:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            outs = binding.copy_outputs_to_cpu()
        else:
            outs = self.session.run(None, arrays)
        return {
            n: (o.astype(np.float32) if np.issubdtype(o.dtype, np.floating) else o)
            for n, o in zip(self.output_names, outs, strict=True)
        }


class OrtTransformerRunner(TransformerFeed, OrtRunner):
    """The transformer's session; its feed fills and broadcasts the optional inputs
    (:class:`~unidg_rt.artifacts.feeds.TransformerFeed`)."""


class OrtBackend(GraphAdapters):
    """Sessions for ``transformer``, ``vae_encoder``, ``vae_decoder`` of an exported folder, and
    ``reference_encoder`` (``None`` when not exported)."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_dir: str | Path,
        providers: list[str] | None = None,
        session_options=None,
        *,
        attention_form: str | None = None,
        precision: str | None = None,
        io_binding: bool = False,
    ):
        ort = _onnxruntime()
        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_manifest(self.onnx_dir)
        available = ort.get_available_providers()
        self.providers = list(providers) if providers else default_providers(ort)
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"execution providers {missing} are not in this onnxruntime build (available: {available}); "
                "for CUDA: pip uninstall onnxruntime && pip install onnxruntime-gpu"
            )
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session_options.log_severity_level = 3
        components = ["transformer", "vae_encoder", "vae_decoder"]
        if any(a["component"] == "reference_encoder" for a in self.manifest.get("artifacts", [])):
            components.append("reference_encoder")
        self.artifacts = {c: _pick(self.manifest, c, attention_form, precision) for c in components}
        if precision is not None and all(a["precision"] != precision for a in self.artifacts.values()):
            have = sorted({a["precision"] for a in self.manifest.get("artifacts", [])})
            raise ConfigError(
                f"precision={precision!r}: no component of {self.onnx_dir} was exported in it (exported: {have}); "
                "pass one of those, or `unidg-rt quantize` / `unidg-rt export --precision` first"
            )
        sessions = {}
        for component, art in self.artifacts.items():
            path = self.onnx_dir / art["onnx_file"]
            if not path.is_file():
                raise WeightsError(f"{path} listed in {MANIFEST_NAME} is missing; re-run the export")
            sessions[component] = ort.InferenceSession(str(path), session_options, providers=self.providers)
            got = sessions[component].get_providers()
            if got[0] != self.providers[0]:
                logger.warning(
                    "%s: %s unavailable at run time, running on %s", component, self.providers[0], got[0]
                )
        self.transformer = OrtTransformerRunner(sessions["transformer"], "transformer", io_binding)
        t = self.artifacts["transformer"]
        self.adapter_scales = graph_adapters(
            list(t.get("adapters") or []),
            self.manifest,
            self.transformer.input_names,
            f"{self.onnx_dir / t['onnx_file']}",
            f"re-export with `unidg-rt export --out {self.onnx_dir}` (it carries the card's adapters)",
        )
        self.transformer.adapters = self.adapter_scales
        self.vae_encoder = OrtRunner(sessions["vae_encoder"], "vae_encoder", io_binding)
        self.vae_decoder = OrtRunner(sessions["vae_decoder"], "vae_decoder", io_binding)
        self.card = card_from_manifest(self.manifest, self.onnx_dir)
        self.reference_encoder = None  # the learned reference encoder over its graph (conditioning.py)
        if "reference_encoder" in sessions:
            runner = OrtRunner(sessions["reference_encoder"], "reference_encoder", io_binding)
            size = int(self.manifest["reference_encoder"]["image_size"])  # the graph's static S
            self.reference_encoder = ReferenceEncoderRunner(runner, size)
        self.reference_encoder_missing = (
            f"the checkpoint has a reference encoder (card defaults 'reference_encoder') but {self.onnx_dir} "
            "has no reference_encoder export: re-run `unidg-rt export` (it exports it); or pass "
            "reference_encoder=None to run without it"
        )
        self.info = {
            "backend": "onnxruntime",
            "onnxruntime": ort.__version__,
            "providers": sessions["transformer"].get_providers(),
            "attention_form": t["attention_form"],
            "precision": t["precision"],
            "onnx_dir": str(self.onnx_dir),
            "adapters": list(self.adapter_scales.names),
        }

    @classmethod
    def open(cls, onnx_dir: str | Path, **options) -> tuple[OrtBackend, Card]:
        """Sessions over an exported folder (``options``: ``providers``, ``session_options``,
        ``attention_form``, ``precision``, ``io_binding``, as for :class:`OrtBackend`) and its card
        (``unidg_onnx.json``: pipeline facts, defaults, the embeddings cache it ships)."""
        backend = cls(onnx_dir, **options)
        return backend, backend.card

    def asarray(self, x: np.ndarray, dtype: str | None = None) -> np.ndarray:
        x = np.asarray(x)
        if dtype == "int":
            return x.astype(np.int64)
        if dtype == "float32" or np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float32, copy=False)
        return x

    def to_numpy(self, x) -> np.ndarray:
        if hasattr(x, "detach"):  # torch tensors from text / image-prompt encoders (any device, dtype)
            x = x.detach().float().cpu().numpy()
        x = np.asarray(x)
        return x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x
