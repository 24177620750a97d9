"""Everyday objects in front of the face (the `objects` kind).

FED-RO, Occlu-FER and "RAF-DB + random occlusion" show faces behind cups, phones, books,
food, scarves and the like; those photos cannot be copied, so each object is a small
procedural model: an outline in object units (about one unit from its centre to its edge)
with shading that sells the volume (cylinder light on cups and bottles, sphere light on balls
and fruit, folds on scarves) and a surface print. `draw_object` then picks a place on the face
and sizes the object until it hides the sampled share of the face oval (15-45 %).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.occlusion.face import FaceFrame
from app.occlusion.sketch import Sketch, arc, ellipse, placement, rounded_rect, smooth
from app.occlusion.texture import fbm, jitter_color, mix, noise, paint_from, pick, smoothstep

COVERAGE = (0.15, 0.45)
WHITE = np.array((245, 245, 240), np.float32)
MUGS = [(200, 40, 40), (40, 80, 170), (240, 240, 236), (230, 190, 40), (40, 130, 80), (30, 30, 32),
        (230, 120, 150)]
PAPER_CUPS = [(238, 236, 230), (200, 165, 120)]
CUP_BANDS = [(120, 80, 50), (40, 110, 70), (30, 30, 30), (200, 40, 40)]
PHONE_CASES = [(25, 25, 28), (235, 235, 232), (190, 192, 198), (215, 190, 150), (60, 90, 160),
               (230, 160, 180), (170, 30, 40), (70, 120, 90)]
BOOK_COVERS = [(150, 30, 30), (30, 60, 120), (40, 100, 60), (230, 200, 60), (30, 30, 32),
               (220, 110, 40), (240, 236, 228), (100, 60, 130)]
RUBBER_BALLS = [(210, 40, 40), (40, 90, 200), (50, 170, 70), (240, 200, 40), (150, 60, 180)]
GREEN_LEAVES = [(70, 130, 45), (95, 150, 55), (45, 105, 45), (120, 160, 60)]
AUTUMN_LEAVES = [(200, 120, 40), (185, 60, 30), (205, 170, 60)]
SCARVES = [(170, 30, 40), (40, 50, 90), (110, 110, 115), (220, 200, 160), (60, 90, 60),
           (230, 230, 225), (200, 120, 40), (30, 30, 32)]
SCARF_ACCENTS = [(240, 230, 210), (30, 30, 30), (200, 40, 40), (40, 90, 160), (230, 190, 60)]

Builder = Callable[[np.random.Generator, np.ndarray], Sketch]


def _light(rng: np.random.Generator) -> np.ndarray:
    """A unit light direction (x, y, z) from the viewer's upper side."""
    angle = rng.uniform(-2.6, -0.5)
    v = np.array([np.cos(angle) * 0.6, np.sin(angle) * 0.6, 0.8])
    return v / np.linalg.norm(v)


def _cylinder(u: np.ndarray, half_width: np.ndarray | float, light: np.ndarray,
              gloss: float) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse shade and specular weight across a vertical cylinder."""
    x = np.clip(u / half_width, -0.999, 0.999)
    z = np.sqrt(1.0 - x * x)
    lambert = np.clip(x * light[0] + z * light[2], 0.0, 1.0)
    reflect_x = light[0] / 2  # where the mirror direction of the light meets the viewer
    spec = gloss * np.exp(-(((x - reflect_x) / 0.1) ** 2))
    return 0.35 + 0.75 * lambert, spec


def _sphere(u: np.ndarray, v: np.ndarray, light: np.ndarray,
            gloss: float) -> tuple[np.ndarray, np.ndarray]:
    r2 = np.clip(u * u + v * v, 0.0, 0.999)
    z = np.sqrt(1.0 - r2)
    lambert = np.clip(u * light[0] + v * light[1] + z * light[2], 0.0, 1.0)
    hx, hy = light[0] / 2, light[1] / 2
    spec = gloss * np.exp(-(((u - hx) ** 2 + (v - hy) ** 2) / 0.02))
    return 0.3 + 0.8 * lambert, spec


def cup(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    paper = rng.random() < 0.4
    top, bottom = -0.85, 0.85
    wt = rng.uniform(0.55, 0.68)
    wb = wt * (rng.uniform(0.72, 0.85) if paper else rng.uniform(0.9, 1.0))
    rim = 0.16 * wt
    body = np.concatenate([arc(0, bottom, wb, 0.1, np.pi, 0), arc(0, top, wt, rim, 0, -np.pi)])
    color = paint_from(rng, PAPER_CUPS if paper else MUGS)
    band = paint_from(rng, CUP_BANDS, 10)
    band_lo, band_hi = rng.uniform(-0.2, 0.05), rng.uniform(0.3, 0.55)
    decorated = paper or rng.random() < 0.5
    gloss = 0.15 if paper else 0.55

    def width_at(v: np.ndarray) -> np.ndarray:
        return wt + (wb - wt) * (v - top) / (bottom - top)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        shade, spec = _cylinder(u, width_at(v), light, gloss)
        base = color
        if decorated:
            base = mix(color, band, smoothstep(band_lo - 0.02, band_lo, v)
                       * (1.0 - smoothstep(band_hi, band_hi + 0.02, v)))
        return mix(base * shade[..., None], WHITE, spec)

    sketch = Sketch()
    if not paper:  # handle on one side, behind the body
        side = pick(rng, (-1.0, 1.0))
        sketch.stroke(ellipse(side * (wt + 0.12), -0.1, 0.3, 0.38, n=48), 0.12,
                      lambda u, v: color * 0.85, closed=True)
    sketch.fill(body, paint, edge=(0.15, 0.05))
    if paper and rng.random() < 0.6:  # plastic lid
        lid = paint_from(rng, [(240, 240, 236), (30, 30, 30)], 5)
        sketch.fill(rounded_rect(0, top - 0.04, 2.1 * wt, 0.2, 0.08),
                    lambda u, v: lid * _cylinder(u, 1.05 * wt, light, 0.3)[0][..., None])
    else:
        coffee = rng.random() < 0.6
        inside = paint_from(rng, [(60, 35, 20), (30, 20, 15)], 4) if coffee else color * 0.45
        sketch.fill(ellipse(0, top, wt * 0.9, rim * 0.75), lambda u, v: inside * np.clip(
            0.7 + 0.4 * (v - top + rim) / (2 * rim), 0.5, 1.2)[..., None])
        sketch.stroke(ellipse(0, top, wt * 0.95, rim * 0.88), 0.04, color * 1.05, closed=True)
    return sketch


def phone(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    w, h = rng.uniform(0.46, 0.56), 1.0
    case = paint_from(rng, PHONE_CASES, 6)
    sheen = rng.uniform(0.1, 0.3)

    def body(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = u * light[0] + v * light[1]
        return case * (1.0 + sheen * d)[..., None]

    sketch = Sketch()
    sketch.fill(rounded_rect(0, 0, 2 * w, 2 * h, 0.16), body, edge=(0.3, 0.04))
    if rng.random() < 0.5:  # the screen side
        c1 = np.asarray(rng.uniform(20, 255, 3), np.float32)
        c2 = np.asarray(rng.uniform(0, 160, 3), np.float32)
        lit = rng.random() < 0.6

        def screen(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            if not lit:
                return np.full(u.shape + (3,), 18.0, np.float32)
            base = mix(c1, c2, (v + h) / (2 * h))
            glare = np.exp(-(((u + v * 0.6 - 0.2) / 0.15) ** 2)) * 0.25
            return mix(base, WHITE, glare)

        sketch.fill(rounded_rect(0, 0, 2 * w - 0.08, 2 * h - 0.08, 0.12), screen)
        sketch.fill(rounded_rect(0, -h + 0.1, 0.3, 0.07, 0.035), (10, 10, 12))
    else:  # the back: camera bump, lenses, logo
        cam = case * 0.8
        sketch.fill(rounded_rect(-w + 0.27, -h + 0.27, 0.4, 0.4, 0.1), lambda u, v: cam,
                    edge=(0.35, 0.03))
        for cx, cy in [(-w + 0.18, -h + 0.18), (-w + 0.18, -h + 0.36), (-w + 0.36, -h + 0.27)][
                : int(rng.integers(1, 4))]:
            sketch.fill(ellipse(cx, cy, 0.075, 0.075), (20, 20, 24))
            sketch.stroke(ellipse(cx, cy, 0.075, 0.075), 0.02, (120, 120, 128), closed=True)
            sketch.fill(ellipse(cx - 0.02, cy - 0.02, 0.018, 0.018), (150, 160, 190))
        sketch.fill(ellipse(0, -0.05, 0.09, 0.1), case * 1.12, opacity=0.6)
    return sketch


def book(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    w, h = rng.uniform(0.6, 0.78), 1.0
    sketch = Sketch()
    if rng.random() < 0.3:  # a sheet of paper or a magazine with lines of text
        paper = np.asarray(jitter_color(rng, (242, 240, 232), 5), np.float32)
        fold = rng.uniform(-0.3, 0.3)
        sketch.fill(rounded_rect(0, 0, 2 * w, 2 * h, 0.02),
                    lambda u, v: paper * (1.0 - 0.12 * np.exp(-(((v - fold) / 0.05) ** 2))
                                          + 0.05 * (u * light[0]))[..., None])
        for i, y in enumerate(np.arange(-h + 0.2, h - 0.15, rng.uniform(0.1, 0.15))):
            length = 2 * w - 0.3 - (rng.uniform(0, 0.6) if rng.random() < 0.3 else 0)
            sketch.stroke(np.array([[-w + 0.15, y], [-w + 0.15 + length, y]]), 0.035,
                          (70, 70, 75), opacity=0.75)
        return sketch
    cover = paint_from(rng, BOOK_COVERS, 10)
    grain = fbm(rng, (-1, -1, 1, 1), 8, 2)
    sketch.fill(rounded_rect(0.06, 0.05, 2 * w, 2 * h, 0.04), lambda u, v: np.asarray(
        (236, 230, 212), np.float32) * (0.9 + 0.08 * np.sin(u * 160 + v * 160))[..., None])
    spine = -w + rng.uniform(0.12, 0.2)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        shade = 1.0 + 0.15 * (u * light[0] + v * light[1]) + 0.04 * grain(u, v)
        shade = shade - 0.3 * np.exp(-(((u - spine) / 0.025) ** 2))
        return cover * shade[..., None]

    sketch.fill(rounded_rect(0, 0, 2 * w, 2 * h, 0.04), paint, edge=(0.2, 0.03))
    label = paint_from(rng, [(240, 236, 225), (20, 20, 20), (220, 180, 60)])
    top = rng.uniform(-0.75, -0.3)
    sketch.fill(rounded_rect(spine / 2 + w / 2, top, (w - spine) * 0.8, 0.35, 0.02), label)
    for y in (top - 0.07, top + 0.07):
        sketch.stroke(np.array([[spine + 0.2, y], [w - 0.25, y]]), 0.05, cover * 0.7, opacity=0.9)
    if rng.random() < 0.6:  # a picture on the cover
        pic = np.asarray(rng.uniform(40, 240, 3), np.float32)
        sketch.fill(ellipse(spine / 2 + w / 2, rng.uniform(0.2, 0.5), 0.3, 0.25), lambda u, v: mix(
            pic, pic * 0.5, (v - 0.1) * 1.5))
    return sketch


def ball(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    kind = pick(rng, ("tennis", "soccer", "basket", "beach", "plain"))
    fuzz = noise(rng, (-1, -1, 1, 1), 24)
    if kind == "tennis":
        base, gloss = np.asarray(jitter_color(rng, (205, 225, 70), 8), np.float32), 0.05
    elif kind == "soccer":
        base, gloss = np.asarray((240, 240, 238), np.float32), 0.3
    elif kind == "basket":
        base, gloss = np.asarray(jitter_color(rng, (215, 100, 40), 8), np.float32), 0.15
    else:
        base = paint_from(rng, RUBBER_BALLS, 10)
        gloss = 0.6
    beach = [np.asarray(c, np.float32) for c in [(220, 40, 40), (245, 245, 240), (40, 90, 210),
                                                  (245, 210, 40), (50, 170, 80), (245, 245, 240)]]
    turn = rng.uniform(0, 2 * np.pi)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        shade, spec = _sphere(u, v, light, gloss)
        color = np.broadcast_to(base, u.shape + (3,)).astype(np.float32)
        c, s = np.cos(turn), np.sin(turn)
        ru, rv = c * u - s * v, s * u + c * v
        if kind == "tennis":
            seam = np.minimum(np.abs(np.hypot(ru - 1.35, rv) - 1.0),
                              np.abs(np.hypot(ru + 1.35, rv) - 1.0))
            felt = color * (1 + 0.08 * fuzz(u, v))[..., None]
            color = mix(felt, WHITE, 1 - smoothstep(0.03, 0.05, seam))
        elif kind == "soccer":
            dark = _pentagon(ru, rv, 0, 0, 0.3, turn)
            for k in range(5):
                a = turn + np.pi / 5 + k * 2 * np.pi / 5
                patch = _pentagon(ru, rv, 0.85 * np.cos(a), 0.85 * np.sin(a), 0.26, a)
                dark = np.maximum(dark, patch)
            color = mix(color, (25, 25, 28), dark)
        elif kind == "basket":
            lines = np.minimum(np.abs(ru), np.abs(rv))
            lines = np.minimum(lines, np.abs(np.hypot(np.abs(ru) - 1.6, rv) - 1.15))
            pebbled = color * (1 + 0.06 * fuzz(u, v))[..., None]
            color = mix(pebbled, (25, 20, 18), 1 - smoothstep(0.02, 0.035, lines))
        elif kind == "beach":
            turns = np.arctan2(rv + 0.25, ru - 0.15) / (2 * np.pi)
            sector = np.floor(np.mod(turns * 6, 6)).astype(int)
            color = np.stack(beach)[sector]
        return mix(color * shade[..., None], WHITE, spec)

    sketch = Sketch()
    sketch.fill(ellipse(0, 0, 1, 1, n=96), paint)
    return sketch


def _pentagon(u: np.ndarray, v: np.ndarray, cx: float, cy: float, r: float,
              angle: float) -> np.ndarray:
    """Soft inside-test of a regular pentagon (the black patches of a football)."""
    du, dv = u - cx, v - cy
    theta = np.mod(np.arctan2(dv, du) - angle, 2 * np.pi / 5) - np.pi / 5
    edge = r * np.cos(np.pi / 5) / np.cos(theta)
    return 1.0 - smoothstep(edge * 0.93, edge, np.hypot(du, dv))


def leaf(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    autumn = rng.random() < 0.3
    color = paint_from(rng, AUTUMN_LEAVES if autumn else GREEN_LEAVES, 10)
    wmax = rng.uniform(0.35, 0.55)
    bend = rng.uniform(-0.25, 0.25)
    t = np.linspace(0, 1, 40)
    half = wmax * np.sin(np.pi * t**0.85) ** 0.8
    ys = 1.0 - 2.0 * t

    def curve(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u + bend * (1.0 - v**2)

    right = np.stack([curve(half, ys), ys], axis=1)
    left = np.stack([curve(-half, ys), ys], axis=1)[::-1]
    outline = np.concatenate([right, left])
    mottle = fbm(rng, (-1, -1, 1, 1), 6, 3)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = u - bend * (1.0 - v**2)
        shade = 1.0 + 0.2 * np.sign(x) * light[0] + 0.08 * mottle(u, v) - 0.15 * (v + 1) / 2
        return color * shade[..., None]

    sketch = Sketch()
    sketch.stroke(np.array([[bend * 0, 1.0], [0.02, 1.3]]), 0.06, color * 0.7)
    sketch.fill(outline, paint, edge=(0.15, 0.04))
    vein = np.minimum(color * 1.35, 255)
    spine = np.linspace(1, -0.95, 20)
    mid = np.stack([curve(np.zeros(20), spine), spine], axis=1)
    sketch.stroke(mid, 0.035, vein, opacity=0.8)
    for y0 in np.linspace(0.7, -0.5, int(rng.integers(4, 7))):
        k = np.argmin(np.abs(ys - y0))
        for sign in (-1, 1):
            end = y0 - 0.3
            pts = np.array([[curve(0.0, y0), y0], [curve(sign * half[k] * 0.8, end), end]])
            sketch.stroke(pts, 0.02, vein, opacity=0.6)
    return sketch


def scarf(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    """A band of fabric across the face, its ends beyond the face's sides."""
    band = rng.uniform(0.4, 0.6)
    phase = rng.uniform(0, 2 * np.pi, 2)
    xs = np.linspace(-2.4, 2.4, 40)
    top = -band + 0.06 * np.sin(2.5 * xs + phase[0])
    bottom = band + 0.06 * np.sin(2.2 * xs + phase[1])
    outline = np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], bottom[::-1]], 1)])
    base = paint_from(rng, SCARVES, 10)
    other = paint_from(rng, SCARF_ACCENTS, 10)
    pattern = pick(rng, ("solid", "stripes", "plaid"), (0.4, 0.3, 0.3))
    period = rng.uniform(0.18, 0.35)
    folds = fbm(rng, (-2.5, -1, 2.5, 1), 6, 2)
    fold_freq = rng.uniform(9, 14)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        color = np.broadcast_to(base, u.shape + (3,))
        if pattern == "stripes":
            color = mix(base, other, smoothstep(0.45, 0.55, np.mod(v / period + 0.2 * u, 1.0)))
        elif pattern == "plaid":
            a = smoothstep(0.6, 0.7, np.abs(np.mod(u / period, 1.0) - 0.5) * 2)
            b = smoothstep(0.6, 0.7, np.abs(np.mod(v / period, 1.0) - 0.5) * 2)
            color = mix(mix(base, other, 0.55 * a), other * 0.8, 0.45 * b)
        shade = 0.9 + 0.14 * np.sin(fold_freq * v + 1.5 * folds(u, v)) + 0.05 * np.sin(u * 70) \
            - 0.1 * np.abs(v) / band
        return color * shade[..., None]

    sketch = Sketch()
    sketch.fill(outline, paint, edge=(0.15, 0.06))
    return sketch


def fruit(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    apple = rng.random() < 0.6
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    if apple:
        r = 1.0 - 0.14 * np.exp(-(((theta - 1.5 * np.pi) / 0.45) ** 2)) + 0.04 * np.cos(2 * theta)
        color = paint_from(rng, [(185, 30, 35), (150, 195, 60), (225, 200, 70)], 10)
    else:
        r = np.ones_like(theta)
        color = np.asarray(jitter_color(rng, (240, 140, 25), 8), np.float32)
    outline = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
    streak = fbm(rng, (-1, -1, 1, 1), 6, 2)
    pores = noise(rng, (-1, -1, 1, 1), 40)
    alt = np.asarray((230, 190, 60), np.float32)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        shade, spec = _sphere(u, v, light, 0.4)
        base = mix(color, alt, 0.35 * smoothstep(0.2, 0.8, streak(u, v))) if apple else \
            color * (1.0 + 0.05 * pores(u, v))[..., None]
        return mix(base * shade[..., None], WHITE, spec)

    sketch = Sketch()
    sketch.fill(outline, paint)
    if apple:
        sketch.stroke(np.array([[0, -0.8], [0.04, -1.0], [0.1, -1.15]]), 0.07, (90, 60, 30))
        if rng.random() < 0.5:
            sketch.fill(ellipse(0.32, -1.0, 0.25, 0.1, angle=-0.4), (70, 130, 45), edge=(0.2, 0.03))
    else:
        sketch.fill(ellipse(0.0, -0.05, 0.05, 0.05), color * 0.7)
    return sketch


def bottle(rng: np.random.Generator, light: np.ndarray) -> Sketch:
    w = rng.uniform(0.32, 0.42)
    ctrl = np.array([[0.0, 1.0], [w, 1.0], [w, -0.15], [0.14, -0.55], [0.12, -0.82],
                     [-0.12, -0.82], [-0.14, -0.55], [-w, -0.15], [-w, 1.0]])
    outline = smooth(ctrl, closed=True, iterations=3)
    color = paint_from(rng, [(150, 190, 215), (40, 110, 50), (110, 60, 20), (200, 220, 230),
                             (200, 40, 40)])
    label = paint_from(rng, [(240, 236, 228), (200, 40, 40), (30, 60, 140), (230, 200, 60)], 10)
    lo, hi = rng.uniform(0.0, 0.25), rng.uniform(0.55, 0.8)

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        half = np.where(v > -0.15, w, 0.14 + (w - 0.14) * np.clip((v + 0.55) / 0.4, 0, 1))
        shade, spec = _cylinder(u, half, light, 0.7)
        inside = smoothstep(lo - 0.01, lo, v) * (1 - smoothstep(hi, hi + 0.01, v))
        base = mix(color, label, inside)
        return mix(base * shade[..., None], WHITE, spec * (1 - inside))

    sketch = Sketch()
    sketch.fill(outline, paint, edge=(0.15, 0.03))
    cap = paint_from(rng, [(240, 240, 240), (30, 90, 200), (200, 40, 40), (40, 40, 40)])
    sketch.fill(rounded_rect(0, -0.9, 0.32, 0.2, 0.04),
                lambda u, v: cap * _cylinder(u, 0.16, light, 0.3)[0][..., None])
    return sketch


BUILDERS: dict[str, Builder] = {"cup": cup, "phone": phone, "book": book, "ball": ball,
                                "leaf": leaf, "scarf": scarf, "fruit": fruit, "bottle": bottle}


def draw_object(frame: FaceFrame, rng: np.random.Generator, shape: tuple[int, int],
                name: str | None = None) -> tuple[Sketch, np.ndarray]:
    """A random object somewhere on the face, sized to hide 15-45 % of the face oval."""
    name = name or pick(rng, list(BUILDERS))
    sketch = BUILDERS[name](rng, _light(rng))
    sim = frame.similarity()
    if name == "scarf":  # worn over the mouth and chin, roughly level
        center = (rng.uniform(-0.15, 0.15), rng.uniform(0.95, 1.35))
        angle = rng.normal(0, 0.12)
    else:
        r, a = np.sqrt(rng.uniform(0, 1)), rng.uniform(0, 2 * np.pi)
        center = (0.75 * r * np.cos(a), 0.35 + 1.0 * r * np.sin(a))
        upright = name in ("cup", "bottle", "book", "phone")
        angle = rng.normal(0, 0.35) if upright else rng.uniform(-np.pi, np.pi)
    angle += np.arctan2(frame.ex[1], frame.ex[0])
    center_px = sim[:, :2] @ np.asarray(center) + sim[:, 2]
    target = rng.uniform(*COVERAGE)
    size = fit_size(sketch, shape, frame, lambda s: placement(center_px, s, angle), target,
                    start=0.55 * frame.d, lo=0.2 * frame.d, hi=2.0 * frame.d)
    return sketch, placement(center_px, size, angle)


def fit_size(sketch: Sketch, shape: tuple[int, int], frame: FaceFrame,
             matrix_for: Callable[[float], np.ndarray], target: float, start: float,
             lo: float, hi: float, steps: int = 4) -> float:
    """Scale (pixels per object unit) at which the sketch hides about `target` of the face
    oval; a few secant-like steps on the silhouette, which costs far less than painting."""
    oval = frame.oval(shape).astype(np.float32)
    area = max(float(oval.sum()), 1.0)
    ss = 2 if max(shape) < 100 else 1
    size = start
    for _ in range(steps):
        covered = float((sketch.silhouette(shape, matrix_for(size), ss) * oval).sum()) / area
        if abs(covered - target) < 0.02:
            break
        factor = np.sqrt(target / max(covered, 1e-3))
        size = float(np.clip(size * np.clip(factor, 0.6, 1.7), lo, hi))
    return size
