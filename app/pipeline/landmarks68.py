"""MediaPipe FaceMesh (468 points) -> iBUG 300-W (68 points), the index table.

Each of the 68 iBUG points is the mean of one or two FaceMesh vertices. The correspondences
follow the mapping published by Peizhi Yan, "Mediapipe_2_Dlib_Landmarks"
(https://github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, `mediapipe2dlib/mp2dlib.py`, 2024;
also on PyPI as mediapipe2dlib), which is the table most MediaPipe -> dlib conversions use.
The table below is written out here in occlufer's own layout (0-based iBUG index, grouped by
region); it only uses indices < 468, so it serves the 468-point mesh and the 478-point
(iris) mesh of MediaPipe Tasks alike.

"Right"/"left" are the subject's, as in iBUG: the subject's right eye is on the image left.
"""

from __future__ import annotations

import numpy as np

#: iBUG point (0-based) -> FaceMesh vertices averaged to make it, by region.
FACEMESH_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16, from the subject's right ear (image left) round the chin to the left ear
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # right brow 17-21, outer -> inner
    (70,), (63,), (105,), (66,), (107,),
    # left brow 22-26, inner -> outer
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, top -> tip
    (168, 6), (197, 195), (5,), (4,),
    # nostrils 31-35, image left -> right
    (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41: outer corner, upper lid x2, inner corner, lower lid x2
    (33,), (160,), (158,), (133,), (153,), (144,),
    # left eye 42-47: inner corner, upper lid x2, outer corner, lower lid x2
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lip 48-59: right corner, upper lip to left corner, lower lip back
    (61,), (39,), (37,), (0,), (267,), (269,), (291,),
    (321,), (314,), (17,), (84,), (91,),
    # inner lip 60-67: right corner, upper inner lip to left corner, lower inner lip back
    (78,), (82,), (13,), (312,), (308,),
    (317,), (14,), (87,),
)

#: Index ranges of the iBUG regions (0-based, end exclusive), for consumers that need them.
IBUG68_REGIONS: dict[str, tuple[int, int]] = {
    "jaw": (0, 17),
    "right_brow": (17, 22),
    "left_brow": (22, 27),
    "nose": (27, 36),
    "right_eye": (36, 42),
    "left_eye": (42, 48),
    "outer_lip": (48, 60),
    "inner_lip": (60, 68),
}

# Two gather indices per point (a single vertex repeated), so the mapping is one vectorised mean.
_PAIRS = np.array([(v[0], v[-1]) for v in FACEMESH_TO_IBUG68], dtype=np.intp)
assert _PAIRS.shape == (68, 2) and int(_PAIRS.max()) < 468


def facemesh_to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """(..., 468 or 478, D) FaceMesh points -> (..., 68, D) iBUG 300-W points (float32)."""
    points = np.asarray(landmarks, dtype=np.float32)
    if points.ndim < 2 or points.shape[-2] < 468:
        raise ValueError(f"expected (..., 468, D) FaceMesh landmarks, got shape {points.shape}")
    return points[..., _PAIRS, :].mean(axis=-2)


__all__ = ["FACEMESH_TO_IBUG68", "IBUG68_REGIONS", "facemesh_to_ibug68"]
