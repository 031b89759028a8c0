"""Manifest parsing, plans, mask strategies — and fuzzing of the parser with random bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.jobs.inputs import draw_mask
from unidg_rt.jobs.manifest import (
    Job,
    MaskStrategy,
    Plan,
    default_seed,
    expand_plan,
    load_manifest,
    load_plan,
    parse_manifest_bytes,
)


def test_valid_lines_shorthands_and_relative_paths(tmp_path, kit):
    path = kit.write_manifest(
        tmp_path / "m.jsonl",
        [
            "# a comment, then a blank line",
            "",
            {
                "id": "a",
                "image": "img/a.png",
                "mask": "img/a_mask.png",
                "category": "scratch",
                "seed": 3,
                "count": 2,
            },
            {"id": "b", "image": "/abs/b.png", "mask_strategy": "center_box", "category": "hole"},
            {
                "id": "c",
                "image": "c.png",
                "mask": {"strategy": "random_blob", "scale": [0.1, 0.3]},
                "reference_image": "r.png",
                "reference_mask": "r_mask.png",
                "settings": {"num_inference_steps": 4},
            },
        ],
    )
    m = load_manifest(path)
    assert not m.errors and [j.id for j in m.jobs] == ["a", "b", "c"]
    a, b, c = m.jobs
    assert a.image == (tmp_path / "img/a.png").resolve() and a.count == 2 and a.seed == 3 and a.mode == "text"
    assert str(b.image) == "/abs/b.png" and b.mask_strategy == MaskStrategy(strategy="center_box")
    assert b.seed == default_seed("b")  # no seed: stable crc32 of the id
    assert c.mode == "reference" and c.label == "defect" and c.mask_strategy.scale == (0.1, 0.3)
    assert c.settings.num_inference_steps == 4
    assert a.fingerprint() != a.model_copy(update={"seed": 4}).fingerprint()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "Expecting"),
        ("[1, 2]", "must be a JSON object"),
        ({"id": "x", "mask": "m.png", "category": "scratch"}, "image: Field required"),
        ({"id": "x", "image": "i.png", "category": "scratch"}, 'exactly one of "mask"'),
        ({"id": "x", "image": "i.png", "mask": "m.png"}, "no defect"),
        ({"id": "x", "image": "i.png", "mask": "m.png", "reference_image": "r.png"}, "go together"),
        ({"id": "../etc", "image": "i.png", "mask": "m.png", "category": "s"}, "file name"),
        (
            {
                "id": "x",
                "image": "i.png",
                "mask_strategy": {"strategy": "random_blob", "scale": [0, 2]},
                "category": "s",
            },
            "0 < low <= high <= 1",
        ),
        ({"id": "x", "image": "i.png", "mask_strategy": "star", "category": "s"}, "strategy"),
        ({"id": "x", "image": "i.png", "mask": "m.png", "category": "good"}, "reserved"),
        ({"id": "x", "image": "i.png", "mask": "m.png", "category": "s", "seed": -1}, "seed"),
        (
            {"id": "x", "image": "i.png", "mask": "m.png", "category": "s", "settings": {"height": 20}},
            "multiple of 16",
        ),
        ({"id": "x", "image": "i.png", "mask": "m.png", "category": "s", "colour": "red"}, "colour"),
    ],
)
def test_bad_lines_become_errors_with_reason(line, needle):
    m = parse_manifest_bytes((line if isinstance(line, str) else json.dumps(line)).encode())
    assert not m.jobs and len(m.errors) == 1
    err = m.errors[0]
    assert err.line == 1 and needle in err.reason and err.reason.startswith("manifest line 1:")


def test_error_ids_and_duplicates(kit):
    lines = [
        {"id": "a", "image": "i.png", "mask": "m.png", "category": "s"},
        {"id": "a", "image": "j.png", "mask": "m.png", "category": "s"},
        {"id": "b", "image": "i.png"},
        "garbage",
    ]
    m = parse_manifest_bytes("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode())
    assert [j.id for j in m.jobs] == ["a"] and m.jobs[0].image.name == "i.png"
    assert [(e.line, e.id) for e in m.errors] == [(2, "#line-2"), (3, "b"), (4, "#line-4")]
    assert "duplicate id 'a'" in m.errors[0].reason


def test_plan_expansion_is_stable_and_local(tmp_path, kit):
    from PIL import Image

    d = tmp_path / "normals"
    d.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.fromarray(kit.texture(0)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    plan = Plan(defects_per_image=3, categories=["scratch", "hole", "black_spot"], seed=5)
    m = expand_plan(d, plan)
    assert [j.id for j in m.jobs] == [f"{n}-{i:03d}" for n in ("a.jpg", "b.png") for i in range(3)]
    assert all(j.product == "normals" and j.mask_strategy.strategy == "random_blob" for j in m.jobs)
    assert len({j.seed for j in m.jobs}) == 6
    assert expand_plan(d, plan).jobs == m.jobs  # deterministic
    Image.fromarray(kit.texture(1)).save(d / "0first.png")  # a new image changes no other job
    m2 = expand_plan(d, plan)
    assert [j for j in m2.jobs if not j.id.startswith("0first")] == m.jobs
    other = expand_plan(d, plan.model_copy(update={"seed": 6}))
    assert [j.seed for j in other.jobs] != [j.seed for j in m2.jobs]


def test_load_plan_files_and_overrides(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"defects_per_image": 2, "categories": ["scratch"]}))
    (tmp_path / "p.toml").write_text('categories = ["hole"]\nseed = 3\nmask_strategy = "center_box"\n')
    assert load_plan(tmp_path / "p.json", seed=9).seed == 9
    p = load_plan(tmp_path / "p.toml", defects_per_image=4)
    assert p.categories == ["hole"] and p.defects_per_image == 4 and p.mask_strategy.strategy == "center_box"
    with pytest.raises(ConfigError, match="categories"):
        load_plan(None)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_plan(tmp_path / "bad.json")


@pytest.mark.parametrize("strategy", ["random_blob", "random_box", "center_box"])
def test_mask_strategies_deterministic_and_sized(strategy):
    s = MaskStrategy(strategy=strategy, scale=(0.2, 0.3))
    a, b = draw_mask(s, 60, 80, seed=1), draw_mask(s, 60, 80, seed=1)
    assert a.shape == (60, 80) and a.dtype == bool and np.array_equal(a, b)
    ys, xs = np.nonzero(a)
    extent = max(np.ptp(ys) + 1, np.ptp(xs) + 1) / 60
    assert 0.1 <= extent <= 0.5
    assert draw_mask(MaskStrategy(strategy=strategy, scale=(0.001, 0.001)), 8, 8, seed=0).sum() >= 1


def test_box_strategy_bounds():
    s = MaskStrategy(strategy="box", box=(2, 3, 10, 12))
    assert draw_mask(s, 20, 20, 0).sum() == 8 * 9
    with pytest.raises(InvalidInputError, match="outside the 8x20 image"):
        draw_mask(s, 20, 8, 0)
    with pytest.raises(ValueError, match="needs"):
        MaskStrategy(strategy="box")


# ----------------------------------------------------------------------------- fuzzing
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = [
    "id",
    "image",
    "mask",
    "mask_strategy",
    "reference_image",
    "reference_mask",
    "category",
    "product",
    "seed",
    "count",
    "settings",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_never_raise(data):
    m = parse_manifest_bytes(data)
    lines = [ln.strip() for ln in data.split(b"\n")]
    assert len(m) == sum(1 for ln in lines if ln and not ln.startswith(b"#"))
    assert all(e.reason.startswith(f"manifest line {e.line}:") for e in m.errors)
    assert len({j.id for j in m.jobs} | {e.id for e in m.errors}) == len(m)  # ids stay unique


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=8), st.binary(max_size=8))
def test_fuzz_job_like_objects(obj, junk):
    try:
        line = json.dumps(obj).encode()
    except (ValueError, TypeError):
        return
    m = parse_manifest_bytes(line + b"\n" + junk)
    for job in m.jobs:
        assert isinstance(job, Job) and 0 <= job.seed < 2**31 and job.count >= 1


def test_fingerprints_stable_across_the_paste_mode_and_segments_keys():
    """Jobs and defaults without paste_mode / segments hash as before those keys existed (a
    resumed batch does not redo finished jobs); setting either changes the hash."""
    import hashlib

    from unidg_rt.jobs.manifest import GenerationOverrides

    job = Job(
        id="a",
        image="/x/a.png",
        mask="/x/m.png",
        category="scratch",
        seed=3,
        settings={"num_inference_steps": 4},
    )
    defaults = GenerationOverrides(height=16, width=16)
    before = {
        "height": None,
        "width": None,
        "num_inference_steps": None,
        "guidance_scale": None,
        "feather": None,
    }
    old_job = job.model_dump(mode="json")
    old_job["settings"] = {**before, "num_inference_steps": 4}
    old = {"job": old_job, "defaults": {**before, "height": 16, "width": 16}}
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert job.fingerprint(defaults) == expected
    assert job.fingerprint(GenerationOverrides(height=16, width=16, paste_mode="residual")) != expected
    seg = [{"start": 0.0, "end": 1.0, "guidance_scale": 2.0}]
    assert (
        job.model_copy(
            update={"settings": GenerationOverrides(num_inference_steps=4, segments=seg)}
        ).fingerprint(defaults)
        != expected
    )
