"""Batch runner: execute a manifest into an output folder that survives kills and resumes.

Output layout (``out_dir``)::

    results.jsonl            one record per finished attempt (latest per id wins)
    images/<id>_<k>.png      the k-th generated image of a job (seed = job.seed + k)
    masks/<id>.png           the binary target mask used (0/255), the defect ground truth
    normals/<sha16>.png      the normal input as PNG (shared by jobs on the same image)

A job is *done* when its latest record says ``ok``, its definition (``job_hash``) is unchanged
and every file listed in it still has the recorded sha256 (and, by default, its input files
still have theirs). Everything else is (re)run. Outputs depend only on ``(job, seed)`` (given
the backend, device and torch CPU thread count), so an interrupted and resumed batch is
byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from unidg_rt.errors import ConfigError, UniDGError
from unidg_rt.jobs.inputs import load_job_inputs
from unidg_rt.jobs.io import (
    ResultsLog,
    atomic_write_bytes,
    remove_stale_temp_files,
    run_lock,
    sha256_bytes,
    sha256_file,
)
from unidg_rt.jobs.manifest import (
    GenerationOverrides,
    Job,
    Manifest,
    ManifestError,
    Plan,
    expand_plan,
    load_manifest,
)

logger = logging.getLogger(__name__)

RecordCallback = Callable[[dict[str, Any]], None]
_INPUT_FIELDS = ("image", "mask", "reference_image", "reference_mask")


@dataclass
class BatchSummary:
    """What a batch did. ``exit_code``: 0 when nothing failed, else 1."""

    out_dir: Path
    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "total": self.total,
            "ok": self.ok,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": [list(f) for f in self.failures],
            "elapsed_s": round(self.elapsed_s, 3),
        }


def as_manifest(source: Manifest | Path | str, plan: Plan | None = None) -> Manifest:
    """A manifest object, a JSONL file, or a folder of normal images (needs ``plan``)."""
    if isinstance(source, Manifest):
        return source
    path = Path(source)
    if path.is_dir():
        if plan is None:
            raise ConfigError(
                f"{path} is a folder: pass a plan (e.g. --plan plan.json or --categories scratch,hole) "
                "to say which defects to put into its images"
            )
        return expand_plan(path, plan)
    return load_manifest(path)


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a uint8 ``[H, W, 3]`` or bool/uint8 ``[H, W]`` array (deterministic)."""
    from PIL import Image

    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # only report it when the backend uses torch
    return torch.get_num_threads() if torch is not None else None


def _base_record(job: Job, job_hash: str) -> dict[str, Any]:
    return {
        "id": job.id,
        "job_hash": job_hash,
        "seed": job.seed,
        "count": job.count,
        "mode": job.mode,
        "category": job.category,
        "label": job.label,
        "product": job.product,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "torch_threads": _torch_threads(),
    }


def failed_record(job_id: str, reason: str, *, job: Job | None = None, job_hash: str = "", **extra) -> dict:
    rec = _base_record(job, job_hash) if job is not None else {"id": job_id}
    rec.update(status="failed", reason=reason, finished_at=_now(), **extra)
    return rec


def _write(out_dir: Path, rel: str, data: bytes, files: dict[str, str]) -> None:
    digest = sha256_bytes(data)
    path = out_dir / rel
    # shared files (normals) may already be there, written by another job or worker
    if not (rel.startswith("normals/") and sha256_file(path, missing_ok=True) == digest):
        atomic_write_bytes(path, data)
    files[rel] = digest


def execute_job(pipe, job: Job, out_dir: Path, defaults: GenerationOverrides | None = None) -> dict[str, Any]:
    """Run one job and write its files atomically; returns its record (never raises for a bad
    job: the failure is in the record). The caller appends the record to the log."""
    out_dir = Path(out_dir)
    job_hash = job.fingerprint(defaults)
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    try:
        inputs = load_job_inputs(job)
        timing["load_s"] = time.perf_counter() - t0
        eff = job.settings.merged_over(defaults)
        t1 = time.perf_counter()
        out = pipe(
            image=inputs.image,
            mask_image=inputs.mask,
            reference_image=inputs.reference_image,
            reference_mask=inputs.reference_mask,
            defect_category=job.category if job.mode == "text" else None,
            height=eff.height,
            width=eff.width,
            num_inference_steps=eff.num_inference_steps,
            guidance_scale=eff.guidance_scale,
            feather=eff.feather,
            paste_mode=eff.paste_mode,
            segments=eff.segments,
            seed=job.seed,
            num_images_per_prompt=job.count,
            output_type="pil",
        )
        timing["generate_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        files: dict[str, str] = {}
        normal_rel = f"normals/{inputs.checksums['image'][:16]}.png"
        _write(out_dir, normal_rel, png_bytes(inputs.image), files)
        mask_rel = f"masks/{job.id}.png"
        _write(out_dir, mask_rel, png_bytes(inputs.mask), files)
        image_rels = []
        for k, img in enumerate(out.images):
            rel = f"images/{job.id}_{k:03d}.png"
            _write(out_dir, rel, png_bytes(np.asarray(img)), files)
            image_rels.append(rel)
        timing["write_s"] = time.perf_counter() - t2
    except Exception as exc:  # noqa: BLE001 — a bad job must never stop the batch
        if isinstance(exc, UniDGError):
            reason = str(exc)
            logger.warning("job %s failed: %s", job.id, reason)
        else:  # not an input problem: keep the traceback in the log, it is likely a bug
            reason = f"{type(exc).__name__}: {exc}"
            logger.exception("job %s failed unexpectedly", job.id)
        timing["total_s"] = time.perf_counter() - t0
        return failed_record(
            job.id,
            reason,
            job=job,
            job_hash=job_hash,
            error_type=type(exc).__name__,
            timing={k: round(v, 4) for k, v in timing.items()},
        )
    timing["total_s"] = time.perf_counter() - t0
    ys, xs = np.nonzero(inputs.mask)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / min(inputs.mask.shape)
    info = {k: v for k, v in out.info.items() if k not in ("sigmas", "seeds")}
    rec = _base_record(job, job_hash)
    rec.update(
        status="ok",
        reason=None,
        seeds=list(out.seeds),
        defect_scale=round(float(extent), 4),
        settings={
            "height": info.get("height"),
            "width": info.get("width"),
            "num_inference_steps": info.get("num_inference_steps"),
            "guidance_scale": info.get("guidance_scale"),
            "feather": eff.feather
            if eff.feather is not None
            else getattr(pipe, "defaults", {}).get("feather"),
            "paste_mode": eff.paste_mode
            if eff.paste_mode is not None
            else getattr(pipe, "defaults", {}).get("paste"),
            "segments": eff.segments,
        },
        pipeline=info,
        inputs={k: str(getattr(job, k)) for k in inputs.checksums},
        input_sha256=inputs.checksums,
        files=files,
        outputs={"images": image_rels, "mask": mask_rel, "normal": normal_rel},
        timing={k: round(v, 4) for k, v in timing.items()},
        finished_at=_now(),
    )
    return rec


def check_done(
    record: dict | None,
    job: Job,
    job_hash: str,
    out_dir: Path,
    check_inputs: bool = True,
    input_cache: dict[Path, str | None] | None = None,
) -> str | None:
    """``None`` when ``record`` proves the job done, else why it must be (re)run.
    ``input_cache`` memoises input checksums (many jobs share one normal image)."""
    if record is None:
        return "not run yet"
    if record.get("status") != "ok":
        return f"last attempt {record.get('status')}"
    if record.get("job_hash") != job_hash:
        return "job definition changed since it was run"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "record lists no files"
    for rel, digest in files.items():
        if not isinstance(rel, str) or not isinstance(digest, str):
            return "record is malformed"
        actual = sha256_file(out_dir / rel, missing_ok=True)
        if actual is None:
            return f"{rel} is missing"
        if actual != digest:
            return f"{rel} is corrupt (sha256 mismatch)"
    if check_inputs:
        inputs = record.get("input_sha256")
        for name, digest in (inputs if isinstance(inputs, dict) else {}).items():
            path = getattr(job, name, None) if name in _INPUT_FIELDS else None
            if path is None:
                continue
            cache = input_cache if input_cache is not None else {}
            if path not in cache:
                cache[path] = sha256_file(Path(path), missing_ok=True)
            if cache[path] != digest:
                return f"input {name} changed since it was run"
    return None


class Batch:
    """Shared bookkeeping of :func:`run_jobs` and ``run_jobs_ray``: lock, resume selection,
    recording and the summary. Use as a context manager; ``todo`` lists the jobs to run."""

    def __init__(
        self,
        manifest: Manifest,
        out_dir: Path | str,
        defaults: GenerationOverrides | None = None,
        on_record: RecordCallback | None = None,
        check_inputs: bool = True,
    ):
        self.manifest = manifest
        self.out_dir = Path(out_dir)
        self.defaults = defaults
        self.on_record = on_record
        self.check_inputs = check_inputs
        self.summary = BatchSummary(out_dir=self.out_dir, total=len(manifest))
        self.todo: list[Job] = []
        self._t0 = 0.0
        self._lock = None
        self.log: ResultsLog | None = None

    def __enter__(self) -> Batch:
        self._t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = run_lock(self.out_dir)
        self._lock.__enter__()
        try:
            remove_stale_temp_files(self.out_dir)
            self.log = ResultsLog(self.out_dir)
            latest = self.log.latest()
            for err in self.manifest.errors:
                self.record(self._manifest_error_record(err))
            input_cache: dict[Path, str | None] = {}
            for job in self.manifest.jobs:
                fingerprint = job.fingerprint(self.defaults)
                rec = latest.get(job.id)
                why = check_done(rec, job, fingerprint, self.out_dir, self.check_inputs, input_cache)
                if why is None:
                    self.summary.skipped += 1
                    continue
                if job.id in latest:
                    logger.info("job %s: re-running (%s)", job.id, why)
                self.todo.append(job)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        logger.info(
            "batch %s: %d to run, %d already done, %d bad line(s)",
            self.out_dir,
            len(self.todo),
            self.summary.skipped,
            len(self.manifest.errors),
        )
        return self

    def __exit__(self, *exc) -> None:
        self.summary.elapsed_s = time.perf_counter() - self._t0
        self._lock.__exit__(*exc)

    @staticmethod
    def _manifest_error_record(err: ManifestError) -> dict[str, Any]:
        return failed_record(err.id, err.reason, line=err.line, error_type="ManifestError")

    def record(self, rec: dict[str, Any]) -> None:
        """Append a finished attempt (files must already be in place) and count it."""
        self.log.append(rec)
        if rec.get("status") == "ok":
            self.summary.ok += 1
        else:
            self.summary.failed += 1
            self.summary.failures.append((rec["id"], str(rec.get("reason"))))
        if self.on_record is not None:
            self.on_record(rec)


def run_jobs(
    pipeline_factory: Callable[[], Any],
    manifest: Manifest | Path | str,
    out_dir: Path | str,
    *,
    plan: Plan | None = None,
    defaults: GenerationOverrides | None = None,
    on_record: RecordCallback | None = None,
    check_inputs: bool = True,
) -> BatchSummary:
    """Run every job of ``manifest`` not already done in ``out_dir``, in this process.

    ``pipeline_factory()`` builds the pipeline (called once, and only if there is work left).
    ``defaults`` are batch-wide settings under each job's own ``settings``. ``on_record`` is
    called with every record after it is durably logged (progress bars, monitoring).
    """
    manifest = as_manifest(manifest, plan)
    with Batch(manifest, out_dir, defaults, on_record, check_inputs) as batch:
        if batch.todo:
            pipe = pipeline_factory()
            for job in batch.todo:
                batch.record(execute_job(pipe, job, batch.out_dir, defaults))
    s = batch.summary
    logger.info("batch done: %d ok, %d skipped, %d failed in %.1f s", s.ok, s.skipped, s.failed, s.elapsed_s)
    return s
