"""Reference-mode classifier-free guidance (segment key ``reference_cfg_scale``).

The unconditional branch of reference mode is the same target without its reference: the
text-mode composition (gray left half, zero embeddings). Each guided step runs the transformer
once more on that reference-free diptych, whose left half follows the straight path from the
call's noise to the gray latents (what a text-mode call would see), and guides only the target
(right) half: ``v_unc + s · (v - v_unc)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unidg_rt.diptych import prepare_diptych
from unidg_rt.runtime.backend import cat, left_half_tokens, pack_latents
from unidg_rt.sampling import scale_noise


def reference_free_input(
    pipe, dip, image, mask_image, noise, n, embeds, pooled, guidance_scale, group_bias
) -> dict[str, Any]:
    """The unconditional input of ``pipe``'s call: the reference-free composition's Fill
    conditioning and feed, the left-half token mask, its clean gray latents and this call's noise."""
    dip0 = prepare_diptych(image, mask_image, height=dip.height, width=dip.width, **pipe.crop_rule)
    cond0 = pipe._fill_conditioning(dip0, n)  # [B, N_img, 320]; left half = gray latents
    feed0 = pipe._static_feed(
        dip0, np.zeros_like(embeds), np.zeros_like(pooled), n, guidance_scale, group_bias
    )
    w2 = dip.width // pipe.vae_scale_factor  # token columns of the diptych (2x2 latent pixels each)
    left = left_half_tokens(dip.num_image_tokens // w2, w2).astype(np.float32)[None, :, None]  # [1, N_img, 1]
    a = pipe.backend.asarray  # cond0[..., :64]: the packed clean latents (gray left half)
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
