"""Sunglasses and eyeglasses (the `sunglasses` kind), placed on the two eye landmarks.

Paper 001's SG_RAF-DB puts a sunglasses image over the eyes from the eye key points; here
the glasses are drawn in the isotropic face frame (eyes at u = -0.5 and +0.5, v = 0), so
round lenses stay round and the frame rolls with the head. Most are dark sunglasses (round,
rectangular, aviator, wayfarer) with a glossy highlight; a minority are clear eyeglasses
whose lenses only tint the eyes (their mask there is the lens opacity, well below 1).
"""

from __future__ import annotations

import numpy as np

from app.occlusion.face import FaceFrame
from app.occlusion.sketch import Sketch, ellipse, mirror_x, rounded_rect, smooth
from app.occlusion.texture import fbm, jitter_color, mix, pick

SHAPES = ("round", "oval", "rect", "aviator", "wayfarer")
DARK_LENSES = [(18, 18, 20), (30, 30, 34), (45, 34, 26), (26, 38, 28), (24, 30, 48), (12, 12, 12)]
MIRROR_LENSES = [(60, 95, 150), (120, 120, 130), (150, 95, 45), (80, 125, 100)]
FRAMES = {"black": (20, 20, 22), "brown": (70, 45, 30), "navy": (30, 36, 70), "red": (150, 30, 36),
          "white": (225, 225, 220), "gold": (205, 170, 80), "silver": (185, 188, 195),
          "tortoise": (95, 60, 30)}
#: share of `sunglasses` occlusions that are clear eyeglasses instead of dark lenses
EYEGLASSES_SHARE = 0.15


def draw_glasses(frame: FaceFrame, rng: np.random.Generator,
                 dark: bool | None = None) -> tuple[Sketch, np.ndarray]:
    """Random glasses as a sketch in the isotropic face frame, and that frame's matrix."""
    dark = bool(rng.random() >= EYEGLASSES_SHARE) if dark is None else dark
    weights = (0.18, 0.12, 0.25, 0.25, 0.2) if dark else (0.3, 0.25, 0.3, 0.05, 0.1)
    shape = pick(rng, SHAPES, weights)
    # lens half-width in eye distances (a 50-56 mm lens on a 63 mm eye distance is ~0.42)
    w = rng.uniform(0.34, 0.42) if shape == "round" else rng.uniform(0.38, 0.46)
    cx = max(0.5 + rng.uniform(-0.01, 0.05), w + 0.06)  # leave room for the bridge
    cy = rng.uniform(-0.08, 0.02)
    lens, hh = _lens(shape, w, rng)
    metal = shape in ("aviator", "round") and rng.random() < 0.7
    t = rng.uniform(0.022, 0.038) if metal else rng.uniform(0.045, 0.085)
    if metal:
        frame_name = pick(rng, ("gold", "silver", "black"))
    else:
        frame_name = pick(rng, ("black", "brown", "tortoise", "navy", "red", "white"),
                          (0.45, 0.15, 0.2, 0.08, 0.06, 0.06))
    frame_paint = _frame_paint(rng, frame_name)

    sketch = Sketch()
    hinge_v = cy - 0.45 * hh
    for side in (-1.0, 1.0):  # temples run back to the ears, behind everything else
        temple = np.array([[side * (cx + 0.95 * w), hinge_v], [side * 1.08, hinge_v + 0.03],
                           [side * 1.3, hinge_v + 0.08]])
        sketch.stroke(smooth(temple, closed=False, iterations=2), t * 0.85, frame_paint)
    lens_paint, opacity = _lens_paint(rng, dark, w, hh)
    for side in (-1.0, 1.0):
        outline = (lens if side > 0 else mirror_x(lens)) + (side * cx, cy)
        sketch.fill(outline, lens_paint(side * cx, cy), opacity=opacity)
        sketch.stroke(outline, t, frame_paint, closed=True)
        if not metal:  # hinge block where the temple meets the front
            sketch.fill(rounded_rect(side * (cx + w), hinge_v, 2.2 * t, 1.6 * t, 0.3 * t),
                        frame_paint)
    inner = cx - 0.93 * w
    bridge_v = cy - (0.5 if shape == "aviator" else 0.3) * hh
    bridge = np.array([[-inner, bridge_v], [-inner * 0.4, bridge_v - 0.05], [0, bridge_v - 0.06],
                       [inner * 0.4, bridge_v - 0.05], [inner, bridge_v]])
    sketch.stroke(smooth(bridge, closed=False, iterations=2), t * 1.05, frame_paint)
    if shape == "aviator":  # the straight top bar of aviators
        top = cy - 0.9 * hh
        sketch.stroke(np.array([[-(cx - 0.3 * w), top], [cx - 0.3 * w, top]]), t * 0.9, frame_paint)
    return sketch, frame.similarity()


def _lens(shape: str, w: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Right-lens outline centred at the origin (outer side towards +u) and its half-height."""
    if shape == "round":
        hh = w * rng.uniform(0.88, 1.0)
        return ellipse(0, 0, w, hh), hh
    if shape == "oval":
        hh = w * rng.uniform(0.62, 0.78)
        return ellipse(0, 0, w, hh), hh
    if shape == "rect":
        hh = w * rng.uniform(0.58, 0.76)
        return rounded_rect(0, 0, 2 * w, 2 * hh, rng.uniform(0.15, 0.5) * hh), hh
    if shape == "aviator":
        hh = w * rng.uniform(0.72, 0.85)
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x, y = w * np.cos(t), hh * np.sin(t)
        inner = (1.0 - x / w) / 2  # 1 at the nose side, 0 at the temple side
        y = np.where(y < 0, 0.72 * y, y * (1.0 + 0.45 * inner))
        return np.stack([x, y - 0.1 * hh], axis=1), hh
    hh = w * rng.uniform(0.6, 0.72)  # wayfarer: wide top, outer top corner lifted
    quad = np.array([[-w, -0.8 * hh], [1.06 * w, -1.05 * hh], [0.86 * w, 0.85 * hh],
                     [-0.82 * w, 0.9 * hh]])
    return smooth(quad, closed=True, iterations=4), hh


def _lens_paint(rng: np.random.Generator, dark: bool, w: float, hh: float):
    """Per-lens shader factory and the lens opacity (1 hides the eye; clear lenses ~0.2)."""
    mirror = dark and rng.random() < 0.08
    if dark:
        base = np.asarray(jitter_color(rng, pick(rng, MIRROR_LENSES if mirror else DARK_LENSES), 5),
                          np.float32)
        opacity = rng.uniform(0.95, 1.0)
    else:
        base = np.asarray(jitter_color(rng, (214, 224, 234), 6), np.float32)
        opacity = rng.uniform(0.12, 0.3)
    gradient = rng.uniform(0.0, 0.5) if dark else 0.0
    glint = rng.uniform(0.1, 0.35) if not mirror else rng.uniform(0.4, 0.65)
    band_angle = rng.uniform(0.3, 1.2)
    band_pos = rng.uniform(-0.6, 0.3)
    streak = rng.uniform(0.2, 0.5) if rng.random() < 0.4 else 0.0
    spot = rng.uniform(0.4, 0.8) if rng.random() < 0.5 else 0.0
    sky = np.asarray((226, 234, 244), np.float32)

    def factory(cx: float, cy: float):
        def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            du, dv = (u - cx) / w, (v - cy) / hh
            shade = 1.0 + gradient * (dv - 0.3) - (0.35 if mirror else 0.1) * (du**2 + dv**2)
            color = base * np.clip(shade, 0.4, 1.6)[..., None]
            s = du * np.cos(band_angle) + dv * np.sin(band_angle)
            band = np.exp(-(((s - band_pos) / 0.3) ** 2)) \
                + streak * np.exp(-(((s - band_pos - 0.5) / 0.07) ** 2))
            dot = np.exp(-(((du + 0.45) ** 2 + (dv + 0.45) ** 2) / 0.015)) * spot
            return mix(color, sky, glint * band + dot)
        return paint

    return factory, opacity


def _frame_paint(rng: np.random.Generator, name: str):
    base = np.asarray(jitter_color(rng, FRAMES[name], 6), np.float32)
    if name == "tortoise":
        field = fbm(rng, (-1.4, -0.6, 1.4, 0.6), 10, 2)
        light = np.asarray((170, 110, 50), np.float32)
        return lambda u, v: mix(base * 0.6, light, np.clip(0.45 + 0.5 * field(u, v), 0, 1))
    if name in ("gold", "silver"):  # metal: a bright streak along each wire
        return lambda u, v: base * (0.8 + 0.35 * np.sin(u * 40.0) * np.cos(v * 37.0))[..., None]
    return lambda u, v: base * (1.0 - 0.12 * np.sin(u * 9.0 + v * 5.0))[..., None]
