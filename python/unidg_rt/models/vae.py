"""The FLUX VAE: a plain-torch ``AutoencoderKL`` whose state-dict keys equal diffusers'.

A diffusers FLUX ``vae/diffusion_pytorch_model.safetensors`` loads unchanged with
``strict=True``; SD-style VAEs (with ``quant_conv``/``post_quant_conv``) load too. Only the
parts FLUX uses are implemented: ``DownEncoderBlock2D``/``UpDecoderBlock2D`` blocks, SiLU,
GroupNorm, a single-head mid-block self-attention. No tiling or slicing: the runtime decodes
one diptych at a time and export wants one static graph.

Latent convention (FluxPipeline): the DiT sees ``(z - shift_factor) * scaling_factor``
(:meth:`AutoencoderKLFlux.normalize_latents`), the decoder gets ``z / scaling_factor +
shift_factor`` (:meth:`AutoencoderKLFlux.denormalize_latents`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unidg_rt.errors import ConfigError, InvalidInputError, WeightsError
from unidg_rt.models.vae_blocks import (
    AttentionBlock,
    DownEncoderBlock2D,
    Downsample2D,
    MidBlock2D,
    ResnetBlock2D,
    UpDecoderBlock2D,
    Upsample2D,
    group_norm,
)

logger = logging.getLogger(__name__)

#: the building blocks live in vae_blocks; importing them from here keeps working
__all__ = [
    "AttentionBlock",
    "AutoencoderKLFlux",
    "Decoder",
    "DownEncoderBlock2D",
    "Downsample2D",
    "Encoder",
    "MidBlock2D",
    "ResnetBlock2D",
    "UpDecoderBlock2D",
    "Upsample2D",
    "VAEConfig",
    "convert_legacy_vae_keys",
]

#: diffusers config keys that do not change the architecture or the weights we load.
_IGNORED_DIFFUSERS_KEYS = {"sample_size", "force_upcast", "latents_mean", "latents_std"}
_ENCODER_BLOCK = "DownEncoderBlock2D"
_DECODER_BLOCK = "UpDecoderBlock2D"


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of an ``AutoencoderKL``. Defaults are the FLUX.1 VAE."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    norm_num_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    mid_block_add_attention: bool = True

    def __post_init__(self):
        if not self.block_out_channels:
            raise ConfigError(
                "block_out_channels must list at least one block width, e.g. (128, 256, 512, 512)"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"block_out_channels {self.block_out_channels} must all be divisible by "
                f"norm_num_groups={self.norm_num_groups} (GroupNorm); offending: {bad}"
            )
        if self.layers_per_block < 1:
            raise ConfigError(f"layers_per_block={self.layers_per_block} must be >= 1")
        if self.scaling_factor == 0:
            raise ConfigError("scaling_factor must be non-zero (FLUX: 0.3611, SD: 0.18215)")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent along each side (8 for FLUX)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def flux(cls) -> VAEConfig:
        return cls()

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> VAEConfig:
        """Map a diffusers ``vae/config.json`` dict (or our :meth:`to_dict`) onto a config."""
        for key, expected in (("down_block_types", _ENCODER_BLOCK), ("up_block_types", _DECODER_BLOCK)):
            types = config.get(key)
            if types is not None and any(t != expected for t in types):
                raise ConfigError(
                    f"{key}={list(types)} is not supported: only {expected} blocks (FLUX/SD VAEs)"
                )
        if config.get("act_fn", "silu") not in ("silu", "swish"):
            raise ConfigError(f"act_fn={config['act_fn']!r} is not supported: only 'silu' (FLUX/SD VAEs)")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in config.items():
            if key in names:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            elif not key.startswith("_") and key not in _IGNORED_DIFFUSERS_KEYS | {
                "down_block_types",
                "up_block_types",
                "act_fn",
            }:
                logger.warning("VAE config key %r is not used by AutoencoderKLFlux; ignored", key)
        if kwargs.get("shift_factor", 0.0) is None:  # SD VAEs have no shift
            kwargs["shift_factor"] = 0.0
        n = len(kwargs.get("block_out_channels", cls.block_out_channels))
        for key in ("down_block_types", "up_block_types"):
            if config.get(key) is not None and len(config[key]) != n:
                raise ConfigError(f"{key} has {len(config[key])} entries but block_out_channels has {n}")
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid VAE config {config!r}: {exc}") from exc

    from_dict = from_diffusers_config

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    def to_diffusers_config(self) -> dict[str, Any]:
        """A diffusers ``AutoencoderKL`` config dict (``AutoencoderKL.from_config`` accepts it)."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            **self.to_dict(),
            "down_block_types": [_ENCODER_BLOCK] * n,
            "up_block_types": [_DECODER_BLOCK] * n,
            "act_fn": "silu",
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class Encoder(nn.Module):
    """Image ``[B, C_in, H, W]`` → moments ``[B, 2·latent_channels, H/f, W/f]`` (mean ‖ logvar)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                DownEncoderBlock2D(
                    ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, add_downsample=i < len(ch) - 1
                )
                for i in range(len(ch))
            ]
        )
        self.mid_block = MidBlock2D(ch[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = group_norm(ch[-1], groups)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents ``[B, latent_channels, h, w]`` → image ``[B, C_out, h·f, w·f]``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        rev = tuple(reversed(ch))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], kernel_size=3, stride=1, padding=1)
        # up_blocks registered before mid_block: same state-dict key order as diffusers
        self.up_blocks = nn.ModuleList(
            [
                UpDecoderBlock2D(
                    rev[max(i - 1, 0)],
                    rev[i],
                    cfg.layers_per_block + 1,
                    groups,
                    add_upsample=i < len(rev) - 1,
                )
                for i in range(len(rev))
            ]
        )
        self.mid_block = MidBlock2D(rev[0], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = group_norm(ch[0], groups)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def convert_legacy_vae_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the legacy VAE attention keys (``query/key/value/proj_attn``, diffusers < 0.14
    checkpoints) to ``to_q/to_k/to_v/to_out.0``, and squeeze 1×1-conv-shaped ``[C, C, 1, 1]``
    attention weights to linear ``[C, C]``. Other keys pass through; returns a new dict."""
    renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        parts = name.split(".")
        if ".attentions." in name and len(parts) >= 2 and parts[-2] in renames:
            name = ".".join([*parts[:-2], renames[parts[-2]], parts[-1]])
        is_attn_linear = ".attentions." in name and any(
            f".{n}.weight" in name for n in ("to_q", "to_k", "to_v", "to_out.0")
        )
        if is_attn_linear and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # [C, C, 1, 1] -> [C, C]
        out[name] = tensor
    return out


class AutoencoderKLFlux(nn.Module):
    """``AutoencoderKL`` (diffusers key layout) with FLUX's latent normalisation helpers."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig.flux()
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        lc = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * lc, 2 * lc, kernel_size=1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lc, lc, kernel_size=1) if cfg.use_post_quant_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- encode / decode ---------------------------------------------------------------------
    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` in [-1, 1] → posterior moments ``[B, 2·C, H/8, W/8]`` (mean ‖ logvar)."""
        f = self.config.downsample_factor
        if x.ndim != 4 or x.shape[-2] % f or x.shape[-1] % f:
            raise InvalidInputError(
                f"x must be [B, {self.config.in_channels}, H, W] with H, W multiples of {f}; got {tuple(x.shape)}"
            )
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raw (not normalised) latents ``[B, C, H/8, W/8]``: the posterior mode, or a draw from
        it with ``sample=True`` (same noise as diffusers' ``DiagonalGaussianDistribution.sample``)."""
        moments = self.encode_moments(x)
        mean, logvar = torch.chunk(moments, 2, dim=1)  # [B, C, h, w] each
        if not sample:
            return mean
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        # like diffusers.randn_tensor: a CPU generator draws on CPU, then moves to the device
        rand_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=rand_device, dtype=mean.dtype)
        return mean + std * noise.to(mean.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[B, C, h, w]`` → image ``[B, 3, 8h, 8w]`` (roughly [-1, 1], unclamped)."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise InvalidInputError(
                f"z must be [B, {self.config.latent_channels}, h, w]; got {tuple(z.shape)}"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mode (diffusers ``AutoencoderKL.forward`` default)."""
        return self.decode(self.encode(x))

    # -- FLUX latent normalisation -----------------------------------------------------------
    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents → DiT latents: ``(z - shift) * scale``."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """DiT latents → VAE latents: ``z / scale + shift``."""
        return z / self.config.scaling_factor + self.config.shift_factor

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        config: VAEConfig | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> AutoencoderKLFlux:
        """Build on ``meta`` and load ``strict=True, assign=True`` (legacy attention keys accepted)."""
        with torch.device("meta"):
            model = cls(config)
        sd = convert_legacy_vae_keys(state_dict)
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - sd.keys()), sorted(sd.keys() - expected)
        if missing or unexpected:
            raise WeightsError(
                f"VAE weights do not match {model.config}: missing keys {missing[:20]}"
                f"{' …' if len(missing) > 20 else ''} ({len(missing)} total), unexpected keys {unexpected[:20]}"
                f"{' …' if len(unexpected) > 20 else ''} ({len(unexpected)} total). Check use_quant_conv / "
                "use_post_quant_conv / block_out_channels / layers_per_block against the checkpoint's config.json."
            )
        sd = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in sd.items()}
        try:
            model.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as exc:  # shape mismatch
            raise WeightsError(f"VAE weights do not match {model.config}: {exc}") from exc
        return model.eval()

    @classmethod
    def from_diffusers_dir(
        cls, path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
    ) -> AutoencoderKLFlux:
        """Load a diffusers ``vae/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
        from safetensors.torch import load_file

        path = Path(path)
        config_file, weights_file = path / "config.json", path / "diffusion_pytorch_model.safetensors"
        for f in (config_file, weights_file):
            if not f.is_file():
                raise WeightsError(
                    f"{f} not found: a diffusers VAE folder needs config.json and {weights_file.name}"
                )
        config = VAEConfig.from_diffusers_config(json.loads(config_file.read_text()))
        return cls.from_state_dict(load_file(str(weights_file)), config, dtype=dtype, device=device)
