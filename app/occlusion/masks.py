"""Face masks (the `masked` kind): surgical, N95/KN95 and cloth masks placed from landmarks.

This is the procedural counterpart of the template masks MaskTheFace and Dlib-based tools
warp onto the jaw line and nose bridge (paper 003's masked FER+, paper 001's FM_RAF-DB):
the outline is designed in face units (u along the eyes in eye distances, v from the eye line
(0) to the mouth line (1)) and follows the landmarks, turning with a turned head because the
mask's centre line follows the nose and mouth and the far side is foreshortened.
"""

from __future__ import annotations

import numpy as np

from app.occlusion.face import FaceFrame
from app.occlusion.sketch import Sketch, ellipse, mirror_x, rounded_rect, smooth
from app.occlusion.texture import fbm, jitter_color, mix, noise, pick, smoothstep

SURGICAL_COLORS = [(150, 195, 228), (172, 212, 236), (238, 238, 234), (176, 216, 196),
                   (236, 196, 208), (44, 46, 52), (200, 192, 232)]
N95_COLORS = [(242, 242, 238), (234, 229, 214), (222, 224, 226), (48, 50, 56), (160, 196, 226)]
CLOTH_COLORS = [(30, 32, 38), (40, 48, 86), (120, 124, 130), (228, 160, 176), (170, 40, 48),
                (96, 110, 70), (214, 196, 160), (70, 120, 170), (235, 235, 228), (110, 70, 120)]
STYLES = ("surgical", "n95", "cloth")


def draw_mask(frame: FaceFrame, rng: np.random.Generator,
              style: str | None = None) -> tuple[Sketch, np.ndarray]:
    """A random face mask as a sketch in face units and the face -> image matrix."""
    style = style or pick(rng, STYLES, (0.45, 0.2, 0.35))
    sketch = Sketch()
    warp = _face_warp(frame)
    if style == "surgical":
        _surgical(sketch, rng, warp)
    elif style == "n95":
        _n95(sketch, rng, warp)
    elif style == "cloth":
        _cloth(sketch, rng, warp)
    else:
        raise ValueError(f"unknown mask style {style!r}; expected one of {STYLES}")
    return sketch, frame.affine()


class _FaceWarp:
    """Bends a symmetric design onto a possibly turned face: its centre line follows the
    nose and mouth, and the half on the far side of the turn is narrowed."""

    def __init__(self, nose_v: float, nose_u: float, mouth_u: float):
        self.nose_v, self.nose_u, self.mouth_u = nose_v, nose_u, mouth_u
        self.turn = float(np.clip((nose_u + mouth_u) / 2, -0.3, 0.3))

    def shift(self, v: np.ndarray) -> np.ndarray:
        t = np.clip((np.asarray(v) - self.nose_v) / max(1.0 - self.nose_v, 0.1), 0.0, 1.0)
        return self.nose_u * (1.0 - t) + self.mouth_u * t

    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = np.array(points, np.float64)
        u, v = pts[:, 0], pts[:, 1]
        squeeze = 1.0 - 1.2 * self.turn * np.sign(u)
        pts[:, 0] = self.shift(v) + u * squeeze
        return pts

    def centred(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Shader-side inverse (approximately): u relative to the design's centre line."""
        rel = u - self.shift(v)
        return rel / (1.0 - 1.2 * self.turn * np.sign(rel))


def _face_warp(frame: FaceFrame) -> _FaceWarp:
    return _FaceWarp(*frame.midline())


def _outline(right_half: list[tuple[float, float]], warp: _FaceWarp) -> np.ndarray:
    """Closed outline from the right half's control points, top centre to bottom centre."""
    right = np.asarray(right_half, np.float64)
    left = mirror_x(right[1:-1][::-1])
    return warp(smooth(np.concatenate([right, left]), closed=True, iterations=4))


def _loops(sketch: Sketch, warp: _FaceWarp, anchors: list[tuple[float, float]],
           ear: tuple[float, float], color, width: float) -> None:
    """Ear loops / straps: from each anchor on the mask's side to the ear, both sides."""
    for u0, v0 in anchors:
        for sign in (1.0, -1.0):
            u1, v1 = ear
            pts = np.array([[sign * u0, v0], [sign * (u0 + u1) / 2, (v0 + v1) / 2 + 0.02],
                            [sign * u1, v1]])
            sketch.stroke(warp(smooth(pts, closed=False, iterations=2)), width, color)


def _surgical(sketch: Sketch, rng: np.random.Generator, warp: _FaceWarp) -> None:
    top = rng.uniform(0.2, 0.34)
    bottom = rng.uniform(1.7, 1.92)
    w = rng.uniform(0.96, 1.08)
    outline = _outline([(0, top), (0.3, top + 0.05), (0.7 * w, top + 0.13), (1.0 * w, top + 0.2),
                        (1.04 * w, 0.75), (1.0 * w, 1.15), (0.9 * w, 1.4), (0.62 * w, 1.63),
                        (0.3 * w, bottom - 0.03), (0, bottom)], warp)
    color = jitter_color(rng, pick(rng, SURGICAL_COLORS), 6)
    grain = fbm(rng, (-1.2, 0, 1.2, 2.0), 6, 3)
    n_pleats = int(rng.integers(2, 4))
    pleats = top + (bottom - top) * (np.arange(1, n_pleats + 1) / (n_pleats + 1)
                                     + rng.normal(0, 0.03, n_pleats))
    droop = rng.uniform(0.0, 0.12)

    def shade(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        cu = warp.centred(u, v) / w
        b = 1.02 - 0.22 * cu**2 - 0.14 * smoothstep(1.2, 1.9, v) + 0.025 * grain(u, v)
        for p in pleats:
            t = (v - p - droop * cu**2) / 0.07
            b = b - 0.2 * np.exp(-((t - 0.55) / 0.45) ** 2) + 0.07 * np.exp(-((t + 0.5) / 0.6) ** 2)
        return np.asarray(color, np.float32) * np.clip(b, 0.3, 1.1)[..., None]

    loop_color = jitter_color(rng, (236, 236, 232), 5) if rng.random() < 0.7 else color
    _loops(sketch, warp, [(1.0 * w, top + 0.22), (0.92 * w, 1.35)], (1.2, top + 0.2),
           loop_color, 0.035)
    sketch.fill(outline, shade, edge=(0.12, 0.03))
    # the nose wire: a faint ridge along the top edge over the bridge of the nose
    wire = warp(np.array([[-0.35, top + 0.08], [0, top + 0.045], [0.35, top + 0.08]]))
    sketch.stroke(smooth(wire, closed=False), 0.025, jitter_color(rng, color, 4), opacity=0.5)


def _n95(sketch: Sketch, rng: np.random.Generator, warp: _FaceWarp) -> None:
    top = rng.uniform(0.14, 0.28)
    bottom = rng.uniform(1.66, 1.82)
    w = rng.uniform(0.9, 1.02)
    outline = _outline([(0, top), (0.35, top + 0.1), (0.8 * w, top + 0.28), (0.98 * w, 0.75),
                        (0.9 * w, 1.2), (0.6 * w, 1.52), (0.27 * w, bottom - 0.04), (0, bottom)],
                       warp)
    color = jitter_color(rng, pick(rng, N95_COLORS, (0.45, 0.2, 0.15, 0.1, 0.1)), 5)
    grain = fbm(rng, (-1.2, 0, 1.2, 2.0), 8, 2)
    seam = rng.random() < 0.7

    def shade(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        cu = warp.centred(u, v) / w
        r2 = cu**2 + ((v - 1.0) / 0.85) ** 2
        b = 1.06 - 0.32 * r2 + 0.03 * grain(u, v)
        if seam:
            b = b - 0.22 * np.exp(-(((cu + 0.012) / 0.018) ** 2)) \
                + 0.06 * np.exp(-(((cu - 0.04) / 0.03) ** 2))
        return np.asarray(color, np.float32) * np.clip(b, 0.3, 1.12)[..., None]

    strap = pick(rng, [(236, 236, 232), (240, 214, 80), (90, 130, 200), color])
    _loops(sketch, warp, [(0.92 * w, 0.55)], (1.22, 0.15), strap, 0.035)
    _loops(sketch, warp, [(0.85 * w, 1.25)], (1.22, 0.95), strap, 0.035)
    sketch.fill(outline, shade, edge=(0.18, 0.04))
    sketch.fill(warp(rounded_rect(0, top + 0.1, rng.uniform(0.35, 0.5), 0.07, 0.03)),
                jitter_color(rng, (205, 208, 212), 6), opacity=0.9)
    if rng.random() < 0.3:  # exhalation valve on one side
        side = pick(rng, (-1.0, 1.0))
        valve = jitter_color(rng, pick(rng, [(200, 200, 200), (230, 120, 40), (60, 60, 64)]), 8)
        cx, cy, r = side * 0.42 * w, 1.05, rng.uniform(0.16, 0.22)
        sketch.fill(warp(ellipse(cx, cy, r, r * 0.95)),
                    lambda u, v: np.asarray(valve, np.float32)
                    * (1.1 - 0.35 * ((v - cy + 0.05) / r).clip(-1, 1) ** 2)[..., None],
                    edge=(0.35, 0.04))


def _cloth(sketch: Sketch, rng: np.random.Generator, warp: _FaceWarp) -> None:
    top = rng.uniform(0.2, 0.32)
    bottom = rng.uniform(1.7, 1.86)
    w = rng.uniform(0.96, 1.08)
    outline = _outline([(0, top), (0.4, top + 0.06), (0.85 * w, top + 0.2), (1.03 * w, top + 0.34),
                        (1.05 * w, 0.85), (0.95 * w, 1.3), (0.6 * w, 1.6),
                        (0.28 * w, bottom - 0.03), (0, bottom)], warp)
    pattern = _pattern(rng)
    grain = fbm(rng, (-1.2, 0, 1.2, 2.0), 10, 2)
    seam = rng.random() < 0.5

    def shade(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        cu = warp.centred(u, v) / w
        b = 1.03 - 0.25 * cu**2 - 0.12 * smoothstep(1.2, 1.85, v) + 0.05 * grain(u, v)
        if seam:
            b = b - 0.2 * np.exp(-(cu / 0.02) ** 2)
        return pattern(cu, v) * np.clip(b, 0.3, 1.15)[..., None]

    loop = jitter_color(rng, pattern(np.zeros((1, 1), np.float32),
                                     np.full((1, 1), 1.0, np.float32))[0, 0], 10)
    _loops(sketch, warp, [(1.02 * w, top + 0.34), (0.95 * w, 1.3)], (1.2, top + 0.3), loop, 0.05)
    sketch.fill(outline, shade, edge=(0.15, 0.05))


def _pattern(rng: np.random.Generator):
    """A fabric print as a function of (centred u, v): solid, stripes, dots, checks,
    flowers or camouflage, in two to three colours."""
    base = np.asarray(jitter_color(rng, pick(rng, CLOTH_COLORS), 10), np.float32)
    other = np.asarray(jitter_color(rng, pick(rng, CLOTH_COLORS), 10), np.float32)
    if np.abs(base - other).sum() < 90:
        other = 255.0 - base
    kind = pick(rng, ("solid", "stripes", "dots", "checks", "flowers", "camo"),
                (0.35, 0.15, 0.15, 0.12, 0.12, 0.11))
    period = rng.uniform(0.14, 0.3)
    angle = pick(rng, (0.0, np.pi / 4, -np.pi / 4, np.pi / 2))
    ca, sa = np.cos(angle), np.sin(angle)

    if kind == "solid":
        return lambda u, v: np.broadcast_to(base, u.shape + (3,))
    if kind == "stripes":
        duty = rng.uniform(0.3, 0.6)
        return lambda u, v: mix(base, other, smoothstep(
            duty - 0.06, duty + 0.06, np.mod((ca * u + sa * v) / period, 1.0)))
    if kind == "dots":
        radius = rng.uniform(0.15, 0.3) * period

        def dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            row = np.floor(v / period)
            du = np.mod(u / period + 0.5 * row, 1.0) - 0.5
            dv = np.mod(v / period, 1.0) - 0.5
            r = np.hypot(du, dv) * period
            return mix(base, other, 1.0 - smoothstep(radius * 0.8, radius, r))
        return dots
    if kind == "checks":
        def checks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            a = smoothstep(0.4, 0.6, np.abs(np.mod(u / period, 1.0) - 0.5) * 2)
            b = smoothstep(0.4, 0.6, np.abs(np.mod(v / period, 1.0) - 0.5) * 2)
            return mix(base, other, 0.5 * a + 0.5 * b)
        return checks
    if kind == "flowers":  # one flower per cell of a jittered grid: a single pass per pixel
        third = np.asarray(jitter_color(rng, pick(rng, CLOTH_COLORS), 20), np.float32)
        table = rng.uniform(-0.22, 0.22, (2, 16, 16))
        which = rng.random((16, 16)) < 0.6
        size = rng.uniform(0.22, 0.34, (16, 16)) * period
        spin = rng.uniform(0, 2 * np.pi, (16, 16))

        def flowers(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            i = np.floor(u / period).astype(int) % 16
            j = np.floor(v / period).astype(int) % 16
            du = (np.mod(u / period, 1.0) - 0.5 - table[0, j, i]) * period
            dv = (np.mod(v / period, 1.0) - 0.5 - table[1, j, i]) * period
            petal = size[j, i] * (0.72 + 0.28 * np.cos(5 * np.arctan2(dv, du) + spin[j, i]))
            inside = 1.0 - smoothstep(0.85, 1.0, np.hypot(du, dv) / petal)
            color = np.where(which[j, i][..., None], other, third)
            return mix(base, color, inside)
        return flowers
    field = fbm(rng, (-1.2, 0, 1.2, 2.0), 4, 2)
    third = np.asarray(jitter_color(rng, (96, 100, 60), 25), np.float32)
    field2 = noise(rng, (-1.2, 0, 1.2, 2.0), 5)

    def camo(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = mix(base, other, smoothstep(0.1, 0.2, field(u, v)))
        return mix(out, third, smoothstep(0.35, 0.45, field2(u, v)))
    return camo
