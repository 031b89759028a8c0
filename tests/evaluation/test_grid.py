"""The examples grid writes a PNG of the expected size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from unidg_rt.evaluation import build_eval_set, grid_size, save_examples_grid


def test_grid_png_has_the_expected_size_and_is_reproducible(tmp_path, tiny_checkpoint):
    from unidg_rt.runtime.pipeline import UniDGPipeline

    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    cases = build_eval_set(2, ["scratch", "hole"], modes=("reference", "text"), size=64)
    cases[1].mode = "text"  # one row of each mode
    a = save_examples_grid(tmp_path / "a.png", pipe, cases, num_inference_steps=2, cell=32)
    b = save_examples_grid(tmp_path / "b.png", pipe, cases, num_inference_steps=2, cell=32)
    with Image.open(a) as im:
        assert im.size == grid_size(2, 4, 32)  # reference | target | SFT | SFT+APO
        pixels = np.asarray(im.convert("RGB"))
    with Image.open(b) as im:
        np.testing.assert_array_equal(pixels, np.asarray(im.convert("RGB")))
