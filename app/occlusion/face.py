"""Where the face is: a local frame built from the five detector landmarks.

Occluders that belong to the face (masks, glasses) are designed in face units so the same
design fits any crop: origin at the midpoint of the eyes, u along the eye line in units of the
eye distance d, v perpendicular to it (down the face). `affine` scales v by the eye-to-mouth
distance h, so 0 is the eye line and 1 the mouth line whatever the face's proportions;
`similarity` keeps v in units of d, for things that must stay round (lenses, balls).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Typical face proportions in eye distances d (anthropometric means, checked by eye on
# FERPlus crops): the face oval used to measure how much of the face an occluder hides.
FACE_OVAL_CENTER_V = 0.38
FACE_OVAL_RADII = (1.08, 1.38)


@dataclass(frozen=True)
class FaceFrame:
    """Eye/nose/mouth geometry of one face in image pixels."""

    points: np.ndarray  # (5, 2): eye at image left, eye at image right, nose, mouth l, mouth r

    @classmethod
    def from_landmarks(cls, landmarks5: np.ndarray) -> FaceFrame:
        pts = np.asarray(landmarks5, np.float64)
        if pts.shape != (5, 2) or not np.isfinite(pts).all():
            raise ValueError(f"landmarks5 must be a finite (5, 2) array, got shape {pts.shape}")
        if np.hypot(*(pts[1] - pts[0])) < 1.0:
            raise ValueError("landmarks5: the eyes are less than a pixel apart")
        return cls(pts)

    @property
    def eye_center(self) -> np.ndarray:
        return (self.points[0] + self.points[1]) / 2

    @property
    def mouth_center(self) -> np.ndarray:
        return (self.points[3] + self.points[4]) / 2

    @property
    def d(self) -> float:
        """Eye distance in pixels: the face's unit of length."""
        return float(np.hypot(*(self.points[1] - self.points[0])))

    @property
    def ex(self) -> np.ndarray:
        """Unit vector along the eye line, towards the eye at image right."""
        return (self.points[1] - self.points[0]) / self.d

    @property
    def ey(self) -> np.ndarray:
        """Unit vector perpendicular to the eye line, pointing down the face."""
        return np.array([-self.ex[1], self.ex[0]])

    @property
    def h(self) -> float:
        """Eye-line to mouth-line distance in pixels; a bad mouth point (above the eyes, or
        far too close) falls back to the average face's 1.05 d."""
        h = float((self.mouth_center - self.eye_center) @ self.ey)
        return h if 0.5 * self.d < h < 2.0 * self.d else 1.05 * self.d

    def affine(self) -> np.ndarray:
        """2x3 face (u in d, v in h) -> image."""
        return np.column_stack([self.ex * self.d, self.ey * self.h, self.eye_center])

    def similarity(self) -> np.ndarray:
        """2x3 face (u and v in d) -> image."""
        return np.column_stack([self.ex * self.d, self.ey * self.d, self.eye_center])

    def local(self, points: np.ndarray, isotropic: bool = False) -> np.ndarray:
        """Image points -> face coordinates (of `similarity` if isotropic else `affine`)."""
        rel = np.asarray(points, np.float64).reshape(-1, 2) - self.eye_center
        return np.stack([rel @ self.ex / self.d,
                         rel @ self.ey / (self.d if isotropic else self.h)], axis=1)

    def midline(self) -> tuple[float, float, float]:
        """(nose v, nose u, mouth u) in affine face units: where the face's vertical centre
        line actually runs when the head is turned (u = 0 only for a frontal face)."""
        nose = self.local(self.points[2])[0]
        mouth = self.local(self.mouth_center)[0]
        nose_v = float(np.clip(nose[1], 0.3, 0.85))
        return nose_v, float(np.clip(nose[0], -0.4, 0.4)), float(np.clip(mouth[0], -0.4, 0.4))

    def oval(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: the face oval (brow to chin, cheek to cheek), clipped to the image."""
        height, width = shape
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        rel_x, rel_y = xs - self.eye_center[0], ys - self.eye_center[1]
        u = (rel_x * self.ex[0] + rel_y * self.ex[1]) / self.d
        v = (rel_x * self.ey[0] + rel_y * self.ey[1]) / self.d - FACE_OVAL_CENTER_V
        return (u / FACE_OVAL_RADII[0]) ** 2 + (v / FACE_OVAL_RADII[1]) ** 2 <= 1.0


def default_landmarks(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The mean FERPlus 5 points scaled to the image, with a little random pose (scale,
    roll, shift, per-point noise) so the occluders do not all sit at the same pixels.

    The template is imported, not copied: another module derives it from data and may
    update it, and aligned crops from the app are warped onto exactly that template.
    """
    from app.pipeline.alignment import FERPLUS_LANDMARKS5  # lazy: loads the template file

    height, width = shape[0], shape[1]
    size = np.array([width, height], np.float64)
    pts = np.asarray(FERPLUS_LANDMARKS5, np.float64) * size - 0.5
    center = pts.mean(axis=0)
    angle = rng.normal(0.0, np.deg2rad(3.0))
    scale = float(np.exp(rng.normal(0.0, 0.04)))
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    pts = (pts - center) @ np.array([[c, s], [-s, c]]) + center
    pts += rng.normal(0.0, 0.015, 2) * size
    pts += rng.normal(0.0, 0.008, (5, 2)) * size
    return pts
