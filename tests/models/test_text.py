"""FluxTextEncoders == running the transformers models directly (tiny random models, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from unidg_rt.embeddings import EmbeddingsCache  # noqa: E402
from unidg_rt.errors import InvalidInputError, WeightsError  # noqa: E402
from unidg_rt.models.text import FluxTextEncoders, build_embeddings_cache  # noqa: E402

WORDS = (
    "a an the on of in scratch dirt hole black spot crack surface metal small large foreign matter".split()
)
PROMPTS = ["a small scratch on the metal surface", "Black spot", "dirt"]


def _write_clip_tokenizer(path: Path) -> None:
    """Byte-level BPE vocab with every byte (with and without ``</w>``) and a few merges."""
    path.mkdir(parents=True)
    chars = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for tok in [
        "<|startoftext|>",
        "<|endoftext|>",
        *chars,
        *(c + "</w>" for c in chars),
        "sc",
        "scr",
        "scratch</w>",
    ]:
        vocab.setdefault(tok, len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\ns c\nsc r\n")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )


def _write_t5_tokenizer(path: Path) -> None:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -5.0) for w in WORDS] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyzB"]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(path))


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    """A diffusers-layout folder: text_encoder, tokenizer, text_encoder_2, tokenizer_2."""
    root = tmp_path_factory.mktemp("flux_text")
    torch.manual_seed(0)
    clip_cfg = transformers.CLIPTextConfig(
        vocab_size=600,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    transformers.CLIPTextModel(clip_cfg).save_pretrained(str(root / "text_encoder"))
    t5_cfg = transformers.T5Config(
        vocab_size=64,
        d_model=48,
        d_kv=12,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
    )
    transformers.T5EncoderModel(t5_cfg).save_pretrained(str(root / "text_encoder_2"))
    _write_clip_tokenizer(root / "tokenizer")
    _write_t5_tokenizer(root / "tokenizer_2")
    return root


@pytest.fixture(scope="module")
def encoders(pipe_dir) -> FluxTextEncoders:
    # no explicit tokenizer folders: found as diffusers siblings of the encoder folders
    return FluxTextEncoders.from_dirs(pipe_dir / "text_encoder", pipe_dir / "text_encoder_2")


def _direct(pipe_dir: Path, prompts: list[str], max_len: int):
    clip_tok = transformers.CLIPTokenizer.from_pretrained(str(pipe_dir / "tokenizer"))
    t5_tok = transformers.T5Tokenizer.from_pretrained(str(pipe_dir / "tokenizer_2"))
    clip = transformers.CLIPTextModel.from_pretrained(str(pipe_dir / "text_encoder")).eval()
    t5 = transformers.T5EncoderModel.from_pretrained(str(pipe_dir / "text_encoder_2")).eval()
    clip_ids = clip_tok(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    t5_ids = t5_tok(
        prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return t5(t5_ids).last_hidden_state, clip(clip_ids).pooler_output


def test_encode_matches_transformers(pipe_dir, encoders):
    embeds, pooled = encoders.encode(PROMPTS, max_sequence_length=32)
    assert embeds.shape == (3, 32, 48) and pooled.shape == (3, 32)
    ref_embeds, ref_pooled = _direct(pipe_dir, PROMPTS, 32)
    torch.testing.assert_close(embeds, ref_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-6, rtol=0)
    # the batch does not leak between prompts (no attention mask, padded to max_length)
    single, single_pooled = encoders.encode([PROMPTS[1]], max_sequence_length=32)
    torch.testing.assert_close(single[0], embeds[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(single_pooled[0], pooled[1], atol=1e-5, rtol=0)
    assert encoders.encode(PROMPTS[:1])[0].shape == (1, 512, 48)  # FLUX default length


def test_from_pipeline_dir_and_truncation_warning(pipe_dir, caplog):
    enc = FluxTextEncoders.from_pipeline_dir(pipe_dir, dtype=torch.float32)
    assert enc.dim == 48 and enc.pooled_dim == 32 and enc.clip_max_length == 77
    with caplog.at_level("WARNING"):
        out, _ = enc.encode([" ".join(WORDS * 3)], max_sequence_length=8)
    assert out.shape == (1, 8, 48)
    assert "truncated" in caplog.text


def test_bad_arguments(encoders):
    with pytest.raises(InvalidInputError, match="max_sequence_length"):
        encoders.encode(["dirt"], max_sequence_length=513)
    with pytest.raises(InvalidInputError, match="non-empty list"):
        encoders.encode([])


def test_missing_or_incomplete_dirs(pipe_dir, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        FluxTextEncoders.from_dirs(tmp_path / "nope", pipe_dir / "text_encoder_2")
    broken = tmp_path / "clip"
    broken.mkdir()
    (broken / "config.json").write_text((pipe_dir / "text_encoder" / "config.json").read_text())
    with pytest.raises(WeightsError, match="incomplete: missing weights"):
        FluxTextEncoders.from_dirs(broken, pipe_dir / "text_encoder_2")
    sharded = tmp_path / "t5"
    sharded.mkdir()
    (sharded / "config.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="model-00001-of-00002.safetensors"):
        FluxTextEncoders.from_dirs(pipe_dir / "text_encoder", sharded)
    # weights present but the tokenizer is neither inside nor a diffusers sibling
    lonely = tmp_path / "my_clip"
    lonely.mkdir()
    for f in (pipe_dir / "text_encoder").iterdir():
        (lonely / f.name).write_bytes(f.read_bytes())
    with pytest.raises(WeightsError, match="CLIP tokenizer not found"):
        FluxTextEncoders.from_dirs(lonely, pipe_dir / "text_encoder_2")


def test_build_embeddings_cache(encoders, tmp_path):
    categories = {"Scratch": PROMPTS[0], "black spot": PROMPTS[1], "dirt": PROMPTS[2]}
    cache = build_embeddings_cache(
        encoders, categories, tmp_path / "emb.safetensors", max_sequence_length=16, batch_size=2
    )
    assert cache.categories == ("scratch", "black_spot", "dirt")
    assert (cache.seq_len, cache.dim, cache.pooled_dim) == (16, 48, 32)
    assert cache.prompts["black_spot"] == "Black spot"
    again = EmbeddingsCache.load(tmp_path / "emb.safetensors")
    embeds, pooled = encoders.encode([PROMPTS[1]], max_sequence_length=16)
    e, p = again.get("Black Spot")
    assert e.dtype == np.float32 and p.dtype == np.float32
    np.testing.assert_allclose(e, embeds[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(p, pooled[0].numpy(), atol=1e-5)
    assert "clip=text_encoder" in again.encoder


def test_pipeline_prompt_through_text_encoders(encoders, tmp_path):
    """Text mode with a prompt: the pipeline encodes it and equals passing the embeds directly."""
    import numpy as np

    from unidg_rt.models.config import FluxConfig
    from unidg_rt.models.loading import save_checkpoint
    from unidg_rt.models.mmdit import FluxTransformer
    from unidg_rt.models.presets import tiny_vae_config
    from unidg_rt.models.vae import AutoencoderKLFlux
    from unidg_rt.runtime.pipeline import UniDGPipeline

    cfg = FluxConfig.tiny(joint_attention_dim=encoders.dim, pooled_projection_dim=encoders.pooled_dim)
    defaults = {"height": 32, "width": 32, "num_inference_steps": 2, "text_seq_len": 8}
    path = save_checkpoint(
        tmp_path / "m.safetensors", FluxTransformer(cfg), AutoencoderKLFlux(tiny_vae_config()), defaults
    )
    pipe = UniDGPipeline.from_pretrained(path, text_encoders=encoders)
    img = np.full((40, 40, 3), 128, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    a = pipe(img, mask, prompt="a long scratch", seed=0, output_type="np")
    e, p = encoders.encode(["a long scratch"], max_sequence_length=8)
    b = pipe(
        img, mask, prompt_embeds=e[0].numpy(), pooled_prompt_embeds=p[0].numpy(), seed=0, output_type="np"
    )
    assert np.array_equal(a.images, b.images)
