"""Numpy feeds of an exported graph: what its inputs take, and the transformer's defaults.

Shared by the ONNX Runtime backend (:class:`unidg_rt.runtime.ort_backend.OrtRunner` serves these
feeds) and quantisation calibration (:func:`unidg_rt.quant.qdq.calibration_feeds` prepares the
captured data exactly like a pipeline call). ``inputs`` are objects with ``name``, ``type``
(ONNX Runtime's ``"tensor(float)"`` spelling) and ``shape``, e.g. ``session.get_inputs()``.
numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unidg_rt.artifacts.adapters import INPUT_NAME as ADAPTER_INPUT
from unidg_rt.artifacts.adapters import AdapterScales
from unidg_rt.errors import BackendUnavailableError, InvalidInputError

#: ONNX Runtime's input type names -> numpy dtypes
NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class GraphFeed:
    """Casts a feed to a graph's input dtypes; refuses a missing input."""

    def __init__(self, inputs: Sequence[Any], component: str):
        self.component = component
        self.input_names = tuple(i.name for i in inputs)
        self._dtypes = {i.name: NP_TYPES.get(i.type) for i in inputs}
        self._shapes = {i.name: tuple(i.shape) for i in inputs}
        bad = [i.name for i in inputs if self._dtypes[i.name] is None]
        if bad:
            raise BackendUnavailableError(
                f"{component}: inputs {bad} have dtypes numpy cannot hold; export with fp32 I/O"
            )

    def prepare(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for name in self.input_names:
            if feed.get(name) is None:
                raise InvalidInputError(f"{self.component}: input {name!r} is required by the ONNX graph")
            out[name] = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
        return out


class TransformerFeed(GraphFeed):
    """Fills the optional inputs the way the torch model treats ``None``: ``token_groups`` zeros
    and ``group_bias`` zeros (no bias); broadcasts ``[G,G]`` / ``[H,G,G]`` tables to the graph's
    ``[L, H, G, G]``; accepts ``[B, N]`` groups when every row is the same; feeds
    ``adapter_scales`` from ``adapters`` (:class:`AdapterScales`) unless the feed has it."""

    adapters: AdapterScales | None = None

    def prepare(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        feed = dict(feed)
        if self.adapters and feed.get(ADAPTER_INPUT) is None:
            feed[ADAPTER_INPUT] = self.adapters.array()
        n_tokens = np.shape(feed["encoder_hidden_states"])[1] + np.shape(feed["hidden_states"])[1]
        if feed.get("token_groups") is None or feed.get("group_bias") is None:
            feed["token_groups"] = np.zeros((n_tokens,), np.int64)
            feed["group_bias"] = np.zeros(self._shapes["group_bias"], np.float32)
        groups = np.asarray(feed["token_groups"])
        if groups.ndim == 2:
            if not (groups == groups[:1]).all():
                raise InvalidInputError("token_groups differ per batch row; the ONNX graph takes one [N] row")
            groups = groups[0]
        feed["token_groups"] = groups
        table = np.asarray(feed["group_bias"], dtype=np.float32)
        target = self._shapes["group_bias"]
        try:
            feed["group_bias"] = np.broadcast_to(table.reshape((1,) * (4 - table.ndim) + table.shape), target)
        except ValueError as exc:
            raise InvalidInputError(
                f"group_bias {table.shape} does not broadcast to the graph's {target}"
            ) from exc
        if "guidance" not in self.input_names:
            feed.pop("guidance", None)
        return super().prepare(feed)
