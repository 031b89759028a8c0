"""``unidg-rt bench``: our backends vs diffusers on one config, one set of inputs, one process.

Per stage (VAE encode, one DiT step, VAE decode), N DiT steps, reference mode end to end through
``UniDGPipeline`` (crop, encode, N steps, decode, paste back) and the attention op alone; the
``ours-fast*`` variants are the product fast path (``runtime.optimize.apply_fast_path``, what
``from_pretrained(device="cuda")`` applies). Median / p90 of ``runs`` timings after ``warmup``
calls, CUDA events on GPU (``perf_counter`` on CPU); peak GPU memory per variant. Ratios are against ``diffusers-eager``
measured in the same run. Variants that cannot run here (no CUDA, no diffusers) are reported
with the reason instead of a number.
"""

from __future__ import annotations

import gc
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unidg_rt.groups import default_group_bias
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.models.presets import PRESETS
from unidg_rt.sampling import latent_image_ids

logger = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    preset: str = "tiny"
    height: int = 64  # per side; the diptych is height x 2*width
    width: int = 64
    steps: int = 8
    text_len: int = 512
    runs: int = 10
    warmup: int = 3
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "bfloat16" if torch.cuda.is_available() else "float32"
    variants: tuple[str, ...] = (
        "ours-eager",
        "ours-fold",
        "ours-fast",
        "ours-fast-nobias",
        "ours-fast-nograph",
        "ours-fast-fp8",
        "diffusers-eager",
        "diffusers-mask",
    )
    fast_path: str = "auto"  # how the ours-fast* variants resolve (see fast_path_config)
    e2e: bool = True  # also time reference mode end to end through UniDGPipeline (E2E_VARIANTS)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int, int], list[float]]:
    def run(fn, runs: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
        return times

    return run


def _stats(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(times), 4),
        "p90_ms": round(float(np.percentile(times, 90)), 4),
        "min_ms": round(min(times), 4),
        "runs": len(times),
    }


def _inputs(cfg: BenchConfig, tcfg, device, dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    h, w = cfg.height // 8, 2 * cfg.width // 8
    n_img = (h // 2) * (w // 2)
    groups = np.concatenate([np.zeros(cfg.text_len), np.random.default_rng(cfg.seed).integers(1, 5, n_img)])
    return {
        "hidden_states": torch.randn(1, n_img, tcfg.in_channels, generator=g).to(device, dtype),
        "encoder_hidden_states": torch.randn(1, cfg.text_len, tcfg.joint_attention_dim, generator=g).to(
            device, dtype
        ),
        "pooled_projections": torch.randn(1, tcfg.pooled_projection_dim, generator=g).to(device, dtype),
        "timestep": torch.tensor([0.7], device=device, dtype=dtype),
        "img_ids": torch.from_numpy(latent_image_ids(h, w)).to(device),
        "txt_ids": torch.zeros(cfg.text_len, 3, device=device),
        "guidance": torch.tensor([3.5], device=device, dtype=dtype) if tcfg.guidance_embeds else None,
        "token_groups": torch.from_numpy(groups).long().to(device),
        "group_bias": torch.from_numpy(default_group_bias(1.0)).to(device),
    }


def environment() -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    else:
        env["cpu_threads"] = torch.get_num_threads()
    for mod in ("diffusers", "triton", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    return env


#: variants also timed end to end through the pipeline (crop → encode → steps → decode → paste)
E2E_VARIANTS = ("ours-eager", "ours-fast", "ours-fast-fp8")
#: our variants and what they are: eager forms, or the product fast path (what
#: ``UniDGPipeline.from_pretrained(device="cuda")`` applies: runtime.optimize.apply_fast_path)
OURS = {
    "ours-eager": "eager, reference attention (N×N bias from the group table)",
    "ours-fold": "eager, fold attention (bias folded into q/k)",
    "ours-fast": "product fast path (fused QKV, Triton attention + glue, CUDA graphs on CUDA)",
    "ours-fast-nobias": "product fast path, no group bias (the bias-cost baseline)",
    "ours-fast-nograph": "product fast path without CUDA-graph capture",
    "ours-fast-fp8": "product fast path with precision='fp8' (FP8 linears)",
}


def fast_path_config(variant: str, device: torch.device, fast_path: str = "auto"):
    """The :class:`~unidg_rt.runtime.optimize.FastPathConfig` a fast variant runs: on CUDA,
    :func:`~unidg_rt.runtime.optimize.resolve_fast_path` exactly as ``from_pretrained`` resolves
    it; on CPU (``auto``), the switches that run there (fused QKV, fold attention). ``None`` =
    the variant is off (``fast_path='off'``). ``on`` without CUDA raises ``FastPathError``."""
    from dataclasses import replace

    from unidg_rt.runtime.optimize import FastPathConfig, normalize_fast_path, resolve_fast_path

    precision = "fp8" if variant.endswith("fp8") else None
    mode = normalize_fast_path(fast_path)
    if mode == "off":
        return None
    if device.type == "cuda" or mode == "on":
        cfg = resolve_fast_path("on", device, precision)
    elif precision == "fp8":
        raise RuntimeError("FP8 linears run on the GPU fast path only (CUDA, compute capability >= 8.9)")
    else:
        cfg = FastPathConfig(attention_form="fold", cuda_graphs=False)
    if variant.endswith("nograph"):
        cfg = replace(cfg, cuda_graphs=False)
    return cfg


def _ours_backend(variant: str, state: dict, tcfg, vae, device, dtype, fast_path: str = "auto"):
    """A :class:`~unidg_rt.runtime.torch_backend.TorchBackend` for ``variant`` (fast variants via
    ``apply_fast_path``, the function ``from_pretrained`` calls)."""
    from unidg_rt.runtime.optimize import apply_fast_path
    from unidg_rt.runtime.torch_backend import TorchBackend

    if variant not in OURS:
        raise ValueError(f"unknown variant {variant!r}; ours: {sorted(OURS)}")
    with torch.device("meta"):
        model = FluxTransformer(tcfg)
    model.load_state_dict(state, assign=True)
    form = "fold" if variant == "ours-fold" else None
    backend = TorchBackend(model.eval(), vae, device=device, dtype=dtype, attention_form=form)
    if variant.startswith("ours-fast"):
        cfg = fast_path_config(variant, device, fast_path)
        if cfg is None:
            raise RuntimeError("fast path off (--fast-path off)")
        apply_fast_path(backend, cfg)
    return backend


def _ours(variant: str, state: dict, tcfg, device, dtype, vae=None, fast_path: str = "auto"):
    """``variant`` as a callable taking the transformer feed (the backend's runner)."""
    backend = _ours_backend(variant, state, tcfg, vae or torch.nn.Identity(), device, dtype, fast_path)
    runner = backend.transformer
    no_bias = variant.endswith("nobias")

    def call(**feed):
        if no_bias:
            feed = {**feed, "token_groups": None, "group_bias": None}
        return runner.infer(feed)["noise_pred"]

    call.backend = backend
    return call


def _diffusers(variant: str, state: dict, tcfg, device, dtype):
    import diffusers

    kwargs = {k: v for k, v in tcfg.to_dict().items() if k != "mlp_ratio"}
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(**kwargs)
    model.load_state_dict(state, assign=True)
    model = model.to(device, dtype).eval()

    def call(token_groups=None, group_bias=None, **feed):
        kw = None
        if variant == "diffusers-mask":  # the same group bias, as diffusers' explicit N×N mask
            from unidg_rt.models.attention import group_bias_mask

            kw = {"attention_mask": group_bias_mask(token_groups, group_bias.to(dtype), 1, 1)}
        return model(**feed, joint_attention_kwargs=kw, return_dict=False)[0]

    return call


def run_bench(
    cfg: BenchConfig, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every variant of ``cfg``; ``on_progress(partial)`` gets the result so far (``"complete":
    False``) after each variant, so a run killed by a time limit still leaves its numbers."""
    from unidg_rt.errors import ConfigError
    from unidg_rt.models.vae import AutoencoderKLFlux
    from unidg_rt.runtime.optimize import check_device, normalize_fast_path

    if cfg.preset not in PRESETS:
        raise ConfigError(f"preset={cfg.preset!r} is not a preset: use one of {sorted(PRESETS)}")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={cfg.dtype!r} is not a bench dtype: use float32, bfloat16 or float16")
    device, dtype = check_device(cfg.device), getattr(torch, cfg.dtype)  # no CUDA: one-line error
    if normalize_fast_path(cfg.fast_path) == "on" and device.type != "cuda":
        fast_path_config("ours-fast", device, "on")  # raises the one-line FastPathError
    tcfg_fn, vcfg_fn = PRESETS[cfg.preset]
    tcfg, vcfg = tcfg_fn(), vcfg_fn()
    torch.manual_seed(cfg.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init straight in dtype: flux-fill is 24 GB in bf16, 48 in fp32
    try:
        with torch.device(device):
            state = {k: v.to(dtype) for k, v in FluxTransformer(tcfg).state_dict().items()}
            vae = AutoencoderKLFlux(vcfg).to(dtype).eval()
    finally:
        torch.set_default_dtype(previous)
    feed = _inputs(cfg, tcfg, device, dtype)
    timer = _timer(device)
    results: dict[str, Any] = {}
    for variant in cfg.variants:
        try:
            if variant.startswith("diffusers"):
                model = _diffusers(variant, state, tcfg, device, dtype)
            else:
                model = _ours(variant, state, tcfg, device, dtype, vae=vae, fast_path=cfg.fast_path)
        except Exception as exc:  # noqa: BLE001 — report why a variant is unavailable
            results[variant] = {"skipped": f"{type(exc).__name__}: {exc}"}
            if on_progress is not None:
                on_progress(_assemble(cfg, results, complete=False))
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            step = _stats(timer(lambda m=model: m(**feed), cfg.runs, cfg.warmup))
            loop = _stats(
                timer(lambda m=model: [m(**feed) for _ in range(cfg.steps)], max(3, cfg.runs // 3), 1)
            )
        entry = {"dit_step": step, f"dit_{cfg.steps}_steps": loop}
        backend = getattr(model, "backend", None)
        if backend is not None and "fast_path" in backend.info:
            entry["fast_path"] = {k: v for k, v in backend.info["fast_path"].items() if k != "adapters"}
        if cfg.e2e and variant in E2E_VARIANTS and backend is not None:
            entry[f"e2e_{cfg.steps}_steps"] = _pipeline_e2e(cfg, backend, tcfg, vcfg, timer)
        if device.type == "cuda":
            entry["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        results[variant] = entry
        del model, backend
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if on_progress is not None:
            on_progress(_assemble(cfg, results, complete=False))
    results.update(_vae_stages(cfg, vcfg, vae, device, dtype, timer))
    results["attention"] = _attention(cfg, tcfg, device, dtype, timer)
    return _assemble(cfg, results, complete=True)


def _assemble(cfg: BenchConfig, results: dict[str, Any], complete: bool) -> dict[str, Any]:
    base = results.get("diffusers-eager", {}).get("dit_step", {}).get("median_ms")
    ratios = {}
    if base:
        for k, v in results.items():
            if isinstance(v, dict) and "dit_step" in v:
                ratios[k] = round(v["dit_step"]["median_ms"] / base, 4)
    return {
        "config": {**cfg.__dict__, "variants": list(cfg.variants)},
        "environment": environment(),
        "results": dict(results),
        "ratios_vs_diffusers_eager": ratios,
        "complete": complete,
    }


def _pipeline_e2e(cfg: BenchConfig, backend, tcfg, vcfg, timer) -> dict[str, float]:
    """Reference mode end to end through :class:`UniDGPipeline` on ``backend``: crop, diptych,
    VAE encode, ``cfg.steps`` denoising steps, decode, paste back (numpy in, numpy out)."""
    from unidg_rt.artifacts.card import Card, PipelineFacts
    from unidg_rt.runtime.pipeline import UniDGPipeline

    facts = PipelineFacts(
        text_seq_len=cfg.text_len,
        joint_attention_dim=tcfg.joint_attention_dim,
        pooled_projection_dim=tcfg.pooled_projection_dim,
        latent_channels=tcfg.out_dim // 4,
        vae_scale_factor=vcfg.downsample_factor,
        guidance_embeds=tcfg.guidance_embeds,
    )
    pipe = UniDGPipeline(backend, Card(facts))
    rng = np.random.default_rng(cfg.seed)
    img = (rng.random((cfg.height, cfg.width, 3)) * 255).astype(np.uint8)
    mask = np.zeros(img.shape[:2], bool)
    mask[cfg.height // 4 : cfg.height // 2, cfg.width // 4 : cfg.width // 2] = True
    kw = dict(
        image=img,
        mask_image=mask,
        reference_image=img,
        reference_mask=mask,
        height=cfg.height,
        width=cfg.width,
        num_inference_steps=cfg.steps,
        guidance_scale=3.5,
        seed=0,
        output_type="np",
    )
    return _stats(timer(lambda: pipe(**kw), max(3, cfg.runs // 3), 1))


def _vae_stages(cfg, vcfg, vae, device, dtype, timer) -> dict[str, Any]:
    img = torch.rand(1, 3, cfg.height, 2 * cfg.width, device=device, dtype=dtype) * 2 - 1
    out: dict[str, Any] = {}
    with torch.inference_mode():
        z = vae.encode(img)
        out["ours-vae_encode"] = _stats(timer(lambda: vae.encode(img), cfg.runs, cfg.warmup))
        out["ours-vae_decode"] = _stats(timer(lambda: vae.decode(z), cfg.runs, cfg.warmup))
        try:
            import diffusers

            with torch.device(device):
                ref = diffusers.AutoencoderKL(**vcfg.to_diffusers_config()).to(dtype).eval()
            ref.load_state_dict(vae.state_dict())
            out["diffusers-vae_encode"] = _stats(
                timer(lambda: ref.encode(img).latent_dist.mode(), cfg.runs, cfg.warmup)
            )
            out["diffusers-vae_decode"] = _stats(timer(lambda: ref.decode(z).sample, cfg.runs, cfg.warmup))
        except ImportError as exc:
            out["diffusers-vae"] = {"skipped": str(exc)}
    return out


def _attention(cfg, tcfg, device, dtype, timer) -> dict[str, Any]:
    from unidg_rt.models.attention import attention

    h, w = cfg.height // 16, 2 * cfg.width // 16
    n = cfg.text_len + h * w
    g = torch.Generator().manual_seed(cfg.seed)
    q, k, v = (
        torch.randn(1, tcfg.num_attention_heads, n, tcfg.attention_head_dim, generator=g).to(device, dtype)
        for _ in range(3)
    )
    groups = torch.randint(0, 5, (n,), generator=g).to(device)
    table = torch.from_numpy(default_group_bias(1.0)).to(device)
    forms = ["sdpa", "reference", "fold"] + (["triton"] if device.type == "cuda" else [])
    out: dict[str, Any] = {"tokens": n}
    with torch.inference_mode():
        for form in forms:
            bias = None if form == "sdpa" else table
            try:
                out[form] = _stats(
                    timer(lambda f=form, b=bias: attention(q, k, v, groups, b, form=f), cfg.runs, cfg.warmup)
                )
            except Exception as exc:  # noqa: BLE001
                out[form] = {"skipped": f"{type(exc).__name__}: {exc}"}
    if "median_ms" in out.get("sdpa", {}):
        out["ratio_vs_unmasked"] = {
            f: round(out[f]["median_ms"] / out["sdpa"]["median_ms"], 3)
            for f in forms
            if "median_ms" in out.get(f, {})
        }
    return out
