"""Anti-aliased vector drawing (PIL, supersampled) and text-like glyph blocks.

PIL's ImageDraw does not anti-alias, so shapes are drawn on an `ss`× larger 8-bit canvas and
box-downsampled: the result is a float coverage field in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]  # (x, y) in output pixels, PIL order


class Canvas:
    """A supersampled single-channel canvas; coordinates are given in output pixels."""

    def __init__(self, h: int, w: int, ss: int = 4) -> None:
        self.h, self.w, self.ss = h, w, ss
        self.image = Image.new("L", (w * ss, h * ss), 0)
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, points: Sequence[Point]) -> list[tuple[float, float]]:
        s = self.ss
        return [(x * s, y * s) for x, y in points]

    def line(self, points: Sequence[Point], width: float, value: int = 255) -> None:
        if len(points) < 2:
            return
        wpx = max(1, int(round(width * self.ss)))
        self.draw.line(self._xy(points), fill=value, width=wpx, joint="curve")

    def polygon(self, points: Sequence[Point], value: int = 255) -> None:
        if len(points) >= 3:
            self.draw.polygon(self._xy(points), fill=value)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: int = 255) -> None:
        s = self.ss
        self.draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=value)

    def rect(self, x0: float, y0: float, x1: float, y1: float, value: int = 255) -> None:
        s = self.ss
        x0, x1 = sorted((x0 * s, x1 * s))
        y0, y1 = sorted((y0 * s, y1 * s))
        if x1 - x0 >= 1 and y1 - y0 >= 1:  # PIL rejects empty / inverted boxes
            self.draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=value)

    def alpha(self) -> np.ndarray:
        """Coverage in [0, 1], float32 `[h, w]`."""
        small = self.image.resize((self.w, self.h), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


def smooth_curve(
    rng: np.random.Generator,
    center: tuple[float, float],
    length: float,
    angle: float,
    bend: float = 0.3,
    n: int = 24,
) -> np.ndarray:
    """A gently curved polyline `[n, 2]` (x, y) of about `length` pixels centred at `center`."""
    t = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    # Lateral offset: a random quadratic + cubic bow, proportional to the length.
    lateral = length * (rng.normal(0.0, bend) * (t**2 - 1 / 12) + rng.normal(0.0, bend * 0.5) * t**3)
    along = t * length
    c, s = np.cos(angle), np.sin(angle)
    x = center[1] + along * c - lateral * s
    y = center[0] + along * s + lateral * c
    return np.stack([x, y], axis=1)


def jagged_path(
    rng: np.random.Generator,
    start: Point,
    angle: float,
    length: float,
    step: float,
    jitter: float = 0.5,
) -> list[Point]:
    """A random-walk polyline with jagged turns, keeping a mean heading (cracks)."""
    points = [start]
    x, y = start
    heading = angle
    travelled = 0.0
    while travelled < length:
        seg = step * rng.uniform(0.5, 1.5)
        heading = angle + 0.6 * (heading - angle) + rng.normal(0.0, jitter)
        x += seg * np.cos(heading)
        y += seg * np.sin(heading)
        points.append((float(x), float(y)))
        travelled += seg
    return points


# Glyph strokes connect nodes of a 3×5 grid (x in 0..2, y in 0..4): letter-like, not noise.
_NODES = [(x, y) for y in range(5) for x in range(3)]


def _random_glyph(rng: np.random.Generator) -> list[tuple[int, int]]:
    strokes = []
    for _ in range(int(rng.integers(2, 5))):
        a = _NODES[int(rng.integers(len(_NODES)))]
        if rng.random() < 0.6:  # mostly horizontal / vertical strokes, like Latin letters
            b = (a[0], int(rng.integers(5))) if rng.random() < 0.5 else (int(rng.integers(3)), a[1])
        else:
            b = _NODES[int(rng.integers(len(_NODES)))]
        if a != b:
            strokes.append((_NODES.index(a), _NODES.index(b)))
    return strokes or [(0, 14)]


def draw_text_block(
    canvas: Canvas,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    glyph_h: float,
    value: int = 255,
) -> None:
    """Fill `box` (x0, y0, x1, y1) with lines of words made of letter-like glyphs."""
    x0, y0, x1, y1 = box
    glyph_w = glyph_h * 0.6
    advance = glyph_w * 1.3
    stroke = max(0.6, glyph_h / 7.0)
    alphabet = [_random_glyph(rng) for _ in range(24)]
    y = y0
    while y + glyph_h <= y1:
        x = x0 + rng.uniform(0, 2) * advance
        while x + glyph_w <= x1:
            word_len = int(rng.integers(2, 9))
            for _ in range(word_len):
                if x + glyph_w > x1:
                    break
                glyph = alphabet[int(rng.integers(len(alphabet)))]
                for a, b in glyph:
                    (ax, ay), (bx, by) = _NODES[a], _NODES[b]
                    p = (x + ax / 2 * glyph_w, y + ay / 4 * glyph_h)
                    q = (x + bx / 2 * glyph_w, y + by / 4 * glyph_h)
                    canvas.line([p, q], stroke, value)
                x += advance
            x += advance * rng.uniform(0.8, 1.6)
        y += glyph_h * rng.uniform(1.5, 1.9)
