"""Fuzzing image/mask loading and whole batches with random and mutated bytes: always a clear
error recorded, never a crash of the batch, never a lost finished output."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unidg_rt.errors import InvalidInputError
from unidg_rt.jobs.inputs import read_image_bytes
from unidg_rt.jobs.runner import run_jobs


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")}


def _check_decode(data: bytes, as_mask: bool) -> None:
    try:
        arr = read_image_bytes(data, "mask" if as_mask else "image", "fuzz.png", as_mask=as_mask)
    except InvalidInputError as exc:
        assert "fuzz.png" in str(exc) and ("image" in str(exc) or "mask" in str(exc))
        return
    assert arr.ndim == (2 if as_mask else 3) and arr.dtype == (bool if as_mask else np.uint8)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.booleans())
def test_random_bytes_decode_or_clear_error(data, as_mask):
    _check_decode(data, as_mask)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(VALID)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
    st.booleans(),
)
def test_mutated_and_truncated_files(fmt, flips, cut, as_mask):
    data = bytearray(VALID[fmt])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check_decode(bytes(data[: max(1, cut % (len(data) + 1))]), as_mask)


def test_decompression_bomb_header_is_refused():
    # a valid PNG header claiming 100000 x 100000 pixels: refused before decoding
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    try:
        read_image_bytes(data, "image", "bomb.png")
    except InvalidInputError as exc:
        assert "bomb.png" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a 10^10 pixel image was decoded")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=512),
    st.sampled_from(["image", "mask", "reference_image", "reference_mask"]),
    st.binary(max_size=300),
)
def test_batch_with_fuzzed_input_file_and_manifest_line(kit, junk, field, junk_line):
    root = Path(tempfile.mkdtemp())
    try:
        img = kit.texture(0)
        Image.fromarray(img).save(root / "n.png")
        Image.fromarray(kit.box_mask()).save(root / "m.png")
        (root / "junk.bin").write_bytes(junk)
        good = {"id": "good", "image": "n.png", "mask": "m.png", "category": "scratch", "seed": 1}
        ref = {"reference_image": "n.png", "reference_mask": "m.png"}
        fuzzed = {**good, **ref, "id": "fuzzed", field: "junk.bin"}
        out = root / "out"
        kit.write_manifest(root / "first.jsonl", [good])
        assert run_jobs(kit.FakePipeline, root / "first.jsonl", out).ok == 1
        finished = kit.tree_bytes(out)
        m = kit.write_manifest(root / "m.jsonl", [good, fuzzed])
        with open(m, "ab") as f:
            f.write(junk_line)
        s = run_jobs(kit.FakePipeline, m, out)  # must not raise
        assert s.skipped == 1  # the finished job is kept...
        assert {k: v for k, v in kit.tree_bytes(out).items() if k in finished} == finished  # ...byte for byte
        recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        fuzz_rec = [r for r in recs if r["id"] == "fuzzed"][-1]
        if fuzz_rec["status"] == "failed":
            assert field.split("_")[-1] in fuzz_rec["reason"] and "junk.bin" in fuzz_rec["reason"]
        assert all(r["status"] in ("ok", "failed") and (r["status"] == "ok" or r["reason"]) for r in recs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
