"""Shared words (DESIGN §2, floor 0): precisions and attention forms, defined once.

Every floor spells these the same way: the torch model (:mod:`unidg_rt.models.attention`), the
exporter (:mod:`unidg_rt.export.forms`), the engine builder's plan names and the backends. No
imports beyond the standard library.
"""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """Numeric precision of an artifact or a run, most precise first (``fp8``/``int8`` mean a
    Q/DQ graph or FP8 linears)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


#: every precision name, most precise first
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)

#: attention forms of the torch model (``FluxTransformer.set_attention_form``)
TORCH_FORMS: tuple[str, ...] = ("reference", "fold", "triton", "sdpa")
#: attention forms an exported transformer graph can take (``unidg-rt export --forms``)
GRAPH_FORMS: tuple[str, ...] = ("decomposed", "fold", "attention_op", "plugin")
#: graph forms ONNX Runtime can execute (``plugin`` needs the TensorRT plugin)
ORT_FORMS: tuple[str, ...] = ("decomposed", "fold", "attention_op")
#: forms a run can select (``Settings.attention_form``): the torch forms, then the ONNX Runtime graph forms
RUNNABLE_FORMS: tuple[str, ...] = tuple(dict.fromkeys(TORCH_FORMS + ORT_FORMS))
