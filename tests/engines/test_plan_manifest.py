"""Plan naming, sidecars, and the refusals (with their rebuild commands) — no TensorRT needed."""

from __future__ import annotations

import json
import shutil

import pytest

from unidg_rt.artifacts import plan as mf
from unidg_rt.engines.build import build_engine
from unidg_rt.errors import (
    BackendUnavailableError,
    ConfigError,
    EngineMismatchError,
    InvalidInputError,
    WeightsError,
)

PROFILE = {"hidden_states": ((1, 4, 8), (1, 16, 8), (2, 64, 8))}


@pytest.fixture
def plan(fake_trt, tiny_onnx, tmp_path):
    """A plan + sidecar written by build_engine over the fake TensorRT-RTX bindings (sm89)."""
    return build_engine(
        tiny_onnx,
        tmp_path / "plans",
        builder="tensorrt-rtx",
        precision="fp16",
        profiles=PROFILE,
        target="8.9",
        trt_module=fake_trt("rtx"),
    )


def test_cc_and_target_vocabulary():
    for raw in ("8.9", 8.9, "89", "sm89", "sm_89", (8, 9)):
        assert mf.normalize_cc(raw) == "8.9"
    assert mf.normalize_cc("sm120") == "12.0" and mf.normalize_cc("121") == "12.1"
    with pytest.raises(ConfigError, match="RTX 4090"):
        mf.normalize_cc("ada")
    assert mf.target_tag(["12.0", "8.6", "8.9"]) == "sm86_sm89_sm120"
    assert mf.target_tag(None) == "portable" and mf.target_tag(None, "AMPERE_PLUS") == "ampereplus"
    assert mf.normalize_precision("FLOAT16") == "fp16" and mf.normalize_precision("BF16") == "bf16"
    with pytest.raises(ConfigError, match="fp32, bf16, fp16, fp8, int8"):
        mf.normalize_precision("fp64")


def test_plan_name_round_trip():
    name = mf.plan_name("transformer-fold", "fp16", "sm86_sm89", "tensorrt-rtx", "1.7.1.116", "ab" * 32)
    assert name == "transformer-fold.fp16.sm86_sm89.trtrtx-1.7.1.116.abababababab.plan"
    assert mf.parse_plan_name(name) == {
        "component": "transformer-fold",
        "precision": "fp16",
        "target": "sm86_sm89",
        "builder": "tensorrt-rtx",
        "builder_version": "1.7.1.116",
        "onnx_hash": "abababababab",
    }
    assert (
        mf.parse_plan_name("vae_decoder.fp16.sm87.trt-10.3.0.30.0123456789ab.plan")["builder"] == "tensorrt"
    )
    assert mf.parse_plan_name("model.plan") is None
    with pytest.raises(ConfigError, match="without dots"):
        mf.plan_name("a.b", "fp16", "sm89", "tensorrt", "10.3", "00")


def test_sidecar_contents(plan, tiny_onnx):
    m = json.loads(plan.manifest_path.read_text())
    assert plan.manifest_path.name == plan.plan_path.name.replace(".plan", ".json")
    assert m["format"] == mf.MANIFEST_FORMAT and m["onnx"]["sha256"] == mf.onnx_sha256(tiny_onnx)
    assert m["builder"] == "tensorrt-rtx" and m["builder_version"] == "1.7.1.116"
    assert m["precision"] == "fp16" and m["target"]["compute_capabilities"] == ["8.9"]
    assert m["profiles"] and m["unidg_rt_version"] and m["plan"]["bytes"] == plan.plan_path.stat().st_size
    assert m["io"]["inputs"][0] == {"name": "hidden_states", "dtype": "FLOAT", "shape": [-1, -1, 8]}


def _cmd(plan, tiny_onnx, target="--target 8.9"):
    return (
        f"unidg-rt build {tiny_onnx.parent} --builder tensorrt-rtx {target} --precision fp16 "
        f"--component transformer-fold --out {plan.plan_path.parent}"
    )


def test_accepts_matching_plan(plan, tiny_onnx):
    m = mf.check_plan(plan.plan_path, onnx_path=tiny_onnx, device_cc="8.9", builder_version="1.7.1.116")
    assert m["component_tag"] == "transformer-fold"


def test_refuses_changed_onnx_with_rebuild_command(plan, tiny_onnx):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_onnx))  # "re-exported" with other weights
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros(8, np.float16), "w"))
    onnx.save(model, str(tiny_onnx))
    with pytest.raises(EngineMismatchError) as err:
        mf.check_plan(plan.plan_path, onnx_path=tiny_onnx)
    msg = str(err.value)
    assert "the model or its export changed" in msg and _cmd(plan, tiny_onnx) in msg


def test_refuses_other_gpu(plan, tiny_onnx):
    with pytest.raises(EngineMismatchError) as err:
        mf.check_plan(plan.plan_path, device_cc="8.6")
    assert "built for sm89, this GPU is sm86" in str(err.value)
    assert _cmd(plan, tiny_onnx, "--target 8.6") in str(err.value)
    with pytest.raises(EngineMismatchError) as err:  # the H100: TensorRT-RTX has no sm90 target
        mf.check_plan(plan.plan_path, device_cc="9.0")
    assert "TensorRT-RTX does not support" in str(err.value) and "--builder tensorrt " in str(err.value)


def test_refuses_other_builder_version(plan):
    with pytest.raises(
        EngineMismatchError, match=r"built by tensorrt-rtx 1\.7\.1\.116, the runtime is 1\.8\.0"
    ):
        mf.check_plan(plan.plan_path, builder_version="1.8.0")


def test_refuses_foreign_or_tampered_plans(plan):
    foreign = plan.plan_path.with_name("downloaded.plan")
    shutil.copy(plan.plan_path, foreign)
    with pytest.raises(EngineMismatchError, match="no unidg_rt sidecar .*only plans built by unidg_rt"):
        mf.check_plan(foreign)
    data = bytearray(plan.plan_path.read_bytes())
    data[0] ^= 1
    plan.plan_path.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match="plan sha256 does not match its sidecar"):
        mf.check_plan(plan.plan_path)
    plan.plan_path.write_bytes(bytes(data) + b"x")
    with pytest.raises(EngineMismatchError, match="file replaced or truncated"):
        mf.check_plan(plan.plan_path)
    info = mf.inspect_plan(foreign)
    assert info["manifest"] is None and "will refuse" in info["status"]


def test_rtx_portable_and_ampere_plus_targets():
    portable = {
        "builder": "tensorrt-rtx",
        "target": {
            "compute_capabilities": None,
            "builder_supported": ["7.5", "8.0", "8.6", "8.9", "12.0", "12.1"],
        },
    }
    assert [mf.runs_on(portable, c) for c in ("8.6", "8.9", "12.0", "7.5", "9.0", "8.7")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    amp = {"builder": "tensorrt", "target": {"hardware_compatibility": "AMPERE_PLUS"}}
    assert mf.runs_on(amp, "9.0") and not mf.runs_on(amp, "7.5")


def test_inspect_plan_reports_manifest(plan):
    info = mf.inspect_plan(plan.plan_path)
    assert info["status"].startswith("ok") and info["name_fields"]["target"] == "sm89"
    assert info["manifest"]["layer_report"] == plan.manifest["layer_report"]  # the sidecar, as written


def test_cli_inspect_plan(plan):
    from typer.testing import CliRunner

    from unidg_rt.cli.app import app

    res = CliRunner().invoke(app, ["inspect", str(plan.plan_path)])
    assert res.exit_code == 0, res.output
    assert '"status": "ok: sidecar present, plan hash matches"' in res.output


# ----------------------------------------------------------------------------- from_engines selection
def _three_roles(fake_trt, tmp_path, tiny_onnx, **kw):
    out = tmp_path / "plans"
    for tag in ("transformer-decomposed", "transformer-fold", "vae_encoder", "vae_decoder"):
        build_engine(
            tiny_onnx,
            out,
            builder="tensorrt-rtx",
            precision="fp16",
            profiles=PROFILE,
            component=tag,
            trt_module=fake_trt("rtx"),
            **kw,
        )
    return out


def test_select_plans_prefers_fold_and_refuses_wrong_gpu(fake_trt, tmp_path, tiny_onnx):
    from unidg_rt.artifacts.card import card_from_plan
    from unidg_rt.artifacts.plan_folder import select_plans

    out = _three_roles(fake_trt, tmp_path, tiny_onnx, target="8.9")
    chosen = select_plans(out, "8.9", runtime_versions={"tensorrt-rtx": "1.7.1.116"})
    assert chosen["transformer"][1]["component_tag"] == "transformer-fold"
    assert set(chosen) == {"transformer", "vae_encoder", "vae_decoder"}
    assert (
        select_plans(out, "8.9", variant="decomposed")["transformer"][1]["component_tag"]
        == "transformer-decomposed"
    )
    with pytest.raises(EngineMismatchError, match="this GPU is sm120.*\n  unidg-rt build .*--target 12.0"):
        select_plans(out, "12.0")
    with pytest.raises(InvalidInputError, match="no transformer plan .* with precision bf16"):
        select_plans(out, "8.9", precision="bf16")
    # facts are read from the sidecar, never guessed from tensor shapes: a plan built from a
    # graph without its exported folder's manifest is refused with the rebuild command
    path, manifest = chosen["transformer"]
    with pytest.raises(
        WeightsError, match="lacks the pipeline facts .*rebuild it with `unidg-rt build ONNX_DIR`"
    ):
        card_from_plan(manifest.get("metadata") or {}, out, path.name)
    facts = {
        "text_seq_len": 8,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 16,
        "latent_channels": 2,
        "vae_scale_factor": 8,
        "guidance_embeds": False,
        "defaults": {"height": 64},
    }
    card = card_from_plan(facts, out, path.name)
    assert card.facts.latent_channels == 2 and card.facts.guidance_embeds is False
    assert card.defaults.height == 64 and card.base == out


def test_select_plans_takes_the_reference_encoder_when_built(fake_trt, tmp_path, tiny_onnx):
    """``reference_encoder`` is an optional role: chosen when the folder has a plan, absent otherwise;
    a checkpoint whose card names one is refused without it (reference mode would silently change)."""
    from unidg_rt.artifacts.plan_folder import reference_image_size, select_plans

    out = _three_roles(fake_trt, tmp_path, tiny_onnx, target="8.9")
    assert "reference_encoder" not in select_plans(out, "8.9")
    build_engine(
        tiny_onnx,
        out,
        builder="tensorrt-rtx",
        precision="fp16",
        profiles=PROFILE,
        component="reference_encoder",
        target="8.9",
        trt_module=fake_trt("rtx"),
    )
    chosen = select_plans(out, "8.9")
    assert set(chosen) == {"transformer", "vae_encoder", "vae_decoder", "reference_encoder"}
    assert chosen["reference_encoder"][1]["component"] == "reference_encoder"
    io = {"inputs": [{"name": "images", "dtype": "FLOAT", "shape": [-1, 3, 48, 48]}]}
    assert reference_image_size({"io": io}) == 48
    assert reference_image_size({"metadata": {"spec_attrs": {"image_size": 96}}}) == 96


def test_reference_encoder_runner_without_a_gpu():
    import numpy as np

    from unidg_rt.runtime.conditioning import ReferenceEncoderRunner

    class Echo:  # an engine stand-in: records the feed, returns the outputs' shapes
        def infer(self, feed):
            self.feed = feed
            return {"encoder_hidden_states": np.ones((1, 8, 4)), "pooled_projections": np.ones((1, 6))}

    engine = Echo()
    runner = ReferenceEncoderRunner(engine, 16)
    embeds, pooled = runner.encode(np.full((32, 32, 3), 255, np.uint8))
    assert embeds.shape == (8, 4) and pooled.shape == (6,) and embeds.dtype == np.float32
    assert engine.feed["images"].shape == (1, 3, 16, 16) and np.allclose(engine.feed["images"], 1.0)


def test_trt_backend_imports_without_tensorrt_and_needs_cuda(tmp_path):
    import unidg_rt.runtime.trt_backend  # noqa: F401 - imports without TensorRT
    from unidg_rt.runtime.pipeline import UniDGPipeline

    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        pytest.skip("this machine has CUDA: the no-GPU refusal is not observable here")
    with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
        UniDGPipeline.from_engines(tmp_path)


def test_trt_runner_feed_adaptation_matches_ort():
    """The part of the TensorRT runner that needs no GPU: optional inputs filled, tables broadcast and
    groups reduced exactly as ONNX Runtime's transformer runner prepares the same feed (both runners
    built without an engine / session; nothing is executed)."""
    import types

    import numpy as np
    import torch

    from unidg_rt.runtime.ort_backend import OrtTransformerRunner
    from unidg_rt.runtime.trt_backend import TRTRunner

    names = ("hidden_states", "encoder_hidden_states", "token_groups", "group_bias")
    runner = TRTRunner.__new__(TRTRunner)
    runner.torch, runner.device = torch, torch.device("cpu")
    runner.plan_path = mf.Path("transformer-fold.fp16.sm89.trtrtx-1.7.1.116.000000000000.plan")
    runner.input_names = names
    runner.engine = types.SimpleNamespace(get_tensor_shape=lambda name: (4, 2, 6, 6))
    ort = OrtTransformerRunner.__new__(OrtTransformerRunner)
    ort.component, ort.input_names = "transformer", names
    ort._shapes = {"group_bias": (4, 2, 6, 6)}
    ort._dtypes = {
        "hidden_states": np.float32,
        "encoder_hidden_states": np.float32,
        "token_groups": np.int64,
        "group_bias": np.float32,
    }

    def same_as_ort(feed):
        trt_feed, ort_feed = runner._adapt(feed), ort.prepare(feed)
        assert set(trt_feed) == set(ort_feed) == set(names)
        for name in names:
            np.testing.assert_array_equal(np.asarray(trt_feed[name]), ort_feed[name], err_msg=name)
        return trt_feed

    base = {
        "hidden_states": np.zeros((1, 16, 8), np.float32),
        "encoder_hidden_states": np.zeros((1, 8, 4), np.float32),
    }
    feed = same_as_ort({**base, "token_groups": None, "group_bias": None, "guidance": np.ones(1, np.float32)})
    assert tuple(feed["token_groups"].shape) == (24,) and tuple(feed["group_bias"].shape) == (4, 2, 6, 6)
    assert "guidance" not in feed and not feed["group_bias"].any()
    table = np.arange(36, dtype=np.float32).reshape(6, 6)
    feed = same_as_ort({**base, "token_groups": np.zeros((2, 24), np.int64), "group_bias": table})
    assert tuple(feed["token_groups"].shape) == (24,) and torch.equal(
        feed["group_bias"][3, 1], torch.from_numpy(table)
    )
    with pytest.raises(InvalidInputError, match="differ per batch row"):
        runner._adapt({**base, "token_groups": np.arange(48).reshape(2, 24), "group_bias": table})


def test_trt_runner_feeds_adapter_scales_like_ort():
    """Plans carrying LoRA branches: both runners feed the backend's strengths as
    ``adapter_scales [A]`` (float32, adapter order) unless the call passes them."""
    import numpy as np
    import torch

    from unidg_rt.artifacts.adapters import AdapterScales
    from unidg_rt.runtime.ort_backend import OrtTransformerRunner
    from unidg_rt.runtime.trt_backend import TRTRunner

    names = ("hidden_states", "encoder_hidden_states", "adapter_scales")
    scales = AdapterScales(["apo", "style"], {"apo": 0.5})
    runner = TRTRunner.__new__(TRTRunner)
    runner.torch, runner.device, runner.input_names, runner.adapters = (
        torch,
        torch.device("cpu"),
        names,
        scales,
    )
    runner.plan_path = mf.Path("transformer-fold.fp16.sm89.trtrtx-1.7.1.116.000000000000.plan")
    ort = OrtTransformerRunner.__new__(OrtTransformerRunner)
    ort.component, ort.input_names, ort.adapters = "transformer", names, scales
    ort._shapes, ort._dtypes = {"group_bias": (1, 1, 1, 1)}, dict.fromkeys(names, np.float32)
    base = {
        "hidden_states": np.zeros((1, 16, 8), np.float32),
        "encoder_hidden_states": np.zeros((1, 8, 4), np.float32),
        "token_groups": None,
        "group_bias": None,
    }
    for expected in ([0.5, 1.0], [0.0, 0.25]):
        trt_feed, ort_feed = runner._adapt(dict(base)), ort.prepare(dict(base))
        np.testing.assert_array_equal(trt_feed["adapter_scales"].numpy(), np.float32(expected))
        np.testing.assert_array_equal(ort_feed["adapter_scales"], np.float32(expected))
        scales.set({"apo": 0.0, "style": 0.25})
    given = np.float32([2.0, 3.0])
    assert np.array_equal(ort.prepare({**base, "adapter_scales": given})["adapter_scales"], given)


def test_engines_facade_resolves_every_name():
    """``unidg_rt.engines`` re-exports lazily; each name resolves (plan checks from artifacts.plan)."""
    import unidg_rt.engines as engines
    from unidg_rt.artifacts import plan

    for name in engines.__all__:
        assert getattr(engines, name) is not None
    assert engines.check_plan is plan.check_plan
