"""Crash-safe files for batch jobs: atomic writes, the append-only result log, a run lock.

Durability contract (what a SIGKILL or power cut can and cannot do):

* every output file is written to a temp file in the same folder, fsynced, renamed over the
  final name and the folder fsynced, so a reader sees either the old file or the whole new one;
* a job counts as done only once its record is appended to ``results.jsonl`` *after* its files
  are in place; the record carries the sha256 of every file, so resume re-checks them;
* a record is one ``write`` of one line followed by fsync; a torn last line (killed mid-write)
  is cut off when the log is next opened, so it can never be read as a finished job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unidg_rt.artifacts.io import (  # noqa: F401 - re-exported: the jobs' file primitives
    TMP_SUFFIX,
    atomic_write_bytes,
    sha256_bytes,
    sha256_file,
)
from unidg_rt.errors import ConfigError

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".unidg_synth.lock"
#: folders of the plain output layout (relative to the output directory)
OUTPUT_FOLDERS = ("images", "masks", "normals")


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete temp files a killed run left behind (only our own ``*.unidg-tmp`` names)."""
    removed = 0
    for folder in (out_dir, *(out_dir / name for name in OUTPUT_FOLDERS)):
        if not folder.is_dir():
            continue
        for tmp in folder.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("removed %d temp file(s) left by an interrupted run in %s", removed, out_dir)
    return removed


class ResultsLog:
    """The append-only ``results.jsonl`` of an output directory (one JSON record per line).

    The latest record of an id wins, so a job that failed and was redone, or whose files were
    found corrupt and were regenerated, keeps its whole history in the log.
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / RESULTS_FILE
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep, pos = 0, size  # scan back (in chunks: logs can be large) to the last newline
            while pos > 0:
                start = max(0, pos - (1 << 16))
                f.seek(start)
                newline = f.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                pos = start
            logger.warning(
                "%s ends with a torn record (%d bytes, killed mid-write); cutting it off",
                self.path,
                size - keep,
            )
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Every well-formed record, oldest first (malformed lines are skipped with a warning)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    rec = json.loads(raw)
                except (ValueError, RecursionError):
                    logger.warning("%s line %d is not JSON; ignoring it", self.path, n)
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                    yield rec

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest record per job id."""
        return {rec["id"]: rec for rec in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably: a single ``write`` of one line, then fsync."""
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # os.write may write less than asked (signals, pipes)
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output directory for the duration of a batch.

    Two batches writing one directory would interleave records of the same job; the second
    one fails fast instead. The lock is released by the kernel when the process dies.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; document rather than pretend
        logger.warning("no fcntl on this platform: do not run two batches into %s at once", out_dir)
        yield
        return
    fd = os.open(Path(out_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(
                f"out_dir {out_dir} is in use by another synth run: wait for it to finish or pass a "
                "different --out"
            ) from exc
        yield
    finally:
        os.close(fd)
