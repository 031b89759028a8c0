"""I/O specs per component (DESIGN §3): the single source for export dynamic axes, engine
profiles, buffer allocation and tests.

Each builder turns an architecture config and its generation ranges into an :class:`IOSpec`
(the record, its dims and sample feeds are in :mod:`unidg_rt.export.iospec`; every name of it is
importable from here too).

Components: ``transformer``, ``vae_encoder``, ``vae_decoder``, ``clip``, ``t5``, the optional
``reference_encoder`` (the checkpoint's learned reference-crop CNN, :mod:`unidg_rt.models.refenc`)
and ``image_encoder`` (SigLIP vision tower + Redux projector — **spec only**, no exporter yet).

numpy only: no torch, no onnx.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.export.iospec import POINTS, VALUE_KINDS, GenerationRange, IOSpec, TensorSpec, eval_dim
from unidg_rt.groups import NUM_GROUPS

__all__ = [
    "COMPONENTS",
    "POINTS",
    "VALUE_KINDS",
    "GenerationRange",
    "IOSpec",
    "Ranges",
    "TensorSpec",
    "clip_spec",
    "component_spec",
    "eval_dim",
    "image_encoder_spec",
    "reference_encoder_spec",
    "sample_inputs",
    "t5_spec",
    "transformer_spec",
    "vae_decoder_spec",
    "vae_encoder_spec",
    "with_adapters",
]

COMPONENTS = ("transformer", "vae_encoder", "vae_decoder", "clip", "t5", "reference_encoder", "image_encoder")


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
