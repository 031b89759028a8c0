"""The columns of an evaluation: a :class:`Variant` is "which pipeline, which extra call
arguments, which adapter strengths"; the default pair SFT vs SFT+APO, and the adapter strengths
read from and set on any backend that has LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unidg_rt.errors import InvalidInputError


@dataclass
class Variant:
    """One column of the comparison. ``pipeline`` None = the pipeline given to :func:`~unidg_rt.evaluation.evaluate`;
    ``call_kwargs`` are added to every call (``segments``, ``guidance_scale``, ``height``…);
    ``adapter_scales`` (any backend with adapters) are set before every call, None = leave them alone."""

    name: str
    pipeline: Any = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    adapter_scales: dict[str, float] | None = None
    note: str = ""


def adapter_strengths(pipeline) -> dict[str, float] | None:
    """Current strength of every LoRA adapter (loaded on torch, carried in an ONNX graph / plan);
    None when the backend has no adapters."""
    backend = getattr(pipeline, "backend", None)
    if backend is not None and getattr(backend, "adapter_scales", None):  # ORT / TensorRT graphs
        return backend.adapter_scales.get()
    if backend is None or not hasattr(backend, "adapters"):
        return None
    return {name: float(ad.strength) for name, ad in backend.adapters.adapters.items()}


def default_variants(pipeline) -> list[Variant]:
    """``SFT``: every adapter at strength 0 (the base model after Diversity-SFT); ``SFT+APO``: the
    checkpoint's adapters at their default strengths. Both sample with the checkpoint's default
    hierarchical ``segments`` (``defaults["segments"]``: guidance / CFG per segment), with every
    adapter strength in them set to 0 for ``SFT``, so the columns differ only by the adapters."""
    strengths = adapter_strengths(pipeline) or {}
    spec = pipeline.card.defaults.adapters
    apo = {n: float((spec.get(n) or {}).get("strength", s)) for n, s in strengths.items()}
    off = {n: 0.0 for n in strengths}
    segments = list(pipeline.card.defaults.segments or [])
    sft_segments = [{**seg, "adapter_scales": dict(off)} for seg in segments]
    seg_note = ", default segments" if segments else ", no segments"
    sft_note = ("adapters off" if strengths else "no adapters loaded") + seg_note
    apo_note = (f"adapters {apo}" if apo else "no APO adapter loaded: identical to SFT") + seg_note
    return [
        Variant("SFT", call_kwargs={"segments": sft_segments}, adapter_scales=off, note=sft_note),
        Variant("SFT+APO", call_kwargs={"segments": segments}, adapter_scales=apo, note=apo_note),
    ]


def apply_adapter_scales(pipe, scales: dict[str, float] | None) -> None:
    """Set LoRA strengths on ``pipe`` (any backend with adapters); ``None`` (or ``{}`` without adapters) = no-op."""
    if scales is None or (not scales and adapter_strengths(pipe) is None):
        return
    if adapter_strengths(pipe) is None:
        raise InvalidInputError(
            f"variant sets adapter strengths {scales} but this pipeline's backend has no LoRA adapters; "
            "export the model with its adapters (`unidg-rt export` carries the card's) or pass adapter_scales=None"
        )
    pipe.backend.set_adapter_scales(scales)
