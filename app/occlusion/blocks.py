"""Half-face blocks (`block_upper/lower/left/right`): the crudest occlusion, kept because it
isolates one question, can the network read the expression from the other half alone, and
because FS-DSN / FFRA-style region branches are judged exactly by such halves.

The cut runs through the face's centre (midway between eye line and mouth line; the nose
line for left/right) along the face's own axes, so a rolled head is cut along its axes too.
"""

from __future__ import annotations

import numpy as np

from app.occlusion.face import FaceFrame
from app.occlusion.sketch import Sketch
from app.occlusion.texture import fbm, jitter_color, noise, pick

SIDES = ("upper", "lower", "left", "right")


def draw_block(frame: FaceFrame, rng: np.random.Generator, shape: tuple[int, int],
               side: str) -> tuple[Sketch, np.ndarray]:
    """A half-plane polygon in face units (similarity frame), filled solid or with noise."""
    if side not in SIDES:
        raise ValueError(f"unknown block side {side!r}; expected one of {SIDES}")
    matrix = frame.similarity()
    center = frame.local(np.stack([(frame.eye_center + frame.mouth_center) / 2,
                                   frame.points[2]]), isotropic=True)
    far = 4.0 * max(shape) / frame.d + 4.0  # well past every image corner
    cut_v, cut_u = center[0, 1], (center[0, 0] + center[1, 0]) / 2
    if side == "upper":
        polygon = [(-far, -far), (far, -far), (far, cut_v), (-far, cut_v)]
    elif side == "lower":
        polygon = [(-far, cut_v), (far, cut_v), (far, far), (-far, far)]
    elif side == "left":  # the image-left half
        polygon = [(-far, -far), (cut_u, -far), (cut_u, far), (-far, far)]
    else:
        polygon = [(cut_u, -far), (far, -far), (far, far), (cut_u, far)]
    sketch = Sketch()
    sketch.fill(np.asarray(polygon, np.float64), _fill(rng, frame, shape))
    return sketch, matrix


def _fill(rng: np.random.Generator, frame: FaceFrame, shape: tuple[int, int]):
    """Solid grey/colour, per-pixel noise (one value per image pixel), or smooth noise."""
    style = pick(rng, ("solid", "pixel_noise", "smooth_noise"), (0.4, 0.35, 0.25))
    if style == "solid":
        gray = rng.random() < 0.6
        color = (rng.uniform(0, 255),) * 3 if gray else jitter_color(rng, rng.uniform(0, 255, 3), 0)
        return tuple(float(c) for c in color)
    # face units spanned by the image, so the noise cells match pixels (or blobs)
    extent = 2.0 * max(shape) / frame.d
    box = (-extent, -extent, extent, extent)
    cells = max(2 * max(shape) * 2, 8)
    if style == "pixel_noise":
        field, lo, hi = noise(rng, box, cells), rng.uniform(0, 80), rng.uniform(170, 255)
        color = rng.random() < 0.3
        fields = [field] + ([noise(rng, box, cells), noise(rng, box, cells)] if color else [])

        def pixels(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            chans = [np.clip(0.5 + 0.35 * f(u, v), 0, 1) for f in fields]
            if len(chans) == 1:
                chans = chans * 3
            return lo + (hi - lo) * np.stack(chans, axis=-1)
        return pixels
    field = fbm(rng, box, max(int(extent * 2), 4), 3)
    a = np.asarray(jitter_color(rng, rng.uniform(0, 255, 3), 0), np.float32)
    b = np.asarray(jitter_color(rng, rng.uniform(0, 255, 3), 0), np.float32)
    return lambda u, v: a + (b - a) * np.clip(0.5 + 0.4 * field(u, v), 0, 1)[..., None]
