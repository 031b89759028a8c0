"""A folder of plans (``unidg-rt build --out``): which plan serves each role of a pipeline.

:func:`select_plans` picks, per role, the plan whose sidecar fits this GPU and the installed
TensorRT / TensorRT-RTX (:func:`unidg_rt.artifacts.plan.check_plan`), preferring the folded
attention form; :func:`reference_image_size` reads a reference-encoder plan's crop side. Needs
neither TensorRT nor a GPU (tested on CPU). json only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unidg_rt.artifacts import plan as mf
from unidg_rt.errors import InvalidInputError

logger = logging.getLogger(__name__)

ROLES = ("transformer", "vae_encoder", "vae_decoder")
#: roles used when a plan exists (the checkpoint's reference encoder, :mod:`unidg_rt.models.refenc`)
OPTIONAL_ROLES = ("reference_encoder",)
#: transformer variants preferred when several plans fit: folding keeps the fused MHA mask-free
VARIANT_PREFERENCE = ("fold", "attention_op", "decomposed", "reference", "plugin")


def select_plans(
    engines_dir: str | Path,
    device_cc: str | None,
    *,
    precision: str | None = None,
    variant: str | None = None,
    runtime_versions: dict[str, str] | None = None,
    verify_hash: bool = True,
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Pick one plan per role (transformer, vae_encoder, vae_decoder; reference_encoder where the
    folder has one) that :func:`check_plan` accepts for ``device_cc``; raise the refusal (with its
    rebuild command) when none does. Needs neither TensorRT nor a GPU (tested on CPU)."""
    engines_dir = Path(engines_dir)
    if not engines_dir.is_dir():
        raise InvalidInputError(
            f"engines_dir {engines_dir} is not a folder: build engines with `unidg-rt build`"
        )
    plans = mf.find_plans(engines_dir)
    candidates: dict[str, list[tuple[Path, dict]]] = {r: [] for r in (*ROLES, *OPTIONAL_ROLES)}
    foreign = []
    for p in plans:
        m = mf.read_manifest(p)
        if m is None or m.get("format") != mf.MANIFEST_FORMAT:
            foreign.append(p.name)
            continue
        if m.get("component") in candidates and (
            precision is None or m.get("precision") == mf.normalize_precision(precision)
        ):
            tag = m.get("component_tag", m["component"])
            if variant is None or m["component"] != "transformer" or tag == f"transformer-{variant}":
                candidates[m["component"]].append((p, m))
    if foreign:
        logger.warning("ignoring plans without a unidg_rt sidecar (not built here): %s", ", ".join(foreign))
    chosen = {}
    for role, cands in candidates.items():
        if not cands and role in OPTIONAL_ROLES:
            continue
        if not cands:
            raise InvalidInputError(
                f"no {role} plan in {engines_dir}"
                + (f" with precision {precision}" if precision else "")
                + (f" and variant {variant}" if variant and role == "transformer" else "")
                + ": build it with `unidg-rt build ONNX_DIR --out "
                + str(engines_dir)
                + "`"
            )

        def rank(item):
            _, m = item
            tag = m.get("component_tag", "")
            form = tag.split("-", 1)[1] if "-" in tag else ""
            fits = device_cc is None or mf.runs_on(m, device_cc)
            pref = VARIANT_PREFERENCE.index(form) if form in VARIANT_PREFERENCE else len(VARIANT_PREFERENCE)
            return (not fits, pref, m.get("precision") != "fp16")

        path, m = sorted(cands, key=rank)[0]
        version = (runtime_versions or {}).get(m["builder"])
        chosen[role] = (
            path,
            mf.check_plan(path, device_cc=device_cc, builder_version=version, verify_plan_hash=verify_hash),
        )
    return chosen


def reference_image_size(manifest: dict[str, Any]) -> int:
    """The static crop side ``S`` of a reference-encoder plan: its ``images [B, 3, S, S]`` input as
    the build recorded it (else the exporter's spec attrs)."""
    for t in (manifest.get("io") or {}).get("inputs", []):
        if t["name"] == "images" and int(t["shape"][-1]) > 0:
            return int(t["shape"][-1])
    return int(((manifest.get("metadata") or {}).get("spec_attrs") or {})["image_size"])
