"""Architecture configs: frozen dataclasses stored as JSON in safetensors metadata (DESIGN §6).

Field names follow diffusers' ``FluxTransformer2DModel`` config so a diffusers
``transformer/config.json`` maps 1:1 (unknown diffusers keys such as ``_class_name`` are ignored).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from unidg_rt.artifacts.card import Defaults, PipelineFacts
from unidg_rt.errors import ConfigError


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required field
        raise ConfigError(f"invalid {cls.__name__} {data!r}: {exc}") from exc


@dataclass(frozen=True)
class FluxConfig:
    """The MM-DiT (FLUX.1 family). Defaults are FLUX.1-dev; :meth:`flux_fill` is FLUX.1-Fill."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ConfigError(
                f"axes_dims_rope {self.axes_dims_rope} must sum to attention_head_dim={self.attention_head_dim}"
            )
        if self.in_channels not in (64, 384) and self.in_channels % 4:
            raise ConfigError(f"in_channels={self.in_channels} must be a multiple of 4 (64 plain, 384 Fill)")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def out_dim(self) -> int:
        return self.patch_size * self.patch_size * (self.out_channels or self.in_channels)

    @property
    def total_layers(self) -> int:
        return self.num_layers + self.num_single_layers

    @property
    def is_fill(self) -> bool:
        """Fill models take noise (64) + masked-image latents (64) + mask (256) per token."""
        return self.in_channels == 6 * self.out_dim

    @classmethod
    def flux_dev(cls) -> FluxConfig:
        return cls(guidance_embeds=True)

    @classmethod
    def flux_fill(cls) -> FluxConfig:
        return cls(in_channels=384, out_channels=64, guidance_embeds=True)

    @classmethod
    def tiny(cls, fill: bool = True, guidance: bool = True, **overrides) -> FluxConfig:
        base = dict(
            in_channels=384 if fill else 64,
            out_channels=64 if fill else None,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            guidance_embeds=guidance,
            axes_dims_rope=(4, 6, 6),
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["axes_dims_rope"] = list(self.axes_dims_rope)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FluxConfig:
        return _from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class ModelCard:
    """What a UniDG checkpoint file carries besides weights (metadata key ``unidg_rt``)."""

    transformer: FluxConfig
    vae: dict[str, Any] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    format: str = "unidg-rt/1"

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": self.format,
                "transformer": self.transformer.to_dict(),
                "vae": self.vae,
                "defaults": self.defaults,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"checkpoint metadata 'unidg_rt' is not valid JSON: {exc}") from exc
        if "transformer" not in data:
            raise ConfigError("checkpoint metadata 'unidg_rt' has no 'transformer' config")
        return cls(
            transformer=FluxConfig.from_dict(data["transformer"]),
            vae=data.get("vae"),
            defaults=data.get("defaults") or {},
            format=data.get("format", "unidg-rt/1"),
        )


def pipeline_facts(config: FluxConfig, vae_scale_factor: int, defaults: Defaults) -> PipelineFacts:
    """The :class:`~unidg_rt.artifacts.card.PipelineFacts` of a checkpoint: its transformer config,
    its VAE's downsampling factor and its card's text length (the torch backend and the exported
    manifest both take them from here)."""
    return PipelineFacts(
        text_seq_len=defaults.text_seq_len,
        joint_attention_dim=config.joint_attention_dim,
        pooled_projection_dim=config.pooled_projection_dim,
        latent_channels=config.out_dim // 4,
        vae_scale_factor=int(vae_scale_factor),
        guidance_embeds=bool(config.guidance_embeds),
    )
