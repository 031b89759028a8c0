"""Precomputed prompt-embeddings cache (numpy + safetensors only)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from unidg_rt.embeddings import FORMAT, EmbeddingsCache, normalize_category, zero_embeddings
from unidg_rt.errors import InvalidInputError, UnknownCategoryError, WeightsError

T, D, P = 8, 16, 12


def _entries(names):
    rng = np.random.default_rng(0)
    return {
        n: (rng.standard_normal((T, D)).astype(np.float32), rng.standard_normal(P).astype(np.float32))
        for n in names
    }


def test_round_trip(tmp_path):
    names = ["Scratch", "black spot", "Foreign  Matter", "dirt"]
    entries = _entries(names)
    path = tmp_path / "sub" / "emb.safetensors"
    EmbeddingsCache.save(path, entries, prompts={"Scratch": "a scratch"}, encoder="tiny")
    cache = EmbeddingsCache.load(path)
    assert cache.categories == ("scratch", "black_spot", "foreign_matter", "dirt")
    assert (cache.seq_len, cache.dim, cache.pooled_dim, cache.encoder) == (T, D, P, "tiny")
    assert cache.prompts == {"scratch": "a scratch"}
    assert (
        len(cache) == 4
        and "Black Spot" in cache
        and "black-spot" in cache
        and " foreign_ matter" in cache
        and "crack" not in cache
        and "" not in cache
    )
    for name in names:
        e, p = cache.get(name)
        assert e.dtype == np.float32 and e.shape == (T, D) and p.shape == (P,)
        np.testing.assert_array_equal(e, entries[name][0])
        np.testing.assert_array_equal(p, entries[name][1])
    e, p = cache.stack(["dirt", "scratch"])
    assert e.shape == (2, T, D) and p.shape == (2, P)
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["unidg_embeddings"])
        assert set(f.keys()) == {
            f"{c}.{s}" for c in cache.categories for s in ("prompt_embeds", "pooled_prompt_embeds")
        }
    assert meta == {
        "format": FORMAT,
        "categories": list(cache.categories),
        "prompts": {"scratch": "a scratch"},
        "encoder": "tiny",
        "dim": D,
        "pooled_dim": P,
        "seq_len": T,
    }


def test_float16_storage_and_batched_input(tmp_path):
    ((e, p),) = _entries(["hole"]).values()
    EmbeddingsCache.save(tmp_path / "e.safetensors", {"hole": (e[None], p[None])}, dtype="float16")
    got_e, got_p = EmbeddingsCache.load(tmp_path / "e.safetensors").get("hole")
    assert got_e.dtype == np.float32 and got_e.shape == (T, D)
    np.testing.assert_allclose(got_e, e, atol=1e-2)


def test_unknown_category_message(tmp_path):
    EmbeddingsCache.save(tmp_path / "e.safetensors", _entries(["scratch", "black spot", "dirt"]))
    cache = EmbeddingsCache.load(tmp_path / "e.safetensors")
    with pytest.raises(UnknownCategoryError) as info:
        cache.get("Scrach")
    msg = str(info.value)
    assert "'Scrach'" in msg and "Did you mean 'scratch'" in msg
    assert "Known categories (3): scratch, black_spot, dirt" in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, InvalidInputError)
    with pytest.raises(UnknownCategoryError) as info:
        cache.get("zzzz")
    assert "Did you mean" not in str(info.value)


def test_invalid_entries(tmp_path):
    with pytest.raises(InvalidInputError, match="both normalise"):
        EmbeddingsCache.save(tmp_path / "e.safetensors", _entries(["Black spot", "black_spot"]))
    bad = _entries(["a", "b"])
    bad["b"] = (np.zeros((T + 1, D), np.float32), bad["b"][1])
    with pytest.raises(InvalidInputError, match="share"):
        EmbeddingsCache.save(tmp_path / "e.safetensors", bad)
    with pytest.raises(InvalidInputError, match=r"'\.'"):
        normalize_category("v1.2")
    with pytest.raises(InvalidInputError):
        EmbeddingsCache.save(tmp_path / "e.safetensors", {})


def test_load_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        EmbeddingsCache.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable"):
        EmbeddingsCache.load(tmp_path / "junk.safetensors")
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a unidg embeddings cache"):
        EmbeddingsCache.load(tmp_path / "other.safetensors")


def test_zero_embeddings():
    e, p = zero_embeddings()
    assert e.shape == (512, 4096) and p.shape == (768,)
    assert e.dtype == np.float32 and not e.any() and not p.any()
    assert zero_embeddings(4, 8, 2)[0].shape == (4, 8)
    with pytest.raises(InvalidInputError):
        zero_embeddings(0, 8, 2)


def test_import_pulls_no_torch():
    code = "import sys, unidg_rt.embeddings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
