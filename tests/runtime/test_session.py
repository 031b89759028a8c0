"""UniDGSession: settings from TOML + env, serialised threads, typed errors, bounded memory."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from unidg_rt.errors import ConfigError, InvalidInputError, UnknownCategoryError
from unidg_rt.runtime.session import GenerationError, GenerationResult, SessionClosedError, UniDGSession
from unidg_rt.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
#: RSS growth allowed over 500 generations (after 50 warm-up calls). Each call handles a
#: 256x256 image (~0.2 MB uint8, ~0.8 MB float32 copies), so keeping even one array per call
#: would grow RSS by > 100 MB; allocator noise measured ~0.1-0.3 MB.
RSS_BOUND_MB = 16


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: the tiny model gains nothing from two, and on a shared 2-core
    machine OpenMP barriers of thousands of tiny ops stall for seconds when a core is busy."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def session(tiny_checkpoint):
    with UniDGSession(weights=tiny_checkpoint, height=16, width=16, num_inference_steps=1) as s:
        yield s


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    img = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    mask = np.zeros((256, 256), bool)
    mask[100:140, 90:150] = True
    return img, mask


def test_example_toml_is_valid():
    s = load_settings(REPO / "runtime" / "unidg.example.toml")
    assert s.backend == "torch" and s.height == 512 and s.num_inference_steps == 8


def test_settings_from_toml_and_env(tiny_checkpoint, tmp_path, monkeypatch, inputs):
    toml = tmp_path / "line.toml"
    toml.write_text(f'weights = "{tiny_checkpoint}"\nheight = 16\nwidth = 32\nnum_inference_steps = 4\n')
    monkeypatch.setenv("UNIDG_NUM_INFERENCE_STEPS", "1")  # env wins over the file
    with UniDGSession(toml) as s:
        assert (s.settings.height, s.settings.width, s.settings.num_inference_steps) == (16, 32, 1)
        r = s.generate(*inputs, category="scratch", seed=3)
        assert (
            isinstance(r, GenerationResult) and r.info["num_inference_steps"] == 1 and r.info["width"] == 32
        )
        assert r.images[0].shape == (256, 256, 3) and r.images[0].dtype == np.uint8 and r.seeds == [3]
        assert r.mask.shape == (256, 256) and r.mask.dtype == np.float32
        assert (
            s.generate(*inputs, category="scratch", seed=3, num_inference_steps=2).info["num_inference_steps"]
            == 2
        )


def test_threads_are_serialised_and_deterministic(session, inputs):
    img, mask = inputs
    expected = {seed: session.generate(img, mask, img, mask, seed=seed).images[0] for seed in range(6)}
    results, errors = {}, []

    def worker(seeds):
        try:
            for seed in seeds:
                results[seed] = session.generate(img, mask, img, mask, seed=seed).images[0]
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=([i, i + 3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(results[s], expected[s]) for s in expected)


def test_typed_errors(session, inputs):
    img, mask = inputs
    with pytest.raises(InvalidInputError, match="mask_image is empty"):
        session.generate(img, np.zeros_like(mask), category="scratch")
    with pytest.raises(UnknownCategoryError, match="wobble"):
        session.generate(img, mask, category="wobble")
    with pytest.raises(InvalidInputError, match="unknown generate"):
        session.generate(img, mask, category="scratch", steps=3)
    assert session.stats()["failures"] >= 2


def test_backend_failure_and_close(inputs):
    class Exploding:
        def __call__(self, **kwargs):
            raise RuntimeError("CUDA error: device-side assert")

    s = UniDGSession(pipeline=Exploding())
    with pytest.raises(GenerationError, match="device-side assert") as info:
        s.generate(*inputs, category="scratch")
    assert isinstance(info.value.__cause__, RuntimeError)
    s.close()
    with pytest.raises(SessionClosedError):
        s.generate(*inputs, category="scratch")


def test_calls_never_overlap(inputs):
    class Slow:
        active = peak = 0

        def __call__(self, **kwargs):
            Slow.active += 1
            Slow.peak = max(Slow.peak, Slow.active)
            time.sleep(0.01)
            Slow.active -= 1
            from unidg_rt.runtime.outputs import UniDGPipelineOutput

            return UniDGPipelineOutput(
                images=[kwargs["image"]], masks=np.zeros(kwargs["image"].shape[:2]), seeds=[0]
            )

    s = UniDGSession(pipeline=Slow())
    threads = [threading.Thread(target=s.generate, args=inputs) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Slow.peak == 1 and s.stats()["calls"] == 8


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS read from /proc (Linux)")
def test_warmup_and_bounded_memory_over_500_calls(session, inputs):
    img, mask = inputs
    assert session.warmup() >= 0
    for i in range(50):
        session.generate(img, mask, img, mask, seed=i)
    before = _rss_mb()
    t0 = time.perf_counter()
    for i in range(500):
        session.generate(img, mask, img, mask, seed=i)
    growth = _rss_mb() - before
    print(f"RSS growth over 500 generations: {growth:.2f} MB in {time.perf_counter() - t0:.1f} s")
    assert growth < RSS_BOUND_MB


def test_precision_setting_needs_the_onnxruntime_backend():
    from unidg_rt.runtime.session import build_pipeline

    settings = load_settings(None, precision="int8")
    assert settings.precision == "int8" and settings.backend == "torch"
    with pytest.raises(ConfigError, match="precision='int8'.*backend='onnxruntime'"):
        build_pipeline(settings)


def _capture(monkeypatch, loader: str) -> dict:
    """Replace ``UniDGPipeline.<loader>`` with a recorder that returns a sentinel."""
    from unidg_rt.runtime import pipeline

    seen: dict = {}

    def fake(path=None, **kwargs):
        seen.update(kwargs, path=path)
        return "pipeline"

    monkeypatch.setattr(pipeline.UniDGPipeline, loader, staticmethod(fake))
    return seen


def test_build_pipeline_threads_fast_path_and_precision(monkeypatch):
    """The one factory (sessions, ``synth``, ``generate`` and ``eval`` via
    ``cli.common.pipeline_from_settings``) passes every model-selecting setting on."""
    from unidg_rt.cli.common import pipeline_from_settings
    from unidg_rt.runtime.session import build_pipeline

    seen = _capture(monkeypatch, "from_pretrained")
    monkeypatch.setenv("UNIDG_FAST_PATH", "false")
    assert build_pipeline(load_settings(None, device="cuda", precision="fp8")) == "pipeline"
    assert seen["fast_path"] == "off" and seen["precision"] == "fp8" and seen["device"] == "cuda"
    monkeypatch.delenv("UNIDG_FAST_PATH")
    assert pipeline_from_settings(load_settings(None, attention_form="fold")) == "pipeline"
    assert seen["fast_path"] == "auto" and seen["precision"] is None and seen["attention_form"] == "fold"


def test_build_pipeline_engines_and_onnx_settings(monkeypatch, tmp_path):
    from unidg_rt.runtime.session import build_pipeline

    engines = _capture(monkeypatch, "from_engines")
    build_pipeline(load_settings(None, backend="tensorrt", engines_dir=tmp_path, precision="fp8"))
    assert engines["path"] == tmp_path and engines["precision"] == "fp8" and "device" not in engines
    build_pipeline(load_settings(None, backend="tensorrt", engines_dir=tmp_path, device="cuda:1"))
    assert engines["device"] == "cuda:1"
    with pytest.raises(ConfigError, match="attention_form='fold'.*--forms"):
        build_pipeline(load_settings(None, backend="tensorrt", engines_dir=tmp_path, attention_form="fold"))
    onnx = _capture(monkeypatch, "from_onnx")
    build_pipeline(load_settings(None, backend="onnxruntime", onnx_dir=tmp_path, attention_form="fold"))
    assert onnx["attention_form"] == "fold" and onnx["providers"] is None and "precision" not in onnx
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        build_pipeline(load_settings(None, backend="onnxruntime", onnx_dir=tmp_path, device="cuda:1"))


@pytest.mark.parametrize("backend,flag", [("onnxruntime", "--onnx-dir"), ("tensorrt", "--engines-dir")])
def test_build_pipeline_needs_the_backend_folder(backend, flag):
    from unidg_rt.runtime.session import build_pipeline

    with pytest.raises(ConfigError, match=f"needs a folder: pass {flag} DIR") as exc:
        build_pipeline(load_settings(None, backend=backend))
    assert "\n" not in str(exc.value)


def test_session_fast_path_on_without_cuda_is_a_typed_error(monkeypatch):
    import torch

    from unidg_rt.runtime.optimize import FastPathError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FastPathError, match="needs a CUDA device.*--fast-path auto"):
        UniDGSession(fast_path=True)
