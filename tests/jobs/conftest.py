"""Fixtures of the batch-job tests: input images on disk, manifests, a fake and a tiny pipeline."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unidg_rt.jobs.manifest import GenerationOverrides
from unidg_rt.runtime.outputs import UniDGPipelineOutput

#: the smallest generation the tiny model supports: 16x16 per side, one Euler step
FAST = GenerationOverrides(height=16, width=16, num_inference_steps=1)


class FakePipeline:
    """Deterministic stand-in for UniDGPipeline (fast runner tests): fills the mask with noise
    drawn from the seed. ``fail_on`` maps a category to an exception it raises."""

    defaults = {"feather": 0}

    def __init__(self, fail_on: dict[str, Exception] | None = None):
        self.fail_on = fail_on or {}
        self.calls = 0

    def __call__(
        self,
        image,
        mask_image,
        reference_image=None,
        reference_mask=None,
        *,
        defect_category=None,
        seed=0,
        num_images_per_prompt=1,
        height=None,
        width=None,
        num_inference_steps=None,
        guidance_scale=None,
        feather=None,
        output_type="pil",
        **_,
    ):
        self.calls += 1
        if defect_category in self.fail_on:
            raise self.fail_on[defect_category]
        if defect_category is not None and defect_category not in ("scratch", "hole", "black_spot"):
            from unidg_rt.errors import UnknownCategoryError

            raise UnknownCategoryError(f"unknown defect category {defect_category!r}")
        images, seeds = [], []
        for k in range(num_images_per_prompt):
            rng = np.random.default_rng(seed + k)
            out = image.copy()
            out[mask_image] = rng.integers(0, 256, (int(mask_image.sum()), 3), dtype=np.uint8)
            images.append(Image.fromarray(out))
            seeds.append(seed + k)
        info = {
            "height": height or 64,
            "width": width or 64,
            "num_inference_steps": num_inference_steps or 1,
            "guidance_scale": guidance_scale or 1.0,
            "backend": "fake",
        }
        return UniDGPipelineOutput(images=images, masks=mask_image.astype(np.float32), seeds=seeds, info=info)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread for the tiny model: as fast as two, deterministic, and immune to the
    OpenMP barrier stalls of a busy shared 2-core machine. The subprocess/Ray tests pass the
    same count (--threads 1 / torch_threads=1), which byte-identical comparisons rely on."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def texture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth, non-trivial uint8 RGB image (a 'normal' product surface)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / (3 + seed % 5)) * np.cos(yy / 7)
    img = np.stack([base, base * 0.9, base * 0.8], axis=-1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def box_mask(h: int = 48, w: int = 64, y0: int = 16, x0: int = 20, side: int = 12) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 255
    return mask


@pytest.fixture
def inputs_dir(tmp_path) -> Path:
    """normal_{0..3}.png, mask_{0..3}.png (48x64), ref.png + ref_mask.png."""
    d = tmp_path / "inputs"
    d.mkdir()
    for i in range(4):
        Image.fromarray(texture(i)).save(d / f"normal_{i}.png")
        Image.fromarray(box_mask(y0=10 + 3 * i)).save(d / f"mask_{i}.png")
    Image.fromarray(texture(9, 40, 40)).save(d / "ref.png")
    Image.fromarray(box_mask(40, 40, 12, 12, 10)).save(d / "ref_mask.png")
    return d


def write_manifest(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def good_jobs(n: int = 4) -> list[dict]:
    """n valid jobs mixing mask files, strategies, text and reference mode."""
    jobs = []
    for i in range(n):
        job = {"id": f"job-{i:02d}", "image": f"normal_{i % 4}.png", "seed": 100 + i, "category": "scratch"}
        if i % 2:
            job["mask_strategy"] = {"strategy": "random_blob", "scale": [0.2, 0.4]}
            job["category"] = "hole"
        else:
            job["mask"] = f"mask_{i % 4}.png"
        if i % 3 == 2:
            job.update(reference_image="ref.png", reference_mask="ref_mask.png", category="crack")
        jobs.append(job)
    return jobs


@pytest.fixture(scope="session")
def tiny_factory(tiny_checkpoint):
    from unidg_rt.runtime.pipeline import UniDGPipeline

    return functools.partial(UniDGPipeline.from_pretrained, tiny_checkpoint)


def tree_bytes(root: Path, folders=("images", "masks", "normals")) -> dict[str, bytes]:
    """{relative path: bytes} of the output files of a batch folder."""
    out = {}
    for folder in folders:
        for p in sorted((root / folder).glob("*")):
            out[f"{folder}/{p.name}"] = p.read_bytes()
    return out


def ok_counts(out_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (out_dir / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["status"] == "ok":
            counts[rec["id"]] = counts.get(rec["id"], 0) + 1
    return counts


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules (importlib import mode can't import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        FakePipeline=FakePipeline,
        FAST=FAST,
        texture=texture,
        box_mask=box_mask,
        write_manifest=write_manifest,
        good_jobs=good_jobs,
        tree_bytes=tree_bytes,
        ok_counts=ok_counts,
    )
