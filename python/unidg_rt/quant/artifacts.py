"""Quantised artifacts in an exported ONNX folder (issue 7): ``{component}.{form}.{precision}.onnx``
+ JSON sidecar beside the fp32 export, registered in ``unidg_onnx.json`` so that
``UniDGPipeline.from_onnx(folder, precision="int8")`` runs it (components without an ``int8`` file,
e.g. the VAE, fall back to the exported precision).

The sidecar has the exporter's format (``unidg-onnx-artifact/1``: a later ``unidg-rt export`` of the
same weights keeps the entry in the manifest; other weights drop it) plus a ``quantization``
record: quantiser and version, calibration file and sha256, keep patterns, kept nodes, the
validation report. A stage key over the fp32 ONNX, the calibration data and the settings skips an
unchanged quantisation. No torch import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unidg_rt.artifacts.io import atomic_write_json, sha256_file
from unidg_rt.artifacts.onnx_folder import MANIFEST_NAME, manifest_entry, read_manifest
from unidg_rt.errors import ConfigError, WeightsError
from unidg_rt.quant.qdq import DEFAULT_MIN_COVERAGE, QDQ_PRECISIONS, quantize_onnx
from unidg_rt.vocab import ORT_FORMS

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "unidg-onnx-artifact/1"
QUANT_COMPONENTS = ("transformer", "vae_encoder", "vae_decoder")
#: the precision quantisation starts from (calibration runs it on ORT CPU)
SOURCE_PRECISION = "fp32"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import unidg_rt

    out = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "unidg_rt": unidg_rt.__version__}
    try:
        from importlib.metadata import version

        out["nvidia-modelopt"] = version("nvidia-modelopt")
    except Exception:  # noqa: BLE001 - not installed
        pass
    return out


def source_artifact(manifest: dict[str, Any], component: str, form: str | None) -> dict[str, Any]:
    """The fp32 artifact of ``component`` (and attention ``form``) to quantise."""
    arts = [a for a in manifest.get("artifacts", []) if a["component"] == component]
    if component == "transformer":
        form = form or manifest.get("attention_form")
        if form not in ORT_FORMS:
            raise ConfigError(
                f"attention form {form!r} cannot be calibrated on ONNX Runtime (the plugin form needs TensorRT); "
                f"quantise one of {list(ORT_FORMS)}"
            )
        arts = [a for a in arts if a["attention_form"] == form]
    src = [a for a in arts if a["precision"] == SOURCE_PRECISION]
    if not src:
        have = sorted({f"{a['attention_form']}.{a['precision']}" for a in arts}) or "nothing"
        raise WeightsError(
            f"no {SOURCE_PRECISION} {component}{f' ({form})' if form else ''} export to quantise (found {have}): "
            f"run `unidg-rt export --precision fp32{f' --forms {form}' if form else ''}` first"
        )
    return src[0]


def register_artifact(onnx_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Add (or replace) one artifact in ``unidg_onnx.json``; the default form/precision stay."""
    manifest = read_manifest(onnx_dir)
    key = (entry["component"], entry["attention_form"], entry["precision"])
    arts = [
        a
        for a in manifest.get("artifacts", [])
        if (a["component"], a["attention_form"], a["precision"]) != key
    ]
    manifest["artifacts"] = [*arts, entry]
    atomic_write_json(Path(onnx_dir) / MANIFEST_NAME, manifest)
    return manifest


def quantize_folder(
    onnx_dir: str | Path,
    calibration: str | Path,
    precision: str = "int8",
    *,
    components: Sequence[str] = ("transformer",),
    form: str | None = None,
    keep: Sequence[str] | None = None,
    quantize_attention: bool = False,
    backend: str = "auto",
    high_precision: str | None = None,
    calibration_method: str = "max",
    max_samples: int | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Quantise the fp32 ``components`` of an exported folder with the captured ``calibration``
    folder (``unidg-rt calibrate``); write ``{component}.{form}.{precision}.onnx`` + sidecar and
    register them. Returns one record per component (``skipped`` when up to date).
    ``keep=None``: the component's default high-precision layers; see :func:`quantize_onnx`."""
    onnx_dir, calibration = Path(onnx_dir), Path(calibration)
    if precision not in QDQ_PRECISIONS:
        raise ConfigError(f"precision={precision!r}: quantise to one of {QDQ_PRECISIONS}")
    bad = [c for c in components if c not in QUANT_COMPONENTS]
    if bad or not components:
        raise ConfigError(f"components={list(components)}: choose from {QUANT_COMPONENTS}")
    manifest = read_manifest(onnx_dir)
    results = []
    for component in components:
        src_entry = source_artifact(manifest, component, form)
        src = onnx_dir / src_entry["onnx_file"]
        src_side = _read(onnx_dir / (src.name.removesuffix(".onnx") + ".json"))
        stem = f"{component}.{src_entry['attention_form']}.{precision}"
        out = onnx_dir / f"{stem}.onnx"
        from unidg_rt.quant.calibration import load_calibration

        cal_file = calibration / f"{component}.npz" if calibration.is_dir() else calibration
        load_calibration(cal_file, component)  # refuse before hashing anything
        settings = {
            "precision": precision,
            "keep": None if keep is None else list(keep),
            "quantize_attention": quantize_attention,
            "backend": backend,
            "high_precision": high_precision,
            "calibration_method": calibration_method,
            "max_samples": max_samples,
            "min_coverage": min_coverage,
        }
        key = hashlib.sha256(
            json.dumps(
                {
                    "source": src_side.get("onnx_sha256") or sha256_file(src),
                    "calibration": sha256_file(cal_file),
                    "settings": settings,
                    "versions": _versions(),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        side_path = onnx_dir / f"{stem}.json"
        old = _read(side_path)
        if (
            not force
            and old.get("stage_key") == key
            and out.is_file()
            and out.stat().st_size == old.get("onnx_bytes")
        ):
            logger.info("%s is up to date; skipping", out.name)
            register_artifact(onnx_dir, _entry(old))
            results.append({"component": component, "file": out.name, "skipped": True, "sidecar": old})
            continue
        side_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for a new file
        res = quantize_onnx(
            src,
            out,
            cal_file,
            precision,
            component=component,
            keep=keep,
            quantize_attention=quantize_attention,
            backend=backend,
            high_precision=high_precision,
            calibration_method=calibration_method,
            max_samples=max_samples,
            min_coverage=min_coverage,
        )
        sidecar = _sidecar(out, src, src_side, src_entry, cal_file, key, res)
        atomic_write_json(side_path, sidecar)
        register_artifact(onnx_dir, _entry(sidecar))
        results.append({"component": component, "file": out.name, "skipped": False, "sidecar": sidecar})
    return results


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _entry(sidecar: dict[str, Any]) -> dict[str, Any]:
    return manifest_entry(sidecar)


def _sidecar(out: Path, src: Path, src_side, src_entry, cal_file: Path, key: str, res) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(out), load_external_data=False)
    opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), src_entry.get("opset")
    )
    data_files = sorted(
        {d.value for t in model.graph.initializer for d in t.external_data if d.key == "location"}
    )
    data_bytes = sum((out.parent / f).stat().st_size for f in data_files)
    onnx_bytes = out.stat().st_size
    src_total = int(src_side.get("total_bytes") or src.stat().st_size)
    return {
        "format": SIDECAR_FORMAT,
        "component": src_entry["component"],
        "attention_form": src_entry["attention_form"],
        "precision": res.precision,
        "opset": int(opset),
        "dry_run": False,
        "onnx_file": out.name,
        "onnx_bytes": onnx_bytes,
        "onnx_sha256": sha256_file(out),
        "external_data": data_files[0] if data_files else None,
        "external_data_bytes": data_bytes,
        "total_bytes": onnx_bytes + data_bytes,
        "source_sha256": src_side.get("source_sha256"),
        "spec": src_side.get("spec"),
        "attention": src_side.get("attention"),
        "stage_key": key,
        "quantization": {
            **res.settings,
            "source_onnx": src.name,
            "source_onnx_sha256": src_side.get("onnx_sha256"),
            "source_total_bytes": src_total,
            "size_ratio": round((onnx_bytes + data_bytes) / src_total, 4) if src_total else None,
            "calibration": {"file": str(cal_file), "sha256": sha256_file(cal_file)},
            "kept_nodes": res.plan.keep,
            "validation": res.report.to_dict(),
            "seconds": round(res.seconds, 2),
        },
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
