"""What the builder made of the graph: per-layer records and the attention verdict.

Two sources, whichever the builder offers:

- the **builder log** at VERBOSE: TensorRT-RTX 1.x prints one ``Name: …, LayerType: …, Inputs:
  [...], …, Metadata: [ONNX Layer: …]`` line per engine layer after ``Layers:``. This works on a
  CPU-only machine (the AOT build never deserialises the plan — it cannot without a GPU);
- the **engine inspector** (``ICudaEngine.create_engine_inspector().get_engine_information(JSON)``),
  full TensorRT on the GPU it built for.

The attention verdict answers "did the attention become one fused MHA kernel?": Myelin names
its fused attention kernels ``_gemm_mha_v2`` (TensorRT-RTX 1.7; full TensorRT uses ``mha`` /
``fmha`` names as well); an unfused attention shows up as GEMM + a softmax kernel
(``…MaxrSubExpSumDiv…`` or ``Softmax``) + GEMM. A fused MHA with a 4th input of shape
``[B, 1|H, N, N]`` carries an additive mask: the reference form materialises the N×N bias; the
folding form has no mask input at all.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

_LINE = re.compile(r"^Name: (?P<name>[^,]*), LayerType: (?P<type>[^,]*), (?P<rest>.*)$")
_TENSOR = re.compile(
    r"\{ Name: (?P<name>[^,]*), Dimensions: \[(?P<dims>[^\]]*)\][^}]*?Datatype: (?P<dtype>\w+)"
)
_MHA = re.compile(r"(^|_)(f?mha|flash)(_|$|\d)|fused_?mha|attention_?kernel", re.IGNORECASE)
_SOFTMAX = re.compile(r"softmax|Maxr\w*Exp\w*Sum|Exp\w*Sum\w*Div", re.IGNORECASE)


def _tensors(section: str) -> list[dict[str, Any]]:
    return [
        {"name": m["name"], "dims": [int(d) for d in m["dims"].split(",") if d.strip()], "dtype": m["dtype"]}
        for m in _TENSOR.finditer(section)
    ]


def parse_log_layers(lines: list[str]) -> list[dict[str, Any]]:
    """Layer records from the ``Name: …, LayerType: …`` lines of a verbose builder log."""
    layers = []
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        rest = m["rest"]
        inputs, _, after = rest.partition("Constants:")
        _, _, outputs = after.partition("Outputs:")
        outputs, _, tail = outputs.partition("TacticName:")
        meta = re.findall(r"\[ONNX Layer: ([^\]]*)\]", tail)
        layers.append(
            {
                "name": m["name"],
                "type": m["type"],
                "inputs": _tensors(inputs),
                "outputs": _tensors(outputs),
                "onnx_nodes": meta,
            }
        )
    return layers


def parse_inspector_json(text: str) -> list[dict[str, Any]]:
    """Layer records from the engine inspector's JSON (detailed or names-only verbosity)."""
    data = json.loads(text)
    layers = []
    for entry in data.get("Layers", []):
        if isinstance(entry, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY
            layers.append({"name": entry, "type": "", "inputs": [], "outputs": [], "onnx_nodes": []})
            continue

        def tensors(key, entry=entry):
            return [
                {
                    "name": t.get("Name", ""),
                    "dims": list(t.get("Dimensions", [])),
                    "dtype": t.get("Format/Datatype", ""),
                }
                for t in entry.get(key, [])
                if isinstance(t, dict)
            ]

        meta = entry.get("Metadata", "")
        layers.append(
            {
                "name": entry.get("Name", ""),
                "type": entry.get("LayerType", ""),
                "inputs": tensors("Inputs"),
                "outputs": tensors("Outputs"),
                "onnx_nodes": re.findall(r"\[ONNX Layer: ([^\]]*)\]", meta) if isinstance(meta, str) else [],
            }
        )
    return layers


def attention_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Fused-MHA count, whether a mask input reaches it, unfused softmax kernels, and a verdict."""
    if not layers:
        return {"layers": 0, "verdict": "no layer information from this builder"}
    mha = [layer for layer in layers if _MHA.search(layer["name"]) or _MHA.search(layer["type"])]
    softmax = [
        layer
        for layer in layers
        if layer not in mha and (_SOFTMAX.search(layer["name"]) or _SOFTMAX.search(layer["type"]))
    ]
    masked = [layer for layer in mha if len(layer["inputs"]) > 3]
    head_dims = sorted(
        {layer["inputs"][0]["dims"][-1] for layer in mha if layer["inputs"] and layer["inputs"][0]["dims"]}
    )
    mask_dims = [layer["inputs"][2]["dims"] for layer in masked if len(layer["inputs"]) > 2]
    if mha and not masked:
        verdict = f"fused MHA x{len(mha)} ({mha[0]['name'].split('_myl')[0]}), no mask input"
    elif mha:
        verdict = (
            f"fused MHA x{len(mha)} ({mha[0]['name'].split('_myl')[0]}) with an additive mask input "
            f"{mask_dims[0] if mask_dims else '?'} on {len(masked)} of them (N x N bias materialised)"
        )
    elif softmax:
        verdict = f"attention NOT fused: {len(softmax)} separate softmax kernels (GEMM + softmax + GEMM)"
    else:
        verdict = "no attention found"
    if mha and softmax:
        verdict += f"; {len(softmax)} attention(s) left unfused"
    return {
        "layers": len(layers),
        "layer_types": dict(Counter(layer["type"] for layer in layers).most_common()),
        "fused_mha": len(mha),
        "fused_mha_with_mask_input": len(masked),
        "mask_input_dims": mask_dims[:1],
        "mha_head_dims": head_dims,
        "mha_layers": [layer["name"] for layer in mha],
        "mha_onnx_nodes": [layer["onnx_nodes"] for layer in mha][:2],
        "unfused_softmax": len(softmax),
        "verdict": verdict,
    }
