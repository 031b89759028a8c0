"""The transformer's attention forms as ONNX expresses them (DESIGN §4), export-only.

``softmax(q kᵀ/√d + T[g_q, g_k]) v`` in four graphs:

- ``decomposed``: explicit additive bias — ``T`` gathered by ``token_groups`` into an N×N mask,
  added to ``MatMul(q, kᵀ)`` before ``Softmax``. Runs everywhere; materialises N×N.
- ``fold``: bias folding (:func:`unidg_rt.models.attention.fold_group_bias`): ``T[g_q]`` columns
  appended to Q and one-hot group columns to K, so no mask reaches the attention and any
  standard fused MHA applies. Exact for finite ``T`` (``-inf`` → ``FOLD_NEG``).
- ``attention_op``: the opset-23 ONNX ``Attention`` op with the additive mask as ``attn_mask``
  (torch's exporter lowers ``scaled_dot_product_attention`` to it at opset >= 23).
- ``plugin``: one ``unidg::GroupBiasAttention(q, k, v, token_groups, group_bias)`` node per layer
  for a TensorRT plugin; not runnable on ONNX Runtime (structure-tested only).

The forms are switched by :func:`attention_form` — a context manager that reroutes
``unidg_rt.models.layers.attention`` (the one call site, ``FluxAttention.forward``) for the
duration of an export. The model code and its numerics stay untouched. Not thread-safe: one
export at a time per process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading

import torch

from unidg_rt.models import layers
from unidg_rt.models.attention import folded_attention, group_bias_mask, reference_attention
from unidg_rt.vocab import GRAPH_FORMS
from unidg_rt.vocab import ORT_FORMS as ORT_RUNNABLE_FORMS  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

EXPORT_FORMS = GRAPH_FORMS  # the one list: unidg_rt.vocab
#: opset per form: 18 keeps TensorRT 10.3 (JetPack 6) and older ORT able to parse the graph;
#: the ONNX ``Attention`` op only exists from opset 23.
DEFAULT_OPSET = {"decomposed": 18, "fold": 18, "attention_op": 23, "plugin": 18}
PLUGIN_DOMAIN = "unidg"
PLUGIN_OP = "GroupBiasAttention"
PLUGIN_VERSION = 1

_lock = threading.Lock()


def decomposed_attention(q, k, v, token_groups, group_bias) -> torch.Tensor:
    """MatMul → + gathered N×N bias → Softmax → MatMul (always decomposed, at any opset)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    mask = group_bias_mask(token_groups, group_bias.to(q.dtype), q.shape[0], q.shape[1])  # [B, H|1, N, N]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask  # [B, H, N, N]
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)  # [B, H, N, D]


# ---------------------------------------------------------------------- plugin custom op
@torch.library.custom_op("unidg::group_bias_attention", mutates_args=())
def group_bias_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_groups: torch.Tensor, group_bias: torch.Tensor
) -> torch.Tensor:
    """Opaque op for export: eager = the reference; ONNX = one ``unidg::GroupBiasAttention`` node."""
    return reference_attention(q, k, v, token_groups, group_bias)


@group_bias_attention.register_fake
def _(q, k, v, token_groups, group_bias):
    return torch.empty_like(q)


def _plugin_attention(q, k, v, token_groups, group_bias) -> torch.Tensor:
    return group_bias_attention(q, k, v, token_groups, group_bias.to(q.dtype))


def register_plugin_schema() -> None:
    """Register the ``unidg::GroupBiasAttention`` schema with onnx (idempotent), so onnxscript can
    build the node and ``onnx.checker`` validates its inputs. Done lazily, at export time."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    param = OpSchema.FormalParameter
    schema = OpSchema(
        PLUGIN_OP,
        PLUGIN_DOMAIN,
        PLUGIN_VERSION,
        doc="softmax(q·kᵀ·scale + group_bias[h, g_q, g_k]) · v without an N×N mask (TensorRT plugin).",
        inputs=[
            param("q", "T", "[B, H, N, D]"),
            param("k", "T", "[B, H, N, D]"),
            param("v", "T", "[B, H, N, D]"),
            param("token_groups", "I", "[N] group id per token"),
            param("group_bias", "T", "[H|1, G, G] table T"),
        ],
        outputs=[param("out", "T", "[B, H, N, D]")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float tensors"),
            ("I", ["tensor(int32)", "tensor(int64)"], "group ids"),
        ],
        attributes=[OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale 1/sqrt(D)")],
    )
    onnx.defs.register_schema(schema)


def plugin_translation_table(head_dim: int) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: our op → the plugin node."""
    import onnxscript

    register_plugin_schema()
    unidg = onnxscript.values.Opset(PLUGIN_DOMAIN, PLUGIN_VERSION)
    scale = 1.0 / math.sqrt(head_dim)

    def group_bias_attention_onnx(q, k, v, token_groups, group_bias):
        return unidg.GroupBiasAttention(q, k, v, token_groups, group_bias, scale=scale)

    return {torch.ops.unidg.group_bias_attention.default: group_bias_attention_onnx}


# ---------------------------------------------------------------------- switching forms
_FORM_FUNCTIONS = {
    "decomposed": decomposed_attention,
    "fold": folded_attention,
    "attention_op": reference_attention,  # SDPA + additive mask → ONNX Attention at opset >= 23
    "plugin": _plugin_attention,
}


@contextlib.contextmanager
def attention_form(form: str):
    """Route every ``FluxAttention`` through ``form``'s attention function while exporting."""
    if form not in _FORM_FUNCTIONS:
        raise ValueError(f"attention_form={form!r} unknown; choose one of {EXPORT_FORMS}")
    fn = _FORM_FUNCTIONS[form]

    def routed(q, k, v, token_groups=None, group_bias=None, form=None):
        if token_groups is None or group_bias is None:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return fn(q, k, v, token_groups, group_bias)

    with _lock:
        original = layers.attention
        layers.attention = routed
        try:
            yield
        finally:
            layers.attention = original
