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

The knobs are applied by :mod:`unidg_rt.engines.build_config` (its functions are importable from
here too). Profiles come from the export IOSpec through :func:`unidg_rt.engines.inputs.profiles_from_spec`
(``{input: (min, opt, max)}``; a list of such dicts = several optimization profiles).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from unidg_rt.artifacts import plan as mf
from unidg_rt.artifacts.io import atomic_write_bytes
from unidg_rt.engines import layers as layer_info
from unidg_rt.engines.bindings import load_trt
from unidg_rt.engines.build_config import (
    apply_options,
    apply_target,
    attach_timing_cache,
    network_flags,
    precision_flags,
)
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
    applied.update(
        apply_options(
            trt,
            config,
            workspace=workspace,
            refit=refit,
            weight_streaming=weight_streaming,
            strongly_typed=typed,
            opt_level=opt_level,
        )
    )
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
