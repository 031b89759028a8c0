"""LoRA on a pipeline, with diffusers' names (``FluxLoraLoaderMixin``): load / fuse on the torch
backend, strengths (``set_adapters``, segments) on every backend whose transformer carries the
adapters (torch hooks, or branches in an exported graph / plan with ``adapter_scales`` as input)."""

from __future__ import annotations

from unidg_rt.errors import BackendCapabilityError, InvalidInputError


class LoraLoaderMixin:
    """Mixed into :class:`~unidg_rt.runtime.pipeline.UniDGPipeline`; needs ``self.backend``."""

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

    def set_segment_adapters(self, segment) -> None:
        """The adapter strengths of a schedule segment (``None`` or none given: unchanged)."""
        if segment is not None and segment.adapter_scales:
            self._adapter_setter(f"segment {segment.adapter_scales}")(segment.adapter_scales)
