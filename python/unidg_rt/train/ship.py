"""Shipping: copy a finished run into the package (``assets/default``), regenerate the bundled
sample images, and render a preview grid (reference | target + mask | SFT | SFT+APO | ground truth).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.artifacts.io import atomic_path
from unidg_rt.train.card import card_defaults, encoder_cutout, rewrite_card_defaults
from unidg_rt.train.recipe import ShipRecipe

logger = logging.getLogger(__name__)

SHIPPED_FILES = ("model.safetensors", "embeddings.safetensors", "apo.safetensors", "train_report.json")
OPTIONAL_FILES = (
    "reference_encoder.safetensors",
)  #: shipped when the run has one (recipe sft.ref_width > 0)
MAX_ASSET_BYTES = 25_000_000


def default_assets_dir() -> Path:
    from unidg_rt.runtime.assets import assets_dir

    return assets_dir() / "default"


def ship_assets(
    out: Path, dest: Path | None = None, max_bytes: int = MAX_ASSET_BYTES, recipe=None
) -> dict[str, int]:
    """Copy the run's shippable files into ``dest`` (default: the package's ``assets/default``);
    with ``recipe``, the model card's defaults are first refreshed from ``recipe.ship``."""
    if recipe is not None:
        enc_file = Path(out) / "reference_encoder.safetensors"
        cutout = enc_file.is_file() and encoder_cutout(enc_file)
        rewrite_card_defaults(Path(out) / "model.safetensors", card_defaults(recipe, True, cutout))
        report_path = Path(out) / "train_report.json"
        report = json.loads(report_path.read_text())
        report.setdefault("recipe", {})["ship"] = recipe.to_dict()["ship"]
        report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    dest = Path(dest) if dest is not None else default_assets_dir()
    missing = [f for f in SHIPPED_FILES if not (Path(out) / f).is_file()]
    files = list(SHIPPED_FILES) + [f for f in OPTIONAL_FILES if (Path(out) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{out} lacks {missing}: run `unidg-rt train all --out {out}` first")
    total = sum((Path(out) / f).stat().st_size for f in files)
    if total > max_bytes:
        raise ValueError(f"shipped files total {total / 1e6:.1f} MB > {max_bytes / 1e6:.0f} MB budget")
    dest.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name in files:
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(Path(out) / name, tmp)
        sizes[name] = (dest / name).stat().st_size
    logger.info("shipped %s to %s (%.2f MB)", list(sizes), dest, sum(sizes.values()) / 1e6)
    return sizes


def sample_pair(recipe: ShipRecipe):
    """The bundled sample: a normal item + where to put the defect, and a reference defect of a
    visible category on *another* item (deterministic in the recipe)."""
    from unidg_rt.data import make_reference_pair

    return make_reference_pair(
        recipe.sample_seed,
        recipe.sample_category,
        recipe.sample_surface,
        recipe.sample_target_surface,
        tuple(recipe.sample_size),
    )


def write_samples(dest: Path, recipe: ShipRecipe) -> dict[str, Any]:
    from PIL import Image

    pair = sample_pair(recipe)
    dest.mkdir(parents=True, exist_ok=True)
    images = {
        "target.png": Image.fromarray(pair.target.normal),
        "target_mask.png": Image.fromarray(pair.target.mask.astype(np.uint8) * 255),
        "reference.png": Image.fromarray(pair.reference.abnormal),
        "reference_mask.png": Image.fromarray(pair.reference.mask.astype(np.uint8) * 255),
    }
    for name, im in images.items():
        im.save(dest / name)
    info = {
        "category": pair.category,
        "reference_surface": pair.reference.surface,
        "target_surface": pair.target.surface,
        "seed": recipe.sample_seed,
        "size": list(recipe.sample_size),
    }
    logger.info("wrote samples to %s: %s", dest, json.dumps(info))
    return info


# ----------------------------------------------------------------------------- preview
def _outline(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from unidg_rt.crops import dilate_mask

    edge = dilate_mask(mask, 3, 1) & ~mask
    out = img.copy()
    out[edge] = (255, 0, 0)
    return out


def _fit(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC))


def preview_grid(
    model_path: Path, path: Path, pairs, seed: int = 0, side: int = 128, text_mode: bool = False
) -> Path:
    """Rows per pair: reference | target (mask outlined) | SFT | SFT+APO (default segments) | GT.
    Columns are the full images resized to ``side``; ``text_mode`` uses the category instead."""
    from PIL import Image

    from unidg_rt.runtime.pipeline import UniDGPipeline

    pipe = UniDGPipeline.from_pretrained(model_path)
    has_apo = hasattr(pipe.backend, "adapters") and "apo" in pipe.backend.adapters.adapters
    rows = []
    for pair in pairs:
        args = dict(image=pair.target.normal, mask_image=pair.target.mask, seed=seed, output_type="np")
        if text_mode:
            args["defect_category"] = pair.category
        else:
            args.update(reference_image=pair.reference.abnormal, reference_mask=pair.reference.mask)
        cols = [
            pair.reference.abnormal if not text_mode else np.full_like(pair.target.normal, 128),
            _outline(pair.target.normal, pair.target.mask),
        ]
        if has_apo:
            pipe.backend.adapters.set_scales({"apo": 0.0})
            cols.append((pipe(**args, segments=[]).images[0] * 255).round().astype(np.uint8))
            pipe.backend.adapters.set_scales({"apo": 1.0})
        cols.append((pipe(**args).images[0] * 255).round().astype(np.uint8))
        cols.append(pair.target.abnormal)
        rows.append(np.concatenate([_fit(c, side) for c in cols], axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
