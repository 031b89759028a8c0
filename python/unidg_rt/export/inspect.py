"""``inspect_onnx``: what an ONNX file holds — I/O with dims, opsets, op counts, custom domains,
attention structure, size (incl. external data), model metadata and the export sidecar.
Never loads external weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unidg_rt.errors import InvalidInputError
from unidg_rt.export.passes import attention_summary, op_counts


def _dims(value_info) -> list[int | str]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [
        d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
        for d in t.shape.dim
    ]


def _dtype(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _io(values) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "dtype": _dtype(v.type.tensor_type.elem_type), "shape": _dims(v)} for v in values
    ]


def inspect_onnx(path: str | Path) -> dict[str, Any]:
    """Summary of an ``.onnx`` file (see module doc)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist: pass an exported .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise InvalidInputError(f"{path} is not a readable ONNX model ({exc}); re-export it") from exc
    g = model.graph
    external = sorted({e.value for t in g.initializer for e in t.external_data if e.key == "location"})
    external_bytes = sum((path.parent / f).stat().st_size for f in external if (path.parent / f).is_file())
    params = 0
    for t in g.initializer:
        n = 1
        for d in t.dims:
            n *= d
        params += n
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    sidecar_path = path.with_name(path.name.removesuffix(".onnx") + ".json")
    sidecar = None
    if sidecar_path.is_file():
        try:
            sidecar = json.loads(sidecar_path.read_text())
            sidecar.pop("spec", None)  # the I/O above says it; keep the summary short
        except ValueError:
            sidecar = {"error": f"{sidecar_path.name} is not valid JSON"}
    return {
        "path": str(path),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": opsets,
        "custom_domains": sorted(d for d in opsets if d not in ("ai.onnx", "ai.onnx.ml")),
        "inputs": _io(g.input),
        "outputs": _io(g.output),
        "nodes": len(g.node),
        "op_counts": dict(sorted(op_counts(model).items(), key=lambda kv: (-kv[1], kv[0]))),
        "attention": attention_summary(model),
        "functions": [f"{f.domain}::{f.name}" for f in model.functions],
        "initializers": len(g.initializer),
        "parameters": params,
        "size_bytes": path.stat().st_size + external_bytes,
        "external_data": external,
        "metadata": {p.key: p.value for p in model.metadata_props},
        "sidecar": sidecar,
    }
