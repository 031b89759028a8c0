"""Validation of a ``UniDGPipeline`` call (diffusers' ``check_inputs``): every bad argument is
refused before anything runs, with a message naming the argument and the fix."""

from __future__ import annotations

import math

import numpy as np

from unidg_rt.artifacts.card import PipelineFacts
from unidg_rt.errors import InvalidInputError
from unidg_rt.groups import NUM_GROUPS
from unidg_rt.runtime.outputs import OUTPUT_TYPES


def check_call_inputs(
    facts: PipelineFacts,
    image,
    mask_image,
    reference_image,
    reference_mask,
    prompt,
    prompt_embeds,
    pooled_prompt_embeds,
    defect_category,
    num_inference_steps,
    guidance_scale,
    num_images_per_prompt,
    output_type,
    group_bias,
    *,
    has_text_encoders: bool,
    has_embeddings: bool,
) -> None:
    if image is None:
        raise InvalidInputError("image is required: pass the normal (defect-free) target image")
    if mask_image is None:
        raise InvalidInputError("mask_image is required: pass a mask, white where the defect should go")
    if output_type not in OUTPUT_TYPES:
        raise InvalidInputError(f"output_type={output_type!r} is not supported; use one of {OUTPUT_TYPES}")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise InvalidInputError(f"num_images_per_prompt={num_images_per_prompt!r} must be an int >= 1")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise InvalidInputError(f"num_inference_steps={num_inference_steps!r} must be an int >= 1")
    if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
        raise InvalidInputError(f"guidance_scale={guidance_scale!r} must be a finite number (e.g. 30 or 3.5)")
    text_given = sum(x is not None for x in (prompt, prompt_embeds, defect_category))
    if text_given > 1:
        raise InvalidInputError("pass only one of prompt, prompt_embeds and defect_category")
    if reference_image is None and reference_mask is None and text_given == 0:
        raise InvalidInputError(
            "no conditioning: pass reference_image + reference_mask (reference mode) or "
            "defect_category / prompt / prompt_embeds (text mode)"
        )
    if prompt is not None and not has_text_encoders:
        raise InvalidInputError(
            "prompt needs text encoders, which are not loaded: pass defect_category (cached "
            "embeddings) or prompt_embeds, or load with text_encoders=FluxTextEncoders.from_dirs(...)"
        )
    if defect_category is not None and not has_embeddings:
        raise InvalidInputError(
            "defect_category needs an embeddings cache: pass embeddings='path/to/embeddings.safetensors'"
        )
    if prompt_embeds is not None:
        shape = tuple(np.shape(prompt_embeds))
        if len(shape) not in (2, 3) or shape[-1] != facts.joint_attention_dim:
            raise InvalidInputError(
                f"prompt_embeds has shape {shape}; expected [T, {facts.joint_attention_dim}] or "
                f"[1, T, {facts.joint_attention_dim}]"
            )
        if pooled_prompt_embeds is None:
            raise InvalidInputError("prompt_embeds needs pooled_prompt_embeds too (the CLIP pooled vector)")
    if pooled_prompt_embeds is not None and np.shape(pooled_prompt_embeds)[-1] != facts.pooled_projection_dim:
        raise InvalidInputError(
            f"pooled_prompt_embeds has shape {tuple(np.shape(pooled_prompt_embeds))}; expected "
            f"[{facts.pooled_projection_dim}] or [1, {facts.pooled_projection_dim}]"
        )
    if group_bias is not None:
        shape = tuple(np.shape(group_bias))
        if len(shape) < 2 or shape[-2:] != (NUM_GROUPS, NUM_GROUPS) or len(shape) > 4:
            raise InvalidInputError(
                f"group_bias has shape {shape}; expected [{NUM_GROUPS}, {NUM_GROUPS}], [H, G, G] or [L, H, G, G]"
            )
