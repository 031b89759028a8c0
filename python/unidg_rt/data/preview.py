"""Contact sheet of synthetic quadruplets for eyeballing the generator."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unidg_rt.data.quadruplets import generate_dataset
from unidg_rt.errors import InvalidInputError

logger = logging.getLogger(__name__)

_CAPTION_H = 14


def save_preview_grid(
    path: Path | str,
    n: int = 8,
    seed: int = 0,
    size: int = 192,
    categories: Sequence[str] | None = None,
    surfaces: Sequence[str] | None = None,
    columns: int = 2,
) -> Path:
    """Write a PNG of `n` quadruplets, each shown as normal | abnormal | mask with its
    caption below, `columns` quadruplets per row. Returns the path written.
    `categories` / `surfaces` restrict what is drawn.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"n={n!r} must be a positive integer (quadruplets in the grid).")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise InvalidInputError(f"columns={columns!r} must be a positive integer.")
    cells = []
    for q in generate_dataset(n, seed, categories=categories, surfaces=surfaces, size=size):
        mask_rgb = np.repeat(q.mask[..., None].astype(np.uint8) * 255, 3, axis=2)
        strip = np.concatenate([q.normal, q.abnormal, mask_rgb], axis=1)
        label = Image.new("RGB", (strip.shape[1], _CAPTION_H), (32, 32, 32))
        ImageDraw.Draw(label).text((4, 1), f"[{q.category} / {q.surface}] {q.caption}", fill=(235, 235, 235))
        cells.append(np.concatenate([strip, np.asarray(label)], axis=0))
    while len(cells) % columns:  # pad the last row
        cells.append(np.zeros_like(cells[0]))
    gap = np.full((cells[0].shape[0], 6, 3), 255, np.uint8)
    rows = []
    for r in range(0, len(cells), columns):
        parts = [x for c in cells[r : r + columns] for x in (c, gap)][:-1]
        rows.append(np.concatenate(parts, axis=1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    logger.info("wrote preview grid of %d quadruplets to %s", n, path)
    return path
