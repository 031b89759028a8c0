"""Shared fixtures. Markers: gpu (CUDA only), trt (TensorRT bindings), slow (excluded by default)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on CPU under Triton's interpreter


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
        c: (rng.standard_normal((8, cfg.joint_attention_dim)).astype(np.float32),
            rng.standard_normal(cfg.pooled_projection_dim).astype(np.float32))
        for c in ("scratch", "hole", "black_spot")
    }  # fmt: skip
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
