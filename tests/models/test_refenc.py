"""The learned reference encoder: shapes, file round trip, input conversion, the torch runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unidg_rt.errors import WeightsError
from unidg_rt.models.refenc import (
    ReferenceEncoder,
    ReferenceEncoderConfig,
    TorchReferenceEncoder,
    load_reference_encoder,
    pixels_to_input,
    save_reference_encoder,
)

CFG = ReferenceEncoderConfig(seq_len=4, dim=32, pooled_dim=16, width=8, image_size=32)


def _encoder(seed=0):
    torch.manual_seed(seed)
    return ReferenceEncoder(CFG).eval()


def test_shapes_and_any_input_side():
    enc = _encoder()
    e, p = enc(torch.randn(3, 3, 32, 32))
    assert e.shape == (3, 4, 32) and p.shape == (3, 16)
    e, p = enc(torch.randn(1, 3, 48, 48))  # fully convolutional + global pooling
    assert e.shape == (1, 4, 32)


def test_file_round_trip_is_exact(tmp_path):
    enc = _encoder()
    save_reference_encoder(tmp_path / "ref.safetensors", enc)
    back = load_reference_encoder(tmp_path / "ref.safetensors")
    assert back.config == CFG and not any(p.requires_grad for p in back.parameters())
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(enc(x), back(x), strict=True):
        assert torch.equal(a, b)


def test_a_file_without_the_card_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(WeightsError, match="reference encoder"):
        load_reference_encoder(tmp_path / "x.safetensors")


def test_pixels_to_input_uint8_float_and_resize():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a = pixels_to_input(u8, 32)
    b = pixels_to_input(u8.astype(np.float32) / 255.0, 32)
    assert a.shape == (2, 3, 32, 32) and torch.allclose(a, b, atol=1e-6)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert pixels_to_input(u8[:, :16, :16], 32).shape == (2, 3, 32, 32)


def test_cut_out_grays_outside_the_mask():
    from unidg_rt.models.refenc import cut_out

    x = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 3:6] = True
    y = cut_out(x, mask)
    assert torch.equal(y[:, :, 2:5, 3:6], x[:, :, 2:5, 3:6])
    assert (y.permute(0, 2, 3, 1)[~mask] == 0).all()  # 0 in [-1, 1] = the runtime's 0.5 gray


def test_torch_runner_equals_the_module():
    enc = _encoder()
    crop = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    e, p = TorchReferenceEncoder(enc).encode(crop)
    with torch.no_grad():
        e_ref, p_ref = enc(pixels_to_input(crop[None], 32))
    assert e.dtype == np.float32 and e.shape == (4, 32) and p.shape == (16,)
    np.testing.assert_array_equal(e, e_ref[0].numpy())
    np.testing.assert_array_equal(p, p_ref[0].numpy())
