"""Synthetic occlusion of face images: masks, sunglasses, objects, hands and half-face blocks.

Every occluder is procedural (drawn by this package, no copied image sets), placed from the
five detector landmarks, drawn supersampled so 48 px FERPlus crops still look right, and
returned with the exact mask of the pixels it hides. It lives in the runtime package (numpy +
OpenCV only, no torch) because the app's demo source draws the same occluders the training
set uses; `training.occlusion` adds the fixed test sets on top.

    occluded, mask = synthesize(image, "masked", np.random.default_rng(0))
    occluded, mask, kind = random_occlusion(image, rng, p_clean=0.3)
"""

from app.occlusion.synthesis import CLEAN, KINDS, TEST_SET_KINDS, random_occlusion, synthesize

__all__ = ["CLEAN", "KINDS", "TEST_SET_KINDS", "random_occlusion", "synthesize"]
