"""BFL ↔ diffusers key conversion, self-describing checkpoints and strict loading errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from unidg_rt.errors import WeightsError
from unidg_rt.models.config import FluxConfig, ModelCard
from unidg_rt.models.convert import bfl_to_diffusers, diffusers_to_bfl, infer_config_from_bfl, is_bfl_layout
from unidg_rt.models.loading import load_transformer, load_vae, read_card, save_checkpoint
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.presets import build_random


def test_bfl_round_trip_equal():
    cfg = FluxConfig.tiny()
    sd = FluxTransformer(cfg).state_dict()
    bfl = diffusers_to_bfl(sd, cfg)
    assert is_bfl_layout(bfl) and not is_bfl_layout(sd)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    assert infer_config_from_bfl(bfl) == {"num_layers": 2, "num_single_layers": 2}
    back = bfl_to_diffusers({f"model.diffusion_model.{k}": v for k, v in bfl.items()}, cfg)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_bfl_final_norm_is_swapped():
    cfg = FluxConfig.tiny()
    sd = FluxTransformer(cfg).state_dict()
    bfl = diffusers_to_bfl(sd, cfg)
    scale, shift = sd["norm_out.linear.weight"].chunk(2)
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))


def test_bfl_file_loads_with_config(tmp_path):
    cfg = FluxConfig.tiny()
    model = FluxTransformer(cfg)
    save_file(
        {k: v.contiguous() for k, v in diffusers_to_bfl(model.state_dict(), cfg).items()},
        tmp_path / "bfl.safetensors",
    )
    loaded = load_transformer(tmp_path / "bfl.safetensors", config=cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(WeightsError, match="carries no architecture config"):
        load_transformer(tmp_path / "bfl.safetensors")


def test_checkpoint_round_trip_and_meta_build(tmp_path):
    t, v = build_random("tiny", seed=3)
    path = save_checkpoint(tmp_path / "m.safetensors", t, v, defaults={"height": 64})
    card = read_card(path)
    assert isinstance(card, ModelCard) and card.transformer == t.config and card.defaults == {"height": 64}
    t2, v2 = load_transformer(path), load_vae(path)
    assert all(torch.equal(t2.state_dict()[k], x) for k, x in t.state_dict().items())
    assert all(torch.equal(v2.state_dict()[k], x) for k, x in v.state_dict().items())
    assert not any(p.is_meta for p in t2.parameters())
    t3 = load_transformer(path, dtype=torch.bfloat16)
    assert t3.dtype == torch.bfloat16


def test_wrong_architecture_lists_keys(tmp_path):
    t, v = build_random("tiny")
    path = save_checkpoint(tmp_path / "m.safetensors", t, v)
    other = FluxConfig.tiny(num_layers=3)
    with pytest.raises(WeightsError, match=r"missing keys.*transformer_blocks\.2"):
        load_transformer(path, config=other)
    wide = FluxConfig.tiny(joint_attention_dim=48)
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_transformer(path, config=wide)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(WeightsError, match="not a readable .safetensors"):
        load_transformer(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_transformer(tmp_path / "nope.safetensors")
    t, v = build_random("tiny")
    good = save_checkpoint(tmp_path / "good.safetensors", t, v)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError):
        load_transformer(truncated)


def test_diffusers_folder_layout(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = FluxConfig.tiny()
    ref = diffusers.FluxTransformer2DModel(**{k: v for k, v in cfg.to_dict().items() if k != "mlp_ratio"})
    ref.save_pretrained(tmp_path / "transformer")
    t = load_transformer(tmp_path)
    assert t.config.in_channels == 384
    assert all(torch.equal(t.state_dict()[k], x) for k, x in ref.state_dict().items())


def test_loading_peak_ram_about_one_times_weights(tmp_path):
    """Built on meta, loaded with assign=True from the file: peak RSS growth ≈ 1× the weights."""
    import subprocess
    import sys

    cfg = FluxConfig.tiny(
        num_attention_heads=8,
        attention_head_dim=64,
        axes_dims_rope=(16, 24, 24),
        joint_attention_dim=256,
        num_layers=2,
        num_single_layers=3,
    )
    t = FluxTransformer(cfg)
    path = save_checkpoint(tmp_path / "big.safetensors", t, None)
    size_mb = path.stat().st_size / 2**20
    del t
    # VmHWM (peak RSS) is reset through /proc/self/clear_refs, so import-time peaks do not hide the load
    code = (
        "import torch\n"
        "from unidg_rt.models.loading import load_transformer\n"
        "def kb(key):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kb('VmRSS:')\n"
        f"m = load_transformer({str(path)!r})\n"
        "total = sum(float(p.sum()) for p in m.parameters())  # touch every page\n"
        "print((kb('VmHWM:') - before) / 1024)\n"
    )
    grew_mb = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert size_mb > 100
    print(f"loading {size_mb:.0f} MB grew peak RSS by {grew_mb:.0f} MB ({grew_mb / size_mb:.2f}x)")
    # README states "peak RSS growth ≤ 1.2× the weights (measured 1.05×)"
    assert 0.5 * size_mb < grew_mb <= 1.2 * size_mb, f"loading {size_mb:.0f} MB grew RSS by {grew_mb:.0f} MB"
