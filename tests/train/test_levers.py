"""Issue-18 training levers: copy pairs in the training set, EMA math, the fresh-data ring,
held-out curve, warm start, --device; seeded runs (and a resumed one) are bit-identical."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from unidg_rt.cli.app import app
from unidg_rt.train.dataset import build_diptych_set, pair_rows, training_categories
from unidg_rt.train.levers import EMA, FreshStream
from unidg_rt.train.recipe import Recipe
from unidg_rt.train.run import run_stage

from .conftest import TINY_RECIPE


def _recipe(**sft):
    d = json.loads(json.dumps(TINY_RECIPE))
    d["sft"].update({"ref_width": 0, "steps": 3, **sft})
    d["data"]["copy_fraction"] = 0.5
    return Recipe.from_dict(d)


def test_copy_fraction_changes_only_the_copy_pairs():
    r = _recipe()
    cats = training_categories()
    same = copies = 0
    for i in range(8):
        a, b = pair_rows(r.data, 0, i, cats, 0.0), pair_rows(r.data, 0, i, cats, 0.5)
        if all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True)):
            same += 1
        else:
            copies += 1
    assert same and copies  # half-ish of the pairs became copies, the others are untouched
    dset = build_diptych_set(r.data, 0, 8)
    assert len(dset) == 32 and dset.category.tolist()[:4] == [0] * 4


def test_ema_math():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([p], 0.9)
    history = []
    for v in ([3.0, 0.0], [5.0, -1.0], [0.5, 4.0]):
        with torch.no_grad():
            p.copy_(torch.tensor(v))
        ema.update()
        history.append(v)
    expect = torch.tensor([1.0, 2.0])
    for v in history:
        expect = 0.9 * expect + 0.1 * torch.tensor(v)
    torch.testing.assert_close(ema.shadow[0], expect, rtol=0, atol=1e-6)
    with ema.applied():
        torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(p.detach(), torch.tensor([0.5, 4.0]))  # restored after the block


def test_fresh_stream_replaces_one_pair_in_ring_order(tiny_latents):
    from unidg_rt.models.presets import tiny_vae_config
    from unidg_rt.models.vae import AutoencoderKLFlux

    torch.manual_seed(0)
    vae = AutoencoderKLFlux(tiny_vae_config()).eval()
    r = _recipe()
    lat = type(tiny_latents)(
        **{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in tiny_latents.__dict__.items()}
    )
    before = lat.x0.clone()
    stream = FreshStream(vae, r.data, 0, every=2, num_pairs=len(lat) // 4)
    assert not stream.refresh(lat, 0) and not stream.refresh(lat, 1)
    assert stream.refresh(lat, 2)  # refresh 0 -> slot 0 (rows 0..3)
    assert not torch.equal(lat.x0[:4], before[:4]) and torch.equal(lat.x0[4:], before[4:])
    assert stream.refresh(lat, 4)  # refresh 1 -> slot 1 (rows 4..7)
    assert not torch.equal(lat.x0[4:8], before[4:8])


def test_levers_run_is_seeded_and_resume_exact(tmp_path):
    r = _recipe(ema=0.9, fresh_every=1, eval_every=2, heldout_pairs=2)
    run_stage("vae", r, tmp_path / "a")
    rep = run_stage("sft", r, tmp_path / "a")["stages"]["sft"]
    assert [c["step"] for c in rep["curve"]] == [0, 2, 3] and rep["fresh_pairs"] == 3
    assert set(rep["curve"][0]) == {"step", "wall_s", "heldout_ref", "heldout_text", "heldout_copy_ref"}
    assert rep["device"] == "cpu"
    run_stage("vae", r, tmp_path / "b")
    run_stage("sft", r, tmp_path / "b")
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "a" / "sft.safetensors")),
        load_file(str(tmp_path / "b" / "sft.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    # interrupted after 2 steps (checkpoint), then resumed to 3: the same weights
    from unidg_rt.train.levers import heldout_latents
    from unidg_rt.train.run import Run, arch_configs
    from unidg_rt.train.sft import train_sft
    from unidg_rt.train.vae import load_vae_file

    run = Run(r, tmp_path / "a")
    vae = load_vae_file(run.path("vae.safetensors"))
    tcfg, _ = arch_configs(r)
    ckpt = tmp_path / "c" / "sft.pt"

    def go(steps):
        rr = Recipe.from_dict(r.to_dict())
        rr.sft.steps = steps
        lat = run.latents(vae)
        fresh = FreshStream(vae, r.data, r.seed, 1, len(lat) // 4)
        return train_sft(
            lat,
            rr.sft,
            tcfg,
            r.seed,
            r.data.text_seq_len,
            ckpt,
            0.0,
            fresh=fresh,
            heldout=heldout_latents(vae, r.data, r.seed, 2),
        )

    go(2)  # checkpoint_every_s 0: saved after every step
    model, _, _ = go(3)  # resumes at step 2 with the EMA, the optimiser and the fresh bank
    ref = {k[len("transformer.") :]: v for k, v in a.items() if k.startswith("transformer.")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_warm_start_loads_the_checkpoint(tmp_path):
    r = _recipe()
    run_stage("vae", r, tmp_path / "src")
    run_stage("sft", r, tmp_path / "src")
    d = r.to_dict()
    d["vae"]["from_checkpoint"] = str(tmp_path / "src" / "model.safetensors")
    d["sft"].update(init_from=str(tmp_path / "src" / "sft.safetensors"), steps=0)
    assert (tmp_path / "src" / "embeddings.safetensors").is_file()
    r2 = Recipe.from_dict(d)
    rep = run_stage("vae", r2, tmp_path / "dst")
    assert rep["stages"]["vae"]["steps"] == 0
    run_stage("sft", r2, tmp_path / "dst")
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "src" / "sft.safetensors")),
        load_file(str(tmp_path / "dst" / "sft.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("transformer."))
    ea = load_file(str(tmp_path / "src" / "embeddings.safetensors"))
    eb = load_file(str(tmp_path / "dst" / "embeddings.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_train_cli_device(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(_recipe().to_dict()))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "vae", "--recipe", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app, ["train", "sft", "--recipe", str(recipe), "--out", str(out), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "train_report.json").read_text())["stages"]["sft"]["device"] == "cpu"
    res = CliRunner().invoke(
        app, ["train", "sft", "--recipe", str(recipe), "--out", str(out), "--device", "tpu"]
    )
    assert res.exit_code != 0
    if not torch.cuda.is_available():
        res = CliRunner().invoke(
            app, ["train", "sft", "--recipe", str(recipe), "--out", str(out), "--device", "cuda"]
        )
        assert res.exit_code != 0 and "no CUDA" in str(res.exception or res.output)


def test_gpu_recipe_file_loads():
    from pathlib import Path

    import unidg_rt.train as t

    r = Recipe.load(Path(t.__file__).parent / "recipes" / "gpu.json")
    assert r.device == "cuda" and r.sft.ema > 0 and r.data.copy_fraction > 0 and r.sft.fresh_every > 0


def test_max_wall_s_stops_and_saves(tmp_path):
    r = _recipe(eval_every=2, heldout_pairs=2, max_wall_s=1e-9)
    run_stage("vae", r, tmp_path)
    rep = run_stage("sft", r, tmp_path)["stages"]["sft"]
    assert rep["steps"] == 0 and rep["steps_planned"] == 3 and [c["step"] for c in rep["curve"]] == [0]
    assert (tmp_path / "sft.safetensors").is_file()
