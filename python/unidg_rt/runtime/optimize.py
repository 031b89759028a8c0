"""GPU fast path for the torch backend: fused QKV, Triton kernels, FP8 linears, CUDA graphs.

``UniDGPipeline.from_pretrained(..., fast_path="auto")`` calls :func:`apply_fast_path` on CUDA
(``Settings.fast_path`` / ``UNIDG_FAST_PATH`` / ``--fast-path`` pick it elsewhere). The fast path
computes the same model as the eager one, adapters included:

- **fused QKV** (:class:`FusedQKV`): one GEMM for ``to_q/k/v`` (and ``add_*_proj``). The three
  Linears stay registered on the attention module with their weights as *views* into the fused
  weight, so LoRA / time-gated adapter hooks on them (models/adapters.py) are applied to the
  q/k/v slices after the fused matmul, and ``AdapterManager.fuse/unfuse`` (in-place on the
  views) change the fused weight too.
- **Triton**: group-bias attention (no N×N mask) and the RMSNorm+RoPE glue kernel.
- **FP8** (``precision="fp8"``): E4M3 linears (kernels/fp8.py); LoRA branches stay high precision.
- **CUDA graphs** (:class:`CUDAGraphRunner`): one capture per input-shape signature (batch,
  image tokens = height×width, text tokens), replayed across steps and calls. Adapter strengths
  are *static tensors* read by the hooks (``AdapterManager.strength_inputs``) and refilled before
  every replay, so per-segment strengths are never baked into a graph.

Numerics are checked against eager in tests (CPU: fused QKV, Triton in interpreter mode, FP8
via ``_scaled_mm``; graph bookkeeping with a fake graph API); speed only on the GPU machine.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from unidg_rt.errors import BackendUnavailableError, ConfigError
from unidg_rt.models.layers import FluxAttention
from unidg_rt.models.mmdit import FluxTransformer
from unidg_rt.runtime.torch_backend import TRANSFORMER_INPUTS

logger = logging.getLogger(__name__)

FAST_PATH_MODES = ("auto", "on", "off")
#: Linears kept as adapter-hook holders (views into the fused weight): never FP8-converted
_QKV_PARTS = (
    "*.attn.to_q",
    "*.attn.to_k",
    "*.attn.to_v",
    "*.attn.add_q_proj",
    "*.attn.add_k_proj",
    "*.attn.add_v_proj",
)


class FastPathError(ConfigError):
    """The fast path cannot apply something the model or call asks for (it never drops it)."""


@dataclass(frozen=True)
class FastPathConfig:
    fuse_qkv: bool = True
    fused_ops: bool = True  # Triton RMSNorm+RoPE (CUDA only; reference elsewhere)
    attention_form: str | None = None  # None: "triton" on CUDA, else unchanged
    fp8: bool = False
    compile: bool = False  # torch.compile of the repeated blocks (regional compilation)
    cuda_graphs: bool = True  # capture/replay the transformer call (CUDA only)


# ---------------------------------------------------------------------- switches
def normalize_fast_path(value) -> str | FastPathConfig:
    """``"auto"|"on"|"off"``, a bool, or a :class:`FastPathConfig` (= on with that config)."""
    if isinstance(value, FastPathConfig):
        return value
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    v = str(value).strip().lower()
    aliases = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
    v = aliases.get(v, v)
    if v not in FAST_PATH_MODES:
        raise ConfigError(f"fast_path={value!r} is not one of auto / on / off (or True / False)")
    return v


def check_device(device) -> torch.device:
    """``torch.device(device)``, refusing CUDA on a torch build or machine without it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a torch device: use cpu or cuda (cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = (
            "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        )
        raise BackendUnavailableError(
            f"device={str(device)!r} but {why} (torch {torch.__version__}): use --device cpu "
            "(device='cpu'), or install a CUDA build of torch on a machine with an NVIDIA GPU"
        )
    return dev


def resolve_fast_path(fast_path, device, precision: str | None = None) -> FastPathConfig | None:
    """The config to apply, or ``None`` (eager). ``auto`` = on for CUDA, off elsewhere."""
    mode = normalize_fast_path(fast_path)
    cuda = torch.device(device).type == "cuda"
    if mode == "off" or (mode == "auto" and not cuda):
        if precision == "fp8":
            raise FastPathError(
                f"precision='fp8' runs FP8 linears on the GPU fast path, which is off here (device={str(device)!r}, "
                f"fast_path={fast_path!r}): use --device cuda with --fast-path auto|on, or drop precision"
            )
        return None
    if not cuda:
        raise FastPathError(
            f"fast_path={fast_path!r} needs a CUDA device (device={str(device)!r}): pass --device cuda "
            "on a GPU machine, or --fast-path auto / off (fast_path='auto' or False, UNIDG_FAST_PATH=auto)"
        )
    cfg = mode if isinstance(mode, FastPathConfig) else FastPathConfig()
    if precision == "fp8":
        if torch.cuda.is_available() and torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
            raise BackendUnavailableError(
                "precision='fp8' needs an FP8 GPU (compute capability >= 8.9: Ada, Hopper, Blackwell); "
                "drop precision (bf16 fast path) on this GPU"
            )
        cfg = replace(cfg, fp8=True)
    return cfg


# ---------------------------------------------------------------------- fused QKV
class FusedQKV(nn.Module):
    """``[q | k | v] = x Wᵀ + b`` as one GEMM; forward hooks of the three original Linears
    (adapters) are applied to their slices afterwards, so adapters are never dropped."""

    def __init__(self, parts: tuple[nn.Linear, nn.Linear, nn.Linear]):
        super().__init__()
        w = torch.cat([p.weight.detach() for p in parts], dim=0)  # [3C, C_in]
        self.qkv = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
        self.qkv.requires_grad_(False)
        with torch.no_grad():
            self.qkv.weight.copy_(w)
            self.qkv.bias.copy_(torch.cat([p.bias.detach() for p in parts], dim=0))
        self.sizes = [p.out_features for p in parts]
        for p, pw, pb in zip(
            parts, self.qkv.weight.split(self.sizes), self.qkv.bias.split(self.sizes), strict=True
        ):
            p.weight = nn.Parameter(pw, requires_grad=False)  # view: fuse()/unfuse() edit the GEMM too
            p.bias = nn.Parameter(pb, requires_grad=False)
        object.__setattr__(self, "parts", parts)  # plain attribute: not a second copy in the module tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.qkv(x)  # [B, N, 3C]
        if not any(p._forward_hooks or p._forward_pre_hooks for p in self.parts):
            return y
        outs = list(y.split(self.sizes, dim=-1))  # [B, N, C] each
        for i, p in enumerate(self.parts):
            if p._forward_pre_hooks:
                raise FastPathError(
                    "fused QKV cannot apply a forward pre-hook on a q/k/v projection: "
                    "remove it or load with fast_path=False"
                )
            for hid, hook in p._forward_hooks.items():
                kw = hid in p._forward_hooks_with_kwargs
                r = hook(p, (x,), {}, outs[i]) if kw else hook(p, (x,), outs[i])
                outs[i] = outs[i] if r is None else r
        return torch.cat(outs, dim=-1)  # [B, N, 3C]


def fuse_qkv(model: nn.Module) -> int:
    """Install :class:`FusedQKV` on every attention module; returns how many were fused."""
    n = 0
    for m in model.modules():
        if not isinstance(m, FluxAttention) or hasattr(m, "to_qkv"):
            continue
        m.to_qkv = FusedQKV((m.to_q, m.to_k, m.to_v))
        if m.context:
            m.to_added_qkv = FusedQKV((m.add_q_proj, m.add_k_proj, m.add_v_proj))
        n += 1
    return n


def optimize_transformer(model: FluxTransformer, cfg: FastPathConfig = FastPathConfig()) -> dict[str, Any]:
    """Apply the module-level fast-path switches in place; returns what was done (bench JSON)."""
    report: dict[str, Any] = {}
    cuda = model.device.type == "cuda"
    if cfg.fuse_qkv:
        report["fused_qkv"] = fuse_qkv(model)
    if cfg.fused_ops and cuda:
        model.set_fused_ops(True)
        report["fused_ops"] = True
    form = cfg.attention_form or ("triton" if cuda else None)
    if form:
        model.set_attention_form(form)
        report["attention_form"] = form
    if cfg.fp8:
        from unidg_rt.kernels.fp8 import DEFAULT_SKIP, quantize_linears_fp8

        report["fp8_linears"] = len(quantize_linears_fp8(model, skip=DEFAULT_SKIP + _QKV_PARTS))
    if cfg.compile:
        for blocks in (model.transformer_blocks, model.single_transformer_blocks):
            for b in blocks:
                b.compile(dynamic=False)
        report["compiled_blocks"] = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    logger.info("fast path: %s", report)
    return report


# ---------------------------------------------------------------------- CUDA graphs
def adapter_state(adapters) -> tuple:
    """What a captured graph depends on besides shapes: the adapters and which are fused
    (strengths are not part of it: they are tensors refilled before each replay)."""
    if adapters is None or not adapters.adapters:
        return ()
    fused = set(getattr(adapters, "fused_names", None) or getattr(adapters, "_fused_names", ()))
    return tuple(
        sorted((n, n in fused, ad.gate is not None, len(ad.pairs)) for n, ad in adapters.adapters.items())
    )


class TorchCUDAGraphs:
    """The real graph API (``torch.cuda.CUDAGraph``); tests swap in a fake with the same two calls."""

    def capture(self, fn, warmup: int):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # Triton autotune / cuBLAS handles before capture
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    def replay(self, graph) -> None:
        graph.replay()


@dataclass
class _Entry:
    graph: Any
    static: dict[str, torch.Tensor | None]
    strengths: dict[str, torch.Tensor]
    out: torch.Tensor


class CUDAGraphRunner:
    """Captures one transformer call per key and replays it.

    Key = the feed's shapes/dtypes (batch, image tokens, text tokens; which inputs are None) +
    :func:`adapter_state`. Inputs are copied into static buffers and adapter strengths filled
    into static 0-d tensors before each replay; the output is cloned (the graph overwrites it).
    At most ``max_graphs`` are kept (least recently used evicted). CUDA only unless ``graphs``
    (a capture/replay implementation, e.g. a test fake) is given; otherwise it calls the model."""

    def __init__(
        self, model: FluxTransformer, warmup: int = 2, adapters=None, graphs=None, max_graphs: int = 8
    ):
        self.model, self.warmup, self.adapters, self.max_graphs = model, warmup, adapters, max_graphs
        self.graphs = graphs if graphs is not None else TorchCUDAGraphs()
        self.enabled = graphs is not None or model.device.type == "cuda"
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.captures = 0
        self.replays = 0

    @staticmethod
    def _signature(feed: dict[str, Any]) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(feed.items()) if v is not None)

    def key(self, feed: dict[str, Any]) -> tuple:
        return self._signature(feed), adapter_state(self.adapters)

    @property
    def keys(self) -> list[tuple]:
        return list(self._entries)

    def _live_adapters(self) -> list[str]:
        if self.adapters is None:
            return []
        return [n for n, fused, *_ in adapter_state(self.adapters) if not fused]

    def _capture(self, key: tuple, feed: dict[str, Any]) -> _Entry:
        static = {k: (v.clone() if v is not None else None) for k, v in feed.items()}
        dev = self.model.device
        strengths = {
            n: torch.tensor(float(self.adapters.adapters[n].strength), device=dev)
            for n in self._live_adapters()
        }

        def run():
            if strengths:
                with self.adapters.strength_inputs(strengths):
                    return self.model(**static)
            return self.model(**static)

        graph, out = self.graphs.capture(run, self.warmup)
        self.captures += 1
        logger.info("CUDA graph %d captured for %s", self.captures, key[0])
        return _Entry(graph, static, strengths, out)

    @torch.inference_mode()
    def __call__(self, **feed) -> torch.Tensor:
        if not self.enabled:
            return self.model(**feed)
        key = self.key(feed)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = self._capture(key, feed)
            while len(self._entries) > self.max_graphs:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        for k, v in feed.items():
            if v is not None:
                entry.static[k].copy_(v)
        for n, t in entry.strengths.items():
            t.fill_(float(self.adapters.adapters[n].strength))  # this segment's strength
        self.graphs.replay(entry.graph)
        self.replays += 1
        return entry.out.clone()


# ---------------------------------------------------------------------- backend wiring
class FastTransformerRunner:
    """The backend's transformer runner on the fast path (same ``infer`` contract as eager)."""

    input_names = TRANSFORMER_INPUTS

    def __init__(
        self,
        model: FluxTransformer,
        adapters=None,
        graph_runner: CUDAGraphRunner | None = None,
        fp8: bool = False,
    ):
        self.model, self.adapters, self.graph_runner, self.fp8 = model, adapters, graph_runner, fp8
        self._state = adapter_state(adapters)

    def _check_adapters(self) -> None:
        state = adapter_state(self.adapters)
        if self.fp8 and state != self._state:
            raise FastPathError(
                "adapters were added, removed, fused or unfused after the FP8 fast path was applied "
                f"(was {self._state}, now {state}): the FP8 weights would not see it; load/fuse LoRAs "
                "before from_pretrained applies the fast path, or use fast_path=False"
            )

    @torch.inference_mode()
    def infer(self, feed: dict[str, Any]) -> dict[str, Any]:
        self._check_adapters()
        kwargs = {k: feed.get(k) for k in TRANSFORMER_INPUTS}
        fn = self.graph_runner if self.graph_runner is not None else self.model
        return {"noise_pred": fn(**kwargs)}


def apply_fast_path(backend, cfg: FastPathConfig = FastPathConfig(), *, graphs=None) -> dict[str, Any]:
    """Optimise a :class:`~unidg_rt.runtime.torch_backend.TorchBackend` in place: module switches,
    then its transformer runner replaced by a :class:`FastTransformerRunner` (CUDA graphs on
    CUDA, or with a ``graphs`` implementation). Returns the report (also in ``backend.info``)."""
    model = backend.transformer_model
    report = optimize_transformer(model, cfg)
    adapters = backend.adapters if getattr(backend, "adapters", None) is not None else None
    graph_runner = None
    if cfg.cuda_graphs and (graphs is not None or model.device.type == "cuda"):
        graph_runner = CUDAGraphRunner(model, adapters=adapters, graphs=graphs)
        report["cuda_graphs"] = True
    if adapters is not None and adapters.adapters:
        report["adapters"] = sorted(adapters.adapters)
    backend.transformer = FastTransformerRunner(model, adapters, graph_runner, fp8=cfg.fp8)
    backend.info["fast_path"] = report
    return report
