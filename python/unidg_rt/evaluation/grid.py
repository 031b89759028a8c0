"""Examples grid: reference | target (+ mask outline) | result per variant, one row per case.

Every cell is the pipeline's own crop box (what the model sees), so small defects are visible.
Reproducible: the cases come from seeds (:func:`build_eval_set`) and each row is generated with
``seed=case.seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unidg_rt.errors import InvalidInputError
from unidg_rt.evaluation.cases import EvalCase, build_eval_set, default_categories
from unidg_rt.evaluation.variants import Variant, adapter_strengths, apply_adapter_scales, default_variants

logger = logging.getLogger(__name__)

GAP = 4  #: pixels between cells and rows
HEADER_H = 18  #: column titles
LABEL_H = 14  #: caption strip above each row
OUTLINE = (255, 214, 0)
BACKGROUND = (255, 255, 255)


def grid_size(n_rows: int, n_cols: int, cell: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a grid with these rows, columns and cell side."""
    return n_cols * cell + (n_cols - 1) * GAP, HEADER_H + n_rows * (LABEL_H + cell) + (n_rows - 1) * GAP


def _outline(mask: np.ndarray) -> np.ndarray:
    pad = np.pad(mask, 1)
    inner = pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def _cell(image, box, cell: int, outline_mask=None) -> np.ndarray:
    from unidg_rt.crops import crop_resize, crop_resize_mask, quantise_uint8

    out = quantise_uint8(crop_resize(image, box, (cell, cell)))  # [cell, cell, 3]
    if outline_mask is not None:
        edge = _outline(crop_resize_mask(outline_mask, box, (cell, cell)))
        out[edge] = OUTLINE
    return out


def _text_cell(cell: int, lines: Sequence[str]) -> np.ndarray:
    im = Image.new("RGB", (cell, cell), (200, 200, 200))
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        draw.text((6, 6 + 12 * i), line, fill=(30, 30, 30))
    return np.asarray(im)


def save_examples_grid(
    path: str | Path,
    pipeline,
    cases: Sequence[EvalCase] | None = None,
    *,
    variants: Sequence[Variant] | None = None,
    num_inference_steps: int | None = None,
    cell: int = 128,
    categories: Sequence[str] | None = None,
    num_text_rows: int = 2,
) -> Path:
    """Write the PNG grid and return its path. ``cases`` None: one reference-mode case per
    category (``categories`` None: :func:`default_categories`), then ``num_text_rows``
    text-mode cases (seeds from ``EVAL_SEED_BASE``).
    ``variants`` None: :func:`default_variants` (SFT and SFT+APO columns)."""
    from unidg_rt.diptych import prepare_diptych

    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 16:
        raise InvalidInputError(f"cell={cell!r} must be an int >= 16 (pixels)")
    if cases is None:
        cats = list(categories) if categories else default_categories(pipeline)
        refs = build_eval_set(len(cats), cats, modes=("reference",))
        texts = (
            build_eval_set(len(cats) + num_text_rows, cats, modes=("text",))[len(cats) :]
            if num_text_rows
            else []
        )
        cases = refs + texts
    if not cases:
        raise InvalidInputError("cases is empty: pass at least one EvalCase")
    variants = list(variants) if variants is not None else default_variants(pipeline)
    titles = ["reference", "target + mask", *(f"result: {v.name}" for v in variants)]
    gen_hw = (pipeline.card.defaults.height, pipeline.card.defaults.width)
    saved = {id(v.pipeline or pipeline): adapter_strengths(v.pipeline or pipeline) for v in variants}
    width, height = grid_size(len(cases), len(titles), cell)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((j * (cell + GAP) + 4, 3), title, fill=(0, 0, 0))
    try:
        for r, case in enumerate(cases):
            kw = case.call_kwargs()
            dip = prepare_diptych(
                kw["image"],
                kw["mask_image"],
                kw.get("reference_image"),
                kw.get("reference_mask"),
                height=gen_hw[0],
                width=gen_hw[1],
            )
            if case.mode == "reference":
                ref = _cell(case.reference_image, dip.reference_box, cell)
            else:
                ref = _text_cell(cell, ["text mode:", case.category])
            cells = [ref, _cell(case.image, dip.target_box, cell, outline_mask=case.mask)]
            for var in variants:
                pipe = var.pipeline or pipeline
                apply_adapter_scales(pipe, var.adapter_scales)
                args = {**kw, "seed": case.seed, "output_type": "np", **var.call_kwargs}
                if num_inference_steps is not None:
                    args["num_inference_steps"] = num_inference_steps
                out = pipe(**args)
                cells.append(_cell(out.images[0], dip.target_box, cell))
            y = HEADER_H + r * (LABEL_H + cell + GAP)
            label = f"{case.category} | {case.mode} | {case.surface} | seed {case.seed}"
            draw.text((4, y + 1), label, fill=(0, 0, 0))
            for j, arr in enumerate(cells):
                canvas.paste(Image.fromarray(arr), (j * (cell + GAP), y + LABEL_H))
    finally:
        for var in variants:
            pipe = var.pipeline or pipeline
            if saved.get(id(pipe)):
                pipe.backend.set_adapter_scales(saved[id(pipe)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    logger.info("wrote examples grid (%d rows x %d columns) to %s", len(cases), len(titles), path)
    return path
