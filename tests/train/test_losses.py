"""APO loss vs a hand computation; β_t schedule; the flow-matching batch uses the pipeline feed."""

from __future__ import annotations

import math

import numpy as np
import torch

from unidg_rt.groups import default_group_bias
from unidg_rt.train.apo import apo_loss, beta_schedule
from unidg_rt.train.flow import CategoryTable, flow_batch, sample_sigmas, weighted_mse


def test_apo_loss_equals_hand_computation():
    err_theta = torch.tensor([0.30, 0.10, 0.50])
    err_ref = torch.tensor([0.20, 0.20, 0.50])
    beta_t = torch.tensor([10.0, 5.0, 1.0])
    # -log sigmoid(-b (e - r)) = log(1 + exp(b (e - r)))
    hand = (math.log(1 + math.exp(10 * 0.1)) + math.log(1 + math.exp(5 * -0.1)) + math.log(2)) / 3
    assert abs(float(apo_loss(err_theta, err_ref, beta_t)) - hand) < 1e-6
    assert abs(float(apo_loss(err_theta, err_ref, 0.0)) - math.log(2)) < 1e-7  # β = 0: log 2


def test_beta_schedule():
    t = torch.tensor([0.0, 0.5, 1.0])
    np.testing.assert_allclose(beta_schedule(t, 100.0, floor=0.25, power=1.0).numpy(), [100.0, 62.5, 25.0])
    np.testing.assert_allclose(beta_schedule(t, 8.0, floor=1.0).numpy(), [8.0, 8.0, 8.0])


def test_weighted_mse_by_hand():
    pred = torch.zeros(1, 2, 4)
    target = torch.stack([torch.full((4,), 1.0), torch.full((4,), 3.0)])[None]  # token errors 1, 9
    w = torch.tensor([[1.0, 0.1]])
    assert abs(float(weighted_mse(pred, target, w)[0]) - (1 + 0.9) / 1.1) < 1e-6


def test_sigmas_shifted_like_flux():
    from unidg_rt.sampling import calculate_shift, time_shift

    g = torch.Generator().manual_seed(0)
    raw = sample_sigmas(64, g, 0.0, 1.0, None)
    g = torch.Generator().manual_seed(0)
    shifted = sample_sigmas(64, g, 0.0, 1.0, 72)
    np.testing.assert_allclose(shifted.numpy(), time_shift(calculate_shift(72), raw.numpy()), rtol=1e-5)
    assert ((shifted > 0) & (shifted < 1)).all()


def _batch(lat, idx, use, table, **kw):
    """:func:`flow_batch` with the tests' settings and a fixed generator."""
    gen = torch.Generator().manual_seed(0)
    return flow_batch(
        lat, idx, use, table, gen, guidance=3.5, group_bias_lambda=1.0, context_weight=0.1, **kw
    )


def test_flow_batch_is_the_pipeline_feed(tiny_latents):
    lat = tiny_latents
    table = CategoryTable(len(lat.categories), 4, 32, 16)
    idx = np.array([0, 1, 2, 3])
    use = torch.from_numpy(lat.text_mode.numpy()[idx])
    b = _batch(lat, idx, use, table)
    n_img = lat.groups.shape[1]
    assert b.feed["hidden_states"].shape == (4, n_img, 384)
    assert torch.equal(b.feed["hidden_states"][..., 128:], lat.mask[idx].float())  # packed mask last
    assert b.feed["token_groups"].shape == (4, 4 + n_img)
    assert (b.feed["token_groups"][:, :4] == 0).all()  # TEXT group first, like _static_feed
    assert torch.equal(b.feed["group_bias"], torch.from_numpy(default_group_bias(1.0)))
    # reference-mode samples get zero embeddings, text-mode samples their category row
    e = b.feed["encoder_hidden_states"]
    for i, j in enumerate(idx):
        if lat.text_mode[j]:
            assert torch.equal(e[i], table.embeds[lat.category[j]])
        else:
            assert (e[i] == 0).all()
    # rectified-flow target: z = (1 - s) x0 + s n and v = n - x0  =>  x0 = z - s v
    z = b.feed["hidden_states"][..., :64]
    from unidg_rt.sampling import pack_latents

    x0 = pack_latents(lat.x0[idx])
    torch.testing.assert_close(z - b.sigma[:, None, None] * b.target, x0, atol=1e-5, rtol=1e-5)


def test_defect_tokens_get_extra_weight(tiny_latents):
    from unidg_rt.groups import TokenGroup

    lat = tiny_latents
    assert lat.defect is not None and lat.defect.shape == lat.groups.shape
    assert (lat.defect[lat.groups != int(TokenGroup.TARGET_REGION)] == 0).all()  # defects only in the mask
    table = CategoryTable(len(lat.categories), 4, 32, 16)
    idx = np.arange(len(lat))
    use = torch.zeros(len(idx), dtype=torch.bool)
    plain = _batch(lat, idx, use, table)
    boosted = _batch(lat, idx, use, table, defect_weight=4.0)
    extra = boosted.weights - plain.weights
    torch.testing.assert_close(extra, 4.0 * (lat.defect > 0).float())
    assert (lat.defect > 0).any()


def _table_with_encoder(lat):
    from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig

    torch.manual_seed(0)
    size = int(lat.reference.shape[1])
    enc = ReferenceEncoder(ReferenceEncoderConfig(seq_len=4, dim=32, pooled_dim=16, width=8, image_size=size))
    return CategoryTable(len(lat.categories), 4, 32, 16, encoder=enc)


def test_reference_rows_are_conditioned_by_the_encoder(tiny_latents):
    lat = tiny_latents
    assert lat.reference is not None and lat.reference.shape[1:] == (32, 32, 3)
    table = _table_with_encoder(lat)
    idx = np.arange(len(lat))
    keep = torch.ones(len(idx), dtype=torch.bool)
    keep[0] = False  # a dropped sample: zero conditioning whatever its mode
    b = _batch(lat, idx, keep, table)
    e, p = b.feed["encoder_hidden_states"], b.feed["pooled_projections"]
    with torch.no_grad():
        e_enc, p_enc = table.encoder(lat.reference_input(idx))
    assert (e[0] == 0).all() and (p[0] == 0).all()
    for i in idx[1:]:
        if lat.text_mode[i]:
            assert torch.equal(e[i], table.embeds[lat.category[i]])
        else:
            torch.testing.assert_close(e[i], e_enc[i])
            torch.testing.assert_close(p[i], p_enc[i])
    assert (~lat.text_mode).any() and lat.text_mode.any()
    # the reference crop is the diptych's left half, pixel for pixel
    x = lat.reference_input(idx)
    assert x.shape == (len(idx), 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    # an encoder with the cut-out convention gets the crop gray outside the reference mask
    import dataclasses

    from unidg_rt.models.refenc import cut_out

    table.encoder.config = dataclasses.replace(table.encoder.config, cutout=True)
    b = _batch(lat, idx, keep, table)
    with torch.no_grad():
        e_cut, _ = table.encoder(cut_out(x, lat.reference_mask[torch.as_tensor(idx)]))
    ref = (~lat.text_mode).numpy() & keep.numpy()
    torch.testing.assert_close(b.feed["encoder_hidden_states"][ref], e_cut[ref])


def test_alignment_is_the_hand_computation(tiny_latents):
    lat = tiny_latents
    table = _table_with_encoder(lat)
    idx = np.arange(len(lat))
    got = table.alignment(lat, idx)
    with torch.no_grad():
        e, p = table.encoder(lat.reference_input(idx))
    for i in idx:
        c = lat.category[i]
        want = ((e[i] - table.embeds[c]) ** 2).mean() + ((p[i] - table.pooled[c]) ** 2).mean()
        want = want * (0.0 if lat.text_mode[i] else 1.0)
        torch.testing.assert_close(got[i], want)
    got.sum().backward()  # the target is a stop-gradient: only the encoder learns from it
    assert table.embeds.grad is None and table.encoder.conv1.weight.grad is not None
