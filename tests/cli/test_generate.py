"""``unidg-rt generate``: settings reach the one pipeline factory; a new user's mistakes are one
clean line (exit code 2, the fix named, no traceback)."""

from __future__ import annotations

import json

import pytest

from unidg_rt.errors import ConfigError

SMALL = ("--height", "16", "--width", "16", "--steps", "1", "--seed", "0")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import torch

    for key in ("BACKEND", "ONNX_DIR", "ENGINES_DIR", "DEVICE", "FAST_PATH", "PRECISION", "CONFIG"):
        monkeypatch.delenv(f"UNIDG_{key}", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_onnxruntime_without_onnx_dir(run_cli):
    run_cli("generate", "--backend", "onnxruntime").one_line_error("--onnx-dir DIR", "unidg-rt export")


def test_onnx_dir_that_is_not_a_folder(run_cli, tmp_path):
    run = run_cli("generate", "--backend", "onnxruntime", "--onnx-dir", tmp_path / "nope")
    run.one_line_error("is not a folder", "unidg-rt export")


def test_tensorrt_without_engines_dir(run_cli):
    run_cli("generate", "--backend", "tensorrt").one_line_error("--engines-dir DIR", "unidg-rt build")


def test_device_cuda_without_cuda(run_cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_cli("generate", "--device", "cuda", *SMALL).one_line_error("device='cuda'", "--device cpu")


def test_fast_path_on_without_cuda(run_cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_cli("generate", "--fast-path", "on", *SMALL).one_line_error("needs a CUDA device", "--fast-path auto")


def test_bad_fast_path_value(run_cli):
    run_cli("generate", "--fast-path", "sometimes").one_line_error("fast_path", "'auto', 'on' or 'off'")


def test_torch_precision_other_than_fp8(run_cli):
    run_cli("generate", "--precision", "int8", *SMALL).one_line_error("precision='int8'", "onnxruntime")


def test_device_cuda_is_the_fast_path_by_default(run_cli, fake_cuda, tmp_path):
    """``generate --device cuda`` (no --fast-path) applies the fast path: fused QKV on every
    attention module, the Triton attention form, CUDA graphs; ``--fast-path off`` does not."""
    out = tmp_path / "fast.png"
    run = run_cli("generate", "--device", "cuda", *SMALL, "-o", out)
    assert run.code == 0, run.stderr
    assert len(fake_cuda) == 1 and fake_cuda[0].cuda_graphs and not fake_cuda[0].fp8
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["fast_path"] == "auto" and record["settings"]["device"] == "cuda"
    assert record["pipeline"]["requested_device"] == "cuda"
    assert record["pipeline"]["fast_path"]["fused_qkv"] == 6  # 2 double + 4 single blocks
    assert record["pipeline"]["fast_path"]["adapters"] == ["apo"]  # the shipped adapter rides along
    off = tmp_path / "eager.png"
    assert run_cli("generate", "--device", "cuda", "--fast-path", "off", *SMALL, "-o", off).code == 0
    assert (
        len(fake_cuda) == 1
        and "fast_path" not in json.loads(off.with_suffix(".json").read_text())["pipeline"]
    )


def test_fp8_precision_reaches_the_fast_path(run_cli, fake_cuda, monkeypatch):
    from unidg_rt.runtime import pipeline

    seen = {}

    def fake_from_pretrained(path=None, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(pipeline.UniDGPipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    run_cli("generate", "--device", "cuda", "--precision", "fp8", *SMALL).one_line_error("stop here")
    assert seen["fast_path"] == "auto" and seen["precision"] == "fp8" and seen["device"] == "cuda"


def test_onnx_folder_honours_precision(run_cli, monkeypatch, tmp_path):
    """``settings.precision`` (flag, env or TOML) reaches ``from_onnx``; ``--device cuda`` asks
    ONNX Runtime for its CUDA execution provider."""
    from unidg_rt.runtime import pipeline

    seen = {}

    def fake_from_onnx(folder, **kwargs):
        seen.update(kwargs, folder=folder)
        raise ConfigError("stop here")

    monkeypatch.setattr(pipeline.UniDGPipeline, "from_onnx", staticmethod(fake_from_onnx))
    run = run_cli("generate", "--backend", "onnxruntime", "--onnx-dir", tmp_path, "--precision", "int8")
    run.one_line_error("stop here")
    assert seen["precision"] == "int8" and seen["folder"] == tmp_path and seen["providers"] is None
    monkeypatch.setenv("UNIDG_PRECISION", "fp16")
    run_cli("generate", "--backend", "onnxruntime", "--onnx-dir", tmp_path, "--device", "cuda")
    assert seen["precision"] == "fp16" and seen["providers"][0] == "CUDAExecutionProvider"


def test_fast_path_on_with_another_backend(run_cli, tmp_path):
    run = run_cli("generate", "--backend", "onnxruntime", "--onnx-dir", tmp_path, "--fast-path", "on")
    run.one_line_error("fast_path='on'", "--backend torch")
