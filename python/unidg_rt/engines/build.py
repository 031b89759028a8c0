"""Engine builders: TensorRT (on the target GPU) and TensorRT-RTX (AOT, CPU-only machine works).

One code path over the TensorRT Python API, with **feature detection instead of version tables**
(Polygraphy style): every optional knob is applied only where the bindings expose it, and the
manifest records what was applied. It runs on the TensorRT 10.3 subset JetPack 6 ships, on
TensorRT 10.x/11.x, and on TensorRT-RTX 1.x (``tensorrt_rtx_bindings``):

==========================  ===============================================================
knob                        detected by
==========================  ===============================================================
strongly typed network      ``hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")``
explicit batch (TRT 8.x)    only when STRONGLY_TYPED is absent and EXPLICIT_BATCH present
precision flags (weak)      ``hasattr(trt.BuilderFlag, "FP16" | "BF16" | "INT8" | "FP8")``
AOT compute capabilities    ``hasattr(config, "set_compute_capability")`` + ``trt.ComputeCapability.SM89``
hardware compatibility      ``hasattr(trt, "HardwareCompatibilityLevel")`` (``--target ampere+``)
workspace                   ``config.set_memory_pool_limit`` (10.x) else ``max_workspace_size`` (8.x)
timing cache                ``config.create_timing_cache``; skipped when the bindings warn it is a
                            no-op (TensorRT-RTX ≥ 1.2 says so in a DeprecationWarning)
refit / weight streaming    ``BuilderFlag.REFIT`` / ``BuilderFlag.WEIGHT_STREAMING``
layer information           ``ProfilingVerbosity.DETAILED``; verbose-log ``Name:`` lines (RTX AOT)
                            or ``EngineInspector`` JSON (full TensorRT, needs the GPU)
==========================  ===============================================================

Profiles come from the export IOSpec through :func:`unidg_rt.engines.inputs.profiles_from_spec`
(``{input: (min, opt, max)}``; a list of such dicts = several optimization profiles).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from unidg_rt.artifacts import plan as mf
from unidg_rt.artifacts.io import atomic_write_bytes
from unidg_rt.engines import layers as layer_info
from unidg_rt.engines.bindings import load_trt, local_device_cc
from unidg_rt.engines.inputs import (
    check_onnx_precision,
    component_from_path,
    normalize_profiles,
    onnx_sidecar,
    pipeline_facts,
    profiles_from_spec,
)
from unidg_rt.errors import ConfigError, UniDGError

logger = logging.getLogger(__name__)


class EngineBuildError(UniDGError):
    """The ONNX could not be parsed or the builder returned no plan; the message has its errors."""


@dataclasses.dataclass(frozen=True)
class PlanInfo:
    plan_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    build_seconds: float

    @property
    def attention(self) -> dict[str, Any]:
        return self.manifest.get("layer_report") or {}


# ------------------------------------------------------------------------------ bindings
def _flag(trt, name: str):
    return getattr(trt.BuilderFlag, name, None)


def rtx_supported_targets(trt) -> list[str]:
    """Compute capabilities the bindings can AOT-build for (``ComputeCapability.SM89`` → ``"8.9"``)."""
    cc = getattr(trt, "ComputeCapability", None)
    names = [n for n in dir(cc) if n.startswith("SM") and n[2:].isdigit()] if cc is not None else []
    return sorted((mf.normalize_cc(n) for n in names), key=mf.cc_key)


# ------------------------------------------------------------------------------ logger
def _make_logger(trt, keep_layers: bool):
    """An ``ILogger`` that forwards errors/warnings to ``logging`` and keeps the per-layer lines."""

    class _Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.layer_lines: list[str] = []

        def log(self, severity, msg):
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)  # raised with EngineBuildError if the build fails
                logger.debug("[TRT] %s", msg)
            elif severity == sev.WARNING:
                logger.warning("[TRT] %s", msg)
            elif keep_layers and ", LayerType: " in msg:  # RTX: one VERBOSE "Layers:\nName: …" block
                self.layer_lines.extend(line for line in msg.splitlines() if line.startswith("Name: "))
            elif severity == sev.INFO:
                logger.debug("[TRT] %s", msg)

    return _Log()


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


def _save_timing_cache(cache, path: Path) -> None:
    atomic_write_bytes(path, bytes(cache.serialize()))


def _io_records(network) -> dict[str, list[dict[str, Any]]]:
    def rec(t):
        return {"name": t.name, "dtype": str(t.dtype).split(".")[-1], "shape": list(t.shape)}

    return {
        "inputs": [rec(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [rec(network.get_output(i)) for i in range(network.num_outputs)],
    }


def _add_profiles(builder, network, config, profiles) -> None:
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    dynamic = {n for n, t in inputs.items() if any(d < 0 for d in t.shape)}
    if dynamic and not profiles:
        raise ConfigError(
            f"inputs {sorted(dynamic)} have dynamic dims: pass profiles={{name: (min, opt, max)}} (from the IOSpec)"
        )
    for i, prof in enumerate(profiles):
        missing = dynamic - set(prof)
        if missing:
            shapes = {n: list(inputs[n].shape) for n in sorted(missing)}
            raise ConfigError(f"profile {i} lacks shapes for dynamic inputs {shapes}")
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in prof.items():
            if name not in inputs:
                logger.warning("profile input %r is not a network input (pruned by export?): ignored", name)
                continue
            if len(mn) != len(inputs[name].shape):
                raise ConfigError(
                    f"profile {i} input {name!r} has rank {len(mn)}, the network {list(inputs[name].shape)}"
                )
            if name in dynamic:
                p.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(p)


def _parse(trt, network, log, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, log)
    ok = (
        parser.parse_from_file(str(onnx_path))
        if hasattr(parser, "parse_from_file")
        else parser.parse(onnx_path.read_bytes(), str(onnx_path))
    )
    if not ok:
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() if hasattr(e, "node_name") else e.node()
            op = e.node_operator() if hasattr(e, "node_operator") else "?"
            errs.append(f"node {node} ({op}): {e.desc()}")
        raise EngineBuildError(f"{onnx_path.name} does not parse:\n  " + "\n  ".join(errs or log.errors))


def _inspector_layers(trt, log, plan: bytes) -> list[dict[str, Any]]:
    """Full TensorRT on the GPU it built for: layer JSON from the engine inspector."""
    try:
        engine = trt.Runtime(log).deserialize_cuda_engine(plan)
        if engine is None:
            return []
        text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        return layer_info.parse_inspector_json(text)
    except Exception as exc:  # noqa: BLE001 - diagnostics only, never fail a good build
        logger.info("engine inspector unavailable (%s)", exc)
        return []


# ------------------------------------------------------------------------------ the builder
def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    builder: str = "tensorrt",
    precision: Any = "fp16",
    profiles: Any = None,
    target: Any = None,
    timing_cache: str | Path | None = None,
    workspace: int | None = None,
    refit: bool = False,
    weight_streaming: bool = False,
    strongly_typed: bool = True,
    component: str | None = None,
    size_range: str | None = None,
    opt_level: int | None = None,
    metadata: dict[str, Any] | None = None,
    layer_report: bool = True,
    trt_module=None,
) -> PlanInfo:
    """Build ``onnx_path`` into ``out_dir/{component}.{precision}.{target}.{builder-version}.{hash}.plan``
    plus its JSON sidecar; return :class:`PlanInfo`.

    ``builder``: ``"tensorrt"`` (builds for the local GPU) or ``"tensorrt-rtx"`` (AOT, no GPU
    needed). ``target``: compute capabilities (``"8.9"``, ``["8.6", "8.9"]``; RTX default: portable)
    or ``"ampere+"`` (TensorRT hardware compatibility). ``profiles``: ``{input: (min, opt, max)}``
    or a list (see :func:`normalize_profiles`); ``None`` = from the exporter's sidecar IOSpec
    (``size_range``: which of its profiles, default the first). ``precision``: with ``strongly_typed`` (default) the
    ONNX must already be in that precision — it is checked; weakly typed builds set builder
    flags. ``metadata``: free-form model facts stored in the sidecar (the pipeline reads them).
    ``trt_module``: the bindings to use (tests pass a fake)."""
    t0 = time.perf_counter()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    builder_name = mf.normalize_builder(builder)
    precision = mf.normalize_precision(precision)
    trt = trt_module or load_trt(builder_name)
    version = str(getattr(trt, "__version__", "unknown"))
    if isinstance(target, str | int | float) and str(target).lower() not in (
        "ampere+",
        "ampereplus",
        "portable",
    ):
        target = [target]
    if isinstance(target, str) and target.lower() in ("ampere+", "ampereplus"):
        targets = ["ampere+"]
    elif isinstance(target, str) or not target:
        targets = []
    else:
        targets = sorted({mf.normalize_cc(t) for t in target}, key=mf.cc_key)
    if not onnx_path.is_file():
        raise ConfigError(f"{onnx_path} does not exist: export it first (`unidg-rt export`)")
    component = component or component_from_path(onnx_path)
    side = onnx_sidecar(onnx_path) or {}
    if profiles is None and side.get("spec"):
        profiles = profiles_from_spec(side["spec"], size_range)
    profiles = normalize_profiles(profiles)
    facts = {**pipeline_facts(onnx_path), **(metadata or {})}
    if side.get("spec"):
        facts = {
            "spec_attrs": side["spec"].get("attrs", {}),
            "attention_form": side.get("attention_form"),
            **facts,
        }
    metadata = facts
    check_onnx_precision(onnx_path, precision, strongly_typed)
    onnx_digest = mf.onnx_sha256(onnx_path)

    log = _make_logger(trt, keep_layers=layer_report and builder_name == "tensorrt-rtx")
    trt_builder = trt.Builder(log)
    flags, typed = network_flags(trt, strongly_typed)
    network = trt_builder.create_network(flags)
    _parse(trt, network, log, onnx_path)
    config = trt_builder.create_builder_config()
    target_rec = apply_target(trt, config, builder_name, targets)
    applied = {"strongly_typed": typed, "precision_flags": precision_flags(trt, config, precision, typed)}
    applied.update(apply_options(trt, config, workspace=workspace, refit=refit, weight_streaming=weight_streaming,
                                 strongly_typed=typed, opt_level=opt_level))  # fmt: skip
    _add_profiles(trt_builder, network, config, profiles)
    cache_path = Path(timing_cache) if timing_cache else None
    cache, cache_state = attach_timing_cache(config, cache_path)
    applied["timing_cache"] = cache_state
    io = _io_records(network)

    tag = mf.target_tag(target_rec.get("compute_capabilities"), target_rec.get("hardware_compatibility"))
    logger.info("building %s (%s, %s) with %s %s", component, precision, tag, builder_name, version)
    t_build = time.perf_counter()
    plan = trt_builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t_build
    if plan is None:
        raise EngineBuildError(
            f"{builder_name} {version} built no plan for {onnx_path.name} ({precision}, {tag}):\n  "
            + "\n  ".join(log.errors[-10:] or ["(no error logged)"])
        )
    plan = bytes(plan)
    if cache is not None and cache_path is not None:
        _save_timing_cache(cache, cache_path)

    if builder_name == "tensorrt-rtx":
        layers = layer_info.parse_log_layers(log.layer_lines)
    else:
        layers = _inspector_layers(trt, log, plan) if layer_report else []
    report = layer_info.attention_summary(layers) if layer_report else None
    if report:
        logger.info("%s: %s", component, report["verdict"])

    import hashlib

    from unidg_rt import __version__

    out_dir.mkdir(parents=True, exist_ok=True)
    name = mf.plan_name(component, precision, tag, builder_name, version, onnx_digest)
    plan_path = out_dir / name
    manifest = {
        "format": mf.MANIFEST_FORMAT,
        "component": component.split("-")[0],
        "component_tag": component,
        "precision": precision,
        "builder": builder_name,
        "builder_version": version,
        "target": target_rec,
        "onnx": {"path": str(onnx_path.resolve()), "name": onnx_path.name, "sha256": onnx_digest},
        "plan": {"name": name, "bytes": len(plan), "sha256": hashlib.sha256(plan).hexdigest()},
        "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in profiles],
        "io": io,
        "flags": applied,
        "unidg_rt_version": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(build_s, 2),
        "layer_report": report,
        "metadata": metadata or {},
    }
    atomic_write_bytes(plan_path, plan)
    manifest_path = mf.write_manifest(plan_path, manifest)
    return PlanInfo(plan_path, manifest_path, manifest, round(time.perf_counter() - t0, 2))
