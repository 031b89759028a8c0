"""Crash-safe file primitives: torn-record repair, atomic writes."""

from __future__ import annotations

import pytest

from unidg_rt.jobs.io import RESULTS_FILE, ResultsLog, atomic_write_bytes

A = b'{"id": "a", "status": "ok"}\n'


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (b"", b""),
        (b"torn", b""),
        (A, A),
        (A + b'{"id": "b", "sta', A),
        (A + b"x" * 200_000, A),
        (b"y" * 200_000, b""),
    ],
)
def test_torn_tail_is_cut_and_appends_start_on_a_fresh_line(tmp_path, content, kept):
    (tmp_path / RESULTS_FILE).write_bytes(content)
    log = ResultsLog(tmp_path)
    assert (tmp_path / RESULTS_FILE).read_bytes() == kept
    log.append({"id": "c", "status": "ok"})
    assert [r["id"] for r in log.records()] == (["a"] if kept else []) + ["c"]


def test_malformed_lines_are_skipped(tmp_path):
    (tmp_path / RESULTS_FILE).write_bytes(
        A + b"not json\n[1]\n" + b'{"id": 3}\n' + A.replace(b"ok", b"failed")
    )
    assert ResultsLog(tmp_path).latest() == {"a": {"id": "a", "status": "failed"}}


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"old")
    import os

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
