"""SIGKILL mid-batch: a `unidg-rt synth` subprocess is killed after its first results, then
resumed; every job ends done exactly once, byte-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unidg_rt.jobs.io import sha256_file
from unidg_rt.jobs.manifest import GenerationOverrides
from unidg_rt.jobs.runner import run_jobs

N_JOBS = 8
SIZE = ["--height", "32", "--width", "32", "--threads", "1"]


def _synth(manifest, out, weights):
    cmd = [
        sys.executable,
        "-m",
        "unidg_rt",
        "synth",
        str(manifest),
        "--out",
        str(out),
        "--weights",
        str(weights),
        *SIZE,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ok_records(out):
    path = out / "results.jsonl"
    if not path.exists():
        return []
    recs = []
    for line in path.read_bytes().split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line is possible right after the kill
        if rec.get("status") == "ok":
            recs.append(rec)
    return recs


def test_sigkill_then_resume_is_exactly_once_and_byte_identical(
    inputs_dir, kit, tiny_checkpoint, tiny_factory
):
    jobs = [{**j, "id": f"k{i}"} for i, j in enumerate(kit.good_jobs(N_JOBS))]
    manifest = kit.write_manifest(inputs_dir / "m.jsonl", jobs)
    out = inputs_dir / "killed"

    proc = _synth(manifest, out, tiny_checkpoint)
    deadline = time.monotonic() + 120
    while not _ok_records(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done_at_kill = {r["id"] for r in _ok_records(out)}
    if len(done_at_kill) == N_JOBS:
        pytest.fail("the batch finished before the kill; make the jobs slower")
    assert done_at_kill, "no record before the kill"
    print(f"killed with {len(done_at_kill)}/{N_JOBS} jobs recorded")
    for rec in _ok_records(out):  # nothing counted done is half-written
        assert all(sha256_file(out / rel) == digest for rel, digest in rec["files"].items())

    proc = _synth(manifest, out, tiny_checkpoint)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert kit.ok_counts(out) == {f"k{i}": 1 for i in range(N_JOBS)}  # exactly once
    assert not list(out.rglob("*.unidg-tmp"))

    # this process runs with 1 torch thread (conftest), as the subprocess (--threads 1)
    clean = inputs_dir / "clean"
    s = run_jobs(tiny_factory, manifest, clean, defaults=GenerationOverrides(height=32, width=32))
    assert s.ok == N_JOBS
    assert kit.tree_bytes(out) == kit.tree_bytes(clean)
