"""Training of the embedded default model (needs torch): procedural diptychs → tiny VAE →
Diversity-SFT of the MM-DiT (learned category table) → APO time-gated LoRA → shipped assets.

Entry points: :func:`unidg_rt.train.run.run_stage` (``unidg-rt train vae|sft|apo|all``) and the
recipe dataclasses in :mod:`unidg_rt.train.recipe`. Submodules import torch; this package
``__init__`` imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["apo", "common", "dataset", "recipe", "run", "sft", "ship", "vae"]
