"""artifacts.io: the one atomic write, sha256 and jsonable."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat

import numpy as np
import pytest

from unidg_rt.artifacts.io import (
    TMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    json_bytes,
    jsonable,
    sha256_bytes,
    sha256_file,
    update_sha256,
)


def test_atomic_write_replaces_whole_file_with_mode(tmp_path):
    target = tmp_path / "sub" / "plan.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644  # not mkstemp's 0600
    assert not list(target.parent.glob(f"*{TMP_SUFFIX}"))


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert not list(tmp_path.glob(f"*{TMP_SUFFIX}"))


def test_json_layout_is_sorted_indented_with_newline(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"b": 1, "a": tmp_path})
    assert path.read_bytes() == json_bytes({"b": 1, "a": tmp_path})
    assert path.read_text() == json.dumps({"a": str(tmp_path), "b": 1}, indent=2) + "\n"


def test_sha256(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 5_000_000)
    want = hashlib.sha256(b"x" * 5_000_000).hexdigest()
    assert sha256_file(p) == want == sha256_bytes(p.read_bytes())
    h = hashlib.sha256(b"prefix")
    update_sha256(h, p)
    assert h.hexdigest() == hashlib.sha256(b"prefix" + b"x" * 5_000_000).hexdigest()
    assert sha256_file(tmp_path / "missing", missing_ok=True) is None
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


def test_jsonable():
    got = jsonable({1: np.float32(0.1234567891), "n": np.int64(3), "l": (math.inf, float("nan"), 2.0)})
    assert got == {"1": 0.123457, "n": 3, "l": [None, None, 2.0]}
    assert type(got["n"]) is int
    assert jsonable(1 / 3, digits=2) == 0.33


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    """The one atomic write for writers that take a file name (safetensors, torch.save, np.savez)."""
    import pytest

    from unidg_rt.artifacts.io import TMP_SUFFIX, atomic_path

    target = tmp_path / "sub" / "model.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(TMP_SUFFIX)
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"new"  # the old file, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]
