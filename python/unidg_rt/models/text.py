"""FLUX text encoders (CLIP-L pooled + T5-XXL sequence) loaded from local folders only.

Encoding follows diffusers' ``FluxPipeline.encode_prompt`` exactly: both tokenizers pad to
``max_length`` and truncate, no attention mask is passed to either encoder, CLIP gives its
``pooler_output`` ``[B, 768]``, T5 its last hidden state ``[B, max_sequence_length, 4096]``.

A production line runs these once per defect vocabulary (:func:`build_embeddings_cache`) and
ships only the cache (:mod:`unidg_rt.embeddings`). ``transformers`` is imported lazily: it is
an optional dependency.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unidg_rt.embeddings import EmbeddingsCache
from unidg_rt.errors import BackendUnavailableError, InvalidInputError, WeightsError

logger = logging.getLogger(__name__)

#: FluxPipeline refuses longer T5 sequences.
MAX_T5_SEQUENCE_LENGTH = 512
#: CLIP-L's context length (FluxPipeline's fallback ``tokenizer_max_length``).
CLIP_MAX_LENGTH = 77

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_CLIP_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_T5_TOKENIZER_FILES = (("tokenizer.json",), ("spiece.model",))
#: diffusers pipeline layout: encoder folder → its tokenizer folder (a sibling).
_DIFFUSERS_TOKENIZER_DIRS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            "text encoders need the optional dependency `transformers` (pip install 'unidg-rt[text]'); "
            "a production line can use a precomputed embeddings cache instead (unidg_rt.embeddings)"
        ) from exc
    return transformers


def _check_model_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise WeightsError(
            f"{what} folder {path} does not exist; pass the local folder holding config.json + weights"
        )
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    present = [f for f in _WEIGHT_FILES if (path / f).is_file()]
    if not present:
        missing.append(f"weights (one of {', '.join(_WEIGHT_FILES)})")
    for index in (f for f in present if f.endswith(".index.json")):
        try:
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"{what} shard index {path / index} is unreadable: {exc}") from exc
        missing += [s for s in shards if not (path / s).is_file()]
    if missing:
        raise WeightsError(f"{what} folder {path} is incomplete: missing {', '.join(missing)}")


def _find_tokenizer_dir(
    model_dir: Path, explicit: Path | None, options: tuple[tuple[str, ...], ...], what: str
) -> Path:
    """The tokenizer lives in ``explicit``, in the model folder, or (diffusers layout) in the sibling
    ``tokenizer``/``tokenizer_2`` folder."""
    candidates = [explicit] if explicit is not None else [model_dir]
    if explicit is None and model_dir.name in _DIFFUSERS_TOKENIZER_DIRS:
        candidates.append(model_dir.parent / _DIFFUSERS_TOKENIZER_DIRS[model_dir.name])
    for cand in candidates:
        if any(all((cand / f).is_file() for f in files) for files in options):
            return cand
    wanted = " or ".join("+".join(files) for files in options)
    raise WeightsError(
        f"{what} tokenizer not found in {', '.join(str(c) for c in candidates)}: need {wanted}; "
        f"pass the tokenizer folder explicitly"
    )


def _dtype_kwargs(transformers, dtype: torch.dtype) -> dict[str, Any]:
    # transformers 5 renamed `torch_dtype` to `dtype` (4.x only knows `torch_dtype`)
    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _load(loader, path: Path, what: str, **kwargs):
    try:
        return loader.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"cannot load {what} from {path}: {exc}") from exc


class FluxTextEncoders:
    """CLIP-L + T5 encoders and tokenizers; :meth:`encode` = ``FluxPipeline.encode_prompt``."""

    def __init__(
        self, clip_tokenizer, clip_model, t5_tokenizer, t5_model, *, name: str = "flux-text-encoders"
    ):
        self.clip_tokenizer = clip_tokenizer
        self.clip_model = clip_model.eval()
        self.t5_tokenizer = t5_tokenizer
        self.t5_model = t5_model.eval()
        self.name = name

    @classmethod
    def from_dirs(
        cls,
        clip_dir: str | Path,
        t5_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        clip_tokenizer_dir: str | Path | None = None,
        t5_tokenizer_dir: str | Path | None = None,
    ) -> FluxTextEncoders:
        """Load from local folders (never a hub id). Tokenizers are looked up in the given
        ``*_tokenizer_dir``, else in the model folder, else in diffusers' sibling folder
        (``text_encoder`` → ``tokenizer``, ``text_encoder_2`` → ``tokenizer_2``)."""
        clip_dir, t5_dir = Path(clip_dir), Path(t5_dir)
        _check_model_dir(clip_dir, "CLIP text encoder")
        _check_model_dir(t5_dir, "T5 text encoder")
        clip_tok_dir = _find_tokenizer_dir(
            clip_dir, Path(clip_tokenizer_dir) if clip_tokenizer_dir else None, _CLIP_TOKENIZER_FILES, "CLIP"
        )
        t5_tok_dir = _find_tokenizer_dir(
            t5_dir, Path(t5_tokenizer_dir) if t5_tokenizer_dir else None, _T5_TOKENIZER_FILES, "T5"
        )
        tf = _transformers()
        t5_tokenizer_cls = getattr(tf, "T5TokenizerFast", None) or tf.T5Tokenizer
        clip_tokenizer = _load(tf.CLIPTokenizer, clip_tok_dir, "CLIP tokenizer")
        t5_tokenizer = _load(t5_tokenizer_cls, t5_tok_dir, "T5 tokenizer")
        clip_model = _load(tf.CLIPTextModel, clip_dir, "CLIP text encoder", **_dtype_kwargs(tf, dtype)).to(
            device
        )
        t5_model = _load(tf.T5EncoderModel, t5_dir, "T5 encoder", **_dtype_kwargs(tf, dtype)).to(device)
        logger.info("loaded text encoders from %s and %s (%s on %s)", clip_dir, t5_dir, dtype, device)
        return cls(
            clip_tokenizer, clip_model, t5_tokenizer, t5_model, name=f"clip={clip_dir.name},t5={t5_dir.name}"
        )

    @classmethod
    def from_pipeline_dir(
        cls, root: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> FluxTextEncoders:
        """Load from a local diffusers FLUX pipeline folder (``text_encoder``, ``tokenizer``,
        ``text_encoder_2``, ``tokenizer_2``)."""
        root = Path(root)
        return cls.from_dirs(
            root / "text_encoder",
            root / "text_encoder_2",
            dtype,
            device,
            clip_tokenizer_dir=root / "tokenizer",
            t5_tokenizer_dir=root / "tokenizer_2",
        )

    @property
    def device(self) -> torch.device:
        return next(self.t5_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.t5_model.parameters()).dtype

    @property
    def clip_max_length(self) -> int:
        tok_max = getattr(self.clip_tokenizer, "model_max_length", CLIP_MAX_LENGTH) or CLIP_MAX_LENGTH
        return int(min(tok_max, self.clip_model.config.max_position_embeddings))

    @property
    def dim(self) -> int:
        return int(self.t5_model.config.d_model)

    @property
    def pooled_dim(self) -> int:
        return int(self.clip_model.config.hidden_size)

    def _tokenize(self, tokenizer, prompts: list[str], max_length: int, what: str) -> torch.Tensor:
        ids = tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids  # [B, max_length]
        untruncated = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids  # [B, L]
        if untruncated.shape[-1] >= ids.shape[-1] and not torch.equal(ids, untruncated):
            removed = tokenizer.batch_decode(untruncated[:, max_length - 1 : -1])
            logger.warning(
                "%s: this part of the prompt was truncated at %d tokens: %s", what, max_length, removed
            )
        return ids

    @torch.inference_mode()
    def encode_clip(self, prompts: Sequence[str]) -> torch.Tensor:
        """Pooled CLIP embedding ``[B, 768]``."""
        ids = self._tokenize(self.clip_tokenizer, _as_prompts(prompts), self.clip_max_length, "CLIP")
        out = self.clip_model(ids.to(self.clip_model.device), output_hidden_states=False)
        return out.pooler_output  # [B, hidden]

    @torch.inference_mode()
    def encode_t5(
        self, prompts: Sequence[str], max_sequence_length: int = MAX_T5_SEQUENCE_LENGTH
    ) -> torch.Tensor:
        """T5 last hidden state ``[B, max_sequence_length, 4096]``."""
        if not 1 <= max_sequence_length <= MAX_T5_SEQUENCE_LENGTH:
            raise InvalidInputError(
                f"max_sequence_length={max_sequence_length} must be in [1, {MAX_T5_SEQUENCE_LENGTH}] (FLUX's T5 limit)"
            )
        ids = self._tokenize(self.t5_tokenizer, _as_prompts(prompts), max_sequence_length, "T5")
        out = self.t5_model(ids.to(self.t5_model.device), output_hidden_states=False)
        return out[0]  # [B, T, d_model]

    def encode(
        self, prompts: Sequence[str], max_sequence_length: int = MAX_T5_SEQUENCE_LENGTH
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds [B, T, 4096], pooled_prompt_embeds [B, 768])`` like FluxPipeline."""
        prompt_embeds = self.encode_t5(prompts, max_sequence_length)
        pooled = self.encode_clip(prompts)
        return prompt_embeds, pooled


def _as_prompts(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidInputError(f"prompts must be a non-empty list of strings; got {prompts!r}")
    return prompts


def build_embeddings_cache(
    encoders: FluxTextEncoders,
    categories: dict[str, str],
    path: str | Path,
    max_sequence_length: int = MAX_T5_SEQUENCE_LENGTH,
    batch_size: int = 4,
) -> EmbeddingsCache:
    """Encode one prompt per defect category and write the cache file (DESIGN §1 text mode).

    ``categories`` maps a category name (normalised on save) to its prompt. Returns the cache
    as read back from ``path``."""
    if not categories:
        raise InvalidInputError("categories must map at least one defect category to a prompt")
    names = list(categories)
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        embeds, pooled = encoders.encode([categories[n] for n in chunk], max_sequence_length)
        embeds = embeds.float().cpu().numpy()  # [b, T, D]
        pooled = pooled.float().cpu().numpy()  # [b, P]
        for i, name in enumerate(chunk):
            entries[name] = (embeds[i], pooled[i])
        logger.info("encoded %d/%d categories", min(start + batch_size, len(names)), len(names))
    EmbeddingsCache.save(path, entries, prompts=dict(categories), encoder=encoders.name)
    return EmbeddingsCache.load(path)
