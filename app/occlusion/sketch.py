"""Vector occluders rasterised with supersampling.

An occluder is described once, as a `Sketch` of filled polygons and stroked polylines in its
own local coordinates (a face mask in face units, a ball in ball radii), plus one 2x3 affine
that places it in the image. Keeping geometry resolution-free is what lets the same mask look
right on a 48 px FERPlus crop and on a 224 px camera crop: it is drawn at `scale` times the
image resolution and box-filtered down, so edges come out anti-aliased and the returned alpha
is the exact fraction of each pixel the occluder hides.

Shaders colour the inside of a shape from local coordinates, so shading (cylinder light on a
cup, pleats on a mask) follows the object when it is moved, rotated or rescaled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: (u, v) local coordinates, each (h, w) float32 -> (h, w, 3) RGB float32 in 0..255.
Shader = Callable[[np.ndarray, np.ndarray], np.ndarray]
Paint = Shader | Sequence[float]

_SHIFT = 4  # cv2 fixed-point bits: polygons are placed to 1/16 of a canvas pixel
_ONE = 1 << _SHIFT


@dataclass
class _Op:
    points: list[np.ndarray]  # local coordinates, each (N, 2)
    paint: Paint
    opacity: float
    width: float | None  # stroke width in local units; None fills the polygons
    closed: bool
    edge: tuple[float, float] | None  # (darkening at the rim, rim width in local units)


class Sketch:
    """A list of drawing operations in local coordinates, painted in order (later on top)."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def fill(self, polygon: np.ndarray | list[np.ndarray], paint: Paint, opacity: float = 1.0,
             edge: tuple[float, float] | None = None) -> None:
        """Fill one polygon or the union of several; `edge` darkens a rim inside the outline,
        the cheapest cue that a flat shape is a rounded solid (fingers, balls, fabric)."""
        polys = [polygon] if isinstance(polygon, np.ndarray) else list(polygon)
        self.ops.append(_Op([np.asarray(p, np.float64).reshape(-1, 2) for p in polys], paint,
                            float(opacity), None, True, edge))

    def stroke(self, points: np.ndarray, width: float, paint: Paint, opacity: float = 1.0,
               closed: bool = False) -> None:
        """A polyline of constant width with round joins and caps (frames, straps, veins)."""
        self.ops.append(_Op([np.asarray(points, np.float64).reshape(-1, 2)], paint,
                            float(opacity), float(width), closed, None))

    # -- rasterisation ---------------------------------------------------------------------

    def silhouette(self, shape: tuple[int, int], matrix: np.ndarray, scale: int = 1) -> np.ndarray:
        """(H, W) float32 coverage of all ops together, unshaded: cheap enough to size an
        occluder by trial before painting it."""
        height, width = shape
        canvas = np.zeros((height * scale, width * scale), np.uint8)
        unit = _unit_length(matrix) * scale
        for op in self.ops:
            if op.opacity <= 0:
                continue
            pts = [_to_fixed(_to_canvas(p, matrix, scale)) for p in op.points]
            _raster(canvas, pts, op.width * unit if op.width is not None else None, op.closed)
        coverage = canvas.astype(np.float32) / 255.0
        if scale > 1:
            coverage = cv2.resize(coverage, (width, height), interpolation=cv2.INTER_AREA)
        return coverage

    def render(self, shape: tuple[int, int], matrix: np.ndarray,
               scale: int) -> tuple[np.ndarray, np.ndarray]:
        """Paint every op at `scale` x the image size and box-filter down.

        Returns premultiplied RGB (H, W, 3) float32 and alpha (H, W) float32 in [0, 1]:
        premultiplied, so averaging a half-covered pixel does not bleed black into its colour.
        """
        height, width = shape
        big = (height * scale, width * scale)
        premult = np.zeros(big + (3,), np.float32)
        alpha = np.zeros(big, np.float32)
        inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
        unit = _unit_length(matrix) * scale
        for op in self.ops:
            if op.opacity <= 0:
                continue
            canvas_pts = [_to_canvas(p, matrix, scale) for p in op.points]
            pad = 2 + (op.width * unit if op.width is not None else 0.0)
            box = _bbox(canvas_pts, pad, big)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            cover = np.zeros((y1 - y0, x1 - x0), np.uint8)
            shifted = [_to_fixed(p - (x0, y0)) for p in canvas_pts]
            _raster(cover, shifted, op.width * unit if op.width is not None else None, op.closed)
            if not cover.any():
                continue
            u, v = _local_grid(inverse, scale, x0, y0, x1, y1)
            color = _evaluate(op.paint, u, v)
            if op.edge is not None:
                strength, rim = op.edge
                dist = cv2.distanceTransform(cover, cv2.DIST_L2, 3) / unit
                color = color * (1.0 - strength * np.exp(-dist / max(rim, 1e-6)))[..., None]
            a = cover.astype(np.float32) * (op.opacity / 255.0)
            region_p = premult[y0:y1, x0:x1]
            region_a = alpha[y0:y1, x0:x1]
            region_p *= (1.0 - a)[..., None]
            region_p += color * a[..., None]
            region_a *= 1.0 - a
            region_a += a
        if scale > 1:
            premult = cv2.resize(premult, (width, height), interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA)
        return premult, np.clip(alpha, 0.0, 1.0)


def supersampling(shape: tuple[int, ...]) -> int:
    """4x for crops up to 96 px (FERPlus), 2x around 192-224 px, 1x from 384 px: the canvas
    stays near 400 px a side, where edges are smooth enough and painting stays cheap enough
    for data-loader workers."""
    return int(np.clip(-(-384 // max(shape[0], shape[1], 1)), 1, 4))


def _unit_length(matrix: np.ndarray) -> float:
    """Image pixels per local unit (geometric mean of the two axes)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, np.float64)[:, :2]))))


def _to_canvas(points: np.ndarray, matrix: np.ndarray, scale: int) -> np.ndarray:
    """Local -> image pixel -> canvas pixel. Image pixel (x, y) has its centre at integer
    x, y (OpenCV convention), so it spans canvas pixels [x*s, x*s + s) shifted by s/2 - 1/2."""
    image = points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix)[:, 2]
    return (image + 0.5) * scale - 0.5


def _to_fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.clip(points, -1e5, 1e5) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _raster(canvas: np.ndarray, polys: list[np.ndarray], width: float | None, closed: bool) -> None:
    """Union of filled polygons (one fillPoly each: cv2 would XOR overlapping ones), or a
    polyline of `width` canvas pixels."""
    if width is None:
        for poly in polys:
            cv2.fillPoly(canvas, [poly], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        thickness = max(1, int(round(width)))
        cv2.polylines(canvas, polys, closed, 255, thickness=thickness, lineType=cv2.LINE_8,
                      shift=_SHIFT)


def _bbox(polys: list[np.ndarray], pad: float,
          shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    stacked = np.concatenate(polys, axis=0)
    x0 = max(int(np.floor(stacked[:, 0].min() - pad)), 0)
    y0 = max(int(np.floor(stacked[:, 1].min() - pad)), 0)
    x1 = min(int(np.ceil(stacked[:, 0].max() + pad)) + 1, shape[1])
    y1 = min(int(np.ceil(stacked[:, 1].max() + pad)) + 1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _local_grid(inverse: np.ndarray, scale: int, x0: int, y0: int, x1: int,
                y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Local coordinates of the centres of canvas pixels [x0, x1) x [y0, y1)."""
    xs = ((np.arange(x0, x1, dtype=np.float64) + 0.5) / scale - 0.5)[None, :]
    ys = ((np.arange(y0, y1, dtype=np.float64) + 0.5) / scale - 0.5)[:, None]
    u = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    v = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    return u.astype(np.float32), v.astype(np.float32)


def _evaluate(paint: Paint, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if callable(paint):
        color = np.asarray(paint(u, v), np.float32)
        if color.shape != u.shape + (3,):
            color = np.broadcast_to(color, u.shape + (3,)).astype(np.float32)
        return color
    return np.broadcast_to(np.asarray(paint, np.float32), u.shape + (3,)).copy()


# -- polygon builders (local coordinates) ----------------------------------------------------

def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0,
            n: int = 72) -> np.ndarray:
    """Closed ellipse outline; `angle` in radians."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    return rotate(pts, angle) + (cx, cy)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float,
        n: int = 32) -> np.ndarray:
    """Open elliptical arc from angle `start` to `stop` (radians, y down)."""
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def rounded_rect(cx: float, cy: float, w: float, h: float, r: float, angle: float = 0.0,
                 n: int = 10) -> np.ndarray:
    """Rectangle w x h with corner radius r, centred at (cx, cy)."""
    r = float(np.clip(r, 0.0, min(w, h) / 2))
    hw, hh = w / 2 - r, h / 2 - r
    corners = [(hw, hh, 0.0), (-hw, hh, np.pi / 2), (-hw, -hh, np.pi), (hw, -hh, 1.5 * np.pi)]
    pts = []
    for x, y, a0 in corners:
        t = np.linspace(a0, a0 + np.pi / 2, n)
        pts.append(np.stack([x + r * np.cos(t), y + r * np.sin(t)], axis=1))
    return rotate(np.concatenate(pts), angle) + (cx, cy)


def capsule(p0: Sequence[float], p1: Sequence[float], r0: float, r1: float,
            n: int = 16) -> np.ndarray:
    """Tapered capsule between two points (a finger segment, a bottle neck)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    axis = p1 - p0
    length = float(np.hypot(*axis)) or 1e-6
    angle = np.arctan2(axis[1], axis[0])
    t0 = np.linspace(np.pi / 2, 1.5 * np.pi, n)  # the cap around p0 (pointing backwards)
    t1 = np.linspace(-np.pi / 2, np.pi / 2, n)  # the cap around p1
    cap0 = np.stack([r0 * np.cos(t0), r0 * np.sin(t0)], axis=1)
    cap1 = np.stack([length + r1 * np.cos(t1), r1 * np.sin(t1)], axis=1)
    return rotate(np.concatenate([cap0, cap1]), angle) + p0


def smooth(points: np.ndarray, closed: bool = True, iterations: int = 3) -> np.ndarray:
    """Chaikin corner cutting: a few control points become a smooth outline."""
    pts = np.asarray(points, np.float64)
    for _ in range(iterations):
        if closed:
            nxt = np.roll(pts, -1, axis=0)
            q = 0.75 * pts + 0.25 * nxt
            r = 0.25 * pts + 0.75 * nxt
            pts = np.stack([q, r], axis=1).reshape(-1, 2)
        else:
            q = 0.75 * pts[:-1] + 0.25 * pts[1:]
            r = 0.25 * pts[:-1] + 0.75 * pts[1:]
            pts = np.concatenate([pts[:1], np.stack([q, r], axis=1).reshape(-1, 2), pts[-1:]])
    return pts


def mirror_x(points: np.ndarray) -> np.ndarray:
    """Reflect across the local vertical axis (left half of a symmetric shape from its right)."""
    pts = np.array(points, np.float64)
    pts[:, 0] *= -1
    return pts


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.asarray(points, np.float64) @ np.array([[c, s], [-s, c]])


def placement(center: Sequence[float], scale: float, angle: float = 0.0) -> np.ndarray:
    """2x3 local -> image similarity: rotate by `angle`, scale, move the origin to `center`."""
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, center[0]], [s, c, center[1]]], np.float64)
