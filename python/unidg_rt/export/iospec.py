"""The :class:`IOSpec` record (DESIGN §3): tensor names, dtypes, symbolic shapes, per-target
profiles, derived dims and sample feeds. The per-component builders are in
:mod:`unidg_rt.export.spec`, which re-exports every name here.

An :class:`IOSpec` is data: tensor names (diffusers' vocabulary), dtypes, shapes whose symbolic
dims are strings, and per *target* (a deployment size range) the ``(min, opt, max)`` of every
base dim. Derived dims are tiny expressions over base dims (``"8*latent_height"``,
``"text_tokens+img_tokens"``). Profiles come from per-side generation size ranges
(:class:`GenerationRange`) and text lengths, e.g. 256/512/768 px per side for FLUX-size models.

numpy only: no torch, no onnx. It is not on floor 0 (``artifacts/``, where DESIGN §2 puts it)
yet: the ``"bias"`` sample feed is the default group-bias table of :mod:`unidg_rt.groups`
(floor 1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.groups import default_group_bias

POINTS = ("min", "opt", "max")
#: how :meth:`IOSpec.sample_inputs` fills a tensor
VALUE_KINDS = ("normal", "unit", "images", "guidance", "positions", "zeros", "groups", "tokens", "bias")


@dataclass(frozen=True)
class TensorSpec:
    """One input/output. ``shape`` entries are ints (static) or dim names (symbolic)."""

    name: str
    dtype: str  # numpy dtype name: "float32" | "int64"
    shape: tuple[int | str, ...]
    values: str = "normal"  # one of VALUE_KINDS (sample feeds)
    high: int = 0  # exclusive upper bound of integer values (groups, tokens)
    doc: str = ""

    @property
    def symbolic(self) -> dict[int, str]:
        """axis → dim name for every symbolic axis."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


@dataclass(frozen=True)
class GenerationRange:
    """A deployment target: per-side generation size (the diptych side, px), text length and
    batch, each ``(min, opt, max)``. The diptych is ``side × 2·side``."""

    sides: tuple[int, int, int] = (256, 512, 768)
    text: tuple[int, int, int] = (512, 512, 512)
    batch: tuple[int, int, int] = (1, 1, 4)

    def __post_init__(self):
        for name in ("sides", "text", "batch"):
            lo, opt, hi = getattr(self, name)
            if not 1 <= lo <= opt <= hi:
                raise ConfigError(
                    f"GenerationRange.{name}={getattr(self, name)} must be 1 <= min <= opt <= max"
                )
        if any(s % 16 for s in self.sides):
            raise ConfigError(
                f"GenerationRange.sides={self.sides} must be multiples of 16 (2x2 latent patches)"
            )

    @classmethod
    def around(cls, side: int, text_len: int, batch: tuple[int, int, int] = (1, 1, 4)) -> GenerationRange:
        """``(side/2, side, 1.5·side)`` rounded to 16 px — 256/512/768 for FLUX's 512 default."""

        def r16(x: float) -> int:
            return max(16, int(round(x / 16)) * 16)

        return cls(sides=(r16(side / 2), r16(side), r16(side * 1.5)), text=(text_len,) * 3, batch=batch)


@dataclass(frozen=True)
class IOSpec:
    """I/O of one component: inputs, outputs, profiles per target, derived dims, facts."""

    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: Mapping[str, Mapping[str, tuple[int, int, int]]] = field(default_factory=dict)
    derived: Mapping[str, str] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    exportable: bool = True
    notes: str = ""

    # ------------------------------------------------------------------ names and dims
    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def tensor(self, name: str) -> TensorSpec:
        for t in (*self.inputs, *self.outputs):
            if t.name == name:
                return t
        raise InvalidInputError(
            f"{self.component} has no tensor {name!r}; it has {self.input_names + self.output_names}"
        )

    @property
    def base_dims(self) -> tuple[str, ...]:
        """Symbolic dims that are free (not derived), in first-use order."""
        seen: list[str] = []
        for t in (*self.inputs, *self.outputs):
            for d in t.symbolic.values():
                if d not in self.derived and d not in seen:
                    seen.append(d)
        return tuple(seen)

    def profile(self, target: str | None = None) -> Mapping[str, tuple[int, int, int]]:
        if not self.profiles:
            raise ConfigError(f"{self.component} spec has no profiles; build it with a GenerationRange")
        if target is None:
            return next(iter(self.profiles.values()))
        if target not in self.profiles:
            raise InvalidInputError(
                f"target={target!r} unknown for {self.component}; choose one of {list(self.profiles)}"
            )
        return self.profiles[target]

    def dims(self, point: str = "opt", target: str | None = None, **overrides: int) -> dict[str, int]:
        """Concrete value of every dim (base + derived) at ``point`` of a target's profile."""
        if point not in POINTS:
            raise InvalidInputError(f"point={point!r} must be one of {POINTS}")
        prof = self.profile(target)
        values = {d: int(prof[d][POINTS.index(point)]) for d in self.base_dims if d in prof}
        values.update({k: int(v) for k, v in overrides.items()})
        missing = [d for d in self.base_dims if d not in values]
        if missing:
            raise InvalidInputError(f"{self.component}: no value for dims {missing}; pass them as keywords")
        for name, expr in self.derived.items():
            values[name] = eval_dim(expr, values)
        return values

    def shape(self, name: str, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.tensor(name).shape)

    def profile_shapes(self, target: str | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name → ``(min_shape, opt_shape, max_shape)`` (TensorRT optimisation profile)."""
        points = [self.dims(p, target) for p in POINTS]
        return {t.name: tuple(self.shape(t.name, d) for d in points) for t in self.inputs}

    def export_dims(self, target: str | None = None) -> dict[str, int]:
        """Dims for the example inputs of an export: ``opt``, every free dim >= 2 and all distinct,
        so ``torch.export`` neither specialises a 0/1 size nor unifies two dims by value."""
        base = self.dims("opt", target)
        used: set[int] = set()
        values: dict[str, int] = {}
        for d in self.base_dims:
            v = max(2, base[d])
            while v in used:
                v += 1
            used.add(v)
            values[d] = v
        return self.dims("opt", target, **values)

    # ------------------------------------------------------------------ sample feeds
    def sample_inputs(
        self,
        dims: Mapping[str, int] | None = None,
        *,
        target: str | None = None,
        point: str = "min",
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """A small valid feed: ``dims`` overrides the profile point (default: the smallest)."""
        values = self.dims(point, target, **dict(dims or {}))
        rng = np.random.default_rng(seed)
        return {t.name: _fill(t, self.shape(t.name, values), rng) for t in self.inputs}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "profiles": {k: {d: list(v) for d, v in p.items()} for k, p in self.profiles.items()},
            "derived": dict(self.derived),
            "attrs": dict(self.attrs),
            "exportable": self.exportable,
            "notes": self.notes,
        }

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def eval_dim(expr: str, values: Mapping[str, int]) -> int:
    """Evaluate ``"a+b"``, ``"8*a"``, ``"2*a+b"`` over dim values (sums of products only)."""
    total = 0
    for term in expr.replace(" ", "").split("+"):
        prod = 1
        for factor in term.split("*"):
            if factor.isdigit():
                prod *= int(factor)
            elif factor in values:
                prod *= int(values[factor])
            else:
                raise ConfigError(f"derived dim {expr!r} uses {factor!r}, which has no value")
        total += prod
    return total


def _fill(t: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(t.dtype)
    if t.values == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if t.values == "unit":  # timesteps (sigma) in (0, 1]
        return rng.uniform(0.05, 1.0, shape).astype(dtype)
    if t.values == "images":
        return rng.uniform(-1.0, 1.0, shape).astype(dtype)
    if t.values == "guidance":
        return np.full(shape, 3.5, dtype)
    if t.values == "zeros":
        return np.zeros(shape, dtype)
    if t.values == "positions":  # (0, row, col) on a near-square grid
        n = shape[0]
        cols = max(1, math.isqrt(n))
        ids = np.zeros(shape, dtype)
        ids[:, 1] = np.arange(n) // cols
        ids[:, 2] = np.arange(n) % cols
        return ids
    if t.values in ("groups", "tokens"):
        return rng.integers(0, t.high, shape).astype(dtype)
    if t.values == "bias":  # default λ-table plus noise, broadcast to every layer/head
        table = default_group_bias(1.0, shape[-1])
        return (table + 0.5 * rng.standard_normal(shape)).astype(dtype)
    raise ConfigError(f"tensor {t.name}: unknown value kind {t.values!r}; use one of {VALUE_KINDS}")
