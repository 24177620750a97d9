"""A hand in front of the face (the `hands` kind): the most common real occluder in FED-RO
and Occlu-FER (hand over mouth, chin on hand, fingers on a cheek or across an eye).

The hand is modelled in palm widths with the wrist at the origin and the fingers pointing up
(-v): palm, four two-segment fingers with spread and curl, a thumb, knuckle creases or palm
lines, nails on the back of the hand, and a forearm (sometimes in a sleeve) that leaves the
face towards the image border, since hands reach the face from below or from the side.
Separate fills per finger, each with a darkened rim, are what make fingers read as fingers
at 48 px.
"""

from __future__ import annotations

import numpy as np

from app.occlusion.face import FaceFrame
from app.occlusion.objects import fit_size
from app.occlusion.sketch import Sketch, capsule, ellipse, smooth
from app.occlusion.texture import fbm, jitter_color, mix, pick

COVERAGE = (0.15, 0.45)
#: RGB skin tones from very light to very dark
SKIN_TONES = [(244, 210, 186), (234, 192, 160), (215, 168, 132), (192, 140, 102),
              (160, 110, 76), (120, 80, 56), (88, 58, 42)]
SLEEVES = [(30, 30, 34), (40, 60, 110), (150, 150, 155), (170, 40, 45), (230, 230, 225),
           (60, 90, 60), (200, 170, 120)]
# where the hand lands, in isotropic face units (mouth, cheeks, eyes, chin)
TARGETS = {"mouth": (0.0, 1.1), "cheek": (0.65, 0.75), "eye": (0.5, 0.0), "chin": (0.0, 1.6)}
TARGET_WEIGHTS = (0.4, 0.25, 0.15, 0.2)


def draw_hand(frame: FaceFrame, rng: np.random.Generator,
              shape: tuple[int, int]) -> tuple[Sketch, np.ndarray]:
    """A random hand on the face and its hand -> image matrix."""
    sketch = build_hand(rng)
    where = pick(rng, list(TARGETS), TARGET_WEIGHTS)
    tu, tv = TARGETS[where]
    side = pick(rng, (-1.0, 1.0))
    target = np.array([side * tu, tv]) + rng.normal(0, 0.12, 2)
    sim = frame.similarity()
    target_px = sim[:, :2] @ target + sim[:, 2]
    # fingers point away from where the arm comes in: mostly up from below, else inwards
    origin = pick(rng, ("below", "side"), (0.6, 0.4))
    roll = np.arctan2(frame.ex[1], frame.ex[0])
    if origin == "below":
        direction = -np.pi / 2 + rng.normal(0, 0.45)
    else:
        from_left = side < 0 if where != "mouth" else rng.random() < 0.5
        inward = 0.0 if from_left else np.pi  # and tilted a little upwards
        direction = inward + rng.normal(0, 0.4) - (0.25 if from_left else -0.25)
    theta = direction + roll + np.pi / 2  # rotation taking the hand's "up" onto `direction`
    anchor = np.array([rng.uniform(-0.2, 0.2), -rng.uniform(0.5, 1.5)])  # palm to fingers
    mirror = rng.random() < 0.5

    def matrix_for(size: float) -> np.ndarray:
        c, s = np.cos(theta) * size, np.sin(theta) * size
        linear = np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
        return np.column_stack([linear, target_px - linear @ anchor])

    goal = rng.uniform(*COVERAGE)
    size = fit_size(sketch, shape, frame, matrix_for, goal, start=1.15 * frame.d,
                    lo=0.75 * frame.d, hi=1.6 * frame.d)
    return sketch, matrix_for(size)


def build_hand(rng: np.random.Generator) -> Sketch:
    """The hand in palm widths: wrist at (0, 0), fingers up, thumb on the -u side."""
    tone = np.asarray(jitter_color(rng, pick(rng, SKIN_TONES), 8), np.float32)
    tone = mix(tone, np.full(3, tone.mean(), np.float32), 0.15)  # photos are less saturated
    back = rng.random() < 0.6  # back of the hand (nails, knuckles) or palm towards the camera
    light_u = rng.uniform(-0.35, 0.35)
    mottle = fbm(rng, (-1.5, -2.5, 1.5, 3.0), 8, 2)
    sketch = Sketch()

    def skin(shade_scale: float = 1.0):
        def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            shade = 1.0 + light_u * u - 0.12 * (u / 0.6) ** 2 + 0.04 * mottle(u, v)
            return tone * (shade * shade_scale)[..., None]
        return paint

    # forearm, leaving the image (and perhaps a sleeve over it)
    sketch.fill(smooth(np.array([[-0.4, -0.05], [-0.47, 1.5], [-0.5, 3.5], [0.5, 3.5], [0.47, 1.5],
                                 [0.4, -0.05]]), closed=False, iterations=2), skin(0.95),
                edge=(0.25, 0.08))
    if rng.random() < 0.5:
        start = rng.uniform(0.5, 1.6)
        cloth = np.asarray(jitter_color(rng, pick(rng, SLEEVES), 10), np.float32)
        folds = fbm(rng, (-1, 0, 1, 4), 6, 2)
        sketch.fill(smooth(np.array([[-0.62, start + 0.05], [0, start - 0.05], [0.62, start + 0.05],
                                     [0.7, 3.6], [-0.7, 3.6]]), closed=True, iterations=2),
                    lambda u, v: cloth * (1.0 + 0.12 * folds(u, v)
                                          - 0.15 * (u / 0.7) ** 2)[..., None],
                    edge=(0.3, 0.06))

    palm = smooth(np.array([[-0.4, 0.0], [0.4, 0.0], [0.5, -0.35], [0.52, -0.75], [0.46, -0.93],
                            [0.2, -1.02], [-0.1, -1.02], [-0.4, -0.96], [-0.5, -0.7], [-0.53, -0.4],
                            [-0.46, -0.12]]), closed=True, iterations=3)
    sketch.fill(palm, skin(), edge=(0.2, 0.1))

    bases = [(-0.35, -0.92), (-0.12, -0.99), (0.12, -0.97), (0.35, -0.86)]
    lengths = np.array([0.82, 0.93, 0.87, 0.67]) * rng.uniform(0.9, 1.1)
    radii = np.array([0.112, 0.118, 0.11, 0.094])
    spread = np.deg2rad(rng.uniform(1.5, 11.0))
    pose = pick(rng, ("open", "relaxed", "fist"), (0.55, 0.25, 0.2))
    curl = {"open": np.zeros(4), "relaxed": rng.uniform(0.0, 0.45, 4),
            "fist": rng.uniform(0.6, 0.72, 4)}[pose]
    nail = mix(tone, (255, 226, 222), 0.35)
    crease = tone * 0.62
    for i in (3, 2, 1, 0):  # pinky first, index last (on top)
        angle = (i - 1.5) * spread + rng.normal(0, np.deg2rad(2.5))
        direction = np.array([np.sin(angle), -np.cos(angle)])
        bend = np.array([np.sin(angle - 0.08 * np.sign(i - 1.5)), -np.cos(angle)])
        base = np.array(bases[i])
        length = lengths[i] * (1.0 - curl[i])
        mid = base + direction * length * 0.55
        tip = mid + bend * length * 0.45
        r0, r1 = radii[i], radii[i] * 0.82
        sketch.fill([capsule(base + direction * 0.05, mid, r0, r0 * 0.93),
                     capsule(mid, tip, r0 * 0.93, r1)], skin(), edge=(0.3, 0.05))
        for joint, width in ((mid, r0 * 0.9), (base + direction * length * 0.28 + 0.06 * direction,
                                                   r0 * 0.85)):
            normal = np.array([-direction[1], direction[0]]) * width * 0.7
            sketch.stroke(np.array([joint - normal, joint + direction * 0.015, joint + normal]),
                          0.018, crease, opacity=0.55)
        if back and curl[i] < 0.3:
            a = np.arctan2(bend[1], bend[0])
            sketch.fill(ellipse(*(tip - bend * r1 * 0.55), r1 * 0.75, r1 * 0.6, angle=a), nail,
                        opacity=0.8, edge=(0.2, 0.02))
    # thumb
    t_angle = -np.deg2rad(rng.uniform(10, 35) if pose == "fist" else rng.uniform(35, 75))
    t_dir = np.array([np.sin(t_angle), -np.cos(t_angle)])
    t_bend = np.array([np.sin(t_angle + 0.3), -np.cos(t_angle + 0.3)])
    t_base = np.array([-0.42, -0.3])
    t_mid = t_base + t_dir * 0.42
    t_tip = t_mid + t_bend * 0.33
    sketch.fill([capsule(t_base, t_mid, 0.15, 0.13), capsule(t_mid, t_tip, 0.13, 0.105)], skin(),
                edge=(0.3, 0.05))
    if back:
        a = np.arctan2(t_bend[1], t_bend[0])
        sketch.fill(ellipse(*(t_tip - t_bend * 0.06), 0.08, 0.065, angle=a), nail, opacity=0.8)
    else:  # palm lines
        for pts in ([[-0.45, -0.55], [-0.1, -0.62], [0.25, -0.72], [0.48, -0.76]],
                    [[-0.45, -0.5], [-0.15, -0.45], [0.15, -0.48], [0.35, -0.58]],
                    [[-0.3, -0.45], [-0.28, -0.25], [-0.2, -0.08]]):
            line = smooth(np.array(pts), closed=False, iterations=2)
            sketch.stroke(line, 0.018, crease, opacity=0.5)
    return sketch
