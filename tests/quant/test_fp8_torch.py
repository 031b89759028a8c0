"""The torch FP8 path with static activation scales from the same captured calibration data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unidg_rt.errors import InvalidInputError
from unidg_rt.kernels.fp8 import E4M3_MAX, FP8Linear, quantize_linears_fp8
from unidg_rt.quant.fp8 import calibrated_act_scales


def test_calibrated_static_scales(tiny_checkpoint, calibrated, tmp_path):
    from unidg_rt.models.loading import load_transformer

    model = load_transformer(tiny_checkpoint)
    data = dict(np.load(calibrated.cal / "transformer.npz"))
    feed = {k: torch.from_numpy(v[5]) for k, v in data.items()}
    feed = {k: (t.long() if not t.is_floating_point() else t) for k, t in feed.items()}
    with torch.inference_mode():
        ref = model(**feed)
    scales = calibrated_act_scales(model, calibrated.cal, max_samples=4)
    assert "transformer_blocks.0.attn.to_q" in scales and "x_embedder" not in scales  # default skip list
    assert all(0 < s < 1e3 / E4M3_MAX for s in scales.values())
    names = quantize_linears_fp8(model, act_scales=scales)
    static = [m for m in model.modules() if isinstance(m, FP8Linear) and m.act_scale is not None]
    assert names and len(static) == len(names)
    with torch.inference_mode():
        out = model(**feed)
    cos = torch.nn.functional.cosine_similarity(out.flatten().double(), ref.flatten().double(), dim=0)
    assert cos > 0.99
    with pytest.raises(InvalidInputError, match="random scales never ship"):
        calibrated_act_scales(model, tmp_path)
