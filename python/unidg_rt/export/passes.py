"""Graph passes and structural checks on exported models.

Passes work on the exporter's ``onnx_ir.Model`` (no protobuf round trip, so no 2 GB limit):
dim names from the spec, output names, node metadata clean-up, model metadata. The structural
helpers (:func:`node_table`, :func:`op_counts`, :func:`attention_summary`) accept an
``onnx_ir.Model`` or an ``onnx.ModelProto`` and back the per-form checks, ``inspect`` and tests.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from unidg_rt.export import ExportError
from unidg_rt.export.spec import IOSpec

logger = logging.getLogger(__name__)

#: node metadata the torch exporter attaches (stack traces with local paths, FX dumps)
_TORCH_NODE_METADATA = (
    "pkg.torch.onnx.stack_trace",
    "pkg.torch.onnx.fx_node",
    "pkg.torch.onnx.class_hierarchy",
)
#: torch.gather of the T rows by token id lowers to GatherElements: the N×N mask (DESIGN §4)
_MASK_GATHERS = ("GatherElements",)


# ---------------------------------------------------------------------- passes (onnx_ir)
def _all_values(model):
    g = model.graph
    yield from g.inputs
    for node in g.all_nodes():
        yield from node.outputs


def apply_spec(model, spec: IOSpec) -> dict[str, str]:
    """Give graph inputs/outputs the spec's names and dim names; returns the dim renames.

    Raises :class:`ExportError` when the exporter specialised a dim the spec says is symbolic
    (or vice versa) — such a graph would silently refuse other sizes."""
    import onnx_ir as ir

    g = model.graph
    if len(g.inputs) != len(spec.inputs) or len(g.outputs) != len(spec.outputs):
        raise ExportError(
            f"{spec.component}: graph has {len(g.inputs)} inputs / {len(g.outputs)} outputs, spec "
            f"{len(spec.inputs)} / {len(spec.outputs)} ({[v.name for v in g.inputs]} vs {list(spec.input_names)})"
        )
    seen: dict[str, str] = {}  # exporter dim name → spec dim name
    for value, t in [*zip(g.inputs, spec.inputs, strict=True), *zip(g.outputs, spec.outputs, strict=True)]:
        dims = list(value.shape) if value.shape is not None else []
        if len(dims) != len(t.shape):
            raise ExportError(
                f"{spec.component}.{t.name}: graph rank {len(dims)} != spec rank {len(t.shape)}"
            )
        for axis, (got, want) in enumerate(zip(dims, t.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise ExportError(f"{spec.component}.{t.name} axis {axis}: graph has {got}, spec {want}")
            elif isinstance(got, int):
                raise ExportError(
                    f"{spec.component}.{t.name} axis {axis} ({want}) was specialised to {got} by the exporter; "
                    "export with example sizes >= 2 that differ from every other dim (IOSpec.export_dims)"
                )
            elif seen.setdefault(str(got.value), want) != want:
                raise ExportError(
                    f"{spec.component}: the exporter merged dims {seen[str(got.value)]!r} and {want!r} "
                    f"into {got.value!r}; export with example sizes that differ (IOSpec.export_dims)"
                )
    renames = {old: new for old, new in seen.items() if old != new}
    for value in _all_values(model):
        if value.shape is not None and any(
            isinstance(d, ir.SymbolicDim) and d.value in renames for d in value.shape
        ):
            value.shape = ir.Shape(
                [
                    ir.SymbolicDim(renames[d.value])
                    if isinstance(d, ir.SymbolicDim) and d.value in renames
                    else d
                    for d in value.shape
                ]
            )
    for value, t in zip(g.inputs, spec.inputs, strict=True):
        if value.name != t.name:
            raise ExportError(f"{spec.component}: graph input {value.name!r} should be {t.name!r}")
    for value, t in zip(g.outputs, spec.outputs, strict=True):
        value.name = t.name
    return renames


def strip_node_metadata(model) -> None:
    """Drop the exporter's per-node stack traces / FX dumps (local paths, megabytes of text)."""
    for node in model.graph.all_nodes():
        for key in _TORCH_NODE_METADATA:
            node.metadata_props.pop(key, None)


def set_model_metadata(model, props: dict[str, str]) -> None:
    for key, value in props.items():
        model.metadata_props[key] = value


# ---------------------------------------------------------------------- structure (ir or proto)
@dataclass(frozen=True)
class NodeInfo:
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}::{self.op_type}"


def node_table(model: Any) -> list[NodeInfo]:
    """Main-graph nodes of an ``onnx_ir.Model`` or ``onnx.ModelProto``."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return [NodeInfo(n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node]
    return [
        NodeInfo(
            n.op_type,
            n.domain,
            tuple(v.name if v is not None else "" for v in n.inputs),
            tuple(v.name for v in n.outputs),
        )
        for n in model.graph
    ]


def op_counts(model: Any) -> dict[str, int]:
    """``{op: count}``; custom-domain ops are ``domain::Op``."""
    return dict(Counter(n.qualified for n in node_table(model)))


def attention_summary(model: Any, depth: int = 6) -> dict[str, int]:
    """How attention appears in a graph: ``Softmax`` nodes and how many of them get an additive
    mask gathered from the group table (within ``depth`` producers), ONNX ``Attention`` nodes with
    and without ``attn_mask``, ``unidg::GroupBiasAttention`` plugin nodes, and N×N gathers."""
    nodes = node_table(model)
    producer = {o: n for n in nodes for o in n.outputs}

    def reaches_mask_gather(name: str, left: int) -> bool:
        node = producer.get(name)
        if node is None or left == 0:
            return False
        if node.op_type in _MASK_GATHERS:
            return True
        return any(reaches_mask_gather(i, left - 1) for i in node.inputs if i)

    softmax = [n for n in nodes if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]
    masked = 0
    for n in softmax:
        src = producer.get(n.inputs[0])
        while src is not None and src.op_type == "Cast":
            src = producer.get(src.inputs[0])
        if (
            src is not None
            and src.op_type == "Add"
            and any(reaches_mask_gather(i, depth) for i in src.inputs)
        ):
            masked += 1
    attention = [n for n in nodes if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    return {
        "softmax": len(softmax),
        "softmax_with_bias_mask": masked,
        "attention_op": len(attention),
        "attention_op_with_mask": sum(1 for n in attention if len(n.inputs) > 3 and n.inputs[3]),
        "plugin": sum(1 for n in nodes if n.domain == "unidg" and n.op_type == "GroupBiasAttention"),
        "mask_gathers": sum(1 for n in nodes if n.op_type in _MASK_GATHERS),
    }


def check_attention_form(model: Any, form: str, layers: int) -> dict[str, int]:
    """Raise :class:`ExportError` unless the graph expresses attention the way ``form`` promises."""
    s = attention_summary(model)
    expected = {
        "decomposed": s["softmax_with_bias_mask"] == layers and s["attention_op"] == 0 and s["plugin"] == 0,
        "fold": s["softmax_with_bias_mask"] == 0
        and s["attention_op_with_mask"] == 0
        and s["plugin"] == 0
        and s["softmax"] + s["attention_op"] == layers,
        "attention_op": s["attention_op_with_mask"] == layers and s["softmax"] == 0 and s["plugin"] == 0,
        "plugin": s["plugin"] == layers and s["softmax"] == 0 and s["attention_op"] == 0,
    }
    if form not in expected:
        raise ExportError(f"unknown attention form {form!r}")
    if not expected[form]:
        raise ExportError(
            f"exported graph does not have the {form!r} attention structure for {layers} layers: {s}"
        )
    return s
