"""What a build starts from: the ONNX file, the exporter's sidecar, and the IOSpec profiles.

:func:`profiles_from_spec` is the one adapter between :mod:`unidg_rt.export.spec` and the
builders: ``IOSpec.profile_shapes(size_range)`` → ``{input: (min, opt, max)}``;
:func:`normalize_profiles` validates any such dict (or a list of them, one per optimization
profile). Needs neither TensorRT nor torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unidg_rt.artifacts import plan as mf
from unidg_rt.artifacts.adapters import artifact_adapters
from unidg_rt.artifacts.onnx_folder import MANIFEST_NAME
from unidg_rt.errors import ConfigError

_ONNX_DTYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


# ------------------------------------------------------------------------------ profiles
def normalize_profiles(profiles: Any) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """The adapter between the export IOSpec and the builder: ``{name: (min, opt, max)}``,
    ``{name: {"min":…, "opt":…, "max":…}}`` or a list of such dicts (one per optimization
    profile) → list of ``{name: (min, opt, max)}`` with int tuples. ``None``/``{}`` → ``[]``."""
    if not profiles:
        return []
    if isinstance(profiles, dict):
        profiles = [profiles]
    out = []
    for i, prof in enumerate(profiles):
        norm = {}
        for name, shapes in dict(prof).items():
            if isinstance(shapes, dict):
                shapes = (shapes["min"], shapes["opt"], shapes["max"])
            if len(shapes) != 3:
                raise ConfigError(f"profile {i} input {name!r}: give (min, opt, max) shapes, got {shapes!r}")
            mn, opt, mx = (tuple(int(d) for d in s) for s in shapes)
            if not (len(mn) == len(opt) == len(mx)) or any(
                not a <= b <= c for a, b, c in zip(mn, opt, mx, strict=True)
            ):
                raise ConfigError(
                    f"profile {i} input {name!r}: need min ≤ opt ≤ max per dim, got {mn} {opt} {mx}"
                )
            norm[name] = (mn, opt, mx)
        out.append(norm)
    return out


# ------------------------------------------------------------------------------ ONNX facts
def onnx_precision(onnx_path: Path) -> dict[str, Any] | None:
    """Dominant float type of the initializers (by bytes) and whether Q/DQ nodes exist."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes: dict[str, int] = {}
    for t in model.graph.initializer:
        name = _ONNX_DTYPES.get(t.data_type)
        if name:
            n = 1
            for d in t.dims:
                n *= d
            sizes[name] = sizes.get(name, 0) + n
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return {"float": max(sizes, key=sizes.get) if sizes else None, "qdq": qdq}


def check_onnx_precision(onnx_path: Path, precision: str, strongly_typed: bool) -> None:
    if not strongly_typed:
        return
    facts = onnx_precision(onnx_path)
    if facts is None:
        return
    if precision in ("int8", "fp8") and not facts["qdq"]:
        raise ConfigError(
            f"precision={precision} needs a Q/DQ ONNX; {onnx_path.name} has no QuantizeLinear nodes"
        )
    if precision in ("fp32", "fp16", "bf16") and facts["float"] not in (None, precision):
        raise ConfigError(
            f"{onnx_path.name} holds {facts['float']} weights but precision={precision}: a strongly typed build "
            f"takes types from the ONNX, so export it with --precision {precision} (or pass strongly_typed=False "
            "on full TensorRT to let the builder cast)"
        )


def onnx_sidecar(onnx_path: Path) -> dict[str, Any] | None:
    """The exporter's JSON beside ``{component}.{form}.{precision}.onnx`` (``unidg_rt.export.onnx``)."""
    import json

    path = onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def component_from_path(onnx_path: Path) -> str:
    """Engine component tag: ``transformer.fold.fp16.onnx`` → ``transformer-fold``,
    ``vae_decoder.default.fp16.onnx`` → ``vae_decoder`` (the exporter's sidecar wins if present)."""
    side = onnx_sidecar(onnx_path) or {}
    if side.get("component"):
        form = side.get("attention_form")
        return side["component"] if form in (None, "default") else f"{side['component']}-{form}"
    drop = set(mf.PRECISIONS) | {"default"}
    parts = [p for p in onnx_path.name.removesuffix(".onnx").split(".") if p not in drop]
    return "-".join(parts) or "model"


# ------------------------------------------------------------------------------ IOSpec adapter
def spec_from_dict(data: dict[str, Any]):
    """Rebuild an :class:`unidg_rt.export.spec.IOSpec` from ``IOSpec.to_dict()`` (the exporter's
    sidecar ``spec``) — enough for profiles and buffer shapes (sample-value kinds are not kept)."""
    from unidg_rt.export.spec import IOSpec, TensorSpec

    def tensors(items):
        return tuple(
            TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), doc=t.get("doc", "")) for t in items
        )

    return IOSpec(
        data["component"],
        tensors(data["inputs"]),
        tensors(data["outputs"]),
        {k: {d: tuple(v) for d, v in p.items()} for k, p in data.get("profiles", {}).items()},
        dict(data.get("derived", {})),
        dict(data.get("attrs", {})),
    )


def profiles_from_spec(spec, size_range: str | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """THE adapter from the export IOSpec to engine profiles: ``{input: (min, opt, max)}`` of one
    size range (``IOSpec.profiles`` key; ``None`` = its first). Accepts an IOSpec or its dict."""
    if isinstance(spec, dict):
        spec = spec_from_dict(spec)
    return spec.profile_shapes(size_range)


def pipeline_facts(onnx_path: Path) -> dict[str, Any]:
    """Pipeline facts of the exported folder (``unidg_onnx.json``: text length, widths, latent
    channels, VAE scale, guidance + the checkpoint defaults and the export's adapters), plus
    ``carried_adapters``: the adapters this graph carries (its sidecar's spec), in
    ``adapter_scales`` order — stored in the plan sidecar so ``from_engines`` needs nothing but the
    plan folder. ``{}`` when there is no such manifest."""
    import json

    path = onnx_path.parent / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("pipeline"), dict):
        return {}
    try:
        sidecar = json.loads(onnx_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        sidecar = {}
    facts = {
        **data["pipeline"],
        "defaults": data.get("defaults") or {},
        "adapters": data.get("adapters") or {},
    }
    facts["carried_adapters"] = artifact_adapters(sidecar) if isinstance(sidecar, dict) else []
    return facts
