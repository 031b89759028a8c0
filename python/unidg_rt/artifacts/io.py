"""Files every floor writes and checks: atomic writes, sha256, JSON-ready values (DESIGN §2).

The only copies: export, quant, engines, jobs and the CLI import these. An atomic write goes to a
temp file in the same folder (``.{name}.*.unidg-tmp``), is fsynced, renamed over the final name
and the folder fsynced, so a reader (or a run resumed after SIGKILL) sees the old file or the
whole new one, never half of it. numpy/json only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: suffix of the temp files an interrupted atomic write can leave (``jobs.io`` sweeps them)
TMP_SUFFIX = ".unidg-tmp"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def update_sha256(h, path: str | Path, chunk: int = 1 << 22) -> None:
    """Feed the bytes of the file ``path`` into the hash object ``h``."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)


def sha256_file(path: str | Path, *, missing_ok: bool = False) -> str | None:
    """sha256 of a file's bytes; with ``missing_ok``, ``None`` if it is missing or unreadable."""
    h = hashlib.sha256()
    try:
        update_sha256(h, path)
    except OSError:
        if missing_ok:
            return None
        raise
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # the rename is only durable once the directory entry is on disk (POSIX); Windows can't
    # open directories, where os.replace is already durable enough for our purpose
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via temp file + fsync + rename (+ fsync of the folder); the file
    gets ``mode`` (mkstemp makes 0600; plans and reports are shared with other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.{name}.*.unidg-tmp``) for writers that take a file name
    (safetensors, torch.save): renamed onto ``path`` when the block succeeds, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def json_bytes(obj: Any) -> bytes:
    """The one JSON layout of records on disk: indent 2, sorted keys, ``str`` for the rest."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))


def jsonable(x: Any, digits: int = 6) -> Any:
    """``x`` with numpy scalars as Python numbers, floats rounded to ``digits`` and non-finite
    floats as ``None`` (reports stay valid, diff-able JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, digits) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else round(float(x), digits)
    if isinstance(x, np.integer):
        return int(x)
    return x
