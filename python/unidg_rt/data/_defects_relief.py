"""Relief / geometry defect renderers: indentation, raised, wrinkle, fold, deformation, bent,
dehiscence. They shade a height field (light from the top-left) and/or warp the texture.
Same contract as `_defects_marks` (see its docstring)."""

from __future__ import annotations

import numpy as np

from unidg_rt.data._noise import (
    coords,
    interp_1d,
    noise_1d,
    rotated_frame,
    sample_bilinear,
    shade_from_height,
    smoothstep,
)


def _ellipse_d(h, w, center, rx, ry, angle) -> np.ndarray:
    u, v = rotated_frame(h, w, center, angle)
    return np.sqrt((u / max(rx, 0.5)) ** 2 + (v / max(ry, 0.5)) ** 2)


def _bowl(d: np.ndarray) -> np.ndarray:
    """Smooth 1 → 0 profile with zero slope at the rim (d = 1)."""
    return np.clip(1.0 - d**2, 0, 1) ** 2


def indentation(img, rng, size, center):
    h, w = img.shape[:2]
    rx, ry = size / 2, size / 2 * rng.uniform(0.5, 1.0)
    d = _ellipse_d(h, w, center, rx, ry, rng.uniform(0, np.pi))
    depth = -_bowl(d) * max(1.5, size * rng.uniform(0.1, 0.2))
    relief = 1 + 1.1 * shade_from_height(depth) - 0.06 * _bowl(d)
    return np.clip(img * relief[..., None], 0, 255), (d < 1.0).astype(np.float32)


def raised(img, rng, size, center):
    h, w = img.shape[:2]
    rx, ry = size / 2, size / 2 * rng.uniform(0.55, 1.0)
    angle = rng.uniform(0, np.pi)
    d = _ellipse_d(h, w, center, rx, ry, angle)
    height = smoothstep(1.0, 0.45, d) * max(1.5, size * rng.uniform(0.1, 0.2))
    shade = shade_from_height(height)
    shift = max(1.0, size * 0.06)
    d_shadow = _ellipse_d(h, w, (center[0] + shift, center[1] + shift), rx, ry, angle)
    shadow = smoothstep(1.0, 0.6, d_shadow) * smoothstep(0.7, 1.0, d) * 0.35
    spec = np.clip(shade, 0, None) ** 2 * 40.0
    comp = img * ((1 + 0.6 * shade) * (1 - shadow))[..., None] + spec[..., None]
    return np.clip(comp, 0, 255), ((d < 1.0) | (d_shadow < 1.0)).astype(np.float32)


def wrinkle(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    u, v = rotated_frame(h, w, center, angle)
    length, width = size, size * rng.uniform(0.35, 0.8)
    env = smoothstep(1.0, 0.35, np.sqrt((u / (length / 2)) ** 2 + (v / (width / 2)) ** 2))
    period = max(3.0, size / rng.uniform(4, 9))
    bend = rng.normal(0, 0.6) / max(length, 1)
    phase = v + bend * u**2 + period * 0.4 * interp_1d(noise_1d(12, rng), u + size, max(length / 6, 1))
    height = np.sin(2 * np.pi * phase / period) * env * period * rng.uniform(0.05, 0.09)
    yy, xx = coords(h, w)
    push = 1.5 * height  # threads / grain follow the ridges a little
    warped = sample_bilinear(img, yy - push * float(np.cos(angle)), xx + push * float(np.sin(angle)))
    comp = warped * (1 + 0.9 * shade_from_height(height))[..., None]
    return np.clip(comp, 0, 255), (env > 0).astype(np.float32)


def fold(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    u, v = rotated_frame(h, w, center, angle)
    length = size * rng.uniform(1.0, 1.5)
    half_w = size * rng.uniform(0.12, 0.25)
    v = v + rng.normal(0, 0.15) * u**2 / max(length, 1)  # slightly curved crease
    taper = np.sqrt(np.clip(1 - (2 * u / length) ** 2, 0, 1))  # lens-shaped fold region
    tent = np.clip(1 - np.abs(v) / np.maximum(half_w * taper, 1e-3), 0, 1)
    # Sharp at the crease (v = 0), flat where it meets the sheet: (1 - |v|/w)^2.
    height = tent**2 * taper * half_w * rng.uniform(0.15, 0.3)
    crease = np.exp(-((v / 0.8) ** 2)) * taper
    relief = (1 + 0.9 * shade_from_height(height)) * (1 - 0.25 * crease)
    return np.clip(img * relief[..., None], 0, 255), (tent > 0).astype(np.float32)


def deformation(img, rng, size, center):
    h, w = img.shape[:2]
    rx, ry = size / 2, size / 2 * rng.uniform(0.6, 1.0)
    d = _ellipse_d(h, w, center, rx, ry, rng.uniform(0, np.pi))
    amount = _bowl(d)
    yy, xx = coords(h, w)
    dy, dx = yy - center[0], xx - center[1]
    mode = rng.choice(["bulge", "pinch", "swirl"])
    if mode == "swirl":
        theta = amount * rng.uniform(0.6, 1.4) * float(rng.choice([-1, 1]))
        c, s = np.cos(theta), np.sin(theta)
        src_y, src_x = center[0] + dy * c - dx * s, center[1] + dy * s + dx * c
    else:
        k = rng.uniform(0.3, 0.55) * (1 if mode == "bulge" else -1)
        src_y, src_x = center[0] + dy * (1 - k * amount), center[1] + dx * (1 - k * amount)
    warped = sample_bilinear(img, src_y, src_x)
    height = amount * size * 0.2 * (1 if mode != "pinch" else -1)
    comp = warped * (1 + 0.8 * shade_from_height(height))[..., None]
    return np.clip(comp, 0, 255), (d < 1.0).astype(np.float32)


def bent(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    u, v = rotated_frame(h, w, center, angle)
    length, half_w = size, size * rng.uniform(0.15, 0.35)
    along = smoothstep(length / 2, length / 4, np.abs(u))
    across = _bowl(np.abs(v) / half_w)
    shove = (
        across * along * size * rng.uniform(0.08, 0.18) * float(rng.choice([-1, 1]))
    )  # displacement along u
    yy, xx = coords(h, w)
    warped = sample_bilinear(img, yy - shove * float(np.sin(angle)), xx - shove * float(np.cos(angle)))
    tilt = shade_from_height(across * along * half_w * 0.25)
    comp = warped * (1 + 0.5 * tilt)[..., None]
    return np.clip(comp, 0, 255), ((across > 0) & (along > 0)).astype(np.float32)


def dehiscence(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    u, v = rotated_frame(h, w, center, angle)
    length = size
    v = v - rng.normal(0, 0.3) * u**2 / max(length, 1)
    open_w = max(1.2, size * rng.uniform(0.03, 0.1))
    fray = 1 + 0.35 * interp_1d(noise_1d(int(size) + 4, rng), u + size, 1.5)  # ragged lips
    half = open_w * np.sqrt(np.clip(1 - (2 * u / length) ** 2, 0, 1)) * fray
    inside = smoothstep(0.5, -0.5, np.abs(v) - half) * (np.abs(u) < length / 2)
    lip_w = max(1.5, open_w * 0.8)
    lip = smoothstep(lip_w, 0.0, np.abs(v) - half) * (np.abs(u) < length / 2 + 1) * (half > 0.05)
    side = np.sign(v) * float(np.sign(np.sin(angle - 2.36 + np.pi / 2)))  # which lip faces the light
    comp = img * (1 + 0.3 * (lip * side)[..., None])
    dark = rng.uniform(8, 35) + 10.0 * np.clip(np.abs(v) / np.maximum(half, 0.5), 0, 1)
    comp = comp * (1 - inside[..., None]) + dark[..., None] * inside[..., None]
    return np.clip(comp, 0, 255), ((inside > 0.02) | (lip > 0.02)).astype(np.float32)
