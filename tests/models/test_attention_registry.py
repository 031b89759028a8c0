"""The attention-form registry: register/get by name, per-model and context-manager selection."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.models.attention import (
    FORM_NAMES,
    attention,
    attention_form,
    folded_attention,
    get_form,
    reference_attention,
    register_form,
    registered_forms,
    sdpa_attention,
    selected_form,
)
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.layers import FluxAttention
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.vocab import GRAPH_FORMS, TORCH_FORMS


@pytest.fixture
def fold_calls():
    """Count calls of the ``fold`` form (re-registered with a spy, restored afterwards)."""
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return folded_attention(*args)

    register_form("fold", spy, replace=True)
    try:
        yield calls
    finally:
        register_form("fold", folded_attention, replace=True)


def _qkv_bias():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 7, 8, generator=g) for _ in range(3))
    return q, k, v, torch.randint(0, 3, (7,), generator=g), torch.randn(3, 3, generator=g)


def test_torch_forms_registered_under_vocab_names():
    assert registered_forms()[: len(TORCH_FORMS)] == TORCH_FORMS
    assert get_form("reference") is reference_attention and get_form("fold") is folded_attention
    assert get_form("sdpa") is sdpa_attention and callable(get_form("triton"))
    assert set(FORM_NAMES) == set(TORCH_FORMS) | set(GRAPH_FORMS) and len(FORM_NAMES) == len(set(FORM_NAMES))


def test_registry_names_match_vocab_once_export_is_imported():
    import unidg_rt.export.forms  # noqa: F401 - registers the graph forms

    assert set(registered_forms()) == set(TORCH_FORMS) | set(GRAPH_FORMS)
    assert registered_forms() == FORM_NAMES  # "fold" is one entry: the torch fold, traced by export


def test_models_alone_register_the_torch_forms_only():
    code = (
        "from unidg_rt.models.attention import get_form, registered_forms\n"
        "print(','.join(registered_forms()))\n"
        "try:\n    get_form('plugin')\nexcept ValueError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, message = out.splitlines()[:2]
    assert tuple(names.split(",")) == TORCH_FORMS
    assert "form='plugin'" in message and "unidg_rt.export.forms" in message


def test_unknown_form_is_a_typed_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"form='magic': unknown attention form; choose one of \("):
        get_form("magic")
    q, k, v, g, t = _qkv_bias()
    with pytest.raises(ConfigError, match="form='magic'"):
        attention(q, k, v, g, t, form="magic")
    with pytest.raises(ConfigError, match="form='magic'"):
        with attention_form("magic"):
            pass  # pragma: no cover
    assert selected_form("reference") == "reference"  # a failed entry leaves nothing selected
    with pytest.raises(ConfigError, match="form='magic'.*choose one of"):
        FluxTransformer(FluxConfig.tiny(num_layers=1, num_single_layers=1)).set_attention_form("magic")
    with pytest.raises(ConfigError, match="form='decomposed'.*torch attention form"):
        FluxTransformer(FluxConfig.tiny(num_layers=1, num_single_layers=1)).set_attention_form("decomposed")


def test_register_form_checks_vocab_and_duplicates():
    def mine(q, k, v, token_groups, group_bias):
        return reference_attention(q, k, v, token_groups, group_bias)

    with pytest.raises(ConfigError, match=r"register_form\(name='flash'\).*vocab"):
        register_form("flash", mine)
    with pytest.raises(ConfigError, match=r"register_form\(name='sdpa'\): already registered.*replace=True"):
        register_form("sdpa", mine)
    register_form("sdpa", sdpa_attention)  # the same function again: a no-op
    try:
        assert register_form("sdpa", replace=True)(mine) is mine  # decorator form returns the function
        assert get_form("sdpa") is mine
    finally:
        register_form("sdpa", sdpa_attention, replace=True)
    assert get_form("sdpa") is sdpa_attention


def test_dispatch_without_bias_is_plain_sdpa_and_sdpa_rejects_a_bias():
    q, k, v, g, t = _qkv_bias()
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for form in TORCH_FORMS:
        assert torch.equal(attention(q, k, v, None, None, form=form), plain)
    assert torch.equal(attention(q, k, v, g, t, form="fold"), folded_attention(q, k, v, g, t))
    with pytest.raises(InvalidInputError, match="form='sdpa' ignores group_bias"):
        attention(q, k, v, g, t, form="sdpa")


def test_context_manager_selects_nests_and_restores():
    assert selected_form("reference") == "reference"
    with attention_form("fold"):
        assert selected_form("reference") == "fold"
        with attention_form("sdpa"):
            assert selected_form("reference") == "sdpa"
        assert selected_form("reference") == "fold"
    assert selected_form("triton") == "triton"
    with pytest.raises(RuntimeError, match="boom"):
        with attention_form("fold"):
            raise RuntimeError("boom")
    assert selected_form("reference") == "reference"


def test_context_manager_overrides_the_per_model_form(fold_calls):
    torch.manual_seed(0)
    model = FluxTransformer(FluxConfig.tiny(num_layers=1, num_single_layers=1)).eval()
    cfg = model.config
    feed = dict(
        hidden_states=torch.randn(1, 4, cfg.in_channels),
        encoder_hidden_states=torch.randn(1, 3, cfg.joint_attention_dim),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim),
        timestep=torch.rand(1),
        img_ids=torch.zeros(4, 3),
        txt_ids=torch.zeros(3, 3),
        guidance=torch.rand(1),
        token_groups=torch.randint(0, 3, (7,)),
        group_bias=torch.randn(3, 3),
    )
    with torch.no_grad():
        ref = model(**feed)
        assert not fold_calls
        with attention_form("fold"):
            in_block = model(**feed)
        assert len(fold_calls) == cfg.total_layers
        assert {m.form for m in model.modules() if isinstance(m, FluxAttention)} == {"reference"}
        model.set_attention_form("fold")
        assert torch.equal(model(**feed), in_block) and len(fold_calls) == 2 * cfg.total_layers
        with attention_form("reference"):
            assert torch.equal(model(**feed), ref) and len(fold_calls) == 2 * cfg.total_layers


def test_context_manager_is_per_thread():
    barrier = threading.Barrier(2, timeout=30)
    seen: dict[str, list[str]] = {}

    def worker(name):
        with attention_form(name):
            barrier.wait()  # both blocks are open at once
            seen[name] = [selected_form("reference")]
            barrier.wait()
        seen[name].append(selected_form("reference"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("fold", "sdpa")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"fold": ["fold", "reference"], "sdpa": ["sdpa", "reference"]}

    outside: list[str] = []
    with attention_form("fold"):
        t = threading.Thread(target=lambda: outside.append(selected_form("reference")))
        t.start()
        t.join()
    assert outside == ["reference"]  # a thread started inside a block does not inherit it


def test_compiled_code_reads_the_module_form_and_honours_an_open_block():
    """torch.compile cannot trace a ContextVar: with no block open the compiled call is one
    graph; with one open it recompiles (guarded counter) and still runs the selected form."""
    q, k, v, g, t = _qkv_bias()

    def call(q, k, v, g, t):
        return attention(q, k, v, g, t, form=selected_form("reference"))

    full = torch.compile(call, backend="eager", fullgraph=True)
    assert torch.equal(full(q, k, v, g, t), call(q, k, v, g, t))
    compiled = torch.compile(call, backend="eager")
    assert torch.equal(compiled(q, k, v, g, t), reference_attention(q, k, v, g, t))
    with attention_form("fold"):
        assert torch.equal(compiled(q, k, v, g, t), folded_attention(q, k, v, g, t))
    assert torch.equal(compiled(q, k, v, g, t), reference_attention(q, k, v, g, t))


def test_set_fused_ops_is_a_per_model_setting():
    model = FluxTransformer(FluxConfig.tiny(num_layers=1, num_single_layers=1))
    attns = [m for m in model.modules() if isinstance(m, FluxAttention)]
    assert attns and not any(m.fused_ops for m in attns)
    model.set_fused_ops(True)
    assert all(m.fused_ops for m in attns)
    model.set_fused_ops(False)
    assert not any(m.fused_ops for m in attns)
