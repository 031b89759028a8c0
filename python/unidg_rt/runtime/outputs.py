"""Typed pipeline results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OUTPUT_TYPES = ("pil", "np", "pt", "latent")  #: ``output_type`` values of a pipeline call


@dataclass
class UniDGPipelineOutput:
    """``images``: list of PIL images (``output_type="pil"``), float32 ``[B, H0, W0, 3]`` in [0, 1]
    (``"np"``), a torch tensor ``[B, 3, H0, W0]`` (``"pt"``) or packed latents (``"latent"``).
    ``masks``: float32 ``[H0, W0]`` alpha actually used for paste-back (1 = generated pixel).
    ``diptychs``: the decoded ``[H, 2W]`` diptychs (float32 [0, 1]) whose right half is pasted
    back (with ``paste_mode="residual"``: input + decoded - VAE reconstruction of the input).
    ``seeds``: the seed of every image (reproduce one with ``seed=...``); ``info``: settings."""

    images: Any
    masks: Any = None
    diptychs: Any = None
    seeds: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def format_images(pasted: list[np.ndarray], output_type: str):
    """uint8 ``[H0, W0, 3]`` results → what ``output_type`` asks for (see :class:`UniDGPipelineOutput`)."""
    if output_type == "pil":
        from PIL import Image

        return [Image.fromarray(p) for p in pasted]
    arr = np.stack(pasted).astype(np.float32) / 255.0  # [B, H0, W0, 3]
    if output_type == "np":
        return arr
    import torch

    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # [B, 3, H0, W0]


def call_info(mode, height, width, num_inference_steps, guidance_scale, sigmas, seeds, defect_category):
    """``UniDGPipelineOutput.info`` of a call (the backend's ``info`` is added by the pipeline)."""
    return {
        "mode": mode,
        "height": height,
        "width": width,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "sigmas": [float(s) for s in sigmas],
        "seeds": seeds,
        "defect_category": defect_category,
    }
