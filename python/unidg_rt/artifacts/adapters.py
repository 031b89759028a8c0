"""Adapters carried inside exported graphs: the records and the run-time strengths (numpy/json).

An exported transformer may carry LoRA adapters as low-rank branches (``unidg-rt export`` puts in
every adapter the model card names and any ``--lora``); their per-call strengths are one graph
input, ``adapter_scales [A]``, in the order of ``attrs["adapters"]`` of the graph's spec. The ONNX
manifest records each adapter once (``manifest["adapters"]``: name -> ``{"sha256", "strength",
"source", "rank", "gated"}``) and every transformer artifact lists the names its graph carries
(``artifact["adapters"]``); TensorRT plan sidecars copy both. This module is shared by the
producers (export, quant, engines) and the numpy backends (ONNX Runtime, TensorRT): the
:class:`AdapterScales` state behind their ``set_adapter_scales`` and :func:`check_card_adapters`,
which refuses a graph that lacks an adapter the card names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError, WeightsError

#: graph input with one strength per carried adapter
INPUT_NAME = "adapter_scales"


def card_adapter_strengths(defaults: Mapping[str, Any] | None) -> dict[str, float]:
    """``{name: strength}`` of the adapters the card ``defaults`` ship beside the weights."""
    entries = (defaults or {}).get("adapters") or {}
    return {name: float((spec or {}).get("strength", 1.0)) for name, spec in entries.items()}


def artifact_adapters(sidecar: Mapping[str, Any]) -> list[str]:
    """Names of the adapters an exported graph carries (its spec's ``attrs["adapters"]``)."""
    return list(((sidecar.get("spec") or {}).get("attrs") or {}).get("adapters") or [])


def check_card_adapters(
    carried: Sequence[str], defaults: Mapping[str, Any] | None, what: str, fix: str
) -> None:
    """Refuse ``what`` (a graph or plan) that lacks an adapter the card names: running it would
    silently compute a different model (the SFT weights without the APO adapter)."""
    missing = [n for n in card_adapter_strengths(defaults) if n not in carried]
    if missing:
        raise WeightsError(
            f"{what} was exported without the adapters {missing} the model card names (it carries "
            f"{list(carried) or 'none'}); it would compute a different model: {fix}"
        )


class AdapterScales:
    """The strengths fed as ``adapter_scales [A]``: starts at ``initial`` (the card's / export's
    strengths, 1.0 otherwise) and changes with :meth:`set` (segments, ``set_adapters``), like the
    torch backend's adapter strengths."""

    def __init__(self, names: Sequence[str], initial: Mapping[str, float] | None = None):
        self.names = tuple(names)
        initial = initial or {}
        self._values = np.array([float(initial.get(n, 1.0)) for n in self.names], np.float32)

    def __bool__(self) -> bool:
        return bool(self.names)

    def set(self, scales: Mapping[str, float]) -> None:
        unknown = [n for n in scales if n not in self.names]
        if unknown:
            raise InvalidInputError(
                f"adapter_scales names {unknown}, which this graph does not carry (it carries "
                f"{list(self.names) or 'none'}); load the LoRA before `unidg-rt export` (--lora) and re-export"
            )
        for n, s in scales.items():
            self._values[self.names.index(n)] = float(s)

    def get(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, self._values, strict=True)}

    def array(self) -> np.ndarray:
        return self._values.copy()  # [A] float32


def graph_adapters(
    names: list[str], manifest: dict[str, Any], input_names, what: str, fix: str
) -> AdapterScales:
    """The strengths state of a transformer graph / plan carrying adapters ``names`` (``manifest``:
    the ONNX manifest or a plan's recorded facts, with ``defaults`` and ``adapters``): refused when
    it lacks one the card names or its inputs disagree with its record; starts at the card's
    strengths, then the export's (``manifest["adapters"]``)."""
    check_card_adapters(names, manifest.get("defaults"), what, fix)
    if bool(names) != (INPUT_NAME in input_names):
        raise WeightsError(
            f"{what}: its record lists adapters {names} but its inputs {'lack' if names else 'have'} "
            f"{INPUT_NAME!r}; {fix}"
        )
    initial = card_adapter_strengths(manifest.get("defaults"))
    initial.update({n: float(a.get("strength", 1.0)) for n, a in (manifest.get("adapters") or {}).items()})
    return AdapterScales(names, initial)
