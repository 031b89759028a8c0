"""Unit tests of unidg_rt.diptych / unidg_rt.crops: normalisation, crops, groups, packing, paste-back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unidg_rt.diptych import (
    CropBox,
    Diptych,
    adaptive_crop_box,
    check_generation_size,
    crop_resize,
    crop_resize_mask,
    dilate_mask,
    diptych_token_groups,
    feather_alpha,
    pack_mask,
    paste_back,
    prepare_diptych,
    to_mask_array,
    to_rgb_array,
)
from unidg_rt.errors import InvalidInputError
from unidg_rt.groups import TokenGroup

RNG = np.random.default_rng(0)


def _image(h, w):
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _rect_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------- package hygiene


def test_diptych_does_not_import_torch():
    code = "import sys, unidg_rt.diptych; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- input normalisation


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "1", "CMYK"])
def test_to_rgb_array_pil_modes(mode):
    img = Image.fromarray(_image(5, 7)).convert(mode)
    out = to_rgb_array(img, "image")
    assert out.shape == (5, 7, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_to_rgb_array_exact_for_uint8_and_pil():
    arr = _image(4, 6)
    np.testing.assert_array_equal(np.rint(to_rgb_array(arr) * 255).astype(np.uint8), arr)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(arr)), to_rgb_array(arr))


def test_to_rgb_array_numpy_variants():
    gray = RNG.random((4, 6)).astype(np.float64)
    out = to_rgb_array(gray)
    assert out.shape == (4, 6, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 1], gray, atol=1e-7)
    np.testing.assert_array_equal(to_rgb_array(gray[..., None]), out)
    u16 = np.full((2, 3, 3), 65535, dtype=np.uint16)
    assert np.all(to_rgb_array(u16) == 1.0)
    assert np.all(to_rgb_array(Image.fromarray(np.full((3, 2), 0.25, np.float32))) == 0.25)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((1, 4, 4, 3), np.uint8), r"ref_img must be \[H, W, 3\]"),
        (np.zeros((4, 4, 4), np.uint8), r"ref_img\[\.\.\., :3\]"),
        (np.zeros((3, 8, 8), np.uint8), "transpose CHW to HWC"),
        (np.full((4, 4, 3), np.nan, np.float32), "ref_img contains NaN"),
        (np.full((4, 4, 3), 255.0, np.float32), r"divide 0-255 data by 255"),
        (np.full((4, 4, 3), -0.5, np.float32), r"\(x \+ 1\) / 2"),
        (np.zeros((0, 4, 3), np.uint8), "ref_img is empty"),
        (np.zeros((4, 4, 3), np.int32), "ref_img has dtype int32"),
        (np.zeros((4, 4, 3), bool), "ref_img has dtype bool"),
        ([[0, 1]], "ref_img must be a PIL.Image.Image or a numpy array"),
    ],
)
def test_to_rgb_array_errors(value, match):
    with pytest.raises(InvalidInputError, match=match):
        to_rgb_array(value, "ref_img")


def test_to_mask_array_thresholds_and_modes():
    u8 = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(to_mask_array(u8), [[False, False, True, True]])
    np.testing.assert_array_equal(to_mask_array(u8[..., None]), [[False, False, True, True]])
    np.testing.assert_array_equal(to_mask_array(Image.fromarray(u8)), [[False, False, True, True]])
    f = np.array([[0.0, 0.5, 0.51, 1.0]])
    np.testing.assert_array_equal(to_mask_array(f), [[False, False, True, True]])
    b = np.array([[True, False]])
    np.testing.assert_array_equal(to_mask_array(b), b)
    np.testing.assert_array_equal(
        to_mask_array(Image.fromarray(u8).convert("1")), [[False, False, True, True]]
    )
    rgb = Image.fromarray(np.stack([u8] * 3, axis=-1))
    np.testing.assert_array_equal(to_mask_array(rgb), [[False, False, True, True]])
    assert to_mask_array(np.array([[0, 40000]], dtype=np.uint16)).tolist() == [[False, True]]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), r"ref_mask must be \[H, W\] or \[H, W, 1\].*ref_mask\[\.\.\., 0\]"),
        (np.zeros((1, 4, 4), np.uint8), r"ref_mask\[0\]"),
        (np.zeros((4,), np.uint8), "ref_mask must be"),
        (np.array([[np.nan]]), "ref_mask contains NaN"),
        (np.array([[2.0]]), r"ref_mask is float with values in \[2, 2\]"),
        (np.zeros((4, 0), bool), "ref_mask is empty"),
        ("mask.png", "ref_mask must be a PIL.Image.Image or a numpy array"),
    ],
)
def test_to_mask_array_errors(value, match):
    with pytest.raises(InvalidInputError, match=match):
        to_mask_array(value, "ref_mask")


@pytest.mark.parametrize(
    ("height", "width", "match"),
    [
        (770, 768, "height=770 is not a positive multiple of 16.*use 768 or 784"),
        (768, 8, "width=8 .*use 16"),
        (768, 0, "width=0 .*use 16"),
        (768.0, 768, "height must be an int"),
        (True, 768, "height must be an int"),
    ],
)
def test_check_generation_size(height, width, match):
    with pytest.raises(InvalidInputError, match=match):
        check_generation_size(height, width)


# ---------------------------------------------------------------- crop box


def test_crop_box_properties():
    box = CropBox(-2, 3, 10, 8)
    assert (box.width, box.height) == (12, 5)
    assert not box.is_inside(10, 10) and CropBox(0, 0, 10, 10).is_inside(10, 10)
    assert box.contains(CropBox(0, 3, 10, 8)) and not box.contains(CropBox(0, 2, 10, 8))


def test_crop_box_contains_bbox_and_stays_inside():
    mask = _rect_mask(400, 600, 10, 30, 570, 600)  # touches the right border
    box = adaptive_crop_box(mask)
    assert box.contains(CropBox(570, 10, 600, 30))
    assert box.is_inside(400, 600)
    assert box.width == box.height


def test_small_defects_get_relatively_more_context():
    ratios = []
    for side in (4, 16, 64, 256):
        c = 256
        mask = _rect_mask(512, 512, c - side // 2, c + side // 2, c - side // 2, c + side // 2)
        box = adaptive_crop_box(mask, min_side=1)
        ratios.append(box.width / side)
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False)), ratios
    assert ratios[1] > ratios[2] > ratios[3], ratios
    assert ratios[0] == pytest.approx(4.0, abs=0.5)  # clamped at max_margin=1.5 -> x4


def test_one_pixel_mask_gets_min_side():
    mask = _rect_mask(300, 300, 0, 1, 299, 300)  # one pixel in the top-right corner
    box = adaptive_crop_box(mask, min_side=64)
    assert (box.width, box.height) == (64, 64)
    assert box == CropBox(236, 0, 300, 64)


def test_full_image_mask_is_clamped_and_padded_to_aspect():
    mask = np.ones((50, 100), dtype=bool)
    box = adaptive_crop_box(mask, aspect=1.0)
    assert box == CropBox(0, -25, 100, 75)  # image fills the width, padded top and bottom
    wide = adaptive_crop_box(mask, aspect=2.0)
    assert wide == CropBox(0, 0, 100, 50)


def test_crop_box_aspect():
    mask = _rect_mask(400, 400, 190, 210, 195, 205)
    box = adaptive_crop_box(mask, aspect=1.5, min_side=1)
    assert abs(box.width - 1.5 * box.height) <= 1
    assert box.is_inside(400, 400)


def test_adaptive_crop_box_errors():
    with pytest.raises(InvalidInputError, match="mask is empty"):
        adaptive_crop_box(np.zeros((8, 8), bool))
    with pytest.raises(InvalidInputError, match="aspect must be a positive"):
        adaptive_crop_box(np.ones((8, 8), bool), aspect=0.0)
    with pytest.raises(InvalidInputError, match="min_side"):
        adaptive_crop_box(np.ones((8, 8), bool), min_side=0)


def test_crop_resize_identity_and_padding():
    img = to_rgb_array(_image(16, 16))
    np.testing.assert_array_equal(crop_resize(img, CropBox(0, 0, 16, 16), (16, 16)), img)
    out = crop_resize(img, CropBox(-4, 0, 12, 16), (16, 16), pad_value=(1.0, 0.0, 0.5))
    np.testing.assert_array_equal(out[:, :4], np.broadcast_to([1.0, 0.0, 0.5], (16, 4, 3)))
    np.testing.assert_array_equal(out[:, 4:], img[:, :12])
    small = crop_resize(img, CropBox(0, 0, 16, 16), (8, 4))
    assert small.shape == (8, 4, 3) and small.dtype == np.float32
    assert 0 <= small.min() and small.max() <= 1


def test_crop_resize_errors():
    img = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(InvalidInputError, match="does not overlap"):
        crop_resize(img, CropBox(8, 0, 16, 8), (8, 8))
    with pytest.raises(InvalidInputError, match="pad_value"):
        crop_resize(img, CropBox(0, 0, 8, 8), (8, 8), pad_value=2.0)
    with pytest.raises(InvalidInputError, match="size_hw"):
        crop_resize(img, CropBox(0, 0, 8, 8), (0, 8))


def test_crop_resize_mask_keeps_tiny_defects():
    mask = _rect_mask(512, 512, 100, 101, 100, 101)
    out = crop_resize_mask(mask, CropBox(0, 0, 512, 512), (32, 32))
    assert out.dtype == bool and out.sum() == 1 and out[6, 6]
    big = crop_resize_mask(_rect_mask(64, 64, 0, 32, 0, 64), CropBox(0, -32, 64, 64), (48, 48))
    assert big[:16].sum() == 0 and big[16:32].all() and big[32:].sum() == 0  # padding is 0


def _brute_area_resize(a, out_h, out_w):
    """Exact area average by upsampling to a common grid (lcm) and block-averaging."""
    in_h, in_w = a.shape
    up = np.repeat(np.repeat(a.astype(np.float64), out_h, axis=0), out_w, axis=1)  # [in_h*out_h, in_w*out_w]
    return up.reshape(out_h, in_h, out_w, in_w).mean(axis=(1, 3))


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((39, 58), (32, 48)), ((7, 5), (16, 16)), ((30, 30), (30, 30))]
)
def test_area_resize_is_exact(in_hw, out_hw):
    from unidg_rt.crops import _area_resize_axis

    a = RNG.random(in_hw) > 0.7
    got = _area_resize_axis(_area_resize_axis(a, out_hw[1], axis=1), out_hw[0], axis=0)
    np.testing.assert_allclose(got, _brute_area_resize(a, *out_hw), atol=1e-9)


def test_crop_resize_mask_pixel_on_footprint_edge():
    # regression: PIL's BOX filter dropped this pixel (it sits exactly on a footprint edge)
    mask = np.zeros((1, 58), bool)
    mask[0, 14] = True
    out = crop_resize_mask(mask, CropBox(0, -19, 58, 20), (32, 48))
    assert out.any()


# ---------------------------------------------------------------- dilation and feathering


def _naive_dilate(mask, size):
    r = size // 2
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask), strict=True):
        out[max(y - r, 0) : min(y + r + 1, h), max(x - r, 0) : min(x + r + 1, w)] = True
    return out


def test_dilate_mask_matches_iterated_square():
    mask = RNG.random((40, 33)) > 0.97
    np.testing.assert_array_equal(dilate_mask(mask, 7, 2), _naive_dilate(mask, 13))
    np.testing.assert_array_equal(dilate_mask(mask, 3, 1), _naive_dilate(mask, 3))
    np.testing.assert_array_equal(dilate_mask(mask, 7, 0), mask)
    with pytest.raises(InvalidInputError, match="odd size"):
        dilate_mask(mask, 4, 2)


def test_feather_alpha_profile():
    mask = _rect_mask(41, 41, 20, 21, 20, 21)
    alpha = feather_alpha(mask, 4)
    assert alpha[20, 20] == 1.0
    profile = alpha[20, 20:27]
    assert np.all(np.diff(profile) < 0) or profile[5] == 0  # strictly falling inside the feather
    assert np.all((profile[1:5] > 0) & (profile[1:5] < 1)) and profile[5] == 0 and profile[6] == 0
    assert (alpha > 0).sum() == 9 * 9
    np.testing.assert_array_equal(feather_alpha(mask, 0), mask.astype(np.float32))
    assert not feather_alpha(np.zeros((5, 5), bool), 3).any()


# ---------------------------------------------------------------- token groups and mask packing


def test_token_groups_hand_made():
    ref = np.zeros((32, 48), bool)
    ref[0, 17] = True  # patch (0, 1)
    tgt = np.zeros((32, 48), bool)
    tgt[31, 47] = True  # patch (1, 2)
    tgt[16:18, 0:2] = True  # patch (1, 0)
    groups = diptych_token_groups(ref, tgt)
    assert groups.dtype == np.int32 and groups.shape == (2 * 6,)
    R, C, T, X = (
        TokenGroup.REF_DEFECT,
        TokenGroup.REF_CONTEXT,
        TokenGroup.TARGET_REGION,
        TokenGroup.TARGET_CONTEXT,
    )
    expected = [[C, R, C, X, X, X], [C, C, C, T, X, T]]  # [hp, 2 * wp], row-major
    np.testing.assert_array_equal(groups.reshape(2, 6), np.array(expected, dtype=np.int32))


def test_token_groups_errors():
    with pytest.raises(InvalidInputError, match="same shape"):
        diptych_token_groups(np.zeros((16, 16)), np.zeros((16, 32)))
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        diptych_token_groups(np.zeros((16, 20)), np.zeros((16, 20)))


def test_pack_mask_matches_diffusers():
    torch = pytest.importorskip("torch")
    from diffusers.pipelines.flux.pipeline_flux_fill import FluxFillPipeline

    mask = (RNG.random((48, 96)) > 0.5).astype(np.float32)
    mask[:, :48] = RNG.random((48, 48))  # non-binary values too, to catch any channel permutation
    height, width, vae_scale = 48 // 8, 96 // 8, 8
    m = torch.from_numpy(mask)[None, None]  # [1, 1, H, W2] as in prepare_mask_latents
    m = m[:, 0, :, :]
    m = m.view(1, height, vae_scale, width, vae_scale)
    m = m.permute(0, 2, 4, 1, 3)
    m = m.reshape(1, vae_scale * vae_scale, height, width)
    expected = FluxFillPipeline._pack_latents(m, 1, vae_scale * vae_scale, height, width)[0].numpy()
    out = pack_mask(mask)
    assert out.shape == (3 * 6, 256) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_pack_mask_errors():
    with pytest.raises(InvalidInputError, match="multiples of 16"):
        pack_mask(np.zeros((16, 24)))


# ---------------------------------------------------------------- prepare_diptych


def _reference_case():
    img = _image(300, 400)
    mask = _rect_mask(300, 400, 100, 120, 200, 230)
    ref = RNG.random((200, 150, 3))
    ref_mask = _rect_mask(200, 150, 10, 60, 5, 20)
    return img, mask, ref, ref_mask


def test_prepare_diptych_shapes_and_layout():
    img, mask, ref, ref_mask = _reference_case()
    d = prepare_diptych(img, mask, ref, ref_mask, height=64, width=96)
    assert isinstance(d, Diptych) and not d.is_text_mode
    assert (d.height, d.width, d.num_image_tokens) == (64, 96, 4 * 12)
    assert d.image.shape == (64, 192, 3) and d.image.dtype == np.float32
    assert d.masked_image.shape == (64, 192, 3) and d.masked_image.dtype == np.float32
    assert d.inpaint_mask.shape == (64, 192) and d.inpaint_mask.dtype == np.float32
    assert d.reference_mask.shape == (64, 96) and d.reference_mask.dtype == bool
    assert d.token_groups.dtype == np.int32 and d.token_groups.shape == (48,)
    assert d.target_image.dtype == np.uint8 and d.paste_mask.shape == (300, 400)
    np.testing.assert_array_equal(d.target_image, img)
    assert set(np.unique(d.inpaint_mask)) == {0.0, 1.0}
    assert not d.inpaint_mask[:, :96].any()
    np.testing.assert_array_equal(d.inpaint_mask[:, 96:] > 0, d.target_mask)
    inside = d.inpaint_mask > 0
    assert np.all(d.masked_image[inside] == 0.5)
    np.testing.assert_array_equal(d.masked_image[~inside], d.image[~inside])
    np.testing.assert_array_equal(d.token_groups, diptych_token_groups(d.reference_mask, d.target_mask))
    assert d.packed_mask().shape == (48, 256)
    groups = set(d.token_groups.tolist())
    assert groups == {
        TokenGroup.REF_DEFECT,
        TokenGroup.REF_CONTEXT,
        TokenGroup.TARGET_REGION,
        TokenGroup.TARGET_CONTEXT,
    }
    assert d.target_box.contains(CropBox(200, 100, 230, 120))


def test_prepare_diptych_dilation_and_white_cutout():
    img, mask, ref, ref_mask = _reference_case()
    d = prepare_diptych(img, mask, ref, ref_mask, height=32, width=32, dilate_target=False)
    np.testing.assert_array_equal(d.paste_mask, mask)
    d2 = prepare_diptych(img, mask, ref, ref_mask, height=32, width=32)
    np.testing.assert_array_equal(d2.paste_mask, dilate_mask(mask, 7, 2))
    d3 = prepare_diptych(
        img, mask, ref, ref_mask, height=64, width=64, reference_on_white=True, dilate_target=False
    )
    left = d3.image[:, :64]
    far = ~dilate_mask(d3.reference_mask, 7, 1)  # away from the (resampled) cut-out edge
    np.testing.assert_allclose(left[far], 1.0, atol=1e-6)


def test_prepare_diptych_uint8_and_float_inputs_agree():
    img, mask, ref, ref_mask = _reference_case()
    ref8 = (ref * 255).astype(np.uint8)
    kw = {"height": 48, "width": 64, "reference_on_white": True}
    d8 = prepare_diptych(Image.fromarray(img), Image.fromarray(mask), ref8, ref_mask, **kw)
    df = prepare_diptych(img / 255.0, mask.astype(np.float32), ref8 / 255.0, ref_mask, **kw)
    np.testing.assert_allclose(d8.image, df.image, atol=1e-5)
    np.testing.assert_array_equal(d8.token_groups, df.token_groups)
    np.testing.assert_array_equal(d8.target_image, df.target_image)  # float quantises back exactly


def test_prepare_diptych_text_mode():
    img = Image.fromarray(_image(37, 51))
    mask = _rect_mask(37, 51, 5, 9, 40, 51)
    d = prepare_diptych(img, mask, height=32, width=48)
    assert d.is_text_mode and d.reference_box is None
    assert d.image.shape == (32, 96, 3)
    assert np.all(d.image[:, :48] == 0.5) and not d.reference_mask.any()
    left = d.token_groups.reshape(2, 6)[:, :3]
    assert np.all(left == TokenGroup.REF_CONTEXT)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"mask_image": np.ones((30, 40), bool)},
            "mask_image is 40x30 .* but image is 64x48.*resize it to 64x48",
        ),
        ({"mask_image": np.zeros((48, 64), bool)}, r"mask_image is empty \(no pixel > 0.5\)"),
        ({"reference_image": np.zeros((20, 20, 3))}, "reference_image was given without reference_mask"),
        ({"reference_mask": np.ones((20, 20))}, "reference_mask was given without reference_image"),
        (
            {"reference_image": np.zeros((20, 20, 3)), "reference_mask": np.ones((20, 21))},
            "reference_mask is 21x20 .* but reference_image is 20x20",
        ),
        (
            {"reference_image": np.zeros((20, 20, 3)), "reference_mask": np.zeros((20, 20))},
            "reference_mask is empty",
        ),
        ({"height": 50}, "height=50 .*use 48 or 64"),
        ({"image": np.zeros((48, 64, 2))}, "image must have 1 or 3 channels"),
        ({"mask_image": np.full((48, 64), 3.0)}, r"mask_image is float with values"),
    ],
)
def test_prepare_diptych_bad_inputs(kwargs, match):
    args = {
        "image": np.zeros((48, 64, 3), np.uint8),
        "mask_image": _rect_mask(48, 64, 10, 20, 10, 20),
        "height": 32,
        "width": 32,
    }
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        prepare_diptych(**args)


# ---------------------------------------------------------------- paste-back


def test_paste_back_bit_identical_outside_feather():
    img, mask, ref, ref_mask = _reference_case()
    d = prepare_diptych(img, mask, ref, ref_mask, height=64, width=64)
    generated = RNG.random((64, 128, 3)).astype(np.float32)
    out, alpha = d.paste(generated, feather=5)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert alpha.dtype == np.float32 and alpha.shape == (300, 400)
    np.testing.assert_array_equal(out[alpha == 0], img[alpha == 0])
    assert np.all(alpha[d.paste_mask] == 1.0)
    outside = ~dilate_mask(d.paste_mask, 11, 1)  # farther than 5 px from the mask
    assert not alpha[outside].any()
    changed = (out != img).any(axis=-1)
    assert changed[d.paste_mask].mean() > 0.9  # random content replaced the mask region


def test_paste_back_box_outside_image_and_full_mask():
    img = _image(20, 40)
    mask = np.ones((20, 40), bool)
    box = adaptive_crop_box(mask)  # 40x40 box, padded above and below
    assert box == CropBox(0, -10, 40, 30)
    gen = np.zeros((32, 32, 3), np.float32)
    gen[8:24] = 1.0  # the image part of the crop is white, the padding black
    out, alpha = paste_back(img, gen, box, mask, feather=3)
    assert np.all(alpha == 1.0)
    assert np.all(out[3:-3] == 255)  # bicubic blurs the white/black edge over ~2 px only
    assert out.min() > 200


def test_paste_back_blend_formula():
    img = _image(24, 24)
    mask = _rect_mask(24, 24, 10, 14, 10, 14)
    gen = RNG.random((24, 24, 3)).astype(np.float32)
    out, alpha = paste_back(img, gen, CropBox(0, 0, 24, 24), mask, feather=3)
    a = alpha[..., None]
    expected = np.clip(np.rint(img * (1.0 - a) + gen * 255.0 * a), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert 0 < alpha[9, 12] < 1 and alpha[6, 12] == 0


def test_paste_back_mask_outside_box_is_not_pasted(caplog):
    img = _image(32, 32)
    mask = _rect_mask(32, 32, 0, 4, 0, 32)  # the box below covers only the left half
    gen = np.zeros((16, 16, 3), np.float32)
    with caplog.at_level("WARNING", logger="unidg_rt.crops"):
        out, alpha = paste_back(img, gen, CropBox(0, 0, 16, 16), mask, feather=2)
    assert "lies outside box" in caplog.text
    assert not alpha[:, 16:].any() and np.all(alpha[:4, :16] == 1)
    np.testing.assert_array_equal(out[:, 16:], img[:, 16:])


def test_paste_back_float_target_is_quantised():
    target = RNG.random((16, 16, 3)).astype(np.float32)
    mask = _rect_mask(16, 16, 0, 2, 0, 2)
    out, alpha = paste_back(target, np.zeros((16, 16, 3)), CropBox(0, 0, 16, 16), mask, feather=1)
    expected = np.rint(target * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[alpha == 0], expected[alpha == 0])
    assert np.all(out[mask] == 0)


def test_paste_back_errors():
    img = _image(16, 16)
    mask = _rect_mask(16, 16, 0, 2, 0, 2)
    gen = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(InvalidInputError, match="target_mask is 8x16 .*Diptych.paste_mask"):
        paste_back(img, gen, CropBox(0, 0, 16, 16), np.ones((16, 8), bool))
    with pytest.raises(InvalidInputError, match="does not overlap"):
        paste_back(img, gen, CropBox(20, 20, 30, 30), mask)
    with pytest.raises(InvalidInputError, match="feather must be >= 0"):
        paste_back(img, gen, CropBox(0, 0, 16, 16), mask, feather=-1)
    d = prepare_diptych(img, mask, height=16, width=16)
    with pytest.raises(InvalidInputError, match="generated has size 16x48"):
        d.paste(np.zeros((16, 48, 3), np.float32))
