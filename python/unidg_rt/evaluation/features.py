"""Hand-crafted features of one defect: what changed between a normal image and its abnormal
(or generated) version around a region. numpy + PIL only, deterministic.

Why hand-crafted: no pretrained network can be downloaded here, and a small, explainable
feature vector trains a classifier in seconds. The features describe the *change*
``D = image - normal`` (colour, contrast, gradients, shape of the changed pixels) inside a
square crop around ``region``, resized to ``CROP × CROP``. They deliberately do not read the
region mask's shape: in the evaluation the region is the target mask the user drew, so shape
features of the mask would "recognise" the category without looking at the generated pixels
(the report's flat-fill baseline measures how much leaks through the crop geometry anyway).
"""

from __future__ import annotations

import numpy as np

from unidg_rt.crops import adaptive_crop_box, crop_resize, crop_resize_mask, to_mask_array, to_rgb_array
from unidg_rt.errors import InvalidInputError

CROP = 32  #: side of the feature crop in pixels
_LUM = np.array([0.299, 0.587, 0.114])
_HIST_EDGES = np.array([-1.01, -0.3, -0.15, -0.07, -0.02, 0.02, 0.07, 0.15, 0.3, 1.01])
_ORIENT_BINS = 8
_RINGS = 4

FEATURE_NAMES: tuple[str, ...] = (
    *(f"d_mean_{c}" for c in "rgb"),
    *(f"d_std_{c}" for c in "rgb"),
    "d_abs_mean", "dl_mean", "dl_pos_mean", "dl_neg_mean",
    "frac_03", "frac_08", "frac_20", "dl_abs_max", "dl_abs_p90",
    "chroma_change", "sat_change", "opp_rg", "opp_by",
    *(f"changed_col_{c}" for c in "rgb"),
    "changed_lum", "changed_dark_frac", "lum_ratio",
    "grad_d_mean", "texture_ratio", "coherence",
    *(f"orient_{i}" for i in range(_ORIENT_BINS)),
    "lap_energy", "hf_ratio",
    "supp_area", "supp_elong", "supp_fill", "supp_perim", "supp_pos_frac",
    *(f"ring_{i}" for i in range(_RINGS)),
    *(f"dl_hist_{i}" for i in range(len(_HIST_EDGES) - 1)),
    "log_changed_area",
    "supp_components", "supp_lum_p10", "supp_lum_rel", "rim", "rel_contrast", "supp_sat",
    *(f"supp_d_{c}" for c in "rgb"),
)  # fmt: skip
NUM_FEATURES = len(FEATURE_NAMES)


def crop_change(image, normal, region, size: int = CROP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image crop, normal crop, region crop)``: float64 ``[size, size, 3]`` ×2 and bool
    ``[size, size]``, a square box around ``region`` with context (small regions get more)."""
    img = to_rgb_array(image, "image")
    nrm = to_rgb_array(normal, "normal")
    reg = to_mask_array(region, "region")
    if img.shape != nrm.shape or reg.shape != img.shape[:2]:
        raise InvalidInputError(
            f"image {img.shape}, normal {nrm.shape} and region {reg.shape} must share [H, W]"
        )
    if not reg.any():
        raise InvalidInputError("region is empty: pass the (dilated) mask where the defect is")
    # tight: the region is already the dilated mask, so the change fills most of the crop
    box = adaptive_crop_box(reg, 1.0, context=0.1, max_margin=0.25, min_side=12)
    ci = crop_resize(img, box, (size, size), pad_value=0.5).astype(np.float64)
    cn = crop_resize(nrm, box, (size, size), pad_value=0.5).astype(np.float64)
    cr = crop_resize_mask(reg, box, (size, size))
    return ci, cn, cr


def _grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gy, gx = np.gradient(x)
    return gy, gx


def _wmean(x: np.ndarray, w: np.ndarray) -> float:
    s = float(w.sum())
    return float((x * w).sum() / s) if s > 1e-12 else 0.0


def _saturation(rgb: np.ndarray) -> np.ndarray:
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return (mx - mn) / (mx + 1e-3)


def _orientation_hist(gy: np.ndarray, gx: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Magnitude-weighted undirected orientation histogram, rolled so the peak bin is first."""
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    mag = np.hypot(gy, gx) * weight
    idx = np.minimum((ang / np.pi * _ORIENT_BINS).astype(int), _ORIENT_BINS - 1)
    hist = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=_ORIENT_BINS)
    total = hist.sum()
    if total <= 1e-12:
        return np.zeros(_ORIENT_BINS)
    hist = hist / total
    return np.roll(hist, -int(np.argmax(hist)))  # rotation invariant


def _coherence(gy: np.ndarray, gx: np.ndarray, weight: np.ndarray) -> float:
    """Structure-tensor coherence ``((l1 - l2) / (l1 + l2))``: 1 = one orientation (lines)."""
    jxx, jyy, jxy = (gx * gx * weight).sum(), (gy * gy * weight).sum(), (gx * gy * weight).sum()
    tr = jxx + jyy
    if tr <= 1e-12:
        return 0.0
    return float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / tr)


def _support_shape(support: np.ndarray, dl: np.ndarray) -> list[float]:
    """Area, elongation, fill ratio, perimeter/√area, positive fraction of the changed pixels."""
    n = int(support.sum())
    if n < 2:
        return [n / support.size, 0.0, 0.0, 0.0, 0.0]
    ys, xs = np.nonzero(support)
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    ev = np.sort(np.linalg.eigvalsh(cov + 1e-6 * np.eye(2)))
    elong = float(np.sqrt(max(ev[0], 0.0) / ev[1]))  # 1 = round, 0 = a line
    bbox = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    pad = np.pad(support, 1)
    interior = pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    perim = float((support & ~interior).sum())
    return [n / support.size, elong, n / bbox, perim / np.sqrt(n), float((dl[support] > 0).mean())]


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components (label propagation; crops are tiny)."""
    if not mask.any():
        return 0
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        nb = np.min(
            [p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0
        )
        new = np.where(mask, nb, big)
        if np.array_equal(new, lab):
            return int(np.unique(lab[mask]).size)
        lab = new


def _rings(absd: np.ndarray) -> np.ndarray:
    """Share of |change| in ``_RINGS`` rings around the change's centroid (radius ≤ crop/2)."""
    total = absd.sum()
    if total <= 1e-12:
        return np.zeros(_RINGS)
    h, w = absd.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (absd * yy).sum() / total, (absd * xx).sum() / total
    r = np.hypot(yy - cy, xx - cx) / (0.5 * min(h, w))
    idx = np.minimum((r * _RINGS).astype(int), _RINGS - 1)
    return np.bincount(idx.ravel(), weights=absd.ravel(), minlength=_RINGS) / total


def defect_features(image, normal, region, size: int = CROP) -> np.ndarray:
    """Feature vector float32 ``[NUM_FEATURES]`` (names in :data:`FEATURE_NAMES`) of the change
    from ``normal`` to ``image`` around ``region`` (bool ``[H, W]``, e.g. the dilated mask).

    ``image``/``normal``: uint8 or float ``[H, W, 3]`` of the same size."""
    ci, cn, cr = crop_change(image, normal, region, size)
    d = ci - cn  # [s, s, 3] the change
    dl = d @ _LUM  # [s, s] luminance change
    absd = np.abs(d).mean(axis=-1)
    w = cr.astype(np.float64)  # region weight
    area = max(float(w.sum()), 1.0)
    adl = np.abs(dl)
    feats: list[float] = []
    feats += [_wmean(d[..., c], w) for c in range(3)]
    feats += [float(np.sqrt(_wmean((d[..., c] - _wmean(d[..., c], w)) ** 2, w))) for c in range(3)]
    feats += [_wmean(absd, w), _wmean(dl, w), _wmean(np.maximum(dl, 0), w), _wmean(np.minimum(dl, 0), w)]
    feats += [float(((adl > t) & cr).sum() / area) for t in (0.03, 0.08, 0.2)]
    in_reg = adl[cr] if cr.any() else np.zeros(1)
    feats += [float(in_reg.max()), float(np.percentile(in_reg, 90))]
    # colour of the change
    chroma = np.abs(d - dl[..., None]).mean(axis=-1)
    feats += [_wmean(chroma, w), _wmean(_saturation(ci) - _saturation(cn), w)]
    feats += [_wmean(d[..., 0] - d[..., 1], w), _wmean(0.5 * (d[..., 0] + d[..., 1]) - d[..., 2], w)]
    # absolute colour where it changed (black spot vs dirt vs foreign matter)
    cw = absd * w
    feats += [_wmean(ci[..., c], cw) for c in range(3)]
    lum_i, lum_n = ci @ _LUM, cn @ _LUM
    feats += [_wmean(lum_i, cw), _wmean((lum_i < 0.15).astype(np.float64), cw)]
    feats += [_wmean(lum_i, cw) / (_wmean(lum_n, cw) + 0.05)]
    # gradients: edges of the change, texture change, orientation structure
    gy, gx = _grad(dl)
    gmag = np.hypot(gy, gx)
    gyi, gxi = _grad(lum_i)
    gyn, gxn = _grad(lum_n)
    tex = (_wmean(np.hypot(gyi, gxi), w) + 1e-3) / (_wmean(np.hypot(gyn, gxn), w) + 1e-3)
    feats += [_wmean(gmag, w), float(np.log(tex)), _coherence(gy, gx, w)]
    feats += list(_orientation_hist(gy, gx, w))
    padded = np.pad(dl, 1, mode="edge")  # [H + 2, W + 2]
    lap = np.abs(padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * dl)
    feats += [_wmean(lap, w), _wmean(lap, w) / (_wmean(adl, w) + 1e-3)]
    # shape of the changed pixels (of the change, not of the mask)
    support = (adl > max(0.03, 0.3 * float(in_reg.max()))) & cr
    feats += _support_shape(support, dl)
    feats += list(_rings(adl * w))
    hist = np.histogram(dl[cr], bins=_HIST_EDGES)[0] / area if cr.any() else np.zeros(len(_HIST_EDGES) - 1)
    feats += list(hist)
    # absolute size of the change in the original image (fraction of its pixels)
    full_dl = (to_rgb_array(image, "image") - to_rgb_array(normal, "normal")) @ _LUM.astype(np.float32)
    changed = (np.abs(full_dl) > 0.03) & to_mask_array(region, "region")
    feats += [float(np.log10(changed.mean() + 1e-5))]
    # pieces, darkness, rims and colour of the changed pixels themselves
    lum_supp = lum_i[support] if support.any() else lum_i[cr]
    pos, neg = float(np.maximum(dl, 0)[support].sum()), float(-np.minimum(dl, 0)[support].sum())
    feats += [float(np.log1p(_components(support))), float(np.percentile(lum_supp, 10))]
    feats += [float(np.percentile(lum_supp, 10) - _wmean(lum_n, w))]
    feats += [min(pos, neg) / (pos + neg + 1e-9)]
    feats += [float(adl[support].mean() if support.any() else 0.0) / (float(lum_n[cr].std()) + 0.02)]
    sw = support.astype(np.float64)
    feats += [_wmean(_saturation(ci), sw)] + [_wmean(d[..., c], sw) for c in range(3)]
    out = np.asarray(feats, dtype=np.float64)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)
