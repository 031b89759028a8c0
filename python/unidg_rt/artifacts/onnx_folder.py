"""The exported ONNX folder's manifest (``unidg_onnx.json``): its name, format and artifact records.

Written by :mod:`unidg_rt.export.pipeline` and :mod:`unidg_rt.quant.artifacts`, read
(:func:`read_manifest`) by them, the ONNX Runtime backend and the engine builder. json only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unidg_rt.artifacts.adapters import artifact_adapters
from unidg_rt.errors import WeightsError

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


def read_manifest(onnx_dir: str | Path) -> dict[str, Any]:
    """The manifest of the exported folder ``onnx_dir``; refused when missing, unreadable or of
    another format."""
    path = Path(onnx_dir) / MANIFEST_NAME
    if not path.is_file():
        raise WeightsError(
            f"{path} not found: {onnx_dir} is not an exported ONNX folder; create one with "
            "`unidg-rt export` (or unidg_rt.export.pipeline.export_pipeline)"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); re-run the export") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise WeightsError(
            f"{path} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}; re-export"
        )
    return manifest
