"""Fused glue kernels vs their torch references and vs the diffusers / torch modules FLUX uses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unidg_rt.errors import InvalidInputError  # noqa: E402
from unidg_rt.kernels import fused_ops  # noqa: E402
from unidg_rt.kernels.fused_ops import (  # noqa: E402
    gated_residual,
    gated_residual_reference,
    gated_residual_triton,
    layernorm_modulate,
    layernorm_modulate_reference,
    layernorm_modulate_triton,
    rmsnorm_rope,
    rmsnorm_rope_reference,
    rmsnorm_rope_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOL = 1e-5


def _rope_tables(n, d, device=DEVICE):
    """FLUX-style cos/sin: per-pair frequencies repeated for (re, im) -> [N, D] fp32."""
    freqs = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))  # [D/2]
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None]  # [N, D/2]
    cos = angles.cos().repeat_interleave(2, dim=1).float()  # [N, D]
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos.to(device), sin.to(device)


def _diffusers_rmsnorm_rope(x, weight, cos, sin, eps):
    from diffusers.models.embeddings import apply_rotary_emb

    norm = torch.nn.RMSNorm(x.shape[-1], eps=eps).to(x.device)
    with torch.no_grad():
        norm.weight.copy_(weight)
        y = norm(x)
    if cos is None:
        return y
    return apply_rotary_emb(y, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)


# ----------------------------------------------------------------------------- rmsnorm + rope


@pytest.mark.parametrize(("b", "n", "h", "d"), [(1, 5, 2, 16), (2, 7, 3, 24), (1, 3, 24, 128)])
@pytest.mark.parametrize("rope", [True, False])
def test_rmsnorm_rope_matches_diffusers(b, n, h, d, rope):
    x = 3.0 * torch.randn(b, n, h, d, device=DEVICE)
    weight = torch.randn(d, device=DEVICE)
    cos, sin = _rope_tables(n, d) if rope else (None, None)
    expect = _diffusers_rmsnorm_rope(x, weight, cos, sin, 1e-6)
    ref = rmsnorm_rope_reference(x, weight, cos, sin, 1e-6)
    out = rmsnorm_rope_triton(x, weight, cos, sin, 1e-6)
    torch.testing.assert_close(ref, expect, atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(out, expect, atol=FP32_TOL, rtol=0)


def test_rmsnorm_rope_strided_input_and_no_weight():
    b, n, h, d = 2, 6, 3, 16
    qkv = torch.randn(b, n, 3 * h * d, device=DEVICE)  # fused qkv projection output
    q = qkv[..., : h * d].unflatten(-1, (h, d))  # [B, N, H, D] view with stride(1) = 3·H·D
    assert not q.is_contiguous()
    cos, sin = _rope_tables(n, d)
    out = rmsnorm_rope_triton(q, None, cos, sin)
    expect = _diffusers_rmsnorm_rope(q, torch.ones(d, device=DEVICE), cos, sin, 1e-6)
    torch.testing.assert_close(out, expect, atol=FP32_TOL, rtol=0)


def test_rmsnorm_rope_half_precision_close_to_reference():
    x = torch.randn(2, 5, 4, 32, device=DEVICE)
    weight = 1.0 + 0.1 * torch.randn(32, device=DEVICE)
    cos, sin = _rope_tables(5, 32)
    for dtype in (torch.bfloat16, torch.float16):
        out = rmsnorm_rope_triton(x.to(dtype), weight, cos, sin)
        ref = rmsnorm_rope_reference(x.to(dtype), weight, cos, sin)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(x=torch.zeros(2, 3, 4)), r"\[B, N, H, D\]"),
        (dict(weight=torch.zeros(7)), "weight must be"),
        (dict(sin=None), "both cos and sin"),
        (dict(cos=torch.zeros(3, 8), sin=torch.zeros(3, 8)), "cos and sin must be"),
        (dict(x=torch.zeros(1, 4, 2, 8, dtype=torch.int32)), "float"),
    ],
)
def test_rmsnorm_rope_invalid_inputs(kwargs, match):
    args = dict(x=torch.zeros(1, 4, 2, 8), weight=torch.ones(8), cos=torch.ones(4, 8), sin=torch.zeros(4, 8))
    args.update(kwargs)
    for fn in (rmsnorm_rope_reference, rmsnorm_rope_triton):
        with pytest.raises(InvalidInputError, match=match):
            fn(**args)


# ----------------------------------------------------------------------------- layernorm + modulate


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 9), c=st.sampled_from([8, 48, 100, 256]))
def test_layernorm_modulate_matches_adaln(b, n, c):
    x = 2.0 * torch.randn(b, n, c, device=DEVICE) + 0.5
    emb = torch.randn(b, 6 * c, device=DEVICE)
    shift, scale, *_ = emb.chunk(6, dim=1)  # strided [B, C] views, as AdaLayerNormZero makes them
    norm = torch.nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
    expect = norm(x) * (1 + scale[:, None]) + shift[:, None]  # diffusers AdaLayerNormZero
    torch.testing.assert_close(layernorm_modulate_reference(x, shift, scale), expect, atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(layernorm_modulate_triton(x, shift, scale), expect, atol=FP32_TOL, rtol=0)


def test_layernorm_modulate_bf16_and_validation():
    x = torch.randn(2, 5, 64, device=DEVICE)
    shift, scale = torch.randn(2, 2, 64, device=DEVICE).unbind(1)
    ref = layernorm_modulate_reference(x.bfloat16(), shift.bfloat16(), scale.bfloat16())
    out = layernorm_modulate_triton(x.bfloat16(), shift.bfloat16(), scale.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=1e-2)
    with pytest.raises(InvalidInputError, match="shift must be"):
        layernorm_modulate_triton(x, shift[:1], scale)
    with pytest.raises(InvalidInputError, match=r"\[B, N, C\]"):
        layernorm_modulate_triton(x[0], shift, scale)


# ----------------------------------------------------------------------------- gated residual


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 9), c=st.sampled_from([4, 48, 1030]))
def test_gated_residual_matches_torch(b, n, c):
    x, y = torch.randn(2, b, n, c, device=DEVICE).unbind(0)
    gate = torch.randn(b, 3 * c, device=DEVICE)[:, c : 2 * c]  # strided chunk view
    expect = x + gate.unsqueeze(1) * y  # diffusers FluxTransformerBlock
    torch.testing.assert_close(gated_residual_reference(x, gate, y), expect, atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(gated_residual_triton(x, gate, y), expect, atol=FP32_TOL, rtol=0)


def test_gated_residual_validation():
    x = torch.zeros(2, 3, 8)
    with pytest.raises(InvalidInputError, match="y must have"):
        gated_residual_triton(x, torch.zeros(2, 8), torch.zeros(2, 3, 9))
    with pytest.raises(InvalidInputError, match="gate must be"):
        gated_residual_reference(x, torch.zeros(2, 1, 8), x)


# ----------------------------------------------------------------------------- dispatch


def test_dispatchers_pick_reference_on_cpu_and_kernel_when_forced(monkeypatch):
    calls = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        monkeypatch.setattr(fused_ops, name, wrapped)

    for name in ("rmsnorm_rope_triton", "layernorm_modulate_triton", "gated_residual_triton"):
        spy(name, getattr(fused_ops, name))
    x4 = torch.randn(1, 3, 2, 8)
    cos, sin = _rope_tables(3, 8, device="cpu")
    x3, y3 = torch.randn(2, 1, 3, 16).unbind(0)
    shift, scale = torch.randn(2, 1, 16).unbind(0)

    def run_all(use_triton):
        return [
            rmsnorm_rope(x4, torch.ones(8), cos, sin, use_triton=use_triton),
            layernorm_modulate(x3, shift, scale, use_triton=use_triton),
            gated_residual(x3, shift, y3, use_triton=use_triton),
        ]

    auto = run_all(None)  # CPU tensors: the interpreter would be far slower than torch
    assert calls == []
    assert run_all(False) and calls == []
    forced = run_all(True)
    assert calls == ["rmsnorm_rope_triton", "layernorm_modulate_triton", "gated_residual_triton"]
    for a, b in zip(auto, forced, strict=True):
        torch.testing.assert_close(a, b, atol=FP32_TOL, rtol=0)


def test_references_work_without_triton():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # as if triton were not installed
        import torch
        from unidg_rt.kernels import triton_available
        from unidg_rt.kernels.fused_ops import gated_residual, rmsnorm_rope
        from unidg_rt.errors import BackendUnavailableError
        x = torch.randn(1, 2, 4)
        print(triton_available(), gated_residual(x, torch.ones(1, 4), x).sum().item() == (2 * x).sum().item())
        print(rmsnorm_rope(torch.randn(1, 2, 2, 8), torch.ones(8)).shape == (1, 2, 2, 8))
        try:
            gated_residual(x, torch.ones(1, 4), x, use_triton=True)
        except BackendUnavailableError:
            print("raised")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "True", "True", "raised"]


_AOT_SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from unidg_rt.kernels import fused_ops as fo

    def build(fn, types, consts):
        sig = {name: types.get(name, "i32") for name in fn.arg_names}
        sig.update({name: "constexpr" for name in consts})
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        print(fn.__name__, ".local" in kernel.asm["ptx"])

    bf = "*bf16"
    build(fo._rmsnorm_rope_kernel, dict(X=bf, Out=bf, W=bf, Cos="*fp32", Sin="*fp32", eps="fp32"),
          dict(HAS_WEIGHT=True, HAS_ROPE=True, BLOCK_H=32, BLOCK_D=128))
    build(fo._layernorm_modulate_kernel, dict(X=bf, Out=bf, Shift=bf, Scale=bf, eps="fp32"),
          dict(BLOCK_C=4096))
    build(fo._gated_residual_kernel, dict(X=bf, Gate=bf, Y=bf, Out=bf), dict(BLOCK_C=1024))
    """
)


def test_fused_kernels_compile_for_h100_without_a_gpu():
    """AOT-compile the FLUX configurations (bf16, H=24 D=128, C=3072) to sm_90."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton wheel ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    out = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        "_rmsnorm_rope_kernel",
        "False",
        "_layernorm_modulate_kernel",
        "False",
        "_gated_residual_kernel",
        "False",
    ]


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
def test_gpu_fused_ops_flux_sizes_bf16():
    b, n, h, d, c = 1, 4608, 24, 128, 3072
    x = torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(d, device="cuda", dtype=torch.bfloat16)
    cos, sin = _rope_tables(n, d, device="cuda")
    torch.testing.assert_close(
        rmsnorm_rope(x, weight, cos, sin).float(),
        rmsnorm_rope_reference(x, weight, cos, sin).float(),
        atol=5e-2,
        rtol=2e-2,
    )
    hs = torch.randn(b, n, c, device="cuda", dtype=torch.bfloat16)
    shift, scale, gate = torch.randn(b, 3 * c, device="cuda", dtype=torch.bfloat16).chunk(3, dim=1)
    torch.testing.assert_close(
        layernorm_modulate(hs, shift, scale).float(),
        layernorm_modulate_reference(hs, shift, scale).float(),
        atol=5e-2,
        rtol=2e-2,
    )
    torch.testing.assert_close(
        gated_residual(hs, gate, hs).float(),
        gated_residual_reference(hs, gate, hs).float(),
        atol=5e-2,
        rtol=2e-2,
    )
