"""``inspect_onnx`` and the CLI: ``unidg-rt inspect x.onnx`` and ``unidg-rt export``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from unidg_rt.cli.app import app
from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.export.inspect import inspect_onnx

runner = CliRunner()


def test_inspect_onnx_summary(onnx_dir):
    path = onnx_dir / "transformer.fold.fp32.onnx"
    info = inspect_onnx(path)
    assert info["opsets"]["ai.onnx"] == 18 and info["custom_domains"] == []
    assert info["inputs"][0] == {
        "name": "hidden_states",
        "dtype": "float32",
        "shape": ["batch", "img_tokens", 384],
    }
    assert info["outputs"] == [
        {"name": "noise_pred", "dtype": "float32", "shape": ["batch", "img_tokens", 64]}
    ]
    assert info["op_counts"]["Softmax"] == 4 and info["nodes"] == sum(info["op_counts"].values())
    assert info["size_bytes"] == path.stat().st_size and info["external_data"] == []
    assert info["parameters"] > 0 and info["metadata"]["unidg_rt.attention_form"] == "fold"
    assert info["sidecar"]["attention_form"] == "fold" and "spec" not in info["sidecar"]


def test_inspect_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        inspect_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(InvalidInputError, match="not a readable ONNX model"):
        inspect_onnx(bad)


def test_cli_inspect_prints_json(onnx_dir):
    result = runner.invoke(app, ["inspect", str(onnx_dir / "vae_decoder.default.fp32.onnx")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["outputs"][0]["shape"] == ["batch", 3, "height", "width"]


def test_cli_export_skips_up_to_date_stages(onnx_dir, tiny_checkpoint):
    result = runner.invoke(
        app, ["export", "--weights", str(tiny_checkpoint), "--out", str(onnx_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert [r["skipped"] for r in manifest["results"]] == [True, True, True]
    assert manifest["attention_form"] == "fold"


def test_cli_export_default_out_dir(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "--weights", str(tiny_checkpoint), "--components", "vae_decoder"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "export" / "out" / tiny_checkpoint.stem
    assert (out / "vae_decoder.default.fp32.onnx").is_file() and (out / "unidg_onnx.json").is_file()
    assert "exported" in result.output


def test_cli_export_bad_arguments(tiny_checkpoint, tmp_path):
    result = runner.invoke(
        app, ["export", "--weights", str(tiny_checkpoint), "--out", str(tmp_path), "--forms", "flash"]
    )
    assert isinstance(result.exception, ConfigError) and "forms=['flash']" in str(result.exception)
    result = runner.invoke(
        app, ["export", "--weights", str(tiny_checkpoint), "--out", str(tmp_path), "--forms", ","]
    )
    assert isinstance(result.exception, InvalidInputError)
