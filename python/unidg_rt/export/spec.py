"""I/O specs per component (DESIGN §3): the single source for export dynamic axes, engine
profiles, buffer allocation and tests.

An :class:`IOSpec` is data: tensor names (diffusers' vocabulary), dtypes, shapes whose symbolic
dims are strings, and per *target* (a deployment size range) the ``(min, opt, max)`` of every
base dim. Derived dims are tiny expressions over base dims (``"8*latent_height"``,
``"text_tokens+img_tokens"``). Profiles come from per-side generation size ranges
(:class:`GenerationRange`) and text lengths, e.g. 256/512/768 px per side for FLUX-size models.

Components: ``transformer``, ``vae_encoder``, ``vae_decoder``, ``clip``, ``t5``, the optional
``reference_encoder`` (the checkpoint's learned reference-crop CNN, :mod:`unidg_rt.models.refenc`)
and ``image_encoder`` (SigLIP vision tower + Redux projector — **spec only**, no exporter yet).

numpy only: no torch, no onnx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.groups import NUM_GROUPS, default_group_bias

COMPONENTS = ("transformer", "vae_encoder", "vae_decoder", "clip", "t5", "reference_encoder", "image_encoder")
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


# ---------------------------------------------------------------------- spec builders
Ranges = Mapping[str, GenerationRange] | GenerationRange | None


def _ranges(ranges: Ranges) -> dict[str, GenerationRange]:
    if ranges is None:
        return {"default": GenerationRange()}
    if isinstance(ranges, GenerationRange):
        return {"default": ranges}
    return dict(ranges)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def transformer_spec(config, ranges: Ranges = None, num_groups: int = NUM_GROUPS) -> IOSpec:
    """The MM-DiT (:class:`~unidg_rt.models.config.FluxConfig`). ``group_bias`` is always the full
    per-layer table ``[L, H, G, G]`` (runtimes broadcast ``[G, G]`` / ``[H, G, G]`` onto it) and
    ``token_groups`` is ``[N_txt + N_img]``; zeros for both mean "no bias"."""
    c = config
    layers, heads = c.num_layers + c.num_single_layers, c.num_attention_heads
    inputs = [
        TensorSpec(
            "hidden_states",
            "float32",
            ("batch", "img_tokens", c.in_channels),
            doc="noise ‖ masked latents ‖ mask",
        ),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "text_tokens", c.joint_attention_dim)),
        TensorSpec("pooled_projections", "float32", ("batch", c.pooled_projection_dim)),
        TensorSpec("timestep", "float32", ("batch",), "unit", doc="sigma in [0, 1]"),
        TensorSpec("img_ids", "float32", ("img_tokens", 3), "positions"),
        TensorSpec("txt_ids", "float32", ("text_tokens", 3), "zeros"),
    ]
    if c.guidance_embeds:
        inputs.append(TensorSpec("guidance", "float32", ("batch",), "guidance"))
    inputs += [
        TensorSpec("token_groups", "int64", ("tokens",), "groups", high=num_groups, doc="group id per token"),
        TensorSpec(
            "group_bias", "float32", (layers, heads, num_groups, num_groups), "bias", doc="T per layer/head"
        ),
    ]
    out_dim = c.patch_size * c.patch_size * (c.out_channels or c.in_channels)
    profiles = {}
    for target, r in _ranges(ranges).items():
        tokens = tuple((s // 16) * (2 * s // 16) for s in r.sides)
        profiles[target] = {"batch": r.batch, "img_tokens": tokens, "text_tokens": r.text}
    attrs = {
        "num_layers": c.num_layers,
        "num_single_layers": c.num_single_layers,
        "total_layers": layers,
        "num_attention_heads": heads,
        "attention_head_dim": c.attention_head_dim,
        "num_groups": num_groups,
        "in_channels": c.in_channels,
        "out_dim": out_dim,
        "guidance_embeds": bool(c.guidance_embeds),
    }
    return IOSpec(
        "transformer",
        tuple(inputs),
        (TensorSpec("noise_pred", "float32", ("batch", "img_tokens", out_dim)),),
        profiles,
        {"tokens": "text_tokens+img_tokens"},
        attrs,
    )


def with_adapters(spec: IOSpec, adapters: Sequence[str]) -> IOSpec:
    """The transformer spec with its LoRA adapters as graph branches: one more input
    ``adapter_scales [A]`` (the per-call strength of each adapter, in ``adapters`` order; the
    time gates ``k(t)`` are computed in-graph from ``timestep``) and ``attrs["adapters"]``."""
    if spec.component != "transformer":
        raise ConfigError(f"adapters apply to the transformer only, not {spec.component!r}")
    names = tuple(adapters)
    if not names:
        return spec
    if len(set(names)) != len(names):
        raise ConfigError(f"adapter names {list(names)} repeat; give each adapter its own name")
    scales = TensorSpec(
        "adapter_scales", "float32", (len(names),), "unit", doc=f"strength per adapter: {', '.join(names)}"
    )
    return dataclasses.replace(
        spec, inputs=(*spec.inputs, scales), attrs={**spec.attrs, "adapters": list(names)}
    )


def _vae_facts(config) -> tuple[int, int, int]:
    channels = _get(config, "block_out_channels", (128, 256, 512, 512))
    factor = 2 ** (len(channels) - 1)
    return factor, int(_get(config, "latent_channels", 16)), int(_get(config, "in_channels", 3))


def _latent_profiles(ranges: Ranges, factor: int) -> dict[str, dict[str, tuple[int, int, int]]]:
    out = {}
    for target, r in _ranges(ranges).items():
        out[target] = {
            "batch": r.batch,
            "latent_height": tuple(s // factor for s in r.sides),
            "latent_width": tuple(2 * s // factor for s in r.sides),
        }
    return out


def _vae_attrs(config, factor: int) -> dict[str, Any]:
    return {
        "downsample_factor": factor,
        "scaling_factor": float(_get(config, "scaling_factor", 0.3611)),
        "shift_factor": float(_get(config, "shift_factor", 0.1159) or 0.0),
    }


def vae_encoder_spec(config, ranges: Ranges = None) -> IOSpec:
    """Images in [-1, 1] → normalised latents ``(z - shift) * scale`` (posterior mode)."""
    f, lc, cin = _vae_facts(config)
    return IOSpec(
        "vae_encoder",
        (TensorSpec("images", "float32", ("batch", cin, "height", "width"), "images"),),
        (TensorSpec("latent", "float32", ("batch", lc, "latent_height", "latent_width")),),
        _latent_profiles(ranges, f),
        {"height": f"{f}*latent_height", "width": f"{f}*latent_width"},
        _vae_attrs(config, f),
        notes="latent normalisation is folded into the graph",
    )


def vae_decoder_spec(config, ranges: Ranges = None) -> IOSpec:
    """Normalised latents → images in roughly [-1, 1] (unclamped)."""
    f, lc, _ = _vae_facts(config)
    cout = int(_get(config, "out_channels", 3))
    return IOSpec(
        "vae_decoder",
        (TensorSpec("latent", "float32", ("batch", lc, "latent_height", "latent_width")),),
        (TensorSpec("images", "float32", ("batch", cout, "height", "width")),),
        _latent_profiles(ranges, f),
        {"height": f"{f}*latent_height", "width": f"{f}*latent_width"},
        _vae_attrs(config, f),
        notes="latent de-normalisation is folded into the graph",
    )


def clip_spec(config=None, ranges: Ranges = None) -> IOSpec:
    """CLIP-L text encoder → pooled embedding (FluxPipeline pads to 77 tokens)."""
    hidden = int(_get(config, "hidden_size", 768))
    vocab = int(_get(config, "vocab_size", 49408))
    length = int(_get(config, "max_position_embeddings", 77))
    profiles = {t: {"batch": r.batch} for t, r in _ranges(ranges).items()}
    return IOSpec(
        "clip",
        (TensorSpec("input_ids", "int64", ("batch", length), "tokens", high=vocab),),
        (TensorSpec("pooled_projections", "float32", ("batch", hidden)),),
        profiles,
        attrs={"hidden_size": hidden, "vocab_size": vocab, "max_length": length},
    )


def t5_spec(config=None, ranges: Ranges = None) -> IOSpec:
    """T5 encoder → ``encoder_hidden_states`` (last hidden state)."""
    d_model = int(_get(config, "d_model", 4096))
    vocab = int(_get(config, "vocab_size", 32128))
    profiles = {t: {"batch": r.batch, "text_tokens": r.text} for t, r in _ranges(ranges).items()}
    return IOSpec(
        "t5",
        (TensorSpec("input_ids", "int64", ("batch", "text_tokens"), "tokens", high=vocab),),
        (TensorSpec("encoder_hidden_states", "float32", ("batch", "text_tokens", d_model)),),
        profiles,
        attrs={"d_model": d_model, "vocab_size": vocab},
    )


def reference_encoder_spec(config=None, ranges: Ranges = None) -> IOSpec:
    """The learned reference encoder (:class:`~unidg_rt.models.refenc.ReferenceEncoderConfig` or its
    dict): reference crop ``images [B, 3, S, S]`` in [-1, 1] (``S`` static, the size it was trained
    at; runtimes resize to it) → the text slots ``encoder_hidden_states [B, T, D]`` and
    ``pooled_projections [B, P]`` it fills in reference mode. Defaults = ReferenceEncoderConfig's."""
    size = int(_get(config, "image_size", 96))
    seq_len, dim = int(_get(config, "seq_len", 8)), int(_get(config, "dim", 64))
    pooled, width = int(_get(config, "pooled_dim", 64)), int(_get(config, "width", 32))
    if size % 16:
        raise ConfigError(f"reference encoder image_size={size} must be a multiple of 16 (4 stride-2 convs)")
    profiles = {t: {"batch": r.batch} for t, r in _ranges(ranges).items()}
    return IOSpec(
        "reference_encoder",
        (
            TensorSpec(
                "images", "float32", ("batch", 3, size, size), "images", doc="reference crop in [-1, 1]"
            ),
        ),
        (
            TensorSpec("encoder_hidden_states", "float32", ("batch", seq_len, dim)),
            TensorSpec("pooled_projections", "float32", ("batch", pooled)),
        ),
        profiles,
        attrs={"image_size": size, "seq_len": seq_len, "dim": dim, "pooled_dim": pooled, "width": width},
        notes="runtimes resize the crop to image_size (bilinear, align_corners=False) before the graph",
    )


def image_encoder_spec(config=None, ranges: Ranges = None) -> IOSpec:
    """FLUX Redux image prompt: SigLIP-so400m (384 px, patch 14 → 729 tokens, 1152 wide) + Redux
    projector (1152 → 12288 → 4096). **Spec only**: no exporter is implemented yet."""
    size = int(_get(config, "image_size", 384))
    patch = int(_get(config, "patch_size", 14))
    out_dim = int(_get(config, "out_dim", 4096))
    tokens = (size // patch) ** 2
    profiles = {t: {"batch": r.batch} for t, r in _ranges(ranges).items()}
    return IOSpec(
        "image_encoder",
        (TensorSpec("pixel_values", "float32", ("batch", 3, size, size), "images"),),
        (TensorSpec("image_prompt_embeds", "float32", ("batch", tokens, out_dim)),),
        profiles,
        attrs={"image_size": size, "patch_size": patch, "tokens": tokens, "out_dim": out_dim},
        exportable=False,
        notes="spec only: SigLIP + Redux export is not implemented; cached/zero embeddings are the default",
    )


_BUILDERS = {
    "transformer": transformer_spec,
    "vae_encoder": vae_encoder_spec,
    "vae_decoder": vae_decoder_spec,
    "clip": clip_spec,
    "t5": t5_spec,
    "reference_encoder": reference_encoder_spec,
    "image_encoder": image_encoder_spec,
}


def component_spec(component: str, config=None, ranges: Ranges = None) -> IOSpec:
    """The spec of ``component`` for an architecture config (FluxConfig, VAEConfig or dict,
    a transformers config for clip/t5, a ReferenceEncoderConfig or dict)."""
    if component not in _BUILDERS:
        raise InvalidInputError(f"component={component!r} unknown; choose one of {COMPONENTS}")
    if component == "transformer" and config is None:
        raise InvalidInputError(
            "the transformer spec needs its FluxConfig: component_spec('transformer', config)"
        )
    return _BUILDERS[component](config, ranges)


def sample_inputs(
    component: str,
    config=None,
    dims: Mapping[str, int] | None = None,
    *,
    ranges: Ranges = None,
    point: str = "min",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Small valid feed for ``component`` of ``config`` (see :meth:`IOSpec.sample_inputs`)."""
    return component_spec(component, config, ranges).sample_inputs(dims, point=point, seed=seed)
