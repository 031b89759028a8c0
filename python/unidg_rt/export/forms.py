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

The three graph-only forms register themselves into the attention-form registry of
:mod:`unidg_rt.models.attention` when this module is imported; ``fold`` is the torch form of
the same name (one entry: the graph is the torch fold traced). An export selects its form with
:func:`attention_form` — the registry's context manager, re-exported here — so every
``FluxAttention`` of the traced model runs that form; the model code and its numerics stay
untouched, and the selection is per thread (no module global is swapped).
"""

from __future__ import annotations

import logging
import math

import torch

from unidg_rt.models.attention import attention_form as attention_form  # re-exported: export.onnx uses it
from unidg_rt.models.attention import group_bias_mask, reference_attention, register_form
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


def plugin_attention(q, k, v, token_groups, group_bias) -> torch.Tensor:
    """The ``plugin`` form: one opaque :func:`group_bias_attention` call per layer."""
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


# ---------------------------------------------------------------------- the graph forms
register_form("decomposed", decomposed_attention)
register_form("attention_op", reference_attention)  # SDPA + additive mask → ONNX Attention at opset >= 23
register_form("plugin", plugin_attention)
