"""Typed errors. Every message names the offending argument and how to fix it."""

from __future__ import annotations


class UniDGError(Exception):
    """Base class of all unidg_rt errors."""


class InvalidInputError(UniDGError, ValueError):
    """A call argument is invalid (wrong size, empty mask, bad dtype/range…)."""


class WeightsError(UniDGError):
    """A weights file is missing, corrupt or does not match the architecture."""


class ConfigError(UniDGError, ValueError):
    """A settings or architecture config value is invalid."""


class BackendUnavailableError(UniDGError, ImportError):
    """An optional backend (onnxruntime, TensorRT, Triton, CUDA) is not installed / usable."""


class ExportError(UniDGError, RuntimeError):
    """An export failed or produced a graph that does not match its spec / attention form."""


class EngineMismatchError(UniDGError):
    """An engine plan does not match this GPU / builder / ONNX; it must be rebuilt."""


class UnknownCategoryError(InvalidInputError, KeyError):
    """A defect category is not in the vocabulary or the embeddings cache."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendCapabilityError(UniDGError, ValueError):
    """The call or the model card asks a backend for something it cannot do (never skipped silently)."""
