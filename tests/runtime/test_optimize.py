"""Fast-path switches keep the numerics: fused QKV exact, FP8 close to fp32, Triton glue ops."""

from __future__ import annotations

import pytest
import torch

from unidg_rt.kernels.fp8 import FP8Linear, quantize_linears_fp8, quantize_rowwise
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.runtime.optimize import (
    CUDAGraphRunner,
    FastPathConfig,
    FastPathError,
    FastTransformerRunner,
    FusedQKV,
    apply_fast_path,
    optimize_transformer,
    resolve_fast_path,
)


def _feed(cfg, b=2, h=4, w=8, t=8):
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None]
    return dict(
        hidden_states=torch.randn(b, h * w, cfg.in_channels),
        encoder_hidden_states=torch.randn(b, t, cfg.joint_attention_dim),
        pooled_projections=torch.randn(b, cfg.pooled_projection_dim),
        timestep=torch.rand(b),
        img_ids=ids.reshape(-1, 3),
        txt_ids=torch.zeros(t, 3),
        guidance=torch.full((b,), 3.5),
        token_groups=torch.randint(0, 5, (t + h * w,)),
        group_bias=torch.randn(5, 5),
    )


def _pair(cfg):
    a = FluxTransformer(cfg).eval()
    b = FluxTransformer(cfg).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def test_fused_qkv_matches_eager():
    cfg = FluxConfig.tiny()
    ref, fast = _pair(cfg)
    report = optimize_transformer(fast, FastPathConfig(fuse_qkv=True, fp8=False))
    assert report["fused_qkv"] == cfg.total_layers
    feed = _feed(cfg)
    with torch.no_grad():
        assert (ref(**feed) - fast(**feed)).abs().max() <= 1e-5
    assert CUDAGraphRunner(fast)(**feed).shape == ref(**feed).shape  # CPU: plain call


def test_triton_glue_ops_in_model_interpreter():
    pytest.importorskip("triton")
    cfg = FluxConfig.tiny()
    ref, fast = _pair(cfg)
    for m in fast.modules():
        if hasattr(m, "fused_ops"):
            m.fused_ops = True
    import unidg_rt.kernels.fused_ops as fo

    feed = _feed(cfg, b=1, h=2, w=4, t=4)
    orig = fo.rmsnorm_rope
    fo.rmsnorm_rope = lambda *a, **k: orig(*a, **{**k, "use_triton": True})  # force the kernel on CPU
    try:
        with torch.no_grad():
            assert (ref(**feed) - fast(**feed)).abs().max() <= 1e-5
    finally:
        fo.rmsnorm_rope = orig


def test_fp8_rowwise_quantisation_error_bounded():
    w = torch.randn(64, 128)
    w8, s = quantize_rowwise(w)
    rel = ((w8.float() * s - w).norm() / w.norm()).item()
    assert rel < 0.05  # E4M3 has a 3-bit mantissa: ~2-3 % relative error
    lin = torch.nn.Linear(128, 64)
    x = torch.randn(3, 10, 128)
    y = FP8Linear(lin)(x)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), lin(x).flatten(), dim=0)
    assert y.shape == (3, 10, 64) and cos > 0.995


def test_fp8_model_close_to_fp32():
    cfg = FluxConfig.tiny(num_attention_heads=2, attention_head_dim=32, axes_dims_rope=(8, 12, 12))
    ref, fast = _pair(cfg)
    names = quantize_linears_fp8(fast)
    assert names and all("x_embedder" not in n and "proj_out" != n for n in names)
    feed = _feed(cfg)
    with torch.no_grad():
        a, b = ref(**feed), fast(**feed)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert cos > 0.99, cos


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager():
    cfg = FluxConfig.tiny()
    model = FluxTransformer(cfg).cuda().eval()
    feed = {k: v.cuda() for k, v in _feed(cfg).items()}
    runner = CUDAGraphRunner(model)
    with torch.no_grad():
        eager = model(**feed)
        assert torch.allclose(runner(**feed), eager, atol=1e-5)
        feed2 = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in feed.items()}
        assert torch.allclose(runner(**feed2), model(**feed2), atol=1e-5)


# ---------------------------------------------------------------------- adapters on the fast path
class FakeGraphs:
    """The capture/replay API without CUDA: ``replay`` re-runs the captured closure into the
    captured output tensor. The closure reads the static input buffers and the static strength
    tensors, exactly what a real graph reads, so stale buffers show up as wrong outputs."""

    def capture(self, fn, warmup):
        out = fn()
        return (fn, out), out

    def replay(self, graph):
        fn, out = graph
        out.copy_(fn())


def _adapted_pair(cfg):
    """Eager and fast-path-ready models with the same gated LoRA (random B: it changes outputs)."""
    from unidg_rt.models.adapters import AdapterManager

    ref, fast = _pair(cfg)
    m_ref, m_fast = AdapterManager(ref), AdapterManager(fast)
    ad = m_ref.add("apo", rank=4, gated=True, init="random")
    torch.nn.init.normal_(ad.gate.b)  # a gate that really depends on t
    m_fast.load_lora(m_ref.state_dict("apo"), "apo")
    m_fast.adapters["apo"].alpha = ad.alpha
    return ref, fast, m_ref, m_fast


def test_fused_qkv_carries_time_gated_adapters_and_fuse():
    cfg = FluxConfig.tiny()
    ref, fast, m_ref, m_fast = _adapted_pair(cfg)
    plain = FluxTransformer(cfg).eval()
    plain.load_state_dict(ref.state_dict())
    report = optimize_transformer(fast, FastPathConfig())
    assert report["fused_qkv"] == cfg.total_layers
    attn = fast.transformer_blocks[0].attn
    assert isinstance(attn.to_qkv, FusedQKV) and isinstance(attn.to_added_qkv, FusedQKV)
    assert attn.to_q._forward_hooks  # the adapter hook stays where AdapterManager put it
    feed = _feed(cfg)
    with torch.no_grad():
        assert (ref(**feed) - plain(**feed)).abs().max() > 1e-2  # the adapter matters
        for s in (1.0, 0.3, 0.0):
            m_ref.set_scales({"apo": s})
            m_fast.set_scales({"apo": s})
            assert (ref(**feed) - fast(**feed)).abs().max() <= 1e-5, s
        m_ref.set_scales({"apo": 0.7})
        m_fast.set_scales({"apo": 0.7})
        m_ref.fuse(t=0.4)
        m_fast.fuse(t=0.4)  # in place on the q/k/v views: the fused GEMM sees it
        assert (ref(**feed) - fast(**feed)).abs().max() <= 1e-5
        m_ref.unfuse()
        m_fast.unfuse()
        assert (ref(**feed) - fast(**feed)).abs().max() <= 1e-5


def test_cuda_graph_bookkeeping_keys_and_strength_buffers():
    """One capture per (batch, height, width); strengths come from refilled static tensors
    (a changed strength reuses the graph and is honoured); fusing an adapter re-captures."""
    cfg = FluxConfig.tiny()
    ref, fast, m_ref, m_fast = _adapted_pair(cfg)
    optimize_transformer(fast, FastPathConfig())
    runner = CUDAGraphRunner(fast, adapters=m_fast, graphs=FakeGraphs())
    assert runner.enabled
    shapes = [(1, 2, 4), (1, 2, 4), (2, 2, 4), (1, 4, 4), (1, 2, 4)]
    with torch.no_grad():
        for b, h, w in shapes:
            feed = _feed(cfg, b=b, h=h, w=w, t=4)
            assert (runner(**feed) - ref(**feed)).abs().max() <= 1e-5
        assert runner.captures == 3 and runner.replays == 5 and len(runner.keys) == 3
        feed = _feed(cfg, b=1, h=2, w=4, t=4)
        for s in (0.5, 1.0, 0.0):  # per-segment strengths: same graph, new buffer value
            m_ref.set_scales({"apo": s})
            m_fast.set_scales({"apo": s})
            assert (runner(**feed) - ref(**feed)).abs().max() <= 1e-5, s
        assert runner.captures == 3
        out = runner(**feed)
        again = runner(**_feed(cfg, b=1, h=2, w=4, t=4))
        assert out.data_ptr() != again.data_ptr()  # outputs are copies, never the graph's buffer
        m_ref.set_scales({"apo": 0.6})
        m_fast.set_scales({"apo": 0.6})
        m_ref.fuse(t=0.3)
        m_fast.fuse(t=0.3)
        assert (runner(**feed) - ref(**feed)).abs().max() <= 1e-5
        assert runner.captures == 4  # adapter state is part of the key


def test_resolve_fast_path_modes():
    assert resolve_fast_path("auto", "cpu") is None and resolve_fast_path(False, "cpu") is None
    assert resolve_fast_path("auto", "cuda") == FastPathConfig()  # resolution only: CUDA is the default
    assert resolve_fast_path("off", "cuda") is None
    with pytest.raises(FastPathError, match="--fast-path auto"):
        resolve_fast_path(True, "cpu")
    with pytest.raises(FastPathError, match="precision='fp8'"):
        resolve_fast_path("auto", "cpu", precision="fp8")
    from unidg_rt.errors import ConfigError

    with pytest.raises(ConfigError, match="auto / on / off"):
        resolve_fast_path("sometimes", "cuda")


def test_apply_fast_path_wires_backend():
    from unidg_rt.runtime.pipeline import UniDGPipeline

    pipe = UniDGPipeline.from_pretrained(fast_path="auto")  # CPU: auto = eager
    backend = pipe.backend
    assert "fast_path" not in backend.info and not isinstance(backend.transformer, FastTransformerRunner)
    with pytest.raises(FastPathError, match="needs a CUDA device"):
        UniDGPipeline.from_pretrained(fast_path=True)
    report = apply_fast_path(backend, FastPathConfig(attention_form="triton"), graphs=FakeGraphs())
    model = backend.transformer_model
    attns = [m for m in model.modules() if hasattr(m, "form")]
    assert report["fused_qkv"] == len(attns) and all(hasattr(m, "to_qkv") for m in attns)
    assert {m.form for m in attns} == {"triton"} and report["adapters"] == ["apo"]
    assert isinstance(backend.transformer, FastTransformerRunner) and backend.info["fast_path"] is report


def test_fast_path_pipeline_equals_eager_shipped_model(monkeypatch):
    """The embedded model (time-gated APO adapter, two segments with strengths 0.5 / 1.0) on the
    fast path — fused QKV, Triton group-bias attention and RMSNorm+RoPE kernels (interpreter),
    graph bookkeeping (fake replays) — equals the eager pipeline: latents ≤ 1e-5, images ≤ 1e-5."""
    pytest.importorskip("triton")
    import numpy as np

    import unidg_rt.kernels.fused_ops as fo
    from unidg_rt.runtime.pipeline import UniDGPipeline

    torch.set_num_threads(1)
    eager = UniDGPipeline.from_pretrained(fast_path=False)
    fast = UniDGPipeline.from_pretrained(fast_path=False)
    assert [s["adapter_scales"] for s in fast.defaults["segments"]] == [{"apo": 0.5}, {"apo": 1.0}]
    apply_fast_path(fast.backend, FastPathConfig(attention_form="triton"), graphs=FakeGraphs())
    for m in fast.backend.transformer_model.modules():
        if hasattr(m, "fused_ops"):
            m.fused_ops = True  # optimize_transformer sets it on CUDA only
    orig = fo.rmsnorm_rope
    monkeypatch.setattr(fo, "rmsnorm_rope", lambda *a, **k: orig(*a, **{**k, "use_triton": True}))
    rng = np.random.default_rng(0)
    img = (rng.random((80, 90, 3)) * 255).astype(np.uint8)
    mask = np.zeros((80, 90), bool)
    mask[30:50, 30:60] = True
    kw = dict(
        image=img,
        mask_image=mask,
        reference_image=img.copy(),
        reference_mask=mask,
        height=48,
        width=48,
        num_inference_steps=4,
        seed=1,
    )
    a = eager(**kw, output_type="latent").images
    b = fast(**kw, output_type="latent").images
    assert (a - b).abs().max() <= 1e-5
    runner = fast.backend.transformer.graph_runner
    assert runner.captures == 1 and runner.replays == 4  # one graph, replayed across both segments
    x = eager(**kw, output_type="np").images[0]
    y = fast(**kw, output_type="np").images[0]
    assert np.abs(x - y).max() <= 1e-5 and runner.captures == 1


@pytest.mark.gpu
def test_cuda_graph_with_adapters_equals_eager_gpu():
    cfg = FluxConfig.tiny()
    ref, fast, m_ref, m_fast = _adapted_pair(cfg)
    ref, fast = ref.cuda(), fast.cuda()
    for m in (m_ref, m_fast):
        for ad in m.adapters.values():
            ad.pairs.cuda()
            ad.gate.cuda()
    optimize_transformer(fast, FastPathConfig(attention_form="triton"))
    runner = CUDAGraphRunner(fast, adapters=m_fast)
    feed = {k: v.cuda() for k, v in _feed(cfg).items()}
    with torch.no_grad():
        for s in (0.5, 1.0):
            m_ref.set_scales({"apo": s})
            m_fast.set_scales({"apo": s})
            assert (runner(**feed) - ref(**feed)).abs().max() <= 1e-4, s
    assert runner.captures == 1 and runner.replays == 2
