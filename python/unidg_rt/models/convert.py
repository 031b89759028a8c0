"""Key-layout converters between black-forest-labs' original FLUX checkpoints and diffusers'.

BFL fuses q/k/v (``img_attn.qkv``) and, in single blocks, q/k/v + MLP-in (``linear1``); its final
adaLN is ordered (shift, scale) where diffusers' is (scale, shift). Tensors are split/concatenated
lazily per key so a 12B checkpoint converts without a second full copy.
"""

from __future__ import annotations

import re

import torch

from unidg_rt.models.config import FluxConfig

#: diffusers suffix -> BFL suffix: global (non-block) keys, then per double / single block (shared
#: with the LoRA key layouts of :mod:`unidg_rt.models.lora_formats`)
PLAIN_KEYS = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
DOUBLE_BLOCK_KEYS = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}
SINGLE_BLOCK_KEYS = {
    "norm.linear": "modulation.lin",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
    "proj_out": "linear2",
}


def is_bfl_layout(keys) -> bool:
    return any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys)


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def bfl_to_diffusers(sd: dict[str, torch.Tensor], config: FluxConfig) -> dict[str, torch.Tensor]:
    """Original FLUX keys → diffusers keys (``model.diffusion_model.`` prefix accepted)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    inner, mlp = config.inner_dim, int(config.inner_dim * config.mlp_ratio)
    out: dict[str, torch.Tensor] = {}
    for dif, bfl in PLAIN_KEYS.items():
        for p in ("weight", "bias"):
            if f"{bfl}.{p}" in sd:
                out[f"{dif}.{p}"] = sd.pop(f"{bfl}.{p}")
    for p in ("weight", "bias"):
        out[f"norm_out.linear.{p}"] = _swap_halves(sd.pop(f"final_layer.adaLN_modulation.1.{p}"))
    for i in range(config.num_layers):
        src, dst = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for dif, bfl in DOUBLE_BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                bp = "scale" if bfl.endswith("_norm") else p
                if f"{src}{bfl}.{bp}" in sd and not (bfl.endswith("_norm") and p == "bias"):
                    out[f"{dst}{dif}.{p}"] = sd.pop(f"{src}{bfl}.{bp}")
        for stream, names in (
            ("img", ("to_q", "to_k", "to_v")),
            ("txt", ("add_q_proj", "add_k_proj", "add_v_proj")),
        ):
            for p in ("weight", "bias"):
                for name, part in zip(
                    names, sd.pop(f"{src}{stream}_attn.qkv.{p}").chunk(3, dim=0), strict=True
                ):
                    out[f"{dst}attn.{name}.{p}"] = part
    for i in range(config.num_single_layers):
        src, dst = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for dif, bfl in SINGLE_BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                bp = "scale" if bfl.endswith("_norm") else p
                if f"{src}{bfl}.{bp}" in sd and not (bfl.endswith("_norm") and p == "bias"):
                    out[f"{dst}{dif}.{p}"] = sd.pop(f"{src}{bfl}.{bp}")
        for p in ("weight", "bias"):
            q, k, v, m = sd.pop(f"{src}linear1.{p}").split((inner, inner, inner, mlp), dim=0)
            out.update({f"{dst}attn.to_q.{p}": q, f"{dst}attn.to_k.{p}": k, f"{dst}attn.to_v.{p}": v})
            out[f"{dst}proj_mlp.{p}"] = m
    out.update(sd)  # leftovers surface as "unexpected keys" in the strict load
    return out


def diffusers_to_bfl(sd: dict[str, torch.Tensor], config: FluxConfig) -> dict[str, torch.Tensor]:
    """diffusers keys → original FLUX keys (inverse of :func:`bfl_to_diffusers`)."""
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}
    for dif, bfl in PLAIN_KEYS.items():
        for p in ("weight", "bias"):
            if f"{dif}.{p}" in sd:
                out[f"{bfl}.{p}"] = sd.pop(f"{dif}.{p}")
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(sd.pop(f"norm_out.linear.{p}"))
    for i in range(config.num_layers):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for dif, bfl in DOUBLE_BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                if f"{src}{dif}.{p}" in sd:
                    out[f"{dst}{bfl}.{'scale' if bfl.endswith('_norm') else p}"] = sd.pop(f"{src}{dif}.{p}")
        for stream, names in (
            ("img", ("to_q", "to_k", "to_v")),
            ("txt", ("add_q_proj", "add_k_proj", "add_v_proj")),
        ):
            for p in ("weight", "bias"):
                out[f"{dst}{stream}_attn.qkv.{p}"] = torch.cat(
                    [sd.pop(f"{src}attn.{n}.{p}") for n in names], dim=0
                )
    for i in range(config.num_single_layers):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for dif, bfl in SINGLE_BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                if f"{src}{dif}.{p}" in sd:
                    out[f"{dst}{bfl}.{'scale' if bfl.endswith('_norm') else p}"] = sd.pop(f"{src}{dif}.{p}")
        for p in ("weight", "bias"):
            parts = [sd.pop(f"{src}attn.to_{n}.{p}") for n in "qkv"] + [sd.pop(f"{src}proj_mlp.{p}")]
            out[f"{dst}linear1.{p}"] = torch.cat(parts, dim=0)
    out.update(sd)
    return out


def infer_config_from_bfl(keys, in_channels: int | None = None) -> dict[str, int]:
    """Layer counts from BFL keys (the rest of the architecture must come from a config)."""
    pat_d, pat_s = re.compile(r"double_blocks\.(\d+)\."), re.compile(r"single_blocks\.(\d+)\.")
    n_d = 1 + max((int(m.group(1)) for k in keys if (m := pat_d.search(k))), default=-1)
    n_s = 1 + max((int(m.group(1)) for k in keys if (m := pat_s.search(k))), default=-1)
    return {"num_layers": n_d, "num_single_layers": n_s}
