"""Torch backend: reference models on CPU or CUDA (eager; fast paths plug in per module)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unidg_rt.artifacts.assets import default_model_path
from unidg_rt.artifacts.card import Card, Defaults, existing
from unidg_rt.errors import ConfigError, InvalidInputError, WeightsError
from unidg_rt.models.config import pipeline_facts
from unidg_rt.models.mmdit import FluxTransformer

logger = logging.getLogger(__name__)

TRANSFORMER_INPUTS = (
    "hidden_states",
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
    "img_ids",
    "txt_ids",
    "guidance",
    "token_groups",
    "group_bias",
)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} unknown; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


class TorchTransformerRunner:
    input_names = TRANSFORMER_INPUTS

    def __init__(self, model: FluxTransformer):
        self.model = model

    @torch.inference_mode()
    def infer(self, feed: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: feed.get(k) for k in TRANSFORMER_INPUTS}
        return {"noise_pred": self.model(**kwargs)}


class TorchVAEEncoderRunner:
    input_names = ("images",)

    def __init__(self, vae):
        self.vae = vae

    @torch.inference_mode()
    def infer(self, feed):
        return {"latent": self.vae.normalize_latents(self.vae.encode(feed["images"]))}


class TorchVAEDecoderRunner:
    input_names = ("latent",)

    def __init__(self, vae):
        self.vae = vae

    @torch.inference_mode()
    def infer(self, feed):
        return {"images": self.vae.decode(self.vae.denormalize_latents(feed["latent"]))}


class TorchBackend:
    """Holds the torch transformer + VAE on one device/dtype (and the checkpoint's reference
    encoder, ``None`` without one)."""

    name = "torch"
    reference_encoder = None
    reference_encoder_missing = None  #: a checkpoint's reference encoder is always loaded with it

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        device: str = "cpu",
        dtype=None,
        attention_form=None,
        config=None,
        vae: str | Path | None = None,
    ) -> tuple[TorchBackend, Card]:
        """Load a UniDG checkpoint (``None`` = the embedded default model; a file, or a folder
        holding ``model.safetensors`` as ``unidg-rt train`` writes) or a diffusers folder, with the
        adapters and reference encoder its card names; read its card once. A bare transformer file
        (e.g. BFL's ``flux1-fill-dev.safetensors``) needs ``config`` (a ``FluxConfig`` or preset
        name such as ``"flux-fill"``) and ``vae`` (a VAE folder/file)."""
        from unidg_rt.models.loading import load_transformer, load_vae, read_card

        path = Path(path) if path is not None else default_model_path()
        card = read_card(path) if path.is_file() else None
        if card is None and (path / "model.safetensors").is_file():  # a unidg-rt folder (``train --out``)
            card = read_card(path / "model.safetensors")
            path = path / "model.safetensors" if card is not None else path
        if isinstance(config, str):
            from unidg_rt.models.presets import PRESETS

            if config not in PRESETS:
                raise ConfigError(
                    f"config={config!r} is not a preset; use one of {sorted(PRESETS)} or a FluxConfig"
                )
            config = PRESETS[config][0]()
        if card is None and path.is_file() and (config is None or vae is None):
            raise WeightsError(
                f"{path} has no UniDG model card (a bare transformer file): pass config= (a FluxConfig or preset "
                "name, e.g. config='flux-fill') and vae= (a VAE folder, e.g. 'FLUX.1-Fill-dev/vae') to from_pretrained"
            )
        transformer = load_transformer(path, config=config, card=card)
        vae_model = load_vae(path, card=card) if vae is None else load_vae(Path(vae))
        backend = cls(transformer, vae_model, device=device, dtype=dtype, attention_form=attention_form)
        defaults = Defaults.from_dict(card.defaults if card else None)
        base = path if path.is_dir() else path.parent
        for name, spec in defaults.adapters.items():  # adapters shipped beside the weights
            backend.adapters.load_lora(base / spec["file"], name, strength=float(spec.get("strength", 1.0)))
        if defaults.reference_encoder:
            from unidg_rt.models.refenc import TorchReferenceEncoder

            backend.reference_encoder = TorchReferenceEncoder.from_file(
                base / defaults.reference_encoder["file"], device=device
            )
        facts = pipeline_facts(transformer.config, vae_model.config.downsample_factor, defaults)
        embeddings = existing(base / "embeddings.safetensors")
        return backend, Card(facts, defaults, base=base, embeddings=embeddings)

    def __init__(self, transformer: FluxTransformer, vae, device="cpu", dtype=None, attention_form=None):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.transformer_model = transformer.to(self.device, self.dtype)
        # The VAE decodes in fp32 on CPU; on GPU bf16 is fine for FLUX's VAE.
        self.vae_model = vae.to(self.device, self.dtype)
        if attention_form is not None:
            self.transformer_model.set_attention_form(attention_form)
        self.transformer = TorchTransformerRunner(self.transformer_model)
        self.vae_encoder = TorchVAEEncoderRunner(self.vae_model)
        self.vae_decoder = TorchVAEDecoderRunner(self.vae_model)
        self.info = {
            "backend": "torch",
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # ------------------------------------------------------------------ adapters (LoRA)
    @property
    def adapters(self):
        """The :class:`~unidg_rt.models.adapters.AdapterManager` of the transformer (lazy)."""
        if getattr(self, "_adapters", None) is None:
            from unidg_rt.models.adapters import AdapterManager

            self._adapters = AdapterManager(self.transformer_model)
        return self._adapters

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(self.adapters.adapters)

    def set_adapter_scales(self, scales: dict[str, float]) -> None:
        unknown = [n for n in scales if n not in self.adapters.adapters]
        if unknown:
            raise InvalidInputError(
                f"adapter_scales names {unknown}, which are not loaded (loaded: {list(self.adapters.adapters)}); "
                "load_lora_weights(path, adapter_name=...) first"
            )
        self.adapters.set_scales(scales)

    def asarray(self, x: np.ndarray, dtype: str | None = None):
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if dtype == "int":
            return t.long()
        if dtype == "float32":
            return t.float()
        return t.to(self.dtype) if t.is_floating_point() else t

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
