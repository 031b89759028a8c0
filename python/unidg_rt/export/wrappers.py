"""Export-only ``nn.Module`` wrappers: one per component, with the spec's input/output names as
``forward`` arguments (the ONNX input names come from them).

Every wrapper keeps float I/O in float32 at every precision and casts at the graph edges
(numpy has no bfloat16; TensorRT folds the casts into the first/last layer). The same wrappers
run eagerly, so ORT parity checks compare against exactly what was exported.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from unidg_rt.export import ExportError
from unidg_rt.export.spec import IOSpec

logger = logging.getLogger(__name__)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class TransformerExport(nn.Module):
    """``FluxTransformer`` with a fixed input set: ``token_groups [N]`` and the full per-layer
    table ``group_bias [L, H, G, G]`` are always inputs (zeros = no bias).

    ``adapters`` (an :class:`~unidg_rt.models.adapters.AdapterManager` on ``model``): every
    loaded LoRA stays a low-rank branch of its target linears, run by the same hooks as the
    torch backend, with its strength taken from the input ``adapter_scales [A]`` (``adapter_names``
    order) and its time gate computed from ``timestep`` in-graph. Unfused adapters only: a fused
    one is part of the base weights already."""

    def __init__(self, model: nn.Module, adapters=None):
        super().__init__()
        self.model = model
        self.dtype = _model_dtype(model)
        self.adapters = adapters
        self.adapter_names: tuple[str, ...] = ()
        if adapters is not None:
            fused = [n for n in adapters.adapters if adapters.is_fused(n)]
            if fused:
                raise ExportError(
                    f"adapters {fused} are fused; unfuse_lora() before exporting them as branches"
                )
            self.adapter_names = tuple(adapters.adapters)
            # registered here too (the hooks call them): the graph names their weights and nodes
            # ``adapter_branches.<name>.<module>.lora_A`` — quantisation keeps them by that name
            self.adapter_branches = nn.ModuleDict({n: adapters.adapters[n].pairs for n in self.adapter_names})
            gates = {
                n: adapters.adapters[n].gate
                for n in self.adapter_names
                if adapters.adapters[n].gate is not None
            }
            self.adapter_gates = nn.ModuleDict(gates)

    def forward(
        self,
        hidden_states,
        encoder_hidden_states,
        pooled_projections,
        timestep,
        img_ids,
        txt_ids,
        guidance=None,
        token_groups=None,
        group_bias=None,
        adapter_scales=None,
    ):
        dt = self.dtype
        strengths = {}
        if self.adapter_names:
            if adapter_scales is None:
                raise ExportError(
                    f"adapter_scales is required: the graph carries adapters {self.adapter_names}"
                )
            strengths = {n: adapter_scales[i] for i, n in enumerate(self.adapter_names)}  # 0-d each
        ctx = self.adapters.strength_inputs(strengths) if self.adapter_names else contextlib.nullcontext()
        with ctx:
            out = self.model(
                hidden_states=hidden_states.to(dt),
                encoder_hidden_states=encoder_hidden_states.to(dt),
                pooled_projections=pooled_projections.to(dt),
                timestep=timestep,
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=guidance,
                token_groups=token_groups,
                group_bias=group_bias,
            )
        return out.float()  # noise_pred [B, N_img, out_dim]


class VAEEncoderExport(nn.Module):
    """images [-1, 1] → normalised latents ``(mode - shift) * scale`` (normalisation in-graph)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.dtype = _model_dtype(vae)

    def forward(self, images):
        z = self.vae.encode(images.to(self.dtype))  # [B, C, H/8, W/8], posterior mode
        return self.vae.normalize_latents(z).float()


class VAEDecoderExport(nn.Module):
    """normalised latents → images (de-normalisation in-graph), unclamped like diffusers."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.dtype = _model_dtype(vae)

    def forward(self, latent):
        z = self.vae.denormalize_latents(latent.to(self.dtype))
        return self.vae.decode(z).float()  # [B, 3, 8h, 8w]


class ReferenceEncoderExport(nn.Module):
    """``ReferenceEncoder``: reference crop ``images [B, 3, S, S]`` in [-1, 1] →
    (``encoder_hidden_states [B, T, D]``, ``pooled_projections [B, P]``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.dtype = _model_dtype(encoder)

    def forward(self, images):
        embeds, pooled = self.encoder(images.to(self.dtype))
        return embeds.float(), pooled.float()


def _eager_attention(model: nn.Module) -> None:
    """transformers' SDPA attention path trips torch.export's decomposition ("Cannot view a
    tensor ...", torch 2.13 with T5) — export the eager (MatMul/Softmax) path instead."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # transformers < 4.48
        model.config._attn_implementation = "eager"
    logger.info("%s: using eager attention for export", type(model).__name__)


class CLIPExport(nn.Module):
    """``CLIPTextModel`` → ``pooler_output`` (FluxPipeline's pooled prompt embedding)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        _eager_attention(model)
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, output_hidden_states=False).pooler_output.float()


class T5Export(nn.Module):
    """``T5EncoderModel`` → last hidden state (``encoder_hidden_states``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        _eager_attention(model)
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, output_hidden_states=False)[0].float()


_WRAPPERS = {
    "transformer": TransformerExport,
    "vae_encoder": VAEEncoderExport,
    "vae_decoder": VAEDecoderExport,
    "clip": CLIPExport,
    "t5": T5Export,
    "reference_encoder": ReferenceEncoderExport,
}


def wrap(component: str, model: nn.Module, spec: IOSpec) -> nn.Module:
    """The export wrapper of ``component`` (eval mode, no grad)."""
    if not spec.exportable or component not in _WRAPPERS:
        raise ExportError(
            f"component {component!r} has no exporter ({spec.notes or 'spec only'}); "
            f"exportable components: {sorted(_WRAPPERS)}"
        )
    if isinstance(model, tuple(_WRAPPERS.values())):
        return model
    return _WRAPPERS[component](model).eval().requires_grad_(False)


def torch_feed(spec: IOSpec, feed: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """numpy feed → torch tensors, only the spec's inputs, in the spec's order."""
    out = {}
    for name in spec.input_names:
        if name not in feed:
            raise ExportError(f"feed for {spec.component} lacks input {name!r}")
        out[name] = torch.as_tensor(feed[name]).to(device)
    return out
