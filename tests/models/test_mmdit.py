"""Our FluxTransformer == diffusers' FluxTransformer2DModel on tiny configs (same weights)."""

from __future__ import annotations

import pytest
import torch

from unidg_rt.groups import default_group_bias
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer

diffusers = pytest.importorskip("diffusers")

CONFIGS = {
    "fill+guidance": FluxConfig.tiny(fill=True, guidance=True),
    "plain": FluxConfig.tiny(fill=False, guidance=False),
    "wider": FluxConfig.tiny(
        fill=True,
        guidance=True,
        num_layers=1,
        num_single_layers=3,
        num_attention_heads=3,
        attention_head_dim=32,
        axes_dims_rope=(8, 12, 12),
    ),
}


def _ids(h, w):
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None]
    return ids.reshape(-1, 3)


def _pair(cfg):
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "mlp_ratio"}
    ref = diffusers.FluxTransformer2DModel(**kwargs).eval()
    ours = FluxTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _inputs(cfg, b=2, h=4, w=6, t=7):
    g = torch.full((b,), 3.5) if cfg.guidance_embeds else None
    return dict(
        hidden_states=torch.randn(b, h * w, cfg.in_channels),
        encoder_hidden_states=torch.randn(b, t, cfg.joint_attention_dim),
        pooled_projections=torch.randn(b, cfg.pooled_projection_dim),
        timestep=torch.rand(b),
        img_ids=_ids(h, w),
        txt_ids=torch.zeros(t, 3),
        guidance=g,
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_diffusers(name):
    cfg = CONFIGS[name]
    ref, ours = _pair(cfg)
    feed = _inputs(cfg)
    with torch.no_grad():
        expected = ref(**feed, return_dict=False)[0]
        got = ours(**feed)
    assert got.shape == expected.shape == (2, 24, cfg.out_dim)
    assert (got - expected).abs().max().item() <= 1e-5


def test_state_dict_keys_equal_diffusers():
    ref, ours = _pair(CONFIGS["fill+guidance"])
    assert set(ref.state_dict()) == set(ours.state_dict())


def test_zero_group_bias_equals_plain():
    cfg = CONFIGS["fill+guidance"]
    _, ours = _pair(cfg)
    feed = _inputs(cfg)
    groups = torch.randint(0, 5, (7 + 24,))
    with torch.no_grad():
        plain = ours(**feed)
        zero = ours(**feed, token_groups=groups, group_bias=torch.zeros(5, 5))
        biased = ours(**feed, token_groups=groups, group_bias=torch.from_numpy(default_group_bias(2.0)))
    assert torch.allclose(plain, zero, atol=1e-6)
    assert (plain - biased).abs().max() > 1e-4  # the bias does something


@pytest.mark.parametrize("form", ["fold"])
def test_attention_forms_agree_in_model(form):
    cfg = CONFIGS["fill+guidance"]
    _, ours = _pair(cfg)
    feed = _inputs(cfg)
    groups = torch.randint(0, 5, (2, 7 + 24))
    per_layer = torch.randn(cfg.total_layers, cfg.num_attention_heads, 5, 5)
    with torch.no_grad():
        ref = ours(**feed, token_groups=groups, group_bias=per_layer)
        ours.set_attention_form(form)
        got = ours(**feed, token_groups=groups, group_bias=per_layer)
    assert (ref - got).abs().max().item() <= 1e-5


def test_unknown_attention_form():
    with pytest.raises(ValueError, match="attention form"):
        FluxTransformer(CONFIGS["plain"]).set_attention_form("magic")
