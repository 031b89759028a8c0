"""Export: per-component I/O specs (data), ONNX export with staged artifacts, ORT parity checks.

- :mod:`unidg_rt.export.spec` — :class:`IOSpec` per component; the single source for export
  dynamic axes, engine profiles, buffer allocation and tests (numpy only, no torch).
- :mod:`unidg_rt.export.onnx` — :func:`export_component` (``torch.onnx.export(dynamo=True)``),
  one file per ``{component}.{form}.{precision}.onnx`` + JSON sidecar, skipped when unchanged.
- :mod:`unidg_rt.export.forms` — the transformer's attention forms as ONNX can express them.
- :mod:`unidg_rt.export.pipeline` — :func:`export_pipeline`: everything ``UniDGPipeline.from_onnx``
  needs, plus the ``unidg_onnx.json`` manifest.
- :mod:`unidg_rt.export.passes`, :mod:`unidg_rt.export.verify`, :mod:`unidg_rt.export.inspect`.

Importing this package pulls neither torch nor onnx.
"""

from __future__ import annotations

from unidg_rt.errors import ExportError  # defined with the other typed errors; re-exported here

__all__ = ["ExportError"]
