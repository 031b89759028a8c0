"""Dataset writers: turn a batch's output folder into an anomaly-detection dataset.

Both writers read the *verified* ok records of ``results.jsonl`` (files whose sha256 no longer
matches are left out with a warning), build the dataset in a temp folder beside the target and
swap it in, so a dataset folder is always complete. Files are hard links to the batch outputs
where the filesystem allows (no extra space), copies otherwise. Exports are deterministic: the
same set of finished jobs gives the same file names and bytes, whatever order they ran in.

MVTec-AD layout (what anomalib's ``MVTecAD``/``Folder`` and most AD code read)::

    <root>/<product>/train/good/000.png            normal images (PNG)
    <root>/<product>/test/good/000.png             a held-out share of the normals
    <root>/<product>/test/<category>/000.png       synthesised defects
    <root>/<product>/ground_truth/<category>/000_mask.png   their masks (0/255)
    <root>/unidg_index.jsonl                       dataset file -> job id, seed, source file

Names inside a folder are zero-padded to one width: anomalib pairs images and masks by *sorted
order*, which only agrees between ``X.png`` and ``X_mask.png`` names when no stem is a prefix
of another (``1.png`` < ``10.png`` but ``10_mask.png`` < ``1_mask.png``).

UDG-style quadruplets: ``<root>/{normal,abnormal,mask}/<id>_<k>.png`` + ``captions.jsonl``
(one line per quadruplet: name, the three paths, caption, category, product, seed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unidg_rt.errors import ConfigError
from unidg_rt.jobs.io import ResultsLog, sha256_file
from unidg_rt.jobs.manifest import dataset_name

logger = logging.getLogger(__name__)

MARKER = ".unidg_dataset"
_BUILD = ".unidg-build-"


@dataclass
class DatasetSummary:
    root: Path
    abnormal: int = 0
    normal: int = 0
    skipped: list[str] = field(default_factory=list)  # job ids left out (files missing/corrupt)


def verified_records(out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Latest ok records whose files all match their sha256, sorted by id; + ids left out."""
    records, skipped = [], []
    for job_id, rec in sorted(ResultsLog(out_dir).latest().items()):
        if rec.get("status") != "ok":
            continue
        files = rec.get("files") or {}
        if files and all(
            sha256_file(out_dir / rel, missing_ok=True) == digest for rel, digest in files.items()
        ):
            records.append(rec)
        else:
            logger.warning(
                "job %s: output files missing or corrupt; left out of the dataset (re-run the batch)", job_id
            )
            skipped.append(job_id)
    return records, skipped


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # outputs are only ever replaced by rename, never edited: linking is safe
    except OSError:
        shutil.copyfile(src, dst)


def _numbered(n: int) -> Callable[[int], str]:
    width = max(3, len(str(max(n - 1, 0))))
    return lambda i: f"{i:0{width}d}"


def _replace_dir(root: Path, build: Callable[[Path], DatasetSummary]) -> DatasetSummary:
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists() and not (root / MARKER).exists():
        raise ConfigError(
            f"{root} exists and was not written by unidg-rt: pass a new folder for the dataset "
            "(it is replaced as a whole on every export)"
        )
    for stale in root.parent.glob(f".{root.name}{_BUILD}*"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}{_BUILD}"))
    try:
        summary = build(tmp)
        (tmp / MARKER).write_text("written by unidg-rt; replaced as a whole on every export\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if root.exists():
        old = root.parent / f".{root.name}{_BUILD}old-{os.getpid()}"
        os.replace(root, old)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    summary.root = root
    return summary


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def export_mvtec(
    out_dir: Path | str, root: Path | str | None = None, *, test_good_fraction: float = 0.2
) -> DatasetSummary:
    """MVTec-AD layout of the finished jobs in ``out_dir`` (default root ``out_dir/mvtec``).

    Products (``job.product``) become class folders and labels (the category) defect folders.
    ``test_good_fraction`` of each product's distinct normal images (``floor``, by content hash,
    so deterministic) go to ``test/good``, the rest to ``train/good``. The defects are
    synthesised *from* normal images, which may sit in ``train/good``: a synthetic test set
    shares product instances with training, unlike the original MVTec-AD.
    """
    out_dir = Path(out_dir)
    if not 0 <= test_good_fraction < 1:
        raise ConfigError(f"test_good_fraction={test_good_fraction} must be in [0, 1)")
    records, skipped = verified_records(out_dir)

    def build(tmp: Path) -> DatasetSummary:
        summary = DatasetSummary(root=tmp, skipped=skipped)
        index: list[dict[str, Any]] = []
        by_product: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_product.setdefault(dataset_name(rec.get("product") or "product"), []).append(rec)
        for product, recs in sorted(by_product.items()):
            normals = sorted({rec["outputs"]["normal"] for rec in recs})
            n_test = math.floor(len(normals) * test_good_fraction)
            splits = [("test", normals[:n_test]), ("train", normals[n_test:])]
            for split, rels in splits:
                name = _numbered(len(rels))
                for i, rel in enumerate(rels):
                    dst = f"{product}/{split}/good/{name(i)}.png"
                    _place(out_dir / rel, tmp / dst)
                    index.append({"file": dst, "source": rel, "kind": f"{split}_good"})
                summary.normal += len(rels)
            by_label: dict[str, list[tuple[dict[str, Any], int, str]]] = {}
            for rec in recs:
                for k, rel in enumerate(rec["outputs"]["images"]):
                    by_label.setdefault(dataset_name(rec["label"]), []).append((rec, k, rel))
            for label, items in sorted(by_label.items()):
                name = _numbered(len(items))
                for i, (rec, k, rel) in enumerate(items):
                    img, mask = (
                        f"{product}/test/{label}/{name(i)}.png",
                        f"{product}/ground_truth/{label}/{name(i)}_mask.png",
                    )
                    _place(out_dir / rel, tmp / img)
                    _place(out_dir / rec["outputs"]["mask"], tmp / mask)
                    index.append(
                        {
                            "file": img,
                            "mask": mask,
                            "source": rel,
                            "kind": "test_defect",
                            "id": rec["id"],
                            "seed": rec["seeds"][k],
                            "category": rec["label"],
                        }
                    )
                summary.abnormal += len(items)
        _write_jsonl(tmp / "unidg_index.jsonl", index)
        return summary

    summary = _replace_dir(Path(root) if root is not None else out_dir / "mvtec", build)
    logger.info(
        "MVTec layout: %d defect + %d good images in %s", summary.abnormal, summary.normal, summary.root
    )
    return summary


def caption_for(record: dict[str, Any]) -> str:
    """'a ceramic tile with a small crack' from the vocabulary's template, or a plain fallback."""
    from unidg_rt.data.vocab import match_category

    obj = (record.get("product") or "product").replace("_", " ")
    label = record.get("label") or "defect"
    cat = match_category(label)
    if cat is not None:
        return cat.render_caption(obj, record.get("defect_scale"))
    return f"a {obj} with a {label.replace('_', ' ')}"


def export_quadruplets(out_dir: Path | str, root: Path | str | None = None) -> DatasetSummary:
    """Flat UDG-style quadruplets of the finished jobs (default root ``out_dir/quadruplets``)."""
    out_dir = Path(out_dir)
    records, skipped = verified_records(out_dir)

    def build(tmp: Path) -> DatasetSummary:
        summary = DatasetSummary(root=tmp, skipped=skipped)
        rows = []
        for rec in records:
            caption = caption_for(rec)
            for k, rel in enumerate(rec["outputs"]["images"]):
                name = f"{rec['id']}_{k:03d}"
                paths = {d: f"{d}/{name}.png" for d in ("normal", "abnormal", "mask")}
                _place(out_dir / rec["outputs"]["normal"], tmp / paths["normal"])
                _place(out_dir / rel, tmp / paths["abnormal"])
                _place(out_dir / rec["outputs"]["mask"], tmp / paths["mask"])
                rows.append(
                    {
                        "name": name,
                        **paths,
                        "caption": caption,
                        "category": rec["label"],
                        "product": rec.get("product"),
                        "seed": rec["seeds"][k],
                        "id": rec["id"],
                    }
                )
        summary.abnormal = summary.normal = len(rows)
        _write_jsonl(tmp / "captions.jsonl", rows)
        return summary

    summary = _replace_dir(Path(root) if root is not None else out_dir / "quadruplets", build)
    logger.info("quadruplets: %d in %s", summary.abnormal, summary.root)
    return summary
