"""``UniDGPipeline``: reference-mode / text-mode defect insertion over any backend (DESIGN §1, §7).

``__call__`` follows FluxFillPipeline's argument names and is a short numbered recipe over small
helpers; the numeric work happens in the backend's runners (torch, ONNX Runtime, TensorRT).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.diptych import MASKED_VALUE, Diptych, prepare_diptych
from unidg_rt.embeddings import EmbeddingsCache
from unidg_rt.errors import BackendCapabilityError, ConfigError, InvalidInputError, WeightsError
from unidg_rt.groups import NUM_GROUPS, default_group_bias, text_token_groups
from unidg_rt.runtime.backend import cat, latent_image_ids, pack_latents, unpack_latents
from unidg_rt.runtime.outputs import UniDGPipelineOutput, format_images
from unidg_rt.runtime.reference_cfg import reference_free_input, reference_guided
from unidg_rt.sampling import SegmentSchedule, euler_step, flux_sigmas

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PASTE_MODES = ("replace", "residual")  #: paste-back of the generated target crop (see __call__)
#: used when neither the call nor the checkpoint says otherwise (FLUX.1-Fill-like)
FALLBACK_DEFAULTS = {
    "height": 512,
    "width": 512,
    "num_inference_steps": 28,
    "guidance_scale": 30.0,
    "group_bias_lambda": None,
    "feather": 8,
}


class UniDGPipeline:
    """Defect insertion: crop → diptych → denoise (rectified flow) → decode → paste back."""

    def __init__(
        self,
        backend,
        *,
        text_seq_len: int,
        joint_attention_dim: int,
        pooled_projection_dim: int,
        latent_channels: int = 16,
        vae_scale_factor: int = 8,
        guidance_embeds: bool = True,
        defaults: dict[str, Any] | None = None,
        embeddings: EmbeddingsCache | None = None,
        text_encoders=None,
        image_prompt_encoder=None,
        reference_encoder=None,
    ):
        self.backend = backend
        self.text_seq_len = text_seq_len
        self.joint_attention_dim = joint_attention_dim
        self.pooled_projection_dim = pooled_projection_dim
        self.latent_channels = latent_channels
        self.vae_scale_factor = vae_scale_factor
        self.guidance_embeds = guidance_embeds
        self.defaults = {**FALLBACK_DEFAULTS, **(defaults or {})}
        self.embeddings = embeddings
        self.text_encoders = text_encoders
        self.image_prompt_encoder = image_prompt_encoder  # optional SigLIP + Redux (models/redux.py)
        # the checkpoint's learned reference encoder (models/refenc.py): reference crop -> the text
        # slots + pooled vector in reference mode; ``encode(crop) -> (embeds [T, D], pooled [P])``
        self.reference_encoder = reference_encoder

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
        torch backend. ``embeddings``: a category cache (defaults to the one beside the
        checkpoint, ``embeddings.safetensors``). ``fast_path``: ``"auto"`` (on for CUDA, off on
        CPU), ``True``/``"on"`` (CUDA only; an error elsewhere), ``False``/``"off"``, or a
        :class:`~unidg_rt.runtime.optimize.FastPathConfig`; ``precision="fp8"`` adds FP8 linears to
        it. A bare transformer file (e.g. BFL's ``flux1-fill-dev.safetensors``) needs ``config``
        (a ``FluxConfig`` or preset name such as ``"flux-fill"``) and ``vae`` (a VAE folder/file)."""
        from unidg_rt.artifacts.assets import default_model_path
        from unidg_rt.models.loading import load_transformer, load_vae, read_card
        from unidg_rt.runtime.optimize import apply_fast_path, check_device, resolve_fast_path
        from unidg_rt.runtime.torch_backend import TorchBackend

        check_device(device)
        fast = resolve_fast_path(fast_path, device, precision)  # fail before loading anything
        if precision not in (None, "fp8"):
            raise ConfigError(
                f"precision={precision!r} is not a torch precision: use dtype= (float32/bfloat16/float16), "
                "precision='fp8' (FP8 fast path), or from_onnx(..., precision=...) for quantised exports"
            )
        path = Path(path) if path is not None else default_model_path()
        card = read_card(path) if path.is_file() else None
        if card is None and (path / "model.safetensors").is_file():  # a unidg-rt folder (``train --out``)
            card = read_card(path / "model.safetensors")
            path = path / "model.safetensors" if card is not None else path
        if isinstance(config, str):
            from unidg_rt.models.presets import PRESETS

            if config not in PRESETS:
                raise ConfigError(
                    f"config={config!r} is not a preset; use one of {sorted(PRESETS)} or a FluxConfig"
                )
            config = PRESETS[config][0]()
        if card is None and path.is_file() and (config is None or vae is None):
            raise WeightsError(
                f"{path} has no UniDG model card (a bare transformer file): pass config= (a FluxConfig or preset "
                "name, e.g. config='flux-fill') and vae= (a VAE folder, e.g. 'FLUX.1-Fill-dev/vae') to from_pretrained"
            )
        transformer = load_transformer(path, config=config)
        vae = load_vae(path if vae is None else Path(vae))
        backend = TorchBackend(transformer, vae, device=device, dtype=dtype, attention_form=attention_form)
        defaults = dict(card.defaults) if card else {}
        cache = _load_embeddings(embeddings, path)
        cfg = transformer.config
        base = path if path.is_dir() else path.parent
        for name, spec in (defaults.get("adapters") or {}).items():  # adapters shipped beside the weights
            backend.adapters.load_lora(base / spec["file"], name, strength=float(spec.get("strength", 1.0)))
        reference_encoder = None
        if defaults.get("reference_encoder"):
            from unidg_rt.models.refenc import TorchReferenceEncoder

            reference_encoder = TorchReferenceEncoder.from_file(
                base / defaults["reference_encoder"]["file"], device=device
            )
        if fast is not None:  # after the adapters: fused QKV carries their hooks
            apply_fast_path(backend, fast)
        return cls(
            backend,
            text_seq_len=text_seq_len or defaults.get("text_seq_len", 512),
            joint_attention_dim=cfg.joint_attention_dim,
            pooled_projection_dim=cfg.pooled_projection_dim,
            latent_channels=cfg.out_dim // 4,
            vae_scale_factor=vae.config.downsample_factor,
            guidance_embeds=cfg.guidance_embeds,
            defaults=defaults,
            embeddings=cache,
            text_encoders=text_encoders,
            image_prompt_encoder=image_prompt_encoder,
            reference_encoder=reference_encoder,
        )

    # ------------------------------------------------------------------ LoRA (diffusers-style names)
    def _adapter_manager(self):
        if not hasattr(self.backend, "adapters"):
            raise BackendCapabilityError(
                f"loading / fusing LoRA needs the torch backend (this pipeline runs on {self.backend.name}); "
                "load it before exporting: `unidg-rt export --lora NAME=PATH` carries it in the graph"
            )
        return self.backend.adapters

    def load_lora_weights(self, path, adapter_name: str = "default", scale: float = 1.0):
        """Load a diffusers/peft LoRA (FLUX.1-dev LoRAs are zero-padded onto Fill's 384 inputs)."""
        return self._adapter_manager().load_lora(path, adapter_name, strength=scale)

    def _adapter_setter(self, what: str):
        setter = getattr(self.backend, "set_adapter_scales", None)
        if setter is None:
            raise BackendCapabilityError(
                f"{what} sets adapter strengths but the {self.backend.name} backend has no adapters; "
                "run it on torch, ONNX Runtime or TensorRT with the adapters exported"
            )
        return setter

    def set_adapters(self, adapter_names, adapter_weights=None) -> None:
        """diffusers' ``set_adapters``: the named adapters at ``adapter_weights`` (default 1.0),
        every other loaded (or graph-carried) adapter at 0. Every backend."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if adapter_weights is not None else [1.0] * len(names)
        weights = [weights] * len(names) if isinstance(weights, (int, float)) else list(weights)
        if len(weights) != len(names):
            raise InvalidInputError(
                f"adapter_weights has {len(weights)} values for {len(names)} adapter_names; give one each"
            )
        setter = self._adapter_setter("set_adapters")
        setter(dict(zip(names, weights, strict=True)))  # unknown names raise before anything changes
        setter({n: 0.0 for n in self.backend.adapter_names if n not in names})

    def fuse_lora(self, adapter_names=None) -> None:
        self._adapter_manager().fuse(adapter_names)

    def unfuse_lora(self) -> None:
        self._adapter_manager().unfuse()

    @classmethod
    def from_engines(cls, engines_dir: str | Path, **kwargs) -> UniDGPipeline:
        """Load TensorRT / TensorRT-RTX plans built by ``unidg-rt build`` (checked against their
        sidecar manifests; a mismatched plan is refused with the rebuild command). Keywords go to
        :func:`unidg_rt.runtime.trt_backend.pipeline_from_engines`. Unverified here: no GPU that
        can run the plans was available (see README)."""
        from unidg_rt.runtime.trt_backend import pipeline_from_engines

        return pipeline_from_engines(cls, engines_dir, **kwargs)

    @classmethod
    def from_onnx(
        cls,
        onnx_dir: str | Path,
        *,
        providers: list[str] | None = None,
        embeddings: str | Path | EmbeddingsCache | None = None,
        attention_form: str | None = None,
        **kwargs,
    ) -> UniDGPipeline:
        """Load an exported ONNX folder (``unidg_onnx.json`` manifest; ``unidg-rt export``) into
        ONNX Runtime. ``embeddings`` defaults to the folder's ``embeddings.safetensors``; other
        keywords (``session_options``, ``precision``, ``io_binding``, ``text_encoders``,
        ``image_prompt_encoder``) go to
        :func:`unidg_rt.runtime.ort_backend.pipeline_from_onnx`."""
        from unidg_rt.runtime.ort_backend import pipeline_from_onnx

        return pipeline_from_onnx(
            cls, onnx_dir, providers=providers, embeddings=embeddings, attention_form=attention_form, **kwargs
        )

    # ------------------------------------------------------------------ validation
    def check_inputs(
        self,
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
    ) -> None:
        if image is None:
            raise InvalidInputError("image is required: pass the normal (defect-free) target image")
        if mask_image is None:
            raise InvalidInputError("mask_image is required: pass a mask, white where the defect should go")
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(
                f"output_type={output_type!r} is not supported; use one of {OUTPUT_TYPES}"
            )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InvalidInputError(f"num_images_per_prompt={num_images_per_prompt!r} must be an int >= 1")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise InvalidInputError(f"num_inference_steps={num_inference_steps!r} must be an int >= 1")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
            raise InvalidInputError(
                f"guidance_scale={guidance_scale!r} must be a finite number (e.g. 30 or 3.5)"
            )
        text_given = sum(x is not None for x in (prompt, prompt_embeds, defect_category))
        if text_given > 1:
            raise InvalidInputError("pass only one of prompt, prompt_embeds and defect_category")
        if reference_image is None and reference_mask is None and text_given == 0:
            raise InvalidInputError(
                "no conditioning: pass reference_image + reference_mask (reference mode) or "
                "defect_category / prompt / prompt_embeds (text mode)"
            )
        if prompt is not None and self.text_encoders is None:
            raise InvalidInputError(
                "prompt needs text encoders, which are not loaded: pass defect_category (cached "
                "embeddings) or prompt_embeds, or load with text_encoders=FluxTextEncoders.from_dirs(...)"
            )
        if defect_category is not None and self.embeddings is None:
            raise InvalidInputError(
                "defect_category needs an embeddings cache: pass embeddings='path/to/embeddings.safetensors'"
            )
        if prompt_embeds is not None:
            shape = tuple(np.shape(prompt_embeds))
            if len(shape) not in (2, 3) or shape[-1] != self.joint_attention_dim:
                raise InvalidInputError(
                    f"prompt_embeds has shape {shape}; expected [T, {self.joint_attention_dim}] or "
                    f"[1, T, {self.joint_attention_dim}]"
                )
            if pooled_prompt_embeds is None:
                raise InvalidInputError(
                    "prompt_embeds needs pooled_prompt_embeds too (the CLIP pooled vector)"
                )
        if (
            pooled_prompt_embeds is not None
            and np.shape(pooled_prompt_embeds)[-1] != self.pooled_projection_dim
        ):
            raise InvalidInputError(
                f"pooled_prompt_embeds has shape {tuple(np.shape(pooled_prompt_embeds))}; expected "
                f"[{self.pooled_projection_dim}] or [1, {self.pooled_projection_dim}]"
            )
        if group_bias is not None:
            shape = tuple(np.shape(group_bias))
            if len(shape) < 2 or shape[-2:] != (NUM_GROUPS, NUM_GROUPS) or len(shape) > 4:
                raise InvalidInputError(
                    f"group_bias has shape {shape}; expected [{NUM_GROUPS}, {NUM_GROUPS}], [H, G, G] or [L, H, G, G]"
                )

    # ------------------------------------------------------------------ helpers
    def encode_prompt(self, prompt, prompt_embeds, pooled_prompt_embeds, defect_category):
        """→ (embeds float32 [T, D], pooled float32 [P]); zeros in reference mode."""
        if defect_category is not None:
            return self.embeddings.get(defect_category)
        if prompt is not None:
            embeds, pooled = self.text_encoders.encode([prompt], max_sequence_length=self.text_seq_len)
            return self.backend.to_numpy(embeds)[0], self.backend.to_numpy(pooled)[0]
        if prompt_embeds is not None:
            e = np.asarray(_numpy(prompt_embeds), dtype=np.float32)
            p = np.asarray(_numpy(pooled_prompt_embeds), dtype=np.float32)
            return e.reshape(-1, e.shape[-1]), p.reshape(-1)
        return (
            np.zeros((self.text_seq_len, self.joint_attention_dim), np.float32),
            np.zeros((self.pooled_projection_dim,), np.float32),
        )

    def prepare_noise(self, num_images: int, h: int, w: int, seed, generator) -> tuple[np.ndarray, list[int]]:
        """Gaussian noise ``[B, C, h, w]`` (latent size), one seed per image, drawn on the CPU so
        every backend gets identical noise. A torch ``generator`` draws like diffusers does."""
        shape = (self.latent_channels, h, w)
        if generator is not None and hasattr(generator, "initial_seed"):
            import torch

            noise = torch.randn((num_images, *shape), generator=generator, dtype=torch.float32).numpy()
            return noise, [int(generator.initial_seed())] * num_images
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))
        seeds = [int(seed) + i for i in range(num_images)]
        noise = np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds])
        return noise, seeds

    def _group_bias(self, group_bias):
        if group_bias is not None:
            return np.asarray(_numpy(group_bias), dtype=np.float32)
        lam = self.defaults.get("group_bias_lambda")
        return None if lam is None else default_group_bias(float(lam))

    def _set_adapters(self, segment) -> None:
        if segment is not None and segment.adapter_scales:
            self._adapter_setter(f"segment {segment.adapter_scales}")(segment.adapter_scales)

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
        d = self.defaults
        paste_mode = d.get("paste", "replace") if paste_mode is None else paste_mode
        if paste_mode not in PASTE_MODES:
            raise InvalidInputError(f"paste_mode={paste_mode!r} is not supported; use one of {PASTE_MODES}")
        height = d["height"] if height is None else height
        width = d["width"] if width is None else width
        if num_inference_steps is None:
            num_inference_steps = len(sigmas) if sigmas is not None else d["num_inference_steps"]
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        feather = d["feather"] if feather is None else feather
        # 1. validate
        self.check_inputs(
            image, mask_image, reference_image, reference_mask, prompt, prompt_embeds, pooled_prompt_embeds,
            defect_category, num_inference_steps, guidance_scale, num_images_per_prompt, output_type, group_bias,
        )  # fmt: skip
        # 2. crop + compose the diptych (validates sizes and masks)
        dip = prepare_diptych(
            image, mask_image, reference_image, reference_mask, height=height, width=width, **self.crop_rule
        )
        # 3. conditioning
        embeds, pooled = self.encode_prompt(prompt, prompt_embeds, pooled_prompt_embeds, defect_category)
        text_given = any(x is not None for x in (prompt, prompt_embeds, defect_category))
        if self.reference_encoder is not None and not dip.is_text_mode and not text_given:
            # the learned reference encoder fills the text slots + pooled vector from the crop
            crop = dip.image[:, : dip.width]  # [H, W, 3]
            if (d.get("reference_encoder") or {}).get("cutout"):  # its input convention: cut out
                crop = np.where(dip.reference_mask[..., None] > 0, crop, np.float32(MASKED_VALUE))
            embeds, pooled = self.reference_encoder.encode(crop)
            embeds, pooled = np.asarray(embeds, np.float32), np.asarray(pooled, np.float32)
        if self.image_prompt_encoder is not None and not dip.is_text_mode:
            # Redux: reference-crop tokens appended after the text slots (Insert-Anything layout)
            ref_crop = (dip.image[:, : dip.width] * 255).round().astype(np.uint8)
            tokens = self.backend.to_numpy(self.image_prompt_encoder.encode([ref_crop]))[0]
            embeds = np.concatenate([embeds, tokens.astype(np.float32)], axis=0)
        if segments is None:  # the checkpoint's default hierarchical schedule (data, e.g. APO strengths)
            segments = d.get("segments")
        segs = (
            segments
            if isinstance(segments, SegmentSchedule) or segments is None
            else SegmentSchedule.from_data(segments)
        )
        # 4. latents: noise, masked-image latents, packed mask
        n = num_images_per_prompt
        h, w = dip.height // self.vae_scale_factor, 2 * dip.width // self.vae_scale_factor
        noise, seeds = self.prepare_noise(n, h, w, seed, generator)
        cond = self._fill_conditioning(dip, n)  # [B, N_img, 320]
        x = self.backend.asarray(pack_latents(noise)) if latents is None else latents
        feed = self._static_feed(dip, embeds, pooled, n, guidance_scale, group_bias)
        # 5. schedule
        sig = flux_sigmas(num_inference_steps, dip.num_image_tokens, sigmas)
        # true CFG compares against zero embeddings: with zero conditioning (reference mode
        # without a reference encoder or Redux) both passes are the same call, so it is skipped
        cfg_possible = bool(np.any(embeds) or np.any(pooled))
        uncond = None
        if (
            not dip.is_text_mode
            and segs is not None
            and any((sg.reference_cfg_scale or 0.0) > 1 for sg in segs.segments)
        ):
            uncond = reference_free_input(
                self, dip, image, mask_image, noise, n, embeds, pooled, guidance_scale, group_bias
            )
        # 6. denoising loop
        for i in range(len(sig) - 1):
            seg = segs.at(i, len(sig) - 1) if segs is not None else None
            self._set_adapters(seg)
            v = self._predict(x, cond, feed, float(sig[i]), seg, n, cfg_possible, uncond)
            x = euler_step(x, v, float(sig[i]), float(sig[i + 1]))
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, float(sig[i]) * 1000, {"latents": x}) or {}
                x = out.get("latents", x)
        info = {
            "mode": "text" if dip.is_text_mode else "reference",
            "height": height, "width": width, "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale, "sigmas": [float(s) for s in sig], "seeds": seeds,
            "defect_category": defect_category, **self.backend.info,
        }  # fmt: skip
        if output_type == "latent":
            result = UniDGPipelineOutput(images=x, seeds=seeds, info=info)
            return result if return_dict else (result.images,)
        # 7. decode and paste back
        diptychs = self._decode(unpack_latents(x, h, w))  # [B, H, 2W, 3]
        if paste_mode == "residual":
            # add what the model changed to the input pixels: the VAE's reconstruction error of
            # the surface (the same in both decodes) cancels instead of blurring the paste region
            recon = self._decode(self._encode(dip.image))[0]  # [H, 2W, 3]: VAE round trip of the input
            diptychs = np.clip(dip.image[None] + diptychs - recon[None], 0, 1)
        pasted, alphas = zip(*(dip.paste(img, feather=feather) for img in diptychs), strict=True)
        images = format_images(list(pasted), output_type)
        result = UniDGPipelineOutput(
            images=images, masks=alphas[0], diptychs=diptychs, seeds=seeds, info=info
        )
        return result if return_dict else (images, alphas[0])

    @property
    def crop_rule(self) -> dict[str, Any]:
        """Keyword arguments of the adaptive crop rule (:func:`unidg_rt.crops.adaptive_crop_box`)
        from the model card's ``defaults["crop"]`` (the geometry the model was trained with)."""
        crop = self.defaults.get("crop") or {}
        unknown = set(crop) - {"context", "max_margin", "min_side"}
        if unknown:
            raise ConfigError(f"model card defaults['crop'] has unknown keys {sorted(unknown)}")
        return {k: (int(v) if k == "min_side" else float(v)) for k, v in crop.items()}

    def _encode(self, image: np.ndarray):
        """Pixels float32 ``[H, W, 3]`` in [0, 1] -> normalised latents ``[1, C, h, w]`` (backend array)."""
        x = image.transpose(2, 0, 1)[None] * 2 - 1  # [1, 3, H, W] in [-1, 1]
        return self.backend.vae_encoder.infer({"images": self.backend.asarray(x.astype(np.float32))})[
            "latent"
        ]

    def _decode(self, latent) -> np.ndarray:
        """Normalised latents ``[B, C, h, w]`` -> pixels float32 ``[B, H, W, 3]`` in [0, 1]."""
        images = self.backend.vae_decoder.infer({"latent": latent})["images"]
        return np.clip((self.backend.to_numpy(images).transpose(0, 2, 3, 1) + 1) / 2, 0, 1)

    def _fill_conditioning(self, dip: Diptych, n: int):
        """FLUX-Fill conditioning ``[B, N_img, 64 + 256]``: masked-image latents + packed mask."""
        lat = self._encode(dip.masked_image)
        mask = self.backend.asarray(dip.packed_mask()[None])  # [1, N_img, 256]
        cond = cat([pack_latents(lat), mask], axis=2)  # [1, N_img, 320]
        return cat([cond] * n, axis=0) if n > 1 else cond

    def _static_feed(self, dip, embeds, pooled, n, guidance_scale, group_bias) -> dict[str, Any]:
        a = self.backend.asarray
        h, w = dip.height // self.vae_scale_factor, 2 * dip.width // self.vae_scale_factor
        bias = self._group_bias(group_bias)
        feed = {
            "encoder_hidden_states": a(np.repeat(embeds[None], n, axis=0)),
            "pooled_projections": a(np.repeat(pooled[None], n, axis=0)),
            "img_ids": a(latent_image_ids(h, w), "float32"),
            "txt_ids": a(np.zeros((embeds.shape[0], 3), np.float32), "float32"),
            "guidance": a(np.full((n,), guidance_scale, np.float32), "float32")
            if self.guidance_embeds
            else None,
            "token_groups": None,
            "group_bias": None,
        }
        if bias is not None:
            groups = np.concatenate([text_token_groups(embeds.shape[0]), dip.token_groups])
            feed["token_groups"] = a(groups.astype(np.int64), "int")
            feed["group_bias"] = a(bias, "float32")
        return feed

    def _predict(self, x, cond, feed, sigma, seg, n, cfg_possible=True, uncond=None):
        a = self.backend.asarray
        step_feed = dict(feed)
        step_feed["hidden_states"] = cat([x, cond], axis=2)  # [B, N_img, 64 + 320]
        step_feed["timestep"] = a(np.full((n,), sigma, np.float32))
        if seg is not None and seg.guidance_scale is not None and self.guidance_embeds:
            step_feed["guidance"] = a(np.full((n,), seg.guidance_scale, np.float32), "float32")
        v = self.backend.transformer.infer(step_feed)["noise_pred"]
        if cfg_possible and seg is not None and seg.true_cfg_scale is not None and seg.true_cfg_scale > 1:
            # two-pass classifier-free guidance against zero (unconditional) embeddings
            neg = dict(step_feed)
            neg["encoder_hidden_states"] = feed["encoder_hidden_states"] * 0
            neg["pooled_projections"] = feed["pooled_projections"] * 0
            v_neg = self.backend.transformer.infer(neg)["noise_pred"]
            v = v_neg + seg.true_cfg_scale * (v - v_neg)
        if uncond is not None and seg is not None and (seg.reference_cfg_scale or 0.0) > 1:
            v = reference_guided(self.backend, v, x, step_feed, uncond, sigma, seg.reference_cfg_scale)
        return v


# ---------------------------------------------------------------------- module helpers
def _numpy(x):
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _load_embeddings(embeddings, model_path: Path) -> EmbeddingsCache | None:
    if isinstance(embeddings, EmbeddingsCache):
        return embeddings
    if embeddings is not None:
        return EmbeddingsCache.load(embeddings)
    beside = (model_path if model_path.is_dir() else model_path.parent) / "embeddings.safetensors"
    return EmbeddingsCache.load(beside) if beside.exists() else None
