"""Building blocks of the FLUX VAE (:mod:`unidg_rt.models.vae`), diffusers' module and key names.

``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``, the single-head mid-block ``AttentionBlock``,
``MidBlock2D`` and the ``DownEncoderBlock2D``/``UpDecoderBlock2D`` stacks; shapes ``[B, C, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm as the LDM VAE builds it: eps 1e-6, affine."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock2D(nn.Module):
    """norm → SiLU → conv → norm → SiLU → conv, plus a (1×1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nn.Module):
    """Stride-2 3×3 conv after an asymmetric (right/bottom) zero pad, as in the LDM VAE."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)  # [B, C, H+1, W+1]
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample2D(nn.Module):
    """Nearest-neighbour 2× then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
        return self.conv(x)


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention with GroupNorm and a residual (diffusers ``Attention``
    built with ``_from_deprecated_attn_block=True``, head dim = channels)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # a list so the key is `to_out.0` like diffusers (index 1 there is a parameter-free Dropout)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hs = self.group_norm(x)
        hs = hs.view(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        q = self.to_q(hs)[:, None]  # [B, 1, HW, C]
        k = self.to_k(hs)[:, None]  # [B, 1, HW, C]
        v = self.to_v(hs)[:, None]  # [B, 1, HW, C]
        hs = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        hs = self.to_out[0](hs[:, 0])  # [B, HW, C]
        hs = hs.transpose(1, 2).reshape(b, c, h, w)  # [B, C, H, W]
        return x + hs


class MidBlock2D(nn.Module):
    """resnet → (attention) → resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups)]) if add_attention else None
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
