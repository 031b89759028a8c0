"""Adapter records shared by producers and backends (unidg_rt.artifacts.adapters): the strengths
state behind ``set_adapter_scales`` of the ONNX Runtime and TensorRT backends, and the refusals of
a graph / plan that does not carry what the card names."""

from __future__ import annotations

import numpy as np
import pytest

from unidg_rt.artifacts.adapters import (
    AdapterScales,
    artifact_adapters,
    card_adapter_strengths,
    check_card_adapters,
    graph_adapters,
)
from unidg_rt.artifacts.onnx_folder import manifest_entry
from unidg_rt.errors import InvalidInputError, WeightsError

CARD = {"adapters": {"apo": {"file": "apo.safetensors", "strength": 0.75}}}


def test_strengths_start_from_the_card_then_the_export_and_change_by_name():
    manifest = {"defaults": CARD, "adapters": {"style": {"strength": 0.5, "source": "lora"}}}
    scales = graph_adapters(["apo", "style"], manifest, ("hidden_states", "adapter_scales"), "g", "fix")
    assert scales.names == ("apo", "style") and scales.get() == {"apo": 0.75, "style": 0.5}
    scales.set({"style": 0.0})
    arr = scales.array()
    assert arr.dtype == np.float32 and arr.tolist() == [0.75, 0.0]
    arr[0] = 9  # a copy: feeding it cannot change the state
    assert scales.get()["apo"] == 0.75
    with pytest.raises(InvalidInputError, match=r"\['other'\].*--lora"):
        scales.set({"apo": 1.0, "other": 1.0})
    assert scales.get() == {"apo": 0.75, "style": 0.0}  # nothing changed
    assert not AdapterScales([]) and card_adapter_strengths(None) == {}


def test_a_graph_without_the_card_adapter_is_refused_with_the_fix():
    with pytest.raises(
        WeightsError, match=r"plan\.plan was exported without the adapters \['apo'\].*rebuild it"
    ):
        check_card_adapters([], CARD, "plan.plan", "rebuild it")
    check_card_adapters(["apo", "extra"], CARD, "g", "fix")  # extra adapters are fine
    with pytest.raises(WeightsError, match="inputs lack 'adapter_scales'"):
        graph_adapters(["apo"], {"defaults": CARD}, ("hidden_states",), "g", "fix")
    with pytest.raises(WeightsError, match="inputs have 'adapter_scales'"):
        graph_adapters([], {}, ("adapter_scales",), "g", "fix")


def test_manifest_entries_list_the_carried_adapters():
    side = {
        "component": "transformer",
        "attention_form": "fold",
        "precision": "int8",
        "opset": 18,
        "onnx_file": "t.onnx",
        "spec": {"attrs": {"adapters": ["apo"]}},
    }
    assert manifest_entry(side)["adapters"] == ["apo"] == artifact_adapters(side)
    vae = {**side, "component": "vae_decoder", "spec": {"attrs": {}}}
    assert "adapters" not in manifest_entry(vae) and artifact_adapters(vae) == []
