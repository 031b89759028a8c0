"""GPU fast path for the torch backend (issue 6): fused QKV, Triton glue, FP8, CUDA graphs.

Every switch is numerically checked against the eager reference in tests (CPU where the op
runs there: QKV fusion, FP8 via ``_scaled_mm``, Triton ops in interpreter mode); speed is only
measured on the GPU machine (``unidg-rt bench``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from unidg_rt.models.layers import FluxAttention
from unidg_rt.models.mmdit import FluxTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPathConfig:
    fuse_qkv: bool = True
    fused_ops: bool = True  # Triton RMSNorm+RoPE (CUDA only; reference elsewhere)
    attention_form: str | None = None  # None: "triton" on CUDA with a bias, else unchanged
    fp8: bool = False
    compile: bool = False  # torch.compile of the repeated blocks (regional compilation)


def optimize_transformer(model: FluxTransformer, cfg: FastPathConfig = FastPathConfig()) -> dict[str, Any]:
    """Apply the fast-path switches in place; returns what was done (for bench JSON)."""
    report: dict[str, Any] = {}
    cuda = model.device.type == "cuda"
    if cfg.fuse_qkv:
        report["fused_qkv"] = sum(
            m.fuse_projections() for m in model.modules() if isinstance(m, FluxAttention)
        )
    if cfg.fused_ops and cuda:
        for m in model.modules():
            if isinstance(m, FluxAttention):
                m.fused_ops = True
        report["fused_ops"] = True
    form = cfg.attention_form or ("triton" if cuda else None)
    if form:
        model.set_attention_form(form)
        report["attention_form"] = form
    if cfg.fp8:
        from unidg_rt.quant.fp8 import quantize_linears_fp8

        report["fp8_linears"] = len(quantize_linears_fp8(model))
    if cfg.compile:
        for blocks in (model.transformer_blocks, model.single_transformer_blocks):
            for b in blocks:
                b.compile(dynamic=False)
        report["compiled_blocks"] = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    logger.info("fast path: %s", report)
    return report


class CUDAGraphRunner:
    """Captures one transformer call for a fixed set of input shapes and replays it.

    Static buffers are filled with ``copy_`` before each replay; a new shape signature
    triggers a new capture (kept per signature). CUDA only — on other devices it just calls
    the model."""

    def __init__(self, model: FluxTransformer, warmup: int = 2):
        self.model, self.warmup = model, warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}

    @staticmethod
    def _signature(feed: dict[str, Any]) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(feed.items()) if v is not None)

    @torch.inference_mode()
    def __call__(self, **feed) -> torch.Tensor:
        if self.model.device.type != "cuda":
            return self.model(**feed)
        sig = self._signature(feed)
        if sig not in self._graphs:
            static = {k: (v.clone() if v is not None else None) for k, v in feed.items()}
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.model(**static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.model(**static)
            self._graphs[sig] = (graph, static, out)
        graph, static, out = self._graphs[sig]
        for k, v in feed.items():
            if v is not None:
                static[k].copy_(v)
        graph.replay()
        return out
