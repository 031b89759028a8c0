"""One denoising prediction with its guidance (DESIGN §1.4): the transformer call, two-pass true
CFG against zero embeddings, and reference CFG (segment key ``reference_cfg_scale``).

Reference CFG: the unconditional branch of reference mode is the same target without its
reference — the text-mode composition (gray left half, zero embeddings,
:meth:`~unidg_rt.diptych.Diptych.without_reference`). Each guided step runs the transformer once
more on that reference-free diptych, whose left half follows the straight path from the call's
noise to the gray latents (what a text-mode call would see), and guides only the target (right)
half: ``v_unc + s · (v - v_unc)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unidg_rt.artifacts.card import PipelineFacts
from unidg_rt.diptych import Diptych
from unidg_rt.runtime.backend import cat
from unidg_rt.runtime.conditioning import fill_conditioning, static_feed
from unidg_rt.sampling import Segment, left_half_tokens, pack_latents, scale_noise


def wants_reference_cfg(dip: Diptych, segments) -> bool:
    """Whether any segment of a reference-mode call asks for reference CFG (scale > 1)."""
    return (
        not dip.is_text_mode
        and segments is not None
        and any((sg.reference_cfg_scale or 0.0) > 1 for sg in segments.segments)
    )


def reference_free_input(
    backend, facts: PipelineFacts, dip: Diptych, noise, n: int, embeds, pooled, guidance_scale, bias
) -> dict[str, Any]:
    """The unconditional input of a reference-mode call: the reference-free composition's Fill
    conditioning and feed, the left-half token mask, its clean gray latents and the call's noise."""
    dip0 = dip.without_reference()
    cond0 = fill_conditioning(backend, dip0, n)  # [B, N_img, 320]; left half = gray latents
    zeros = np.zeros_like(embeds), np.zeros_like(pooled)
    feed0 = static_feed(backend, facts, dip0, *zeros, n, guidance_scale, bias)
    w2 = dip.width // facts.vae_scale_factor  # token columns of the diptych (2x2 latent pixels each)
    left = left_half_tokens(dip.num_image_tokens // w2, w2).astype(np.float32)[None, :, None]  # [1, N_img, 1]
    a = backend.asarray  # cond0[..., :64]: the packed clean latents (gray left half)
    return {
        "cond": cond0,
        "feed": feed0,
        "left": a(left),
        "gray": cond0[..., :64],
        "noise": a(pack_latents(noise)),
    }


def reference_guided(
    backend, v, x, step_feed: dict[str, Any], uncond: dict[str, Any], sigma: float, scale: float
):
    """``v`` with its target half guided against the reference-free diptych at ``sigma``."""
    left = uncond["left"]
    x0 = x * (1 - left) + left * scale_noise(uncond["gray"], uncond["noise"], sigma)
    neg = dict(uncond["feed"])
    neg["hidden_states"] = cat([x0, uncond["cond"]], axis=2)
    neg["timestep"] = step_feed["timestep"]
    neg["guidance"] = step_feed["guidance"]
    v_unc = backend.transformer.infer(neg)["noise_pred"]
    guided = v_unc + scale * (v - v_unc)
    return v * left + guided * (1 - left)  # only the target half is guided


def predict(
    backend,
    facts: PipelineFacts,
    x,
    cond,
    feed: dict[str, Any],
    sigma: float,
    seg: Segment | None,
    n: int,
    cfg_possible: bool = True,
    uncond: dict[str, Any] | None = None,
):
    """The velocity at ``sigma`` for latents ``x`` ``[B, N_img, 64]``: one transformer pass, plus
    true CFG and reference CFG where the step's segment asks for them."""
    a = backend.asarray
    step_feed = dict(feed)
    step_feed["hidden_states"] = cat([x, cond], axis=2)  # [B, N_img, 64 + 320]
    step_feed["timestep"] = a(np.full((n,), sigma, np.float32))
    if seg is not None and seg.guidance_scale is not None and facts.guidance_embeds:
        step_feed["guidance"] = a(np.full((n,), seg.guidance_scale, np.float32), "float32")
    v = backend.transformer.infer(step_feed)["noise_pred"]
    if cfg_possible and seg is not None and seg.true_cfg_scale is not None and seg.true_cfg_scale > 1:
        # two-pass classifier-free guidance against zero (unconditional) embeddings
        neg = dict(step_feed)
        neg["encoder_hidden_states"] = feed["encoder_hidden_states"] * 0
        neg["pooled_projections"] = feed["pooled_projections"] * 0
        v_neg = backend.transformer.infer(neg)["noise_pred"]
        v = v_neg + seg.true_cfg_scale * (v - v_neg)
    if uncond is not None and seg is not None and (seg.reference_cfg_scale or 0.0) > 1:
        v = reference_guided(backend, v, x, step_feed, uncond, sigma, seg.reference_cfg_scale)
    return v
