"""Self-describing checkpoints (DESIGN §6): one ``.safetensors`` file, config JSON in metadata.

A UniDG checkpoint holds ``transformer.*`` and ``vae.*`` tensors and metadata key ``unidg_rt``
(a :class:`ModelCard`). Also accepted: a diffusers model folder (``transformer/``, ``vae/`` with
``config.json`` + (sharded) safetensors) and a bare diffusers/BFL transformer file with an
explicit config. Models are built on the ``meta`` device and loaded with
``load_state_dict(strict=True, assign=True)`` tensor by tensor from the memory-mapped file, so
peak RAM stays ≈ 1× the weights (plus one tensor when a dtype cast is asked for).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from unidg_rt.artifacts.io import atomic_path
from unidg_rt.errors import ConfigError, WeightsError
from unidg_rt.models.config import FluxConfig, ModelCard
from unidg_rt.models.convert import bfl_to_diffusers, is_bfl_layout
from unidg_rt.models.mmdit import FluxTransformer

logger = logging.getLogger(__name__)
METADATA_KEY = "unidg_rt"
_UNREAD = object()  #: ``card=`` default: read the file's card here


# --------------------------------------------------------------------------- reading
def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    index = list(path.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(
            f"no .safetensors file in {path}: point to a UniDG checkpoint or a diffusers model folder"
        )
    return files


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.exists():
        raise WeightsError(
            f"weights file {path} does not exist: check the path (or omit it for the default model)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a readable .safetensors file ({exc}); re-download or re-export it"
        ) from exc


def read_card(path: str | Path) -> ModelCard | None:
    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        return None
    try:
        return ModelCard.from_json(meta[METADATA_KEY])
    except ConfigError as exc:
        raise WeightsError(f"{path}: {exc}") from exc


def read_tensors(
    files: list[Path], prefix: str = "", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Tensors whose key starts with ``prefix`` (stripped), memory-mapped, cast per tensor."""
    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        t = f.get_tensor(key)
                        out[key[len(prefix) :]] = (
                            t.to(dtype) if dtype is not None and t.is_floating_point() else t
                        )
        except (SafetensorError, OSError) as exc:
            raise WeightsError(
                f"{file} is corrupt or truncated ({exc}); re-download or re-export it"
            ) from exc
    return out


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True, assign=True)`` with an error that lists key differences."""
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{what}: weights do not match the architecture — {len(missing)} missing keys "
            f"{missing[:8]}{' …' if len(missing) > 8 else ''}, {len(unexpected)} unexpected keys "
            f"{unexpected[:8]}{' …' if len(unexpected) > 8 else ''}. Check that the config matches the checkpoint "
            "(in_channels 384 for Fill, layer counts) or convert the key layout."
        )
    shapes = model.state_dict()
    bad = [(k, tuple(sd[k].shape), tuple(shapes[k].shape)) for k in sd if sd[k].shape != shapes[k].shape]
    if bad:
        raise WeightsError(
            f"{what}: shape mismatch for {len(bad)} tensors, e.g. {bad[:4]} (file vs architecture)"
        )
    model.load_state_dict(sd, strict=True, assign=True)


# --------------------------------------------------------------------------- transformer
def build_transformer(config: FluxConfig, sd: dict[str, torch.Tensor], device=None) -> FluxTransformer:
    if is_bfl_layout(sd.keys()):
        logger.info("converting black-forest-labs key layout to diffusers layout")
        sd = bfl_to_diffusers(sd, config)
    with torch.device("meta"):
        model = FluxTransformer(config)
    load_strict(model, sd, "transformer")
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


def load_transformer(
    path: str | Path,
    config: FluxConfig | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    card=_UNREAD,
) -> FluxTransformer:
    """From a UniDG checkpoint, a diffusers ``transformer/`` folder, or a bare file + ``config``.
    ``card``: the file's :class:`ModelCard` (or ``None``) when the caller has read it already."""
    path = Path(path)
    if path.is_dir() and (path / "transformer").is_dir():
        path = path / "transformer"
    if path.is_dir():
        cfg_file = path / "config.json"
        if config is None and cfg_file.exists():
            config = FluxConfig.from_dict(json.loads(cfg_file.read_text()))
        files, prefix = _safetensors_files(path), ""
    else:
        card = read_card(path) if card is _UNREAD else card
        files = [path]
        prefix = "transformer." if card is not None else ""
        config = config or (card.transformer if card else None)
    if config is None:
        raise WeightsError(
            f"{path} carries no architecture config: pass config=FluxConfig.flux_fill() (or the matching preset)"
        )
    return build_transformer(config, read_tensors(files, prefix, dtype), device)


# --------------------------------------------------------------------------- VAE
def load_vae(path: str | Path, config: dict[str, Any] | None = None, dtype=None, device=None, card=_UNREAD):
    from unidg_rt.models.vae import AutoencoderKLFlux, VAEConfig

    path = Path(path)
    if path.is_dir() and (path / "vae").is_dir():
        path = path / "vae"
    if path.is_dir():
        cfg_file = path / "config.json"
        if config is None and cfg_file.exists():
            config = json.loads(cfg_file.read_text())
        files, prefix = _safetensors_files(path), ""
    else:
        card = read_card(path) if card is _UNREAD else card
        files, prefix = [path], "vae." if card is not None else ""
        config = config or (card.vae if card else None)
    vcfg = VAEConfig.from_diffusers_config(config) if config else VAEConfig.flux()
    sd = read_tensors(files, prefix, dtype)
    if not sd:
        raise WeightsError(f"{path} holds no VAE weights (expected keys under 'vae.')")
    model = AutoencoderKLFlux.from_state_dict(sd, vcfg).requires_grad_(False)
    return model.to(device) if device is not None else model


# --------------------------------------------------------------------------- writing
def save_checkpoint(
    path: str | Path,
    transformer: FluxTransformer,
    vae: torch.nn.Module | None = None,
    defaults: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a self-describing UniDG checkpoint (config JSON in metadata key ``unidg_rt``)."""
    path = Path(path)
    tensors = {}
    for prefix, module in (("transformer.", transformer), ("vae.", vae)):
        if module is None:
            continue
        for k, v in module.state_dict().items():
            v = v.detach().to("cpu")
            tensors[prefix + k] = (
                v.to(dtype) if dtype is not None and v.is_floating_point() else v
            ).contiguous()
    vae_cfg = vae.config.to_dict() if vae is not None and hasattr(vae, "config") else None
    card = ModelCard(transformer=transformer.config, vae=vae_cfg, defaults=defaults or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: card.to_json()})
    return path
