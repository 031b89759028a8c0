"""All typed errors live in unidg_rt.errors and share one base (callers catch UniDGError)."""

from __future__ import annotations

import inspect

from unidg_rt import errors


def test_every_error_is_a_unidg_error_and_export_error_is_shared():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 8
    assert all(issubclass(c, errors.UniDGError) for c in classes)
    from unidg_rt.export import ExportError

    assert ExportError is errors.ExportError and issubclass(ExportError, RuntimeError)
