"""The model card (DESIGN §2 floor 0, §6): typed pipeline facts and defaults, one record, read once.

Every artifact carries the same two records: a checkpoint in its safetensors metadata (key
``unidg_rt``: transformer/VAE config + ``defaults``), an exported ONNX folder in its manifest
(``pipeline`` + ``defaults``), a plan in its sidecar (``metadata``, copied from the manifest at
build time). Each backend's ``open(path)`` reads them once into a :class:`Card`;
:class:`~unidg_rt.runtime.pipeline.UniDGPipeline` and the producers (export, build, train) read
the typed fields, never the raw dict. json only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unidg_rt.errors import ConfigError, WeightsError

#: used when neither the call nor the card says otherwise (FLUX.1-Fill-like)
FALLBACK_DEFAULTS: dict[str, Any] = {
    "height": 512,
    "width": 512,
    "num_inference_steps": 28,
    "guidance_scale": 30.0,
    "group_bias_lambda": None,
    "feather": 8,
}
DEFAULT_TEXT_SEQ_LEN = 512  #: T5 slots when the card does not say (FLUX.1)
PASTE_MODES = ("replace", "residual")  #: paste-back of the generated target crop
CROP_KEYS = {"context": float, "max_margin": float, "min_side": int}  #: the adaptive crop rule's keywords


@dataclass(frozen=True)
class PipelineFacts:
    """What the pipeline must know about the transformer and the VAE to feed them."""

    text_seq_len: int
    joint_attention_dim: int
    pooled_projection_dim: int
    latent_channels: int = 16
    vae_scale_factor: int = 8
    guidance_embeds: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str, fix: str) -> PipelineFacts:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise WeightsError(f"{where} lacks the pipeline facts {missing}: {fix}")
        try:
            return cls(
                text_seq_len=int(data["text_seq_len"]),
                joint_attention_dim=int(data["joint_attention_dim"]),
                pooled_projection_dim=int(data["pooled_projection_dim"]),
                latent_channels=int(data["latent_channels"]),
                vae_scale_factor=int(data["vae_scale_factor"]),
                guidance_embeds=bool(data["guidance_embeds"]),
            )
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{where}: pipeline facts are malformed ({exc}): {fix}") from exc


@dataclass(frozen=True)
class Defaults:
    """The card's ``defaults``: typed where the runtime reads them, the stored dict in :attr:`raw`
    (written back unchanged by export and build). Unset keys take :data:`FALLBACK_DEFAULTS`."""

    height: int = FALLBACK_DEFAULTS["height"]
    width: int = FALLBACK_DEFAULTS["width"]
    num_inference_steps: int = FALLBACK_DEFAULTS["num_inference_steps"]
    guidance_scale: float = FALLBACK_DEFAULTS["guidance_scale"]
    group_bias_lambda: float | None = None
    feather: int = FALLBACK_DEFAULTS["feather"]
    paste: str = "replace"
    crop: Mapping[str, float | int] = field(default_factory=dict)  #: adaptive crop rule keywords
    segments: tuple[Mapping[str, Any], ...] | None = None  #: hierarchical schedule (data)
    adapters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  #: name -> {file, strength}
    reference_encoder: Mapping[str, Any] | None = None  #: {file, cutout?, ...} of the learned encoder
    text_seq_len: int = DEFAULT_TEXT_SEQ_LEN
    description: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Defaults:
        d = dict(data or {})
        crop = dict(d.get("crop") or {})
        unknown = set(crop) - set(CROP_KEYS)
        if unknown:
            raise ConfigError(
                f"model card defaults['crop'] has unknown keys {sorted(unknown)}; use {sorted(CROP_KEYS)}"
            )
        paste = d.get("paste", "replace")
        if paste not in PASTE_MODES:
            raise ConfigError(f"model card defaults['paste']={paste!r}; use one of {PASTE_MODES}")
        merged = {**FALLBACK_DEFAULTS, **d}
        lam = merged["group_bias_lambda"]
        return cls(
            height=int(merged["height"]),
            width=int(merged["width"]),
            num_inference_steps=int(merged["num_inference_steps"]),
            guidance_scale=merged["guidance_scale"],
            group_bias_lambda=None if lam is None else float(lam),
            feather=int(merged["feather"]),
            paste=paste,
            crop={k: CROP_KEYS[k](v) for k, v in crop.items()},
            segments=tuple(d["segments"]) if d.get("segments") else None,
            adapters=dict(d.get("adapters") or {}),
            reference_encoder=dict(d["reference_encoder"]) if d.get("reference_encoder") else None,
            text_seq_len=int(d.get("text_seq_len") or DEFAULT_TEXT_SEQ_LEN),
            description=str(d.get("description", "")),
            raw=d,
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form (what the card holds, without the fallbacks)."""
        return dict(self.raw)

    def with_fallbacks(self) -> dict[str, Any]:
        """The stored dict over :data:`FALLBACK_DEFAULTS` (``UniDGPipeline.defaults``)."""
        return {**FALLBACK_DEFAULTS, **self.raw}


@dataclass(frozen=True)
class Card:
    """One artifact's card: :class:`PipelineFacts`, :class:`Defaults`, and where the files it names
    live (``base``: adapters, reference encoder; ``embeddings``: the category cache it ships)."""

    facts: PipelineFacts
    defaults: Defaults = field(default_factory=Defaults)
    base: Path | None = None
    embeddings: Path | None = None

    def with_text_seq_len(self, text_seq_len: int | None) -> Card:
        """This card with the text length overridden (``None``: unchanged)."""
        if text_seq_len is None:
            return self
        return dataclasses.replace(
            self, facts=dataclasses.replace(self.facts, text_seq_len=int(text_seq_len))
        )


def existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def card_from_manifest(manifest: Mapping[str, Any], folder: Path) -> Card:
    """The card of an exported ONNX folder (its ``unidg_onnx.json``)."""
    fix = "re-run `unidg-rt export` (it records them)"
    facts = PipelineFacts.from_dict(manifest.get("pipeline") or {}, f"{folder}/unidg_onnx.json", fix)
    emb = manifest.get("embeddings")
    return Card(
        facts=facts,
        defaults=Defaults.from_dict(manifest.get("defaults")),
        base=folder,
        embeddings=existing(folder / emb) if emb else None,
    )


def card_from_plan(metadata: Mapping[str, Any], folder: Path, plan_name: str) -> Card:
    """The card of a plan folder: the transformer plan's sidecar ``metadata`` (copied from the
    ONNX manifest by ``unidg-rt build``)."""
    fix = "rebuild it with `unidg-rt build ONNX_DIR` from an exported folder (its manifest has them)"
    facts = PipelineFacts.from_dict(metadata, f"the sidecar of {folder / plan_name}", fix)
    return Card(
        facts=facts,
        defaults=Defaults.from_dict(metadata.get("defaults")),
        base=folder,
        embeddings=existing(folder / "embeddings.safetensors"),
    )
