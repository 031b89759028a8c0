"""The exported ONNX folder's manifest (``unidg_onnx.json``): its name, format and artifact records.

Written by :mod:`unidg_rt.export.pipeline` and :mod:`unidg_rt.quant.artifacts`, read by the ONNX
Runtime backend and the engine builder. json only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unidg_rt.artifacts.adapters import artifact_adapters

MANIFEST_NAME = "unidg_onnx.json"
MANIFEST_FORMAT = "unidg-onnx/1"
ENTRY_KEYS = ("component", "attention_form", "precision", "opset", "onnx_file")


def manifest_entry(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's record of one artifact: its sidecar's identity, plus the adapters a
    transformer graph carries (``[]`` for none)."""
    entry = {k: sidecar[k] for k in ENTRY_KEYS}
    if sidecar.get("component") == "transformer":
        entry["adapters"] = artifact_adapters(sidecar)
    return entry
