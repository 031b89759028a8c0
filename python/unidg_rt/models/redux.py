"""Optional image-prompt encoder for reference mode (DESIGN §1.4): SigLIP vision tower + FLUX Redux
projector. The reference crop becomes 729 tokens (SigLIP-so400m at 384 px) projected
1152 → 12288 → 4096 and appended after the (zero) text slots; pooled stays zero.

The projector's keys equal diffusers' ``ReduxImageEncoder`` (``redux_up``, ``redux_down``);
SigLIP is loaded with transformers from a LOCAL folder only (never a hub id).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unidg_rt.errors import BackendUnavailableError, WeightsError

logger = logging.getLogger(__name__)


class ReduxProjector(nn.Module):
    """``redux_down(silu(redux_up(x)))``: [B, T, redux_dim] → [B, T, txt_in_features]."""

    def __init__(self, redux_dim: int = 1152, txt_in_features: int = 4096):
        super().__init__()
        self.redux_up = nn.Linear(redux_dim, txt_in_features * 3)
        self.redux_down = nn.Linear(txt_in_features * 3, txt_in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.redux_down(nn.functional.silu(self.redux_up(x)))


class ImagePromptEncoder:
    """SigLIP vision tower + Redux projector; ``encode(images) -> [B, T_img, D]`` tokens."""

    def __init__(self, vision, processor, projector: ReduxProjector, device="cpu", dtype=torch.float32):
        self.vision, self.processor, self.projector = vision, processor, projector
        self.device, self.dtype = torch.device(device), dtype

    @classmethod
    def from_dirs(cls, siglip_dir: str | Path, redux_dir: str | Path, dtype=torch.float32, device="cpu"):
        try:
            from transformers import SiglipImageProcessor, SiglipVisionModel
        except ImportError as exc:  # pragma: no cover - optional extra
            raise BackendUnavailableError(
                "the image-prompt encoder needs transformers: pip install 'unidg-rt[text]'"
            ) from exc
        siglip_dir, redux_dir = Path(siglip_dir), Path(redux_dir)
        for d in (siglip_dir, redux_dir):
            if not d.is_dir():
                raise WeightsError(
                    f"{d} is not a folder: pass local SigLIP and Redux folders (no hub downloads)"
                )
        vision = SiglipVisionModel.from_pretrained(siglip_dir, local_files_only=True, torch_dtype=dtype)
        processor = SiglipImageProcessor.from_pretrained(siglip_dir, local_files_only=True)
        projector = load_redux_projector(redux_dir, dtype=dtype)
        return cls(vision.to(device).eval(), processor, projector.to(device), device, dtype)

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        """``images``: uint8 / float [H, W, 3] arrays (the reference crops)."""
        pixels = self.processor.preprocess(
            images=list(images), do_resize=True, return_tensors="pt", do_convert_rgb=True
        )
        feats = self.vision(pixel_values=pixels["pixel_values"].to(self.device, self.dtype)).last_hidden_state
        return self.projector(feats)  # [B, T_img, D]


def load_redux_projector(folder: str | Path, dtype=torch.float32) -> ReduxProjector:
    """A diffusers ``image_embedder`` folder (config.json + diffusion_pytorch_model.safetensors)."""
    import json

    from unidg_rt.models.loading import load_strict, read_tensors

    folder = Path(folder)
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"no .safetensors in {folder}: expected diffusers' Redux image_embedder folder")
    with torch.device("meta"):
        proj = ReduxProjector(cfg.get("redux_dim", 1152), cfg.get("txt_in_features", 4096))
    load_strict(proj, read_tensors(files, "", dtype), "redux projector")
    return proj.eval().requires_grad_(False)
