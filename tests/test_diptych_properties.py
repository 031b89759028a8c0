"""Property tests (hypothesis) of the adaptive crops, the diptych and paste-back.

Odd and non-square images, 1-pixel masks, full-image masks and masks touching the borders all
come out of the strategies below; ``max_examples`` is kept small so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unidg_rt.diptych import (
    PATCH_SIZE,
    CropBox,
    adaptive_crop_box,
    diptych_token_groups,
    pack_mask,
    prepare_diptych,
)
from unidg_rt.groups import TokenGroup

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def masks(draw, max_side: int = 90):
    """bool [H, W] with at least one pixel: a rectangle (maybe 1 px / full / at a border) or scatter."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    mask = np.zeros((h, w), dtype=bool)
    kind = draw(st.sampled_from(["rect", "pixel", "full", "scatter"]))
    if kind == "full":
        mask[:] = True
    elif kind == "pixel":
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    elif kind == "rect":
        y0 = draw(st.integers(0, h - 1))
        x0 = draw(st.integers(0, w - 1))
        y1 = draw(st.integers(y0 + 1, h))
        x1 = draw(st.integers(x0 + 1, w))
        mask[y0:y1, x0:x1] = True
    else:
        seed = draw(st.integers(0, 2**16))
        mask = np.random.default_rng(seed).random((h, w)) > 0.9
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return mask


def _bbox(mask: np.ndarray) -> CropBox:
    ys, xs = np.nonzero(mask)
    return CropBox(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


sides = st.sampled_from([16, 32, 48])


@FAST
@given(
    mask=masks(),
    aspect=st.sampled_from([0.5, 1.0, 4 / 3, 2.0]),
    min_side=st.integers(1, 80),
    context=st.floats(0.0, 0.5),
)
def test_crop_box_contains_bbox_and_stays_inside(mask, aspect, min_side, context):
    h, w = mask.shape
    box = adaptive_crop_box(mask, aspect, context=context, min_side=min_side)
    assert box.contains(_bbox(mask))
    assert abs(box.width - aspect * box.height) <= 1.0
    # per axis: inside the image when the side fits, else covering the whole image extent
    if box.width <= w:
        assert 0 <= box.x0 and box.x1 <= w
    else:
        assert box.x0 <= 0 and box.x1 >= w
    if box.height <= h:
        assert 0 <= box.y0 and box.y1 <= h
    else:
        assert box.y0 <= 0 and box.y1 >= h
    # no gratuitous padding: one axis at most exceeds the image (by <= 1 px of rounding on the other)
    assert min(box.width - w, box.height - h) <= 1


@FAST
@given(mask=masks(max_side=64), hs=sides, ws=sides)
def test_pack_mask_and_groups_agree(mask, hs, ws):
    h, w = mask.shape
    image = np.full((h, w, 3), 0.25, dtype=np.float32)
    d = prepare_diptych(image, mask, image, mask, height=hs, width=ws, dilate_target=False)
    packed = pack_mask(d.inpaint_mask)  # [N_img, 256]
    assert packed.shape == (d.num_image_tokens, 256)
    region = packed.any(axis=1)
    is_region = d.token_groups == TokenGroup.TARGET_REGION
    np.testing.assert_array_equal(region, is_region)
    # each token's 256 mask channels are exactly the 16x16 pixels of its patch
    hp, wp2 = hs // PATCH_SIZE, 2 * ws // PATCH_SIZE
    patches = d.inpaint_mask.reshape(hp, PATCH_SIZE, wp2, PATCH_SIZE).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(packed.sum(axis=1), patches.reshape(hp * wp2, -1).sum(axis=1))
    # same mask on both sides: ref-defect patches only on the left, target-region only on the right
    grid = d.token_groups.reshape(hp, wp2)
    assert set(np.unique(grid[:, : wp2 // 2])) <= {TokenGroup.REF_DEFECT, TokenGroup.REF_CONTEXT}
    assert set(np.unique(grid[:, wp2 // 2 :])) <= {TokenGroup.TARGET_REGION, TokenGroup.TARGET_CONTEXT}
    assert (grid == TokenGroup.REF_DEFECT).any() and is_region.any()


@FAST
@given(
    target_mask=masks(),
    ref_mask=st.one_of(st.none(), masks(max_side=50)),
    hs=sides,
    ws=sides,
    dilate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_prepare_diptych_invariants(target_mask, ref_mask, hs, ws, dilate, seed):
    rng = np.random.default_rng(seed)
    h, w = target_mask.shape
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    reference = None if ref_mask is None else rng.random(ref_mask.shape + (3,))
    d = prepare_diptych(image, target_mask, reference, ref_mask, height=hs, width=ws, dilate_target=dilate)
    assert d.image.shape == (hs, 2 * ws, 3) and d.masked_image.shape == (hs, 2 * ws, 3)
    assert d.inpaint_mask.shape == (hs, 2 * ws)
    assert d.token_groups.shape == ((hs // 16) * (2 * ws // 16),)
    for arr in (d.image, d.masked_image):
        assert arr.dtype == np.float32 and 0.0 <= arr.min() and arr.max() <= 1.0
    assert not d.inpaint_mask[:, :ws].any() and d.inpaint_mask[:, ws:].any()
    np.testing.assert_array_equal(d.token_groups, diptych_token_groups(d.reference_mask, d.target_mask))
    assert d.target_box.contains(_bbox(d.paste_mask))
    if ref_mask is None:
        assert d.reference_box is None and not d.reference_mask.any()
    else:
        assert d.reference_box.contains(_bbox(ref_mask)) and d.reference_mask.any()

    # paste-back: alpha == 1 on the paste mask, bit-identical wherever alpha == 0
    generated = rng.random((hs, 2 * ws, 3)).astype(np.float32)
    out, alpha = d.paste(generated, feather=3)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.all(alpha[d.paste_mask] == 1.0)
    assert np.all((alpha >= 0) & (alpha <= 1))
    np.testing.assert_array_equal(out[alpha == 0], image[alpha == 0])
