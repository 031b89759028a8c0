"""Shared fixtures. Markers: gpu (CUDA only), trt (TensorRT bindings), slow (excluded by default).

Under ``CI=true`` (``.ci/run``) a missing dependency that scripts/test.sh installs is a failure,
never a skip: the session refuses to start when one of ``CI_REQUIRED`` does not import,
``pytest.importorskip`` of one of them fails instead of skipping, and a test skipped for a missing
dependency (reason naming a ``pip install`` / ModelOpt / missing bindings) is reported failed."""

from __future__ import annotations

import importlib
import os
import re

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on CPU under Triton's interpreter

#: what scripts/test.sh installs (extras torch, export, kernels, text, ray, trt-rtx, quant + the dev
#: group), as import names; CI must import every one of them
CI_REQUIRED = (
    "unidg_rt",
    "torch",
    "numpy",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "triton",
    "transformers",
    "tokenizers",
    "ray",
    "ray.data",
    "tensorrt_rtx_bindings",
    "modelopt.onnx.quantization",
    "onnx_graphsurgeon",
    "polygraphy",
    "diffusers",
    "peft",
    "hypothesis",
    "pytest_benchmark",
)
#: skip reasons that mean "a dependency is missing" (importorskip's own wording included)
DEPENDENCY_SKIP = re.compile(r"could not import|pip install|bindings missing|modelopt", re.IGNORECASE)


def ci_mode() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def ci_required(modname: str) -> bool:
    """``modname`` (or its top-level package) is something CI installs."""
    top = {m.split(".")[0] for m in CI_REQUIRED}
    return modname in CI_REQUIRED or modname.split(".")[0] in top


def missing_ci_modules(modules=CI_REQUIRED) -> dict[str, str]:
    """``{module: error}`` for each module that does not import."""
    missing = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure counts as missing
            missing[name] = f"{type(exc).__name__}: {exc}"
    return missing


_importorskip = pytest.importorskip


def strict_importorskip(modname, minversion=None, reason=None, **kwargs):
    """``pytest.importorskip`` that fails instead of skipping in CI for a module CI installs."""
    try:
        return _importorskip(modname, minversion=minversion, reason=reason, **kwargs)
    except pytest.skip.Exception as exc:
        if ci_mode() and ci_required(modname):
            pytest.fail(
                f"CI=true: {modname!r} must import (scripts/test.sh installs it): {exc}", pytrace=False
            )
        raise


pytest.importorskip = strict_importorskip


def pytest_sessionstart(session):
    if not ci_mode():
        return
    missing = missing_ci_modules()
    if missing:
        lines = "\n".join(f"  {name}: {err}" for name, err in missing.items())
        pytest.exit(f"CI=true but modules scripts/test.sh installs do not import:\n{lines}", returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (ci_mode() and report.skipped and isinstance(report.longrepr, tuple)) or hasattr(
        report, "wasxfail"
    ):
        return
    reason = str(report.longrepr[2])
    if DEPENDENCY_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = f"CI=true: skipped for a missing dependency CI must have: {reason}"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # pragma: no cover
        pass
    yield


# ----------------------------------------------------------------------------- tiny models
TINY_DEFAULTS = {
    "height": 64,
    "width": 64,
    "num_inference_steps": 3,
    "guidance_scale": 3.5,
    "text_seq_len": 8,
    "group_bias_lambda": 1.0,
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny UniDG checkpoint (Fill channels, guidance) + a 3-category embeddings cache."""
    import numpy as np
    import torch

    from unidg_rt.embeddings import EmbeddingsCache
    from unidg_rt.models.loading import save_checkpoint
    from unidg_rt.models.presets import build_random

    torch.manual_seed(0)
    transformer, vae = build_random("tiny", seed=0)
    folder = tmp_path_factory.mktemp("tiny")
    path = save_checkpoint(folder / "model.safetensors", transformer, vae, defaults=TINY_DEFAULTS)
    rng = np.random.default_rng(0)
    cfg = transformer.config
    entries = {
        c: (
            rng.standard_normal((8, cfg.joint_attention_dim)).astype(np.float32),
            rng.standard_normal(cfg.pooled_projection_dim).astype(np.float32),
        )
        for c in ("scratch", "hole", "black_spot")
    }
    EmbeddingsCache.save(folder / "embeddings.safetensors", entries)
    return path


@pytest.fixture(scope="session")
def sample_inputs():
    """(target uint8 [100,120,3], target mask, reference uint8 [80,90,3], reference mask)."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = (rng.random((100, 120, 3)) * 255).astype(np.uint8)
    mask = np.zeros((100, 120), bool)
    mask[40:60, 50:70] = True
    ref = (rng.random((80, 90, 3)) * 255).astype(np.uint8)
    rmask = np.zeros((80, 90), bool)
    rmask[10:30, 20:40] = True
    return img, mask, ref, rmask


# ----------------------------------------------------------------------------- shipped model
@pytest.fixture(scope="session")
def default_onnx_dir(tmp_path_factory):
    """``unidg-rt export`` of the shipped default model (card adapters and all), ``fold`` and
    ``decomposed`` forms, fp32: one export (~1.5 min of CPU) shared by the parity and quantisation
    tests. Treat it as read-only (copy it before adding artifacts)."""
    from unidg_rt.export.pipeline import export_pipeline

    out = tmp_path_factory.mktemp("default_onnx") / "onnx"
    export_pipeline(None, out, forms=("fold", "decomposed"))
    return out
