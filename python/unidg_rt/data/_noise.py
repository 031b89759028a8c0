"""Vectorised numpy/PIL building blocks shared by the surface and defect generators.

Everything works on float32 arrays; images are `[H, W, 3]` in 0..255, fields `[H, W]`.
Smooth noise comes from bicubic upsampling of small random grids (PIL, ~0.2 ms per octave
at 256²), which is far cheaper than blurring white noise and needs no scipy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(yy, xx)`, each float32 `[H, W]` (read-only, cached)."""
    return _grid(h, w)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at `edge0` to 1 at `edge1` (edges may be in either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic resize of a small float grid to `[h, w]`."""
    img = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def value_noise(h: int, w: int, cells_y: float, cells_x: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in about [-1, 1] with roughly `cells_y × cells_x` features."""
    gy = max(2, int(round(cells_y)) + 1)
    gx = max(2, int(round(cells_x)) + 1)
    return upsample(rng.uniform(-1.0, 1.0, size=(gy, gx)), h, w)


def fbm(
    h: int,
    w: int,
    rng: np.random.Generator,
    cells: float = 4.0,
    octaves: int = 4,
    gain: float = 0.5,
    aspect: float = 1.0,
) -> np.ndarray:
    """Fractal (octave) noise normalised to zero mean, unit std.

    `aspect` > 1 stretches features along x (cells_x = cells / aspect), as for grain.
    """
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for octave in range(octaves):
        c = cells * (2**octave)
        cy = min(c, h / 1.5)
        cx = min(c / aspect, w / 1.5)
        out += amp * value_noise(h, w, cy, cx, rng)
        amp *= gain
    out -= out.mean()
    std = float(out.std())
    return out / std if std > 1e-6 else out


def gaussian_blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of `[H, W]` or `[H, W, C]` (reflect padding).

    PIL's GaussianBlur rejects float images, so this is a small numpy convolution; large
    sigmas are done at reduced resolution, which is indistinguishable after blurring.
    """
    if sigma <= 0.3:
        return field.astype(np.float32, copy=True)
    h, w = field.shape[:2]
    if sigma > 6.0 and min(h, w) >= 32:
        factor = int(min(sigma / 3.0, min(h, w) / 16))
        if factor >= 2:
            small = _resize_any(field, max(1, h // factor), max(1, w // factor))
            small = gaussian_blur(small, sigma / factor)
            return _resize_any(small, h, w)
    radius = int(np.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / sigma) ** 2)
    k /= k.sum()
    out = field.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis)
        out = windows @ k
    return out.astype(np.float32)


def _resize_any(field: np.ndarray, h: int, w: int) -> np.ndarray:
    if field.ndim == 2:
        return upsample(field, h, w)
    return np.stack([upsample(field[..., c], h, w) for c in range(field.shape[2])], axis=-1)


def lighting(h: int, w: int, rng: np.random.Generator, strength: float = 0.12) -> np.ndarray:
    """Multiplicative illumination field: a linear ramp plus a soft off-centre hotspot."""
    yy, xx = coords(h, w)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    ramp = (ca * xx / w + sa * yy / h) - 0.5 * (ca + sa)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    spot = np.exp(-(((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2) / rng.uniform(0.1, 0.4))
    return (1.0 + strength * (ramp + 0.8 * (spot - 0.5))).astype(np.float32)


def rotated_frame(h: int, w: int, center: tuple[float, float], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates `(u, v)` relative to `center`: u along `angle`, v across it (pixels)."""
    yy, xx = coords(h, w)
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return dx * c + dy * s, -dx * s + dy * c


def noise_1d(n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Random control values for `interp_1d` (a smooth-ish 1-D noise)."""
    return rng.uniform(-1.0, 1.0, size=max(2, int(n_cells) + 2)).astype(np.float32)


def interp_1d(values: np.ndarray, t: np.ndarray, period: float) -> np.ndarray:
    """Sample 1-D noise `values` at positions `t` (pixels), one control point per `period`."""
    pos = np.mod(t / period, len(values) - 1)
    return np.interp(pos, np.arange(len(values), dtype=np.float32), values).astype(np.float32)


def blob_distance(
    h: int,
    w: int,
    center: tuple[float, float],
    radii: tuple[float, float],
    angle: float,
    rng: np.random.Generator,
    roughness: float = 0.25,
) -> np.ndarray:
    """Normalised distance to an irregular ellipse (< 1 inside, 1 on the boundary).

    The boundary wobbles with a few random angular harmonics plus fine noise so blobs do not
    look like perfect ellipses.
    """
    u, v = rotated_frame(h, w, center, angle)
    d = np.sqrt((u / max(radii[0], 0.5)) ** 2 + (v / max(radii[1], 0.5)) ** 2)
    theta = np.arctan2(v, u)
    wobble = np.zeros_like(d)
    for k in range(2, 7):
        wobble += rng.normal(0.0, 1.0 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    wobble *= roughness * 0.6
    cells = max(2.0, 2.0 * max(radii) / 6.0)
    fine = value_noise(h, w, min(cells * h / max(w, 1), h / 2), min(cells, w / 2), rng)
    return (d / np.maximum(1.0 + wobble + 0.25 * roughness * fine, 0.3)).astype(np.float32)


def sample_bilinear(img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Bilinear lookup of `img[yy, xx]` (float coords, clamped at the borders)."""
    h, w = img.shape[:2]
    yy = np.clip(yy, 0.0, h - 1.0)
    xx = np.clip(xx, 0.0, w - 1.0)
    y0 = np.minimum(np.floor(yy).astype(np.int32), h - 2 if h > 1 else 0)
    x0 = np.minimum(np.floor(xx).astype(np.int32), w - 2 if w > 1 else 0)
    fy = (yy - y0)[..., None] if img.ndim == 3 else yy - y0
    fx = (xx - x0)[..., None] if img.ndim == 3 else xx - x0
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def shade_from_height(height: np.ndarray, light_angle: float = -2.36) -> np.ndarray:
    """Lambert-like relief term `-∇h · L` for a height field (pixels); light from top-left."""
    gy, gx = np.gradient(height.astype(np.float32))
    return -(gx * float(np.cos(light_angle)) + gy * float(np.sin(light_angle)))


def luminance(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma `[H, W]` of an `[H, W, 3]` image."""
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


def support_alpha(*alphas: np.ndarray, thr: float = 0.02) -> np.ndarray:
    """0/1 alpha covering every pixel where any component is visible."""
    mask = np.zeros(alphas[0].shape, bool)
    for a in alphas:
        mask |= a > thr
    return mask.astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
