"""vocab: the one list of precisions and attention forms."""

from __future__ import annotations

from unidg_rt.vocab import GRAPH_FORMS, ORT_FORMS, PRECISIONS, TORCH_FORMS, Precision


def test_precisions_most_precise_first_and_str():
    assert PRECISIONS == ("fp32", "bf16", "fp16", "fp8", "int8")
    assert Precision("fp8") is Precision.FP8 and Precision.FP8 == "fp8"
    assert str(Precision.INT8) == "int8" and f"{Precision.BF16}" == "bf16"


def test_forms_are_the_lists_every_floor_uses():
    from unidg_rt.export.forms import EXPORT_FORMS, ORT_RUNNABLE_FORMS
    from unidg_rt.models.attention import ATTENTION_FORMS
    from unidg_rt.runtime import ort_backend

    assert set(ORT_FORMS) < set(GRAPH_FORMS) and "plugin" not in ORT_FORMS
    assert (
        EXPORT_FORMS is GRAPH_FORMS and ORT_RUNNABLE_FORMS is ORT_FORMS and ort_backend.ORT_FORMS is ORT_FORMS
    )
    assert ATTENTION_FORMS is TORCH_FORMS
