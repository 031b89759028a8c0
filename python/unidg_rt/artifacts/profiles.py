"""Named profiles and manifests in the repository's stage folders (DESIGN §2, floor 0).

=====================================  ===========================================  ==================
file                                   read by                                      record
=====================================  ===========================================  ==================
``export/profiles/NAME.toml``          ``unidg-rt export --profile NAME``           :class:`ExportProfile`
``engines/profiles/NAME.toml``         ``unidg-rt build --profile NAME``            :class:`BuildProfile`
``calibration/NAME.json``              ``unidg-rt calibrate [--manifest NAME]``     (quant.calibration)
=====================================  ===========================================  ==================

A profile supplies *defaults*: a flag given on the command line wins over it. ``NAME`` may also be
a path to a file anywhere (``--profile ./my-line.toml``).

**Where the folders are.** The stage folders live at the root of a repository checkout, not in
the package, so a name is looked up, in order, in ``$UNIDG_RT_ROOT/<stage>`` (when set), in
``./<stage>`` (the current directory: a user's own project may carry its own profiles) and in the
checkout this package runs from (an editable install, ``pip install -e .``, or ``PYTHONPATH=python``).
A wheel installed into site-packages has no checkout: there, set ``UNIDG_RT_ROOT`` to a checkout
or pass a file path. The error of an unknown name lists the profiles found and the folders searched.

The records are plain data (``tomllib`` only); the commands turn them into their own types
(``GenerationRange`` for an export range, builder options for a build).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unidg_rt.errors import ConfigError
from unidg_rt.vocab import GRAPH_FORMS, PRECISIONS

#: environment variable naming a checkout (or any folder holding the stage folders)
ROOT_ENV = "UNIDG_RT_ROOT"
#: stage folder → (sub-folder, file suffix) of what its command reads by name
STAGE_FILES: dict[str, tuple[str, str]] = {
    "export": ("profiles", ".toml"),
    "engines": ("profiles", ".toml"),
    "calibration": ("", ".json"),
}
Triple = tuple[int, int, int]


# ------------------------------------------------------------------------------ finding files
def checkout_root() -> Path | None:
    """The repository checkout this package is imported from (``python/unidg_rt`` inside it), or
    ``None`` for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "python" / "unidg_rt").is_dir() else None


def stage_dirs(stage: str) -> list[Path]:
    """Folders searched for the named files of ``stage``, in order (existing or not)."""
    if stage not in STAGE_FILES:
        raise ConfigError(f"stage={stage!r} unknown; use one of {sorted(STAGE_FILES)}")
    sub = STAGE_FILES[stage][0]
    roots = [Path(os.environ[ROOT_ENV])] if os.environ.get(ROOT_ENV) else []
    roots.append(Path.cwd())
    checkout = checkout_root()
    if checkout is not None:
        roots.append(checkout)
    dirs: list[Path] = []
    for root in roots:
        d = (root / stage / sub) if sub else root / stage
        if d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    return dirs


def available(stage: str) -> dict[str, Path]:
    """``{name: file}`` of every named file of ``stage`` (the first folder that has a name wins)."""
    suffix = STAGE_FILES.get(stage, ("", ""))[1]
    found: dict[str, Path] = {}
    for d in stage_dirs(stage):
        if d.is_dir():
            for f in sorted(d.glob(f"*{suffix}")):
                found.setdefault(f.name.removesuffix(suffix), f)
    return dict(sorted(found.items()))


def looks_like_path(value: str, suffix: str) -> bool:
    """``value`` is meant as a file (has the suffix or a folder part), not a name."""
    return value.endswith(suffix) or "/" in value or os.sep in value or value.startswith(".")


def find(stage: str, name_or_path: str | Path, *, what: str = "profile") -> Path:
    """The file a ``--profile`` / ``--manifest`` value names: an existing path as given, else
    ``NAME`` looked up in :func:`stage_dirs`. Unknown names raise a :class:`ConfigError` listing
    the names found, the folders searched and what to do."""
    suffix = STAGE_FILES.get(stage, ("", ""))[1]
    value = str(name_or_path)
    if isinstance(name_or_path, Path) or looks_like_path(value, suffix):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"{stage} {what} file {path} does not exist: pass an existing {suffix} file or a name"
            )
        return path
    names = available(stage)
    if value in names:
        return names[value]
    searched = ", ".join(str(d) for d in stage_dirs(stage))
    hint = (
        ""
        if checkout_root() is not None
        else f"; this installation has no repository checkout: set {ROOT_ENV}=/path/to/unidg_rt checkout "
        "(or install it editable, pip install -e .)"
    )
    raise ConfigError(
        f"{stage} {what} {value!r} not found; available: {', '.join(names) or 'none'} "
        f"(searched {searched}){hint}; or pass a path to a {suffix} file"
    )


# ------------------------------------------------------------------------------ TOML records
def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError as exc:  # pragma: no cover - Python 3.10
        raise ConfigError(f"profile {path}: TOML profiles need Python >= 3.11 (tomllib)") from exc
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"profile {path} cannot be read: {exc}") from exc


class _Reader:
    """Typed access to one table of a profile; every error names the file and the key."""

    def __init__(self, path: Path, table: Mapping[str, Any], where: str = ""):
        self.path, self.table, self.where = path, dict(table), where

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"profile {self.path}: {self.where}{key} {msg}")

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(self.table) - set(allowed))
        if unknown:
            raise ConfigError(
                f"profile {self.path}: unknown key(s) {', '.join(self.where + k for k in unknown)}; "
                f"allowed: {', '.join(allowed)}"
            )

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.table.get(key, default)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"= {value!r} must be of type {names}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.get(key, str)
        if value is not None and value not in choices:
            raise self.fail(key, f"= {value!r} unknown; use one of {', '.join(choices)}")
        return value

    def strings(self, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        value = self.get(key, list)
        if value is None:
            return None
        if not value or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
            raise self.fail(key, f"= {value!r} must be a non-empty list of strings")
        items = tuple(str(v) for v in value)
        bad = [v for v in items if choices is not None and v not in choices]
        if bad:
            raise self.fail(key, f"has unknown {bad}; use {', '.join(choices or ())}")
        return items

    def triple(self, key: str) -> Triple | None:
        value = self.get(key, list)
        if value is None:
            return None
        ok = len(value) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or not 1 <= value[0] <= value[1] <= value[2]:
            raise self.fail(key, f"= {value!r} must be [min, opt, max] integers with 1 <= min <= opt <= max")
        return (value[0], value[1], value[2])


@dataclass(frozen=True)
class SizeRange:
    """One generation size range of an export profile (``[ranges.NAME]``), per diptych side.
    ``None`` = follow the checkpoint: ``sides`` around its default height (side/2, side, 1.5·side),
    ``text`` its ``text_seq_len``, ``batch`` ``(1, 1, 4)``."""

    sides: Triple | None = None
    text: Triple | None = None
    batch: Triple | None = None


@dataclass(frozen=True)
class ExportProfile:
    """``export/profiles/NAME.toml``: the shapes and precision an export is made for."""

    name: str
    path: Path
    description: str = ""
    forms: tuple[str, ...] | None = None
    precision: str | None = None
    components: tuple[str, ...] | None = None
    opset: int | None = None
    external_data: bool | None = None
    ranges: Mapping[str, SizeRange] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildProfile:
    """``engines/profiles/NAME.toml``: how engines are built for one target (``None`` = the
    command's default). ``export_profile`` names the export profile whose ONNX it expects."""

    name: str
    path: Path
    description: str = ""
    builder: str | None = None
    targets: tuple[str, ...] | None = None
    precision: str | None = None
    components: tuple[str, ...] | None = None
    size_range: str | None = None
    workspace_gb: float | None = None
    opt_level: int | None = None
    refit: bool | None = None
    weight_streaming: bool | None = None
    weakly_typed: bool | None = None
    timing_cache: Path | None = None
    export_profile: str | None = None


EXPORT_KEYS = ("description", "forms", "precision", "components", "opset", "external_data", "ranges")
RANGE_KEYS = ("sides", "text", "batch")
BUILD_KEYS = (
    "description",
    "builder",
    "targets",
    "precision",
    "components",
    "size_range",
    "workspace_gb",
    "opt_level",
    "refit",
    "weight_streaming",
    "weakly_typed",
    "timing_cache",
    "export_profile",
)


def load_export_profile(name_or_path: str | Path) -> ExportProfile:
    """An export profile by name (``export/profiles/NAME.toml``) or path."""
    path = find("export", name_or_path)
    r = _Reader(path, _read_toml(path))
    r.check_keys(EXPORT_KEYS)
    ranges = {}
    for range_name, table in (r.get("ranges", dict) or {}).items():
        if not isinstance(table, dict):
            raise r.fail(f"ranges.{range_name}", "must be a table: [ranges.NAME] with sides / text / batch")
        rr = _Reader(path, table, f"ranges.{range_name}.")
        rr.check_keys(RANGE_KEYS)
        ranges[range_name] = SizeRange(rr.triple("sides"), rr.triple("text"), rr.triple("batch"))
    return ExportProfile(
        name=path.stem,
        path=path,
        description=r.get("description", str, ""),
        forms=r.strings("forms", GRAPH_FORMS),
        precision=r.choice("precision", PRECISIONS),
        components=r.strings("components"),
        opset=r.get("opset", int),
        external_data=r.get("external_data", bool),
        ranges=ranges,
    )


def load_build_profile(name_or_path: str | Path) -> BuildProfile:
    """A build profile by name (``engines/profiles/NAME.toml``) or path. ``timing_cache`` is
    relative to the profile's folder."""
    path = find("engines", name_or_path)
    r = _Reader(path, _read_toml(path))
    r.check_keys(BUILD_KEYS)
    workspace = r.get("workspace_gb", (int, float))
    if workspace is not None and (isinstance(workspace, bool) or workspace <= 0):
        raise r.fail("workspace_gb", f"= {workspace!r} must be a positive number of GiB")
    opt_level = r.get("opt_level", int)
    if opt_level is not None and not 0 <= opt_level <= 5:
        raise r.fail("opt_level", f"= {opt_level} must be 0..5")
    cache = r.get("timing_cache", str)
    return BuildProfile(
        name=path.stem,
        path=path,
        description=r.get("description", str, ""),
        builder=r.get("builder", str),  # checked by the build command (artifacts.plan.normalize_builder)
        targets=r.strings("targets"),
        precision=r.choice("precision", PRECISIONS),
        components=r.strings("components"),
        size_range=r.get("size_range", str),
        workspace_gb=None if workspace is None else float(workspace),
        opt_level=opt_level,
        refit=r.get("refit", bool),
        weight_streaming=r.get("weight_streaming", bool),
        weakly_typed=r.get("weakly_typed", bool),
        timing_cache=None if cache is None else path.parent / cache,
        export_profile=r.get("export_profile", str),
    )
