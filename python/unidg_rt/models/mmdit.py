"""The FLUX MM-DiT (``FluxTransformer2DModel``-exact) with group-bias attention.

``forward`` uses diffusers' argument names (DESIGN §3) plus ``token_groups`` [B, N_txt+N_img]
(or [N]) and ``group_bias`` ([G,G], [H,G,G] or per layer [L,H|1,G,G], L = double + single
blocks). Returns ``noise_pred`` [B, N_img, out_dim] as a plain tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from unidg_rt.errors import ConfigError
from unidg_rt.models.attention import ATTENTION_FORMS
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.layers import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    FeedForward,
    FluxAttention,
    TimeTextEmbed,
    rope_frequencies,
)


class FluxTransformerBlock(nn.Module):
    """Double-stream block: separate weights for image and text streams, joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = FluxAttention(dim, heads, head_dim, context=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim)

    def forward(self, x, ctx, temb, rope, token_groups=None, group_bias=None):
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(ctx, temb)
        attn_x, attn_c = self.attn(nx, nc, rope, token_groups, group_bias)

        x = x + gate_msa[:, None] * attn_x
        nx = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        x = x + gate_mlp[:, None] * self.ff(nx)

        ctx = ctx + c_gate_msa[:, None] * attn_c
        nc = self.norm2_context(ctx) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        ctx = ctx + c_gate_mlp[:, None] * self.ff_context(nc)
        if ctx.dtype == torch.float16:
            ctx = ctx.clip(-65504, 65504)
        return ctx, x


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block: attention and MLP in parallel on the joint sequence."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = FluxAttention(dim, heads, head_dim, context=False)

    def forward(self, x, ctx, temb, rope, token_groups=None, group_bias=None):
        n_txt = ctx.shape[1]
        h = torch.cat([ctx, x], dim=1)  # [B, N_txt + N_img, C]
        nh, gate = self.norm(h, temb)
        mlp = nn.functional.gelu(self.proj_mlp(nh), approximate="tanh")
        attn = self.attn(nh, None, rope, token_groups, group_bias)
        h = h + gate[:, None] * self.proj_out(torch.cat([attn, mlp], dim=2))
        if h.dtype == torch.float16:
            h = h.clip(-65504, 65504)
        return h[:, :n_txt], h[:, n_txt:]


class FluxTransformer(nn.Module):
    """FLUX.1 MM-DiT; state-dict keys are diffusers' ``FluxTransformer2DModel`` keys."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        self.config = config
        dim, heads, hd = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        self.time_text_embed = TimeTextEmbed(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(config.in_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(dim, heads, hd) for _ in range(config.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                FluxSingleTransformerBlock(dim, heads, hd, config.mlp_ratio)
                for _ in range(config.num_single_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim)
        self.proj_out = nn.Linear(dim, config.out_dim)

    # ----------------------------------------------------------------- configuration
    def set_attention_form(self, form: str) -> None:
        """Run every attention layer through torch form ``form`` (``vocab.TORCH_FORMS``; looked up
        in :mod:`unidg_rt.models.attention`'s registry). ``attention_form(name)`` overrides it
        for the calls inside its block (the exporter's graph forms)."""
        if form not in ATTENTION_FORMS:
            raise ConfigError(f"form={form!r}: unknown torch attention form; choose one of {ATTENTION_FORMS}")
        for m in self.modules():
            if isinstance(m, FluxAttention):
                m.form = form

    def set_fused_ops(self, enabled: bool = True) -> None:
        """Compute RMSNorm+RoPE of q/k with ``kernels.fused_ops.rmsnorm_rope`` (one Triton kernel
        on CUDA, its torch reference elsewhere) instead of ``RMSNorm`` then ``apply_rope``: equal
        to within fp rounding, not bitwise. Off by default; ``runtime.optimize`` turns it on for CUDA."""
        for m in self.modules():
            if isinstance(m, FluxAttention):
                m.fused_ops = bool(enabled)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.weight.device

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, N_img, in_channels]
        encoder_hidden_states: torch.Tensor,  # [B, N_txt, joint_attention_dim]
        pooled_projections: torch.Tensor,  # [B, pooled_projection_dim]
        timestep: torch.Tensor,  # [B] in [0, 1] (sigma); scaled by 1000 here like diffusers
        img_ids: torch.Tensor,  # [N_img, 3]
        txt_ids: torch.Tensor,  # [N_txt, 3]
        guidance: torch.Tensor | None = None,  # [B]
        token_groups: torch.Tensor | None = None,  # [B, N_txt + N_img] or [N] int
        group_bias: torch.Tensor | None = None,  # [G,G] | [H,G,G] | [L,H|1,G,G]
    ) -> torch.Tensor:
        x = self.x_embedder(hidden_states)  # [B, N_img, C]
        timestep = timestep.to(x.dtype) * 1000
        if guidance is not None:
            guidance = guidance.to(x.dtype) * 1000
        temb = self.time_text_embed(timestep, guidance, pooled_projections)  # [B, C]
        ctx = self.context_embedder(encoder_hidden_states)  # [B, N_txt, C]

        if txt_ids.ndim == 3:  # diffusers' deprecated batched ids
            txt_ids = txt_ids[0]
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        rope = rope_frequencies(torch.cat([txt_ids, img_ids], dim=0), self.config.axes_dims_rope)

        for i, block in enumerate(self.transformer_blocks):
            ctx, x = block(x, ctx, temb, rope, token_groups, _layer_bias(group_bias, i))
        offset = len(self.transformer_blocks)
        for i, block in enumerate(self.single_transformer_blocks):
            ctx, x = block(x, ctx, temb, rope, token_groups, _layer_bias(group_bias, offset + i))

        x = self.norm_out(x, temb)
        return self.proj_out(x)  # [B, N_img, out_dim]


def _layer_bias(group_bias: torch.Tensor | None, layer: int) -> torch.Tensor | None:
    if group_bias is None or group_bias.ndim < 4:
        return group_bias
    return group_bias[layer]  # [L, H|1, G, G] -> [H|1, G, G]
