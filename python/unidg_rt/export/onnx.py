"""ONNX export of one component with staged artifacts (DESIGN §6).

:func:`export_component` writes ``{component}.{form}.{precision}.onnx`` (+ ``.onnx.data`` for
external weights) and a JSON sidecar ``{component}.{form}.{precision}.json`` holding the sha256
of the source weights, the spec, opset, exporter and library versions, and a *stage key* over
all of those. A later call with the same inputs finds the key and skips the export.

``torch.onnx.export(..., dynamo=True)`` is the exporter. The TorchScript exporter is a fallback
only when the dynamo path fails (logged with the reason and torch version); it cannot express
the ``attention_op`` (opset 23) or ``plugin`` forms, which then fail loudly.

Models whose weights live on the ``meta`` device export as a *dry run*: graph structure only,
no weights, no graph optimisation (the optimiser folds constants and needs real values).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unidg_rt.artifacts.io import atomic_write_json, sha256_file
from unidg_rt.errors import ConfigError
from unidg_rt.export import ExportError, forms
from unidg_rt.export.forms import DEFAULT_OPSET, EXPORT_FORMS, plugin_translation_table
from unidg_rt.export.passes import apply_spec, check_attention_form, set_model_metadata, strip_node_metadata
from unidg_rt.export.spec import IOSpec
from unidg_rt.export.wrappers import torch_feed, wrap

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SIDECAR_FORMAT = "unidg-onnx-artifact/1"
#: weights above this go to ``{name}.onnx.data`` (protobuf's hard limit is 2 GiB)
EXTERNAL_DATA_BYTES = int(1.5 * 2**30)
#: onnx.checker parses the whole protobuf: skip it for large inline-weight files (peak RAM)
CHECKER_MAX_BYTES = 512 * 2**20
#: the TorchScript exporter's highest opset (torch 2.x)
TORCHSCRIPT_MAX_OPSET = 20
NO_FORM = "default"


@dataclass
class ExportResult:
    component: str
    path: Path
    sidecar_path: Path
    skipped: bool
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- hashing / versions
def state_dict_sha256(model: torch.nn.Module) -> str | None:
    """sha256 over names, dtypes, shapes and bytes of the weights; ``None`` on ``meta``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if t.is_meta:
            return None
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import onnx

    import unidg_rt

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "unidg_rt": unidg_rt.__version__}
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover - dynamo export needs it
        versions["onnxscript"] = "missing"
    return versions


def artifact_stem(component: str, form: str | None, precision: str) -> str:
    return f"{component}.{form or NO_FORM}.{precision}"


def stage_key(
    spec: IOSpec,
    form: str,
    precision: str,
    opset: int,
    source_sha256: str,
    dry_run: bool = False,
    external_data: bool | None = None,
) -> str:
    """Hash of everything an artifact depends on; a matching sidecar means "skip this stage"."""
    payload = {
        "format": SIDECAR_FORMAT,
        "component": spec.component,
        "form": form,
        "precision": precision,
        "opset": opset,
        "source_sha256": source_sha256,
        "spec": spec.fingerprint(),
        "versions": library_versions(),
        "dry_run": dry_run,
        "external_data": external_data,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def up_to_date(out_dir: Path, stem: str, key: str) -> dict[str, Any] | None:
    """The sidecar when ``stem`` was exported with stage ``key`` and its files are intact."""
    info = read_sidecar(out_dir / f"{stem}.json")
    if not info or info.get("stage_key") != key:
        return None
    onnx_path = out_dir / info.get("onnx_file", "")
    if not onnx_path.is_file() or onnx_path.stat().st_size != info.get("onnx_bytes"):
        return None
    data = info.get("external_data")
    if data:
        data_path = out_dir / data
        if not data_path.is_file() or data_path.stat().st_size != info.get("external_data_bytes"):
            return None
    return info


# ---------------------------------------------------------------------- export
def resolve_form_and_opset(component: str, form: str | None, opset: int | None) -> tuple[str, int]:
    if component != "transformer":
        if form not in (None, NO_FORM):
            raise ConfigError(
                f"attention_form={form!r} applies to the transformer only; omit it for {component}"
            )
        return NO_FORM, opset or 18
    form = form or "fold"
    if form not in EXPORT_FORMS:
        raise ConfigError(f"attention_form={form!r} unknown; choose one of {EXPORT_FORMS}")
    opset = opset or DEFAULT_OPSET[form]
    if form == "attention_op" and opset < 23:
        raise ConfigError(
            f"attention_form='attention_op' needs opset >= 23 (the ONNX Attention op); got {opset}"
        )
    return form, opset


def _dynamic_shapes(spec: IOSpec, names: list[str]) -> dict[str, dict[int, Any] | None]:
    from torch.export import Dim

    base = {d: Dim(d, min=1) for d in spec.base_dims}
    out: dict[str, dict[int, Any] | None] = {}
    for name in names:
        axes = {}
        for axis, dim in spec.tensor(name).symbolic.items():
            expr = spec.derived.get(dim)
            if expr is None:
                axes[axis] = base[dim]
            elif "+" not in expr and expr.count("*") == 1 and expr.split("*")[0].isdigit():
                factor, ref = expr.split("*")
                axes[axis] = int(factor) * base[ref]  # e.g. height = 8 * latent_height
            else:
                axes[axis] = Dim.AUTO  # sums of dims (tokens = text + image) are inferred
        out[name] = axes or None
    return out


def _export_dynamo(module, feed, spec, form, opset, dry_run):
    table = plugin_translation_table(spec.attrs["attention_head_dim"]) if form == "plugin" else None
    with warnings.catch_warnings():
        # torch 2.13 warns once per named Dim that it "will not be used" although the names do
        # end up in the graph (checked by apply_spec); nothing to act on
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used", category=UserWarning)
        program = torch.onnx.export(
            module,
            (),
            kwargs=feed,
            dynamic_shapes=_dynamic_shapes(spec, list(feed)),
            dynamo=True,
            opset_version=opset,
            output_names=list(spec.output_names),
            custom_translation_table=table,
            optimize=not dry_run,
            verbose=False,
        )
    return program.model


def _export_torchscript(module, feed, spec, opset, tmp_dir: Path):
    import onnx_ir as ir

    path = tmp_dir / "torchscript.onnx"
    axes = {
        name: {a: d for a, d in spec.tensor(name).symbolic.items()} for name in [*feed, *spec.output_names]
    }
    torch.onnx.export(
        module,
        (),
        str(path),
        kwargs=feed,
        dynamo=False,
        input_names=list(feed),
        output_names=list(spec.output_names),
        dynamic_axes=axes,
        opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
    )
    return ir.load(path)


@contextlib.contextmanager
def _quiet_exporter_logs():
    """onnxscript/onnx_ir log every rewrite at INFO (thousands of lines per export): raise them to
    WARNING for the export unless the user configured those loggers explicitly."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]
    touched = [lg for lg in loggers if lg.level == logging.NOTSET]
    for lg in touched:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg in touched:
            lg.setLevel(logging.NOTSET)


def _to_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    current = next((p.dtype for p in model.parameters() if p.is_floating_point()), dtype)
    if current == dtype:
        return model
    if getattr(model, "adapter_names", ()):  # a copy's hooks would still read the original manager
        raise ExportError(
            f"the transformer carries adapters and is {current}: load it in the export precision ({dtype}) instead"
        )
    logger.info("casting a copy of the model %s → %s for export", current, dtype)
    return copy.deepcopy(model).to(dtype)


def export_component(
    component: str,
    model: torch.nn.Module,
    spec: IOSpec,
    out_dir: str | Path,
    precision: str = "fp32",
    attention_form: str | None = None,
    opset: int | None = None,
    *,
    source_sha256: str | None = None,
    external_data: bool | None = None,
    force: bool = False,
) -> ExportResult:
    """Export ``model`` (a FluxTransformer, AutoencoderKLFlux, CLIPTextModel or T5EncoderModel, or
    its export wrapper) as ``component`` into ``out_dir``; skip when the stage is up to date.

    ``attention_form`` (transformer only): ``decomposed | fold | attention_op | plugin`` (default
    ``fold``). ``external_data``: ``None`` = only when the weights exceed 1.5 GiB.
    ``source_sha256``: the weights file's hash (default: hash of the model's state dict)."""
    if spec.component != component:
        raise ConfigError(
            f"spec is for {spec.component!r}, not {component!r}: pass component_spec({component!r}, ...)"
        )
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} unknown; choose one of {sorted(PRECISIONS)}")
    form, opset = resolve_form_and_opset(component, attention_form, opset)
    out_dir = Path(out_dir)
    stem = artifact_stem(component, form, precision)
    dry_run = any(p.is_meta for p in model.parameters())
    source = source_sha256 or state_dict_sha256(model) or "meta"
    key = stage_key(spec, form, precision, opset, source, dry_run, external_data)
    if not force and (info := up_to_date(out_dir, stem, key)) is not None:
        logger.info("%s.onnx is up to date (stage %s…); skipping", stem, key[:12])
        return ExportResult(component, out_dir / info["onnx_file"], out_dir / f"{stem}.json", True, info)

    t0 = time.perf_counter()
    module = wrap(component, _to_precision(model, PRECISIONS[precision]), spec)
    feed = torch_feed(spec, spec.sample_inputs(spec.export_dims()), device="meta" if dry_run else "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    try:
        exporter, fallback_reason = "dynamo", None
        form_ctx = forms.attention_form(form) if component == "transformer" else contextlib.nullcontext()
        with form_ctx, _quiet_exporter_logs():
            try:
                model_ir = _export_dynamo(module, feed, spec, form, opset, dry_run)
            except Exception as exc:  # noqa: BLE001 - any exporter failure triggers the fallback
                if form in ("attention_op", "plugin") or dry_run:
                    raise ExportError(
                        f"dynamo export of {stem} failed on torch {torch.__version__} and the TorchScript "
                        f"exporter cannot express it: {type(exc).__name__}: {exc}"
                    ) from exc
                fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                logger.warning(
                    "dynamo export of %s failed on torch %s (%s); falling back to the TorchScript exporter",
                    stem,
                    torch.__version__,
                    fallback_reason,
                )
                exporter = "torchscript"
                model_ir = _export_torchscript(module, feed, spec, opset, tmp_dir)
        info = _finish(
            model_ir, spec, form, precision, opset, stem, out_dir, tmp_dir, dry_run, external_data, module
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    info.update(
        stage_key=key,
        source_sha256=source,
        exporter=exporter,
        fallback_reason=fallback_reason,
        export_seconds=round(time.perf_counter() - t0, 2),
        versions=library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    sidecar = out_dir / f"{stem}.json"
    atomic_write_json(sidecar, info)
    logger.info(
        "exported %s (%.1f MB) in %.1f s via %s",
        info["onnx_file"],
        info["total_bytes"] / 1e6,
        info["export_seconds"],
        exporter,
    )
    return ExportResult(component, out_dir / info["onnx_file"], sidecar, False, info)


def _finish(model_ir, spec, form, precision, opset, stem, out_dir, tmp_dir, dry_run, external_data, module):
    """Passes, structure check, atomic save; returns the sidecar fields about the file."""
    import onnx_ir as ir

    dims = apply_spec(model_ir, spec)
    strip_node_metadata(model_ir)
    summary = None
    if spec.component == "transformer":
        summary = check_attention_form(model_ir, form, int(spec.attrs["total_layers"]))
    set_model_metadata(
        model_ir,
        {
            "unidg_rt.component": spec.component,
            "unidg_rt.attention_form": form,
            "unidg_rt.precision": precision,
        },
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    use_external = external_data if external_data is not None else weight_bytes > EXTERNAL_DATA_BYTES
    if dry_run:
        model_ir.graph.initializers.clear()  # meta tensors have no bytes; structure only
        use_external = False
    onnx_name, data_name = f"{stem}.onnx", f"{stem}.onnx.data"
    tmp_onnx = tmp_dir / onnx_name
    ir.save(model_ir, tmp_onnx, external_data=data_name if use_external else None)
    if not dry_run and tmp_onnx.stat().st_size < CHECKER_MAX_BYTES:
        import onnx

        onnx.checker.check_model(str(tmp_onnx))
    (out_dir / f"{stem}.json").unlink(missing_ok=True)  # a stale sidecar must never vouch for new files
    if use_external:
        os.replace(tmp_dir / data_name, out_dir / data_name)
    else:
        (out_dir / data_name).unlink(missing_ok=True)
    os.replace(tmp_onnx, out_dir / onnx_name)
    onnx_bytes = (out_dir / onnx_name).stat().st_size
    data_bytes = (out_dir / data_name).stat().st_size if use_external else 0
    return {
        "format": SIDECAR_FORMAT,
        "component": spec.component,
        "attention_form": form,
        "precision": precision,
        "opset": opset,
        "dry_run": dry_run,
        "onnx_file": onnx_name,
        "onnx_bytes": onnx_bytes,
        "onnx_sha256": sha256_file(out_dir / onnx_name),
        "external_data": data_name if use_external else None,
        "external_data_bytes": data_bytes,
        "total_bytes": onnx_bytes + data_bytes,
        "weight_bytes": weight_bytes,
        "dim_renames": dims,
        "attention": summary,
        "spec": spec.to_dict(),
    }
