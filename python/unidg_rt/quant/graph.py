"""Q/DQ graph analysis and post-validation (issue 7), numpy + onnx only.

- :func:`plan_quantization`: every ``MatMul``/``Gemm``/``Conv`` of an exported graph, its module path
  (from the exporter's ``pkg.torch.onnx.name_scopes`` node metadata, else the bias/weight
  initializer names) and whether it stays high precision: a keep pattern (fnmatch over the module
  path and its ancestors) or attention math (a ``MatMul`` of two activations, QKᵀ and PV).
- :func:`validate_qdq`: the checks every quantised graph passes before it ships — only standard
  ``QuantizeLinear``/``DequantizeLinear`` (no custom domains, no QOperator ops), zero points zero,
  scales finite and positive, quantised types of the precision, coverage of the non-kept compute
  nodes at least the expected fraction, kept nodes untouched.
- :func:`restore_kept_inputs`: re-wires kept nodes that a quantiser routed through a shared Q/DQ.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import ConfigError

logger = logging.getLogger(__name__)

COMPUTE_OPS = ("MatMul", "Gemm", "Conv")
#: first/last layers and adaLN modulation (same set as the torch FP8 path's ``DEFAULT_SKIP``)
#: ``adapter_branches``: LoRA branches carried in the graph (rank-r, per-step strengths) stay high
#: precision — a few % of the FLOPs, and their scale changes with ``adapter_scales`` at run time
DEFAULT_KEEP = {
    "transformer": ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out", "*norm*.linear",
                    "adapter_branches"),
    "vae_encoder": ("*conv_in", "*conv_out"),
    "vae_decoder": ("*conv_in", "*conv_out"),
}  # fmt: skip
#: quantised element types allowed per precision (int32: bias DQ of ORT's quantiser)
QTYPES = {"int8": {"INT8", "INT32"}, "fp8": {"FLOAT8E4M3FN"}}
#: model metadata key where the quantiser records precision, kept nodes, expected coverage
METADATA_KEY = "unidg_rt.quantization"


def load_model(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path), load_external_data=False)
    return model_or_path


def node_module(node, initializers: set[str], consumers: dict[str, list]) -> str | None:
    """Module path of a node (``transformer_blocks.0.attn.to_q``) without the export wrapper's
    root (``model.`` / ``vae.``); ``None`` when the graph does not say."""
    meta = {p.key: p.value for p in node.metadata_props}
    raw = meta.get("pkg.torch.onnx.name_scopes")
    if raw:
        try:
            scopes = [s for s in ast.literal_eval(raw) if s]
        except (ValueError, SyntaxError):
            scopes = []
        if len(scopes) >= 2:  # [root, ..., deepest module, op name]
            root, path = scopes[0], scopes[-2]
            return "" if path == root else path.removeprefix(root + ".")
    names = [i for i in node.input[1:] if i in initializers and re.search(r"\.(weight|bias)$", i)]
    for out in node.output:  # MatMul weights are anonymous; the bias Add after it is named
        for c in consumers.get(out, []):
            if c.op_type == "Add":
                names += [i for i in c.input if i in initializers and i.endswith(".bias")]
    if names:
        return names[0].rsplit(".", 1)[0].split(".", 1)[-1]
    return None


def _constant_tensors(graph) -> set[str]:
    """Initializers and everything computed from constants only (a weight ``Transpose``…)."""
    const = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" or (n.input and all(i in const for i in n.input if i)):
            const.update(n.output)
    return const


def keep_matches(module: str | None, patterns: Sequence[str]) -> str | None:
    """The first pattern matching ``module`` or one of its ancestors."""
    if not module:
        return None
    parts = module.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            return pat
    return None


@dataclass
class QuantPlan:
    """Which compute nodes are quantised and which stay high precision (and why)."""

    component: str
    compute: dict[str, str]  # node name -> op type, every MatMul/Gemm/Conv
    modules: dict[str, str | None]
    keep: dict[str, str]  # node name -> reason
    keep_patterns: tuple[str, ...]

    @property
    def to_quantize(self) -> list[str]:
        return [n for n in self.compute if n not in self.keep]

    @property
    def unmapped(self) -> list[str]:
        return [n for n, m in self.modules.items() if m is None]

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for r in self.keep.values():
            reasons[r] = reasons.get(r, 0) + 1
        return {
            "compute_nodes": len(self.compute),
            "to_quantize": len(self.to_quantize),
            "kept": len(self.keep),
            "kept_by_reason": reasons,
            "unmapped_nodes": len(self.unmapped),
        }


def plan_quantization(
    model_or_path,
    component: str = "transformer",
    keep: Sequence[str] | None = None,
    quantize_attention: bool = False,
) -> QuantPlan:
    """Classify every ``MatMul``/``Gemm``/``Conv`` of the graph: quantise, or keep (pattern /
    attention math). ``keep=None`` = :data:`DEFAULT_KEEP` of the component; ``()`` = keep none."""
    model = load_model(model_or_path)
    g = model.graph
    patterns = tuple(DEFAULT_KEEP.get(component, ()) if keep is None else keep)
    inits = {i.name for i in g.initializer}
    const = _constant_tensors(g)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    unnamed = [n for n in g.node if n.op_type in COMPUTE_OPS and not n.name]
    if unnamed:
        raise ConfigError(f"{len(unnamed)} {COMPUTE_OPS} nodes have no name; re-export with unidg-rt export")
    compute, modules, kept = {}, {}, {}
    for n in g.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        compute[n.name] = n.op_type
        modules[n.name] = mod = node_module(n, inits, consumers)
        if n.op_type == "MatMul" and not any(i in const for i in n.input[:2]) and not quantize_attention:
            kept[n.name] = "attention math (activation x activation)"
        elif (pat := keep_matches(mod, patterns)) is not None:
            kept[n.name] = f"keep pattern {pat!r}"
    if patterns and not any(r.startswith("keep pattern") for r in kept.values()):
        logger.warning(
            "%s: no node matched the keep patterns %s (module names: %d of %d unmapped)",
            component,
            patterns,
            sum(m is None for m in modules.values()),
            len(modules),
        )
    return QuantPlan(component, compute, modules, kept, patterns)


def restore_kept_inputs(model, keep) -> int:
    """Re-wire kept nodes that read a quantised activation (a tensor shared with quantised nodes,
    e.g. the ``silu(temb)`` every modulation linear reads: ORT's quantizer routes all consumers
    through the same Q/DQ) to the float tensor before the ``QuantizeLinear``. Returns how many."""
    producer = {o: n for n in model.graph.node for o in n.output}
    restored = 0
    for n in model.graph.node:
        if n.name not in keep:
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                restored += 1
    if restored:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [
            n
            for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)
        ]
        while dead:  # drop Q/DQ pairs nobody reads any more
            for n in dead:
                model.graph.node.remove(n)
            used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
            dead = [
                n
                for n in model.graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)
            ]
    return restored


# ---------------------------------------------------------------------- validation
@dataclass
class QDQReport:
    """What :func:`validate_qdq` found; ``ok`` when ``problems`` is empty."""

    path: str
    precision: str | None
    problems: list[str] = field(default_factory=list)
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    quantized_dtypes: list[str] = field(default_factory=list)
    compute_nodes: int = 0
    quantized_compute: int = 0
    eligible_compute: int = 0
    kept_nodes: int = 0
    coverage: float = 0.0  # quantised / eligible (non-kept) compute nodes
    coverage_all: float = 0.0  # quantised / all compute nodes
    min_coverage: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _tensor_values(model) -> dict[str, Any]:
    """name → TensorProto of initializers and Constant outputs (data loaded lazily)."""
    vals: dict[str, Any] = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = a.t
    return vals


def validate_qdq(
    path: str | Path,
    *,
    precision: str | None = None,
    keep_nodes: Sequence[str] | dict | None = None,
    min_coverage: float | None = None,
) -> QDQReport:
    """Check a Q/DQ graph: only standard ``QuantizeLinear``/``DequantizeLinear`` (no custom
    domains, no QOperator ops), zero points all zero, scales finite and > 0, quantised types of
    ``precision``, coverage of the non-kept MatMul/Gemm/Conv nodes >= ``min_coverage`` and the
    kept nodes untouched (no DQ feeds them). Arguments default to what the quantiser recorded in
    the model metadata."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    recorded = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    meta = json.loads(recorded) if recorded else {}
    precision = precision or meta.get("precision")
    keep = set(keep_nodes if keep_nodes is not None else meta.get("keep_nodes", []))
    min_cov = float(min_coverage if min_coverage is not None else meta.get("min_coverage", 0.0))
    rep = QDQReport(str(path), precision, min_coverage=min_cov)
    g = model.graph
    vals = _tensor_values(model)
    producer = {o: n for n in g.node for o in n.output}

    def array(name):
        t = vals.get(name)
        return None if t is None else numpy_helper.to_array(t, base_dir=str(path.parent))

    custom = sorted({f"{n.domain}::{n.op_type}" for n in g.node if n.domain not in ("", "ai.onnx")})
    if custom:
        rep.problems.append(f"custom-domain ops {custom}: only standard ONNX Q/DQ may ship")
    qop = sorted(
        {n.op_type for n in g.node if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")}
    )
    if qop:
        rep.problems.append(f"QOperator-format ops {qop}: expected QuantizeLinear/DequantizeLinear only")
    dtypes: set[str] = set()
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.op_type == "QuantizeLinear":
            rep.quantize_nodes += 1
        else:
            rep.dequantize_nodes += 1
        scale = array(n.input[1])
        if scale is None:
            rep.problems.append(f"{n.name}: scale {n.input[1]!r} is not a constant")
        elif not (np.isfinite(scale.astype(np.float64)).all() and (scale > 0).all()):
            rep.problems.append(f"{n.name}: scale not finite and positive")
        zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if zp_name is not None:
            zp = array(zp_name)
            if zp is None:
                rep.problems.append(f"{n.name}: zero point {zp_name!r} is not a constant")
            else:
                dtypes.add(onnx.TensorProto.DataType.Name(vals[zp_name].data_type))
                if np.any(zp.astype(np.float64) != 0):
                    rep.problems.append(f"{n.name}: non-zero zero point (asymmetric quantisation)")
        elif n.op_type == "QuantizeLinear":
            dtypes.add("UINT8")  # QuantizeLinear without a zero point outputs uint8
        elif (w := vals.get(n.input[0])) is not None:
            dtypes.add(onnx.TensorProto.DataType.Name(w.data_type))
    rep.quantized_dtypes = sorted(dtypes)
    if precision in QTYPES and not dtypes <= QTYPES[precision]:
        rep.problems.append(
            f"quantised types {sorted(dtypes)} are not {precision} ({sorted(QTYPES[precision])})"
        )
    if rep.quantize_nodes + rep.dequantize_nodes == 0:
        rep.problems.append("no QuantizeLinear/DequantizeLinear nodes: the graph is not quantised")

    def from_dq(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    names = {n.name for n in g.node}
    missing = sorted(k for k in keep if k not in names)
    if missing:
        rep.problems.append(f"kept nodes missing from the graph (renamed?): {missing[:5]}")
    for n in g.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        rep.compute_nodes += 1
        quantised = all(from_dq(i) for i in n.input[:2])
        if n.name in keep:
            rep.kept_nodes += 1
            if any(from_dq(i) for i in n.input if i):
                rep.problems.append(f"kept node {n.name} ({n.op_type}) has a quantised input")
            continue
        rep.eligible_compute += 1
        rep.quantized_compute += quantised
    rep.coverage = rep.quantized_compute / rep.eligible_compute if rep.eligible_compute else 0.0
    rep.coverage_all = rep.quantized_compute / rep.compute_nodes if rep.compute_nodes else 0.0
    if rep.coverage < min_cov:
        rep.problems.append(
            f"coverage {rep.coverage:.1%} of the non-kept MatMul/Gemm/Conv nodes is below "
            f"the expected {min_cov:.0%}"
        )
    return rep
