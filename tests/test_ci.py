"""What CI (``.ci/run`` → ``scripts/test.sh``) guarantees about itself:

- a failed install of any extra ends the run (``scripts/_venv.sh`` with a stand-in ``python``
  whose ``pip`` fails for one extra — no real venv is created);
- under ``CI=true`` a missing dependency CI installs fails instead of skipping (tests/conftest.py);
- README's "What is verified where" table equals what scripts/verification_table.py generates
  from docs/verification.toml and the tests, and no ✅ stands anywhere else in the docs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: stands in for .venv/bin/python: logs each call; ``-m pip`` fails when an argument contains
#: $FAKE_FAIL (a planted failed install), ``-c`` (the import checks) succeeds
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  if [ -n "${FAKE_FAIL:-}" ]; then
    for a in "$@"; do
      case "$a" in *"$FAKE_FAIL"*) echo "ERROR: No matching distribution found for $FAKE_FAIL" >&2; exit 1;; esac
    done
  fi
  echo "WARNING: Location noise pip prints" >&2
  exit 0
fi
if [ "$1" = "-c" ]; then exit 0; fi
exit 3
"""


@pytest.fixture
def fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return venv


def _run(cmd: str, venv: Path, fail: str = "", **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = venv.parent / "calls.log"
    log.write_text("")
    full_env = {**os.environ, "UNIDG_VENV": str(venv), "FAKE_LOG": str(log), "FAKE_FAIL": fail, **env}
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )
    return proc, log.read_text().splitlines()


def test_venv_installs_and_stamps(fake_venv):
    cmd = 'source scripts/_venv.sh "torch,trt-rtx,quant" 1 && echo SOURCED'
    proc, calls = _run(cmd, fake_venv)
    assert proc.returncode == 0 and "SOURCED" in proc.stdout, proc.stderr
    assert any("pip install -q -e" in c and "[quant,torch,trt-rtx]" in c for c in calls), calls
    assert any("--group" in c for c in calls) and (fake_venv / ".unidg-stamp").is_file()
    assert "WARNING: Location" not in proc.stderr  # pip's noise filtered, the rest shown
    proc, calls = _run(cmd, fake_venv)  # stamp matches: nothing is reinstalled
    assert proc.returncode == 0 and not any("pip" in c for c in calls), calls


@pytest.mark.parametrize("step", ["trt-rtx", "--group", "pip>=25.1"])
def test_venv_failed_install_step_fails(fake_venv, step):
    """A failed pip step (one extra, the dev group, pip itself) ends the script with exit 1 and
    pip's error on stderr; nothing after it runs and no stamp claims the install happened."""
    proc, calls = _run('source scripts/_venv.sh "torch,trt-rtx" 1 && echo SOURCED', fake_venv, fail=step)
    assert proc.returncode == 1 and "SOURCED" not in proc.stdout
    assert (
        "install failed (pip exit 1)" in proc.stderr
        and f"No matching distribution found for {step}" in proc.stderr
    )
    assert not (fake_venv / ".unidg-stamp").exists()


def test_venv_refuses_an_extra_pyproject_does_not_define(fake_venv):
    """pip only warns about an unknown extra: the script refuses it before installing anything."""
    proc, calls = _run('source scripts/_venv.sh "torch,bogus-extra" 1 && echo SOURCED', fake_venv)
    assert proc.returncode == 1 and "extra 'bogus-extra' is not in pyproject.toml" in proc.stderr
    assert calls == []


def test_ci_run_fails_on_a_planted_install_failure(fake_venv):
    """``.ci/run`` (CI's entry point) exits non-zero when one extra (TensorRT-RTX) fails to install,
    before ruff or pytest run."""
    proc, calls = _run("bash .ci/run", fake_venv, fail="trt-rtx", CI="true")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "install failed (pip exit 1)" in proc.stderr and "trt-rtx" in proc.stderr
    assert not any("pytest" in c or "ruff" in c for c in calls), calls


def test_importorskip_fails_in_ci_for_what_ci_installs(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        pytest.importorskip("tensorrt_rtx_bindings.no_such_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(
        pytest.fail.Exception, match="CI=true: 'tensorrt_rtx_bindings.no_such_module' must import"
    ):
        pytest.importorskip("tensorrt_rtx_bindings.no_such_module")
    with pytest.raises(pytest.skip.Exception):  # not something CI installs: still a skip
        pytest.importorskip("no_such_package_unidg")


def test_skip_probe():
    """Probe for the next test: skips for a 'missing dependency' only when asked to."""
    if os.environ.get("UNIDG_SKIP_PROBE"):
        pytest.skip("probe: pip install nothing")


def test_dependency_skip_fails_in_ci():
    node = f"{Path(__file__).relative_to(ROOT)}::test_skip_probe"
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node]
    env = {**os.environ, "UNIDG_SKIP_PROBE": "1"}
    local = subprocess.run(base, cwd=ROOT, env={**env, "CI": ""}, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = subprocess.run(
        base, cwd=ROOT, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=300
    )
    assert ci.returncode == 1 and "1 failed" in ci.stdout, ci.stdout
    assert "skipped for a missing dependency CI must have" in ci.stdout


def test_readme_verification_table_is_generated():
    """README's table = ``scripts/verification_table.py`` output, and no ✅ outside it."""
    proc = subprocess.run(
        [sys.executable, "scripts/verification_table.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _table_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "verification_table", ROOT / "scripts" / "verification_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_cells_and_last_run_results(tmp_path):
    """A tick needs tests CI runs; a gpu test cannot stand behind one; with the last run's junit
    files, a skipped, failed or missing test behind a tick is reported."""
    vt = _table_module()
    items = {
        "tests/a/test_x.py::test_ok[1]": [],
        "tests/a/test_x.py::test_ok[2]": ["parametrize"],
        "tests/a/test_x.py::test_gpu": ["gpu"],
        "tests/a/test_x.py::test_slow": ["slow", "trt"],
        "tests/a/test_x.py::test_skipped": [],
    }
    rows = [
        {
            "component": "c",
            "cpu": ["tests/a/test_x.py::test_ok"],
            "cpu_note": "n",
            "trt": ["tests/a/test_x.py::test_slow"],
        },
        {"component": "d", "cpu": ["tests/a/test_x.py::test_skipped"]},
    ]
    assert vt.render(rows, items).splitlines()[2] == "| c | ✅ n | ✅ (slow run) | — |  |"
    assert vt.row_tests({"cpu": ["tests/a/test_x.py"]}, "cpu", items) == sorted(
        set(items) - {"tests/a/test_x.py::test_gpu"}
    )
    with pytest.raises(vt.TableError, match="gpu tests CI never runs"):
        vt.match("tests/a/test_x.py::test_gpu", items)
    with pytest.raises(vt.TableError, match="matches no collected test"):
        vt.match("tests/a/test_x.py::test_renamed", items)
    junit = tmp_path / "r.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a.test_x" name="test_ok[1]"/>'
        '<testcase classname="tests.a.test_x" name="test_ok[2]"/>'
        '<testcase classname="tests.a.test_x" name="test_skipped"><skipped message="pip install x"/></testcase>'
        "</testsuite></testsuites>"
    )
    problems = vt.check_results(rows, items, [junit])
    assert sorted(p.split(":")[0] for p in problems) == ["not run", "skipped"], problems
    bad = tmp_path / "v.toml"  # a hand-written tick is refused
    bad.write_text('[[row]]\ncomponent = "x"\ncpu_note = "✅ trust me"\n')
    with pytest.raises(vt.TableError, match="generated from tests"):
        vt.load_rows(bad)
