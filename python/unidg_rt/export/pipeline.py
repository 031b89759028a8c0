"""Export everything ``UniDGPipeline.from_onnx`` needs, plus the ``unidg_onnx.json`` manifest.

The ONNX folder is self-describing: the manifest carries the pipeline's architecture facts
(text length, embedding widths, latent channels, VAE scale, guidance), the checkpoint's
defaults, every exported artifact (component, attention form, precision, file) and the default
form/precision to run. ``embeddings.safetensors`` beside the checkpoint is copied along.

Stages are skipped when their inputs did not change (same weights sha256, spec, form, precision,
opset and library versions) — then the checkpoint is not even loaded.

**Reference encoder.** When the checkpoint's card ``defaults`` name one
(``"reference_encoder": {"file": "reference_encoder.safetensors"}``, the file beside the
checkpoint; :mod:`unidg_rt.models.refenc`), the ``reference_encoder`` component (in
:data:`PIPELINE_COMPONENTS`) is exported too; a checkpoint without one exports exactly as before.
Its stage key is over the checkpoint's *and* the encoder file's sha256 (the sidecar's
``source_sha256`` is ``sha256("{checkpoint}:{encoder}")``), so a retrained encoder beside
unchanged weights is re-exported. Precision: it follows the VAE (``vae_precision``, default
``precision``: fp32 / fp16 / bf16), so a ``--precision fp16`` folder builds every engine at fp16.
It is never quantised (``unidg-rt quantize`` covers transformer and VAE only): an int8/fp8 run
uses its most precise export, as it does for the VAE.

**Adapters.** Every LoRA the card ``defaults["adapters"]`` names (its file beside the checkpoint)
and every extra ``loras`` entry is carried in the transformer graph as a low-rank branch of its
target linears, run by the same hooks as the torch backend (time gate ``k(t)`` computed from
``timestep`` in-graph), with the strengths as the input ``adapter_scales [A]``
(:mod:`unidg_rt.artifacts.adapters`). The transformer's stage key covers each adapter's name and
file sha256; the manifest records them (``manifest["adapters"]``) and each transformer artifact
lists the ones it carries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unidg_rt.artifacts.adapters import card_adapter_strengths
from unidg_rt.artifacts.card import Defaults
from unidg_rt.artifacts.io import atomic_write_json, sha256_file
from unidg_rt.artifacts.onnx_folder import MANIFEST_FORMAT, MANIFEST_NAME, manifest_entry
from unidg_rt.errors import ConfigError, WeightsError
from unidg_rt.export.forms import EXPORT_FORMS, ORT_RUNNABLE_FORMS
from unidg_rt.export.onnx import (
    PRECISIONS,
    ExportResult,
    artifact_stem,
    export_component,
    resolve_form_and_opset,
    stage_key,
    up_to_date,
)
from unidg_rt.export.spec import GenerationRange, IOSpec, component_spec, with_adapters
from unidg_rt.models.config import FluxConfig, pipeline_facts

logger = logging.getLogger(__name__)

#: ``reference_encoder`` only where the checkpoint has one (silently dropped otherwise)
PIPELINE_COMPONENTS = ("transformer", "vae_encoder", "vae_decoder", "reference_encoder")
#: default form to run when several were exported (no N×N first; benchmarks may reorder)
FORM_PREFERENCE = ("fold", "attention_op", "decomposed", "plugin")


def _read_configs(path: Path) -> tuple[FluxConfig, dict[str, Any] | None, Defaults]:
    """Architecture configs and the card's defaults without loading any weights."""
    from unidg_rt.models.loading import read_card

    if path.is_file():
        card = read_card(path)
        if card is None:
            raise WeightsError(
                f"{path} carries no 'unidg_rt' metadata: export needs a UniDG checkpoint or a diffusers folder"
            )
        return card.transformer, card.vae, Defaults.from_dict(card.defaults)
    tdir = path / "transformer" if (path / "transformer").is_dir() else path
    cfg_file = tdir / "config.json"
    if not cfg_file.is_file():
        raise WeightsError(
            f"{path}: no transformer/config.json; pass a UniDG checkpoint or a diffusers folder"
        )
    vae_file = path / "vae" / "config.json"
    vae = json.loads(vae_file.read_text()) if vae_file.is_file() else None
    return FluxConfig.from_dict(json.loads(cfg_file.read_text())), vae, Defaults()


def _source_sha256(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")):
        h.update(f"{f.relative_to(path)}:{sha256_file(f)};".encode())
    return h.hexdigest()


def reference_encoder_source(path: Path, defaults: Defaults) -> tuple[Path, dict[str, Any]] | None:
    """``(file, config)`` of the reference encoder the card defaults name (beside the checkpoint),
    ``None`` when they name none. Reads the config from the file's metadata, not its weights."""
    from unidg_rt.models.refenc import read_reference_encoder_config

    entry = defaults.reference_encoder
    if not entry:
        return None
    name = entry.get("file") if isinstance(entry, dict) else None
    if not name:
        raise WeightsError(f"{path}: card defaults 'reference_encoder'={entry!r} has no 'file'")
    file = (path if path.is_dir() else path.parent) / name
    if not file.is_file():
        raise WeightsError(
            f"{path} names reference encoder {name!r} but {file} does not exist: copy it beside the checkpoint"
        )
    return file, dataclasses.asdict(read_reference_encoder_config(file))


def adapter_sources(path: Path, defaults: Defaults, loras=()) -> dict[str, dict[str, Any]]:
    """``{name: {"file", "sha256", "strength", "source"}}`` of the adapters an export carries: the
    card's (files beside the checkpoint) then ``loras`` (``(file, name, strength)`` each)."""
    base = path if path.is_dir() else path.parent
    out: dict[str, dict[str, Any]] = {}
    card = defaults.adapters
    entries = [
        (base / (card[n] or {}).get("file", ""), n, s, "card")
        for n, s in card_adapter_strengths(defaults.raw).items()
    ]
    for i, item in enumerate(loras):
        file, name, strength = (*item, None, None)[:3]
        strength = 1.0 if strength is None else strength
        entries.append((Path(file), name or Path(file).stem, float(strength), "lora"))
        if not Path(file).is_file():
            raise WeightsError(f"loras[{i}]={str(file)!r} does not exist: pass a LoRA .safetensors file")
    for file, name, strength, source in entries:
        if name in out:
            raise ConfigError(f"adapter name {name!r} is used twice; give each LoRA its own name (NAME=PATH)")
        if source == "card" and not file.is_file():
            raise WeightsError(
                f"{path} names adapter {name!r} but {file} does not exist: copy it beside the checkpoint"
            )
        out[name] = {"file": str(file), "sha256": sha256_file(file), "strength": strength, "source": source}
    return out


def pipeline_specs(config: FluxConfig, vae_config, ranges, ref_config=None, adapters=()) -> dict[str, IOSpec]:
    specs = {
        "transformer": with_adapters(component_spec("transformer", config, ranges), adapters),
        "vae_encoder": component_spec("vae_encoder", vae_config or {}, ranges),
        "vae_decoder": component_spec("vae_decoder", vae_config or {}, ranges),
    }
    if ref_config is not None:
        specs["reference_encoder"] = component_spec("reference_encoder", ref_config, ranges)
    return specs


def export_pipeline(
    checkpoint_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    forms: Sequence[str] = ("fold",),
    precision: str = "fp32",
    *,
    components: Sequence[str] = PIPELINE_COMPONENTS,
    vae_precision: str | None = None,
    opset: int | None = None,
    ranges: GenerationRange | dict[str, GenerationRange] | None = None,
    external_data: bool | None = None,
    force: bool = False,
    loras: Sequence[tuple] = (),
) -> dict[str, Any]:
    """Export the transformer (one file per attention form) with its adapters, the VAE
    encoder/decoder and, when the checkpoint has one, its reference encoder (``None`` = the
    embedded default model) into ``out_dir`` and write the manifest. ``loras``: extra LoRA files
    to carry, ``(file, name, strength)`` each (name and strength optional). Returns the manifest;
    ``manifest["results"]`` lists what was exported or skipped."""
    from unidg_rt.artifacts.assets import default_model_path

    path = Path(checkpoint_path) if checkpoint_path is not None else default_model_path()
    if not path.exists():
        raise WeightsError(
            f"checkpoint {path} does not exist: pass a UniDG .safetensors or a diffusers folder"
        )
    out_dir = (
        Path(out_dir)
        if out_dir is not None
        else Path("export/out") / (path.stem if path.is_file() else path.name)
    )
    bad = [c for c in components if c not in PIPELINE_COMPONENTS]
    if bad or not components:
        raise ConfigError(f"components={list(components)}: choose from {PIPELINE_COMPONENTS}")
    bad = [f for f in forms if f not in EXPORT_FORMS]
    if bad or not forms:
        raise ConfigError(f"forms={list(forms)}: choose one or more of {EXPORT_FORMS}")
    for p in (precision, vae_precision or precision):
        if p not in PRECISIONS:
            raise ConfigError(f"precision={p!r} unknown; choose one of {sorted(PRECISIONS)}")
    vae_precision = vae_precision or precision

    config, vae_config, defaults = _read_configs(path)
    ref = reference_encoder_source(path, defaults)
    if ref is None and "reference_encoder" in components:
        components = [c for c in components if c != "reference_encoder"]
        if not components:
            raise ConfigError(f"components=['reference_encoder']: {path} names no reference encoder")
    ranges = ranges or {"default": GenerationRange.around(defaults.height, defaults.text_seq_len)}
    adapters = adapter_sources(path, defaults, loras)
    specs = pipeline_specs(config, vae_config, ranges, ref[1] if ref else None, tuple(adapters))
    source = _source_sha256(path)
    sources = {c: source for c in specs}
    if adapters:  # keyed on the checkpoint and each adapter's name and file
        tags = ";".join(f"{n}:{a['sha256']}" for n, a in adapters.items())
        sources["transformer"] = hashlib.sha256(f"{source};{tags}".encode()).hexdigest()
    if ref is not None:  # keyed on the checkpoint and the encoder file
        sources["reference_encoder"] = hashlib.sha256(f"{source}:{sha256_file(ref[0])}".encode()).hexdigest()
    jobs = [("transformer", f, precision) for f in forms if "transformer" in components]
    jobs += [(c, None, vae_precision) for c in components if c != "transformer"]

    models: dict[str, Any] = {}
    results: list[ExportResult] = []
    for component, form, prec in jobs:
        spec = specs[component]
        form_name, op = resolve_form_and_opset(component, form, opset)
        stem = artifact_stem(component, form_name, prec)
        if not force and up_to_date(
            out_dir, stem, stage_key(spec, form_name, prec, op, sources[component], False, external_data)
        ):
            logger.info("%s.onnx is up to date; skipping", stem)
            results.append(ExportResult(component, out_dir / f"{stem}.onnx", out_dir / f"{stem}.json", True))
            continue
        model = _load(models, component, ref[0] if component == "reference_encoder" else path, prec, adapters)
        results.append(
            export_component(
                component,
                model,
                spec,
                out_dir,
                prec,
                form,
                opset,
                source_sha256=sources[component],
                external_data=external_data,
                force=force,
            )
        )

    embeddings = _copy_embeddings(path, out_dir)
    manifest = _write_manifest(
        out_dir, path, sources, config, vae_config, defaults, specs, forms, precision, embeddings, adapters
    )
    manifest["results"] = [
        {"component": r.component, "file": r.path.name, "skipped": r.skipped} for r in results
    ]
    return manifest


def _load(cache: dict[str, Any], component: str, path: Path, precision: str, adapters=None):
    """Load the transformer (wrapped with its ``adapters`` as branches) / VAE / reference encoder
    (``path``: its own file) once per precision (the VAE encoder and decoder share the VAE)."""
    from unidg_rt.export.wrappers import TransformerExport
    from unidg_rt.models.adapters import AdapterManager
    from unidg_rt.models.loading import load_transformer, load_vae
    from unidg_rt.models.refenc import load_reference_encoder

    kind = "vae" if component.startswith("vae_") else component
    key = f"{kind}.{precision}"
    if key not in cache:
        dtype = PRECISIONS[precision]
        if kind == "transformer":
            model = load_transformer(path, dtype=dtype)
            manager = AdapterManager(model)
            for name, a in (adapters or {}).items():
                manager.load_lora(a["file"], name, strength=a["strength"])
            cache[key] = TransformerExport(model, manager if adapters else None).eval().requires_grad_(False)
        elif kind == "vae":
            cache[key] = load_vae(path, dtype=dtype)
        else:
            cache[key] = load_reference_encoder(path).to(dtype)
    return cache[key]


def _copy_embeddings(path: Path, out_dir: Path) -> str | None:
    src = (path if path.is_dir() else path.parent) / "embeddings.safetensors"
    dst = out_dir / "embeddings.safetensors"
    if src.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        if not dst.is_file() or sha256_file(dst) != sha256_file(src):
            shutil.copyfile(src, dst)
    return dst.name if dst.is_file() else None


def _write_manifest(
    out_dir, path, sources, config, vae_config, defaults, specs, forms, precision, embeddings, adapters
):
    """Merge what is on disk into ``unidg_onnx.json`` (artifacts of earlier exports are kept
    when they came from the same weights: ``sources`` per component)."""
    from unidg_rt.export.onnx import read_sidecar

    source = sources["transformer"]
    artifacts = []
    for sidecar in sorted(out_dir.glob("*.json")):
        info = read_sidecar(sidecar)
        if not info or info.get("format") != "unidg-onnx-artifact/1":
            continue
        if info.get("source_sha256") != sources.get(info.get("component"), source):
            continue
        if info.get("dry_run") or not (out_dir / info["onnx_file"]).is_file():
            continue
        artifacts.append(manifest_entry(info))
    exported_forms = [a["attention_form"] for a in artifacts if a["component"] == "transformer"]
    runnable = [f for f in FORM_PREFERENCE if f in exported_forms and f in ORT_RUNNABLE_FORMS]
    runnable = [f for f in runnable if f in forms] or runnable
    facts = pipeline_facts(config, specs["vae_decoder"].attrs["downsample_factor"], defaults)
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {"path": str(path), "sha256": source},
        "pipeline": facts.to_dict(),
        "defaults": defaults.to_dict(),
        "transformer_config": config.to_dict(),
        "vae_config": vae_config,
        "attention_form": runnable[0] if runnable else (exported_forms[0] if exported_forms else None),
        "precision": precision,
        "artifacts": artifacts,
        "embeddings": embeddings,
        "adapters": {n: {k: v for k, v in a.items() if k != "file"} for n, a in adapters.items()},
        "profiles": {name: spec.to_dict()["profiles"] for name, spec in specs.items()},
    }
    if "reference_encoder" in specs:  # absent without one: such manifests stay as they were
        manifest["reference_encoder"] = dict(specs["reference_encoder"].attrs)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest
