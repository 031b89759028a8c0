"""Learned reference encoder: the image-prompt path (DESIGN §1.4) at the embedded model's scale.

FLUX Redux turns the reference image into tokens of the text stream (SigLIP + projector). The
embedded default model is far too small to learn a defect's category from the reference half of
the diptych through attention alone (measured: reference mode at chance, see README), so it has
this tiny CNN instead, trained jointly with the transformer in Diversity-SFT::

    reference crop [B, 3, S, S] in [-1, 1]
      -> 4 stride-2 3x3 convs (SiLU)               [B, 4w, S/16, S/16]
      -> mean ‖ max over space -> Linear + SiLU     [B, 4w]
      -> to_tokens: [B, T, D] (the text slots)   to_pooled: [B, P] (the pooled vector)

Its outputs take the place of the text conditioning in reference mode (same shapes: the
transformer graph is unchanged), so zero conditioning stays the unconditional branch and two-pass
CFG works in reference mode too. Weights live in their own ``.safetensors`` with the config in the
metadata key ``unidg_rt_reference_encoder``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unidg_rt.artifacts.io import atomic_path
from unidg_rt.errors import WeightsError

METADATA_KEY = "unidg_rt_reference_encoder"


@dataclass(frozen=True)
class ReferenceEncoderConfig:
    seq_len: int = 8  # T: the text slots it fills
    dim: int = 64  # D: joint_attention_dim of the transformer
    pooled_dim: int = 64  # P: pooled_projection_dim
    width: int = 32  # w: channels of the first conv
    image_size: int = 96  # S: the crop side it was trained at (the runtime resizes to it)
    # input convention: reference pixels outside the reference mask set to the runtime's 0.5 gray
    # (:func:`cut_out`); the pipeline does it when the card's ``reference_encoder`` entry says so
    cutout: bool = False


class ReferenceEncoder(nn.Module):
    """Reference crop pixels → (``embeds [B, T, D]``, ``pooled [B, P]``)."""

    def __init__(self, config: ReferenceEncoderConfig):
        super().__init__()
        self.config = c = config
        w = c.width
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1)
        self.proj = nn.Linear(8 * w, 4 * w)
        self.to_tokens = nn.Linear(4 * w, c.seq_len * c.dim)
        self.to_pooled = nn.Linear(4 * w, c.pooled_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        act = nn.functional.silu
        x = act(self.conv1(images))  # [B, w, S/2, S/2]
        x = act(self.conv2(x))  # [B, 2w, S/4, S/4]
        x = act(self.conv3(x))  # [B, 4w, S/8, S/8]
        x = act(self.conv4(x))  # [B, 4w, S/16, S/16]
        f = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # [B, 8w]
        f = act(self.proj(f))  # [B, 4w]
        embeds = self.to_tokens(f).reshape(-1, self.config.seq_len, self.config.dim)  # [B, T, D]
        return embeds, self.to_pooled(f)  # [B, T, D], [B, P]


def pixels_to_input(crops: np.ndarray, image_size: int) -> torch.Tensor:
    """Crops uint8 ``[B, S', S', 3]`` or float ``[0, 1]`` → ``[B, 3, S, S]`` float32 in [-1, 1]
    (bilinear resize when ``S' != image_size``)."""
    x = np.asarray(crops)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2) * 2 - 1  # [B, 3, S', S']
    if t.shape[-2:] != (image_size, image_size):
        t = nn.functional.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return t


def cut_out(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x [B, 3, S, S]`` in [-1, 1] with pixels outside ``mask [B, S, S]`` set to 0 (the 0.5 gray
    of :data:`unidg_rt.diptych.MASKED_VALUE`): the encoder sees the defect's footprint and colour,
    not the surface around it (held-out category accuracy 40 % → 55 %, measured)."""
    return torch.where(mask[:, None].bool(), x, torch.zeros((), dtype=x.dtype))


def save_reference_encoder(path: str | Path, encoder: ReferenceEncoder, dtype=torch.float32) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(dtype).contiguous() for k, v in encoder.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(asdict(encoder.config))})


def read_reference_encoder_config(path: str | Path) -> ReferenceEncoderConfig:
    """The config in a reference-encoder file's metadata (no weights read)."""
    from unidg_rt.models.loading import read_metadata

    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        raise WeightsError(f"{path} has no {METADATA_KEY!r} metadata: not a unidg-rt reference encoder")
    return ReferenceEncoderConfig(**json.loads(meta[METADATA_KEY]))


def load_reference_encoder(path: str | Path) -> ReferenceEncoder:
    """float32, eval, frozen."""
    from unidg_rt.models.loading import load_strict, read_tensors

    config = read_reference_encoder_config(path)
    with torch.device("meta"):
        enc = ReferenceEncoder(config)
    load_strict(enc, read_tensors([Path(path)], "", torch.float32), "reference encoder")
    return enc.eval().requires_grad_(False)


class TorchReferenceEncoder:
    """The torch runner the pipeline calls: ``encode(crop) -> (embeds [T, D], pooled [P])``
    (float32 numpy) for one reference crop float ``[S', S', 3]`` in [0, 1] or uint8."""

    def __init__(self, module: ReferenceEncoder, device="cpu"):
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.image_size = module.config.image_size

    @classmethod
    def from_file(cls, path: str | Path, device="cpu") -> TorchReferenceEncoder:
        return cls(load_reference_encoder(path), device)

    @torch.inference_mode()
    def encode(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = pixels_to_input(np.asarray(crop)[None], self.image_size).to(self.device)  # [1, 3, S, S]
        embeds, pooled = self.module(x)
        return embeds[0].float().cpu().numpy(), pooled[0].float().cpu().numpy()
