"""LoRA adapters carried into the exported transformer (issue 15): an extra LoRA loaded at export
time (``loras=`` / ``unidg-rt export --lora``) runs in ONNX Runtime as it runs in torch, at its
export strength and after ``set_adapters``; refusals name the argument and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unidg_rt.errors import ConfigError, WeightsError
from unidg_rt.runtime.pipeline import UniDGPipeline

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def lora_file(tiny_checkpoint, tmp_path_factory):
    """A LoRA in diffusers' layout (``transformer.``-prefixed keys, rank/alpha metadata), random
    non-zero ``B`` so the branch changes the output, rank 2, alpha 4 (scale 2)."""
    from unidg_rt.models.adapters import AdapterManager
    from unidg_rt.models.loading import load_transformer

    torch.manual_seed(1)
    model = load_transformer(tiny_checkpoint)
    manager = AdapterManager(model)
    ad = manager.add("style", rank=2, alpha=4, init="random")
    for pair in ad.pairs.values():
        torch.nn.init.normal_(pair.lora_B.weight, std=0.05)
    return manager.save("style", tmp_path_factory.mktemp("lora") / "style.safetensors")


@pytest.fixture(scope="module")
def pipes(tiny_checkpoint, lora_file, tmp_path_factory):
    from unidg_rt.export.pipeline import export_pipeline

    out = tmp_path_factory.mktemp("onnx_lora")
    manifest = export_pipeline(tiny_checkpoint, out, loras=[(lora_file, "style", 0.8)])
    torch_pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    torch_pipe.load_lora_weights(lora_file, adapter_name="style", scale=0.8)
    return manifest, UniDGPipeline.from_onnx(out), torch_pipe


def test_manifest_records_the_lora(pipes):
    manifest, ort_pipe, _ = pipes
    assert (
        manifest["adapters"]["style"]["strength"] == 0.8 and manifest["adapters"]["style"]["source"] == "lora"
    )
    (entry,) = [a for a in manifest["artifacts"] if a["component"] == "transformer"]
    assert entry["adapters"] == ["style"]
    assert ort_pipe.backend.adapter_scales.get() == {"style": pytest.approx(0.8)}


def test_lora_runs_in_the_graph_like_torch(pipes, sample_inputs):
    _, ort_pipe, torch_pipe = pipes
    img, mask, ref, rmask = sample_inputs
    kwargs = dict(defect_category="scratch", seed=4, output_type="np")
    outs = {}
    try:
        for weight in (0.8, 0.0, 1.5):
            ort_pipe.set_adapters("style", weight)
            torch_pipe.set_adapters("style", weight)
            a, b = ort_pipe(img, mask, **kwargs), torch_pipe(img, mask, **kwargs)
            assert np.abs(a.diptychs - b.diptychs).max() <= 1e-3, weight
            outs[weight] = a.diptychs
    finally:
        torch_pipe.set_adapters("style", 0.8)
    assert np.abs(outs[0.8] - outs[0.0]).max() > 1e-2  # the branch is live


def test_lora_refusals(tiny_checkpoint, lora_file, tmp_path):
    from unidg_rt.export.pipeline import export_pipeline

    with pytest.raises(WeightsError, match=r"loras\[0\]=.*does not exist"):
        export_pipeline(tiny_checkpoint, tmp_path, loras=[(tmp_path / "nope.safetensors",)])
    with pytest.raises(ConfigError, match="'style' is used twice"):
        export_pipeline(tiny_checkpoint, tmp_path, loras=[(lora_file, "style"), (lora_file, "style")])
