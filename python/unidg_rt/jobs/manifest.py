"""Job manifests: a JSONL file (one job per line) or a folder of normal images + a plan.

A manifest line (paths are relative to the manifest's folder)::

    {"id": "tile-001", "image": "normal/tile_001.png", "mask": "masks/tile_001.png",
     "category": "scratch", "seed": 7, "count": 2, "settings": {"num_inference_steps": 8}}
    {"id": "tile-002", "image": "normal/tile_002.png",
     "mask_strategy": {"strategy": "random_blob", "scale": [0.05, 0.2]},
     "reference_image": "refs/crack.png", "reference_mask": "refs/crack_mask.png", "category": "crack"}

Parsing never raises on bad content: every line that is not a valid job becomes a
:class:`ManifestError` (line number, id if readable, reason), which the runner records as a
failed job while the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unidg_rt.errors import ConfigError, InvalidInputError

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_LINE_BYTES = 1 << 20
SEED_LIMIT = 2**31


def default_seed(job_id: str) -> int:
    """Seed of a job that gives none: stable across runs and machines (crc32 of the id)."""
    return zlib.crc32(job_id.encode()) % SEED_LIMIT


class MaskStrategy(BaseModel):
    """A mask drawn for the job instead of read from a file.

    ``scale`` is the defect extent as a fraction of the image's shorter side, drawn uniformly
    from ``[low, high]`` per job (``center_box`` uses the middle). ``box`` is ``[x0, y0, x1, y1]``
    in pixels (strategy ``"box"``); a box outside the image fails the job.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["random_blob", "random_box", "center_box", "box"]
    scale: tuple[float, float] = (0.05, 0.2)
    box: tuple[int, int, int, int] | None = None

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v):
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 1):
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _box_given(self):
        if self.strategy == "box":
            if self.box is None:
                raise ValueError('strategy "box" needs "box": [x0, y0, x1, y1] in pixels')
            x0, y0, x1, y1 = self.box
            if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {list(self.box)} must satisfy 0 <= x0 < x1 and 0 <= y0 < y1")
        elif self.box is not None:
            raise ValueError(f'"box" is only used by strategy "box", not {self.strategy!r}')
        return self


class GenerationOverrides(BaseModel):
    """Per-job (or batch-wide) generation settings; ``None`` = the pipeline's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int | None = Field(None, ge=16, le=4096)
    width: int | None = Field(None, ge=16, le=4096)
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, allow_inf_nan=False)
    feather: int | None = Field(None, ge=0, le=256)
    paste_mode: Literal["replace", "residual"] | None = None
    #: hierarchical sampling segments (``unidg_rt.sampling.SegmentSchedule.from_data`` entries)
    segments: list[dict[str, Any]] | None = None

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, v):
        if v is not None and v % 16:
            raise ValueError(f"must be a multiple of 16 (got {v}); try {round(v / 16) * 16}")
        return v

    def merged_over(self, base: GenerationOverrides | None) -> GenerationOverrides:
        """These values where set, else ``base``'s."""
        if base is None:
            return self
        mine = self.model_dump(exclude_none=True)
        return GenerationOverrides(**{**base.model_dump(exclude_none=True), **mine})

    def stable_dump(self) -> dict[str, Any]:
        """``model_dump`` without the later-added keys while unset, so fingerprints of jobs
        written before ``paste_mode`` / ``segments`` existed do not change (resume stays valid)."""
        return {
            k: v for k, v in self.model_dump(mode="json").items() if v is not None or k not in _LATER_KEYS
        }


_LATER_KEYS = ("paste_mode", "segments")


def _mask_strategy_from_shorthand(v):
    return {"strategy": v} if isinstance(v, str) else v


class Job(BaseModel):
    """One manifest line: insert ``count`` defects (seeds ``seed .. seed+count-1``) into ``image``.

    Text mode: ``category`` (cached embeddings). Reference mode: ``reference_image`` +
    ``reference_mask``; there ``category`` is only the label used for dataset folders.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    image: Path
    mask: Path | None = None
    mask_strategy: MaskStrategy | None = None
    reference_image: Path | None = None
    reference_mask: Path | None = None
    category: str | None = None
    product: str = "product"
    seed: int = Field(ge=0, lt=SEED_LIMIT)  # default: crc32 of the id
    count: int = Field(1, ge=1, le=64)
    settings: GenerationOverrides = GenerationOverrides()

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("mask"), dict):  # {"mask": {"strategy": ...}}
                data.setdefault("mask_strategy", data.pop("mask"))
            if "mask_strategy" in data:
                data["mask_strategy"] = _mask_strategy_from_shorthand(data["mask_strategy"])
            if data.get("seed") is None and isinstance(data.get("id"), str):
                data["seed"] = default_seed(data["id"])
        return data

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str):
        if not ID_PATTERN.match(v):
            raise ValueError(
                f"id {v!r} must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or "
                "digit (it becomes a file name)"
            )
        return v

    @field_validator("category", "product")
    @classmethod
    def _safe_name(cls, v: str | None):
        if v is None:
            return v
        if not NAME_PATTERN.match(v):
            raise ValueError(f"{v!r} must be 1-64 characters of A-Z a-z 0-9 space _ - (it becomes a folder)")
        if dataset_name(v) == "good":
            raise ValueError('"good" is reserved for defect-free images in the MVTec layout; rename it')
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if (self.mask is None) == (self.mask_strategy is None):
            raise ValueError('give exactly one of "mask" (a file) and "mask_strategy"')
        if (self.reference_image is None) != (self.reference_mask is None):
            raise ValueError('"reference_image" and "reference_mask" go together: give both or neither')
        if self.reference_image is None and self.category is None:
            raise ValueError('no defect: give "category" (text mode) or "reference_image" + "reference_mask"')
        return self

    @property
    def mode(self) -> str:
        return "text" if self.reference_image is None else "reference"

    @property
    def label(self) -> str:
        """Defect label for dataset folders: the category, ``defect`` if a reference job has none."""
        return self.category or "defect"

    def resolved(self, base_dir: Path) -> Job:
        """Copy with relative paths made absolute against ``base_dir`` (the manifest's folder)."""
        update = {}
        for name in ("image", "mask", "reference_image", "reference_mask"):
            p = getattr(self, name)
            if p is not None and not p.is_absolute():
                update[name] = (base_dir / p).resolve()
        return self.model_copy(update=update)

    def fingerprint(self, defaults: GenerationOverrides | None = None) -> str:
        """Hash of everything that determines this job's outputs (resume redoes a job whose
        definition changed under the same id)."""
        job = self.model_dump(mode="json")
        job["settings"] = self.settings.stable_dump()
        payload = {"job": job, "defaults": defaults.stable_dump() if defaults else None}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def dataset_name(name: str) -> str:
    """Folder name of a category/product: ``"Black spot"`` → ``black_spot``."""
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


@dataclass(frozen=True)
class ManifestError:
    """A manifest line that is not a valid job; recorded as a failed job with this reason."""

    line: int
    id: str
    reason: str


@dataclass
class Manifest:
    jobs: list[Job] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.jobs) + len(self.errors)


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors()]
        return "; ".join(parts)
    return str(exc)


def parse_manifest_bytes(data: bytes, base_dir: Path | str = ".", source: str = "<memory>") -> Manifest:
    """Parse JSONL bytes into jobs + per-line errors. Never raises on content."""
    base = Path(base_dir)
    manifest = Manifest(source=source)
    claimed: set[str] = set()
    pending_errors: list[tuple[int, Any, str]] = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        text = raw.strip()
        if not text or text.startswith(b"#"):
            continue
        obj: Any = None
        try:
            if len(text) > MAX_LINE_BYTES:
                raise ValueError(f"line is {len(text)} bytes; a job line must be under {MAX_LINE_BYTES}")
            obj = json.loads(text.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"a job line must be a JSON object, got {type(obj).__name__}")
            job = Job.model_validate(obj).resolved(base)
        except (ValueError, RecursionError, TypeError, OverflowError) as exc:
            pending_errors.append((n, obj.get("id") if isinstance(obj, dict) else None, _short(exc)))
            continue
        if job.id in claimed:
            pending_errors.append((n, None, f"duplicate id {job.id!r}: ids must be unique in a manifest"))
            continue
        claimed.add(job.id)
        manifest.jobs.append(job)
    for n, job_id, reason in pending_errors:
        # a bad line keeps its id when that is a usable, unclaimed id, so it can be found in the
        # results; otherwise "#line-N" (never a valid job id, so it can't shadow a real job)
        if not (isinstance(job_id, str) and ID_PATTERN.match(job_id) and job_id not in claimed):
            job_id = f"#line-{n}"
        claimed.add(job_id)
        manifest.errors.append(ManifestError(n, job_id, f"manifest line {n}: {reason}"))
    return manifest


def load_manifest(path: Path | str) -> Manifest:
    """Read a JSONL manifest file (relative paths inside resolve against its folder)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(
            f"manifest {path} cannot be read ({exc}): pass an existing JSONL file"
        ) from exc
    manifest = parse_manifest_bytes(data, path.resolve().parent, source=str(path))
    logger.info("manifest %s: %d job(s), %d bad line(s)", path, len(manifest.jobs), len(manifest.errors))
    return manifest


# ----------------------------------------------------------------------------- folder + plan
class Plan(BaseModel):
    """Expand a folder of normal images into jobs: ``defects_per_image`` jobs per image, each with
    a category drawn from ``categories`` and a seed, both derived from ``(seed, file, index)`` so
    adding images to the folder never changes the jobs of the others."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defects_per_image: int = Field(1, ge=1, le=1000)
    categories: list[str] = Field(min_length=1)
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    count: int = Field(1, ge=1, le=64)
    mask_strategy: MaskStrategy = MaskStrategy(strategy="random_blob")
    product: str | None = None
    recursive: bool = False
    settings: GenerationOverrides = GenerationOverrides()

    @field_validator("mask_strategy", mode="before")
    @classmethod
    def _shorthand(cls, v):
        return _mask_strategy_from_shorthand(v)


def load_plan(path: Path | str | None = None, **overrides) -> Plan:
    """A plan from a JSON or TOML file (or none), with keyword overrides (``None`` = keep)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".toml":
                import tomllib  # Python >= 3.11

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"plan {path} cannot be read ({exc}): pass a JSON or TOML plan file") from exc
        except ImportError as exc:
            raise ConfigError("TOML plans need Python >= 3.11: write the plan as JSON") from exc
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid plan: {_short(exc)}") from exc


def _id_from_path(rel: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__")).lstrip("._-")
    return (safe or "image")[:120]


def expand_plan(directory: Path | str, plan: Plan) -> Manifest:
    """Jobs for every image file in ``directory`` (sorted; subfolders when ``plan.recursive``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInputError(
            f"{directory} is not a folder: pass a folder of normal images or a JSONL manifest"
        )
    pattern = "**/*" if plan.recursive else "*"
    files = sorted(
        p
        for p in directory.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    manifest = Manifest(source=str(directory))
    claimed: set[str] = set()
    product = (
        plan.product or dataset_name(re.sub(r"[^A-Za-z0-9 _-]+", "_", directory.resolve().name)) or "product"
    )
    for n, path in enumerate(files, 1):
        rel = path.relative_to(directory).as_posix()
        key = zlib.crc32(rel.encode())
        for i in range(plan.defects_per_image):
            job_id = f"{_id_from_path(rel)}-{i:03d}"
            if job_id in claimed:
                manifest.errors.append(
                    ManifestError(
                        n, f"#file-{n}-{i}", f"{rel}: id {job_id!r} clashes with another file; rename one"
                    )
                )
                continue
            rng = np.random.default_rng([plan.seed, key, i])
            seed = int(np.random.SeedSequence([plan.seed, key, i]).generate_state(1)[0]) % SEED_LIMIT
            try:
                job = Job(
                    id=job_id,
                    image=path.resolve(),
                    mask_strategy=plan.mask_strategy,
                    category=plan.categories[int(rng.integers(len(plan.categories)))],
                    product=product,
                    seed=seed,
                    count=plan.count,
                    settings=plan.settings,
                )
            except ValidationError as exc:
                manifest.errors.append(ManifestError(n, f"#file-{n}-{i}", f"{rel}: {_short(exc)}"))
                continue
            claimed.add(job_id)
            manifest.jobs.append(job)
    if not files:
        logger.warning("no images (%s) in %s", ", ".join(IMAGE_SUFFIXES), directory)
    return manifest
