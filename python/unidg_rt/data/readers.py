"""Readers/writers for real and synthetic defect data.

Layouts:

- **MVTec-AD**: `<root>/<class>/train/good/*.png` (normals), `<root>/<class>/test/<defect>/*.png`
  and `<root>/<class>/ground_truth/<defect>/<stem>_mask.png` (`test/good` has no masks).
- **Quadruplet folder**: `<root>/normal/<stem>.png`, `<root>/abnormal/<stem>.png`,
  `<root>/mask/<stem>.png` (or `<stem>_mask.png`), and captions either in `<root>/captions.jsonl`
  (one `{"stem", "caption", "category", "surface", "seed"}` object per line) or in
  `<root>/caption/<stem>.txt`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from unidg_rt.data.quadruplets import Quadruplet
from unidg_rt.data.vocab import get_category, match_category
from unidg_rt.errors import InvalidInputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_LAYOUT = "<root>/<class>/test/<defect>/*.png + <root>/<class>/ground_truth/<defect>/<stem>_mask.png (+ train/good/*.png)"
QUAD_LAYOUT = "<root>/normal/*.png, <root>/abnormal/*.png, <root>/mask/*.png matched by stem, + captions.jsonl or caption/*.txt"


@dataclass(frozen=True)
class MVTecRecord:
    image_path: Path
    mask_path: Path | None  # None for good images
    object_class: str
    defect: str  # folder name, "good" for normals
    split: str  # "train" or "test"

    @property
    def is_good(self) -> bool:
        return self.mask_path is None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], mask bool [H, W]); an all-False mask for good images."""
        image = load_image(self.image_path)
        if self.mask_path is None:
            return image, np.zeros(image.shape[:2], bool)
        mask = load_mask(self.mask_path)
        _check_same_size(image, mask, self.image_path, self.mask_path)
        return image, mask


@dataclass(eq=False)
class ReferenceDefect:
    """A real or synthetic defect usable as the reference half of a diptych."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    category: str  # canonical vocabulary name ("unknown" if the label maps to none)
    label: str  # the dataset's own label (MVTec folder name, jsonl category…)
    source: str  # file path or "synthetic:<seed>"
    object_class: str | None = None


def load_image(path: Path | str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_mask(path: Path | str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def _check_same_size(image: np.ndarray, other: np.ndarray, image_path: Path, other_path: Path) -> None:
    if image.shape[:2] != other.shape[:2]:
        raise InvalidInputError(
            f"{other_path} is {other.shape[1]}x{other.shape[0]} but {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}; masks and images of one sample must have the same size."
        )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_dir(root: Path | str, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a directory; expected the layout {layout}.")
    return root


# --------------------------------------------------------------------------- MVTec-AD


def iter_mvtec(
    root: Path | str,
    classes: Sequence[str] | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> Iterator[MVTecRecord]:
    """Records of an MVTec-AD style tree, sorted by class, split, defect, file name.

    Raises InvalidInputError for a missing root, no class folders, an unknown class, a defect
    image without its `<stem>_mask.png`, or a tree with no images at all.
    """
    root = _check_dir(root, MVTEC_LAYOUT)
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and ((p / "test").is_dir() or (p / "train").is_dir())
    )
    if not found:
        raise InvalidInputError(
            f"{root} has no <class>/test or <class>/train folders; expected the MVTec layout {MVTEC_LAYOUT}."
        )
    wanted = found if classes is None else [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise InvalidInputError(f"classes={unknown} not found under {root}; available: {found}.")
    bad_splits = [s for s in splits if s not in ("train", "test")]
    if bad_splits:
        raise InvalidInputError(f"splits={list(splits)} may only contain 'train' and 'test'.")
    count = 0
    for cls in wanted:
        for split in splits:
            split_dir = root / cls / split
            if not split_dir.is_dir():
                continue
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                defect = defect_dir.name
                for image_path in _images(defect_dir):
                    mask_path = None
                    if defect != "good":
                        mask_path = root / cls / "ground_truth" / defect / f"{image_path.stem}_mask.png"
                        if not mask_path.is_file():
                            raise InvalidInputError(
                                f"{image_path} has no mask: expected {mask_path} (MVTec layout {MVTEC_LAYOUT})."
                            )
                    count += 1
                    yield MVTecRecord(image_path, mask_path, cls, defect, split)
    if count == 0:
        raise InvalidInputError(
            f"no images found under {root} for classes {wanted}; expected {MVTEC_LAYOUT}."
        )


# --------------------------------------------------------------------------- quadruplet folders


def _find_by_stem(folder: Path, stems: Iterable[str]) -> Path | None:
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _read_captions_jsonl(path: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidInputError(
                f"{path}:{lineno} is not valid JSON ({err.msg}); one object per line."
            ) from err
        if not isinstance(rec, dict) or "stem" not in rec or "caption" not in rec:
            raise InvalidInputError(f"{path}:{lineno} needs at least the keys 'stem' and 'caption'.")
        records[str(rec["stem"])] = rec
    return records


def _category_of(meta: dict, caption: str) -> str:
    if meta.get("category"):
        return get_category(meta["category"]).name
    cat = match_category(caption)  # infer from the caption's words ("... with a small crack")
    return cat.name if cat is not None else "unknown"


def read_quadruplets(root: Path | str) -> Iterator[Quadruplet]:
    """Quadruplets of a folder written by `write_quadruplets` (or laid out the same way).

    The folder is indexed eagerly (missing files are reported before anything is yielded);
    images are decoded lazily.
    """
    root = _check_dir(root, QUAD_LAYOUT)
    missing = [d for d in ("normal", "abnormal", "mask") if not (root / d).is_dir()]
    if missing:
        raise InvalidInputError(
            f"{root} lacks the folder(s) {missing}; expected the quadruplet layout {QUAD_LAYOUT}."
        )
    abnormal_paths = _images(root / "abnormal")
    if not abnormal_paths:
        raise InvalidInputError(f"{root / 'abnormal'} contains no images; expected {QUAD_LAYOUT}.")
    jsonl = root / "captions.jsonl"
    metas = _read_captions_jsonl(jsonl) if jsonl.is_file() else {}
    index = []
    for abnormal_path in abnormal_paths:
        stem = abnormal_path.stem
        normal_path = _find_by_stem(root / "normal", [stem])
        mask_path = _find_by_stem(root / "mask", [stem, f"{stem}_mask"])
        if normal_path is None:
            raise InvalidInputError(
                f"{abnormal_path} has no normal image: expected {root / 'normal' / stem}.png."
            )
        if mask_path is None:
            raise InvalidInputError(f"{abnormal_path} has no mask: expected {root / 'mask' / stem}.png.")
        meta = metas.get(stem)
        if meta is None:
            txt = root / "caption" / f"{stem}.txt"
            if not txt.is_file():
                raise InvalidInputError(f"no caption for stem {stem!r}: add it to {jsonl} or write {txt}.")
            meta = {"caption": txt.read_text(encoding="utf-8").strip()}
        index.append((stem, normal_path, abnormal_path, mask_path, meta))
    for _stem, normal_path, abnormal_path, mask_path, meta in index:
        normal, abnormal, mask = load_image(normal_path), load_image(abnormal_path), load_mask(mask_path)
        _check_same_size(abnormal, normal, abnormal_path, normal_path)
        _check_same_size(abnormal, mask, abnormal_path, mask_path)
        caption = str(meta["caption"])
        seed = meta.get("seed")
        yield Quadruplet(
            normal=normal,
            abnormal=abnormal,
            mask=mask,
            caption=caption,
            category=_category_of(meta, caption),
            surface=meta.get("surface"),
            seed=int(seed) if seed is not None else None,
        )


def write_quadruplets(root: Path | str, quads: Iterable[Quadruplet], overwrite: bool = False) -> int:
    """Write quadruplets as PNGs (`normal/`, `abnormal/`, `mask/` with stems 000000, 000001, …)
    plus `captions.jsonl`. Returns the number written. Refuses a folder that already holds a
    dataset unless `overwrite=True`, which first deletes the old `NNNNNN.png` files."""
    root = Path(root)
    jsonl = root / "captions.jsonl"
    if jsonl.exists() and not overwrite:
        raise InvalidInputError(
            f"{root} already holds a dataset ({jsonl}); pass overwrite=True or use a new folder."
        )
    for sub in ("normal", "abnormal", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        if overwrite:  # drop our own stale files so a shorter dataset does not leave orphans
            for stale in (root / sub).glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
                stale.unlink()
    count = 0
    with jsonl.open("w", encoding="utf-8") as out:
        for i, quad in enumerate(quads):
            if not isinstance(quad, Quadruplet):
                raise InvalidInputError(f"quads[{i}] is a {type(quad).__name__}, expected a Quadruplet.")
            stem = f"{i:06d}"
            Image.fromarray(quad.normal).save(root / "normal" / f"{stem}.png")
            Image.fromarray(quad.abnormal).save(root / "abnormal" / f"{stem}.png")
            Image.fromarray(quad.mask.astype(np.uint8) * 255).save(root / "mask" / f"{stem}.png")
            record = {
                "stem": stem,
                "caption": quad.caption,
                "category": quad.category,
                "surface": quad.surface,
                "seed": quad.seed,
            }
            out.write(json.dumps(record) + "\n")
            count += 1
    logger.info("wrote %d quadruplets to %s", count, root)
    return count


# --------------------------------------------------------------------------- reference bank


def _is_quadruplet_dir(root: Path) -> bool:
    return (root / "abnormal").is_dir() and (root / "mask").is_dir()


def build_reference_bank(
    source: Path | str | Iterable[Quadruplet],
    categories: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[ReferenceDefect]:
    """Reference defects (image, mask, category) from a quadruplet folder, an MVTec-AD tree or
    an iterable of Quadruplets. MVTec folder names are mapped onto the vocabulary
    (`broken_large` → breakage, unmapped → unknown). `categories` filters by canonical name."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit={limit!r} must be None or a positive integer.")
    wanted = None if categories is None else {get_category(c).name for c in categories}
    bank: list[ReferenceDefect] = []

    def keep(ref: ReferenceDefect) -> bool:
        if wanted is not None and ref.category not in wanted:
            return False
        if not ref.mask.any():
            logger.warning("skipping %s: its defect mask is empty", ref.source)
            return False
        bank.append(ref)
        return limit is not None and len(bank) >= limit

    if isinstance(source, (str, Path)):
        root = _check_dir(source, f"either {QUAD_LAYOUT} or {MVTEC_LAYOUT}")
        if _is_quadruplet_dir(root):
            for q in read_quadruplets(root):
                ref = ReferenceDefect(
                    q.abnormal, q.mask, q.category, q.category, f"{root}:{q.seed}", q.surface
                )
                if keep(ref):
                    break
        else:
            for rec in iter_mvtec(root, splits=("test",)):
                if rec.is_good:
                    continue
                cat = match_category(rec.defect)
                name = cat.name if cat is not None else "unknown"
                if wanted is not None and name not in wanted:
                    continue
                image, mask = rec.load()
                if keep(
                    ReferenceDefect(image, mask, name, rec.defect, str(rec.image_path), rec.object_class)
                ):
                    break
    else:
        for i, q in enumerate(source):
            if not isinstance(q, Quadruplet):
                raise InvalidInputError(
                    f"source[{i}] is a {type(q).__name__}; pass a folder path or Quadruplets."
                )
            ref = ReferenceDefect(
                q.abnormal, q.mask, q.category, q.category, f"synthetic:{q.seed}", q.surface
            )
            if keep(ref):
                break
    if not bank:
        logger.warning("reference bank from %s is empty (categories=%s)", source, categories)
    return bank
