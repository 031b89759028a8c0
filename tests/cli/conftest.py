"""CLI test helpers: run ``unidg-rt`` (``app.main``, the console script) in-process."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def one_line_error(self, *needles: str) -> str:
        """Exit code 2, exactly one ``error:`` line on stderr containing every needle, no traceback."""
        assert self.code == 2, (self.code, self.stdout, self.stderr)
        assert "Traceback" not in self.stderr and len(self.error_lines) == 1, self.stderr
        line = self.error_lines[0]
        assert line.startswith("error:"), line
        for needle in needles:
            assert needle in line, (needle, line)
        return line


@pytest.fixture
def run_cli(monkeypatch):
    """``run_cli(*args)`` runs ``unidg-rt ARGS`` through ``unidg_rt.cli.app.main`` inside
    typer's ``CliRunner`` isolation (stdout/stderr captured), as a user's shell would: typed
    errors become exit code 2 and one ``error:`` line."""
    from unidg_rt.cli.app import main

    def run(*args: str) -> CliRun:
        monkeypatch.setattr(sys, "argv", ["unidg-rt", *map(str, args)])
        with CliRunner().isolation() as (out, err, _):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            return CliRun(code, out.getvalue().decode(), err.getvalue().decode())

    return run


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA reported available (capability 9.0) while every tensor stays on the CPU: the torch
    backend built by ``from_pretrained`` keeps its models on the CPU and records the device it
    was asked for. Returns the list of :class:`FastPathConfig` that ``apply_fast_path`` got."""
    import torch

    import unidg_rt.runtime.optimize as optimize
    import unidg_rt.runtime.torch_backend as torch_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))

    class CPUBackedTorchBackend(torch_backend.TorchBackend):
        def __init__(self, transformer, vae, device="cpu", dtype=None, attention_form=None):
            super().__init__(transformer, vae, device="cpu", dtype="float32", attention_form=attention_form)
            self.info["requested_device"] = str(device)

    monkeypatch.setattr(torch_backend, "TorchBackend", CPUBackedTorchBackend)
    applied = []
    original = optimize.apply_fast_path

    def spy(backend, cfg=optimize.FastPathConfig(), **kwargs):
        applied.append(cfg)
        return original(backend, cfg, **kwargs)

    monkeypatch.setattr(optimize, "apply_fast_path", spy)
    return applied
