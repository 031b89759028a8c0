"""Rectified-flow sampling: FLUX schedules, the Euler step, latent packing (DESIGN §1.4).

Pure functions over numpy arrays or torch tensors (no torch import here). The schedule is
*data* — a ``sigmas`` array of length ``steps + 1`` ending in 0 — so hierarchical or custom
schedules plug in without code changes. Equal to diffusers' ``FlowMatchEulerDiscreteScheduler``
(``use_dynamic_shifting=True``, exponential time shift) + ``calculate_shift`` (tested to 1e-7).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError

# FLUX.1 scheduler config (scheduler/scheduler_config.json of FLUX.1-dev / Fill)
BASE_IMAGE_SEQ_LEN = 256
MAX_IMAGE_SEQ_LEN = 4096
BASE_SHIFT = 0.5
MAX_SHIFT = 1.15


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = BASE_IMAGE_SEQ_LEN,
    max_seq_len: int = MAX_IMAGE_SEQ_LEN,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
) -> float:
    """``mu`` grows linearly with the number of image tokens (diffusers ``calculate_shift``)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def time_shift(mu: float, sigmas: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Exponential time shift ``e^mu / (e^mu + (1/s - 1)^power)`` in float32 like diffusers."""
    sigmas = np.asarray(sigmas, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return (math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** power)).astype(np.float32)


def flux_sigmas(
    num_inference_steps: int,
    image_seq_len: int,
    sigmas: Sequence[float] | None = None,
    shift: bool = True,
) -> np.ndarray:
    """The FLUX sampling schedule, float32 ``[steps + 1]`` with a terminal 0.

    Without ``sigmas`` it is ``linspace(1, 1/steps, steps)`` (FluxPipeline's default) shifted
    by ``mu(image_seq_len)``. Custom ``sigmas`` (in (0, 1], decreasing) are shifted too unless
    ``shift=False`` — pass already-shifted schedules that way.
    """
    if sigmas is None:
        if num_inference_steps < 1:
            raise InvalidInputError(
                f"num_inference_steps={num_inference_steps} must be >= 1 (typical: 8 with a turbo LoRA, 28-50 otherwise)"
            )
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    sig = np.asarray(sigmas, dtype=np.float32)
    if sig.ndim != 1 or sig.size == 0:
        raise InvalidInputError(f"sigmas must be a non-empty 1-D sequence, got shape {sig.shape}")
    if np.any(~np.isfinite(sig)) or np.any(sig <= 0) or np.any(sig > 1):
        raise InvalidInputError("sigmas must lie in (0, 1] (the terminal 0 is appended for you)")
    if np.any(np.diff(sig) > 0):
        raise InvalidInputError("sigmas must be non-increasing (noise level goes from 1 towards 0)")
    if shift:
        sig = time_shift(calculate_shift(image_seq_len), sig)
    return np.concatenate([sig, np.zeros(1, dtype=np.float32)])


def timesteps_from_sigmas(sigmas: np.ndarray) -> np.ndarray:
    """diffusers' ``scheduler.timesteps`` (``sigma * 1000``); the transformer takes ``t / 1000``."""
    return (np.asarray(sigmas[:-1], dtype=np.float32) * 1000).astype(np.float32)


def euler_step(sample, model_output, sigma: float, sigma_next: float):
    """One Euler step of the flow ODE: ``x + (sigma_next - sigma) * v``, computed in float32.

    Works on numpy arrays and torch tensors alike; returns the input's dtype."""
    dt = float(sigma_next) - float(sigma)
    if hasattr(sample, "detach"):  # torch
        out = sample.float() + dt * model_output.float()
        return out.to(model_output.dtype)
    out = np.asarray(sample, dtype=np.float32) + np.float32(dt) * np.asarray(model_output, dtype=np.float32)
    return out.astype(np.asarray(model_output).dtype)


def scale_noise(sample, noise, sigma: float):
    """Forward process ``sigma * noise + (1 - sigma) * sample`` (img2img / training targets)."""
    return sigma * noise + (1.0 - sigma) * sample


# --------------------------------------------------------------------------- latent packing
def _permute(x, axes):
    return x.permute(*axes) if hasattr(x, "permute") else np.transpose(x, axes)


def pack_latents(latents):
    """[B, C, h, w] → [B, (h/2)(w/2), 4C] (diffusers ``_pack_latents``; numpy or torch)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, h/2, 2, w/2, 2]
    x = _permute(x, (0, 2, 4, 1, 3, 5))  # [B, h/2, w/2, C, 2, 2]
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed, h: int, w: int):
    """[B, (h/2)(w/2), 4C] → [B, C, h, w] (diffusers ``_unpack_latents``; h, w latent size)."""
    b, _, ch = packed.shape
    x = packed.reshape(b, h // 2, w // 2, ch // 4, 2, 2)  # [B, h/2, w/2, C, 2, 2]
    x = _permute(x, (0, 3, 1, 4, 2, 5))  # [B, C, h/2, 2, w/2, 2]
    return x.reshape(b, ch // 4, h, w)


def latent_image_ids(h: int, w: int) -> np.ndarray:
    """(t=0, row, col) per packed token, float32 ``[(h/2)(w/2), 3]`` (h, w latent size)."""
    ids = np.zeros((h // 2, w // 2, 3), dtype=np.float32)
    ids[..., 1] = np.arange(h // 2)[:, None]
    ids[..., 2] = np.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def left_half_tokens(h2: int, w2: int) -> np.ndarray:
    """bool ``[h2·w2]``: the packed tokens (row-major over the ``h2 × w2`` token grid, as
    :func:`pack_latents` orders them) of a diptych's reference (left) half."""
    return np.arange(h2 * w2) % w2 < w2 // 2


# --------------------------------------------------------------------------- hierarchical schedules
@dataclass(frozen=True)
class Segment:
    """A slice of the step schedule with its own settings (hierarchical sampling, DESIGN §1).

    ``start``/``end`` are fractions of the step count in [0, 1] (``end`` exclusive);
    ``adapter_scales`` maps adapter name → strength; ``guidance_scale`` overrides the distilled
    guidance; ``true_cfg_scale`` > 1 asks for a two-pass classifier-free-guidance step against
    zero text embeddings; ``reference_cfg_scale`` > 1 (reference mode) guides against the same
    diptych without its reference (empty left half, zero embeddings: the model's unconditional
    input), like an image-guidance scale."""

    start: float
    end: float
    adapter_scales: dict[str, float] = field(default_factory=dict)
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    reference_cfg_scale: float | None = None

    def covers(self, step: int, num_steps: int) -> bool:
        pos = step / max(num_steps, 1)
        return self.start <= pos < self.end or (
            self.end >= 1.0 and step == num_steps - 1 and pos >= self.start
        )


@dataclass(frozen=True)
class SegmentSchedule:
    segments: tuple[Segment, ...] = ()

    def __post_init__(self):
        last = 0.0
        for seg in sorted(self.segments, key=lambda s: s.start):
            if not (0.0 <= seg.start < seg.end <= 1.0):
                raise InvalidInputError(
                    f"segment [{seg.start}, {seg.end}) must satisfy 0 <= start < end <= 1"
                )
            if seg.start < last - 1e-9:
                raise InvalidInputError(f"segments overlap at {seg.start}: give disjoint [start, end) ranges")
            last = seg.end

    def at(self, step: int, num_steps: int) -> Segment | None:
        for seg in self.segments:
            if seg.covers(step, num_steps):
                return seg
        return None

    @classmethod
    def coerce(cls, segments) -> SegmentSchedule | None:
        """A schedule, its data (see :meth:`from_data`) or ``None`` → a schedule or ``None``."""
        return (
            segments if isinstance(segments, SegmentSchedule) or segments is None else cls.from_data(segments)
        )

    @classmethod
    def from_data(cls, data: Any) -> SegmentSchedule:
        """From a list of dicts, a JSON string, or ``{"segments": [...]}``."""
        if isinstance(data, str):
            data = json.loads(data)
        if isinstance(data, dict):
            data = data.get("segments", [])
        return cls(tuple(Segment(**d) for d in data))

    def to_data(self) -> list[dict[str, Any]]:
        return [dict(s.__dict__) for s in self.segments]
