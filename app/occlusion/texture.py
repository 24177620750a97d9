"""Procedural texture pieces that shaders are built from.

Everything is a function of local coordinates (never of canvas pixels), so a pattern keeps
its size on the object whatever the image resolution or supersampling factor; random fields
are drawn from the caller's generator, which keeps every occlusion reproducible from a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) -> (h, w) float32


def noise(rng: np.random.Generator, box: Sequence[float], cells: int | tuple[int, int]) -> Field:
    """Smooth value noise over the local box (u0, v0, u1, v1): `cells` random values per
    side, bicubic in between; roughly N(0, 0.8) inside the box, mirrored outside."""
    u0, v0, u1, v1 = (float(x) for x in box)
    cu, cv = (cells, cells) if isinstance(cells, int) else cells
    grid = rng.standard_normal((cv + 3, cu + 3)).astype(np.float32)

    def field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        gx = ((u - u0) / max(u1 - u0, 1e-6) * cu + 1.0).astype(np.float32)
        gy = ((v - v0) / max(v1 - v0, 1e-6) * cv + 1.0).astype(np.float32)
        return cv2.remap(grid, gx, gy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)

    return field


def fbm(rng: np.random.Generator, box: Sequence[float], cells: int, octaves: int = 3,
        gain: float = 0.5) -> Field:
    """Sum of noise octaves (cloth grain, leaf mottling, camouflage blobs)."""
    layers = [noise(rng, box, cells * 2**i) for i in range(octaves)]
    weights = [gain**i for i in range(octaves)]
    total = float(np.sqrt(sum(w * w for w in weights)))

    def field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sum(w * f(u, v) for w, f in zip(weights, layers)) / total

    return field


def mix(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float],
        t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours (or colour fields) by t in [0, 1]."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return np.asarray(a, np.float32) * (1.0 - t) + np.asarray(b, np.float32) * t


def tint(color: Sequence[float], shade: np.ndarray) -> np.ndarray:
    """A flat colour times a per-pixel brightness (h, w) -> (h, w, 3)."""
    return np.asarray(color, np.float32) * shade[..., None].astype(np.float32)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def jitter_color(rng: np.random.Generator, color: Sequence[float], amount: float = 12.0) -> tuple:
    """A nearby colour, so no two occluders share exactly the same paint."""
    c = np.asarray(color, np.float64) + rng.normal(0.0, amount, 3) + rng.normal(0.0, amount)
    return tuple(np.clip(c, 0, 255).tolist())


def pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    """One element of a list (rng.choice would turn tuples of colours into arrays)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    w = np.asarray(weights, np.float64)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def paint_from(rng: np.random.Generator, palette: Sequence[Sequence[float]],
               amount: float = 8.0) -> np.ndarray:
    """A jittered colour from a palette, as a float32 RGB array ready for shading maths."""
    return np.asarray(jitter_color(rng, pick(rng, palette), amount), np.float32)
