"""Seeded procedural textures of industrial surfaces / objects (numpy + PIL only).

`make_surface(kind, size_hw, rng)` returns a uint8 `[H, W, 3]` image. Each kind is built from
octave noise, periodic structure (grain, threads, grout, traces, glyphs) and an illumination
gradient, so defects have realistic texture to interact with. 256×256 takes a few ms.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np

from unidg_rt.data._draw import Canvas, draw_text_block
from unidg_rt.data._noise import coords, fbm, lighting, shade_from_height, smoothstep, to_uint8, value_noise
from unidg_rt.errors import InvalidInputError

# Nouns used by captions ("a scratch on the {object}").
SURFACE_NOUNS: dict[str, str] = {
    "brushed_metal": "brushed metal plate",
    "wood": "wooden board",
    "fabric": "woven fabric",
    "pcb": "printed circuit board",
    "tile": "ceramic tile",
    "label": "printed plastic label",
    "leather": "leather surface",
    "carpet": "carpet",
}


def _grain(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Sensor / fibre noise, float32 (float64 noise would promote every image op)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _color(rng: np.random.Generator, base: tuple[float, float, float], jitter: float) -> np.ndarray:
    return np.clip(np.array(base, np.float32) + rng.normal(0.0, jitter, 3), 0, 255).astype(np.float32)


def _brushed_metal(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    vertical = rng.random() < 0.5
    if vertical:
        h, w = w, h
    base = rng.uniform(130, 200)
    tint = np.array([0.0, rng.uniform(0, 4), rng.uniform(2, 9)], np.float32)
    # Brushing: noise strongly stretched along x, at several widths, plus per-row streaks.
    streaks = 0.6 * fbm(h, w, rng, cells=h / 6, octaves=3, aspect=40.0)
    streaks += 0.5 * rng.normal(0.0, 1.0, (h, 1)).astype(np.float32)
    streaks += 0.4 * fbm(h, w, rng, cells=h / 2, octaves=1, aspect=12.0)
    sheen = 1.0 + 0.12 * np.sin(2 * np.pi * (coords(h, w)[1] / w * rng.uniform(0.3, 1.2) + rng.random()))
    gray = base * sheen * lighting(h, w, rng, 0.15) + 7.0 * streaks + _grain(rng, (h, w), 2.0)
    img = gray[..., None] + tint
    return img.transpose(1, 0, 2) if vertical else img


def _wood(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    _, xx = coords(h, w)
    yy = coords(h, w)[0]
    light = _color(rng, (205, 160, 110), 15)
    dark = light * rng.uniform(0.55, 0.72, 3).astype(np.float32)
    warp = fbm(h, w, rng, cells=2.5, octaves=3, aspect=3.0) * rng.uniform(6, 20)
    spacing = rng.uniform(7, 18)
    rings = (yy + warp + xx * rng.uniform(-0.08, 0.08)) / spacing
    t = rings - np.floor(rings)
    latewood = smoothstep(0.55, 0.85, t) * (1.0 - smoothstep(0.9, 1.0, t))  # dark, sharp-edged band
    grain = fbm(h, w, rng, cells=h / 5, octaves=2, aspect=25.0)
    v = np.clip(0.75 * latewood + 0.12 * grain + 0.08 * fbm(h, w, rng, cells=3), 0, 1)
    img = light * (1 - v[..., None]) + dark * v[..., None]
    return img * lighting(h, w, rng, 0.1)[..., None] + _grain(rng, (h, w, 1), 2.0)


def _fabric(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = coords(h, w)
    period = rng.uniform(4.0, 9.0)
    wobble = 0.8 * fbm(h, w, rng, cells=6, octaves=2)
    x = xx + wobble
    y = yy + 0.8 * fbm(h, w, rng, cells=6, octaves=2)
    cx, cy = np.floor(x / period), np.floor(y / period)
    fx, fy = x / period - cx, y / period - cy
    twill = rng.random() < 0.4
    warp_on_top = np.mod(cx - cy, 3) == 0 if twill else np.mod(cx + cy, 2) == 0
    # Thread cross-section (bright at its centre) times its bow between crossings. sin(π·f) for
    # f → 1 can round to a tiny negative in float32 (π rounds up): clamp before the fractional power.
    sx, sy = np.maximum(np.sin(np.pi * fx), 0), np.maximum(np.sin(np.pi * fy), 0)
    warp_shade = sx**0.7 * (0.75 + 0.25 * sy)
    weft_shade = sy**0.7 * (0.75 + 0.25 * sx)
    shade = np.where(warp_on_top, warp_shade, weft_shade)
    warp_col = _color(rng, tuple(rng.uniform(40, 220, 3)), 0)
    weft_col = warp_col * rng.uniform(0.8, 1.1, 3).astype(np.float32)
    col = np.where(warp_on_top[..., None], warp_col, weft_col)
    # Per-thread yarn irregularity.
    col_jit = rng.normal(1.0, 0.05, int(w / period) + 3)[np.clip(cx.astype(int), 0, None)]
    row_jit = rng.normal(1.0, 0.05, int(h / period) + 3)[np.clip(cy.astype(int), 0, None)]
    jit = np.where(warp_on_top, col_jit, row_jit).astype(np.float32)
    fuzz = 0.06 * fbm(h, w, rng, cells=w / 2, octaves=1)
    img = col * ((0.45 + 0.55 * shade) * jit + fuzz)[..., None]
    return img * lighting(h, w, rng, 0.12)[..., None]


def _pcb(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    mask_col = _color(rng, (38, 110, 58), 12)
    trace_col = mask_col * np.array([1.5, 1.35, 1.3], np.float32)
    pad_col = _color(rng, (200, 165, 95), 15) if rng.random() < 0.6 else _color(rng, (195, 195, 190), 8)
    silk_col = np.array([235, 235, 225], np.float32)
    pitch = rng.uniform(8, 14)
    traces, pads, holes, silk = (Canvas(h, w, 2) for _ in range(4))
    for _ in range(int(rng.integers(8, 18))):  # Manhattan routing with 45° jogs
        x, y = float(rng.integers(0, int(w / pitch))) * pitch, float(rng.integers(0, int(h / pitch))) * pitch
        pts, direction = [(x, y)], int(rng.integers(0, 4)) * 2
        for _ in range(int(rng.integers(2, 6))):
            ang = direction * np.pi / 4
            seg = rng.uniform(1, 8) * pitch
            x, y = x + seg * np.cos(ang), y + seg * np.sin(ang)
            pts.append((x, y))
            direction = (direction + int(rng.choice([-2, -1, 1, 2]))) % 8
        width = rng.uniform(1.5, 4.0)
        traces.line(pts, width)
        pads.ellipse(pts[0][0], pts[0][1], width * 1.3, width * 1.3)
        pads.ellipse(pts[-1][0], pts[-1][1], width * 1.6, width * 1.6)
        holes.ellipse(pts[-1][0], pts[-1][1], width * 0.6, width * 0.6)
    for _ in range(int(rng.integers(1, 4))):  # IC footprints: pad rows + silkscreen outline
        n = int(rng.integers(3, 9))
        pw, ph = rng.uniform(2, 4), rng.uniform(5, 9)
        x0, y0 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
        span = n * pw * 2.2
        for i in range(n):
            px = x0 + i * pw * 2.2
            pads.rect(px, y0, px + pw, y0 + ph)
            pads.rect(px, y0 + ph * 3, px + pw, y0 + ph * 4)
        silk.line([(x0 - 3, y0 + ph + 2), (x0 + span, y0 + ph + 2)], 1.0)
        silk.line([(x0 - 3, y0 + ph * 3 - 2), (x0 + span, y0 + ph * 3 - 2)], 1.0)
        draw_text_block(silk, rng, (x0, y0 + ph * 4 + 3, x0 + rng.uniform(20, 60), y0 + ph * 4 + 10), 6.0)
    img = np.broadcast_to(mask_col, (h, w, 3)) * (1 + 0.06 * fbm(h, w, rng, cells=5))[..., None]
    for layer, col in ((traces, trace_col), (pads, pad_col), (silk, silk_col)):
        a = layer.alpha()[..., None]
        img = img * (1 - a) + col * a
    img = img * (1 - 0.85 * holes.alpha()[..., None])
    return img * lighting(h, w, rng, 0.15)[..., None] + _grain(rng, (h, w, 1), 2.5)


def _tile(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = coords(h, w)
    size = rng.uniform(40, 110)
    grout = rng.uniform(2.0, 5.0)
    offset = (np.floor(yy / size) % 2) * size * 0.5 if rng.random() < 0.3 else 0.0
    ty, tx = yy / size, (xx + offset) / size
    iy, ix = np.floor(ty), np.floor(tx)
    dy, dx = (ty - iy) * size, (tx - ix) * size  # position inside the tile, pixels
    edge = np.minimum(np.minimum(dy, size - dy), np.minimum(dx, size - dx))
    in_tile = smoothstep(grout * 0.5, grout * 0.5 + 1.0, edge)
    base = _color(rng, tuple(rng.uniform(120, 235, 3)), 0)
    tile_jit = rng.normal(1.0, 0.035, 4096).astype(np.float32)
    jit = tile_jit[((iy * 61 + ix * 17) % 4096).astype(int)]
    speckle = (rng.random((h, w), dtype=np.float32) < 0.004).astype(np.float32)
    glaze = 1 + 0.025 * fbm(h, w, rng, cells=8) + 0.04 * speckle
    # Bevel: the top-left rim of each tile catches the light, the bottom-right rim is shaded.
    lit = smoothstep(grout + 3.0, grout * 0.5, np.minimum(dy, dx))
    shaded = smoothstep(grout + 3.0, grout * 0.5, np.minimum(size - dy, size - dx))
    bevel = 1 + 0.12 * (lit - shaded)
    tile_img = base * (jit * glaze * bevel)[..., None]
    grout_img = _color(rng, (160, 158, 150), 15) * (1 + 0.08 * fbm(h, w, rng, cells=40, octaves=2))[..., None]
    img = grout_img * (1 - in_tile[..., None]) + tile_img * in_tile[..., None]
    return img * lighting(h, w, rng, 0.1)[..., None] + _grain(rng, (h, w, 1), 1.5)


def _label(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    paper = (
        _color(rng, (236, 234, 226), 8)
        if rng.random() < 0.7
        else _color(rng, tuple(rng.uniform(150, 240, 3)), 0)
    )
    ink = (
        _color(rng, (25, 25, 35), 10) if rng.random() < 0.7 else _color(rng, tuple(rng.uniform(0, 120, 3)), 0)
    )
    band_col = _color(rng, tuple(rng.uniform(20, 200, 3)), 0)
    text, band, band_text = Canvas(h, w, 3), Canvas(h, w, 3), Canvas(h, w, 3)
    margin = rng.uniform(0.04, 0.1) * w
    y = margin
    if rng.random() < 0.7:  # coloured header bar with reversed-out text
        bh = rng.uniform(0.1, 0.2) * h
        band.rect(0, y, w, y + bh)
        draw_text_block(band_text, rng, (margin, y + bh * 0.25, w * 0.8, y + bh * 0.8), bh * 0.45)
        y += bh + margin * 0.5
    glyph = rng.uniform(6, 12)
    text_bottom = h * rng.uniform(0.6, 0.85)
    draw_text_block(text, rng, (margin, y, w - margin, text_bottom), glyph)
    x = margin
    while x < w * rng.uniform(0.5, 0.9):  # barcode
        bw = rng.choice([1.0, 1.0, 2.0, 3.0])
        text.rect(x, text_bottom + 4, x + bw, h - margin)
        x += bw + rng.choice([1.0, 2.0, 3.0])
    img = np.broadcast_to(paper, (h, w, 3)) * (1 + 0.02 * fbm(h, w, rng, cells=6))[..., None]
    for layer, col in ((band, band_col), (band_text, paper), (text, ink)):
        a = layer.alpha()[..., None]
        img = img * (1 - a) + col * a
    return img * lighting(h, w, rng, 0.12)[..., None] + _grain(rng, (h, w, 1), 1.5)


def _leather(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    base = _color(rng, tuple(rng.choice([(120, 75, 45), (60, 40, 30), (170, 120, 80), (40, 40, 42)])), 10)
    cells = w / rng.uniform(4.5, 8)
    n = fbm(h, w, rng, cells=cells, octaves=2, gain=0.35)
    creases = np.exp(-((n / 0.22) ** 2))  # zero-crossings of noise form a cell-like crease network
    height = 0.6 * fbm(h, w, rng, cells=cells, octaves=2) + 0.3 * fbm(h, w, rng, cells=4, octaves=2) - creases
    shade = 1 + 0.25 * shade_from_height(height * 3.0)
    pores = (rng.random((h, w), dtype=np.float32) < 0.01).astype(np.float32) * 0.25
    v = shade * (1 - 0.3 * creases - pores)
    return base * v[..., None] * lighting(h, w, rng, 0.12)[..., None] + _grain(rng, (h, w, 1), 2.0)


def _carpet(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = coords(h, w)
    c1 = _color(rng, tuple(rng.uniform(40, 200, 3)), 0)
    c2 = c1 * rng.uniform(0.6, 0.9, 3).astype(np.float32)
    period = rng.uniform(3.5, 6.0)
    loops = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
    tufts = value_noise(h, w, h / 2.5, w / 2.5, rng)
    heather = (value_noise(h, w, h / 3, w / 3, rng) > 0.3)[..., None]
    col = np.where(heather, c2, c1)
    v = 0.7 + 0.15 * loops + 0.15 * tufts + 0.07 * fbm(h, w, rng, cells=5)
    v = v * (1 + 0.12 * _grain(rng, (h, w), 1))
    return col * v[..., None] * lighting(h, w, rng, 0.1)[..., None]


_SURFACES: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "brushed_metal": _brushed_metal,
    "wood": _wood,
    "fabric": _fabric,
    "pcb": _pcb,
    "tile": _tile,
    "label": _label,
    "leather": _leather,
    "carpet": _carpet,
}

SURFACE_KINDS: tuple[str, ...] = tuple(_SURFACES)


def check_surface_kind(kind: str) -> str:
    """Return the canonical kind name or raise InvalidInputError naming the choices."""
    key = str(kind).strip().lower().replace(" ", "_").replace("-", "_")
    if key in _SURFACES:
        return key
    close = difflib.get_close_matches(key, SURFACE_KINDS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise InvalidInputError(f"kind={kind!r} is not a known surface.{hint} Use one of {list(SURFACE_KINDS)}.")


def make_surface(kind: str, size_hw: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Render a procedural surface of `kind` as uint8 `[H, W, 3]`, deterministic in `rng`."""
    kind = check_surface_kind(kind)
    if isinstance(size_hw, (int, np.integer)):
        size_hw = (int(size_hw), int(size_hw))
    if len(size_hw) != 2 or any(int(s) < 16 or int(s) > 8192 for s in size_hw):
        raise InvalidInputError(f"size_hw={size_hw!r} must be (height, width) with each side in 16..8192.")
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}."
        )
    h, w = int(size_hw[0]), int(size_hw[1])
    img = _SURFACES[kind](h, w, rng)
    return to_uint8(np.broadcast_to(img, (h, w, 3)))
