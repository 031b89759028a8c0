"""Builder configuration by feature detection (the knobs of :mod:`unidg_rt.engines.build`):
network creation flags, precision flags, compute-capability targets, workspace / refit / weight
streaming / optimization level, and the timing cache. Each is applied only where the bindings
expose it and returns what it applied, for the plan's manifest.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from unidg_rt.artifacts import plan as mf
from unidg_rt.engines.bindings import local_device_cc
from unidg_rt.errors import ConfigError

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ bindings
def _flag(trt, name: str):
    return getattr(trt.BuilderFlag, name, None)


def rtx_supported_targets(trt) -> list[str]:
    """Compute capabilities the bindings can AOT-build for (``ComputeCapability.SM89`` → ``"8.9"``)."""
    cc = getattr(trt, "ComputeCapability", None)
    names = [n for n in dir(cc) if n.startswith("SM") and n[2:].isdigit()] if cc is not None else []
    return sorted((mf.normalize_cc(n) for n in names), key=mf.cc_key)


# ------------------------------------------------------------------------------ configuration
def network_flags(trt, strongly_typed: bool) -> tuple[int, bool]:
    """Creation flags and whether the network is really strongly typed."""
    ndcf = trt.NetworkDefinitionCreationFlag
    if strongly_typed and hasattr(ndcf, "STRONGLY_TYPED"):
        return 1 << int(ndcf.STRONGLY_TYPED), True
    if strongly_typed:
        logger.warning("this TensorRT has no STRONGLY_TYPED networks (before 9.x): building weakly typed")
    if not hasattr(ndcf, "STRONGLY_TYPED") and hasattr(ndcf, "EXPLICIT_BATCH"):
        return 1 << int(ndcf.EXPLICIT_BATCH), False  # TensorRT 8.x: implicit batch otherwise
    return 0, False


def precision_flags(trt, config, precision: str, strongly_typed: bool) -> list[str]:
    """Weakly typed networks get the builder flags of ``precision``; strongly typed ones take
    types from the ONNX (export in that precision) and get none."""
    if strongly_typed or precision == "fp32":
        return []
    wanted = {"fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"], "fp8": ["FP8", "FP16"]}[precision]
    applied = []
    for name in wanted:
        flag = _flag(trt, name)
        if flag is None:
            raise ConfigError(
                f"precision={precision}: this builder has no BuilderFlag.{name} (TensorRT-RTX is strongly typed "
                f"only): export a {precision} ONNX and build with strongly_typed=True"
            )
        config.set_flag(flag)
        applied.append(name)
    return applied


def apply_target(trt, config, builder: str, targets: list[str]) -> dict[str, Any]:
    """Set the compute capabilities to build for; return the manifest's ``target`` record."""
    if builder == "tensorrt-rtx":
        supported = rtx_supported_targets(trt)
        record = {
            "kind": "aot",
            "compute_capabilities": sorted(targets, key=mf.cc_key) or None,
            "builder_supported": supported,
        }
        if not targets:
            return record  # TensorRT-RTX default: portable across its RTX-class targets
        bad = [t for t in targets if t not in supported]
        if bad:
            hint = " (Hopper/data-centre GPUs need full TensorRT: --builder tensorrt)" if "9.0" in bad else ""
            raise ConfigError(
                f"--target {', '.join(bad)}: TensorRT-RTX builds for {', '.join(supported) or 'nothing'}{hint}"
            )
        if not hasattr(config, "set_compute_capability"):
            raise ConfigError(
                "this TensorRT-RTX has no compute-capability API: omit --target (portable build)"
            )
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(sorted(targets, key=mf.cc_key)):
            config.set_compute_capability(getattr(trt.ComputeCapability, mf.cc_tag(cc).upper()), i)
        return record
    # full TensorRT builds for the GPU it runs on (optionally hardware-compatible Ampere+)
    if targets == ["ampere+"]:
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), "AMPERE_PLUS", None)
        if level is None:
            raise ConfigError(
                "this TensorRT has no hardware-compatibility levels (10.x has): drop --target ampere+"
            )
        config.hardware_compatibility_level = level
        return {"kind": "device", "compute_capabilities": None, "hardware_compatibility": "AMPERE_PLUS"}
    device = local_device_cc()
    if device is None and len(targets) == 1:  # no torch to ask (e.g. a bare JetPack): trust --target
        logger.warning("cannot query the GPU (torch/CUDA unavailable): trusting --target %s", targets[0])
        device = targets[0]
    if device is None:
        raise ConfigError(
            "full TensorRT builds on the GPU the engine will run on and no CUDA GPU is visible here (via torch); "
            "build on the target machine (pass --target 8.7 on a Jetson Orin without torch), "
            "or use --builder tensorrt-rtx --target 8.9 for RTX-class GPUs"
        )
    if targets and targets != [device]:
        raise ConfigError(
            f"--target {', '.join(targets)}: full TensorRT builds for this GPU ({device}) only; "
            f"run `unidg-rt build` on a {', '.join(targets)} machine or drop --target"
        )
    return {"kind": "device", "compute_capabilities": [device]}


def apply_options(
    trt, config, *, workspace, refit, weight_streaming, strongly_typed, opt_level
) -> dict[str, Any]:
    applied: dict[str, Any] = {}
    if workspace is not None:
        if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
        else:  # TensorRT 8.x
            config.max_workspace_size = int(workspace)
        applied["workspace"] = int(workspace)
    for wanted, name in ((refit, "REFIT"), (weight_streaming, "WEIGHT_STREAMING")):
        if not wanted:
            continue
        flag = _flag(trt, name)
        if flag is None:
            logger.warning("BuilderFlag.%s not in this TensorRT: building without it", name)
            applied[name.lower()] = False
            continue
        if name == "WEIGHT_STREAMING" and not strongly_typed:
            raise ConfigError("weight_streaming=True needs a strongly typed network (strongly_typed=True)")
        config.set_flag(flag)
        applied[name.lower()] = True
    if hasattr(trt, "ProfilingVerbosity") and hasattr(config, "profiling_verbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names + ONNX node metadata
    if opt_level is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(opt_level)
        applied["builder_optimization_level"] = int(opt_level)
    return applied


def attach_timing_cache(config, path: Path | None):
    """Load (or create) a timing cache; ``None`` when absent from or a no-op in this builder."""
    if path is None:
        return None, "not requested"
    if not hasattr(config, "create_timing_cache"):
        return None, "not supported by this builder"
    data = path.read_bytes() if path.exists() else b""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = config.create_timing_cache(data)
        accepted = cache is not None and config.set_timing_cache(cache, False)
    if any("no-op" in str(w.message) for w in caught):  # TensorRT-RTX ≥ 1.2 (it autotunes at runtime)
        return None, "no-op in this builder (its DeprecationWarning says so); not written"
    if not accepted:
        logger.warning("timing cache %s rejected (other GPU/version): starting a fresh one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, True)
    return cache, "loaded" if data else "created"
