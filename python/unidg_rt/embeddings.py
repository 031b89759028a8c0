"""Precomputed prompt embeddings per defect category (DESIGN §1, text mode). numpy only.

A production line uses a fixed defect vocabulary, so the heavy text encoders (T5-XXL, CLIP-L)
run once (:func:`unidg_rt.models.text.build_embeddings_cache`) and the line ships this file.

File format ``unidg-embeddings/1``: one safetensors file with, per category,
``{category}.prompt_embeds`` ``[T, D]`` and ``{category}.pooled_prompt_embeds`` ``[P]``, and
metadata ``format`` = ``unidg-embeddings/1`` and key ``unidg_embeddings`` holding JSON::

    {"format": "unidg-embeddings/1", "categories": [...], "prompts": {cat: prompt},
     "encoder": "...", "dim": D, "pooled_dim": P, "seq_len": T}

Category names are normalised: lowercase, runs of whitespace/``-``/``_`` → ``_``
(``"Black spot"`` → ``"black_spot"``).
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from unidg_rt.errors import InvalidInputError, UnknownCategoryError, WeightsError

logger = logging.getLogger(__name__)

FORMAT = "unidg-embeddings/1"
METADATA_KEY = "unidg_embeddings"
_EMBEDS, _POOLED = "prompt_embeds", "pooled_prompt_embeds"
_STORE_DTYPES = {"float32": np.float32, "float16": np.float16}


def normalize_category(name: str) -> str:
    """``"Foreign  Matter"``, ``"foreign-matter"`` → ``"foreign_matter"`` (whitespace, ``-`` and
    ``_`` runs become one ``_``; the same equivalence as :func:`unidg_rt.data.vocab.normalize_name`)."""
    norm = re.sub(r"[\s_\-]+", "_", name).strip("_").lower() if isinstance(name, str) else ""
    if not norm:
        raise InvalidInputError(f"defect category must be a non-empty string; got {name!r}")
    if "." in norm:
        raise InvalidInputError(f"defect category {name!r} must not contain '.' (it separates tensor names)")
    return norm


def zero_embeddings(
    seq_len: int = 512, dim: int = 4096, pooled_dim: int = 768
) -> tuple[np.ndarray, np.ndarray]:
    """All-zero ``(prompt_embeds [T, D], pooled [P])`` float32: reference mode's default conditioning."""
    if min(seq_len, dim, pooled_dim) < 1:
        raise InvalidInputError(f"seq_len, dim, pooled_dim must be >= 1; got {seq_len}, {dim}, {pooled_dim}")
    return np.zeros((seq_len, dim), np.float32), np.zeros((pooled_dim,), np.float32)


class EmbeddingsCache:
    """Prompt embeddings per normalised category, in memory. ``get`` returns float32 arrays."""

    def __init__(
        self,
        embeds: Mapping[str, np.ndarray],
        pooled: Mapping[str, np.ndarray],
        prompts: Mapping[str, str] | None = None,
        encoder: str = "unknown",
        path: Path | None = None,
    ):
        self._embeds = dict(embeds)
        self._pooled = dict(pooled)
        self.prompts = dict(prompts or {})
        self.encoder = encoder
        self.path = path
        if not self._embeds:
            raise InvalidInputError("an embeddings cache needs at least one category")
        if self._embeds.keys() != self._pooled.keys():
            raise InvalidInputError("every category needs both prompt_embeds and pooled_prompt_embeds")
        first = next(iter(self._embeds))
        self.seq_len, self.dim = self._embeds[first].shape
        self.pooled_dim = self._pooled[first].shape[0]
        for cat in self._embeds:
            e, p = self._embeds[cat], self._pooled[cat]
            if e.shape != (self.seq_len, self.dim) or p.shape != (self.pooled_dim,):
                raise InvalidInputError(
                    f"category {cat!r} has prompt_embeds {e.shape} / pooled {p.shape}; every category must "
                    f"share [T, D] = {(self.seq_len, self.dim)} and [P] = {(self.pooled_dim,)}"
                )

    # -- lookup ----------------------------------------------------------------------------
    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self._embeds)

    def __len__(self) -> int:
        return len(self._embeds)

    def __iter__(self) -> Iterator[str]:
        return iter(self._embeds)

    def __contains__(self, category: object) -> bool:
        try:
            return isinstance(category, str) and normalize_category(category) in self._embeds
        except InvalidInputError:
            return False

    def get(self, category: str) -> tuple[np.ndarray, np.ndarray]:
        """``(prompt_embeds float32 [T, D], pooled_prompt_embeds float32 [P])`` for one category."""
        key = normalize_category(category)
        if key not in self._embeds:
            raise UnknownCategoryError(self._unknown_message(category, key))
        e, p = self._embeds[key], self._pooled[key]
        return e.astype(np.float32, copy=False), p.astype(np.float32, copy=False)

    def stack(self, categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Batched ``get``: ``([B, T, D], [B, P])``."""
        pairs = [self.get(c) for c in categories]
        return np.stack([e for e, _ in pairs]), np.stack([p for _, p in pairs])

    def _unknown_message(self, category: str, key: str) -> str:
        close = difflib.get_close_matches(key, self.categories, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        where = f" in {self.path}" if self.path else ""
        return (
            f"unknown defect category {category!r} (normalised {key!r}){where}.{hint} "
            f"Known categories ({len(self)}): {', '.join(self.categories)}. "
            "Add it by rebuilding the cache with unidg_rt.models.text.build_embeddings_cache."
        )

    # -- file I/O ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> EmbeddingsCache:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"embeddings cache {path} not found; build it with build_embeddings_cache")
        try:
            with safe_open(str(path), framework="np") as f:
                meta_text = (f.metadata() or {}).get(METADATA_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"embeddings cache {path} is not a readable safetensors file: {exc}") from exc
        if meta_text is None:
            raise WeightsError(f"{path} has no {METADATA_KEY!r} metadata: not a unidg embeddings cache")
        try:
            meta = json.loads(meta_text)
        except ValueError as exc:
            raise WeightsError(f"{path}: {METADATA_KEY!r} metadata is not valid JSON: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise WeightsError(f"{path} has format {meta.get('format')!r}; this version reads {FORMAT!r}")
        cats = list(meta.get("categories", []))
        missing = [f"{c}.{s}" for c in cats for s in (_EMBEDS, _POOLED) if f"{c}.{s}" not in tensors]
        if missing:
            raise WeightsError(f"embeddings cache {path} is incomplete: missing tensors {missing}")
        cache = cls(
            {c: tensors[f"{c}.{_EMBEDS}"] for c in cats},
            {c: tensors[f"{c}.{_POOLED}"] for c in cats},
            prompts=meta.get("prompts", {}),
            encoder=meta.get("encoder", "unknown"),
            path=path,
        )
        logger.info(
            "loaded %d defect categories from %s (T=%d, D=%d)", len(cache), path, cache.seq_len, cache.dim
        )
        return cache

    @classmethod
    def save(
        cls,
        path: str | Path,
        entries: Mapping[str, tuple[np.ndarray, np.ndarray]],
        prompts: Mapping[str, str] | None = None,
        encoder: str = "unknown",
        dtype: str = "float32",
    ) -> EmbeddingsCache:
        """Write ``entries`` (category → ``(prompt_embeds [T, D], pooled [P])``) to ``path``.
        ``prompts`` (category → prompt text) is stored for provenance. Returns the cache."""
        from safetensors.numpy import save_file

        if dtype not in _STORE_DTYPES:
            raise InvalidInputError(f"dtype={dtype!r} must be one of {sorted(_STORE_DTYPES)}")
        embeds: dict[str, np.ndarray] = {}
        pooled: dict[str, np.ndarray] = {}
        for name, (e, p) in entries.items():
            key = normalize_category(name)
            if key in embeds:
                raise InvalidInputError(f"categories {name!r} and another entry both normalise to {key!r}")
            e, p = np.asarray(e), np.asarray(p)
            if e.ndim == 3 and e.shape[0] == 1:
                e = e[0]  # [1, T, D] -> [T, D]
            if p.ndim == 2 and p.shape[0] == 1:
                p = p[0]  # [1, P] -> [P]
            if e.ndim != 2 or p.ndim != 1:
                raise InvalidInputError(
                    f"category {name!r}: prompt_embeds must be [T, D] and pooled [P]; got {e.shape} and {p.shape}"
                )
            embeds[key] = np.ascontiguousarray(e, dtype=_STORE_DTYPES[dtype])
            pooled[key] = np.ascontiguousarray(p, dtype=_STORE_DTYPES[dtype])
        norm_prompts = {normalize_category(k): v for k, v in (prompts or {}).items()}
        cache = cls(embeds, pooled, prompts=norm_prompts, encoder=encoder, path=Path(path))
        meta = {
            "format": FORMAT,
            "categories": list(cache.categories),
            "prompts": cache.prompts,
            "encoder": encoder,
            "dim": int(cache.dim),
            "pooled_dim": int(cache.pooled_dim),
            "seq_len": int(cache.seq_len),
        }
        tensors = {f"{c}.{_EMBEDS}": embeds[c] for c in embeds} | {
            f"{c}.{_POOLED}": pooled[c] for c in pooled
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": FORMAT, METADATA_KEY: json.dumps(meta)})
        logger.info("wrote %d defect categories to %s", len(cache), path)
        return cache
