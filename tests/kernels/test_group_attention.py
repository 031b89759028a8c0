"""Triton group-bias attention vs the SDPA oracle and a hand-built float64 N×N softmax.

On CPU the kernel runs under Triton's interpreter (conftest sets TRITON_INTERPRET=1), so
shapes stay small; `gpu`-marked tests cover bf16 numerics, FLUX sizes and speed.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from unidg_rt.errors import InvalidInputError  # noqa: E402
from unidg_rt.kernels import interpreter_enabled, triton_available  # noqa: E402
from unidg_rt.models.attention import attention, reference_attention  # noqa: E402

if not triton_available():  # pragma: no cover - conftest sets TRITON_INTERPRET=1
    pytest.skip("triton cannot run here (no CUDA, interpreter off)", allow_module_level=True)

from unidg_rt.kernels.group_attention import triton_group_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOL = 1e-5


def _qkv(b, h, n, d, dtype=torch.float32, device=DEVICE):
    q, k, v = torch.randn(3, b, h, n, d, device=device).unbind(0)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _dense_f64(q, k, v, token_groups, group_bias, scale=None, rows=None):
    """Hand-built N×N biased softmax in float64 (optionally only query ``rows``)."""
    b, h, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = token_groups.long()
    g = g[None].expand(b, -1) if g.ndim == 1 else g.expand(b, -1)  # [B, N]
    t = group_bias.double()
    t = t[None] if t.ndim == 2 else t  # [H|1, G, G]
    t = t.expand(h, -1, -1)  # [H, G, G]
    rows = torch.arange(n, device=q.device) if rows is None else rows
    q64, k64, v64 = q[:, :, rows].double(), k.double(), v.double()
    s = q64 @ k64.transpose(-1, -2) * scale  # [B, H, R, N]
    hh = torch.arange(h, device=q.device)[None, :, None, None]
    bias = t[hh, g[:, None, rows, None], g[:, None, None, :]]  # [B, H, R, N]
    return torch.softmax(s + bias, dim=-1) @ v64  # [B, H, R, D]


def test_package_import_is_lazy():
    code = "import sys, unidg_rt.kernels; print('triton' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_triton_available_under_interpreter():
    assert triton_available()
    if DEVICE == "cpu":
        assert interpreter_enabled()


def test_zero_table_is_plain_sdpa():
    q, k, v = _qkv(2, 2, 45, 32)
    groups = torch.randint(0, 5, (45,), device=DEVICE)
    out = triton_group_attention(q, k, v, groups, torch.zeros(5, 5, device=DEVICE))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize(
    ("b", "h", "n", "d", "per_head"),
    [
        (1, 2, 64, 16, False),  # N a multiple of the block
        (2, 2, 50, 16, True),  # N not a multiple of the block
        (1, 3, 77, 32, True),
        (2, 1, 33, 128, False),  # FLUX head dim
        (1, 2, 40, 24, True),  # D not a power of two: padded to 32 and masked
        (1, 1, 20, 8, False),  # D < 16: padded for tl.dot
    ],
)
def test_matches_reference(b, h, n, d, per_head):
    q, k, v = _qkv(b, h, n, d)
    groups = torch.randint(0, 5, (b, n), device=DEVICE)
    table = torch.randn((h, 5, 5) if per_head else (5, 5), device=DEVICE)
    out = triton_group_attention(q, k, v, groups, table)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, reference_attention(q, k, v, groups, table), atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(out.double(), _dense_f64(q, k, v, groups, table), atol=FP32_TOL, rtol=0)


def test_per_head_tables_are_used_per_head():
    q, k, v = _qkv(1, 2, 40, 16)
    groups = torch.randint(0, 3, (40,), device=DEVICE)
    table = torch.stack([torch.zeros(3, 3), 4.0 * torch.randn(3, 3)]).to(DEVICE)  # [H=2, G, G]
    out = triton_group_attention(q, k, v, groups, table)
    plain = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[:, 0], plain[:, 0], atol=FP32_TOL, rtol=0)
    assert (out[:, 1] - plain[:, 1]).abs().max() > 1e-2
    torch.testing.assert_close(out.double(), _dense_f64(q, k, v, groups, table), atol=FP32_TOL, rtol=0)


def test_neg_inf_entries_are_exact():
    # Groups sorted so the first 32-key block is all group 0 and T[1, 0] = -inf: rows of group 1
    # see a whole key block of -inf before any finite logit (the online-softmax edge case).
    n = 70
    groups = torch.cat([torch.zeros(34), torch.ones(20), torch.full((16,), 2)]).long().to(DEVICE)
    table = torch.tensor([[0.0, -math.inf, 1.0], [-math.inf, 0.5, -math.inf], [2.0, 0.0, 0.0]])
    table = table.to(DEVICE)
    q, k, v = _qkv(2, 2, n, 16)
    out = triton_group_attention(q, k, v, groups, table)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_attention(q, k, v, groups, table), atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(out.double(), _dense_f64(q, k, v, groups, table), atol=FP32_TOL, rtol=0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0/0 in the interpreter
def test_all_neg_inf_row_is_nan_and_other_rows_exact():
    # Documented: a query row whose every key is -inf is undefined (NaN, like SDPA's oracle).
    groups = torch.tensor([0] * 20 + [1] * 15, device=DEVICE)
    table = torch.tensor([[0.0, 0.0], [-math.inf, -math.inf]], device=DEVICE)  # group 1 sees nothing
    q, k, v = _qkv(1, 1, 35, 16)
    out = triton_group_attention(q, k, v, groups, table)
    assert torch.isnan(out[:, :, 20:]).all()
    torch.testing.assert_close(
        out[:, :, :20], reference_attention(q, k, v, groups, table)[:, :, :20], atol=FP32_TOL, rtol=0
    )


def test_out_of_range_group_id_gives_nan_not_garbage():
    q, k, v = _qkv(1, 1, 20, 16)
    groups = torch.zeros(20, dtype=torch.long, device=DEVICE)
    groups[3] = 7  # G = 2: key 3's bias is unreadable, so every row is poisoned
    out = triton_group_attention(q, k, v, groups, torch.zeros(2, 2, device=DEVICE))
    assert torch.isnan(out).all()


def test_batches_with_different_groups_and_broadcast_ids():
    b, h, n, d = 3, 2, 37, 16
    q, k, v = _qkv(b, h, n, d)
    table = torch.randn(h, 4, 4, device=DEVICE)
    per_batch = torch.stack([torch.randint(0, 4, (n,)) for _ in range(b)]).to(DEVICE)  # [B, N]
    out = triton_group_attention(q, k, v, per_batch, table)
    for i in range(b):  # each batch entry must use its own ids
        ref = reference_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], per_batch[i], table)
        torch.testing.assert_close(out[i : i + 1], ref, atol=FP32_TOL, rtol=0)
    shared = per_batch[0]
    expect = reference_attention(q, k, v, shared, table)
    for ids in (shared, shared[None]):  # [N] and [1, N] broadcast over the batch
        torch.testing.assert_close(triton_group_attention(q, k, v, ids, table), expect, atol=FP32_TOL, rtol=0)


def test_strided_inputs_and_scale():
    b, n, h, d = 2, 41, 2, 32
    qkv = torch.randn(b, n, 3, h, d, device=DEVICE)  # a fused projection's output
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D] views, non-contiguous
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # stride(-1) != 1: copied internally
    groups = torch.randint(0, 3, (b, n), dtype=torch.int32, device=DEVICE)
    table = torch.randn(3, 3, device=DEVICE)
    out = triton_group_attention(q, k, v, groups, table, scale=0.3)
    assert out.is_contiguous()
    ref = _dense_f64(q, k, v, groups, table, scale=0.3)
    torch.testing.assert_close(out.double(), ref, atol=FP32_TOL, rtol=0)


def test_block_override_and_validation():
    q, k, v = _qkv(1, 1, 50, 16)
    groups = torch.randint(0, 2, (50,), device=DEVICE)
    table = torch.randn(2, 2, device=DEVICE)
    ref = reference_attention(q, k, v, groups, table)
    out = triton_group_attention(q, k, v, groups, table, block_m=16, block_n=64)
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=0)
    with pytest.raises(InvalidInputError, match="block_n"):
        triton_group_attention(q, k, v, groups, table, block_n=48)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "q": a["q"][0]}, r"\[B, H, N, D\]"),
        (lambda a: {**a, "k": a["k"][:, :, :-1]}, "same shape"),
        (lambda a: {**a, "v": a["v"].double()}, "dtype"),
        (lambda a: {**a, "q": a["q"].int(), "k": a["k"].int(), "v": a["v"].int()}, "dtype"),
        (lambda a: {**a, "token_groups": a["token_groups"].float()}, "integer"),
        (lambda a: {**a, "token_groups": a["token_groups"][:-1]}, "token_groups must be"),
        (lambda a: {**a, "token_groups": a["token_groups"][None].expand(3, -1)}, "token_groups must be"),
        (lambda a: {**a, "group_bias": a["group_bias"][:, :2]}, "group_bias must be"),
        (lambda a: {**a, "group_bias": a["group_bias"].long()}, "float"),
        (lambda a: {**a, "group_bias": a["group_bias"][None].expand(5, -1, -1)}, "heads"),
        (lambda a: {**a, "group_bias": a["group_bias"].numpy()}, "torch.Tensor"),
    ],
)
def test_invalid_inputs_raise(change, match):
    q, k, v = _qkv(2, 2, 8, 16, device="cpu")
    args = dict(q=q, k=k, v=v, token_groups=torch.zeros(8, dtype=torch.long), group_bias=torch.zeros(3, 3))
    with pytest.raises(InvalidInputError, match=match):
        triton_group_attention(**change(args))


def test_half_precision_under_interpreter_or_gpu():
    # bf16 runs through the interpreter's upcast path on CPU (see DOT_FP32); fp16 natively.
    q, k, v = _qkv(1, 2, 48, 32)
    groups = torch.randint(0, 3, (48,), device=DEVICE)
    table = torch.randn(2, 3, 3, device=DEVICE)
    ref = _dense_f64(q, k, v, groups, table)
    for dtype in (torch.bfloat16, torch.float16):
        out = triton_group_attention(q.to(dtype), k.to(dtype), v.to(dtype), groups, table)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=0)


def test_long_sequence_sampled_rows():
    # N ≥ 8192 and not a block multiple; big tiles keep the interpreter to a few hundred steps.
    n = 8200
    q, k, v = _qkv(1, 1, n, 16)
    groups = torch.randint(0, 5, (n,), device=DEVICE)
    table = torch.randn(5, 5, device=DEVICE)
    table[2, 3] = -math.inf
    out = triton_group_attention(q, k, v, groups, table, block_m=512, block_n=1024)
    rows = torch.cat([torch.arange(0, 64), torch.arange(4090, 4110), torch.arange(n - 30, n)]).to(DEVICE)
    ref = _dense_f64(q, k, v, groups, table, rows=rows)
    torch.testing.assert_close(out[:, :, rows].double(), ref, atol=FP32_TOL, rtol=0)


def test_attention_dispatch_triton_form():
    q, k, v = _qkv(2, 2, 36, 16)
    groups = torch.randint(0, 5, (2, 36), device=DEVICE)
    table = torch.randn(5, 5, device=DEVICE)
    out = attention(q, k, v, groups, table, form="triton")
    torch.testing.assert_close(
        out, attention(q, k, v, groups, table, form="reference"), atol=FP32_TOL, rtol=0
    )
    torch.testing.assert_close(out, attention(q, k, v, groups, table, form="fold"), atol=1e-4, rtol=0)


_AOT_SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from unidg_rt.kernels import group_attention as ga

    fn = ga._group_attn_fwd
    sig = {name: "i32" for name in fn.arg_names}
    sig.update({n: "*bf16" for n in ("Q", "K", "V", "Out")}, Groups="*i32", Table="*fp32", qk_scale="fp32")
    consts = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 128, "DOT_FP32": False, "INPUT_PRECISION": "tf32"}
    sig.update({name: "constexpr" for name in consts})
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
    ptx = kernel.asm["ptx"]
    print("wgmma" in ptx, ".local" in ptx, kernel.metadata.shared)
    """
)


def test_compiles_for_h100_without_a_gpu():
    """AOT-compile the FLUX configuration (bf16, D=128, 64×64) to sm_90 with triton's ptxas."""
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton wheel ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    out = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    uses_wgmma, spills, shared = out.stdout.split()
    assert uses_wgmma == "True"  # Hopper tensor cores
    assert spills == "False"  # no local-memory spills in PTX
    assert int(shared) <= 100 * 1024


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize(("n", "d"), [(333, 64), (1024, 128), (8192, 128)])
def test_gpu_bf16_matches_fp32_reference(n, d, per_head):
    h = 4
    q, k, v = _qkv(2, h, n, d, device="cuda")
    groups = torch.randint(0, 5, (2, n), device="cuda")
    table = torch.randn((h, 5, 5) if per_head else (5, 5), device="cuda")
    table[..., 1, 4] = -math.inf
    ref = reference_attention(q, k, v, groups, table)
    bf = [t.bfloat16() for t in (q, k, v)]
    out = triton_group_attention(*bf, groups, table)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)
    out32 = triton_group_attention(q, k, v, groups, table)
    torch.testing.assert_close(out32, ref, atol=FP32_TOL, rtol=0)


@pytest.mark.gpu
def test_gpu_flux_size():
    b, h, n, d = 1, 24, 4608, 128  # FLUX 1024² diptych half: 512 text + 4096 image tokens
    q, k, v = _qkv(b, h, n, d, device="cuda")
    groups = torch.randint(0, 5, (n,), device="cuda")
    table = torch.randn(h, 5, 5, device="cuda")
    ref = reference_attention(q, k, v, groups, table)
    out = triton_group_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), groups, table)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton_group_bias", "sdpa_no_mask"])
def test_gpu_benchmark_vs_sdpa(benchmark, impl):
    b, h, n, d = 1, 24, 4608, 128
    q, k, v = _qkv(b, h, n, d, dtype=torch.bfloat16, device="cuda")
    groups = torch.randint(0, 5, (n,), device="cuda")
    table = torch.randn(h, 5, 5, device="cuda")
    if impl == "triton_group_bias":

        def run():
            return triton_group_attention(q, k, v, groups, table)
    else:

        def run():
            return F.scaled_dot_product_attention(q, k, v)

    def timed():
        out = run()
        torch.cuda.synchronize()
        return out

    timed()  # compile / warm up outside the measurement
    benchmark.group = "attention B1 H24 N4608 D128 bf16"
    benchmark.pedantic(timed, rounds=20, iterations=5, warmup_rounds=2)
