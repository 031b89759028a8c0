"""Re-export: the packaged assets' locations live on floor 0, :mod:`unidg_rt.artifacts.assets`."""

from __future__ import annotations

from unidg_rt.artifacts.assets import DEFAULT_MODEL_FILE, assets_dir, default_model_path, samples_dir

__all__ = ["DEFAULT_MODEL_FILE", "assets_dir", "default_model_path", "samples_dir"]
