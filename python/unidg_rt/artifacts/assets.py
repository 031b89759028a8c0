"""Where the embedded default model and sample images live (inside the package; floor 0)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from unidg_rt.errors import WeightsError

DEFAULT_MODEL_FILE = "model.safetensors"


def assets_dir() -> Path:
    return Path(str(resources.files("unidg_rt") / "assets"))


def default_model_path() -> Path:
    path = assets_dir() / "default" / DEFAULT_MODEL_FILE
    if not path.exists():
        raise WeightsError(
            f"the embedded default model is missing ({path}); reinstall unidg-rt or pass a weights path"
        )
    return path


def samples_dir() -> Path:
    return assets_dir() / "samples"
