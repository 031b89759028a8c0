"""``unidg-rt bench --fast-path``: ``on`` without CUDA is one clean line; ``off`` reports the
fast variants as not run."""

from __future__ import annotations

import json

TINY = (
    "--preset",
    "tiny",
    "--size",
    "16",
    "--steps",
    "1",
    "--runs",
    "1",
    "--warmup",
    "0",
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--threads",
    "1",
    "--no-e2e",
)


def test_bench_fast_path_on_without_cuda(run_cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_cli("bench", *TINY, "--fast-path", "on").one_line_error("needs a CUDA device", "--fast-path auto")


def test_bench_fast_path_off_and_json(run_cli, tmp_path):
    out = tmp_path / "bench.json"
    run = run_cli("bench", *TINY, "--fast-path", "off", "--variants", "ours-eager,ours-fast", "--json", out)
    assert run.code == 0, run.stderr
    res = json.loads(out.read_text())["results"]
    assert "median_ms" in res["ours-eager"]["dit_step"] and "--fast-path off" in res["ours-fast"]["skipped"]


def test_bench_device_cuda_without_cuda(run_cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_cli("bench", "--preset", "tiny", "--device", "cuda").one_line_error("device='cuda'", "--device cpu")


def test_bench_unknown_preset_and_dtype(run_cli):
    run_cli("bench", "--preset", "flux-schnell", "--device", "cpu").one_line_error(
        "preset='flux-schnell'", "tiny"
    )
    run_cli("bench", "--dtype", "float64", "--device", "cpu").one_line_error("dtype='float64'", "bfloat16")
