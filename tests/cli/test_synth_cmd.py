"""``unidg-rt synth``: Settings' generation values (paste_mode, segments, size…) apply to every
job unless the job's own ``settings`` override them; ``--fast-path`` reaches the factory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unidg_rt.runtime.outputs import UniDGPipelineOutput

SEGMENTS = [
    {"start": 0.0, "end": 0.5, "guidance_scale": 4.0},
    {"start": 0.5, "end": 1.0, "guidance_scale": 3.0},
]


class RecordingPipeline:
    """Records each call's keyword arguments; returns the input image."""

    defaults = {"feather": 0, "paste": "replace"}

    def __init__(self):
        self.calls = []

    def __call__(self, image, mask_image, **kw):
        self.calls.append(kw)
        info = {"height": kw["height"], "width": kw["width"], "num_inference_steps": 1, "guidance_scale": 1.0}
        return UniDGPipelineOutput(
            images=[Image.fromarray(image)],
            masks=mask_image.astype(np.float32),
            seeds=[kw["seed"]],
            info=info,
        )


@pytest.fixture
def recorded(monkeypatch):
    import unidg_rt.runtime.session as session

    pipe, settings_seen = RecordingPipeline(), []

    def factory(settings):
        settings_seen.append(settings)
        return pipe

    monkeypatch.setattr(session, "build_pipeline", factory)
    for key in ("PASTE_MODE", "SEGMENTS", "FAST_PATH", "CONFIG"):
        monkeypatch.delenv(f"UNIDG_{key}", raising=False)
    return pipe, settings_seen


def _manifest(tmp_path):
    img = np.full((32, 32, 3), 120, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    own = {"paste_mode": "replace", "segments": SEGMENTS[:1], "height": 32}
    jobs = [
        {"id": "plain", "image": "img.png", "mask": "mask.png", "category": "hole", "seed": 1},
        {"id": "own", "image": "img.png", "mask": "mask.png", "category": "hole", "seed": 2, "settings": own},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    return path


def test_settings_apply_unless_a_job_overrides(run_cli, recorded, tmp_path):
    pipe, settings_seen = recorded
    toml = tmp_path / "settings.toml"
    toml.write_text(
        'paste_mode = "residual"\nheight = 16\nwidth = 16\n'
        + "".join(
            f"[[segments]]\nstart = {s['start']}\nend = {s['end']}\nguidance_scale = {s['guidance_scale']}\n"
            for s in SEGMENTS
        )
    )
    out = tmp_path / "out"
    run = run_cli("synth", _manifest(tmp_path), "--out", out, "--config", toml, "--fast-path", "off")
    assert run.code == 0, run.stderr
    assert settings_seen[0].fast_path == "off"
    by_seed = {kw["seed"]: kw for kw in pipe.calls}
    assert by_seed[1]["paste_mode"] == "residual" and by_seed[1]["segments"] == SEGMENTS
    assert (by_seed[1]["height"], by_seed[1]["width"]) == (16, 16)
    assert by_seed[2]["paste_mode"] == "replace" and by_seed[2]["segments"] == SEGMENTS[:1]
    assert (by_seed[2]["height"], by_seed[2]["width"]) == (32, 16)
    records = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert records["plain"]["settings"]["paste_mode"] == "residual"
    assert records["own"]["settings"]["segments"] == SEGMENTS[:1]


def test_paste_mode_flag_and_defaults(run_cli, recorded, tmp_path):
    pipe, _ = recorded
    run = run_cli("synth", _manifest(tmp_path), "--out", tmp_path / "out", "--paste-mode", "residual")
    assert run.code == 0, run.stderr
    by_seed = {kw["seed"]: kw for kw in pipe.calls}
    assert by_seed[1]["paste_mode"] == "residual" and by_seed[1]["segments"] is None  # None = the model's
    assert by_seed[2]["paste_mode"] == "replace"


def test_bad_paste_mode_is_one_line(run_cli, recorded, tmp_path):
    run = run_cli("synth", _manifest(tmp_path), "--out", tmp_path / "out", "--paste-mode", "blend")
    run.one_line_error("paste_mode", "'replace' or 'residual'")


def test_synth_device_cuda_without_cuda(run_cli, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = run_cli("synth", _manifest(tmp_path), "--out", tmp_path / "out", "--device", "cuda")
    run.one_line_error("device='cuda'", "--device cpu")
