"""The real FLUX.1-Fill architecture at reduced depth (1 double + 1 single block, full widths).

Default run: a *dry run* on the ``meta`` device — graph structure only, no weights, seconds and
~0.5 GB of RAM. ``slow``: random weights materialised tensor by tensor (2.2 GB fp32), a real
export with external data, and ORT parity at a tiny token count.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from unidg_rt.export.inspect import inspect_onnx
from unidg_rt.export.onnx import export_component
from unidg_rt.export.spec import component_spec
from unidg_rt.models.config import FluxConfig
from unidg_rt.models.mmdit import FluxTransformer

pytest.importorskip("onnxscript")

CONFIG = dataclasses.replace(FluxConfig.flux_fill(), num_layers=1, num_single_layers=1)
#: nn.Linear layers of the 1+1 model (time/guidance/text embedders 6, x/context 2, double block 14,
#: single block 6, norm_out + proj_out 2) plus two attention MatMuls per layer
LINEARS, ATTENTION_MATMULS = 30, 4


def _check_flux_io(info):
    shapes = {i["name"]: i["shape"] for i in info["inputs"] + info["outputs"]}
    assert shapes == {
        "hidden_states": ["batch", "img_tokens", 384],
        "encoder_hidden_states": ["batch", "text_tokens", 4096],
        "pooled_projections": ["batch", 768],
        "timestep": ["batch"],
        "img_ids": ["img_tokens", 3],
        "txt_ids": ["text_tokens", 3],
        "guidance": ["batch"],
        "token_groups": ["tokens"],
        "group_bias": [2, 24, 5, 5],
        "noise_pred": ["batch", "img_tokens", 64],
    }


def test_flux_fill_dry_run_structure(tmp_path):
    with torch.device("meta"):
        model = FluxTransformer(CONFIG).eval()
    spec = component_spec("transformer", CONFIG)
    result = export_component("transformer", model, spec, tmp_path, attention_form="fold")
    assert result.info["dry_run"] and result.info["external_data"] is None
    info = inspect_onnx(result.path)
    _check_flux_io(info)
    assert info["initializers"] == 0  # structure only
    ops = info["op_counts"]
    assert ops.get("MatMul", 0) + ops.get("Gemm", 0) == LINEARS + ATTENTION_MATMULS
    assert info["attention"]["softmax"] == 2 and info["attention"]["softmax_with_bias_mask"] == 0
    assert info["attention"]["mask_gathers"] == 0


def _random_flux(config: FluxConfig, seed: int = 0) -> FluxTransformer:
    """Build on meta, then materialise one tensor at a time (peak RAM ≈ 1× the weights)."""
    with torch.device("meta"):
        model = FluxTransformer(config).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            t = torch.empty(p.shape, dtype=torch.float32)
            if p.ndim > 1:
                t.normal_(0.0, 0.02, generator=gen)
            else:
                t.fill_(1.0 if name == "weight" else 0.0)
            setattr(module, name, torch.nn.Parameter(t, requires_grad=False))
    return model


@pytest.mark.slow
def test_flux_fill_reduced_depth_real_export(tmp_path):
    from unidg_rt.export.verify import verify_onnx
    from unidg_rt.export.wrappers import wrap

    model = _random_flux(CONFIG)
    spec = component_spec("transformer", CONFIG)
    t0 = time.perf_counter()
    result = export_component("transformer", model, spec, tmp_path, attention_form="fold")
    elapsed = time.perf_counter() - t0
    info = inspect_onnx(result.path)
    _check_flux_io(info)
    assert result.info["external_data"] == "transformer.fold.fp32.onnx.data"  # 2.2 GB > 1.5 GiB
    numel = sum(p.numel() for p in model.parameters())  # identical norm weights get deduplicated
    assert abs(info["parameters"] - numel) < 0.01 * numel
    feed = spec.sample_inputs({"batch": 1, "img_tokens": 8, "text_tokens": 4})
    report = verify_onnx(result.path, wrap("transformer", model, spec), spec, [feed], atol=1e-3)
    assert report.passed, report.to_dict()
    print(
        f"FLUX-Fill 1+1 fold export: {elapsed:.1f} s, {result.info['total_bytes'] / 1e9:.2f} GB, "
        f"parity {report.worst:.2e}"
    )
    assert np.isfinite(report.worst)
