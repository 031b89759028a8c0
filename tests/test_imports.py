"""The import contract of DESIGN §2: the package's floors, arrows only pointing down.

The checker reads every module of ``python/unidg_rt`` with :mod:`ast` (module-level *and*
in-function imports, ``if TYPE_CHECKING`` blocks included: a lazy import is still an arrow) and
fails on

1. an import from a higher floor (the floor of a module is :data:`FLOORS`' longest matching prefix);
2. an import cycle: between packages of one floor (e.g. ``export -> quant -> export``) or between
   modules (``runtime.pipeline <-> runtime.trt_backend``), and the arrows DESIGN forbids although
   they point down (a backend importing the pipeline, the runtime importing the engine builder);
3. ``from x import _y`` across modules (a private name reached from outside is a missing seam).

Debts in packages being rewritten elsewhere are listed in :data:`ALLOWED` with their issue, so the
contract passes and the debt stays visible; an entry that no longer matches an import fails too
(delete it when the debt is paid).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "python"
PACKAGE = "unidg_rt"

#: floor of each module (longest matching dotted prefix wins); DESIGN §2
FLOORS: dict[str, int] = {
    # floor 0 — shared words and formats (numpy/json only); the package root holds __version__ and
    # imports nothing eagerly (its lazy UniDGPipeline facade is in EXEMPT)
    "unidg_rt": 0, "unidg_rt.errors": 0, "unidg_rt.vocab": 0, "unidg_rt.artifacts": 0,
    # floor 1 — pure math and geometry. data/ (procedural surfaces and defects, image readers;
    # numpy/PIL, imports only errors) sits here, not on floor 5 as DESIGN §2 lists it: quant
    # calibration (floor 3) builds its default cases from it (load_image, make_reference_pair)
    "unidg_rt.sampling": 1, "unidg_rt.pixels": 1, "unidg_rt.crops": 1, "unidg_rt.diptych": 1,
    "unidg_rt.groups": 1, "unidg_rt.embeddings": 1, "unidg_rt.data": 1,
    # floor 2 — models and kernels (torch)
    "unidg_rt.models": 2, "unidg_rt.kernels": 2,
    # floor 3 — producers of artifacts (never import the runtime)
    "unidg_rt.export": 3, "unidg_rt.quant": 3, "unidg_rt.engines": 3,
    # floor 4 — the runtime; settings are the runtime's deployment settings (read by
    # runtime.session, the one settings -> pipeline; they import only errors)
    "unidg_rt.runtime": 4, "unidg_rt.settings": 4,
    # floor 5 — applications
    "unidg_rt.jobs": 5, "unidg_rt.evaluation": 5, "unidg_rt.train": 5, "unidg_rt.benchmark": 5,
    "unidg_rt.cli": 5, "unidg_rt.__main__": 5,
}  # fmt: skip

#: arrows forbidden although they point down or sideways: (importer prefix, imported prefix, why)
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("unidg_rt.runtime.torch_backend", "unidg_rt.runtime.pipeline", "a backend never imports the pipeline"),
    ("unidg_rt.runtime.ort_backend", "unidg_rt.runtime.pipeline", "a backend never imports the pipeline"),
    ("unidg_rt.runtime.trt_backend", "unidg_rt.runtime.pipeline", "a backend never imports the pipeline"),
    ("unidg_rt.runtime.backend", "unidg_rt.runtime.pipeline", "the protocol never imports the pipeline"),
    ("unidg_rt.runtime", "unidg_rt.engines.build", "the runtime loads plans (engines.bindings), not the builder"),
    ("unidg_rt.runtime", "unidg_rt.quant", "the runtime runs artifacts; torch-level pieces live on floor 2"),
    ("unidg_rt.runtime", "unidg_rt.export", "the runtime reads exported folders through artifacts/"),
)  # fmt: skip

#: arrows that are no dependency: (importer, imported, why)
EXEMPT: tuple[tuple[str, str, str], ...] = (
    (
        "unidg_rt",
        "unidg_rt.runtime.pipeline",
        "the package facade: `unidg_rt.UniDGPipeline` resolved lazily by __getattr__",
    ),
)

#: known debts, visible: (importer module, imported module or module.name, issue). Each must still
#: match an arrow the checker reports, or the test fails (delete paid debts).
ALLOWED: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Arrow:
    """One import: ``src`` module imports ``dst`` module (``names``: the names taken from it)."""

    src: str
    dst: str
    file: str
    line: int
    names: tuple[str, ...] = ()

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``{module: file}`` of every module under ``root/package``."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _resolve(
    base: str, names: Iterable[str], modules: Mapping[str, Path]
) -> list[tuple[str, tuple[str, ...]]]:
    """``from base import names``: each name that is a submodule is an arrow to it; the others
    are names of ``base``."""
    out: list[tuple[str, tuple[str, ...]]] = []
    attrs = []
    for n in names:
        if f"{base}.{n}" in modules:
            out.append((f"{base}.{n}", ()))
        else:
            attrs.append(n)
    if attrs or not out:
        out.append((base, tuple(attrs)))
    return out


def arrows_of(module: str, path: Path, modules: Mapping[str, Path], package: str = PACKAGE) -> list[Arrow]:
    """Every import of ``package`` modules in ``path``, at any depth of the syntax tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = module if is_pkg else module.rpartition(".")[0]
    rel = str(path)
    out: list[Arrow] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    out.append(Arrow(module, alias.name, rel, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base != package and not base.startswith(package + "."):
                continue
            for dst, names in _resolve(base, [a.name for a in node.names], modules):
                out.append(Arrow(module, dst, rel, node.lineno, names))
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> list[Arrow]:
    modules = discover(root, package)
    return [a for m, p in modules.items() for a in arrows_of(m, p, modules, package)]


def _match(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def floor_of(module: str, floors: Mapping[str, int] = FLOORS) -> int:
    best = max((p for p in floors if _match(module, p)), key=len, default=None)
    if best is None:
        raise KeyError(f"{module} has no floor: add it to FLOORS (DESIGN §2)")
    return floors[best]


def group_of(module: str, floors: Mapping[str, int] = FLOORS) -> str:
    """The package (FLOORS key) a module belongs to, e.g. ``unidg_rt.runtime``."""
    return max((p for p in floors if _match(module, p)), key=len)


def _allowed(a: Arrow, allowed: Iterable[tuple[str, str, str]]) -> bool:
    targets = {a.dst} | {f"{a.dst}.{n}" for n in a.names}
    return any(a.src == src and dst in targets for src, dst, _ in allowed)


def upward(arrows: Iterable[Arrow], floors: Mapping[str, int] = FLOORS) -> list[str]:
    """Messages for each arrow pointing up a floor."""
    out = []
    for a in arrows:
        fs, fd = floor_of(a.src, floors), floor_of(a.dst, floors)
        if fd > fs:
            what = f" ({', '.join(a.names)})" if a.names else ""
            out.append(f"{a.where()}: {a.src} (floor {fs}) -> {a.dst}{what} (floor {fd}) points up")
    return out


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def sideways(arrows: list[Arrow], floors: Mapping[str, int] = FLOORS) -> list[str]:
    """Messages for cycles between packages of one floor, and for the FORBIDDEN arrows."""
    out = []
    edges: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Arrow] = {}
    for a in arrows:
        gs, gd = group_of(a.src, floors), group_of(a.dst, floors)
        if gs != gd and floors[gs] == floors[gd]:
            edges.setdefault(gs, set()).add(gd)
            first.setdefault((gs, gd), a)
    for comp in _cycles(edges):
        legs = [first[(s, d)] for s in comp for d in comp if (s, d) in first]
        detail = "; ".join(f"{a.where()}: {a.src} -> {a.dst}" for a in legs)
        out.append(f"cycle between packages of one floor {comp}: {detail}")
    mod_edges: dict[str, set[str]] = {}
    mod_first: dict[tuple[str, str], Arrow] = {}
    for a in arrows:
        if a.src != a.dst and not _match(a.src, a.dst):  # a package importing its own __init__ names
            mod_edges.setdefault(a.src, set()).add(a.dst)
            mod_first.setdefault((a.src, a.dst), a)
    for comp in _cycles(mod_edges):
        legs = [mod_first[(s, d)] for s in comp for d in comp if (s, d) in mod_first]
        detail = "; ".join(f"{a.where()}: {a.src} -> {a.dst}" for a in legs)
        out.append(f"module cycle {comp}: {detail}")
    for a in arrows:
        for src, dst, why in FORBIDDEN:
            if _match(a.src, src) and _match(a.dst, dst):
                out.append(f"{a.where()}: {a.src} -> {a.dst} is forbidden ({why})")
    return out


def private_reaches(arrows: Iterable[Arrow]) -> list[str]:
    """Messages for ``from x import _y`` where ``x`` is another module (``__dunder__`` names are public)."""
    out = []
    for a in arrows:
        bad = [n for n in a.names if n.startswith("_") and not n.startswith("__")]
        if bad and a.dst != a.src:
            out.append(f"{a.where()}: {a.src} imports private {', '.join(bad)} from {a.dst}")
    return out


def violations(arrows: list[Arrow], floors: Mapping[str, int] = FLOORS, allowed=()) -> list[str]:
    kept = [a for a in arrows if not _allowed(a, allowed) and not _allowed(a, EXEMPT)]
    return upward(kept, floors) + sideways(kept, floors) + private_reaches(kept)


# ---------------------------------------------------------------- the contract on the real tree


@pytest.fixture(scope="module")
def graph() -> list[Arrow]:
    return import_graph()


def test_every_module_has_a_floor(graph):
    for m in discover(ROOT):
        floor_of(m)  # raises naming the module


def test_arrows_point_down(graph):
    bad = violations(graph, allowed=ALLOWED)
    assert not bad, "import contract (DESIGN §2) broken:\n" + "\n".join(bad)


def test_allow_list_entries_are_still_debts(graph):
    base = len(violations(graph, allowed=ALLOWED))
    for entry in ALLOWED:
        src, dst, issue = entry
        others = [e for e in ALLOWED if e != entry]
        assert len(violations(graph, allowed=others)) > base, (
            f"ALLOWED entry {src} -> {dst} ({issue}) hides no violation any more: delete it"
        )


# ---------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / "unidg_rt" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [p for p in (tmp_path / "unidg_rt").rglob("*") if p.is_dir()] + [tmp_path / "unidg_rt"]:
        (d / "__init__.py").touch()
    return tmp_path


def test_checker_fails_on_a_planted_upward_import(tmp_path):
    root = _tree(
        tmp_path,
        {
            "errors.py": "",
            "export/onnx.py": "def f():\n    from unidg_rt.runtime.ort_backend import ORT_FORMS\n",
            "runtime/ort_backend.py": "from unidg_rt.errors import ConfigError\nORT_FORMS = ()\n",
        },
    )
    bad = violations(import_graph(root))
    assert len(bad) == 1, bad
    assert (
        "export/onnx.py:2" in bad[0]
        and "unidg_rt.export.onnx (floor 3) -> unidg_rt.runtime.ort_backend" in bad[0]
    )
    assert "points up" in bad[0]


def test_checker_resolves_relative_and_submodule_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "quant/qdq.py": "from ..jobs import io\nfrom . import graph\n",
            "quant/graph.py": "",
            "jobs/io.py": "",
        },
    )
    arrows = import_graph(root)
    assert {(a.src, a.dst) for a in arrows} == {
        ("unidg_rt.quant.qdq", "unidg_rt.jobs.io"),
        ("unidg_rt.quant.qdq", "unidg_rt.quant.graph"),
    }
    assert upward(arrows) == [
        f"{root / 'unidg_rt/quant/qdq.py'}:1: unidg_rt.quant.qdq (floor 3) -> unidg_rt.jobs.io (floor 5) points up"
    ]


def test_checker_fails_on_a_same_floor_cycle_and_a_backend_importing_the_pipeline():
    arrows = [
        Arrow("unidg_rt.export.onnx", "unidg_rt.quant.fp8", "export/onnx.py", 3),
        Arrow("unidg_rt.quant.qdq", "unidg_rt.export.spec", "quant/qdq.py", 7),
        Arrow(
            "unidg_rt.runtime.trt_backend",
            "unidg_rt.runtime.pipeline",
            "runtime/trt_backend.py",
            9,
            ("UniDGPipeline",),
        ),
    ]
    bad = violations(arrows)
    assert len(bad) == 2, bad
    assert "cycle" in bad[0] and "export/onnx.py:3" in bad[0] and "quant/qdq.py:7" in bad[0]
    assert "runtime/trt_backend.py:9" in bad[1] and "forbidden" in bad[1]


def test_checker_fails_on_a_private_name_across_modules():
    arrows = [
        Arrow("unidg_rt.quant.report", "unidg_rt.evaluation.evaluator", "quant/report.py", 5, ("_jsonable",)),
        Arrow("unidg_rt.jobs.io", "unidg_rt.artifacts.io", "jobs/io.py", 1, ("__all__", "sha256_file")),
    ]
    bad = private_reaches(arrows)
    assert bad == [
        "quant/report.py:5: unidg_rt.quant.report imports private _jsonable from unidg_rt.evaluation.evaluator"
    ]


def test_allow_list_hides_only_its_arrow():
    arrows = [
        Arrow("unidg_rt.train.run", "unidg_rt.cli.common", "train/run.py", 1),
        Arrow("unidg_rt.train.run", "unidg_rt.cli.app", "train/run.py", 2),
    ]
    bad = violations(arrows, allowed=[("unidg_rt.train.run", "unidg_rt.cli.common", "issue 16")])
    assert len(bad) == 0  # train -> cli is sideways (both floor 5), not up
    arrows = [Arrow("unidg_rt.models.text", "unidg_rt.runtime.pipeline", "models/text.py", 4, ("X",))]
    assert (
        violations(arrows, allowed=[("unidg_rt.models.text", "unidg_rt.runtime.pipeline.X", "issue 16")])
        == []
    )
    assert (
        len(violations(arrows, allowed=[("unidg_rt.models.text", "unidg_rt.runtime.session", "issue 16")]))
        == 1
    )


def test_trt_backend_loads_without_the_engine_builder():
    """Package __init__ files import nothing eagerly, so the runtime's plan loader does not pull
    the 400-line builder through ``unidg_rt.engines``."""
    import subprocess
    import sys

    code = (
        "import sys, unidg_rt.runtime.trt_backend as t, unidg_rt.engines as e; "
        "assert callable(e.load_trt) and 'unidg_rt.engines.build' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_top_level_module_has_an_explicit_floor():
    """A new top-level module or package must be placed on a floor (else it would inherit the
    package root's floor 0 silently)."""
    tops = {".".join(m.split(".")[:2]) for m in discover(ROOT) if m != PACKAGE}
    assert sorted(t for t in tops if t not in FLOORS) == []
