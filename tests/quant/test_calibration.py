"""Calibration capture records the real inputs at the chosen steps; missing data is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.quant.calibration import build_cases, capture, load_calibration, load_manifest
from unidg_rt.runtime.pipeline import UniDGPipeline


def _manifest(tmp_path, **kw):
    m = {"seed": 5, "num_cases": 2, "categories": ["scratch", "hole"], "image_size": 96, "text_mode_fraction": 0.5,
         "num_inference_steps": 3, "capture_steps": [0, 2], **kw}  # fmt: skip
    p = tmp_path / "m.json"
    p.write_text(json.dumps(m))
    return load_manifest(p)


def test_capture_shapes_and_steps(tiny_checkpoint, tmp_path):
    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    manifest = _manifest(tmp_path)
    paths = capture(pipe, manifest, tmp_path / "cal")
    tr = load_calibration(tmp_path / "cal", "transformer")
    assert tr["hidden_states"].shape[0] == 2 * 2  # 2 cases x 2 captured steps
    assert tr["hidden_states"].shape[-1] == 384 and tr["token_groups"].shape[0] == 4
    assert np.allclose(
        sorted(set(tr["timestep"].ravel().round(6))), sorted(set(tr["timestep"].ravel().round(6)))
    )
    enc = load_calibration(paths["vae_encoder"])
    assert enc["images"].shape[:2] == (2, 1)
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert summary["samples"]["transformer"] == 4


def test_cases_are_deterministic(tmp_path):
    a, b = build_cases(_manifest(tmp_path)), build_cases(_manifest(tmp_path))
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))


def test_missing_calibration_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="random scales never ship"):
        load_calibration(tmp_path / "nothing")
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_manifest(tmp_path / "none.json")


def test_category_without_embeddings_falls_back_to_reference_mode(tiny_checkpoint, tmp_path):
    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    manifest = _manifest(
        tmp_path, categories=["crack"], text_mode_fraction=1.0, num_cases=1, capture_steps=[0]
    )
    capture(pipe, manifest, tmp_path / "cal")
    assert load_calibration(tmp_path / "cal")["hidden_states"].shape[0] == 1
