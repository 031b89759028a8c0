"""The shipped (embedded) default model is trained, within budget, loads and generates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unidg_rt.runtime.assets import assets_dir, default_model_path, samples_dir


def _card():
    from unidg_rt.models.loading import read_card

    return read_card(default_model_path())


def test_shipped_files_and_card():
    folder = assets_dir() / "default"
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total <= 25_000_000
    d = _card().defaults
    assert d["trained"] is True
    for key in (
        "height",
        "width",
        "num_inference_steps",
        "guidance_scale",
        "text_seq_len",
        "group_bias_lambda",
        "feather",
        "adapters",
        "segments",
        "description",
    ):
        assert key in d, key
    assert (folder / d["adapters"]["apo"]["file"]).is_file()
    report = json.loads((folder / "train_report.json").read_text())
    assert {"vae", "sft", "apo"} <= set(report["stages"])
    # the geometry and paste-back the model was trained / tuned with are in its card
    assert d["crop"] == report["recipe"]["data"]["crop"] and d["paste"] == report["recipe"]["ship"]["paste"]
    # the recipe defaults are the shipped recipe (unidg-rt train all reproduces it)
    from unidg_rt.train.recipe import Recipe

    # (keys added to the recipe later, absent from the report, default to what the run did:
    # e.g. sft.ref_width = 0, no reference encoder, so stage refenc is skipped)
    assert Recipe.from_dict(report["recipe"]) == Recipe()
    assert "reference_encoder" not in d and Recipe().sft.ref_width == 0


@pytest.fixture(scope="module")
def pipe():
    from unidg_rt.runtime.pipeline import UniDGPipeline

    return UniDGPipeline.from_pretrained()


def _samples():
    s = samples_dir()
    return [
        np.asarray(Image.open(s / n))
        for n in ("target.png", "target_mask.png", "reference.png", "reference_mask.png")
    ]


def test_shipped_model_generates_reference_and_text_mode(pipe):
    target, mask, ref, ref_mask = _samples()
    assert "apo" in pipe.backend.adapters.adapters  # the APO LoRA loaded from the card
    out = pipe(
        image=target,
        mask_image=mask,
        reference_image=ref,
        reference_mask=ref_mask,
        num_inference_steps=2,
        seed=0,
        output_type="np",
    )
    img = out.images[0]
    assert img.shape == target.shape and np.isfinite(img).all()
    outside = out.masks == 0
    np.testing.assert_array_equal((img * 255).round().astype(np.uint8)[outside], target[outside])
    txt = pipe(
        image=target,
        mask_image=mask,
        defect_category="scratch",
        num_inference_steps=2,
        seed=0,
        output_type="np",
    )
    assert txt.images[0].shape == target.shape and txt.info["mode"] == "text"
    d = pipe.defaults
    assert out.info["height"] == d["height"] and out.info["width"] == d["width"]
