"""``UniDGPipeline``: reference-mode / text-mode defect insertion over any backend (DESIGN §1, §7).

The only assembler: ``UniDGPipeline(backend, card, ...)``, where each backend's
``open(path) -> (backend, card)`` loads an artifact (checkpoint, ONNX folder, plan folder) and its
card once; every ``from_*`` is ``cls(*XBackend.open(...))``. ``__call__`` follows FluxFillPipeline's
argument names and is a short numbered recipe; the steps live in :mod:`.conditioning` (what the
transformer sees), :mod:`unidg_rt.sampling` (schedule, packing, Euler step) and :mod:`.guidance`
(the prediction with CFG), the numeric work in the backend's runners.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.artifacts.card import PASTE_MODES, Card, Defaults
from unidg_rt.diptych import prepare_diptych
from unidg_rt.embeddings import EmbeddingsCache
from unidg_rt.errors import ConfigError, InvalidInputError, WeightsError
from unidg_rt.runtime import conditioning as C
from unidg_rt.runtime.checks import check_call_inputs
from unidg_rt.runtime.guidance import predict, reference_free_input, wants_reference_cfg
from unidg_rt.runtime.lora import LoraLoaderMixin
from unidg_rt.runtime.outputs import UniDGPipelineOutput, call_info, format_images
from unidg_rt.sampling import SegmentSchedule, euler_step, flux_sigmas, pack_latents, unpack_latents

logger = logging.getLogger(__name__)

_AUTO = object()  #: ``reference_encoder`` default: the one the backend loaded with the artifact


class UniDGPipeline(LoraLoaderMixin):
    """Defect insertion: crop → diptych → denoise (rectified flow) → decode → paste back.

    ``backend``: a loaded backend (torch, ONNX Runtime, TensorRT); ``card``: its
    :class:`~unidg_rt.artifacts.card.Card` (pipeline facts + defaults). ``embeddings``: a category
    cache or its path (default: the one the artifact ships). ``reference_encoder``: default = the
    backend's (the checkpoint's learned encoder; refused when the card names one the artifact
    lacks), ``None`` = none, or any object with ``encode(crop) -> (embeds, pooled)``.
    ``image_prompt_encoder``: optional SigLIP + Redux (:mod:`unidg_rt.models.redux`)."""

    def __init__(
        self,
        backend,
        card: Card,
        *,
        embeddings: str | Path | EmbeddingsCache | None = None,
        text_encoders=None,
        image_prompt_encoder=None,
        reference_encoder=_AUTO,
    ):
        self.backend = backend
        self.card = card
        embeddings = card.embeddings if embeddings is None else embeddings  # default: the artifact's cache
        loaded = embeddings is None or isinstance(embeddings, EmbeddingsCache)
        self.embeddings = embeddings if loaded else EmbeddingsCache.load(embeddings)
        self.text_encoders = text_encoders
        self.image_prompt_encoder = image_prompt_encoder
        if reference_encoder is _AUTO:
            reference_encoder = getattr(backend, "reference_encoder", None)
            if reference_encoder is None and card.defaults.reference_encoder:
                fix = "pass reference_encoder= (an object with encode(crop)) or None to run without it"
                raise WeightsError(
                    getattr(backend, "reference_encoder_missing", None)
                    or f"the card names a reference encoder the {backend.name} backend did not load: {fix}"
                )
        self.reference_encoder = reference_encoder

    # ------------------------------------------------------------------ the card, read once
    @property
    def defaults(self) -> dict[str, Any]:
        """The card's defaults over the fallbacks (a copy: change them with :meth:`replace_defaults`)."""
        return self.card.defaults.with_fallbacks()

    def replace_defaults(self, **changes) -> None:
        """Set card defaults for the following calls (e.g. ``segments=[...]``, ``crop={...}``)."""
        raw = {**self.card.defaults.raw, **changes}
        self.card = dataclasses.replace(self.card, defaults=Defaults.from_dict(raw))

    text_seq_len = property(lambda self: self.card.facts.text_seq_len)
    joint_attention_dim = property(lambda self: self.card.facts.joint_attention_dim)
    pooled_projection_dim = property(lambda self: self.card.facts.pooled_projection_dim)
    latent_channels = property(lambda self: self.card.facts.latent_channels)
    vae_scale_factor = property(lambda self: self.card.facts.vae_scale_factor)
    guidance_embeds = property(lambda self: self.card.facts.guidance_embeds)

    @property
    def crop_rule(self) -> dict[str, Any]:
        """Keyword arguments of the adaptive crop rule (:func:`unidg_rt.crops.adaptive_crop_box`)
        from the card's ``defaults["crop"]`` (the geometry the model was trained with)."""
        return dict(self.card.defaults.crop)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        device: str = "cpu",
        dtype=None,
        attention_form: str | None = None,
        embeddings: str | Path | EmbeddingsCache | None = None,
        text_encoders=None,
        text_seq_len: int | None = None,
        image_prompt_encoder=None,
        fast_path="auto",
        precision: str | None = None,
        config=None,
        vae: str | Path | None = None,
    ) -> UniDGPipeline:
        """Load a UniDG checkpoint (``None`` = the embedded default model; a file, or a folder
        holding ``model.safetensors`` as ``unidg-rt train`` writes) or a diffusers folder into the
        torch backend (:meth:`~unidg_rt.runtime.torch_backend.TorchBackend.open`). ``embeddings``:
        a category cache (defaults to the one beside the checkpoint). ``fast_path``: ``"auto"`` (on
        for CUDA, off on CPU), ``True``/``"on"`` (CUDA only; an error elsewhere), ``False``/``"off"``,
        or a :class:`~unidg_rt.runtime.optimize.FastPathConfig`; ``precision="fp8"`` adds FP8
        linears to it. A bare transformer file (e.g. BFL's ``flux1-fill-dev.safetensors``) needs
        ``config`` (a ``FluxConfig`` or preset name such as ``"flux-fill"``) and ``vae``."""
        from unidg_rt.runtime.optimize import apply_fast_path, check_device, resolve_fast_path
        from unidg_rt.runtime.torch_backend import TorchBackend

        check_device(device)
        fast = resolve_fast_path(fast_path, device, precision)  # fail before loading anything
        if precision not in (None, "fp8"):
            raise ConfigError(
                f"precision={precision!r} is not a torch precision: use dtype= (float32/bfloat16/float16), "
                "precision='fp8' (FP8 fast path), or from_onnx(..., precision=...) for quantised exports"
            )
        backend, card = TorchBackend.open(
            path, device=device, dtype=dtype, attention_form=attention_form, config=config, vae=vae
        )
        if fast is not None:  # after the adapters: fused QKV carries their hooks
            apply_fast_path(backend, fast)
        return cls(
            backend,
            card.with_text_seq_len(text_seq_len),
            embeddings=embeddings,
            text_encoders=text_encoders,
            image_prompt_encoder=image_prompt_encoder,
        )

    @classmethod
    def from_onnx(
        cls,
        onnx_dir: str | Path,
        *,
        embeddings=None,
        providers: list[str] | None = None,
        session_options=None,
        attention_form: str | None = None,
        precision: str | None = None,
        io_binding: bool = False,
        **kwargs,
    ) -> UniDGPipeline:
        """Load an exported ONNX folder (``unidg_onnx.json`` manifest; ``unidg-rt export``) into
        ONNX Runtime (:meth:`~unidg_rt.runtime.ort_backend.OrtBackend.open`). ``embeddings``
        defaults to the folder's cache; other keywords (``text_encoders``,
        ``image_prompt_encoder``, ``reference_encoder``) as for :class:`UniDGPipeline`."""
        from unidg_rt.runtime.ort_backend import OrtBackend

        opened = OrtBackend.open(
            onnx_dir,
            providers=providers,
            session_options=session_options,
            attention_form=attention_form,
            precision=precision,
            io_binding=io_binding,
        )
        return cls(*opened, embeddings=embeddings, **kwargs)

    @classmethod
    def from_engines(
        cls,
        engines_dir: str | Path,
        *,
        embeddings=None,
        text_seq_len: int | None = None,
        reference_encoder=_AUTO,
        **kwargs,
    ) -> UniDGPipeline:
        """Load TensorRT / TensorRT-RTX plans built by ``unidg-rt build`` (checked against their
        sidecar manifests; a mismatched plan is refused with the rebuild command). Other keywords
        (``device``, ``precision``, ``variant``, ``cuda_graph``, ``runtime_cache_dir``,
        ``verify_hash``) go to :meth:`~unidg_rt.runtime.trt_backend.TRTBackend.open`. Unverified
        here: no GPU that can run the plans was available (see README)."""
        from unidg_rt.runtime.trt_backend import TRTBackend

        backend, card = TRTBackend.open(engines_dir, **kwargs)
        return cls(
            backend,
            card.with_text_seq_len(text_seq_len),
            embeddings=embeddings,
            reference_encoder=reference_encoder,
        )

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        image=None,
        mask_image=None,
        reference_image=None,
        reference_mask=None,
        prompt: str | None = None,
        prompt_embeds=None,
        pooled_prompt_embeds=None,
        defect_category: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        sigmas=None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator=None,
        seed: int | None = None,
        latents=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        group_bias=None,
        segments: SegmentSchedule | list | str | None = None,
        feather: int | None = None,
        paste_mode: str | None = None,
    ):
        """Insert a defect into ``image`` where ``mask_image`` is white.

        Examples:
            ```py
            >>> from unidg_rt import UniDGPipeline
            >>> pipe = UniDGPipeline.from_pretrained()  # the embedded default model
            >>> out = pipe(image=normal, mask_image=mask, reference_image=ref, reference_mask=ref_mask, seed=0)
            >>> out.images[0].save("defect.png")
            ```

        Args:
            image, mask_image: the normal (defect-free) target image and where the defect goes
                (PIL, numpy uint8/float, or torch; same size). Pixels outside the (dilated) mask
                are returned unchanged.
            reference_image, reference_mask: reference mode — an image with the defect to copy and
                its mask (both or neither).
            prompt, prompt_embeds + pooled_prompt_embeds, defect_category: text mode — a prompt (needs
                ``text_encoders``), precomputed embeddings, or a category of the embeddings cache.
                At most one of the three.
            height, width: per-side generation size (multiples of 16); default: the card's.
            num_inference_steps, sigmas: the schedule (``sigmas``: a custom one, length steps + 1).
            guidance_scale: FLUX guidance embedding value (card default).
            num_images_per_prompt, generator, seed: images per call and their noise (seed ``s`` gives
                images ``s, s+1, …``; a torch ``generator`` draws like diffusers).
            latents: packed initial latents ``[B, N_img, 64]`` instead of noise.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: :class:`~unidg_rt.runtime.outputs.UniDGPipelineOutput` (``True``) or a tuple.
            callback_on_step_end: ``f(pipe, step, timestep, {"latents": x}) -> dict | None`` after each
                step (return ``{"latents": ...}`` to replace them).
            group_bias: group-bias table ``[G, G]``, ``[H, G, G]`` or ``[L, H, G, G]`` (DESIGN §1.2);
                default from the card's ``group_bias_lambda``.
            segments: hierarchical schedule (:class:`~unidg_rt.sampling.SegmentSchedule` or its
                data): guidance, true CFG, reference CFG and adapter strengths per step range;
                default: the card's.
            feather, paste_mode: paste-back edge softness and ``"replace"`` / ``"residual"``.

        Returns:
            :class:`~unidg_rt.runtime.outputs.UniDGPipelineOutput` (``images``, ``masks``, ``diptychs``,
            ``seeds``, ``info``), or ``(images, mask)`` with ``return_dict=False``.

        Steps: 1. validate, 2. crop + compose the diptych, 3. conditioning, 4. latents, 5. schedule,
        6. denoise, 7. decode and paste back.
        """
        d, facts = self.card.defaults, self.card.facts
        paste_mode = d.paste if paste_mode is None else paste_mode
        if paste_mode not in PASTE_MODES:
            raise InvalidInputError(f"paste_mode={paste_mode!r} is not supported; use one of {PASTE_MODES}")
        height = d.height if height is None else height
        width = d.width if width is None else width
        if num_inference_steps is None:
            num_inference_steps = len(sigmas) if sigmas is not None else d.num_inference_steps
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        feather = d.feather if feather is None else feather
        # 1. validate
        self.check_inputs(
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
        )
        # 2. crop + compose the diptych (validates sizes and masks)
        dip = prepare_diptych(
            image, mask_image, reference_image, reference_mask, height=height, width=width, **self.crop_rule
        )
        # 3. conditioning: text or reference embeddings, the FLUX-Fill latents, the static feed
        embeds, pooled = self.encode_prompt(prompt, prompt_embeds, pooled_prompt_embeds, defect_category)
        embeds, pooled = C.reference_embeddings(
            dip,
            embeds,
            pooled,
            backend=self.backend,
            reference_encoder=self.reference_encoder,
            cutout=bool((d.reference_encoder or {}).get("cutout")),
            image_prompt_encoder=self.image_prompt_encoder,
            text_given=any(x is not None for x in (prompt, prompt_embeds, defect_category)),
        )
        if segments is None:  # the card's hierarchical schedule (data, e.g. APO strengths)
            segments = list(d.segments) if d.segments else None
        segs = SegmentSchedule.coerce(segments)
        n = num_images_per_prompt
        cond = C.fill_conditioning(self.backend, dip, n)  # [B, N_img, 320]
        bias = C.resolve_group_bias(group_bias, d.group_bias_lambda)
        feed = C.static_feed(self.backend, facts, dip, embeds, pooled, n, guidance_scale, bias)
        # 4. latents: noise [B, C, h, w] → packed [B, N_img, 64]
        h, w = dip.height // facts.vae_scale_factor, 2 * dip.width // facts.vae_scale_factor
        noise, seeds = self.prepare_noise(n, h, w, seed, generator)
        x = self.backend.asarray(pack_latents(noise)) if latents is None else latents
        # 5. schedule; true CFG compares against zero embeddings: with zero conditioning (reference
        # mode without a reference encoder or Redux) both passes are the same call, so it is skipped
        sig = flux_sigmas(num_inference_steps, dip.num_image_tokens, sigmas)
        cfg_possible = bool(np.any(embeds) or np.any(pooled))
        uncond = None
        if wants_reference_cfg(dip, segs):
            uncond = reference_free_input(
                self.backend, facts, dip, noise, n, embeds, pooled, guidance_scale, bias
            )
        # 6. denoising loop
        for i in range(len(sig) - 1):
            seg = segs.at(i, len(sig) - 1) if segs is not None else None
            self.set_segment_adapters(seg)
            v = predict(self.backend, facts, x, cond, feed, float(sig[i]), seg, n, cfg_possible, uncond)
            x = euler_step(x, v, float(sig[i]), float(sig[i + 1]))
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, float(sig[i]) * 1000, {"latents": x}) or {}
                x = out.get("latents", x)
        mode = "text" if dip.is_text_mode else "reference"
        info = call_info(
            mode, height, width, num_inference_steps, guidance_scale, sig, seeds, defect_category
        )
        info.update(self.backend.info)
        if output_type == "latent":
            result = UniDGPipelineOutput(images=x, seeds=seeds, info=info)
            return result if return_dict else (result.images,)
        # 7. decode and paste back
        diptychs = self.decode(unpack_latents(x, h, w))  # [B, H, 2W, 3]
        if paste_mode == "residual":
            # add what the model changed to the input pixels: the VAE's reconstruction error of
            # the surface (the same in both decodes) cancels instead of blurring the paste region
            recon = self.decode(C.encode_image(self.backend, dip.image))[0]  # [H, 2W, 3]: VAE round trip
            diptychs = np.clip(dip.image[None] + diptychs - recon[None], 0, 1)
        pasted, alphas = zip(*(dip.paste(img, feather=feather) for img in diptychs), strict=True)
        images = format_images(list(pasted), output_type)
        result = UniDGPipelineOutput(
            images=images, masks=alphas[0], diptychs=diptychs, seeds=seeds, info=info
        )
        return result if return_dict else (images, alphas[0])

    # ------------------------------------------------------------------ steps (diffusers-style names)
    def check_inputs(self, *args) -> None:
        """diffusers' ``check_inputs``: the call's arguments in ``__call__`` order, from ``image`` to
        ``group_bias`` (:func:`~unidg_rt.runtime.checks.check_call_inputs`); raises on the first bad one."""
        has = {
            "has_text_encoders": self.text_encoders is not None,
            "has_embeddings": self.embeddings is not None,
        }
        check_call_inputs(self.card.facts, *args, **has)

    def encode_prompt(self, prompt, prompt_embeds, pooled_prompt_embeds, defect_category):
        """→ (embeds float32 [T, D], pooled float32 [P]); zeros in reference mode."""
        return C.text_embeddings(
            self.card.facts,
            self.backend,
            embeddings=self.embeddings,
            text_encoders=self.text_encoders,
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            defect_category=defect_category,
        )

    def prepare_noise(self, num_images: int, h: int, w: int, seed, generator) -> tuple[np.ndarray, list[int]]:
        """Gaussian noise ``[B, C, h, w]`` (latent size), one seed per image (see :func:`.conditioning.prepare_noise`)."""
        return C.prepare_noise(self.card.facts.latent_channels, num_images, h, w, seed, generator)

    def decode(self, latent) -> np.ndarray:
        """Normalised latents ``[B, C, h, w]`` -> pixels float32 ``[B, H, W, 3]`` in [0, 1]."""
        images = self.backend.vae_decoder.infer({"latent": latent})["images"]
        return np.clip((self.backend.to_numpy(images).transpose(0, 2, 3, 1) + 1) / 2, 0, 1)
