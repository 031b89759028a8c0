"""Engine plan naming, JSON sidecars, and the checks that refuse a plan that does not fit.

A plan is ``{component}.{precision}.{target}.{builder-version}.{hash}.plan`` (DESIGN §6), e.g.
``transformer-fold.fp16.sm89.trtrtx-1.7.1.116.3f2a9c0d1e4b.plan``:

- ``component``: ``transformer``, ``vae_encoder``, ``vae_decoder``, ``reference_encoder`` …
  optionally ``-variant`` (attention form) — no dots;
- ``precision``: ``fp32 bf16 fp16 fp8 int8`` (quantised precisions mean a Q/DQ ONNX);
- ``target``: ``sm89`` / ``sm86_sm89`` (compute capabilities the plan runs on), ``portable``
  (TensorRT-RTX default: every RTX-class GPU it supports) or ``ampereplus`` (TensorRT
  hardware-compatibility level);
- ``builder-version``: ``trt-10.3.0.26`` (TensorRT) or ``trtrtx-1.7.1.116`` (TensorRT-RTX);
- ``hash``: the first 12 hex digits of the ONNX sha256 (graph + external weights).

The sidecar ``<same stem>.json`` records everything needed to decide whether a plan may be
loaded: ONNX sha256, plan sha256, builder + version, target compute capabilities, profiles,
precision, flags and the ``unidg_rt`` version. :func:`check_plan` refuses anything else with an
:class:`~unidg_rt.errors.EngineMismatchError` whose message is the exact rebuild command.
Only plans with a sidecar whose plan hash matches are ever loaded ("only load plans you built").
This module needs neither TensorRT nor a GPU.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from unidg_rt.artifacts.io import atomic_write_json, sha256_file, update_sha256
from unidg_rt.errors import ConfigError, EngineMismatchError
from unidg_rt.vocab import PRECISIONS  # most precise first

MANIFEST_FORMAT = "unidg_rt.plan/1"
BUILDERS = {"tensorrt": "trt", "tensorrt-rtx": "trtrtx"}  # builder → file-name tag
HASH_CHARS = 12
#: TensorRT-RTX's portable default (no explicit target): docs "8.0, 8.6, 8.9, 12.0 and later";
#: used only when a sidecar did not record the builder's own list (older sidecars / fakes).
RTX_PORTABLE_FALLBACK = ("8.0", "8.6", "8.9", "12.0")
_PRECISION_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


# ------------------------------------------------------------------------------ small vocab
def normalize_precision(precision: Any) -> str:
    """``"FP16"``, ``"float16"``, an enum whose ``value``/``name`` is one of those → ``"fp16"``."""
    raw = getattr(precision, "value", None) or getattr(precision, "name", None) or precision
    p = str(raw).lower()
    p = _PRECISION_ALIASES.get(p, p)
    if p not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} unknown; use one of {', '.join(PRECISIONS)}")
    return p


def normalize_builder(builder: str) -> str:
    b = str(builder).lower().replace("_", "-")
    b = {"trt": "tensorrt", "trtrtx": "tensorrt-rtx", "rtx": "tensorrt-rtx"}.get(b, b)
    if b not in BUILDERS:
        raise ConfigError(f"builder={builder!r} unknown; use 'tensorrt' or 'tensorrt-rtx'")
    return b


def normalize_cc(cc: Any) -> str:
    """A compute capability as ``"M.m"``: ``8.9``, ``"8.9"``, ``"89"``, ``"sm89"``, ``"sm_120"``,
    ``(8, 9)`` → ``"8.9"`` / ``"12.0"``."""
    if isinstance(cc, tuple | list) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    s = str(cc).strip().lower().removeprefix("sm").lstrip("_")
    m = re.fullmatch(r"(\d+)\.(\d)", s)
    if m:
        return f"{int(m.group(1))}.{m.group(2)}"
    if re.fullmatch(r"\d{2,3}", s):
        return f"{int(s[:-1])}.{s[-1]}"
    raise ConfigError(
        f"compute capability {cc!r} not understood; write it like 8.9, 86 or sm120 "
        "(RTX 3090 = 8.6, RTX 4090 / L4 = 8.9, RTX 5090 = 12.0, Jetson Orin = 8.7, H100 = 9.0)"
    )


def cc_key(cc: str) -> tuple[int, ...]:
    """Numeric sort key of ``"M.m"`` (``"8.9"`` < ``"12.0"``)."""
    return tuple(int(x) for x in cc.split("."))


def cc_tag(cc: str) -> str:
    return "sm" + cc.replace(".", "")


def target_tag(ccs: list[str] | tuple[str, ...] | None, hardware_compat: str | None = None) -> str:
    """File-name tag of a build target (no dots)."""
    if hardware_compat:
        return hardware_compat.lower().replace("_", "").replace("+", "plus")
    if not ccs:
        return "portable"
    return "_".join(cc_tag(c) for c in sorted(set(ccs), key=cc_key))


def builder_tag(builder: str, version: str) -> str:
    return f"{BUILDERS[normalize_builder(builder)]}-{version}"


def plan_name(component: str, precision: str, target: str, builder: str, version: str, onnx_hash: str) -> str:
    if "." in component or not component:
        raise ConfigError(f"component {component!r} must be a non-empty name without dots")
    return (
        f"{component}.{normalize_precision(precision)}.{target}."
        f"{builder_tag(builder, version)}.{onnx_hash[:HASH_CHARS]}.plan"
    )


def parse_plan_name(path: str | Path) -> dict[str, str] | None:
    """Fields of a plan file name, or ``None`` when it does not follow the naming scheme."""
    name = Path(path).name
    parts = name.split(".")
    if len(parts) < 6 or parts[-1] not in ("plan", "engine"):
        return None
    component, precision, target, *version, digest, _ = parts
    builder_version = ".".join(version)
    tag, _, ver = builder_version.partition("-")
    builders = {v: k for k, v in BUILDERS.items()}
    if precision not in PRECISIONS or tag not in builders or not re.fullmatch(r"[0-9a-f]+", digest):
        return None
    return {
        "component": component,
        "precision": precision,
        "target": target,
        "builder": builders[tag],
        "builder_version": ver,
        "onnx_hash": digest,
    }


def sidecar_path(plan_path: str | Path) -> Path:
    return Path(plan_path).with_suffix(".json")


# ------------------------------------------------------------------------------ hashing
def onnx_external_files(onnx_path: str | Path) -> list[Path]:
    """External-data files an ONNX references (so weight changes change its hash)."""
    onnx_path = Path(onnx_path)
    siblings = [onnx_path.with_name(onnx_path.name + ".data"), onnx_path.with_suffix(".data")]
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no onnx package / unreadable file: the conventional sibling names
        return [p for p in siblings if p.exists()]
    names: set[str] = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in t.external_data if e.key == "location")
    return [onnx_path.parent / n for n in sorted(names)]


def onnx_sha256(onnx_path: str | Path) -> str:
    """sha256 over the ``.onnx`` bytes followed by every external-data file it references."""
    h = hashlib.sha256()
    update_sha256(h, onnx_path)
    for extra in onnx_external_files(onnx_path):
        h.update(b"\0" + extra.name.encode() + b"\0")
        update_sha256(h, extra)
    return h.hexdigest()


# ------------------------------------------------------------------------------ sidecar I/O
def write_manifest(plan_path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the sidecar beside the plan."""
    return atomic_write_json(sidecar_path(plan_path), manifest)


def read_manifest(plan_path: str | Path) -> dict[str, Any] | None:
    path = sidecar_path(plan_path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(f"{path} is not a readable sidecar ({exc})") from exc
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------ checks
def rebuild_command(
    manifest: dict[str, Any] | None, plan_path: str | Path, *, onnx_path=None, target=None
) -> str:
    """The exact ``unidg-rt build`` command that rebuilds this plan (optionally for ``target``)."""
    plan_path = Path(plan_path)
    m = manifest or {}
    fields = parse_plan_name(plan_path) or {}
    onnx = Path(onnx_path) if onnx_path else Path((m.get("onnx") or {}).get("path") or "ONNX_DIR/x.onnx")
    builder = m.get("builder") or fields.get("builder") or "tensorrt-rtx"
    precision = m.get("precision") or fields.get("precision") or "fp16"
    component = (
        m.get("component_tag") or m.get("component") or fields.get("component") or onnx.stem.split(".")[0]
    )
    if target is None:
        ccs = (m.get("target") or {}).get("compute_capabilities")
        target = list(ccs) if ccs else None
    targets = [target] if isinstance(target, str) else (target or [])
    parts = ["unidg-rt build", str(onnx.parent), f"--builder {builder}"]
    parts += [f"--target {t}" for t in targets]
    parts += [f"--precision {precision}", f"--component {component}", f"--out {plan_path.parent}"]
    return " ".join(parts)


def _refuse(reason: str, manifest, plan_path, **kw) -> EngineMismatchError:
    return EngineMismatchError(
        f"refusing engine {Path(plan_path).name}: {reason}. Rebuild it with:\n  "
        + rebuild_command(manifest, plan_path, **kw)
    )


def runs_on(manifest: dict[str, Any], device_cc: str) -> bool:
    """Whether a plan built for ``manifest['target']`` runs on a GPU of ``device_cc``."""
    t = manifest.get("target") or {}
    cc = normalize_cc(device_cc)
    ccs = t.get("compute_capabilities")
    if ccs:
        return cc in {normalize_cc(c) for c in ccs}
    if t.get("hardware_compatibility"):  # TensorRT AMPERE_PLUS: any sm ≥ 8.0 (not Jetson/DRIVE)
        return int(cc.split(".")[0]) >= 8 and cc != "8.7"
    if manifest.get("builder") == "tensorrt-rtx":  # portable default of TensorRT-RTX
        supported = t.get("builder_supported") or RTX_PORTABLE_FALLBACK
        portable = [c for c in supported if c != "7.5"]  # Turing needs an explicit target (RTX docs)
        newest = max(portable, key=cc_key)
        return cc in portable or int(cc.split(".")[0]) > int(newest.split(".")[0])
    return False


def check_plan(
    plan_path: str | Path,
    onnx_path: str | Path | None = None,
    device_cc: Any = None,
    builder_version: str | None = None,
    *,
    verify_plan_hash: bool = True,
) -> dict[str, Any]:
    """Return the sidecar manifest of ``plan_path`` if it may be loaded, else raise
    :class:`EngineMismatchError` naming the reason and the exact rebuild command.

    Checks: sidecar present and ours; plan bytes hash = sidecar (only plans we built);
    ``onnx_path`` (if given) hashes to the ONNX it was built from; ``device_cc`` (if given) is
    one of the plan's targets; ``builder_version`` (if given, the runtime's TensorRT /
    TensorRT-RTX version) equals the builder's (plans are not portable across versions unless
    built version-compatible)."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise EngineMismatchError(f"engine {plan_path} does not exist: build it with `unidg-rt build`")
    manifest = read_manifest(plan_path)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        raise _refuse(
            f"no unidg_rt sidecar {sidecar_path(plan_path).name} (only plans built by unidg_rt are loaded)",
            manifest,
            plan_path,
            onnx_path=onnx_path,
        )
    plan_meta = manifest.get("plan") or {}
    size = plan_path.stat().st_size
    if plan_meta.get("bytes") is not None and plan_meta["bytes"] != size:
        raise _refuse(
            f"plan is {size} bytes but the sidecar recorded {plan_meta['bytes']} (file replaced or truncated)",
            manifest,
            plan_path,
            onnx_path=onnx_path,
        )
    if verify_plan_hash and sha256_file(plan_path) != plan_meta.get("sha256"):
        raise _refuse(
            "plan sha256 does not match its sidecar (not the plan unidg_rt built)",
            manifest,
            plan_path,
            onnx_path=onnx_path,
        )
    fields = parse_plan_name(plan_path)
    if fields is not None and not manifest["onnx"]["sha256"].startswith(fields["onnx_hash"]):
        raise _refuse("file name hash and sidecar ONNX hash differ (renamed plan)", manifest, plan_path)
    if onnx_path is not None:
        digest = onnx_sha256(onnx_path)
        if digest != manifest["onnx"]["sha256"]:
            raise _refuse(
                f"built from ONNX sha256 {manifest['onnx']['sha256'][:HASH_CHARS]}…, but {Path(onnx_path).name} "
                f"is now {digest[:HASH_CHARS]}… (the model or its export changed)",
                manifest,
                plan_path,
                onnx_path=onnx_path,
            )
    if device_cc is not None:
        cc = normalize_cc(device_cc)
        if not runs_on(manifest, cc):
            built = (
                target_tag(manifest["target"].get("compute_capabilities")) if manifest.get("target") else "?"
            )
            reason = f"built for {built}, this GPU is {cc_tag(cc)}"
            supported = (manifest.get("target") or {}).get("builder_supported")
            if manifest.get("builder") == "tensorrt-rtx" and supported and cc not in supported:
                raise EngineMismatchError(
                    f"refusing engine {plan_path.name}: {reason}, which TensorRT-RTX does not support "
                    f"(its targets: {', '.join(supported)}). Build with full TensorRT on that GPU:\n  "
                    + rebuild_command(
                        {**manifest, "builder": "tensorrt"}, plan_path, onnx_path=onnx_path, target=[]
                    )
                )
            raise _refuse(reason, manifest, plan_path, onnx_path=onnx_path, target=cc)
    if builder_version is not None and str(builder_version) != manifest.get("builder_version"):
        raise _refuse(
            f"built by {manifest['builder']} {manifest.get('builder_version')}, the runtime is {builder_version}",
            manifest,
            plan_path,
            onnx_path=onnx_path,
        )
    return manifest


def find_plans(folder: str | Path) -> list[Path]:
    """Plans (with or without sidecar) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix in (".plan", ".engine") and p.is_file())


def inspect_plan(path: str | Path) -> dict[str, Any]:
    """What a plan file is: name fields, sidecar manifest, integrity (``unidg-rt inspect x.plan``).
    Needs neither TensorRT nor a GPU; never raises for a foreign plan, it says so instead."""
    path = Path(path)
    info: dict[str, Any] = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "name_fields": parse_plan_name(path),
    }
    try:
        manifest = read_manifest(path)
    except EngineMismatchError as exc:
        manifest, info["sidecar_error"] = None, str(exc)
    if manifest is None:
        info["manifest"] = None
        info["status"] = (
            f"no unidg_rt sidecar ({sidecar_path(path).name}): unidg_rt will refuse to load this plan; "
            "rebuild it with `unidg-rt build`"
        )
        return info
    info["manifest"] = manifest
    try:
        check_plan(path)
        info["status"] = "ok: sidecar present, plan hash matches"
    except EngineMismatchError as exc:
        info["status"] = str(exc)
    return info
