"""Dataset writers. anomalib cannot be installed here (it pins torch 2.14 + torchvision, which
would replace this venv's torch 2.13), so `_anomalib_mvtec_samples` / `_anomalib_folder_samples`
re-implement, line for line in plain Python, how anomalib 2.x builds its sample tables:
``make_mvtec_ad_dataset`` (src/anomalib/data/datasets/image/mvtecad.py) and
``make_folder_dataset`` (.../image/folder.py): recursive glob by suffix, ``parts[-3:]`` as
(split, label, file), sort by full path, masks assigned to abnormal images *by sorted position*,
then the ``image stem in mask stem`` check (MisMatchError)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unidg_rt.errors import ConfigError
from unidg_rt.jobs.datasets import MARKER, export_mvtec, export_quadruplets
from unidg_rt.jobs.runner import run_jobs

MVTEC_EXTENSIONS = (".png", ".PNG")
FOLDER_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)  # torchvision's


class MisMatchError(Exception):
    pass


def _anomalib_mvtec_samples(root_category: Path, split: str | None = None) -> list[dict]:
    root = root_category
    samples = [(str(root), *f.parts[-3:]) for f in root.glob("**/*") if f.suffix in MVTEC_EXTENSIONS]
    if not samples:
        raise RuntimeError(f"Found 0 images in {root}")
    rows = [
        {
            "path": p,
            "split": s,
            "label": lb,
            "image_path": f"{p}/{s}/{lb}/{f}",
            "label_index": 0 if lb == "good" else 1,
        }
        for p, s, lb, f in samples
    ]
    masks = sorted((r for r in rows if r["split"] == "ground_truth"), key=lambda r: r["image_path"])
    rows = sorted((r for r in rows if r["split"] != "ground_truth"), key=lambda r: r["image_path"])
    abnormal_test = [r for r in rows if r["split"] == "test" and r["label_index"] == 1]
    if len(abnormal_test) != len(masks):  # pandas raises on the positional assignment
        raise ValueError(f"{len(abnormal_test)} abnormal test images but {len(masks)} masks")
    for r in rows:
        r["mask_path"] = None
    for r, m in zip(abnormal_test, masks, strict=True):
        r["mask_path"] = m["image_path"]
    for r in rows:
        if r["label_index"] == 1 and Path(r["image_path"]).stem not in Path(r["mask_path"]).stem:
            raise MisMatchError(f"{r['image_path']} got mask {r['mask_path']}")
    return [r for r in rows if split is None or r["split"] == split]


def _anomalib_folder_samples(root: Path, normal_dir: str, abnormal_dir: str, mask_dir: str) -> list[dict]:
    rows = []
    for label, d in (("normal", normal_dir), ("abnormal", abnormal_dir), ("mask_dir", mask_dir)):
        files = [f for f in (root / d).glob("**/*") if f.suffix in FOLDER_EXTENSIONS and not f.is_dir()]
        if not files:
            raise RuntimeError(f"Found 0 {label} images in {root / d}")
        rows += [{"image_path": str(f), "label": label} for f in files]
    rows.sort(key=lambda r: r["image_path"])
    masks = [r["image_path"] for r in rows if r["label"] == "mask_dir"]
    abnormal = [r for r in rows if r["label"] == "abnormal"]
    for r in rows:
        r["mask_path"] = ""
    for r, m in zip(abnormal, masks, strict=False):  # anomalib: masks[: len(abnormal)]
        r["mask_path"] = m
    for r in abnormal:
        if r["mask_path"] and Path(r["image_path"]).stem not in Path(r["mask_path"]).stem:
            raise MisMatchError(f"{r['image_path']} got mask {r['mask_path']}")
    rows = [r for r in rows if r["label"] != "mask_dir"]
    for r in rows:
        r["split"] = "train" if r["label"] == "normal" else "test"
    return rows


def _ids_that_break_naive_names() -> list[str]:
    # "p-1" / "p-10": as <id>.png vs <id>_mask.png they sort in opposite orders
    return ["p-1", "p-10", "p-2", "p-1x"]


@pytest.fixture
def batch_dir(inputs_dir, kit):
    lines = []
    for i, job_id in enumerate(_ids_that_break_naive_names() * 2):
        lines.append(
            {
                "id": f"{job_id}-{'ab'[i // 4]}",
                "image": f"normal_{i % 4}.png",
                "mask": f"mask_{i % 4}.png",
                "category": ["scratch", "hole"][i % 2],
                "product": ["tile", "Metal Nut"][i // 4],
                "seed": i,
                "count": 1 + i % 2,
            }
        )
    m = kit.write_manifest(inputs_dir / "m.jsonl", lines)
    assert run_jobs(kit.FakePipeline, m, inputs_dir / "out").ok == 8
    return inputs_dir / "out"


def test_mvtec_layout_loads_with_anomalib_conventions(batch_dir):
    s = export_mvtec(batch_dir, test_good_fraction=0.5)
    root = batch_dir / "mvtec"
    assert s.root == root and (root / MARKER).exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["metal_nut", "tile"]
    total_abnormal = 0
    for product in ("tile", "metal_nut"):
        rows = _anomalib_mvtec_samples(root / product)
        train = [r for r in rows if r["split"] == "train"]
        test = [r for r in rows if r["split"] == "test"]
        assert train and all(r["label"] == "good" and r["label_index"] == 0 for r in train)
        assert {r["label"] for r in test} == {"good", "scratch", "hole"}
        for r in test:
            if r["label_index"] == 1:
                img, mask = np.asarray(Image.open(r["image_path"])), np.asarray(Image.open(r["mask_path"]))
                assert mask.shape == img.shape[:2] and set(np.unique(mask)) == {0, 255}
                assert Path(r["mask_path"]).name == Path(r["image_path"]).stem + "_mask.png"
                total_abnormal += 1
    assert total_abnormal == s.abnormal == 12  # counts 1,2,1,2 per product
    index = [json.loads(x) for x in (root / "unidg_index.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "test_defect" for r in index) == 12


def test_naive_names_would_break_anomalib(tmp_path):
    """Guard for the zero-padding rule: <id>.png/<id>_mask.png names mis-pair in anomalib."""
    for name in ("p-1", "p-10"):
        for sub, fname in (
            ("test/hole", f"{name}.png"),
            ("ground_truth/hole", f"{name}_mask.png"),
            ("train/good", f"{name}.png"),
        ):
            (tmp_path / sub).mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4)).save(tmp_path / sub / fname)
    with pytest.raises(MisMatchError):
        _anomalib_mvtec_samples(tmp_path)


def test_quadruplets_and_folder_datamodule_conventions(batch_dir):
    s = export_quadruplets(batch_dir)
    root = batch_dir / "quadruplets"
    rows = [json.loads(x) for x in (root / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == s.abnormal == 12
    for row in rows:
        n, a, m = (np.asarray(Image.open(root / row[k])) for k in ("normal", "abnormal", "mask"))
        assert n.shape == a.shape and m.shape == n.shape[:2]
        assert np.array_equal(n[m == 0], a[m == 0])  # the defect is only inside the mask
        assert row["caption"].startswith("a ") and row["category"] in row["caption"]
    samples = _anomalib_folder_samples(root, "normal", "abnormal", "mask")
    assert sum(bool(r["label"] == "abnormal" and r["mask_path"]) for r in samples) == 12


def test_export_is_deterministic_and_safe(batch_dir, tmp_path):
    export_mvtec(batch_dir, tmp_path / "a")
    export_mvtec(batch_dir, tmp_path / "a")  # re-export replaces the folder as a whole
    export_mvtec(batch_dir, tmp_path / "b")

    def tree(root):
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert not list(tmp_path.glob(".*unidg-build*"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not written by unidg-rt"):
        export_mvtec(batch_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").exists()
    victim = next((batch_dir / "images").glob("p-1-a_*.png"))
    victim.write_bytes(b"corrupt")
    s = export_quadruplets(batch_dir, tmp_path / "q")
    assert s.skipped == ["p-1-a"] and s.abnormal == 11


def test_procedural_quadruplets_through_tiny_model_to_mvtec(tmp_path, kit, tiny_factory):
    """End to end on realistic inputs: procedural (normal, abnormal, mask) triples from
    unidg_rt.data become reference-mode jobs (defect of item i inserted into item i+1), run on
    the tiny model, exported as MVTec and read back with anomalib's conventions."""
    quadruplets = pytest.importorskip("unidg_rt.data.quadruplets")
    d = tmp_path / "in"
    d.mkdir()
    lines = []
    for i in range(4):
        q = quadruplets.generate_quadruplet(i, size=(48, 64))
        Image.fromarray(q.normal).save(d / f"normal_{i}.png")
        Image.fromarray(q.abnormal).save(d / f"abnormal_{i}.png")
        Image.fromarray(q.mask.astype(np.uint8) * 255).save(d / f"mask_{i}.png")
    for i in range(4):
        q = quadruplets.generate_quadruplet(i, size=(48, 64))
        j = (i + 1) % 4  # insert item i's defect into item j's normal, where item j's defect was
        lines.append(
            {
                "id": f"q{i}",
                "image": f"normal_{j}.png",
                "mask": f"mask_{j}.png",
                "category": q.category,
                "reference_image": f"abnormal_{i}.png",
                "reference_mask": f"mask_{i}.png",
                "product": "surface",
                "seed": i,
            }
        )
    m = kit.write_manifest(d / "m.jsonl", lines)
    s = run_jobs(tiny_factory, m, tmp_path / "out", defaults=kit.FAST)
    assert s.ok == 4 and s.exit_code == 0
    export_mvtec(tmp_path / "out", test_good_fraction=0.25)
    rows = _anomalib_mvtec_samples(tmp_path / "out" / "mvtec" / "surface")
    defects = [r for r in rows if r["label_index"] == 1]
    assert len(defects) == 4 and {r["label"] for r in defects} <= {
        q["category"].replace(" ", "_") for q in lines
    }
    assert sum(r["split"] == "test" and r["label"] == "good" for r in rows) == 1
