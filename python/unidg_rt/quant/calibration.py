"""Calibration capture (issue 7): run the real pipeline on a manifest of cases and record the
exact transformer / VAE inputs at chosen step indices into ``.npz`` files keyed by input name.

Manifest (JSON; ``calibration/NAME.json``, read by name: ``load_manifest("default")`` is what
``unidg-rt calibrate`` uses without ``--manifest``): ``num_inference_steps``, ``capture_steps``,
``cases`` — real cases, each ``image``, ``mask`` and either ``reference`` + ``reference_mask``
(reference mode) or ``category`` (text mode), optional ``seed`` and ``name``; paths are relative
to the manifest, or ``unidg_rt:PATH`` inside the installed package (the bundled samples:
``unidg_rt:assets/samples/target.png``) — and a procedural part drawn after them (seeded):
``num_cases`` cases over ``categories`` at ``image_size`` px, ``text_mode_fraction`` of them in
text mode, from ``seed``.

Output: ``{component}.npz`` with one array per input name, stacked over samples along a new
leading axis (``[S, ...]``; sample ``i`` of every array belongs together), plus
``calibration.json`` (manifest, case list, counts). The pipeline is never modified: its runners
are wrapped by recorders for the duration of the capture.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import InvalidInputError

logger = logging.getLogger(__name__)


#: the manifest ``unidg-rt calibrate`` uses without ``--manifest`` (``calibration/default.json``)
DEFAULT_MANIFEST = "default"
#: keys of one explicit case
CASE_KEYS = ("name", "image", "mask", "reference", "reference_mask", "category", "seed")
#: prefix of a case path inside the installed package
PACKAGE_PREFIX = "unidg_rt:"


def load_manifest(path: str | Path = DEFAULT_MANIFEST) -> dict[str, Any]:
    """A manifest by path, or by name from the ``calibration/`` stage folder
    (:func:`unidg_rt.artifacts.profiles.find`: unknown names list the available ones)."""
    from unidg_rt.artifacts.profiles import find, looks_like_path

    if isinstance(path, str) and not looks_like_path(path, ".json"):
        path = find("calibration", path, what="manifest")
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"calibration manifest {path} does not exist: pass a manifest file or a name in calibration/ "
            "(default: calibration/default.json)"
        )
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"calibration manifest {path} is not valid JSON: {exc}") from exc
    m.setdefault("seed", 0)
    m.setdefault("num_cases", 8)
    m.setdefault("capture_steps", [0])
    m.setdefault("cases", [])
    m["_dir"], m["_path"] = str(path.parent), str(path)
    return m


def case_path(base: Path, value: str) -> Path:
    """A case's file: ``unidg_rt:PATH`` inside the installed package, else relative to ``base``."""
    if value.startswith(PACKAGE_PREFIX):
        from unidg_rt.artifacts.assets import assets_dir

        return assets_dir().parent / value.removeprefix(PACKAGE_PREFIX)
    return base / value


def _explicit_case(base: Path, i: int, c: dict[str, Any], default_seed: int) -> dict[str, Any]:
    from unidg_rt.data import load_image, load_mask

    label = f"calibration case {i}" + (f" ({c['name']})" if "name" in c else "")
    unknown = sorted(set(c) - set(CASE_KEYS))
    if unknown:
        raise InvalidInputError(f"{label}: unknown key(s) {unknown}; allowed: {', '.join(CASE_KEYS)}")
    missing = [k for k in ("image", "mask") if k not in c]
    if ("reference" in c) != ("reference_mask" in c):
        missing.append("reference_mask" if "reference" in c else "reference")
    if missing or ("reference" not in c and "category" not in c):
        raise InvalidInputError(
            f"{label} lacks {missing or ['reference', 'category']}: give 'image' and 'mask' paths and either "
            "'reference' + 'reference_mask' (reference mode) or 'category' (text mode)"
        )

    def read(key: str, loader):
        path = case_path(base, str(c[key]))
        if not path.is_file():
            raise InvalidInputError(
                f"{label}: {key} {path} does not exist (paths are relative to the manifest)"
            )
        return loader(path)

    kw = {"image": read("image", load_image), "mask_image": read("mask", load_mask)}
    if "reference" in c:
        kw["reference_image"] = read("reference", load_image)
        kw["reference_mask"] = read("reference_mask", load_mask)
    else:
        kw["defect_category"] = c["category"]
    return {**kw, "seed": int(c.get("seed", default_seed))}


def build_cases(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Pipeline kwargs per case (images as arrays), explicit cases first, then procedural."""
    from unidg_rt.data import make_reference_pair

    base = Path(manifest.get("_dir", "."))
    cases = [
        _explicit_case(base, i, c, manifest["seed"] + i) for i, c in enumerate(manifest.get("cases", []))
    ]
    rng = np.random.default_rng(manifest["seed"])
    cats = manifest.get("categories") or ["scratch"]
    size = int(manifest.get("image_size", 192))
    for i in range(int(manifest["num_cases"])):
        seed = int(manifest["seed"]) + 1000 * i
        cat = cats[i % len(cats)]
        pair = make_reference_pair(seed, cat, size=size)
        kw = {"image": pair.target_image, "mask_image": pair.target_mask, "seed": seed}
        if rng.random() < float(manifest.get("text_mode_fraction", 0.0)):
            kw["defect_category"] = cat.replace(" ", "_")
        else:
            kw["reference_image"], kw["reference_mask"] = pair.reference_image, pair.reference_mask
        cases.append(kw)
    return cases


def _reference_for(seed: int, category: str, size: int):
    from unidg_rt.data import make_reference_pair

    return make_reference_pair(seed, category.replace("_", " "), size=size)


class _Recorder:
    """Wraps a runner; stores feeds (as numpy) when the pipeline's current step is selected."""

    def __init__(self, runner, backend, steps: set[int] | None):
        self.runner, self.backend, self.steps = runner, backend, steps
        self.input_names = runner.input_names
        self.step = 0
        self.samples: list[dict[str, np.ndarray]] = []

    def infer(self, feed):
        if self.steps is None or self.step in self.steps:
            sample = {k: self.backend.to_numpy(v) for k, v in feed.items() if v is not None}
            adapters = getattr(self.runner, "adapters", None)  # graph-carried LoRA: this step's strengths
            if adapters and "adapter_scales" not in sample:
                sample["adapter_scales"] = adapters.array()
            self.samples.append(sample)
        return self.runner.infer(feed)


def _stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = samples[0].keys()
    out = {}
    for k in keys:
        shapes = {s[k].shape for s in samples}
        if len(shapes) != 1:
            raise InvalidInputError(
                f"calibration input {k!r} changes shape across cases {sorted(shapes)}: use one generation size"
            )
        out[k] = np.stack([s[k] for s in samples])
    return out


def capture(pipeline, manifest: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Run every case; write ``transformer.npz``, ``vae_encoder.npz``, ``vae_decoder.npz``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    be = pipeline.backend
    rec = {
        "transformer": _Recorder(be.transformer, be, set(int(s) for s in manifest["capture_steps"])),
        "vae_encoder": _Recorder(be.vae_encoder, be, None),
        "vae_decoder": _Recorder(be.vae_decoder, be, None),
    }
    originals = (be.transformer, be.vae_encoder, be.vae_decoder)
    be.transformer, be.vae_encoder, be.vae_decoder = (
        rec["transformer"],
        rec["vae_encoder"],
        rec["vae_decoder"],
    )

    def on_step(_pipe, i, _t, kwargs):
        rec["transformer"].step = i + 1
        return kwargs

    cases = build_cases(manifest)
    for case in cases:  # a category the model has no embeddings for is captured in reference mode
        cat = case.get("defect_category")
        if cat is not None and (pipeline.embeddings is None or cat not in pipeline.embeddings):
            logger.warning("calibration: no embeddings for %r; capturing this case in reference mode", cat)
            case.pop("defect_category")
            pair = _reference_for(case["seed"], cat, int(manifest.get("image_size", 192)))
            case["reference_image"], case["reference_mask"] = pair.reference_image, pair.reference_mask
    try:
        for case in cases:
            rec["transformer"].step = 0
            pipeline(
                **case,
                num_inference_steps=manifest.get("num_inference_steps"),
                callback_on_step_end=on_step,
                output_type="np",
            )
    finally:
        be.transformer, be.vae_encoder, be.vae_decoder = originals
    paths = {}
    for name, r in rec.items():
        if not r.samples:
            raise InvalidInputError(
                f"no {name} inputs captured: check capture_steps against num_inference_steps"
            )
        paths[name] = out_dir / f"{name}.npz"
        np.savez(paths[name], **_stack(r.samples))
    summary = {
        "manifest": {k: v for k, v in manifest.items() if not k.startswith("_")},
        "num_cases": len(cases),
        "samples": {k: len(r.samples) for k, r in rec.items()},
        "files": {k: p.name for k, p in paths.items()},
    }
    (out_dir / "calibration.json").write_text(json.dumps(summary, indent=2))
    logger.info("captured %s", summary["samples"])
    return paths


def load_calibration(path: str | Path, component: str = "transformer") -> dict[str, np.ndarray]:
    """The captured feeds of one component; refuses a missing capture (no random-scale quantisation)."""
    f = Path(path)
    if f.is_dir():
        f = f / f"{component}.npz"
    if not f.is_file():
        raise InvalidInputError(
            f"no calibration data at {f}: run `unidg-rt calibrate` first — quantising without calibration "
            "data is refused (random scales never ship)"
        )
    with np.load(f) as data:
        return {k: data[k] for k in data.files}
