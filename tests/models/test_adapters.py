"""LoRA adapters: diffusers/peft parity (incl. FLUX.1-dev → Fill zero-padding), gates, fuse/unfuse."""

from __future__ import annotations

import pytest
import torch

from unidg_rt.errors import WeightsError
from unidg_rt.models.adapters import AdapterManager
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer

B, H, W, T = 2, 4, 6, 7


def _ids(h, w):
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None]
    return ids.reshape(-1, 3)


def _feed(cfg, t=None):
    return dict(
        hidden_states=torch.randn(B, H * W, cfg.in_channels),
        encoder_hidden_states=torch.randn(B, T, cfg.joint_attention_dim),
        pooled_projections=torch.randn(B, cfg.pooled_projection_dim),
        timestep=torch.rand(B) if t is None else t,
        img_ids=_ids(H, W),
        txt_ids=torch.zeros(T, 3),
        guidance=torch.full((B,), 3.5),
    )


def _dev_lora(rank=4, gated=False):
    """A random LoRA trained 'on FLUX.1-dev' (x_embedder has 64 inputs), peft layout."""
    dev = FluxTransformer(FluxConfig.tiny(fill=False, guidance=True))
    mgr = AdapterManager(dev)
    targets = ("x_embedder", "transformer_blocks.*.attn.to_q", "single_transformer_blocks.*.proj_out")
    ad = mgr.add("turbo", rank=rank, targets=targets, gated=gated)
    for p in ad.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return mgr.state_dict("turbo")


def test_dev_lora_on_fill_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from diffusers import FluxFillPipeline

    cfg = FluxConfig.tiny(fill=True, guidance=True)
    ref = diffusers.FluxTransformer2DModel(
        **{k: v for k, v in cfg.to_dict().items() if k != "mlp_ratio"}
    ).eval()
    ours = FluxTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    sd = _dev_lora()
    feed = _feed(cfg)
    with torch.no_grad():
        base = ours(**feed)
    expanded = FluxFillPipeline._maybe_expand_lora_state_dict(transformer=ref, lora_state_dict=dict(sd))
    ref.load_lora_adapter(expanded, adapter_name="turbo", prefix="transformer")
    mgr = AdapterManager(ours)
    mgr.load_lora(sd, "turbo")
    with torch.no_grad():
        got, expected = ours(**feed), ref(**feed, return_dict=False)[0]
        assert (got - base).abs().max() > 1e-3  # the LoRA changes the output
        assert (got - expected).abs().max() <= 1e-5
        ref.set_adapters(["turbo"], [0.5])
        mgr.set_scales({"turbo": 0.5})
        assert (ours(**feed) - ref(**feed, return_dict=False)[0]).abs().max() <= 1e-5


def test_fuse_unfuse_exact_and_strength_zero_is_base():
    cfg = FluxConfig.tiny(fill=True)
    model = FluxTransformer(cfg).eval()
    feed = _feed(cfg)
    with torch.no_grad():
        base = model(**feed)
        mgr = AdapterManager(model)
        mgr.load_lora(_dev_lora(), "turbo", strength=0.7)
        hooked = model(**feed)
        mgr.fuse()
        fused = model(**feed)
        mgr.unfuse()
        unfused = model(**feed)
        mgr.set_scales({"turbo": 0.0})
        off = model(**feed)
    assert (fused - hooked).abs().max() <= 1e-5
    assert torch.equal(unfused, hooked)
    assert torch.equal(off, base)  # adapter off => base model output exactly


def test_time_gate_applies_per_sample():
    cfg = FluxConfig.tiny(fill=True)
    model = FluxTransformer(cfg).eval()
    mgr = AdapterManager(model)
    ad = mgr.load_lora(_dev_lora(gated=True), "apo")
    assert ad.gate is not None
    t = torch.tensor([0.1, 0.9])
    feed = _feed(cfg, t=t)
    with torch.no_grad():
        ad.gate.b.fill_(0.0)
        ad.gate.a.fill_(-30.0)  # k(t) ≈ 0 everywhere
        closed = model(**feed)
        mgr.set_scales({"apo": 0.0})
        base = model(**feed)
        mgr.set_scales({"apo": 1.0})
        ad.gate.a.fill_(0.0)
        ad.gate.b.fill_(40.0)  # k ≈ sigmoid(40 t): open for both samples, k(0.1) < k(0.9)
        k = ad.gate(t)
        opened = model(**feed)
    assert (closed - base).abs().max() <= 1e-6
    assert (opened - base).abs().max() > 1e-4
    assert (k[0] < k[1]).all()
    with pytest.raises(ValueError, match="time-gated"):
        mgr.fuse()
    mgr.fuse(t=0.5)
    mgr.unfuse()


def test_save_load_round_trip(tmp_path):
    cfg = FluxConfig.tiny(fill=True)
    model = FluxTransformer(cfg).eval()
    mgr = AdapterManager(model)
    ad = mgr.add("apo", rank=2, gated=True)
    torch.nn.init.normal_(next(iter(ad.pairs.values())).lora_B.weight)
    path = mgr.save("apo", tmp_path / "apo.safetensors")
    feed = _feed(cfg)
    with torch.no_grad():
        a = model(**feed)
        mgr.remove("apo")
        mgr.load_lora(path, "apo")
        b = model(**feed)
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_lora_errors(tmp_path):
    model = FluxTransformer(FluxConfig.tiny())
    mgr = AdapterManager(model)
    with pytest.raises(WeightsError, match="no LoRA tensors"):
        mgr.load_lora({"foo": torch.zeros(1)}, "x")
    with pytest.raises(WeightsError, match="transformer.nope.lora_A.weight"):
        mgr.load_lora(
            {
                "transformer.nope.lora_A.weight": torch.zeros(2, 4),
                "transformer.nope.lora_B.weight": torch.zeros(4, 2),
            },
            "x",
        )
    with pytest.raises(WeightsError, match="does not exist"):
        mgr.load_lora(tmp_path / "missing.safetensors", "x")
