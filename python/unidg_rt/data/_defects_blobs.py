"""Region-like defect renderers: hole, black spot, dirt, discoloration, stain, watermark,
bruise, glue, breakage, missing. Same contract as `_defects_marks` (see its docstring)."""

from __future__ import annotations

import numpy as np

from unidg_rt.data._draw import Canvas, jagged_path
from unidg_rt.data._noise import (
    blob_distance,
    coords,
    fbm,
    gaussian_blur,
    luminance,
    rotated_frame,
    sample_bilinear,
    shade_from_height,
    smoothstep,
    support_alpha,
    value_noise,
)

LIGHT = -2.36  # light from the top-left, as in shade_from_height


def _radii(rng: np.random.Generator, size: float, min_aspect: float = 0.5) -> tuple[float, float]:
    return size / 2, size / 2 * rng.uniform(min_aspect, 1.0)


def _light_projection(h: int, w: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """Position along the direction towards the light, -1..1 across the defect."""
    yy, xx = coords(h, w)
    p = ((xx - center[1]) * float(np.cos(LIGHT)) + (yy - center[0]) * float(np.sin(LIGHT))) / max(radius, 0.5)
    return np.clip(p, -1.0, 1.0)


def hole(img, rng, size, center):
    h, w = img.shape[:2]
    d = blob_distance(h, w, center, _radii(rng, size, 0.6), rng.uniform(0, np.pi), rng, roughness=0.15)
    p = _light_projection(h, w, center, size / 2)
    inside = smoothstep(1.05, 0.92, d)
    # Far inner wall (facing the light) is lit; the rim's lip is lit on the light side.
    wall = smoothstep(0.45, 1.0, d) * np.clip(-p, 0, 1)
    interior = rng.uniform(6, 30) + 45.0 * wall
    ring = smoothstep(1.35, 1.05, d) * smoothstep(0.85, 1.0, d)
    rim = img * (1 + 0.35 * (p * ring)[..., None])
    comp = rim * (1 - inside[..., None]) + interior[..., None] * inside[..., None]
    return np.clip(comp, 0, 255), (d < 1.35).astype(np.float32)


def black_spot(img, rng, size, center):
    h, w = img.shape[:2]
    d = blob_distance(h, w, center, _radii(rng, size, 0.6), rng.uniform(0, np.pi), rng, roughness=0.3)
    alpha = smoothstep(1.0, 0.5, d) * rng.uniform(0.85, 1.0)
    for _ in range(int(rng.integers(0, 3))):  # satellite specks
        c = (center[0] + rng.normal(0, size), center[1] + rng.normal(0, size))
        ds = blob_distance(h, w, c, (size * 0.2 + 0.6, size * 0.2 + 0.6), 0.0, rng, roughness=0.2)
        alpha = np.maximum(alpha, smoothstep(1.0, 0.4, ds) * 0.9)
    color = rng.uniform(8, 40) + rng.normal(0, 4, 3)
    return np.broadcast_to(np.clip(color, 0, 255), img.shape).astype(np.float32), alpha


def dirt(img, rng, size, center):
    h, w = img.shape[:2]
    d = blob_distance(h, w, center, _radii(rng, size, 0.4), rng.uniform(0, np.pi), rng, roughness=0.6)
    cells = max(2.0, min(h, w) / max(size / 3, 1.0))
    blotch = np.clip((1.0 - d) * 2.2 + 0.7 * fbm(h, w, rng, cells=cells, octaves=3), 0, 1)
    alpha = blotch * smoothstep(1.3, 0.9, d) * rng.uniform(0.45, 0.8)
    grit = 1 + 0.25 * value_noise(h, w, h / 2, w / 2, rng)
    tint = np.array([1.0, 0.93, 0.8], np.float32) * rng.uniform(0.35, 0.6)
    return img * tint * grit[..., None], alpha


def discoloration(img, rng, size, center):
    h, w = img.shape[:2]
    d = blob_distance(h, w, center, _radii(rng, size, 0.5), rng.uniform(0, np.pi), rng, roughness=0.35)
    alpha = smoothstep(1.0, 0.35, d) * rng.uniform(0.55, 0.95)
    mode = rng.choice(["yellowing", "darker", "bleached", "hue"])
    if mode == "yellowing":
        target = img * np.array([1.0, 0.88, 0.6], np.float32) + np.array([25, 12, 0], np.float32)
    elif mode == "darker":
        target = img * rng.uniform(0.5, 0.75) * (1 + rng.normal(0, 0.08, 3)).astype(np.float32)
    elif mode == "bleached":
        target = 0.4 * img + 0.6 * (luminance(img)[..., None] + rng.uniform(30, 70))
    else:
        perm = rng.permutation(3)
        if (perm == np.arange(3)).all():
            perm = np.array([1, 2, 0])
        target = 0.35 * img + 0.65 * img[..., perm]
    return np.clip(target, 0, 255), alpha


def stain(img, rng, size, center):
    h, w = img.shape[:2]
    d = blob_distance(h, w, center, _radii(rng, size, 0.55), rng.uniform(0, np.pi), rng, roughness=0.35)
    body = smoothstep(1.0, 0.9, d) * rng.uniform(0.25, 0.5)
    ring = np.exp(-(((d - 0.96) / 0.05) ** 2)) * rng.uniform(0.35, 0.65)  # liquid dries at its edge
    tint = np.array(rng.choice([(0.5, 0.48, 0.42), (0.78, 0.58, 0.38), (0.82, 0.52, 0.35)]), np.float32)
    return img * tint, np.clip(body + ring, 0, 1)


def watermark(img, rng, size, center):
    h, w = img.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    for i in range(int(rng.integers(1, 4))):
        c = center if i == 0 else (center[0] + rng.normal(0, size / 5), center[1] + rng.normal(0, size / 5))
        scale = 1.0 if i == 0 else rng.uniform(0.4, 0.8)
        d = blob_distance(h, w, c, _radii(rng, size * scale, 0.6), rng.uniform(0, np.pi), rng, roughness=0.3)
        ring = np.exp(-(((d - 1.0) / 0.05) ** 2)) * rng.uniform(0.35, 0.6)
        alpha = np.maximum(alpha, ring + smoothstep(1.0, 0.9, d) * 0.08)
    if float(luminance(img).mean()) > 170:  # on light surfaces the tide line shows darker
        target = img * 0.72
    else:
        target = img * 0.55 + 0.45 * 235.0
    return target, np.clip(alpha, 0, 1)


def bruise(img, rng, size, center):
    h, w = img.shape[:2]
    d = blob_distance(h, w, center, _radii(rng, size, 0.5), rng.uniform(0, np.pi), rng, roughness=0.4)
    cells = max(2.0, min(h, w) / max(size / 4, 1.0))
    mottle = np.clip(0.75 + 0.3 * fbm(h, w, rng, cells=cells, octaves=2), 0, 1)
    alpha = smoothstep(1.0, 0.2, d) * mottle * rng.uniform(0.55, 0.9)
    tint = np.array([0.62, 0.5, 0.56], np.float32) * rng.uniform(0.8, 1.05)
    target = (0.6 * img + 0.4 * gaussian_blur(img, 2.0)) * tint
    return target, alpha


def glue(img, rng, size, center):
    h, w = img.shape[:2]
    radii = (size / 2, size / 2 * (rng.uniform(0.15, 0.35) if rng.random() < 0.4 else rng.uniform(0.5, 1.0)))
    d = blob_distance(h, w, center, radii, rng.uniform(0, np.pi), rng, roughness=0.45)
    inside = smoothstep(1.0, 0.85, d)
    height = smoothstep(1.0, 0.3, d) * max(radii[1], 1.0) * 0.35
    spec = np.clip(shade_from_height(height), 0, None) ** 2 * 220.0
    tint = np.array([1.0, rng.uniform(0.85, 0.97), rng.uniform(0.55, 0.8)], np.float32)
    body = gaussian_blur(img, 1.5) * tint + 18.0
    rim = np.exp(-(((d - 0.93) / 0.06) ** 2))
    target = body * (1 - 0.3 * rim[..., None]) + spec[..., None]
    return np.clip(target, 0, 255), inside * rng.uniform(0.8, 1.0)


def _star_polygon(rng, center, size, n_min, n_max, r_min=0.5) -> list[tuple[float, float]]:
    n = int(rng.integers(n_min, n_max))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = size / 2 * rng.uniform(r_min, 1.0, n)
    return [(center[1] + r * np.cos(a), center[0] + r * np.sin(a)) for a, r in zip(ang, rad, strict=True)]


def breakage(img, rng, size, center):
    h, w = img.shape[:2]
    canvas = Canvas(h, w, 4)
    poly = _star_polygon(rng, center, size, 8, 16)
    canvas.polygon(poly)
    cracks = Canvas(h, w, 4)
    for x, y in poly[:: max(1, len(poly) // 3)]:  # short cracks radiating from the chip's corners
        if rng.random() < 0.6:
            a = np.arctan2(y - center[0], x - center[1]) + rng.normal(0, 0.3)
            path = jagged_path(rng, (x, y), a, size * rng.uniform(0.15, 0.4), max(1.5, size / 12), 0.5)
            cracks.line(path, rng.uniform(0.6, 1.2))
    chip, crack_a = canvas.alpha(), cracks.alpha()
    depth = gaussian_blur(chip, max(1.0, size * 0.04)) * max(2.0, size * 0.12)
    relief = 1 + 0.9 * shade_from_height(-depth)
    cells = max(2.0, min(h, w) / max(size / 5, 1.0))
    rough = 1 + 0.18 * fbm(h, w, rng, cells=cells, octaves=2)
    fracture = (0.5 * luminance(img)[..., None] + 0.5 * img) * rng.uniform(0.45, 0.75)
    fracture = fracture * (relief * rough)[..., None]
    comp = img * (1 - 0.85 * crack_a[..., None])
    comp = comp * (1 - chip[..., None]) + fracture * chip[..., None]
    return np.clip(comp, 0, 255), support_alpha(chip, crack_a)


def missing(img, rng, size, center):
    h, w = img.shape[:2]
    if rng.random() < 0.4:  # a piece missing at the part's edge
        side = int(rng.integers(4))
        cy, cx = center
        center = (
            0.0 if side == 0 else h - 1.0 if side == 1 else cy,
            0.0 if side == 2 else w - 1.0 if side == 3 else cx,
        )
        size = size * 1.4
    canvas = Canvas(h, w, 4)
    canvas.polygon(_star_polygon(rng, center, size, 4, 7, r_min=0.7))  # few straight cut edges
    region = canvas.alpha()
    yy, xx = coords(h, w)
    shift = max(1.5, size * 0.05)
    shadow = np.clip(region - sample_bilinear(region, yy - shift, xx - shift), 0, 1)  # part casts it
    bg = np.array(rng.choice([(18, 18, 20), (35, 35, 38), (120, 120, 125), (235, 235, 235)]), np.float32)
    bg = bg * (1 + 0.04 * value_noise(h, w, 6, 6, rng))[..., None]
    bg = bg * (1 - 0.55 * gaussian_blur(shadow, 1.0))[..., None]
    u, _ = rotated_frame(h, w, center, rng.uniform(0, np.pi))
    return bg + 4.0 * np.tanh(u / max(size, 1))[..., None], region
