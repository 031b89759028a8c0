"""The ``unidg-rt`` command line (typer + rich)."""
