"""The built-in demo: the astronaut drifting, occluders passing over her face in turn."""

from __future__ import annotations


import numpy as np

from app.demo import (ASTRONAUT_LANDMARKS5, CYCLE_SECONDS, OCCLUDER_PASSES, OccludedDemoSource,
                      composite, demo_cycle_frames)
from app.pipeline.detector import RetinaFaceDetector
from app.runtime.providers import create_session
from app.sources import DemoSource, open_source



def frames_of(kind: str, position: float, source: OccludedDemoSource) -> int:
    """The first frame of the cycle where occluder `kind` is at `position` (or just past it)."""
    for index in range(demo_cycle_frames()):
        active = source.active_pass(index)
        if active and active[0].kind == kind and active[1] >= position:
            return index
    raise AssertionError(f"{kind} never reaches {position}")


def test_open_source_demo_is_the_occluded_demo_and_loops_when_asked():
    demo = open_source("demo", loop=True, width=320, height=240)
    assert isinstance(demo, OccludedDemoSource) and demo.frames is None
    first = next(iter(demo))
    assert first.image.shape == (240, 320, 3) and first.source_time == 0.0
    assert open_source("demo").frames == 300  # `occlufer run --source demo` still ends


def test_every_occluder_passes_once_per_cycle_left_to_right():
    demo = OccludedDemoSource()
    seen: dict[str, list[float]] = {}
    for index in range(demo_cycle_frames()):
        active = demo.active_pass(index)
        if active:
            seen.setdefault(active[0].kind, []).append(active[1])
    assert set(seen) == {p.kind for p in OCCLUDER_PASSES} == {"masked", "sunglasses", "hands"}
    for kind, positions in seen.items():
        assert positions == sorted(positions), f"{kind} moves one way"
        assert positions[0] < -0.8 and positions[-1] > 0.8 and 0.0 in positions
    assert demo.active_pass(0) is None  # each cycle starts clear
    assert demo_cycle_frames() == int(CYCLE_SECONDS * 30)


def test_the_demo_knows_where_the_face_is(retinaface_onnx):
    """The ground-truth points the occluders are placed from agree with the detector."""
    detector = RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 2))
    demo = OccludedDemoSource()
    for index in (0, 40, 95):
        faces = detector(DemoSource.render(demo, index))
        assert len(faces) == 1
        np.testing.assert_allclose(faces[0].landmarks5, demo.landmarks5(index), atol=4.0)


def test_without_occluder_art_the_face_drifts_unoccluded(monkeypatch):
    demo = OccludedDemoSource()
    monkeypatch.setattr(demo, "_synthesize", None)
    index = frames_of("masked", 0.0, demo)
    assert np.array_equal(demo.render(index), DemoSource.render(demo, index))


def test_occluders_cover_the_face_with_the_real_occlusion_art():
    """Drawn by the training package's synthesis (the same code `app.occlusion` will hold)."""
    from app.occlusion import synthesize

    demo = OccludedDemoSource()
    demo._synthesize = synthesize
    for kind, part in (("masked", (3, 4)), ("sunglasses", (0, 1))):
        index = frames_of(kind, 0.0, demo)
        plain, occluded = DemoSource.render(demo, index), demo.render(index)
        changed = np.any(plain != occluded, axis=2)
        points = demo.landmarks5(index)
        for p in part:  # the mouth corners under the mask, the eyes behind the glasses
            x, y = points[p].round().astype(int)
            assert changed[y - 2:y + 3, x - 2:x + 3].any(), f"{kind} does not cover point {p}"
        assert changed.sum() < 0.1 * changed.size, f"{kind} covers far more than the face"
    clear = [i for i in range(demo_cycle_frames()) if demo.active_pass(i) is None][5]
    assert np.array_equal(demo.render(clear), DemoSource.render(demo, clear))


def test_the_shipped_demo_draws_occluders_by_itself():
    demo = OccludedDemoSource()
    assert demo.note.startswith("occluders:")
    index = frames_of("sunglasses", 0.0, demo)
    assert not np.array_equal(demo.render(index), DemoSource.render(demo, index))


def test_composite_blends_by_weight():
    canvas = np.zeros((2, 2, 3), np.uint8)
    occluder = np.full((2, 2, 3), 200, np.uint8)
    weight = np.array([[0.0, 1.0], [0.5, 2.0]], np.float32)
    out = composite(canvas, occluder, weight)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 200 and out[1, 0, 0] == 100 and out[1, 1, 0] == 200
    assert ASTRONAUT_LANDMARKS5.shape == (5, 2)
