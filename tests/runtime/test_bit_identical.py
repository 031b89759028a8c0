"""No behaviour change across refactors (issue 16): a fixed set of calls on the shipped default
model — torch and ONNX Runtime (``fold`` and ``decomposed`` graphs), reference and text mode,
residual and replace paste, the card's segments (APO adapter, true CFG) and reference CFG, batch
of two, latent output — must give the outputs recorded in ``data/bit_identical.json`` before the
house redesign (recorded at commit 08cfe07 with this file run as a script, see below): float32
sha256 per output in ``bit_identical.json``, the uint8 images in ``bit_identical.npz``.

Gate: the float32 outputs' sha256 (bit-identical) and the uint8 images equal, single-threaded
(torch and ORT intra-op threads = 1). Float kernels pick code paths by CPU ISA, so on a machine
whose torch CPU capability differs from the recording one the gate is the uint8 images within one
level (said in the assertion message).

Record again (only when a change of numbers is intended and explained in the CHANGELOG)::

    .venv/bin/python tests/runtime/test_bit_identical.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).with_name("data") / "bit_identical.json"
GOLDEN_UINT8 = GOLDEN.with_suffix(".npz")
REFERENCE_CFG = [{"start": 0.0, "end": 1.0, "true_cfg_scale": 4.0, "reference_cfg_scale": 2.0}]

#: (name, backend, call keywords); backend: "torch" or "ort-<graph form>"
CALLS: list[tuple[str, str, dict]] = []
for _backend in ("torch", "ort-fold", "ort-decomposed"):
    CALLS += [
        (f"{_backend}/reference", _backend, {"mode": "reference", "seed": 7}),
        (f"{_backend}/text", _backend, {"mode": "text", "defect_category": "scratch", "seed": 11}),
    ]
for _backend in ("torch", "ort-fold"):
    CALLS += [
        (
            f"{_backend}/reference-replace-batch2",
            _backend,
            {"mode": "reference", "seed": 3, "paste_mode": "replace", "num_images_per_prompt": 2},
        ),
        (f"{_backend}/reference-cfg", _backend, {"mode": "reference", "seed": 5, "segments": REFERENCE_CFG}),
        (
            f"{_backend}/text-latent",
            _backend,
            {
                "mode": "text",
                "defect_category": "hole",
                "seed": 13,
                "output_type": "latent",
                "num_inference_steps": 4,
                "guidance_scale": 5.0,
            },
        ),
    ]


def _inputs() -> dict[str, np.ndarray]:
    from PIL import Image

    from unidg_rt.artifacts.assets import default_model_path

    samples = default_model_path().parent.parent / "samples"
    load = lambda n: np.asarray(Image.open(samples / n))  # noqa: E731
    names = ("image", "mask_image", "reference_image", "reference_mask")
    files = ("target.png", "target_mask.png", "reference.png", "reference_mask.png")
    return {k: load(f) for k, f in zip(names, files, strict=True)}


def _sha(x) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes()).hexdigest()


def run_call(pipe, kwargs: dict, inputs: dict[str, np.ndarray]) -> dict:
    """One call → ``{key: sha256 of the float32 output}`` plus the uint8 images (``"uint8"``)."""
    kwargs = dict(kwargs)
    mode = kwargs.pop("mode")
    args = dict(inputs) if mode == "reference" else {k: inputs[k] for k in ("image", "mask_image")}
    out = pipe(**args, output_type=kwargs.pop("output_type", "np"), **kwargs)
    if not isinstance(out.images, np.ndarray):  # latent output of a torch pipeline
        return {"latents": _sha(pipe.backend.to_numpy(out.images))}
    u8 = np.round(np.clip(out.images, 0, 1) * 255).astype(np.uint8)
    return {"images": _sha(out.images), "diptychs": _sha(out.diptychs), "uint8": u8}


def _pipelines(onnx_dir: Path):
    import onnxruntime as ort

    from unidg_rt.runtime.pipeline import UniDGPipeline

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return {
        "torch": lambda: UniDGPipeline.from_pretrained(),
        "ort-fold": lambda: UniDGPipeline.from_onnx(onnx_dir, attention_form="fold", session_options=options),
        "ort-decomposed": lambda: UniDGPipeline.from_onnx(
            onnx_dir, attention_form="decomposed", session_options=options
        ),
    }


def fingerprint() -> dict[str, str]:
    import torch

    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def record(onnx_dir: Path) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inputs, makers, pipes, out = _inputs(), _pipelines(onnx_dir), {}, {}
        for name, backend, kwargs in CALLS:
            pipe = pipes.get(backend) or pipes.setdefault(backend, makers[backend]())
            out[name] = run_call(pipe, kwargs, inputs)
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recorded(default_onnx_dir):
    pytest.importorskip("onnxruntime")
    return record(default_onnx_dir)


@pytest.mark.parametrize("name", [c[0] for c in CALLS])
def test_outputs_are_bit_identical_to_the_recording(recorded, name):
    golden = json.loads(GOLDEN.read_text())
    want, got = golden["calls"][name], recorded[name]
    same_machine = golden["fingerprint"] == fingerprint()
    with np.load(GOLDEN_UINT8) as u8:
        want_u8 = u8[name] if name in u8.files else None
    assert (want_u8 is None) == ("uint8" not in got), f"{name}: output kinds changed"
    if want_u8 is not None:
        a, b = want_u8.astype(np.int16), got["uint8"].astype(np.int16)
        assert a.shape == b.shape
        levels = int(np.abs(a - b).max())
        if same_machine:
            assert levels == 0, f"{name}: images moved by {levels} uint8 levels since the recording"
        else:
            assert levels <= 1, (
                f"{name}: {levels} levels on {fingerprint()} (recorded on {golden['fingerprint']})"
            )
    if same_machine:
        assert want == {k: v for k, v in got.items() if k != "uint8"}, (
            f"{name}: float32 outputs are no longer bit-identical"
        )


def main(argv: list[str]) -> int:
    """``--write``: export the shipped model as ``tests/conftest.py::default_onnx_dir`` does and
    record every call into :data:`GOLDEN`."""
    from unidg_rt.export.pipeline import export_pipeline

    if argv != ["--write"]:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "onnx"
        export_pipeline(None, out, forms=("fold", "decomposed"))
        calls = record(out)
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN_UINT8, **{k: v.pop("uint8") for k, v in calls.items() if "uint8" in v})
    GOLDEN.write_text(json.dumps({"fingerprint": fingerprint(), "calls": calls}, indent=1, sort_keys=True))
    print(f"wrote {GOLDEN} ({len(calls)} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
