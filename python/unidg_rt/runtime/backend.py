"""Backend protocol (Polygraphy-style runners with one ``infer(feed) -> dict`` contract).

A backend serves three components with the project's one I/O vocabulary (DESIGN §3):

- ``transformer``: ``hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
  txt_ids, guidance, token_groups, group_bias`` → ``noise_pred``
- ``vae_encoder``: ``images`` [B,3,H,W] in [-1,1] → ``latent`` [B,16,H/8,W/8], already
  normalised ``(z - shift) * scale``
- ``vae_decoder``: ``latent`` (normalised) → ``images`` [B,3,H,W] in [-1,1]

Arrays are the backend's native type (torch tensors for torch, numpy for ORT); the pipeline
moves data with :meth:`Backend.asarray` / :meth:`Backend.to_numpy` only at the edges.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    input_names: tuple[str, ...]

    def infer(self, feed: dict[str, Any]) -> dict[str, Any]: ...


class Backend(Protocol):
    name: str
    transformer: Runner
    vae_encoder: Runner
    vae_decoder: Runner
    info: dict[str, Any]

    def asarray(self, x: np.ndarray, dtype: str | None = None) -> Any: ...

    def to_numpy(self, x: Any) -> np.ndarray: ...


class GraphAdapters:
    """``set_adapter_scales`` / ``adapter_names`` of a backend whose transformer graph or plan
    carries LoRA adapters as branches: ``self.adapter_scales`` is the
    :class:`~unidg_rt.artifacts.adapters.AdapterScales` its runner feeds as ``adapter_scales``."""

    adapter_scales: Any

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return self.adapter_scales.names

    def set_adapter_scales(self, scales: dict[str, float]) -> None:
        """Strength per carried adapter (segments, ``set_adapters``); unknown names raise."""
        self.adapter_scales.set(scales)


# -------------------------------------------------------------- array helpers (numpy or torch)
def is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "permute")


def permute(x, axes):
    return x.permute(*axes) if is_torch(x) else np.transpose(x, axes)


def cat(xs, axis: int):
    if is_torch(xs[0]):
        import torch

        return torch.cat(list(xs), dim=axis)
    return np.concatenate(xs, axis=axis)


def pack_latents(latents):
    """[B, C, h, w] → [B, (h/2)(w/2), 4C] (diffusers ``_pack_latents``)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, h/2, 2, w/2, 2]
    x = permute(x, (0, 2, 4, 1, 3, 5))  # [B, h/2, w/2, C, 2, 2]
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def left_half_tokens(h2: int, w2: int) -> np.ndarray:
    """bool ``[h2·w2]``: the packed tokens (row-major over the ``h2 × w2`` token grid, as
    :func:`pack_latents` orders them) of a diptych's reference (left) half."""
    return np.arange(h2 * w2) % w2 < w2 // 2


def unpack_latents(packed, h: int, w: int):
    """[B, (h/2)(w/2), 4C] → [B, C, h, w] (diffusers ``_unpack_latents``; h, w latent size)."""
    b, _, ch = packed.shape
    x = packed.reshape(b, h // 2, w // 2, ch // 4, 2, 2)  # [B, h/2, w/2, C, 2, 2]
    x = permute(x, (0, 3, 1, 4, 2, 5))  # [B, C, h/2, 2, w/2, 2]
    return x.reshape(b, ch // 4, h, w)


def latent_image_ids(h: int, w: int) -> np.ndarray:
    """(t=0, row, col) per packed token, float32 ``[(h/2)(w/2), 3]`` (h, w latent size)."""
    ids = np.zeros((h // 2, w // 2, 3), dtype=np.float32)
    ids[..., 1] = np.arange(h // 2)[:, None]
    ids[..., 2] = np.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)
