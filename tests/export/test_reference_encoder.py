"""The checkpoint's learned reference encoder (``unidg_rt.models.refenc``) on ONNX Runtime: its IOSpec,
the automatic export beside the other components, ORT-vs-torch parity of the graph, the numpy
runner (incl. the bilinear resize) and the whole pipeline in reference mode.

Costs: one encoder export (tiny CNN, a few seconds) plus a re-export after the encoder changes;
the transformer/VAE graphs come from the session's ``onnx_export`` of the same weights.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from unidg_rt.errors import ConfigError, WeightsError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: the tiny transformer's text slots (text_seq_len 8, joint_attention_dim 32, pooled 16); S = 48 so
#: the pipeline's 64 px reference crop exercises the resize
REF_CONFIG = {"seq_len": 8, "dim": 32, "pooled_dim": 16, "width": 8, "image_size": 48}
REF_FILE = "reference_encoder.safetensors"


def _encoder(seed: int):
    import torch

    from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig

    torch.manual_seed(seed)
    return ReferenceEncoder(ReferenceEncoderConfig(**REF_CONFIG)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def ref_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's weights, card defaults naming a random reference encoder beside it."""
    from unidg_rt.models.loading import load_transformer, load_vae, read_card, save_checkpoint
    from unidg_rt.models.refenc import save_reference_encoder

    folder = tmp_path_factory.mktemp("tiny_ref")
    defaults = {**read_card(tiny_checkpoint).defaults, "reference_encoder": {"file": REF_FILE}}
    path = save_checkpoint(
        folder / "model.safetensors", load_transformer(tiny_checkpoint), load_vae(tiny_checkpoint), defaults
    )
    shutil.copyfile(tiny_checkpoint.parent / "embeddings.safetensors", folder / "embeddings.safetensors")
    save_reference_encoder(folder / REF_FILE, _encoder(3))
    return path


@pytest.fixture(scope="module")
def ref_export(ref_checkpoint, tmp_path_factory):
    """(out_dir, manifest): ``export_pipeline(ref_checkpoint, components=("reference_encoder",))``."""
    from unidg_rt.export.pipeline import export_pipeline

    out = tmp_path_factory.mktemp("onnx_ref")
    return out, export_pipeline(ref_checkpoint, out, components=("reference_encoder",))


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_spec_uses_the_io_vocabulary_and_its_sample_inputs_run():
    import torch

    from unidg_rt.export.spec import COMPONENTS, component_spec
    from unidg_rt.export.wrappers import torch_feed, wrap

    spec = component_spec("reference_encoder", REF_CONFIG)
    assert "reference_encoder" in COMPONENTS and spec.exportable
    assert spec.input_names == ("images",) and spec.tensor("images").shape == ("batch", 3, 48, 48)
    assert spec.output_names == ("encoder_hidden_states", "pooled_projections")
    assert spec.profile_shapes()["images"] == ((1, 3, 48, 48), (1, 3, 48, 48), (4, 3, 48, 48))
    assert spec.attrs["image_size"] == 48 and spec.base_dims == ("batch",)
    feed = spec.sample_inputs(point="max")
    assert feed["images"].shape == (4, 3, 48, 48) and np.abs(feed["images"]).max() <= 1
    enc = _encoder(3)
    embeds, pooled = wrap("reference_encoder", enc, spec)(**torch_feed(spec, feed))
    assert embeds.shape == (4, 8, 32) and pooled.shape == (4, 16) and embeds.dtype == torch.float32
    with pytest.raises(ConfigError, match="multiple of 16"):
        component_spec("reference_encoder", {**REF_CONFIG, "image_size": 40})


def test_ort_graph_matches_torch_fp32(ref_export):
    import torch

    out, manifest = ref_export
    (art,) = manifest["artifacts"]
    assert art == {
        "component": "reference_encoder",
        "attention_form": "default",
        "precision": "fp32",
        "opset": 18,
        "onnx_file": "reference_encoder.default.fp32.onnx",
    }
    session = _session(out / art["onnx_file"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("images", ["batch", 3, 48, 48])]
    assert [o.name for o in session.get_outputs()] == ["encoder_hidden_states", "pooled_projections"]
    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 48, 48)).astype(np.float32)  # dynamic batch
    embeds, pooled = session.run(None, {"images": images})
    ref_embeds, ref_pooled = _encoder(3)(torch.from_numpy(images))
    assert np.abs(embeds - ref_embeds.numpy()).max() <= 1e-5
    assert np.abs(pooled - ref_pooled.numpy()).max() <= 1e-5
    assert np.abs(ref_embeds.numpy()).max() > 1e-2  # not a degenerate all-zero comparison


def test_numpy_resize_matches_torch_bilinear():
    import torch

    from unidg_rt.runtime.conditioning import resize_bilinear

    rng = np.random.default_rng(1)
    for shape, size in (((64, 64, 3), 48), ((37, 53, 3), 48), ((20, 31, 3), 96), ((100, 120, 3), 96)):
        x = rng.random(shape, dtype=np.float32)
        t = torch.from_numpy(x).permute(2, 0, 1)[None]
        ref = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        got = resize_bilinear(x, size, size)
        assert got.shape == (size, size, 3)
        assert np.abs(got - ref[0].permute(1, 2, 0).numpy()).max() <= 1e-5  # measured <= 3e-6


def test_runner_encode_matches_torch_reference_encoder(ref_export, ref_checkpoint):
    """``ReferenceEncoderRunner`` (numpy: [0, 1] or uint8 → [-1, 1], resize only when S' != S) vs
    ``TorchReferenceEncoder`` (torch's ``pixels_to_input``)."""
    from unidg_rt.models.refenc import TorchReferenceEncoder
    from unidg_rt.runtime.conditioning import ReferenceEncoderRunner
    from unidg_rt.runtime.ort_backend import OrtRunner

    session = _session(ref_export[0] / "reference_encoder.default.fp32.onnx")
    runner = ReferenceEncoderRunner(OrtRunner(session, "reference_encoder"), 48)
    torch_enc = TorchReferenceEncoder.from_file(ref_checkpoint.parent / REF_FILE)
    rng = np.random.default_rng(2)
    crops = (rng.random((64, 64, 3), dtype=np.float32), (rng.random((48, 48, 3)) * 255).astype(np.uint8))
    for crop in crops:
        (e, p), (te, tp) = runner.encode(crop), torch_enc.encode(crop)
        assert e.shape == (8, 32) and p.shape == (16,) and e.dtype == p.dtype == np.float32
        assert np.abs(e - te).max() <= 1e-5 and np.abs(p - tp).max() <= 1e-5


def test_manifest_sidecar_and_skipping_follow_the_encoder_file(ref_export, ref_checkpoint, tmp_path):
    import hashlib

    from unidg_rt.artifacts.io import sha256_file
    from unidg_rt.export.pipeline import export_pipeline
    from unidg_rt.models.refenc import save_reference_encoder

    out, manifest = ref_export
    assert manifest["reference_encoder"] == REF_CONFIG
    assert manifest["profiles"]["reference_encoder"]["default"]["batch"] == [1, 1, 4]
    assert manifest["defaults"]["reference_encoder"] == {"file": REF_FILE}
    side = json.loads((out / "reference_encoder.default.fp32.json").read_text())
    ckpt, enc = sha256_file(ref_checkpoint), sha256_file(ref_checkpoint.parent / REF_FILE)
    assert side["source_sha256"] == hashlib.sha256(f"{ckpt}:{enc}".encode()).hexdigest()
    assert side["spec"]["attrs"]["image_size"] == 48
    # a copy of the folder: unchanged inputs skip the stage, a retrained encoder re-exports it
    work, ckpt_dir = tmp_path / "onnx", tmp_path / "ckpt"
    shutil.copytree(out, work)
    shutil.copytree(ref_checkpoint.parent, ckpt_dir)
    again = export_pipeline(ckpt_dir / "model.safetensors", work, components=("reference_encoder",))
    assert again["results"] == [
        {"component": "reference_encoder", "file": "reference_encoder.default.fp32.onnx", "skipped": True}
    ]
    save_reference_encoder(ckpt_dir / REF_FILE, _encoder(4))
    changed = export_pipeline(ckpt_dir / "model.safetensors", work, components=("reference_encoder",))
    assert changed["results"][0]["skipped"] is False and len(changed["artifacts"]) == 1


def test_checkpoint_without_encoder_exports_none(onnx_export, tiny_checkpoint, tmp_path):
    from unidg_rt.export.pipeline import PIPELINE_COMPONENTS, export_pipeline
    from unidg_rt.runtime.pipeline import UniDGPipeline

    out, manifest = onnx_export  # export_pipeline(tiny_checkpoint) with the default components
    assert "reference_encoder" in PIPELINE_COMPONENTS
    assert all(a["component"] != "reference_encoder" for a in manifest["artifacts"])
    assert "reference_encoder" not in manifest and "reference_encoder" not in manifest["profiles"]
    assert not list(out.glob("reference_encoder.*"))
    assert UniDGPipeline.from_onnx(out).reference_encoder is None
    with pytest.raises(ConfigError, match="names no reference encoder"):
        export_pipeline(tiny_checkpoint, tmp_path, components=("reference_encoder",))


@pytest.fixture(scope="module")
def ref_onnx_dir(onnx_dir, ref_export, tmp_path_factory):
    """The session's transformer/VAE export of the same weights + this module's encoder export, in
    one folder whose manifest lists all four (what ``export_pipeline(ref_checkpoint)`` writes,
    without re-exporting the transformer and VAE under another checkpoint hash)."""
    out = tmp_path_factory.mktemp("onnx_full") / "onnx"
    shutil.copytree(onnx_dir, out)
    for f in ref_export[0].glob("reference_encoder.*"):
        shutil.copyfile(f, out / f.name)
    manifest = json.loads((out / "unidg_onnx.json").read_text())
    manifest["artifacts"] += ref_export[1]["artifacts"]
    manifest["defaults"] = ref_export[1]["defaults"]
    manifest["reference_encoder"] = ref_export[1]["reference_encoder"]
    (out / "unidg_onnx.json").write_text(json.dumps(manifest))
    return out


def test_pipeline_reference_mode_matches_torch(ref_onnx_dir, ref_checkpoint, sample_inputs):
    """``from_onnx`` wires the exported encoder; reference mode matches ``from_pretrained`` within
    the torch-vs-ORT pipeline parity test's tolerance (test_pipeline_onnx.py: 1e-3, one uint8 step)."""
    from unidg_rt.runtime.conditioning import ReferenceEncoderRunner
    from unidg_rt.runtime.pipeline import UniDGPipeline

    ort_pipe, torch_pipe = (
        UniDGPipeline.from_onnx(ref_onnx_dir),
        UniDGPipeline.from_pretrained(ref_checkpoint),
    )
    assert isinstance(ort_pipe.reference_encoder, ReferenceEncoderRunner)
    assert ort_pipe.reference_encoder.image_size == 48
    img, mask, ref, rmask = sample_inputs
    a = ort_pipe(img, mask, ref, rmask, seed=5, output_type="np")
    b = torch_pipe(img, mask, ref, rmask, seed=5, output_type="np")
    assert np.abs(a.diptychs - b.diptychs).max() <= 1e-3
    a8, b8 = (np.round(x.images[0] * 255).astype(np.uint8) for x in (a, b))
    assert np.abs(a8.astype(int) - b8.astype(int)).max() <= 1
    # the encoder matters: without it reference mode is zero conditioning (another image)
    plain = UniDGPipeline.from_onnx(ref_onnx_dir, reference_encoder=None)
    c = plain(img, mask, ref, rmask, seed=5, output_type="np")
    assert np.abs(a.diptychs - c.diptychs).max() > 1e-3  # measured 1.2e-2 (parity: 3e-6)


def test_folder_without_the_encoder_of_an_encoder_checkpoint_is_refused(onnx_dir, ref_export, tmp_path):
    from unidg_rt.runtime.pipeline import UniDGPipeline

    out = tmp_path / "onnx"
    shutil.copytree(onnx_dir, out)
    manifest = json.loads((out / "unidg_onnx.json").read_text())
    manifest["defaults"] = ref_export[1]["defaults"]  # the card names an encoder; no artifact
    (out / "unidg_onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="re-run `unidg-rt export`"):
        UniDGPipeline.from_onnx(out)
    assert UniDGPipeline.from_onnx(out, reference_encoder=None).reference_encoder is None
