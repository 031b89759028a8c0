"""export/forms.py: the graph forms register into the models' attention-form registry."""

from __future__ import annotations

import torch

from unidg_rt.export import forms
from unidg_rt.models import attention
from unidg_rt.vocab import GRAPH_FORMS


def test_graph_forms_are_registry_entries():
    assert forms.EXPORT_FORMS is GRAPH_FORMS
    assert set(GRAPH_FORMS) <= set(attention.registered_forms())
    assert attention.get_form("decomposed") is forms.decomposed_attention
    assert attention.get_form("attention_op") is attention.reference_attention  # lowered to ONNX Attention
    assert attention.get_form("plugin") is forms.plugin_attention
    assert attention.get_form("fold") is attention.folded_attention  # the torch fold, traced
    assert forms.attention_form is attention.attention_form  # one context manager, no global swap
    assert set(forms.DEFAULT_OPSET) == set(GRAPH_FORMS)


def test_graph_forms_agree_with_the_reference_in_eager():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g) for _ in range(3))
    groups, table = torch.randint(0, 4, (2, 9), generator=g), torch.randn(2, 4, 4, generator=g)
    ref = attention.reference_attention(q, k, v, groups, table)
    for form in GRAPH_FORMS:
        with attention.attention_form(form):
            got = attention.attention(q, k, v, groups, table, form=attention.selected_form("reference"))
        assert (got - ref).abs().max() <= 1e-5, form  # decomposed: fp32 softmax
