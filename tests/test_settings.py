"""Settings: ``fast_path`` from arguments, ``UNIDG_FAST_PATH`` and TOML, with bool spellings."""

from __future__ import annotations

import pytest

from unidg_rt.errors import ConfigError
from unidg_rt.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("UNIDG_FAST_PATH", raising=False)
    monkeypatch.delenv("UNIDG_CONFIG", raising=False)


def test_fast_path_defaults_to_auto():
    assert Settings().fast_path == "auto"


@pytest.mark.parametrize(
    "raw,expected",
    [("auto", "auto"), ("on", "on"), ("OFF", "off"), ("true", "on"), ("1", "on"), ("false", "off"),
     ("0", "off"), ("yes", "on")],
)  # fmt: skip
def test_fast_path_from_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("UNIDG_FAST_PATH", raw)
    assert load_settings().fast_path == expected


def test_fast_path_from_arguments_and_toml(tmp_path, monkeypatch):
    assert (
        load_settings(fast_path=True).fast_path == "on" and load_settings(fast_path=False).fast_path == "off"
    )
    toml = tmp_path / "s.toml"
    toml.write_text("fast_path = false\nprecision = 'fp8'\n")
    s = load_settings(toml)
    assert s.fast_path == "off" and s.precision == "fp8"
    monkeypatch.setenv("UNIDG_FAST_PATH", "on")  # environment wins over the file
    assert load_settings(toml).fast_path == "on"
    assert load_settings(toml, fast_path="auto").fast_path == "auto"  # arguments win over both


def test_bad_fast_path_is_one_line():
    with pytest.raises(ConfigError, match="fast_path: Input should be 'auto', 'on' or 'off'") as exc:
        load_settings(fast_path="sometimes")
    assert "\n" not in str(exc.value)
