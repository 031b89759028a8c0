"""Group-bias reference attention == a hand-built N×N additive-bias attention."""

from __future__ import annotations

import math

import pytest
import torch

from unidg_rt.models.attention import attention, folded_attention, group_bias_mask, reference_attention


def _hand(q, k, v, g, t):
    b, h = q.shape[:2]
    t3 = t if t.ndim == 3 else t[None].expand(h, -1, -1)
    bias = torch.stack([torch.stack([t3[i][g[j]][:, g[j]] for i in range(h)]) for j in range(b)])
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, -1) @ v


@pytest.mark.parametrize("per_head", [False, True])
def test_reference_equals_hand_built(per_head):
    q, k, v = (torch.randn(2, 3, 19, 16, dtype=torch.float64) for _ in range(3))
    g = torch.randint(0, 5, (2, 19))
    t = torch.randn(3, 5, 5, dtype=torch.float64) if per_head else torch.randn(5, 5, dtype=torch.float64)
    assert torch.allclose(reference_attention(q, k, v, g, t), _hand(q, k, v, g, t), atol=1e-12)


def test_zero_table_is_plain_attention():
    q, k, v = (torch.randn(1, 2, 11, 8) for _ in range(3))
    g = torch.randint(0, 5, (11,))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(reference_attention(q, k, v, g, torch.zeros(5, 5)), plain, atol=1e-6)


def test_neg_inf_blocks_keys():
    q, k, v = (torch.randn(1, 1, 6, 8, dtype=torch.float64) for _ in range(3))
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    t = torch.zeros(5, 5, dtype=torch.float64)
    t[0, 1] = -math.inf  # group-0 queries cannot see group-1 keys
    out = reference_attention(q, k, v, g, t)
    expected = torch.nn.functional.scaled_dot_product_attention(q[:, :, :3], k[:, :, :3], v[:, :, :3])
    assert torch.allclose(out[:, :, :3], expected, atol=1e-12)
    assert torch.allclose(folded_attention(q, k, v, g, t), out, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_folding_equals_reference(dtype, tol):
    q, k, v = (torch.randn(2, 3, 23, 32, dtype=dtype) for _ in range(3))
    g = torch.randint(0, 5, (2, 23))
    t = torch.randn(3, 5, 5, dtype=dtype) * 3
    assert (folded_attention(q, k, v, g, t) - reference_attention(q, k, v, g, t)).abs().max() <= tol


def test_mask_shape_and_dispatch_errors():
    g = torch.randint(0, 5, (7,))
    assert group_bias_mask(g, torch.zeros(5, 5), batch=2, heads=4).shape == (2, 1, 7, 7)
    q = torch.randn(1, 2, 7, 8)
    with pytest.raises(ValueError, match="unknown attention form"):
        attention(q, q, q, g, torch.zeros(5, 5), form="nope")
    with pytest.raises(ValueError, match="heads"):
        reference_attention(q, q, q, g, torch.zeros(3, 5, 5))
