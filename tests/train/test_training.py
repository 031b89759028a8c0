"""One tiny training step decreases each stage's loss on a fixed batch; the APO gate and the
adapter-off ⇒ base-exact property; seeded runs are reproducible bit for bit."""

from __future__ import annotations

import math

import numpy as np
import torch
from safetensors.torch import load_file

from unidg_rt.models.adapters import AdapterManager
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.presets import tiny_vae_config
from unidg_rt.models.vae import AutoencoderKLFlux
from unidg_rt.train.apo import apo_errors, apo_loss, apo_step_batch, beta_schedule
from unidg_rt.train.flow import CategoryTable, predict, weighted_mse
from unidg_rt.train.recipe import APORecipe, SFTRecipe, VAERecipe
from unidg_rt.train.sft import init_dit, sft_step_batch
from unidg_rt.train.vae import random_crops, vae_loss


def _adam_steps(params, loss_fn, n=1, lr=1e-3):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(n):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def test_vae_step_decreases_loss(tiny_diptychs):
    torch.manual_seed(0)
    vae = AutoencoderKLFlux(tiny_vae_config())
    recipe = VAERecipe(autocast_bf16=False)
    x, defect = random_crops(tiny_diptychs, np.random.default_rng(0), 2, 32, defect_crop=1.0)

    def loss():
        return vae_loss(vae, x, recipe, torch.Generator().manual_seed(1), weight=1.0 + 4.0 * defect)[0]

    before = float(loss().detach())
    _adam_steps(vae.parameters(), loss, n=2)
    assert float(loss().detach()) < before


def test_defect_crops_hold_the_defect_and_weight_only_it(tiny_diptychs):
    rng = np.random.default_rng(3)
    x, defect = random_crops(tiny_diptychs, rng, 8, 32, defect_crop=1.0)
    assert x.shape == (8, 3, 32, 32) and defect.shape == (8, 1, 32, 32)
    assert set(np.unique(defect.numpy())) <= {0.0, 1.0}
    # ground-truth crops centred on a defect pixel (±crop/4) hold defect pixels
    assert float(defect.amax(dim=(1, 2, 3)).sum()) >= 1
    # a defect pixel's weight is what the loss sees: equal images -> zero loss whatever the weight
    vae = AutoencoderKLFlux(tiny_vae_config())
    recipe = VAERecipe(autocast_bf16=False, kl=0.0)
    gen = torch.Generator().manual_seed(0)
    loss_w = vae_loss(vae, x, recipe, gen, weight=1.0 + 9.0 * defect)[0].detach()
    loss_1 = vae_loss(vae, x, recipe, torch.Generator().manual_seed(0))[0].detach()
    assert torch.isfinite(loss_w) and torch.isfinite(loss_1) and float(loss_w) != float(loss_1)


def _sft_setup(lat):
    torch.manual_seed(0)
    model = FluxTransformer(FluxConfig.tiny())
    init_dit(model)
    table = CategoryTable(len(lat.categories), 4, 32, 16)
    recipe = SFTRecipe(batch_size=4)
    return model, table, recipe


def test_sft_step_decreases_loss(tiny_latents):
    model, table, recipe = _sft_setup(tiny_latents)

    def loss():  # the same batch every call (seeded), rebuilt so the table's graph is fresh
        batch = sft_step_batch(tiny_latents, table, recipe, seed=0, step=0)
        return weighted_mse(predict(model, batch), batch.target, batch.weights).mean()

    before = float(loss().detach())
    _adam_steps(list(model.parameters()) + list(table.parameters()), loss, n=2)
    assert float(loss().detach()) < before


def _apo_setup(lat):
    torch.manual_seed(0)
    model = FluxTransformer(FluxConfig.tiny()).eval().requires_grad_(False)  # a non-trivial frozen base
    table = CategoryTable(len(lat.categories), 4, 32, 16).requires_grad_(False)
    mgr = AdapterManager(model)
    ad = mgr.add("apo", rank=4, gated=True)
    return model, table, mgr, ad


def test_apo_step_decreases_loss_and_starts_at_log2(tiny_latents):
    model, table, mgr, ad = _apo_setup(tiny_latents)
    recipe = APORecipe(batch_size=4, beta=50.0)
    batch, _ = apo_step_batch(tiny_latents, table, recipe, SFTRecipe(), seed=0, step=0)

    def loss():
        e_theta, e_ref = apo_errors(model, mgr, batch)
        return apo_loss(e_theta, e_ref, beta_schedule(batch.sigma, recipe.beta, recipe.beta_floor))

    before = float(loss().detach())
    assert abs(before - math.log(2)) < 1e-6  # B = 0: the adapter starts as the identity
    _adam_steps(list(ad.parameters()), loss, n=2)
    assert float(loss().detach()) < before


def test_adapter_off_is_base_exactly_and_gate_scales_by_t(tiny_latents):
    model, table, mgr, ad = _apo_setup(tiny_latents)
    batch = sft_step_batch(tiny_latents, table, SFTRecipe(batch_size=4), seed=0, step=0)
    with torch.no_grad():
        mgr.set_scales({"apo": 0.0})
        base = predict(model, batch)
        for pair in ad.pairs.values():
            torch.nn.init.normal_(pair.lora_B.weight, std=0.5)
        ad.gate.a.fill_(0.0)
        ad.gate.b.fill_(-8.0)  # k(t) = sigmoid(-8 t): ~0.5 at t = 0, ~0 at t = 1
        off = predict(model, batch)
        mgr.set_scales({"apo": 1.0})
        on = predict(model, batch)
        batch.sigma = torch.ones_like(batch.sigma)
        mgr.set_scales({"apo": 0.0})
        base_t1 = predict(model, batch)
        mgr.set_scales({"apo": 1.0})
        on_t1 = predict(model, batch)
    assert torch.equal(off, base)  # adapter off => the base model's output exactly
    assert not torch.allclose(on, base, atol=1e-3)
    # at t = 1 the gate is ~closed: the adapter's effect shrinks by orders of magnitude
    assert (on_t1 - base_t1).abs().max() < 0.05 * (on - base).abs().max()


def _files(folder):
    return {
        name: load_file(str(folder / name))
        for name in ("vae.safetensors", "sft.safetensors", "reference_encoder.safetensors", "apo.safetensors")
    }


def test_two_seeded_runs_give_identical_weights(tmp_path, tiny_recipe):
    from unidg_rt.train.run import run_stage

    for name in ("a", "b"):
        run_stage("all", tiny_recipe(), tmp_path / name)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    for fname in a:
        assert a[fname].keys() == b[fname].keys()
        for k in a[fname]:
            assert torch.equal(a[fname][k], b[fname][k]), (fname, k)
    report = __import__("json").loads((tmp_path / "a" / "train_report.json").read_text())
    assert set(report["stages"]) >= {"data", "vae", "encode", "sft", "refenc", "apo"}
    assert report["seed"] == 0 and report["environment"]["torch"] == torch.__version__
    assert 0.0 <= report["stages"]["refenc"]["heldout_accuracy"] <= 1.0
    for stage in ("vae", "sft", "refenc", "apo"):
        assert report["stages"][stage]["steps"] == 2 and report["stages"][stage]["loss_end"] is not None


def test_refenc_stage_keeps_the_card_in_step(tmp_path, tiny_recipe):
    from unidg_rt.models.loading import read_card
    from unidg_rt.train.run import run_stage

    for stage in ("vae", "sft"):
        run_stage(stage, tiny_recipe(), tmp_path)
    card = read_card(tmp_path / "model.safetensors")
    assert card.defaults["reference_encoder"] == {"file": "reference_encoder.safetensors", "cutout": False}
    run_stage("refenc", tiny_recipe(), tmp_path)  # refits on cut-out crops: the SFT-stage card follows
    assert read_card(tmp_path / "model.safetensors").defaults["reference_encoder"]["cutout"] is True


def test_stages_without_a_reference_encoder(tmp_path, tiny_recipe):
    """The default recipe (sft.ref_width = 0): no encoder file, no card entry, refenc skipped."""
    from unidg_rt.models.loading import read_card
    from unidg_rt.train.run import run_stage

    recipe = tiny_recipe()
    recipe.sft.ref_width = 0
    for stage in ("vae", "sft", "refenc"):
        report = run_stage(stage, recipe, tmp_path)
    assert not (tmp_path / "reference_encoder.safetensors").exists()
    assert "reference_encoder" not in read_card(tmp_path / "model.safetensors").defaults
    assert "refenc" not in report["stages"]
