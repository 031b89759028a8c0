"""Line- and particle-like defect renderers: scratch, graze, crack, abrasion, scraped,
foreign matter, contamination, burr, misprint.

Every renderer has the signature `(img, rng, size, center) -> (target, alpha)`: `img` is the
normal image as float32 `[H, W, 3]` (0..255), `size` the defect extent in pixels, `center`
`(cy, cx)`. The caller blends `img + (target - img) * alpha` and keeps only `alpha >= thr`
pixels, so renderers may either return a colour + soft alpha or an already composited image
with a 0/1 support alpha.
"""

from __future__ import annotations

import numpy as np

from unidg_rt.data._draw import Canvas, draw_text_block, jagged_path, smooth_curve
from unidg_rt.data._noise import (
    blob_distance,
    gaussian_blur,
    interp_1d,
    luminance,
    noise_1d,
    rotated_frame,
    sample_bilinear,
    smoothstep,
    support_alpha,
    value_noise,
)


def _tapered_line(
    canvas: Canvas, pts: np.ndarray, width: float, rng: np.random.Generator, fade: float = 4.0
) -> None:
    """Polyline whose intensity fades in/out at both ends (scratches do not start abruptly)."""
    n = len(pts)
    phase = rng.uniform(0, 2 * np.pi)
    for i in range(n - 1):
        t = (i + 0.5) / (n - 1)
        ends = min(1.0, fade * t, fade * (1 - t))
        flicker = 0.85 + 0.15 * np.sin(phase + 9.0 * t)
        canvas.line([tuple(pts[i]), tuple(pts[i + 1])], width, int(255 * ends * flicker))


def scratch(img, rng, size, center):
    h, w = img.shape[:2]
    pts = smooth_curve(rng, center, size, rng.uniform(0, np.pi), bend=0.3, n=32)
    canvas = Canvas(h, w, 4)
    _tapered_line(canvas, pts, rng.uniform(0.7, 1.5) + size * rng.uniform(0.0, 0.008), rng)
    core = canvas.alpha()
    if rng.random() < 0.5:  # bright: the groove catches the light
        target = img * 0.3 + rng.uniform(215, 250)
        target = np.minimum(target, 255)
    else:  # dark groove with a faint shadow halo
        target = img * rng.uniform(0.2, 0.4)
        core = np.maximum(core, 0.25 * gaussian_blur(core, 1.0))
    return target, core * rng.uniform(0.8, 1.0)


def graze(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    canvas = Canvas(h, w, 4)
    for _ in range(int(rng.integers(4, 14))):
        off = rng.normal(0, size * 0.15, 2)
        c = (center[0] + off[0] + np.sin(angle) * off[1], center[1] + off[1] * np.cos(angle))
        pts = smooth_curve(rng, c, size * rng.uniform(0.25, 0.8), angle + rng.normal(0, 0.06), bend=0.1, n=12)
        _tapered_line(canvas, pts, rng.uniform(0.7, 1.4), rng, fade=3.0)
    lines = canvas.alpha()
    d = blob_distance(h, w, center, (size * 0.5, size * 0.25), angle, rng, roughness=0.4)
    haze = smoothstep(1.0, 0.3, d) * 0.25
    if float(luminance(img).mean()) > 170:  # light surfaces: grazes show as grey rub marks
        target = img * 0.55
    else:
        target = img * 0.3 + 0.7 * np.clip(luminance(img)[..., None] + 90, 0, 250)
    return target, np.maximum(lines * rng.uniform(0.75, 1.0), haze)


def crack(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    start = (center[1] - np.cos(angle) * size / 2, center[0] - np.sin(angle) * size / 2)
    step = max(1.5, size / 14)
    main = jagged_path(rng, start, angle, size, step, jitter=0.45)
    width = rng.uniform(0.8, 1.6) + size * 0.006
    canvas = Canvas(h, w, 4)
    for i in range(len(main) - 1):  # widest in the middle
        t = i / max(1, len(main) - 2)
        canvas.line([main[i], main[i + 1]], width * (0.45 + 0.55 * np.sin(np.pi * t)))
    for _ in range(int(rng.integers(1, 5))):
        root = main[int(rng.integers(1, max(2, len(main) - 1)))]
        branch_angle = angle + float(rng.choice([-1, 1])) * rng.uniform(0.4, 1.2)
        branch = jagged_path(rng, root, branch_angle, size * rng.uniform(0.12, 0.45), step * 0.7, 0.5)
        for i in range(len(branch) - 1):
            t = i / max(1, len(branch) - 1)
            canvas.line([branch[i], branch[i + 1]], max(0.5, width * 0.6 * (1 - 0.7 * t)))
    core = canvas.alpha()
    alpha = np.maximum(core, 0.25 * gaussian_blur(core, 1.0))
    return img * rng.uniform(0.08, 0.25), alpha


def abrasion(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    d = blob_distance(h, w, center, (size / 2, size / 2 * rng.uniform(0.5, 1.0)), angle, rng, roughness=0.5)
    patchy = np.clip(0.65 + 0.5 * value_noise(h, w, h / max(size / 4, 2), w / max(size / 4, 2), rng), 0, 1)
    alpha = smoothstep(1.0, 0.55, d) * patchy * rng.uniform(0.8, 1.0)
    flat = gaussian_blur(img, 2.5)
    # Worn surface: texture contrast flattened, lighter and greyer, covered in micro-scratches.
    target = 0.35 * flat + 0.65 * luminance(flat).mean() + rng.uniform(25, 50)
    for a in (angle, angle + rng.uniform(0.3, 1.2)):  # two families of micro-scratches
        _, v = rotated_frame(h, w, center, a)
        target += 20.0 * interp_1d(noise_1d(int(3 * size) + 8, rng), v + size * 1.5, 1.2)[..., None]
    return np.clip(target, 0, 255), alpha


def scraped(img, rng, size, center):
    h, w = img.shape[:2]
    angle = rng.uniform(0, np.pi)
    u, v = rotated_frame(h, w, center, angle)
    half_w = (
        size * rng.uniform(0.08, 0.2) * (1 + 0.35 * interp_1d(noise_1d(16, rng), u + size, max(size / 8, 1)))
    )
    half_l = size / 2 * (1 + 0.15 * interp_1d(noise_1d(16, rng), v + size, max(size / 10, 1)))
    inside = smoothstep(0.8, -0.8, np.abs(v) - half_w) * smoothstep(1.5, -1.5, np.abs(u) - half_l)
    rim = smoothstep(-2.5, -0.5, np.abs(v) - half_w) * inside
    substrate = 0.4 * luminance(img)[..., None] + 0.6 * rng.uniform(150, 225)
    streaks = interp_1d(noise_1d(int(2 * size) + 8, rng), v + size, 1.3)
    target = 0.75 * substrate + 0.25 * img + 22.0 * streaks[..., None]
    target = target * (1 - 0.35 * rim[..., None])
    return np.clip(target, 0, 255), inside


def foreign_matter(img, rng, size, center):
    h, w = img.shape[:2]
    kind = rng.choice(["hair", "chip", "fibers"], p=[0.4, 0.35, 0.25])
    canvas = Canvas(h, w, 4)
    color = np.array(
        rng.choice([(25, 20, 18), (60, 45, 35), (225, 220, 210), tuple(rng.uniform(0, 255, 3))]), np.float32
    )
    if kind == "hair":
        pts = smooth_curve(rng, center, size * 1.2, rng.uniform(0, np.pi), bend=0.7, n=40)
        canvas.line([tuple(p) for p in pts], rng.uniform(0.8, 2.2) + size * 0.005)
    elif kind == "fibers":
        for _ in range(int(rng.integers(3, 9))):
            c = (center[0] + rng.normal(0, size / 5), center[1] + rng.normal(0, size / 5))
            pts = smooth_curve(rng, c, size * rng.uniform(0.25, 0.6), rng.uniform(0, np.pi), bend=0.8, n=16)
            canvas.line([tuple(p) for p in pts], rng.uniform(0.6, 1.4))
    else:  # a chip of some other material
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = size / 2 * rng.uniform(0.55, 1.0, n)
        canvas.polygon(
            [(center[1] + r * np.cos(a), center[0] + r * np.sin(a)) for a, r in zip(ang, rad, strict=True)]
        )
    obj = canvas.alpha()
    shift = max(1.0, size * 0.03)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shadow = 0.45 * gaussian_blur(sample_bilinear(obj, yy - shift, xx - shift), 1.0 + shift * 0.5)
    texture = 1 + 0.15 * value_noise(h, w, h / 3, w / 3, rng)
    light = 1 + 0.25 * np.clip((center[0] - yy + center[1] - xx) / max(size, 1), -1, 1)
    comp = img * (1 - shadow[..., None])
    obj3 = obj[..., None]
    comp = comp * (1 - obj3) + np.clip(color * (texture * light)[..., None], 0, 255) * obj3
    return comp, support_alpha(obj, shadow)


def contamination(img, rng, size, center):
    h, w = img.shape[:2]
    canvas = Canvas(h, w, 4)
    n = int(rng.integers(8, 45))
    spread = size / 4
    for _ in range(n):
        dy, dx = np.clip(rng.normal(0, spread, 2), -size / 2, size / 2)
        r = rng.uniform(0.4, 1.8) + size * rng.uniform(0, 0.015)
        canvas.ellipse(
            center[1] + dx, center[0] + dy, r * rng.uniform(0.6, 1.4), r, int(rng.uniform(150, 255))
        )
    alpha = canvas.alpha()
    color = np.array(rng.choice([(55, 55, 60), (120, 60, 30), (235, 235, 230), (20, 20, 20)]), np.float32)
    target = color * (1 + 0.25 * value_noise(h, w, h / 2, w / 2, rng))[..., None]
    return np.clip(target, 0, 255), alpha


def burr(img, rng, size, center):
    h, w = img.shape[:2]
    spike, shadow = Canvas(h, w, 4), Canvas(h, w, 4)
    base_angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(1, 4))):
        a = base_angle + rng.normal(0, 0.5)
        length = size * rng.uniform(0.5, 1.0)
        half = rng.uniform(0.8, 2.0) + size * 0.04
        bx, by = center[1] + rng.normal(0, size * 0.1), center[0] + rng.normal(0, size * 0.1)
        px, py = -np.sin(a) * half, np.cos(a) * half
        tip = (bx + np.cos(a) * length, by + np.sin(a) * length)
        tri = [(bx + px, by + py), tip, (bx - px, by - py)]
        spike.polygon(tri)
        shadow.polygon([(x + 1.5, y + 1.5) for x, y in tri])
    a_spike, a_shadow = spike.alpha(), shadow.alpha() * 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gleam = rng.uniform(190, 245) + 25 * np.sin((xx - yy) / max(size / 6, 1.0))
    comp = img * (1 - a_shadow[..., None])
    comp = comp * (1 - a_spike[..., None]) + np.clip(gleam, 0, 255)[..., None] * a_spike[..., None]
    return comp, support_alpha(a_spike, a_shadow)


def _has_print(lum: np.ndarray) -> bool:
    """True when a patch looks like print on a substrate (bimodal: flat background plus
    clearly separated ink), not merely a busy texture such as fabric or carpet."""
    if lum.size < 16:
        return False
    diff = np.abs(lum - np.median(lum))
    extreme = float((diff > 70).mean())
    middle = float(((diff > 25) & (diff <= 70)).mean())
    return 0.03 <= extreme <= 0.6 and middle < 0.6 * extreme


def misprint(img, rng, size, center):
    h, w = img.shape[:2]
    bw, bh = size, size * rng.uniform(0.35, 0.8)
    x0, y0 = center[1] - bw / 2, center[0] - bh / 2
    box = Canvas(h, w, 2)
    box.rect(x0, y0, x0 + bw, y0 + bh)
    region = box.alpha()
    inside = region > 0.5
    lum = luminance(img)
    printed = _has_print(lum[inside])  # existing print under the box?
    mode = rng.choice(["ghost", "missing", "stray"]) if printed else "stray"
    if mode == "ghost":  # misregistration: the print is doubled with an offset
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dy, dx = (float(x) for x in rng.uniform(2, 6, 2) * rng.choice([-1, 1], 2))
        shifted = sample_bilinear(img, yy - dy, xx - dx)
        return np.minimum(img, shifted), region
    if mode == "missing":  # print dropped out: only the substrate remains
        paper_px = img[inside & (lum >= np.percentile(lum[inside], 80))]
        paper = np.median(paper_px, axis=0) if len(paper_px) else img[inside].max(axis=0)
        return np.broadcast_to(paper, img.shape).astype(np.float32), region * rng.uniform(0.85, 1.0)
    glyphs = Canvas(h, w, 3)
    glyph_h = float(np.clip(bh / rng.uniform(2.0, 3.5), 3.0, 14.0))
    draw_text_block(glyphs, rng, (x0, y0, x0 + bw, y0 + bh), glyph_h)
    ink_alpha = glyphs.alpha()
    if rng.random() < 0.5:  # smeared ink
        ink_alpha = np.clip(gaussian_blur(ink_alpha, rng.uniform(0.6, 1.5)) * 1.4, 0, 1)
    inks = [(20, 20, 30), (30, 40, 120), (150, 20, 20), (240, 240, 235)]
    if inside.any() and float(lum[inside].mean()) > 150:  # white ink would vanish on a light substrate
        inks = inks[:3]
    ink = np.array(inks[int(rng.integers(len(inks)))], np.float32)
    return np.broadcast_to(ink, img.shape).astype(np.float32), ink_alpha * rng.uniform(0.7, 1.0)
