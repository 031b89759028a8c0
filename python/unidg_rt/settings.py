"""Runtime settings: pydantic-settings, env prefix ``UNIDG_``, optional TOML file (DESIGN §7).

Precedence (highest first): explicit arguments > ``UNIDG_*`` environment > TOML file
(``UNIDG_CONFIG`` or ``--config``) > defaults. The architecture config belongs to the weights,
never to settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from unidg_rt.artifacts.card import PASTE_MODES
from unidg_rt.errors import ConfigError
from unidg_rt.vocab import PRECISIONS, RUNNABLE_FORMS

#: accepted spellings of ``fast_path`` besides auto / on / off (env vars and TOML booleans)
_FAST_PATH_ALIASES = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIDG_", extra="forbid", validate_default=True)

    weights: Path | None = Field(
        None, description="UniDG checkpoint or diffusers folder; None = embedded default"
    )
    embeddings: Path | None = Field(None, description="category embeddings cache; None = beside the weights")
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    onnx_dir: Path | None = Field(None, description="exported ONNX folder (backend=onnxruntime)")
    engines_dir: Path | None = Field(None, description="built engine folder (backend=tensorrt)")
    precision: Literal[PRECISIONS] | None = Field(
        None,
        description="onnxruntime: exported precision to run; tensorrt: which plans; torch: only 'fp8' (FP8 "
        "linears on the GPU fast path); None = the folder's / model's default",
    )
    device: str = "cpu"
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch GPU fast path (fused QKV, Triton kernels, CUDA graphs): auto = on for CUDA, off on "
        "CPU; on = CUDA only (an error elsewhere); off = eager. Also true/false/1/0",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attention_form: Literal[RUNNABLE_FORMS] | None = Field(
        None,
        description="torch: reference/fold/triton/sdpa; onnxruntime: an exported graph form; None = default",
    )
    height: int | None = Field(None, description="per-side generation height (multiple of 16)")
    width: int | None = Field(None, description="per-side generation width (multiple of 16)")
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    output_dir: Path = Path("outputs")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    segments: list[dict[str, Any]] | None = Field(None, description="hierarchical sampling segments")
    paste_mode: Literal[PASTE_MODES] | None = Field(
        None, description="paste-back: replace pixels, or add the change (residual); None = the model's"
    )

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, v):
        if v is not None and (v < 16 or v % 16):
            raise ValueError(
                f"must be a positive multiple of 16 (got {v}); try {max(16, round(v / 16) * 16)}"
            )
        return v

    @field_validator("fast_path", mode="before")
    @classmethod
    def _fast_path_aliases(cls, v):
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, (str, int)):
            key = str(v).strip().lower()
            return _FAST_PATH_ALIASES.get(key, key)
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = os.environ.get("UNIDG_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Resolve settings; ``config_file`` is a TOML file (same keys as :class:`Settings`)."""
    from pydantic import ValidationError

    overrides = {k: v for k, v in overrides.items() if v is not None}
    old = os.environ.get("UNIDG_CONFIG")
    try:
        if config_file is not None:
            if not Path(config_file).is_file():
                raise ConfigError(f"config file {config_file} does not exist: pass an existing TOML file")
            os.environ["UNIDG_CONFIG"] = str(config_file)
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid settings — " + "; ".join(lines)) from exc
    finally:
        if config_file is not None:
            if old is None:
                os.environ.pop("UNIDG_CONFIG", None)
            else:
                os.environ["UNIDG_CONFIG"] = old
