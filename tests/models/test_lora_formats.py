"""LoRA files as the ecosystem writes them: each layout loads to what diffusers/peft load.

Tiny odd config (1 double + 2 single blocks, 2 heads × 16, MLP 32→128), the same base weights in
our FluxTransformer and diffusers' FluxTransformer2DModel. Per layout: transformer output vs the
oracle ≤ 1e-5 (fp32) at strength 1 and 0.5 (diffusers/peft ``set_adapters``), fused ≡ hooked
≤ 1e-5, unfuse restores every base weight exactly.

Oracles. (a) Every fused/renamed layout (kohya, xlabs, BFL) is written from a known "BFL-space"
LoRA (one down/up/alpha per original FLUX module); its diffusers-named equivalent (shared down,
up split per target, alpha/r baked into up — what diffusers' converters produce) is loaded by
diffusers' ``load_lora_adapter``. (b) The same file through diffusers' own converter:
``FluxPipeline.lora_state_dict`` + ``load_lora_into_transformer``. Where diffusers 0.42 cannot
take a tiny config — its kohya converter hard-codes single ``linear1`` split sizes
``[3072, 3072, 3072, 12288]`` and emits the non-block modules (img_in, txt_in, time_in, vector_in,
guidance_in, final_layer) without the ``transformer.`` prefix, so ``load_lora_weights`` drops them;
its BFL converter hard-codes 19/38 blocks and inner 3072 and needs Control-LoRA norm keys — (b)
runs on the part diffusers can load (kohya), or on the converter's source with those constants
replaced by the tiny config's (BFL); (a) covers everything.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging

import pytest
import torch
from torch import nn

from unidg_rt.errors import WeightsError
from unidg_rt.models.adapters import AdapterManager
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.lora_formats import component_metadata, pattern_value
from unidg_rt.models.mmdit import FluxTransformer

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from diffusers import FluxPipeline  # noqa: E402

TOL = 1e-5
CFG = FluxConfig.tiny(fill=False, guidance=True, num_layers=1, num_single_layers=2)
B, H, W, T = 2, 4, 6, 7
D, S0, S1 = "transformer_blocks.0.", "single_transformer_blocks.0.", "single_transformer_blocks.1."
TTE = "time_text_embed."
BFL = {  # original FLUX module -> diffusers modules (in order), swap halves of up
    "img_in": (("x_embedder",), False),
    "txt_in": (("context_embedder",), False),
    "time_in.in_layer": ((TTE + "timestep_embedder.linear_1",), False),
    "time_in.out_layer": ((TTE + "timestep_embedder.linear_2",), False),
    "vector_in.in_layer": ((TTE + "text_embedder.linear_1",), False),
    "vector_in.out_layer": ((TTE + "text_embedder.linear_2",), False),
    "guidance_in.in_layer": ((TTE + "guidance_embedder.linear_1",), False),
    "guidance_in.out_layer": ((TTE + "guidance_embedder.linear_2",), False),
    "final_layer.linear": (("proj_out",), False),
    "final_layer.adaLN_modulation.1": (("norm_out.linear",), True),
    "double_blocks.0.img_attn.qkv": ((D + "attn.to_q", D + "attn.to_k", D + "attn.to_v"), False),
    "double_blocks.0.txt_attn.qkv": ((D + "attn.add_q_proj", D + "attn.add_k_proj", D + "attn.add_v_proj"), False),
    "double_blocks.0.img_attn.proj": ((D + "attn.to_out.0",), False),
    "double_blocks.0.txt_attn.proj": ((D + "attn.to_add_out",), False),
    "double_blocks.0.img_mlp.0": ((D + "ff.net.0.proj",), False),
    "double_blocks.0.img_mlp.2": ((D + "ff.net.2",), False),
    "double_blocks.0.txt_mlp.0": ((D + "ff_context.net.0.proj",), False),
    "double_blocks.0.txt_mlp.2": ((D + "ff_context.net.2",), False),
    "double_blocks.0.img_mod.lin": ((D + "norm1.linear",), False),
    "double_blocks.0.txt_mod.lin": ((D + "norm1_context.linear",), False),
    **{
        f"single_blocks.{i}.{k}": v
        for i, s in enumerate((S0, S1))
        for k, v in {
            "linear1": ((s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"), False),
            "linear2": ((s + "proj_out",), False),
            "modulation.lin": ((s + "norm.linear",), False),
        }.items()
    },
}  # fmt: skip
XLABS = {  # xlabs processor LoRA -> diffusers modules
    "double_blocks.0.processor.proj_lora1": ((D + "attn.to_out.0",), False),
    "double_blocks.0.processor.proj_lora2": ((D + "attn.to_add_out",), False),
    "double_blocks.0.processor.qkv_lora1": ((D + "attn.to_q", D + "attn.to_k", D + "attn.to_v"), False),
    "double_blocks.0.processor.qkv_lora2": ((D + "attn.add_q_proj", D + "attn.add_k_proj", D + "attn.add_v_proj"), False),
    **{
        f"single_blocks.{i}.processor.{k}": v
        for i, s in enumerate((S0, S1))
        for k, v in {
            "qkv_lora": ((s + "attn.to_q", s + "attn.to_k", s + "attn.to_v"), False),
            "proj_lora": ((s + "proj_out",), False),
        }.items()
    },
}  # fmt: skip
KOHYA_GLOBAL = ("img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer")


# ------------------------------------------------------------------ fixtures
def _ids(h, w):
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None]
    return ids.reshape(-1, 3)


def _feed(cfg=CFG):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(B, H * W, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(B, T, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(B, cfg.pooled_projection_dim, generator=g),
        timestep=torch.rand(B, generator=g),
        img_ids=_ids(H, W),
        txt_ids=torch.zeros(T, 3),
        guidance=torch.full((B,), 3.5),
    )


def _models(cfg=CFG):
    torch.manual_seed(0)
    ref = diffusers.FluxTransformer2DModel(
        **{k: v for k, v in cfg.to_dict().items() if k != "mlp_ratio"}
    ).eval()
    ours = FluxTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _groups(table, model, seed=0, vary=True):
    """Random LoRA in the source layout's module space: name -> (down, up, alpha)."""
    g = torch.Generator().manual_seed(seed)
    lin = _linears(model)
    out = {}
    for i, (name, (targets, _)) in enumerate(table.items()):
        r = (4, 2, 3)[i % 3] if vary else 4
        alpha = (8.0, 1.0, 3.0, 4.0)[i % 4] if vary else float(r)
        n_in, n_out = lin[targets[0]].in_features, sum(lin[t].out_features for t in targets)
        out[name] = (0.2 * torch.randn(r, n_in, generator=g), 0.2 * torch.randn(n_out, r, generator=g), alpha)
    return out


def _baked(table, groups, model):
    """The diffusers-named equivalent: shared down, up split per target, alpha/r baked into up."""
    lin = _linears(model)
    sd = {}
    for name, (down, up, alpha) in groups.items():
        targets, swap = table[name]
        up = up * (alpha / down.shape[0])
        if swap:
            up = torch.cat(up.chunk(2)[::-1])
        for t, u in zip(targets, up.split([lin[t].out_features for t in targets]), strict=True):
            sd[f"{t}.lora_A.weight"], sd[f"{t}.lora_B.weight"] = down.clone(), u.contiguous()
    return sd


def _kohya(groups, key=lambda name: "lora_unet_" + name.replace(".", "_")):
    sd = {}
    for name, (down, up, alpha) in groups.items():
        k = key(name)
        sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"], sd[f"{k}.alpha"] = (
            down,
            up,
            torch.tensor(alpha),
        )
    return sd


def _save(sd, path, metadata=None):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _diffusers_file(ref, path, adapter="a"):
    """diffusers' own loading path of a LoRA file (FluxLoraLoaderMixin, minus the pipeline object)."""
    sd, alphas, meta = FluxPipeline.lora_state_dict(str(path), return_alphas=True, return_lora_metadata=True)
    FluxPipeline.load_lora_into_transformer(
        sd, network_alphas=alphas, transformer=ref, adapter_name=adapter, metadata=meta
    )


def _diffusers_peft(ref, sd, adapter="a"):
    ref.load_lora_adapter(dict(sd), adapter_name=adapter, prefix=None)


def _parity(load_ref, load_ours, adapter="a", cfg=CFG, models=None):
    """Load on both sides; output parity at strength 1 and 0.5, fuse ≡ hooked, unfuse exact."""
    ref, ours = models or _models(cfg)
    feed = _feed(cfg)
    base_w = {k: v.clone() for k, v in ours.state_dict().items()}
    diffs = {}
    with torch.no_grad():
        base = ours(**feed)
        load_ref(ref)
        mgr = AdapterManager(ours)
        ad = load_ours(mgr)
        got, exp = ours(**feed), ref(**feed, return_dict=False)[0]
        assert (got - base).abs().max() > 1e-2  # the LoRA changes the output
        diffs["1.0"] = (got - exp).abs().max().item()
        ref.set_adapters([adapter], [0.5])
        mgr.set_scales({ad.name: 0.5})
        half = ours(**feed)
        diffs["0.5"] = (half - ref(**feed, return_dict=False)[0]).abs().max().item()
        mgr.fuse()
        diffs["fused"] = (ours(**feed) - half).abs().max().item()
        mgr.unfuse()
        restored = all(torch.equal(v, base_w[k]) for k, v in ours.state_dict().items())
    print(f"parity {diffs}")
    assert diffs["1.0"] <= TOL and diffs["0.5"] <= TOL and diffs["fused"] <= TOL, diffs
    assert restored
    return ad


# ------------------------------------------------------------------ diffusers / peft writers
def _peft_scratch(ref, config, adapter="a"):
    scratch = copy.deepcopy(ref)
    scratch.add_adapter(config, adapter_name=adapter)
    return scratch


def test_pipeline_save_lora_weights_metadata(tmp_path):
    """FluxPipeline.save_lora_weights stores metadata as {"transformer.r": …, "transformer.lora_alpha": …}.

    diffusers itself needs the full peft config there to load the file back (with only
    ``{"r": 4, "lora_alpha": 8}`` its LoraConfig has no target_modules and peft raises
    KeyError 'model_type'), so the oracle file carries ``LoraConfig.to_dict()`` as diffusers'
    training scripts write it; the minimal form loads to the same result on our side."""
    from peft import LoraConfig, get_peft_model_state_dict

    ref, ours = _models()
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_v", "proj_mlp", "ff.net.2"], init_lora_weights=False
    )
    layers = get_peft_model_state_dict(_peft_scratch(ref, cfg), adapter_name="a")
    paths = []
    for name, meta in (("full", cfg.to_dict()), ("minimal", {"r": 4, "lora_alpha": 8})):
        FluxPipeline.save_lora_weights(
            tmp_path / name, transformer_lora_layers=layers, transformer_lora_adapter_metadata=meta
        )
        paths.append(tmp_path / name / "pytorch_lora_weights.safetensors")
    ad = _parity(
        lambda m: _diffusers_file(m, paths[0]), lambda mgr: mgr.load_lora(paths[0], "a"), models=(ref, ours)
    )
    assert ad.scale == 2.0 and {p.scale for p in ad.pairs.values()} == {2.0}
    minimal = AdapterManager(ours).load_lora(paths[1], "a")
    assert minimal.scale == 2.0 and {p.scale for p in minimal.pairs.values()} == {2.0}


def test_save_lora_adapter_rank_and_alpha_patterns(tmp_path):
    """FluxTransformer2DModel.save_lora_adapter: unprefixed peft config with rank_pattern/alpha_pattern."""
    from peft import LoraConfig

    ref, ours = _models()
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_k", "proj_out", "add_k_proj"],
        rank_pattern={"proj_out": 2}, alpha_pattern={"to_k": 3}, init_lora_weights=False,
    )  # fmt: skip
    _peft_scratch(ref, cfg).save_lora_adapter(tmp_path, adapter_name="a")
    path = tmp_path / "pytorch_lora_weights.safetensors"
    ad = _parity(
        lambda m: m.load_lora_adapter(tmp_path, weight_name=path.name, adapter_name="a", prefix=None),
        lambda mgr: mgr.load_lora(path, "a"),
        models=(ref, ours),
    )
    scales = {k.replace("::", "."): p.scale for k, p in ad.pairs.items()}
    assert scales[D + "attn.to_k"] == 3 / 4 and scales[D + "attn.add_k_proj"] == 2.0
    assert scales["proj_out"] == scales[S0 + "proj_out"] == 8 / 2


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_save_pretrained_folder(tmp_path, rslora):
    from peft import LoraConfig, PeftModel, get_peft_model

    ref, ours = _models()
    patterns = {} if rslora else dict(rank_pattern={"proj_mlp": 2}, alpha_pattern={"to_v": 5})
    cfg = LoraConfig(
        r=4, lora_alpha=16, target_modules=["to_q", "to_v", "proj_mlp", "linear_1", "x_embedder"],
        use_rslora=rslora, init_lora_weights=False, **patterns,
    )  # fmt: skip
    get_peft_model(copy.deepcopy(ref), cfg).save_pretrained(tmp_path)
    _parity(
        lambda m: PeftModel.from_pretrained(m, tmp_path),
        lambda mgr: mgr.load_lora(tmp_path, "default"),
        adapter="default",
        models=(ref, ours),
    )
    # the file alone finds adapter_config.json beside it
    mgr = AdapterManager(FluxTransformer(CFG))
    ad = mgr.load_lora(tmp_path / "adapter_model.safetensors", "x")
    assert ad.alpha == 16 and (ad.meta.get("use_rslora") is rslora)


# ------------------------------------------------------------------ kohya / xlabs / BFL
def test_kohya_all_modules_vs_peft_equivalent(tmp_path):
    """(a) every FLUX module, per-module ranks and alphas, fused qkv / linear1 and final adaLN."""
    ref, ours = _models()
    groups = _groups(BFL, ours)
    path = _save(_kohya(groups), tmp_path / "kohya.safetensors")
    baked = _baked(BFL, groups, ours)
    ad = _parity(
        lambda m: _diffusers_peft(m, baked), lambda mgr: mgr.load_lora(path, "a"), models=(ref, ours)
    )
    assert ad.meta["layout"] == "kohya"
    assert {p.scale for p in ad.pairs.values()} == {
        8 / 4,
        1 / 2,
        3 / 3,
        4 / 4,
        8 / 2,
        1 / 3,
        3 / 4,
        4 / 2,
        8 / 3,
        1 / 4,
        3 / 2,
        4 / 3,
    }


def test_kohya_vs_diffusers_converter(tmp_path):
    """(b) diffusers' own kohya loading, on the modules its converter handles at this size."""
    ref, ours = _models()
    table = {k: v for k, v in BFL.items() if not k.startswith(KOHYA_GLOBAL) and not k.endswith("linear1")}
    path = _save(_kohya(_groups(table, ours, seed=3)), tmp_path / "kohya.safetensors")
    _parity(lambda m: _diffusers_file(m, path), lambda mgr: mgr.load_lora(path, "a"), models=(ref, ours))


def test_kohya_comfy_and_diffusers_named_variants(tmp_path):
    """ComfyUI's ``diffusion_model.<bfl>.lora_down`` and ``lora_transformer_<diffusers>`` load the same."""
    _, ours = _models()
    groups = _groups(BFL, ours, seed=5)
    kohya = _kohya(groups)
    comfy = _kohya(groups, key=lambda name: "diffusion_model." + name)  # ComfyUI keeps the BFL dots
    baked = _baked(BFL, groups, ours)
    mixture = {"lora_transformer_" + k.replace(".lora_A.weight", "").replace(".", "_") + ".lora_down.weight": v
               for k, v in baked.items() if k.endswith("lora_A.weight")}  # fmt: skip
    mixture.update({"lora_transformer_" + k.replace(".lora_B.weight", "").replace(".", "_") + ".lora_up.weight": v
                    for k, v in baked.items() if k.endswith("lora_B.weight")})  # fmt: skip
    feed = _feed()
    outs = []
    for sd in (kohya, comfy, mixture, {f"transformer.{k}": v for k, v in baked.items()}):
        mgr = AdapterManager(ours)
        mgr.load_lora(sd, "a")
        with torch.no_grad():
            outs.append(ours(**feed))
        mgr.detach()
    for o in outs[1:]:
        assert (o - outs[0]).abs().max() <= TOL


@pytest.mark.parametrize("oracle", ["peft-equivalent", "diffusers-converter"])
def test_xlabs(tmp_path, oracle):
    ref, ours = _models()
    groups = _groups(XLABS, ours, seed=7, vary=False)  # xlabs files carry no alpha: scale 1
    sd = {}
    for name, (down, up, _) in groups.items():
        sd[f"{name}.down.weight"], sd[f"{name}.up.weight"] = down, up
    path = _save(sd, tmp_path / "xlabs.safetensors")
    baked = _baked(XLABS, groups, ours)
    load_ref = (
        (lambda m: _diffusers_peft(m, baked))
        if oracle == "peft-equivalent"
        else (lambda m: _diffusers_file(m, path))
    )
    ad = _parity(load_ref, lambda mgr: mgr.load_lora(path, "a"), models=(ref, ours))
    assert ad.meta["layout"] == "xlabs"


def _diffusers_bfl_converter(cfg):
    """diffusers' BFL (Control) LoRA converter with its FLUX.1 sizes replaced by ``cfg``'s."""
    from diffusers.loaders import lora_conversion_utils as lcu

    src = inspect.getsource(lcu._convert_bfl_flux_control_lora_to_diffusers)
    for old, new in (("num_layers = 19", f"num_layers = {cfg.num_layers}"),
                     ("num_single_layers = 38", f"num_single_layers = {cfg.num_single_layers}"),
                     ("inner_dim = 3072", f"inner_dim = {cfg.inner_dim}")):  # fmt: skip
        assert old in src, old
        src = src.replace(old, new)
    ns = dict(vars(lcu))
    exec(src, ns)  # noqa: S102 - a test oracle: diffusers' own mapping at this config's sizes
    return ns["_convert_bfl_flux_control_lora_to_diffusers"]


@pytest.mark.parametrize("oracle", ["peft-equivalent", "diffusers-converter"])
def test_bfl_named(tmp_path, oracle):
    ref, ours = _models()
    groups = _groups(BFL, ours, seed=11, vary=False)
    if oracle == "diffusers-converter":
        # diffusers 0.42's BFL converter swaps the halves of final_layer.adaLN's lora_A as well as
        # lora_B (the rank components, not the outputs: B·swap(A) ≠ B·A); equal halves keep its
        # result right. test_bfl_dense_merge checks our handling of that module on dense weights.
        down, up, alpha = groups["final_layer.adaLN_modulation.1"]
        groups["final_layer.adaLN_modulation.1"] = (torch.cat([down[:2], down[:2]]), up, alpha)
    sd = {}
    for name, (down, up, _) in groups.items():
        sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"] = down, up
    path = _save(sd, tmp_path / "bfl.safetensors")

    def load_ref(m):
        if oracle == "peft-equivalent":
            return _diffusers_peft(m, _baked(BFL, groups, ours))
        norms = [
            f"double_blocks.0.{s}_attn.norm.{q}_norm.scale" for s in ("img", "txt") for q in ("query", "key")
        ]
        norms += [f"single_blocks.{i}.norm.{q}_norm.scale" for i in range(2) for q in ("query", "key")]
        converted = _diffusers_bfl_converter(CFG)({**sd, **dict.fromkeys(norms, torch.ones(16))})
        m.load_lora_adapter(
            {k: v for k, v in converted.items() if ".lora_" in k}, adapter_name="a", prefix="transformer"
        )

    ad = _parity(load_ref, lambda mgr: mgr.load_lora(path, "a"), models=(ref, ours))
    assert ad.meta["layout"] == "bfl"


def _diffusers_single_file_converter(cfg):
    """diffusers' BFL checkpoint converter with its FLUX.1 inner size replaced by ``cfg``'s."""
    from diffusers.loaders import single_file_utils as sfu

    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    ns = dict(vars(sfu))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {cfg.inner_dim}"), ns)  # noqa: S102 - test oracle
    return ns["convert_flux_transformer_checkpoint_to_diffusers"]


def test_bfl_dense_merge(tmp_path):
    """Independent of any LoRA converter: the kohya LoRA merged densely into the *original* BFL
    weights (``W += alpha/r · up @ down`` on img_attn.qkv, linear1, final_layer.adaLN …), turned
    into diffusers weights by diffusers' single-file converter, equals our hooked LoRA."""
    from unidg_rt.models.convert import diffusers_to_bfl

    ref, ours = _models()
    groups = _groups(BFL, ours, seed=19)
    bfl = {k: v.clone() for k, v in diffusers_to_bfl(ref.state_dict(), CFG).items()}
    convert = _diffusers_single_file_converter(CFG)
    feed = _feed()
    with torch.no_grad():
        ref.load_state_dict(convert(dict(bfl)))
        base = ref(**feed, return_dict=False)[0]
        assert (base - ours(**feed)).abs().max() <= TOL  # the BFL round trip itself is exact
        for name, (down, up, alpha) in groups.items():
            bfl[f"{name}.weight"] += (alpha / down.shape[0]) * (up @ down)
        ref.load_state_dict(convert(dict(bfl)))
        expected = ref(**feed, return_dict=False)[0]
        AdapterManager(ours).load_lora(_kohya(groups), "a")
        got = ours(**feed)
    print(f"dense-merge diff {(got - expected).abs().max().item():.2e}")
    assert (got - base).abs().max() > 1e-2
    assert (got - expected).abs().max() <= TOL


def test_kohya_dev_lora_zero_padded_onto_fill():
    """A kohya FLUX.1-dev LoRA on img_in (64 inputs) onto Fill's 384: same as the peft path (diffusers-checked)."""
    dev = FluxTransformer(FluxConfig.tiny(fill=False, guidance=True))
    table = {
        "img_in": (("x_embedder",), False),
        "double_blocks.0.img_attn.qkv": BFL["double_blocks.0.img_attn.qkv"],
    }
    groups = _groups(table, dev, seed=13)
    cfg = FluxConfig.tiny(fill=True, guidance=True)
    fill = FluxTransformer(cfg).eval()
    feed = _feed(cfg)
    outs = []
    for sd in (_kohya(groups), _baked(table, groups, dev)):
        mgr = AdapterManager(fill)
        mgr.load_lora(sd, "a")
        with torch.no_grad():
            outs.append(fill(**feed))
        mgr.detach()
    assert (outs[0] - outs[1]).abs().max() <= TOL


# ------------------------------------------------------------------ metadata, round trip, refusals
def test_metadata_forms(tmp_path):
    assert component_metadata({"transformer.r": 4, "transformer.lora_alpha": 8, "text_encoder.r": 2}) == {
        "r": 4,
        "lora_alpha": 8,
    }
    assert component_metadata({"r": 4, "lora_alpha": 8.0, "gated": True}) == {
        "r": 4,
        "lora_alpha": 8.0,
        "gated": True,
    }
    assert (
        pattern_value({"^proj_out": 2}, "proj_out") == 2
        and pattern_value({"^proj_out": 2}, "x.proj_out") is None
    )
    assert pattern_value({"proj_out": 2}, "single_transformer_blocks.0.proj_out") == 2
    sd = {
        "transformer.x_embedder.lora_A.weight": torch.ones(2, 64),
        "transformer.x_embedder.lora_B.weight": torch.ones(32, 2),
    }
    scales = []
    for i, meta in enumerate(({"transformer.r": 2, "transformer.lora_alpha": 8}, {"r": 2, "lora_alpha": 8})):
        p = _save(sd, tmp_path / f"{i}.safetensors", {"lora_adapter_metadata": json.dumps(meta)})
        scales.append(AdapterManager(FluxTransformer(CFG)).load_lora(p, "a").pairs["x_embedder"].scale)
    folder = tmp_path / "cfg"
    folder.mkdir()
    _save(sd, folder / "lora.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    scales.append(
        AdapterManager(FluxTransformer(CFG))
        .load_lora(folder / "lora.safetensors", "a")
        .pairs["x_embedder"]
        .scale
    )
    assert scales == [4.0, 4.0, 4.0]


def test_save_round_trip_keeps_per_module_scales(tmp_path):
    _, ours = _models()
    path = _save(_kohya(_groups(BFL, ours, seed=17)), tmp_path / "kohya.safetensors")
    feed = _feed()
    mgr = AdapterManager(ours)
    ad = mgr.load_lora(path, "a")
    with torch.no_grad():
        a = ours(**feed)
        saved = mgr.save("a", tmp_path / "ours.safetensors")
        mgr.remove("a")
        ad2 = mgr.load_lora(saved, "a")
        b = ours(**feed)
    assert (a - b).abs().max() <= 1e-6
    assert all(abs(ad2.pairs[k].scale - p.scale) <= 1e-12 for k, p in ad.pairs.items())


def test_text_encoder_keys_ignored_with_warning(caplog):
    _, ours = _models()
    sd = _kohya(_groups({"double_blocks.0.img_attn.proj": BFL["double_blocks.0.img_attn.proj"]}, ours))
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(2, 8)
    sd["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, 2)
    sd["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"] = torch.zeros(2, 8)
    with caplog.at_level(logging.WARNING, logger="unidg_rt.models.lora_formats"):
        ad = AdapterManager(ours).load_lora(sd, "a")
    assert list(ad.pairs) == ["transformer_blocks::0::attn::to_out::0"]
    assert "ignoring 3 text-encoder LoRA tensors" in caplog.text


def test_refusals(tmp_path):
    _, ours = _models()
    mgr = AdapterManager(ours)
    unknown = {"lora_unet_input_blocks_0_0.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_input_blocks_0_0.lora_up.weight": torch.zeros(4, 2),
               "transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2)}  # fmt: skip
    with pytest.raises(WeightsError, match="lora_unet_input_blocks_0_0.lora_down.weight") as exc:
        mgr.load_lora(unknown, "x")
    assert "to_q" not in str(exc.value)  # only the keys that matched nothing are listed
    with pytest.raises(WeightsError, match="query_norm.scale"):  # a Control LoRA's full norm weights
        mgr.load_lora({"double_blocks.0.img_attn.norm.query_norm.scale": torch.ones(16)}, "x")
    with pytest.raises(WeightsError, match="DoRA"):
        mgr.load_lora({"transformer.proj_out.lora_magnitude_vector": torch.ones(64)}, "x")
    with pytest.raises(WeightsError, match="use_dora"):
        mgr.load_lora({}, "x", metadata={"use_dora": True})
    with pytest.raises(WeightsError, match="partner is missing"):
        mgr.load_lora({"transformer.proj_out.lora_A.weight": torch.ones(2, 32)}, "x")
    with pytest.raises(WeightsError, match="different architecture"):  # qkv of another width
        mgr.load_lora({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.ones(2, 32),
                       "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.ones(3 * 48, 2)}, "x")  # fmt: skip
    (tmp_path / "two").mkdir()
    for n in ("a", "b"):
        _save({"x": torch.zeros(1)}, tmp_path / "two" / f"{n}.safetensors")
    with pytest.raises(WeightsError, match="pass the file itself"):
        mgr.load_lora(tmp_path / "two", "x")
    assert not mgr.adapters
