"""The model card a training run writes: its ``defaults`` from the recipe, and their rewrite in
place on a finished checkpoint (the ship recipe and the encoder's input convention may change
after training; the weights stay)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unidg_rt.artifacts.io import atomic_path
from unidg_rt.train.recipe import Recipe

REFERENCE_ENCODER_FILE = "reference_encoder.safetensors"


def card_defaults(recipe: Recipe, with_apo: bool, reference_cutout: bool = False) -> dict[str, Any]:
    """The ``defaults`` of the model card (read by :class:`UniDGPipeline`); ``reference_cutout``:
    the reference encoder's input convention (its config's ``cutout``)."""
    s = recipe.ship
    d: dict[str, Any] = {
        "height": recipe.data.gen_size,
        "width": recipe.data.gen_size,
        "num_inference_steps": s.num_inference_steps,
        "guidance_scale": s.guidance_scale,
        "text_seq_len": recipe.data.text_seq_len,
        "group_bias_lambda": recipe.sft.group_bias_lambda,
        "feather": s.feather,
        "crop": dict(recipe.data.crop),
        "paste": s.paste,
        "trained": True,
        "description": (
            "unidg-rt embedded default: tiny UniDG (FLUX-Fill-layout MM-DiT + FLUX-family VAE) trained "
            f"from scratch on procedural defects by unidg_rt.train (seed {recipe.seed}); "
            + ("Diversity-SFT + APO gated LoRA" if with_apo else "Diversity-SFT only")
            + ". See train_report.json."
        ),
    }
    if recipe.sft.ref_width > 0:
        d["reference_encoder"] = {"file": REFERENCE_ENCODER_FILE, "cutout": bool(reference_cutout)}
    if with_apo:
        d["adapters"] = {"apo": {"file": "apo.safetensors", "strength": s.apo_strength}}
        d["segments"] = s.segments
    return d


def rewrite_card_defaults(path: Path, defaults: dict[str, Any]) -> None:
    """Replace the card ``defaults`` of a UniDG checkpoint in place (weights untouched): the
    ship recipe (steps, CFG, segments) does not influence training, so it can change after it."""
    from safetensors.torch import load_file, save_file

    from unidg_rt.models.config import ModelCard
    from unidg_rt.models.loading import METADATA_KEY, read_metadata

    meta = dict(read_metadata(path))
    card = ModelCard.from_json(meta[METADATA_KEY])
    meta[METADATA_KEY] = ModelCard(card.transformer, card.vae, defaults, card.format).to_json()
    tensors = load_file(str(path))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def sync_card_cutout(model_file: Path, cutout: bool) -> None:
    """Keep an existing checkpoint's card in step with a refitted encoder's input convention."""
    from unidg_rt.models.loading import read_card

    card = read_card(model_file) if model_file.is_file() else None
    entry = (card.defaults.get("reference_encoder") if card else None) or None
    if entry is not None and bool(entry.get("cutout")) != bool(cutout):
        rewrite_card_defaults(
            model_file, {**card.defaults, "reference_encoder": {**entry, "cutout": bool(cutout)}}
        )


def encoder_cutout(path: Path) -> bool:
    """The input convention (``cutout``) of the reference encoder saved at ``path``."""
    from unidg_rt.models.refenc import read_reference_encoder_config

    return bool(read_reference_encoder_config(path).cutout)
