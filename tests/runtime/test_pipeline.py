"""End-to-end UniDGPipeline on a tiny random model (torch backend, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unidg_rt.errors import InvalidInputError, UnknownCategoryError
from unidg_rt.runtime.pipeline import UniDGPipeline


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return UniDGPipeline.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types(pipe, sample_inputs, output_type):
    img, mask, ref, rmask = sample_inputs
    out = pipe(img, mask, ref, rmask, seed=0, output_type=output_type, num_images_per_prompt=2)
    assert out.seeds == [0, 1]
    if output_type == "pil":
        assert len(out.images) == 2 and all(
            isinstance(i, Image.Image) and i.size == (120, 100) for i in out.images
        )
    elif output_type == "np":
        assert out.images.shape == (2, 100, 120, 3) and out.images.dtype == np.float32
    elif output_type == "pt":
        assert isinstance(out.images, torch.Tensor) and out.images.shape == (2, 3, 100, 120)
    else:  # packed latents [B, N_img, 64]; 64x128 diptych -> 4*8 tokens
        assert tuple(out.images.shape) == (2, 32, 64)


def test_same_seed_same_image_and_outside_mask_identical(pipe, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    a = pipe(img, mask, ref, rmask, seed=7, output_type="np")
    b = pipe(img, mask, ref, rmask, seed=7, output_type="np")
    c = pipe(img, mask, ref, rmask, seed=8, output_type="np")
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    out8 = np.round(a.images[0] * 255).astype(np.uint8)
    outside = a.masks == 0
    assert outside.sum() > 0.5 * outside.size
    assert np.array_equal(out8[outside], img[outside])
    assert a.masks[mask].min() == 1.0  # every masked pixel is generated


def test_residual_paste_adds_the_change_and_keeps_the_background(pipe, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    rep = pipe(img, mask, ref, rmask, seed=3, output_type="np", paste_mode="replace")
    res = pipe(img, mask, ref, rmask, seed=3, output_type="np", paste_mode="residual")
    assert np.array_equal(rep.masks, res.masks)
    outside = res.masks == 0
    assert np.array_equal(np.round(res.images[0] * 255).astype(np.uint8)[outside], img[outside])
    assert not np.array_equal(rep.images, res.images)
    # residual diptych = input + decoded - reconstruction: decoded = replace's diptych; the VAE round
    # trip is computed independently of the pipeline, by diffusers' AutoencoderKL with the same weights
    dip_in = pipe_diptych(pipe, img, mask, ref, rmask)
    recon = _diffusers_round_trip(pipe.backend.vae_model, dip_in.image)
    want = np.clip(dip_in.image + rep.diptychs[0] - recon, 0, 1)
    np.testing.assert_allclose(res.diptychs[0], want, atol=1e-5)


def _diffusers_round_trip(vae, image: np.ndarray) -> np.ndarray:
    """``image [H, W, 3]`` in [0, 1] through diffusers' ``AutoencoderKL`` (posterior mode → decode)."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.AutoencoderKL.from_config(vae.config.to_diffusers_config()).eval()
    ref.load_state_dict(vae.state_dict())
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)) * 2 - 1
    with torch.no_grad():
        out = ref.decode(ref.encode(x).latent_dist.mode()).sample
    return np.clip((out[0].permute(1, 2, 0).numpy() + 1) / 2, 0, 1)


def pipe_diptych(pipe, img, mask, ref, rmask):
    from unidg_rt.diptych import prepare_diptych

    d = pipe.defaults
    return prepare_diptych(img, mask, ref, rmask, height=d["height"], width=d["width"], **pipe.crop_rule)


def test_card_crop_rule_is_used(tiny_checkpoint, sample_inputs):
    from unidg_rt.errors import ConfigError

    img, mask, ref, rmask = sample_inputs
    p = UniDGPipeline.from_pretrained(tiny_checkpoint)
    wide = pipe_diptych(p, img, mask, ref, rmask).target_box
    p.replace_defaults(crop={"context": 0.02, "min_side": 16, "max_margin": 0.2})
    tight = pipe_diptych(p, img, mask, ref, rmask).target_box
    assert tight.width < wide.width
    out = p(img, mask, ref, rmask, seed=0, output_type="np")
    alpha_rows = np.flatnonzero(out.masks.max(axis=1) > 0)
    assert alpha_rows.min() >= tight.y0 and alpha_rows.max() < tight.y1  # pasted inside the tight crop
    with pytest.raises(ConfigError, match="crop"):  # refused when the card is read, not at a call
        p.replace_defaults(crop={"margin": 1.0})


def test_torch_generator_reproducible(pipe, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    a = pipe(img, mask, ref, rmask, generator=torch.Generator().manual_seed(3), output_type="np")
    b = pipe(img, mask, ref, rmask, generator=torch.Generator().manual_seed(3), output_type="np")
    assert np.array_equal(a.images, b.images)


def test_text_mode_category_and_embeds(pipe, sample_inputs):
    img, mask, _, _ = sample_inputs
    a = pipe(img, mask, defect_category="scratch", seed=1, output_type="np")
    e, p = pipe.embeddings.get("scratch")
    b = pipe(img, mask, prompt_embeds=e, pooled_prompt_embeds=p, seed=1, output_type="np")
    assert a.info["mode"] == "text"
    assert np.array_equal(a.images, b.images)
    c = pipe(img, mask, defect_category="hole", seed=1, output_type="np")
    assert not np.array_equal(a.images, c.images)


def test_callback_and_return_dict(pipe, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    seen = []

    def cb(_pipe, i, t, kw):
        seen.append((i, t))
        return kw

    images, alpha = pipe(
        img, mask, ref, rmask, seed=0, callback_on_step_end=cb, return_dict=False, num_inference_steps=4
    )
    assert [i for i, _ in seen] == [0, 1, 2, 3] and seen[0][1] == pytest.approx(1000.0)
    assert alpha.shape == (100, 120) and len(images) == 1


def test_segments_and_true_cfg_run(pipe, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    segs = [
        {"start": 0.0, "end": 0.5, "true_cfg_scale": 2.0},
        {"start": 0.5, "end": 1.0, "guidance_scale": 1.0},
    ]
    a = pipe(img, mask, ref, rmask, seed=0, segments=segs, output_type="np")
    b = pipe(img, mask, ref, rmask, seed=0, output_type="np")
    assert not np.array_equal(a.images, b.images)


def _count_transformer_calls(pipe, monkeypatch) -> list[int]:
    calls = [0]
    infer = pipe.backend.transformer.infer

    def counting(feed):
        calls[0] += 1
        return infer(feed)

    monkeypatch.setattr(pipe.backend.transformer, "infer", counting)
    return calls


def test_true_cfg_skips_the_equal_pass_in_reference_mode(pipe, sample_inputs, monkeypatch):
    img, mask, ref, rmask = sample_inputs
    cfg = [{"start": 0.0, "end": 1.0, "true_cfg_scale": 3.0}]
    plain = pipe(img, mask, ref, rmask, seed=0, segments=[], output_type="np", num_inference_steps=3)
    calls = _count_transformer_calls(pipe, monkeypatch)
    a = pipe(img, mask, ref, rmask, seed=0, segments=cfg, output_type="np", num_inference_steps=3)
    # zero (reference-mode) embeddings: the negative pass would be the same call -> skipped, same image
    assert calls[0] == 3 and np.array_equal(a.images, plain.images)
    calls[0] = 0
    t = pipe(
        img, mask, defect_category="scratch", seed=0, segments=cfg, output_type="np", num_inference_steps=3
    )
    t0 = pipe(
        img, mask, defect_category="scratch", seed=0, segments=[], output_type="np", num_inference_steps=3
    )
    assert calls[0] == 3 * 2 + 3 and not np.array_equal(t.images, t0.images)  # text mode: two passes


def test_reference_cfg_guides_the_target_half_against_the_reference_free_diptych(
    pipe, sample_inputs, monkeypatch
):
    img, mask, ref, rmask = sample_inputs
    kw = dict(seed=0, output_type="np", num_inference_steps=3)
    plain = pipe(img, mask, ref, rmask, segments=[], **kw)
    calls = _count_transformer_calls(pipe, monkeypatch)
    g = pipe(img, mask, ref, rmask, segments=[{"start": 0.0, "end": 1.0, "reference_cfg_scale": 3.0}], **kw)
    assert calls[0] == 6 and not np.array_equal(g.images, plain.images)
    # scale 1 = no guidance (one pass, same image); text mode has no reference: no-op
    calls[0] = 0
    one = pipe(img, mask, ref, rmask, segments=[{"start": 0.0, "end": 1.0, "reference_cfg_scale": 1.0}], **kw)
    assert calls[0] == 3 and np.array_equal(one.images, plain.images)
    calls[0] = 0
    t = pipe(
        img,
        mask,
        defect_category="hole",
        segments=[{"start": 0.0, "end": 1.0, "reference_cfg_scale": 3.0}],
        **kw,
    )
    t0 = pipe(img, mask, defect_category="hole", segments=[], **kw)
    assert calls[0] == 6 and np.array_equal(t.images, t0.images)
    # the left half (reference) is never guided: after one step its latents equal the unguided
    # run's (later steps differ slightly through attention to the guided target half)
    one_step = {**kw, "output_type": "latent", "num_inference_steps": 1}
    lg = pipe(
        img, mask, ref, rmask, segments=[{"start": 0.0, "end": 1.0, "reference_cfg_scale": 3.0}], **one_step
    )
    lp = pipe(img, mask, ref, rmask, segments=[], **one_step)
    w_tok = pipe.defaults["width"] // 16
    left = (np.arange(lg.images.shape[1]) % (2 * w_tok)) < w_tok
    np.testing.assert_allclose(_np(lg.images)[:, left], _np(lp.images)[:, left], atol=1e-6)
    assert not np.allclose(_np(lg.images)[:, ~left], _np(lp.images)[:, ~left])


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"height": 50}, "multiple of 16"),
        ({"width": 0}, "width"),
        ({"mask_image": np.zeros((100, 120), bool)}, "mask_image is empty"),
        ({"mask_image": np.ones((10, 10), bool)}, "mask_image"),
        ({"reference_mask": None}, "reference_image was given without reference_mask"),
        ({"reference_image": None, "reference_mask": None}, "no conditioning"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"paste_mode": "add"}, "paste_mode"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"group_bias": np.zeros((3, 3))}, "group_bias"),
        ({"prompt": "a scratch"}, "text encoders"),
        (
            {"prompt_embeds": np.zeros((8, 5)), "pooled_prompt_embeds": np.zeros(16)},
            "prompt_embeds has shape",
        ),
        ({"image": np.zeros((100, 120, 3)) + 2.0}, "image"),
    ],
)
def test_bad_inputs(pipe, sample_inputs, kwargs, match):
    img, mask, ref, rmask = sample_inputs
    args = {
        "image": img,
        "mask_image": mask,
        "reference_image": ref,
        "reference_mask": rmask,
        "seed": 0,
        **kwargs,
    }
    with pytest.raises(InvalidInputError, match=match):
        pipe(**args)


def test_unknown_category(pipe, sample_inputs):
    img, mask, _, _ = sample_inputs
    with pytest.raises(UnknownCategoryError, match="scratch"):
        pipe(img, mask, defect_category="scrach")


def test_lora_on_pipeline_and_segment_strengths(tiny_checkpoint, sample_inputs, tmp_path):
    from unidg_rt.models.adapters import AdapterManager
    from unidg_rt.models.loading import load_transformer

    donor = AdapterManager(load_transformer(tiny_checkpoint))
    ad = donor.add("apo", rank=2, gated=True)
    for p in ad.parameters():
        torch.nn.init.normal_(p, std=0.2)
    lora = donor.save("apo", tmp_path / "apo.safetensors")
    pipe = UniDGPipeline.from_pretrained(tiny_checkpoint)
    img, mask, ref, rmask = sample_inputs
    base = pipe(img, mask, ref, rmask, seed=0, output_type="np").images
    pipe.load_lora_weights(lora, "apo", scale=1.0)
    on = pipe(img, mask, ref, rmask, seed=0, output_type="np").images
    assert not np.array_equal(base, on)
    off_segments = [{"start": 0.0, "end": 1.0, "adapter_scales": {"apo": 0.0}}]
    off = pipe(img, mask, ref, rmask, seed=0, output_type="np", segments=off_segments).images
    assert np.array_equal(off, base)  # adapter strength 0 => base model exactly
    pipe.set_adapters("apo", 1.0)
    with pytest.raises(ValueError, match="time-gated"):
        pipe.fuse_lora()  # a gated adapter depends on t: it cannot be merged once for all steps


@pytest.fixture(scope="module")
def encoder_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint + a random reference encoder named by its card (as ``train sft`` writes)."""
    import shutil

    from unidg_rt.models.loading import read_card
    from unidg_rt.models.refenc import ReferenceEncoder, ReferenceEncoderConfig, save_reference_encoder
    from unidg_rt.train.ship import rewrite_card_defaults

    folder = tmp_path_factory.mktemp("tiny_refenc")
    for f in tiny_checkpoint.parent.glob("*.safetensors"):
        shutil.copyfile(f, folder / f.name)
    card = read_card(folder / "model.safetensors")
    torch.manual_seed(0)
    cfg = ReferenceEncoderConfig(
        seq_len=8,
        dim=card.transformer.joint_attention_dim,
        pooled_dim=card.transformer.pooled_projection_dim,
        width=8,
        image_size=64,
    )
    save_reference_encoder(folder / "reference_encoder.safetensors", ReferenceEncoder(cfg))
    defaults = {**card.defaults, "reference_encoder": {"file": "reference_encoder.safetensors"}}
    rewrite_card_defaults(folder / "model.safetensors", defaults)
    return folder / "model.safetensors"


def test_reference_encoder_conditions_reference_mode_only(encoder_checkpoint, sample_inputs):
    img, mask, ref, rmask = sample_inputs
    pipe = UniDGPipeline.from_pretrained(encoder_checkpoint)
    assert pipe.reference_encoder is not None
    calls = []
    encode = pipe.reference_encoder.encode
    pipe.reference_encoder.encode = lambda crop: calls.append(crop.shape) or encode(crop)
    with_enc = pipe(img, mask, ref, rmask, seed=0, output_type="np")
    assert calls == [(64, 64, 3)]  # the diptych's left half: the reference crop
    # the crop and its encoding: the same feed as prompt_embeds given explicitly
    dip = pipe_diptych(pipe, img, mask, ref, rmask)
    e, p = encode(dip.image[:, :64])
    explicit = pipe(img, mask, ref, rmask, prompt_embeds=e, pooled_prompt_embeds=p, seed=0, output_type="np")
    np.testing.assert_array_equal(with_enc.images, explicit.images)
    assert len(calls) == 1  # explicit text conditioning wins over the encoder
    pipe(img, mask, defect_category="hole", seed=0, output_type="np")
    pipe(img, mask, ref, rmask, defect_category="hole", seed=0, output_type="np")
    assert len(calls) == 1  # text mode, or a category given with the reference: no encoder call
    # a card with the cut-out convention: the encoder gets the crop gray outside the reference mask
    pipe.replace_defaults(reference_encoder={**pipe.defaults["reference_encoder"], "cutout": True})
    seen = []
    pipe.reference_encoder.encode = lambda crop: seen.append(crop) or encode(crop)
    pipe(img, mask, ref, rmask, seed=0, output_type="np")
    from unidg_rt.diptych import MASKED_VALUE

    assert np.array_equal(
        seen[0], np.where(dip.reference_mask[..., None] > 0, dip.image[:, :64], MASKED_VALUE)
    )
    assert (seen[0][dip.reference_mask == 0] == MASKED_VALUE).all() and dip.reference_mask.any()
    pipe.reference_encoder = None  # without it reference mode is zero-conditioned, as before
    without = pipe(img, mask, ref, rmask, seed=0, output_type="np")
    assert not np.array_equal(without.images, with_enc.images)


def test_bare_transformer_file_names_arguments_from_pretrained_has(tiny_checkpoint, tmp_path):
    """A file without a UniDG model card (BFL's flux1-fill-dev.safetensors layout) is refused
    with a message naming ``config=`` and ``vae=``; both are real arguments and loading with
    them gives the same transformer."""
    import inspect
    import re

    from safetensors.torch import save_file

    from unidg_rt.errors import WeightsError
    from unidg_rt.models.loading import load_transformer

    ref = load_transformer(tiny_checkpoint)
    bare = tmp_path / "flux1-fill-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(bare))
    with pytest.raises(WeightsError, match="no UniDG model card") as exc:
        UniDGPipeline.from_pretrained(bare)
    message = str(exc.value)
    named = set(re.findall(r"\b(\w+)=", message))
    assert {"config", "vae"} <= named and "\n" not in message
    assert named <= set(inspect.signature(UniDGPipeline.from_pretrained).parameters)
    pipe = UniDGPipeline.from_pretrained(bare, config=ref.config, vae=tiny_checkpoint)
    got = pipe.backend.transformer_model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items())
