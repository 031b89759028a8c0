"""evaluate() on the tiny random checkpoint: 2 cases × 2 seeds × 2 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unidg_rt.evaluation import Variant, build_eval_set, default_variants, evaluate, report_markdown

METRICS = {
    "presence_mean",
    "presence_rate",
    "background_max_error",
    "consistency",
    "diversity",
    "fd",
    "s_per_image",
    "consistency_by_category",
    "consistency_by_mode",
    "images",
    "predicted_share",
}


@pytest.fixture(scope="module")
def tiny_pipe(tiny_checkpoint):
    from unidg_rt.runtime.pipeline import UniDGPipeline

    return UniDGPipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def cases():
    return build_eval_set(2, ["scratch", "hole"], modes=("reference", "text"), size=64)


def test_evaluate_reports_every_metric_and_exact_background(tiny_pipe, cases, tiny_classifier):
    report = evaluate(tiny_pipe, cases, num_seeds=2, num_inference_steps=2, classifier=tiny_classifier)
    assert list(report.variants) == ["SFT", "SFT+APO"]
    for name, m in report.variants.items():
        assert METRICS <= set(m), name
        assert m["images"] == 4
        assert m["background_max_error"] == 0.0
        assert 0.0 <= m["consistency"] <= 1.0
        assert m["presence_mean"] > 0  # the random model changes the mask region
        assert m["diversity"] > 0  # two seeds differ
        share = m["predicted_share"]
        assert abs(sum(share.values()) - 1.0) < 1e-9 and list(share.values()) == sorted(
            share.values(), reverse=True
        )
    assert (
        report.variants["SFT"]["presence_mean"] == report.variants["SFT+APO"]["presence_mean"]
    )  # no adapter
    assert report.comparison["metrics"]["background_max_error"]["verdict"] == "ok"
    assert report.comparison["metrics"]["consistency"]["verdict"] == "same"
    assert set(report.baselines) == {"real", "flat_fill"}
    assert report.baselines["real"]["background_max_error"] == 0.0
    s = report.settings
    assert (s["num_cases"], s["num_seeds"], s["num_inference_steps"]) == (2, 2, 2)
    assert report.wall_s > 0
    assert len(report.per_image["SFT"]) == 4
    json.dumps(report.to_dict())  # serialisable
    md = report_markdown(report)
    assert "| category consistency" in md
    by_mode = report.variants["SFT"]["consistency_by_mode"]
    assert set(by_mode) == {c.mode for c in cases}
    for mode in s["modes"]:  # one row per mode asked for; "–" where the set has no such case
        cell = f"{by_mode[mode]:.0%}" if mode in by_mode else "–"
        assert f"| — {mode} mode | {cell} |" in md
    share = report.variants["SFT+APO"]["predicted_share"]
    for c in s["categories"]:  # the per-category table: one row each, with the results' share
        sft = report.variants["SFT"]["consistency_by_category"][c]
        assert f"| {c} | {sft:.0%} |" in md and md.count(f"| {share.get(c, 0.0):.0%} |\n") >= 1


def test_variants_set_adapters_per_call_and_restore_them(tiny_checkpoint, cases, tiny_classifier):
    from unidg_rt.runtime.pipeline import UniDGPipeline

    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    pipe.backend.adapters.add("apo", rank=2, init="random")  # non-zero B: the adapter changes outputs
    pipe.set_adapters("apo", 0.7)
    variants = default_variants(pipe)
    assert variants[0].adapter_scales == {"apo": 0.0} and variants[1].adapter_scales == {"apo": 0.7}
    report = evaluate(
        pipe, cases[:1], variants, num_seeds=1, num_inference_steps=2, classifier=tiny_classifier
    )
    sft, apo = report.per_image["SFT"][0], report.per_image["SFT+APO"][0]
    assert sft["presence"] != apo["presence"]
    assert pipe.backend.adapters.adapters["apo"].strength == 0.7  # restored


def test_default_variants_share_the_card_segments_with_adapters_off_for_sft(tiny_checkpoint):
    from unidg_rt.runtime.pipeline import UniDGPipeline

    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    pipe.backend.adapters.add("apo", rank=2, init="random")
    segs = [{"start": 0.0, "end": 1.0, "adapter_scales": {"apo": 1.0}, "true_cfg_scale": 4.0}]
    pipe.replace_defaults(segments=segs)
    sft, apo = default_variants(pipe)
    assert apo.call_kwargs["segments"] == segs
    assert sft.call_kwargs["segments"] == [{**segs[0], "adapter_scales": {"apo": 0.0}}]


def test_a_variant_is_a_pipeline_plus_call_kwargs(tiny_pipe, cases, tiny_classifier):
    variants = [Variant("2 steps"), Variant("guidance 1", call_kwargs={"guidance_scale": 1.0})]
    report = evaluate(
        tiny_pipe, cases[:1], variants, num_seeds=1, num_inference_steps=2, classifier=tiny_classifier
    )
    assert list(report.variants) == ["2 steps", "guidance 1"]
    assert np.isnan(report.variants["2 steps"]["diversity"])  # one seed: undefined
    assert report.comparison["candidate"] == "guidance 1"
