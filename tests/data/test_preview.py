from __future__ import annotations

from PIL import Image

from unidg_rt.data import save_preview_grid


def test_preview_grid(tmp_path):
    path = save_preview_grid(tmp_path / "grid.png", n=3, seed=0, size=48, columns=2)
    with Image.open(path) as img:
        assert img.size == (2 * 3 * 48 + 6, 2 * (48 + 14))
