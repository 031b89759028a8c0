"""``unidg-rt config show``: the resolved settings as JSON."""

from __future__ import annotations

import typer
from rich.console import Console

from unidg_rt.cli.common import ConfigOption

config_app = typer.Typer(
    help="Settings (pydantic-settings: UNIDG_* env vars and a TOML file).", no_args_is_help=True
)


@config_app.command("show")
def show(config: ConfigOption = None) -> None:
    """Print the resolved settings (defaults < TOML < UNIDG_* environment)."""
    from unidg_rt.settings import load_settings

    Console().print_json(load_settings(config).model_dump_json())


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
