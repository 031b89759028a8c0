"""Shared export fixtures (torch.onnx.export costs ~10-25 s of CPU per graph, so tests share them):

- ``onnx_export``: ``export_pipeline(tiny_checkpoint)`` — transformer (``fold``) + VAE encoder/decoder.
- ``form_exports``: the other attention forms of a 1+1-layer tiny transformer.
"""

from __future__ import annotations

import pytest

OTHER_FORMS = ("decomposed", "attention_op", "plugin")


@pytest.fixture(scope="session")
def onnx_export(tiny_checkpoint, tmp_path_factory):
    """(out_dir, manifest) of ``export_pipeline(tiny_checkpoint)`` (default form ``fold``)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from unidg_rt.export.pipeline import export_pipeline

    out = tmp_path_factory.mktemp("onnx")
    manifest = export_pipeline(tiny_checkpoint, out)
    return out, manifest


@pytest.fixture(scope="session")
def onnx_dir(onnx_export):
    return onnx_export[0]


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoint):
    """(transformer, vae) loaded from the tiny checkpoint, fp32, reference attention."""
    from unidg_rt.models.loading import load_transformer, load_vae

    return load_transformer(tiny_checkpoint), load_vae(tiny_checkpoint)


@pytest.fixture(scope="session")
def form_exports(tmp_path_factory):
    """(out_dir, transformer, spec): OTHER_FORMS of a random 1+1-layer tiny transformer."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    from unidg_rt.export.onnx import export_component
    from unidg_rt.export.spec import GenerationRange, component_spec
    from unidg_rt.models.config import FluxConfig
    from unidg_rt.models.mmdit import FluxTransformer

    torch.manual_seed(1)
    model = FluxTransformer(FluxConfig.tiny(num_layers=1, num_single_layers=1)).eval().requires_grad_(False)
    spec = component_spec("transformer", model.config, GenerationRange((32, 64, 96), (8, 8, 8), (1, 1, 2)))
    out = tmp_path_factory.mktemp("forms")
    for form in OTHER_FORMS:
        export_component("transformer", model, spec, out, attention_form=form)
    return out, model, spec
