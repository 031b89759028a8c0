"""Every backend computes the same model (issue 15): ``from_onnx`` vs ``from_pretrained`` on the
**shipped** default model — its APO adapter (time-gated LoRA, carried in the graph as a branch
with ``adapter_scales`` as input), its segment schedule (adapter strength 0.5 then 1.0, true CFG),
its reference encoder and defaults — in reference and text mode, at the default size and two
others, for the ``fold`` and ``decomposed`` graphs. Oracle: the torch pipeline on the same card.
Bound: at most one uint8 level inside the mask, bit-exact outside. The two non-default sizes are
``slow`` (CI runs them in its ``-m "slow and not gpu"`` pass). Plus the refusals: a folder
exported without the card's adapter, strengths for adapters a graph does not carry, segments on
a backend without adapters.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from unidg_rt.errors import BackendCapabilityError, InvalidInputError, WeightsError
from unidg_rt.runtime.assets import default_model_path
from unidg_rt.runtime.pipeline import UniDGPipeline

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SAMPLES = default_model_path().parent.parent / "samples"


@pytest.fixture(scope="module")
def inputs():
    load = lambda n: np.asarray(Image.open(SAMPLES / n))  # noqa: E731
    return load("target.png"), load("target_mask.png"), load("reference.png"), load("reference_mask.png")


@pytest.fixture(scope="module")
def torch_pipe():
    return UniDGPipeline.from_pretrained()


@pytest.fixture(scope="module", params=["fold", "decomposed"])
def ort_pipe(request, default_onnx_dir):
    return UniDGPipeline.from_onnx(default_onnx_dir, attention_form=request.param)


def _uint8(images):
    return np.round(np.clip(images[0], 0, 1) * 255).astype(np.int16)


def _assert_same(a, b, image):
    a8, b8 = _uint8(a.images), _uint8(b.images)
    outside = a.masks[0] == 0 if a.masks.ndim == 3 else a.masks == 0
    assert outside.sum() > 0.5 * outside.size
    assert np.array_equal(a8[outside], b8[outside]) and np.array_equal(a8[outside], image[outside])
    diff = int(np.abs(a8 - b8).max())
    assert diff <= 1, f"inside the mask ORT and torch differ by {diff} uint8 levels"
    return diff


def test_graph_carries_the_card_adapter(default_onnx_dir, torch_pipe):
    manifest = json.loads((default_onnx_dir / "unidg_onnx.json").read_text())
    card = torch_pipe.defaults["adapters"]
    assert set(manifest["adapters"]) == set(card) == {"apo"}
    for art in manifest["artifacts"]:
        if art["component"] == "transformer":
            assert art["adapters"] == ["apo"], art
    pipe = UniDGPipeline.from_onnx(default_onnx_dir)
    assert pipe.backend.adapter_names == ("apo",)
    assert "adapter_scales" in pipe.backend.transformer.input_names
    assert pipe.defaults["segments"][0]["adapter_scales"] == {"apo": 0.5}  # what the parity runs


@pytest.mark.parametrize(
    "size", [96, pytest.param(64, marks=pytest.mark.slow), pytest.param(128, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("mode", ["reference", "text"])
def test_onnx_matches_torch_on_the_shipped_model(ort_pipe, torch_pipe, inputs, mode, size):
    img, mask, ref, rmask = inputs
    kwargs = dict(height=size, width=size, seed=7, output_type="np")
    if mode == "reference":
        kwargs.update(reference_image=ref, reference_mask=rmask)
    else:
        kwargs.update(defect_category=torch_pipe.embeddings.categories[0])
    a, b = ort_pipe(img, mask, **kwargs), torch_pipe(img, mask, **kwargs)
    assert a.info["mode"] == b.info["mode"] == mode
    _assert_same(a, b, img)


def test_adapter_strength_is_a_live_graph_input(default_onnx_dir, torch_pipe, inputs):
    """The branch is in the graph: switching the adapter off changes ORT's output the same way it
    changes torch's (and both still agree), set_adapters works on both backends."""
    img, mask, ref, rmask = inputs
    ort = UniDGPipeline.from_onnx(default_onnx_dir)
    off = [{**s, "adapter_scales": {"apo": 0.0}} for s in torch_pipe.defaults["segments"]]
    kwargs = dict(reference_image=ref, reference_mask=rmask, seed=3, output_type="np")
    on_o, on_t = ort(img, mask, **kwargs), torch_pipe(img, mask, **kwargs)
    off_o, off_t = ort(img, mask, segments=off, **kwargs), torch_pipe(img, mask, segments=off, **kwargs)
    _assert_same(on_o, on_t, img)
    _assert_same(off_o, off_t, img)
    assert np.abs(on_o.diptychs - off_o.diptychs).max() > 0.02  # the adapter matters (measured 0.044)
    assert np.abs(on_o.diptychs - on_t.diptychs).max() < 0.005  # far above the backends' difference
    try:
        ort.set_adapters("apo", 0.0)
        torch_pipe.set_adapters("apo", 0.0)
        assert ort.backend.adapter_scales.get() == {"apo": 0.0}
        kw = dict(kwargs, segments=[{"start": 0.0, "end": 1.0, "true_cfg_scale": 4.0}])
        _assert_same(ort(img, mask, **kw), torch_pipe(img, mask, **kw), img)
    finally:
        torch_pipe.set_adapters("apo", 1.0)


def test_unknown_adapter_names_raise(default_onnx_dir, torch_pipe, inputs):
    img, mask, ref, rmask = inputs
    ort = UniDGPipeline.from_onnx(default_onnx_dir)
    segs = [{"start": 0.0, "end": 1.0, "adapter_scales": {"style": 1.0}}]
    for pipe in (ort, torch_pipe):
        with pytest.raises(InvalidInputError, match="style"):
            pipe(img, mask, reference_image=ref, reference_mask=rmask, segments=segs, output_type="np")
    with pytest.raises(InvalidInputError, match="style"):
        ort.set_adapters(["apo", "style"], [1.0, 1.0])
    assert ort.backend.adapter_scales.get() == {"apo": 1.0}  # nothing changed


def test_folder_without_the_card_adapter_is_refused(default_onnx_dir, tmp_path):
    """A folder whose transformer lacks the APO adapter (an export from before adapters were
    carried) would silently run the SFT model: refused with the re-export command."""
    folder = tmp_path / "onnx"
    shutil.copytree(default_onnx_dir, folder)
    path = folder / "unidg_onnx.json"
    manifest = json.loads(path.read_text())
    for art in manifest["artifacts"]:
        art.pop("adapters", None)
    path.write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"without the adapters \['apo'\].*unidg-rt export"):
        UniDGPipeline.from_onnx(folder)


def test_segments_on_a_backend_without_adapters_raise(default_onnx_dir, inputs):
    img, mask, ref, rmask = inputs
    pipe = UniDGPipeline.from_onnx(default_onnx_dir)

    class NoAdapters:
        def __init__(self, inner):
            self._inner = inner
            self.name = "stand-in"

        def __getattr__(self, item):
            if item in ("set_adapter_scales", "adapter_names"):
                raise AttributeError(item)
            return getattr(self._inner, item)

    pipe.backend = NoAdapters(pipe.backend)
    with pytest.raises(BackendCapabilityError, match="stand-in backend has no adapters"):
        pipe(img, mask, reference_image=ref, reference_mask=rmask, output_type="np")


def test_every_segment_key_matches(default_onnx_dir, torch_pipe, inputs):
    """All segment keys on ONNX Runtime as on torch: adapter strengths, distilled guidance, true
    CFG and reference CFG (the reference-free pass), in reference mode."""
    img, mask, ref, rmask = inputs
    ort = UniDGPipeline.from_onnx(default_onnx_dir)
    segs = [
        {
            "start": 0.0,
            "end": 0.5,
            "adapter_scales": {"apo": 0.3},
            "guidance_scale": 2.0,
            "true_cfg_scale": 2.0,
        },
        {"start": 0.5, "end": 1.0, "adapter_scales": {"apo": 1.0}, "reference_cfg_scale": 2.0},
    ]
    kwargs = dict(reference_image=ref, reference_mask=rmask, segments=segs, seed=11, output_type="np")
    a, b = ort(img, mask, **kwargs), torch_pipe(img, mask, **kwargs)
    _assert_same(a, b, img)
    plain = ort(img, mask, reference_image=ref, reference_mask=rmask, seed=11, output_type="np")
    assert np.abs(plain.diptychs - a.diptychs).max() > 0.01  # the schedule changed the result
