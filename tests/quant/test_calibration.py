"""Calibration capture records the real inputs at the chosen steps; missing data is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unidg_rt.errors import InvalidInputError
from unidg_rt.quant.calibration import build_cases, capture, load_calibration, load_manifest
from unidg_rt.runtime.pipeline import UniDGPipeline


def _manifest(tmp_path, **kw):
    m = {
        "seed": 5,
        "num_cases": 2,
        "categories": ["scratch", "hole"],
        "image_size": 96,
        "text_mode_fraction": 0.5,
        "num_inference_steps": 3,
        "capture_steps": [0, 2],
        **kw,
    }
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


# ----------------------------------------------------------------------------- shipped manifests
def test_default_manifest_by_name_from_any_directory(tmp_path, monkeypatch):
    """``unidg-rt calibrate`` without --manifest: calibration/default.json of the checkout, found by
    name from any working directory; its listed cases are the bundled sample images."""
    from unidg_rt.artifacts.assets import samples_dir
    from unidg_rt.quant.calibration import DEFAULT_MANIFEST, case_path

    monkeypatch.chdir(tmp_path)
    m = load_manifest(DEFAULT_MANIFEST)
    assert m["_path"].endswith("calibration/default.json") and m["cases"]
    for c in m["cases"]:
        for key in ("image", "mask", "reference", "reference_mask"):
            if key in c:
                assert case_path(tmp_path, c[key]).parent == samples_dir()
    cases = build_cases(m)
    assert len(cases) == len(m["cases"]) + m["num_cases"]
    modes = {"reference" if "reference_image" in c else "text" for c in cases[: len(m["cases"])]}
    assert modes == {"reference", "text"}


def test_default_manifest_procedural_cases_unchanged():
    """The listed cases come first; the procedural ones after them are exactly those the manifest drew
    before it listed any (same seeds, same modes, same pixels), so their captures are unchanged."""
    m = load_manifest()
    listed = len(m["cases"])
    before = build_cases({**m, "cases": []})
    after = build_cases(m)[listed:]
    assert len(before) == len(after) == m["num_cases"] == 12
    for a, b in zip(before, after, strict=True):
        assert a.keys() == b.keys() and a["seed"] == b["seed"]
        assert all(np.array_equal(a[k], b[k]) for k in a if k != "seed")


def test_unknown_manifest_name_lists_available():
    from unidg_rt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"calibration manifest 'nope' not found; available: .*default"):
        load_manifest("nope")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ({"image": "a.png", "mask": "m.png", "reference": "r.png"}, "lacks ['reference_mask']"),
        ({"image": "a.png", "mask": "m.png"}, "lacks ['reference', 'category']"),
        ({"mask": "m.png", "category": "hole"}, "lacks ['image']"),
        ({"image": "a.png", "mask": "m.png", "category": "hole", "prompt": "x"}, "unknown key(s) ['prompt']"),
        ({"name": "line 3", "image": "a.png", "mask": "m.png", "category": "hole"}, "(line 3): image"),
    ],
)
def test_bad_cases_are_named(tmp_path, case, needle):
    manifest = _manifest(tmp_path, cases=[case], num_cases=0)
    with pytest.raises(InvalidInputError) as err:
        build_cases(manifest)
    assert needle in str(err.value) and "calibration case 0" in str(err.value)


def test_capture_listed_sample_cases(tiny_checkpoint, tmp_path):
    """Listed cases (the bundled samples, 256x192) and procedural ones (96 px) capture together: the
    pipeline crops both to its generation size."""
    sample = "unidg_rt:assets/samples/"
    cases = [
        {
            "image": sample + "target.png",
            "mask": sample + "target_mask.png",
            "reference": sample + "reference.png",
            "reference_mask": sample + "reference_mask.png",
            "seed": 0,
        },
        {"image": sample + "target.png", "mask": sample + "target_mask.png", "category": "hole", "seed": 1},
    ]
    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    manifest = _manifest(tmp_path, cases=cases, num_cases=1, capture_steps=[0])
    capture(pipe, manifest, tmp_path / "cal")
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert summary["num_cases"] == 3 and summary["samples"]["vae_decoder"] == 3
    assert load_calibration(tmp_path / "cal")["hidden_states"].shape[0] >= 3
