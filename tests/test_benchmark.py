"""Bench harness: a CPU smoke run (structure of the JSON) + GPU pytest-benchmark tests (skipped in CI)."""

from __future__ import annotations

import pytest
import torch

from unidg_rt.benchmark import BenchConfig, run_bench


def test_bench_smoke_cpu():
    cfg = BenchConfig(
        preset="tiny",
        height=32,
        width=32,
        steps=2,
        text_len=4,
        runs=2,
        warmup=1,
        device="cpu",
        dtype="float32",
        variants=("ours-eager", "ours-fast", "ours-fast-nobias", "ours-fast-fp8", "diffusers-eager"),
    )
    out = run_bench(cfg)
    res = out["results"]
    assert res["ours-eager"]["dit_step"]["runs"] == 2 and "median_ms" in res["ours-fast"]["dit_step"]
    # the fast variants run the product's apply_fast_path; on CPU its CPU-capable switches
    assert res["ours-fast"]["fast_path"] == {"fused_qkv": 4, "attention_form": "fold"}
    assert "median_ms" in res["ours-fast-nobias"]["dit_step"]
    assert "FP8" in res["ours-fast-fp8"]["skipped"]  # no CUDA here: reported, not faked
    for v in ("ours-eager", "ours-fast"):  # reference mode through UniDGPipeline
        assert res[v]["e2e_2_steps"]["runs"] == 3 and res[v]["e2e_2_steps"]["median_ms"] > 0
    assert "e2e_2_steps" not in res["ours-fast-nobias"]
    assert set(out["ratios_vs_diffusers_eager"]) >= {"ours-eager", "diffusers-eager"}
    assert out["environment"]["torch"] == torch.__version__
    assert "fold" in res["attention"]


def test_bench_fast_path_switch_cpu():
    from unidg_rt.runtime.optimize import FastPathError

    base = dict(
        preset="tiny",
        height=16,
        width=16,
        steps=1,
        text_len=4,
        runs=1,
        warmup=0,
        device="cpu",
        dtype="float32",
        variants=("ours-fast",),
        e2e=False,
    )
    partials = []
    out = run_bench(
        BenchConfig(**{**base, "variants": ("ours-eager", "ours-fast")}, fast_path="off"), partials.append
    )
    assert "--fast-path off" in out["results"]["ours-fast"]["skipped"] and out["complete"]
    assert [sorted(p["results"]) for p in partials] == [["ours-eager"], ["ours-eager", "ours-fast"]]
    assert not any(p["complete"] for p in partials)  # a run cut short still leaves its numbers
    with pytest.raises(FastPathError, match="needs a CUDA device"):
        run_bench(BenchConfig(**base, fast_path="on"))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["ours-fast", "ours-fast-fp8", "diffusers-eager"])
def test_benchmark_dit_step_flux_fill(benchmark, variant):
    from unidg_rt.benchmark import _diffusers, _inputs, _ours
    from unidg_rt.models.config import FluxConfig
    from unidg_rt.models.mmdit import FluxTransformer

    cfg = BenchConfig(preset="flux-fill", height=512, width=512, text_len=512)
    tcfg = FluxConfig.flux_fill()
    with torch.device("cuda"):
        state = {k: v.bfloat16() for k, v in FluxTransformer(tcfg).state_dict().items()}
    build = _diffusers if variant.startswith("diffusers") else _ours
    model = build(variant, state, tcfg, torch.device("cuda"), torch.bfloat16)
    feed = _inputs(cfg, tcfg, torch.device("cuda"), torch.bfloat16)

    def step():
        with torch.inference_mode():
            model(**feed)
        torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=10, warmup_rounds=3)
