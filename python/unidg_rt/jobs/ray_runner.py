"""Scale-out of the batch runner on Ray Data: ``map_batches`` over an actor pool.

Each actor builds one pipeline (``pipeline_factory()``, once) and runs jobs with the very same
:func:`~unidg_rt.jobs.runner.execute_job` as the single-process runner, writing files into
``out_dir`` itself (which must therefore be on a filesystem every worker sees: local disk for
a one-node cluster, NFS/Lustre/… for several nodes). The driver appends the records as they
stream back, so resume, skip and failure semantics are identical to :func:`run_jobs`, and the
outputs are byte-identical for the same jobs and seeds.

Ray is optional: ``pip install 'ray[data]'`` (the ``ray`` extra).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unidg_rt.errors import BackendUnavailableError
from unidg_rt.jobs.manifest import GenerationOverrides, Job, Manifest, Plan
from unidg_rt.jobs.runner import Batch, BatchSummary, RecordCallback, as_manifest, execute_job

logger = logging.getLogger(__name__)


class JobActor:
    """Ray Data callable class: one pipeline per actor, one record (JSON) per input job."""

    def __init__(
        self,
        pipeline_factory: Callable[[], Any],
        out_dir: str,
        defaults: dict | None,
        torch_threads: int | None,
    ):
        if torch_threads:
            import torch

            # same intra-op thread count as the driver's run: CPU kernels may reduce in a
            # different order with a different thread count
            torch.set_num_threads(torch_threads)
        self.pipe = pipeline_factory()
        self.out_dir = Path(out_dir)
        self.defaults = GenerationOverrides(**defaults) if defaults else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        records = []
        for job_json in batch["job"]:
            job = Job.model_validate_json(job_json)
            records.append(json.dumps(execute_job(self.pipe, job, self.out_dir, self.defaults), default=str))
        return {"record": records}


def run_jobs_ray(
    pipeline_factory: Callable[[], Any],
    manifest: Manifest | Path | str,
    out_dir: Path | str,
    *,
    plan: Plan | None = None,
    defaults: GenerationOverrides | None = None,
    num_workers: int = 1,
    num_gpus_per_worker: float = 0.0,
    num_cpus_per_worker: float = 1.0,
    torch_threads: int | None = None,
    ray_address: str | None = None,
    on_record: RecordCallback | None = None,
    check_inputs: bool = True,
    progress_bars: bool = False,
) -> BatchSummary:
    """Like :func:`~unidg_rt.jobs.runner.run_jobs`, on Ray Data with ``num_workers`` actors.

    ``pipeline_factory`` must be picklable (e.g. ``functools.partial(build_pipeline, settings)``).
    ``num_gpus_per_worker``: GPUs reserved per actor (``1`` = one model per GPU; ``0.5`` packs
    two per GPU). ``ray_address``: an existing cluster (``"auto"``); without one, and when Ray
    is not initialised yet, a local cluster is started for this call and shut down after it.
    ``torch_threads``: ``torch.set_num_threads`` in every actor. CPU kernels may sum in a
    different order with a different thread count, so for outputs byte-identical to a
    single-process CPU run give the thread count that run used (the record's ``torch_threads``).
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BackendUnavailableError(
            "run_jobs_ray needs Ray Data: pip install 'ray[data]' (or unidg-rt[ray]), or run without --ray"
        ) from exc
    manifest = as_manifest(manifest, plan)
    with Batch(manifest, out_dir, defaults, on_record, check_inputs) as batch:
        if not batch.todo:
            return batch.summary
        started = not ray.is_initialized()
        if started:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = progress_bars
            items = [{"job": job.model_dump_json()} for job in batch.todo]
            ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1000))
            ds = ds.map_batches(
                JobActor,
                batch_size=1,
                # one job in flight per actor: even load, and a killed driver loses at most
                # num_workers jobs in flight (their files may exist; without a record they rerun)
                compute=ray.data.ActorPoolStrategy(
                    size=max(1, min(num_workers, len(items))), max_tasks_in_flight_per_actor=1
                ),
                num_cpus=num_cpus_per_worker,
                num_gpus=num_gpus_per_worker or None,
                fn_constructor_kwargs={
                    "pipeline_factory": pipeline_factory,
                    "out_dir": str(batch.out_dir.resolve()),
                    "defaults": defaults.model_dump() if defaults else None,
                    "torch_threads": torch_threads,
                },
            )
            for row in ds.iter_rows():  # streams: each record is logged as soon as its job ends
                batch.record(json.loads(row["record"]))
        finally:
            if started:
                ray.shutdown()
    s = batch.summary
    logger.info(
        "ray batch done: %d ok, %d skipped, %d failed in %.1f s", s.ok, s.skipped, s.failed, s.elapsed_s
    )
    return s
