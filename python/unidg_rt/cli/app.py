"""``unidg-rt``: typer app. Each command lives in its own module exposing ``register(app)``."""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from unidg_rt.errors import UniDGError

app = typer.Typer(
    name="unidg-rt",
    help="UniDG defect-generation runtime: generate, bench, export, build, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

#: command modules under unidg_rt.cli; each defines register(app)
COMMAND_MODULES = (
    "generate",
    "inspect_cmd",
    "config_cmd",
    "bench",
    "export_cmd",
    "build_cmd",
    "train_cmd",
    "eval_cmd",
    "calibrate_cmd",
    "synth_cmd",
    "quantize_cmd",
)

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"unidg_rt.cli.{_name}")
    except ModuleNotFoundError as exc:  # command module not written yet / optional
        if exc.name != f"unidg_rt.cli.{_name}":
            raise
        continue
    _mod.register(app)


def setup_logging(level: str = "INFO") -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)]
    )


def main() -> None:
    """Entry point: typed errors become one red line and exit code 2, never a traceback."""
    try:
        app()
    except UniDGError as exc:
        from rich.markup import escape

        message = " ".join(str(exc).split())  # one line, whatever the message or terminal width
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        sys.exit(2)
