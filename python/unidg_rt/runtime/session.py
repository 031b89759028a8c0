"""``UniDGSession``: a long-lived pipeline for line software (inspection-station PCs).

Loads the model once, warms it up, and serves ``generate`` calls from any thread::

    from unidg_rt.runtime.session import UniDGSession

    with UniDGSession("runtime/unidg.example.toml") as session:   # TOML + UNIDG_* environment
        session.warmup()
        result = session.generate(image, mask, category="scratch", seed=7)
        result.images[0]                                            # uint8 [H, W, 3]

Threading: one session holds one pipeline and **serialises** calls with a lock — concurrent
callers queue, they never run the model at the same time (a single accelerator gains nothing
from interleaving, and backends keep per-call buffers). For parallel throughput run several
sessions (one per GPU / process) or use the batch runner's Ray mode.

Memory: results are plain numpy copies; the session keeps no per-call state besides counters,
so resident memory stays flat over thousands of calls (tests/runtime/test_session.py bounds it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import ConfigError, UniDGError
from unidg_rt.settings import Settings, load_settings

logger = logging.getLogger(__name__)

_GENERATION_KEYS = ("height", "width", "num_inference_steps", "guidance_scale", "feather", "paste_mode")


class SessionClosedError(UniDGError, RuntimeError):
    """``generate``/``warmup`` was called on a closed session: create a new ``UniDGSession``."""


class GenerationError(UniDGError, RuntimeError):
    """The backend failed on valid inputs (out of memory, driver error…); ``__cause__`` has the
    original exception. Invalid inputs raise :class:`~unidg_rt.errors.InvalidInputError` instead."""


@dataclass(frozen=True)
class GenerationResult:
    """``images``: uint8 ``[H0, W0, 3]`` per image; ``mask``: float32 ``[H0, W0]`` paste-back alpha
    (1 = generated pixel); ``seeds``: one per image (reproduce with ``seed=``); ``info``: the
    settings actually used; ``elapsed_s``: model time of this call (excluding lock wait)."""

    images: list[np.ndarray]
    mask: np.ndarray
    seeds: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


#: per backend: (Settings field, CLI flag, what writes the folder)
_FOLDERS = {
    "onnxruntime": ("onnx_dir", "--onnx-dir", "`unidg-rt export --out DIR`"),
    "tensorrt": ("engines_dir", "--engines-dir", "`unidg-rt build ONNX_DIR --out DIR`"),
}


def _folder(settings: Settings) -> Path:
    field_name, flag, how = _FOLDERS[settings.backend]
    folder = getattr(settings, field_name)
    if folder is None:
        raise ConfigError(
            f"backend={settings.backend!r} needs a folder: pass {flag} DIR (UNIDG_{field_name.upper()}, "
            f"or {field_name} in the settings TOML), written by {how}"
        )
    if not Path(folder).is_dir():
        raise ConfigError(f"{flag} {folder} is not a folder: pass the folder written by {how}")
    return Path(folder)


def _ort_providers(device: str) -> list[str] | None:
    """``device='cuda'`` asks for ONNX Runtime's CUDA EP (an error when the build lacks it);
    anything else keeps the backend's default (CUDA EP when present, else CPU)."""
    if not device.startswith("cuda"):
        return None
    if device not in ("cuda", "cuda:0"):
        raise ConfigError(
            f"device={device!r}: the onnxruntime backend runs on the first visible GPU; "
            "pick it with CUDA_VISIBLE_DEVICES and pass --device cuda"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def build_pipeline(settings: Settings):
    """The one settings → :class:`~unidg_rt.runtime.pipeline.UniDGPipeline` factory (``generate``,
    ``synth``, ``eval``, :class:`UniDGSession`, Ray actors). Every setting that selects the model
    reaches the loader, or is refused with a one-line :class:`ConfigError`: ``fast_path`` and
    ``precision='fp8'`` (torch), ``precision`` (ONNX export / TensorRT plans), the folders."""
    from unidg_rt.runtime.pipeline import UniDGPipeline

    if settings.backend == "torch":
        if settings.precision not in (None, "fp8"):
            raise ConfigError(
                f"precision={settings.precision!r} picks an ONNX export and needs backend='onnxruntime' "
                f"(backend={settings.backend!r}: use dtype for torch, or precision='fp8' for the FP8 GPU fast path)"
            )
        return UniDGPipeline.from_pretrained(
            settings.weights,
            device=settings.device,
            dtype=settings.dtype,
            attention_form=settings.attention_form,
            embeddings=settings.embeddings,
            fast_path=settings.fast_path,
            precision=settings.precision,
        )
    if settings.fast_path == "on":
        raise ConfigError(
            f"fast_path='on' is the torch backend's GPU fast path; backend={settings.backend!r} runs its own "
            "optimised graphs: drop --fast-path (UNIDG_FAST_PATH=auto) or use --backend torch"
        )
    folder = _folder(settings)
    kwargs: dict[str, Any] = {"embeddings": settings.embeddings}
    if settings.precision is not None:
        kwargs["precision"] = settings.precision
    if settings.backend == "onnxruntime":
        if settings.attention_form is not None:
            kwargs["attention_form"] = settings.attention_form
        return UniDGPipeline.from_onnx(folder, providers=_ort_providers(settings.device), **kwargs)
    if settings.attention_form is not None:
        raise ConfigError(
            f"attention_form={settings.attention_form!r}: TensorRT plans run the form they were built from; "
            "drop attention_form (pick the form at `unidg-rt export --forms`)"
        )
    if settings.device.startswith("cuda"):  # the default "cpu" means "not set" for TensorRT
        kwargs["device"] = settings.device
    return UniDGPipeline.from_engines(folder, **kwargs)


class UniDGSession:
    """Long-lived, thread-safe (serialised) generation session; see the module docstring.

    ``settings``: a :class:`~unidg_rt.settings.Settings`, a TOML path, or ``None`` (environment
    ``UNIDG_*`` / ``UNIDG_CONFIG`` and defaults); ``overrides`` win over both. ``pipeline``: an
    already built pipeline (tests, custom backends) instead of loading one from settings.
    """

    def __init__(self, settings: Settings | str | Path | None = None, *, pipeline=None, **overrides):
        if isinstance(settings, Settings):
            settings = settings.model_dump()
            settings.update({k: v for k, v in overrides.items() if v is not None})
            self.settings = load_settings(None, **settings)
        else:
            self.settings = load_settings(settings, **overrides)
        self._lock = threading.Lock()
        self._closed = False
        self.calls = 0
        self.failures = 0
        t0 = time.perf_counter()
        self.pipeline = pipeline if pipeline is not None else build_pipeline(self.settings)
        self.load_s = time.perf_counter() - t0
        logger.info("session ready (%s backend, loaded in %.2f s)", self.settings.backend, self.load_s)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> UniDGSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the pipeline; later calls raise :class:`SessionClosedError`."""
        with self._lock:
            self._closed = True
            self.pipeline = None

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ calls
    def _settings_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: getattr(self.settings, k, None) for k in _GENERATION_KEYS}
        kwargs["segments"] = self.settings.segments
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return {k: v for k, v in kwargs.items() if v is not None}

    def warmup(self, runs: int = 1) -> float:
        """Run ``runs`` throw-away generations at the configured size on a synthetic image, so
        the first real call pays no lazy-initialisation cost. Returns seconds of the last run."""
        img = np.full((64, 64, 3), 128, np.uint8)
        mask = np.zeros((64, 64), bool)
        mask[24:40, 24:40] = True
        ref, ref_mask = img.copy(), mask.copy()  # reference mode needs no embeddings cache
        elapsed = 0.0
        for _ in range(max(1, runs)):
            elapsed = self.generate(img, mask, ref, ref_mask, seed=0).elapsed_s
        logger.info("warm-up done: %.3f s per call", elapsed)
        return elapsed

    def generate(
        self,
        image,
        mask,
        reference_image=None,
        reference_mask=None,
        *,
        category: str | None = None,
        seed: int | None = None,
        count: int = 1,
        **overrides,
    ) -> GenerationResult:
        """Insert a defect; reference mode with ``reference_image``/``reference_mask``, text mode
        with ``category``. ``overrides``: ``height width num_inference_steps guidance_scale
        feather`` (over the session settings). Raises ``InvalidInputError`` /
        ``UnknownCategoryError`` for bad inputs, :class:`GenerationError` for backend failures,
        :class:`SessionClosedError` after ``close``. Calls are serialised (see module docs)."""
        unknown = set(overrides) - set(_GENERATION_KEYS)
        if unknown:
            from unidg_rt.errors import InvalidInputError

            raise InvalidInputError(
                f"unknown generate() option(s) {sorted(unknown)}: use {', '.join(_GENERATION_KEYS)}"
            )
        kwargs = self._settings_kwargs(overrides)
        with self._lock:
            if self._closed:
                raise SessionClosedError("this session is closed: create a new UniDGSession")
            self.calls += 1
            t0 = time.perf_counter()
            try:
                out = self.pipeline(
                    image=image,
                    mask_image=mask,
                    reference_image=reference_image,
                    reference_mask=reference_mask,
                    defect_category=category,
                    seed=seed,
                    num_images_per_prompt=count,
                    output_type="pil",
                    **kwargs,
                )
            except UniDGError:
                self.failures += 1
                raise
            except Exception as exc:
                self.failures += 1
                raise GenerationError(
                    f"generation failed in the backend: {type(exc).__name__}: {exc}"
                ) from exc
            elapsed = time.perf_counter() - t0
        images = [np.array(img, dtype=np.uint8) for img in out.images]  # copies, detached from PIL
        info = {k: v for k, v in out.info.items() if k != "sigmas"}
        return GenerationResult(images, np.array(out.masks, np.float32), list(out.seeds), info, elapsed)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failures": self.failures,
            "load_s": round(self.load_s, 3),
            "closed": self._closed,
        }
