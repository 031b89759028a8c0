"""Ray Data scale-out: same outputs and resume semantics as the single-process runner.

`test_job_actor_without_ray` runs the actor code path (job JSON round trip, one pipeline per
actor, records streamed back into the Batch) in-process, so it runs even where Ray is not
installed; `test_ray_two_workers_equal_single_process` runs a real local Ray cluster."""

from __future__ import annotations

import json
import os
import socket

import pytest

from unidg_rt.jobs.manifest import load_manifest
from unidg_rt.jobs.ray_runner import JobActor
from unidg_rt.jobs.runner import Batch, run_jobs


def test_job_actor_without_ray(inputs_dir, kit, tiny_factory):
    m = kit.write_manifest(inputs_dir / "m.jsonl", kit.good_jobs(3) + ["{bad"])
    single = run_jobs(tiny_factory, m, inputs_dir / "single", defaults=kit.FAST)
    manifest = load_manifest(m)
    with Batch(manifest, inputs_dir / "actor", kit.FAST) as batch:
        actor = JobActor(tiny_factory, str(batch.out_dir), kit.FAST.model_dump(), torch_threads=None)
        out = actor({"job": [job.model_dump_json() for job in batch.todo]})
        for rec in out["record"]:
            batch.record(json.loads(rec))
    assert (batch.summary.ok, batch.summary.failed) == (single.ok, single.failed) == (3, 1)
    assert kit.tree_bytes(inputs_dir / "actor") == kit.tree_bytes(inputs_dir / "single")
    # the actor's records are valid resume state for the single-process runner and vice versa
    again = run_jobs(tiny_factory, m, inputs_dir / "actor", defaults=kit.FAST)
    assert (again.skipped, again.ok) == (3, 0)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_two_workers_equal_single_process(ray_cluster, inputs_dir, kit, tiny_factory):
    from unidg_rt.jobs.ray_runner import run_jobs_ray

    jobs = kit.good_jobs(6) + [
        {"id": "bad", "image": "missing.png", "mask": "mask_0.png", "category": "hole"}
    ]
    m = kit.write_manifest(inputs_dir / "m.jsonl", jobs)
    # this process runs with 1 torch thread (conftest); actors get torch_threads=1 to match
    single = run_jobs(tiny_factory, m, inputs_dir / "single", defaults=kit.FAST)
    out = inputs_dir / "ray"
    # resume semantics: two jobs already done by the single-process runner are skipped
    run_jobs(tiny_factory, kit.write_manifest(inputs_dir / "m2.jsonl", jobs[:2]), out, defaults=kit.FAST)
    s = run_jobs_ray(tiny_factory, m, out, defaults=kit.FAST, num_workers=2, torch_threads=1)
    assert (s.ok, s.skipped, s.failed, s.exit_code) == (4, 2, 1, 1) and single.ok == 6
    assert kit.tree_bytes(out) == kit.tree_bytes(inputs_dir / "single")
    assert kit.ok_counts(out) == {f"job-{i:02d}": 1 for i in range(6)}
    workers = {json.loads(x)["worker"] for x in (out / "results.jsonl").read_text().splitlines()[2:]}
    assert f"{socket.gethostname()}:{os.getpid()}" not in workers  # actors ran them, not the driver
    print(f"ray: {len(workers)} actor process(es) ran the jobs")
    assert run_jobs_ray(tiny_factory, m, out, defaults=kit.FAST, num_workers=2).skipped == 6
