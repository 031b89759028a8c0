"""The defect vocabulary (28 UDG standard categories), loaded from `categories.json`.

The vocabulary is data, not code: the embeddings cache, captions and the procedural generator
all read the same file. Names are matched case-, space-, hyphen- and underscore-insensitively,
and aliases ("crease" → fold, "broken" → breakage) map onto the canonical names.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from unidg_rt.errors import ConfigError, UnknownCategoryError

logger = logging.getLogger(__name__)

N_CATEGORIES = 28
SIZE_WORDS: tuple[tuple[float, str], ...] = (
    (0.05, "tiny"),
    (0.12, "small"),
    (0.25, "medium"),
    (9.9, "large"),
)


@dataclass(frozen=True)
class Category:
    """One vocabulary entry. `id` is the frequency rank (0 = most frequent in UDG)."""

    id: int
    name: str
    caption: str  # template with {object} and {size}
    aliases: tuple[str, ...]
    source: str  # "udg" (listed in the paper) or "assumed" (added to complete the 28)
    procedural: bool  # implemented by unidg_rt.data.defects
    scale_range: tuple[float, float] | None

    def render_caption(self, object_name: str = "product", scale: float | None = None) -> str:
        """Fill the caption template, e.g. 'a ceramic tile with a small crack'."""
        size = size_word(scale) if scale is not None else "visible"
        return " ".join(self.caption.format(object=object_name, size=size).split())


def normalize_name(name: str) -> str:
    """'Black_Spot ' → 'black spot' (the key used for every lookup)."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def size_word(scale: float) -> str:
    """Caption adjective for a defect extent given as a fraction of the image side."""
    for limit, word in SIZE_WORDS:
        if scale < limit:
            return word
    return SIZE_WORDS[-1][1]


@lru_cache(maxsize=1)
def _vocab() -> tuple[tuple[Category, ...], dict[str, Category]]:
    text = resources.files("unidg_rt.data").joinpath("categories.json").read_text(encoding="utf-8")
    raw = json.loads(text)["categories"]
    cats = []
    for entry in raw:
        scale = entry.get("scale_range")
        cats.append(
            Category(
                id=int(entry["id"]),
                name=normalize_name(entry["name"]),
                caption=str(entry["caption"]),
                aliases=tuple(normalize_name(a) for a in entry.get("aliases", [])),
                source=str(entry.get("source", "udg")),
                procedural=bool(entry.get("procedural", False)),
                scale_range=(float(scale[0]), float(scale[1])) if scale else None,
            )
        )
    cats.sort(key=lambda c: c.id)
    if [c.id for c in cats] != list(range(len(cats))):
        raise ConfigError("categories.json: ids must be 0..N-1 without gaps; fix the 'id' fields.")
    keys: dict[str, Category] = {}
    for cat in cats:
        for key in (cat.name, *cat.aliases):
            if key in keys and keys[key] is not cat:
                raise ConfigError(
                    f"categories.json: {key!r} names both {keys[key].name!r} and {cat.name!r}; "
                    "remove the duplicate alias."
                )
            keys[key] = cat
    logger.debug("loaded %d defect categories", len(cats))
    return tuple(cats), keys


def load_categories() -> list[Category]:
    """All categories, most frequent first (`categories[i].id == i`)."""
    return list(_vocab()[0])


def category_names() -> list[str]:
    return [c.name for c in _vocab()[0]]


def procedural_categories() -> list[str]:
    """Names of the categories the procedural generator implements."""
    return [c.name for c in _vocab()[0] if c.procedural]


def _lookup(name: str) -> Category | None:
    key = normalize_name(name)
    keys = _vocab()[1]
    if key in keys:
        return keys[key]
    if key.endswith("s") and not key.endswith("ss") and key[:-1] in keys:  # simple plural
        return keys[key[:-1]]
    return None


def get_category(name: str | int) -> Category:
    """Category by name, alias or id; unknown names raise UnknownCategoryError."""
    cats, keys = _vocab()
    if isinstance(name, int) and not isinstance(name, bool):
        if 0 <= name < len(cats):
            return cats[name]
        raise UnknownCategoryError(f"category id {name} is out of range; ids are 0..{len(cats) - 1}.")
    cat = _lookup(name)
    if cat is not None:
        return cat
    close = difflib.get_close_matches(normalize_name(name), list(keys), n=4, cutoff=0.6)
    shown = [k if keys[k].name == k else f"{k} (= {keys[k].name})" for k in close]
    hint = f" Close matches: {', '.join(shown)}." if shown else ""
    raise UnknownCategoryError(
        f"category={name!r} is not in the defect vocabulary.{hint} "
        f"Use one of the {len(cats)} names in unidg_rt/data/categories.json (or an alias): {', '.join(c.name for c in cats)}."
    )


def category_id(name: str) -> int:
    """Integer id of a category name or alias (case/space/underscore-insensitive)."""
    return get_category(name).id


def match_category(label: str) -> Category | None:
    """Best-effort mapping of a free-form dataset label (e.g. MVTec 'broken_large',
    'metal_contamination', 'scratch_head') onto the vocabulary; None if nothing matches.

    Tries the whole label, then every contiguous word span, longest first.
    """
    cat = _lookup(label)
    if cat is not None:
        return cat
    words = normalize_name(label).split()
    for span in range(len(words) - 1, 0, -1):
        for start in range(len(words) - span + 1):
            cat = _lookup(" ".join(words[start : start + span]))
            if cat is not None:
                return cat
    return None
