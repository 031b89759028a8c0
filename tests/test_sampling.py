"""FLUX schedules equal diffusers' FlowMatchEulerDiscreteScheduler; Euler step; segments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unidg_rt.errors import InvalidInputError
from unidg_rt.sampling import (
    Segment,
    SegmentSchedule,
    calculate_shift,
    euler_step,
    flux_sigmas,
    timesteps_from_sigmas,
)

diffusers = pytest.importorskip("diffusers")


def _scheduler():
    return diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


@pytest.mark.parametrize("steps,seq", [(1, 64), (8, 2048), (28, 1024), (50, 4608)])
def test_schedule_equals_diffusers(steps, seq):
    from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift as d_shift

    mu = d_shift(seq, 256, 4096, 0.5, 1.15)
    assert calculate_shift(seq) == pytest.approx(mu, abs=1e-12)
    s = _scheduler()
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = flux_sigmas(steps, seq)
    assert np.abs(s.sigmas.numpy() - ours).max() <= 1e-7
    assert np.abs(s.timesteps.numpy() - timesteps_from_sigmas(ours)).max() <= 1e-4


def test_custom_sigmas_equal_diffusers():
    custom = [1.0, 0.8, 0.5, 0.2]
    s = _scheduler()
    s.set_timesteps(sigmas=custom, mu=calculate_shift(1024))
    assert np.abs(s.sigmas.numpy() - flux_sigmas(4, 1024, custom)).max() <= 1e-7
    assert np.allclose(flux_sigmas(4, 1024, custom, shift=False)[:-1], custom)


def test_euler_step_numpy_and_torch_match_diffusers():
    s = _scheduler()
    s.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=0.8)
    x = torch.randn(1, 16, 8)
    v = torch.randn(1, 16, 8)
    expected = s.step(v, s.timesteps[0], x).prev_sample
    sig = s.sigmas.numpy()
    got_t = euler_step(x, v, sig[0], sig[1])
    got_n = euler_step(x.numpy(), v.numpy(), sig[0], sig[1])
    assert torch.allclose(got_t, expected, atol=1e-7)
    assert np.allclose(got_n, expected.numpy(), atol=1e-7)


@pytest.mark.parametrize("bad", [[0.5, 0.9], [1.5], [0.0], [float("nan")], []])
def test_bad_sigmas(bad):
    with pytest.raises(InvalidInputError, match="sigmas"):
        flux_sigmas(len(bad) or 1, 256, bad)


def test_bad_steps():
    with pytest.raises(InvalidInputError, match="num_inference_steps"):
        flux_sigmas(0, 256)


def test_segments_cover_steps_and_round_trip():
    sched = SegmentSchedule.from_data(
        '[{"start": 0.0, "end": 0.5, "guidance_scale": 5.0, "adapter_scales": {"apo": 0.0}},'
        ' {"start": 0.5, "end": 1.0, "adapter_scales": {"apo": 1.0}}]'
    )
    picks = [sched.at(i, 8) for i in range(8)]
    assert [p.adapter_scales["apo"] for p in picks] == [0.0] * 4 + [1.0] * 4
    assert SegmentSchedule.from_data(sched.to_data()) == sched
    with pytest.raises(InvalidInputError, match="overlap"):
        SegmentSchedule((Segment(0.0, 0.6), Segment(0.5, 1.0)))
