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
    [
        ("auto", "auto"),
        ("on", "on"),
        ("OFF", "off"),
        ("true", "on"),
        ("1", "on"),
        ("false", "off"),
        ("0", "off"),
        ("yes", "on"),
    ],
)
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


def test_settings_spell_forms_precisions_and_paste_modes_from_the_shared_words():
    """One definition (issue 16): Settings accepts exactly vocab's runnable attention forms and
    precisions and the card's paste modes (ONNX Runtime forms too, e.g. ``decomposed``)."""
    import typing

    import pytest
    from pydantic import ValidationError

    from unidg_rt.artifacts.card import PASTE_MODES
    from unidg_rt.settings import Settings
    from unidg_rt.vocab import ORT_FORMS, PRECISIONS, RUNNABLE_FORMS, TORCH_FORMS

    fields = Settings.model_fields

    def choices(name):
        return next(
            typing.get_args(a) for a in typing.get_args(fields[name].annotation) if a is not type(None)
        )

    assert choices("precision") == PRECISIONS
    assert choices("attention_form") == RUNNABLE_FORMS
    assert set(RUNNABLE_FORMS) == set(TORCH_FORMS) | set(ORT_FORMS)
    assert choices("paste_mode") == PASTE_MODES
    assert Settings(attention_form="decomposed").attention_form == "decomposed"
    with pytest.raises(ValidationError, match="attention_form"):
        Settings(attention_form="plugin")  # needs the TensorRT plugin: not a runnable form
