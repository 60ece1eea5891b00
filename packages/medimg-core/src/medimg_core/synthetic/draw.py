"""Small numpy drawing primitives for the generators: coordinates, soft shapes, smooth noise.

Canvases are float32 in [0, 1], (H, W) or (H, W, 3); lengths are in units of the image side, so a
generator draws the same picture at any size. Everything is deterministic given the numpy Generator.
"""

from __future__ import annotations

import numpy as np


def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (size, size) float32 in (0, 1)."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    return np.meshgrid(t, t, indexing="ij")


def soft_edge(signed_inside: np.ndarray, size: int, width_px: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (positive inside, in image units)."""
    return np.clip(signed_inside * size / width_px + 0.5, 0.0, 1.0).astype(np.float32)


def disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, size: int, soft_px: float = 1.0) -> np.ndarray:
    """Coverage (H, W) of a disc of radius r centred at (cy, cx)."""
    return soft_edge(r - np.hypot(yy - cy, xx - cx), size, soft_px)


def ellipse_value(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """((y - cy) / ry)^2 + ((x - cx) / rx)^2: below 1 inside the ellipse."""
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, size: int) -> np.ndarray:
    """Coverage (H, W) of an axis-aligned ellipse, anti-aliased over about one pixel."""
    v = np.sqrt(ellipse_value(yy, xx, cy, cx, ry, rx))
    return soft_edge((1.0 - v) * min(ry, rx), size)


def segment_distance(yy: np.ndarray, xx: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance (H, W) from every pixel to the segment p0-p1 (points as (y, x))."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0.0, 1.0) if length2 > 0 else 0.0
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise (size, size) in about [-1, 1], varying over `cells` cells per side (smoothstep)."""
    cells = max(1, int(cells))
    lattice = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) / size * cells
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    f = f * f * (3.0 - 2.0 * f)
    rows = lattice[i0] * (1.0 - f)[:, None] + lattice[i0 + 1] * f[:, None]
    out = rows[:, i0] * (1.0 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return out.astype(np.float32)


def blend(canvas: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """canvas * (1 - alpha) + colour * alpha; colour is a scalar, an RGB triple or an array like canvas."""
    colour = np.asarray(colour, dtype=np.float32)
    if canvas.ndim == 3:
        a = alpha[..., None]
        if colour.ndim == 1:
            colour = colour[None, None, :]
    else:
        a = alpha
    return (canvas * (1.0 - a) + colour * a).astype(np.float32)


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 [0, 255], rounding half to even (deterministic)."""
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)


CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def corner_centre(corner: int, inset: float) -> tuple[float, float]:
    """(cy, cx) of a point `inset` (image units) from both edges at corner 0..3 (TL, TR, BL, BR)."""
    fy, fx = CORNERS[corner]
    return (1.0 - inset if fy else inset), (1.0 - inset if fx else inset)
