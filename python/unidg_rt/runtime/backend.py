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


def cat(xs, axis: int):
    if is_torch(xs[0]):
        import torch

        return torch.cat(list(xs), dim=axis)
    return np.concatenate(xs, axis=axis)
