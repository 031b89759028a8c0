from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unidg_rt.data import (
    build_reference_bank,
    generate_dataset,
    iter_mvtec,
    read_quadruplets,
    write_quadruplets,
)
from unidg_rt.errors import InvalidInputError


@pytest.fixture(scope="module")
def quads():
    return list(generate_dataset(3, seed=0, size=48))


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mvtec_tree(root, mask_size=32):
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)  # noqa: E731
    mask = np.zeros((mask_size, mask_size), np.uint8)
    mask[5:12, 6:14] = 255
    for cls, defects in {"bottle": ["broken_large", "contamination"], "screw": ["scratch_head"]}.items():
        _png(root / cls / "train" / "good" / "000.png", img())
        _png(root / cls / "test" / "good" / "000.png", img())
        for d in defects:
            for stem in ("000", "001"):
                _png(root / cls / "test" / d / f"{stem}.png", img())
                _png(root / cls / "ground_truth" / d / f"{stem}_mask.png", mask)
    return root


def test_write_read_round_trip(tmp_path, quads):
    assert write_quadruplets(tmp_path / "ds", quads) == 3
    back = list(read_quadruplets(tmp_path / "ds"))
    assert len(back) == 3
    for a, b in zip(quads, back, strict=True):
        assert np.array_equal(a.normal, b.normal) and np.array_equal(a.abnormal, b.abnormal)
        assert np.array_equal(a.mask, b.mask)
        assert (a.caption, a.category, a.surface, a.seed) == (b.caption, b.category, b.surface, b.seed)
    with pytest.raises(InvalidInputError, match="overwrite=True"):
        write_quadruplets(tmp_path / "ds", quads)
    assert write_quadruplets(tmp_path / "ds", quads[:1], overwrite=True) == 1
    assert len(list(read_quadruplets(tmp_path / "ds"))) == 1


def test_caption_txt_layout_infers_category(tmp_path, quads):
    root = tmp_path / "txt"
    q = quads[0]
    _png(root / "normal" / "a.png", q.normal)
    _png(root / "abnormal" / "a.png", q.abnormal)
    _png(root / "mask" / "a_mask.png", q.mask.astype(np.uint8) * 255)
    (root / "caption").mkdir()
    (root / "caption" / "a.txt").write_text("a wooden board with a small crack\n")
    (back,) = read_quadruplets(root)
    assert back.category == "crack" and back.seed is None
    assert back.caption == "a wooden board with a small crack"


def test_quadruplet_folder_errors(tmp_path, quads):
    with pytest.raises(InvalidInputError, match="not a directory"):
        list(read_quadruplets(tmp_path / "nope"))
    (tmp_path / "empty" / "abnormal").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match=r"lacks the folder.*normal"):
        list(read_quadruplets(tmp_path / "empty"))
    for sub in ("normal", "mask"):
        (tmp_path / "empty" / sub).mkdir()
    with pytest.raises(InvalidInputError, match="contains no images"):
        list(read_quadruplets(tmp_path / "empty"))
    root = tmp_path / "ds"
    write_quadruplets(root, quads)
    _png(root / "mask" / "000001.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(InvalidInputError, match="same size"):
        list(read_quadruplets(root))
    (root / "mask" / "000001.png").unlink()
    with pytest.raises(InvalidInputError, match="no mask"):
        list(read_quadruplets(root))
    (root / "captions.jsonl").write_text(json.dumps({"stem": "000000", "caption": "x"}) + "\n")
    _png(root / "mask" / "000001.png", quads[1].mask.astype(np.uint8) * 255)
    with pytest.raises(InvalidInputError, match="no caption for stem '000001'"):
        list(read_quadruplets(root))


def test_mvtec_records(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    records = list(iter_mvtec(root))
    assert len(records) == 2 * 2 + 3 * 2  # train/test good per class + 2 images per defect
    defects = [r for r in records if not r.is_good]
    assert {r.defect for r in defects} == {"broken_large", "contamination", "scratch_head"}
    image, mask = defects[0].load()
    assert image.shape == (32, 32, 3) and mask.sum() == 7 * 8
    assert [r.object_class for r in iter_mvtec(root, classes=["screw"], splits=["test"])] == ["screw"] * 3
    with pytest.raises(InvalidInputError, match="available"):
        list(iter_mvtec(root, classes=["cable"]))


def test_mvtec_errors(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    (root / "bottle" / "ground_truth" / "contamination" / "001_mask.png").unlink()
    with pytest.raises(InvalidInputError, match="001_mask.png"):
        list(iter_mvtec(root))
    bad = _mvtec_tree(tmp_path / "bad", mask_size=16)
    with pytest.raises(InvalidInputError, match="same size"):
        next(r for r in iter_mvtec(bad) if not r.is_good).load()
    (tmp_path / "flat").mkdir()
    with pytest.raises(InvalidInputError, match="MVTec layout"):
        list(iter_mvtec(tmp_path / "flat"))


def test_reference_bank_from_all_sources(tmp_path, quads):
    root = _mvtec_tree(tmp_path / "mvtec")
    bank = build_reference_bank(root)
    assert len(bank) == 6
    assert {r.category for r in bank} == {"breakage", "contamination", "scratch"}
    assert all(r.mask.any() and r.image.shape[:2] == r.mask.shape for r in bank)
    assert {r.label for r in bank if r.category == "breakage"} == {"broken_large"}
    assert len(build_reference_bank(root, categories=["Scratch"])) == 2
    assert len(build_reference_bank(root, limit=1)) == 1

    write_quadruplets(tmp_path / "ds", quads)
    from_dir = build_reference_bank(tmp_path / "ds")
    from_mem = build_reference_bank(quads)
    assert [r.category for r in from_dir] == [r.category for r in from_mem] == [q.category for q in quads]
    assert np.array_equal(from_dir[0].image, quads[0].abnormal)
    with pytest.raises(InvalidInputError, match="not a directory"):
        build_reference_bank(tmp_path / "missing")
