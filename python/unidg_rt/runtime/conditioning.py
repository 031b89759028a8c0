"""What the transformer is conditioned on (DESIGN §1.3, §3): text or reference embeddings, the
FLUX-Fill conditioning (masked-image latents + packed mask), the static part of the feed, the noise.

Public functions over a backend (its runners and array type) and the card's
:class:`~unidg_rt.artifacts.card.PipelineFacts`; :class:`~unidg_rt.runtime.pipeline.UniDGPipeline`
and :mod:`unidg_rt.runtime.guidance` call them. Also :class:`ReferenceEncoderRunner`, the learned
reference encoder over an exported graph or plan (ONNX Runtime and TensorRT share it). numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unidg_rt.artifacts.card import PipelineFacts
from unidg_rt.diptych import MASKED_VALUE, Diptych
from unidg_rt.errors import InvalidInputError
from unidg_rt.groups import default_group_bias, text_token_groups
from unidg_rt.runtime.backend import cat
from unidg_rt.sampling import latent_image_ids, pack_latents


def as_numpy(x) -> np.ndarray:
    """A torch tensor (any device / dtype) or array-like → numpy (float tensors as float32)."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------- embeddings
def text_embeddings(
    facts: PipelineFacts,
    backend,
    *,
    embeddings,
    text_encoders,
    prompt,
    prompt_embeds,
    pooled_prompt_embeds,
    defect_category,
) -> tuple[np.ndarray, np.ndarray]:
    """→ (embeds float32 ``[T, D]``, pooled float32 ``[P]``): the cached category, the encoded
    prompt, the given embeddings, or zeros (reference mode)."""
    if defect_category is not None:
        return embeddings.get(defect_category)
    if prompt is not None:
        embeds, pooled = text_encoders.encode([prompt], max_sequence_length=facts.text_seq_len)
        return backend.to_numpy(embeds)[0], backend.to_numpy(pooled)[0]
    if prompt_embeds is not None:
        e = np.asarray(as_numpy(prompt_embeds), dtype=np.float32)
        p = np.asarray(as_numpy(pooled_prompt_embeds), dtype=np.float32)
        return e.reshape(-1, e.shape[-1]), p.reshape(-1)
    return (
        np.zeros((facts.text_seq_len, facts.joint_attention_dim), np.float32),
        np.zeros((facts.pooled_projection_dim,), np.float32),
    )


def reference_embeddings(
    dip: Diptych,
    embeds,
    pooled,
    *,
    backend,
    reference_encoder,
    cutout: bool,
    image_prompt_encoder,
    text_given: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference crop's conditioning in reference mode: the learned reference encoder fills the
    text slots + pooled vector (unless text was given); Redux tokens are appended after the text
    slots (Insert-Anything layout). Text mode: ``(embeds, pooled)`` unchanged."""
    if reference_encoder is not None and not dip.is_text_mode and not text_given:
        crop = dip.image[:, : dip.width]  # [H, W, 3]
        if cutout:  # the encoder's input convention: reference pixels outside its mask are gray
            crop = np.where(dip.reference_mask[..., None] > 0, crop, np.float32(MASKED_VALUE))
        embeds, pooled = reference_encoder.encode(crop)
        embeds, pooled = np.asarray(embeds, np.float32), np.asarray(pooled, np.float32)
    if image_prompt_encoder is not None and not dip.is_text_mode:
        ref_crop = (dip.image[:, : dip.width] * 255).round().astype(np.uint8)
        tokens = backend.to_numpy(image_prompt_encoder.encode([ref_crop]))[0]
        embeds = np.concatenate([embeds, tokens.astype(np.float32)], axis=0)
    return embeds, pooled


# ---------------------------------------------------------------------- latents
def encode_image(backend, image: np.ndarray):
    """Pixels float32 ``[H, W, 3]`` in [0, 1] → normalised latents ``[1, C, h, w]`` (backend array)."""
    x = image.transpose(2, 0, 1)[None] * 2 - 1  # [1, 3, H, W] in [-1, 1]
    return backend.vae_encoder.infer({"images": backend.asarray(x.astype(np.float32))})["latent"]


def fill_conditioning(backend, dip: Diptych, n: int):
    """FLUX-Fill conditioning ``[B, N_img, 64 + 256]``: masked-image latents + packed mask."""
    lat = encode_image(backend, dip.masked_image)
    mask = backend.asarray(dip.packed_mask()[None])  # [1, N_img, 256]
    cond = cat([pack_latents(lat), mask], axis=2)  # [1, N_img, 320]
    return cat([cond] * n, axis=0) if n > 1 else cond


def prepare_noise(latent_channels: int, num_images: int, h: int, w: int, seed, generator):
    """Gaussian noise ``[B, C, h, w]`` (latent size) and the seeds, one per image, drawn on the CPU
    so every backend gets identical noise. A torch ``generator`` draws like diffusers does."""
    shape = (latent_channels, h, w)
    if generator is not None and hasattr(generator, "initial_seed"):
        import torch

        noise = torch.randn((num_images, *shape), generator=generator, dtype=torch.float32).numpy()
        return noise, [int(generator.initial_seed())] * num_images
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    seeds = [int(seed) + i for i in range(num_images)]
    noise = np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds])
    return noise, seeds


# ---------------------------------------------------------------------- the transformer feed
def resolve_group_bias(group_bias, group_bias_lambda: float | None):
    """The call's group-bias table, else the card's ``group_bias_lambda`` default, else ``None``."""
    if group_bias is not None:
        return np.asarray(as_numpy(group_bias), dtype=np.float32)
    return None if group_bias_lambda is None else default_group_bias(float(group_bias_lambda))


def static_feed(
    backend, facts: PipelineFacts, dip: Diptych, embeds, pooled, n: int, guidance_scale, bias
) -> dict[str, Any]:
    """The transformer inputs that stay the same at every step (DESIGN §3 names); ``bias``: the
    resolved group-bias table or ``None``."""
    a = backend.asarray
    h, w = dip.height // facts.vae_scale_factor, 2 * dip.width // facts.vae_scale_factor
    guidance = np.full((n,), guidance_scale, np.float32)
    feed = {
        "encoder_hidden_states": a(np.repeat(embeds[None], n, axis=0)),
        "pooled_projections": a(np.repeat(pooled[None], n, axis=0)),
        "img_ids": a(latent_image_ids(h, w), "float32"),
        "txt_ids": a(np.zeros((embeds.shape[0], 3), np.float32), "float32"),
        "guidance": a(guidance, "float32") if facts.guidance_embeds else None,
        "token_groups": None,
        "group_bias": None,
    }
    if bias is not None:
        groups = np.concatenate([text_token_groups(embeds.shape[0]), dip.token_groups])
        feed["token_groups"] = a(groups.astype(np.int64), "int")
        feed["group_bias"] = a(bias, "float32")
    return feed


# ---------------------------------------------------------------------- reference encoder runner
def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W, C]`` float → ``[height, width, C]`` float32, the numpy twin of torch's
    ``interpolate(mode="bilinear", align_corners=False, antialias=False)`` (half-pixel centres,
    source index clamped at 0, no anti-aliasing when shrinking; indices and weights in float32
    like torch's CPU kernel): it matches :func:`unidg_rt.models.refenc.pixels_to_input` up to
    float32 rounding of the sums (tested <= 1e-5 on [0, 1] pixels)."""

    def taps(n_in: int, n_out: int):
        half = np.float32(0.5)
        src = (np.arange(n_out, dtype=np.float32) + half) * np.float32(n_in / n_out) - half
        src = np.maximum(src, np.float32(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    x = np.asarray(x, np.float32)
    r0, r1, wr = taps(x.shape[0], height)
    c0, c1, wc = taps(x.shape[1], width)
    wr, wc = wr[:, None, None], wc[None, :, None]
    rows = x[r0] * (1 - wr) + x[r1] * wr  # [height, W, C]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc  # [height, width, C]


class ReferenceEncoderRunner:
    """The pipeline's ``reference_encoder``: ``encode(crop) -> (embeds [T, D], pooled [P])`` float32
    numpy for one reference crop ``[S', S', 3]`` (float in [0, 1] or uint8), like
    :class:`unidg_rt.models.refenc.TorchReferenceEncoder`, over any runner whose
    ``infer({"images": [1, 3, S, S]})`` returns ``encoder_hidden_states`` / ``pooled_projections``
    (an ONNX Runtime session, a TensorRT engine). The crop is mapped to [-1, 1] and resized to
    ``image_size`` (the graph's static ``S``) only when ``S' != S``, with :func:`resize_bilinear`."""

    def __init__(self, runner, image_size: int):
        self.runner = runner
        self.image_size = int(image_size)

    def encode(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(crop)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise InvalidInputError(f"reference crop must be [H, W, 3], got {x.shape}")
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        x = x * 2 - 1
        s = self.image_size
        if x.shape[:2] != (s, s):
            x = resize_bilinear(x, s, s)
        out = self.runner.infer({"images": np.ascontiguousarray(x.transpose(2, 0, 1)[None])})
        embeds = np.asarray(out["encoder_hidden_states"][0], np.float32)  # [T, D]
        return embeds, np.asarray(out["pooled_projections"][0], np.float32)  # [P]
