"""Fixed occluded FERPlus test sets, built with the runtime's occluder art (`app.occlusion`).

    write_test_sets(ferplus_root, out_dir)          # the four fixed FERPlus test sets

The drawing code lives in `app.occlusion` so the app's demo source and training share it;
it is re-exported here so training code has one import.
"""

from app.occlusion import CLEAN, KINDS, TEST_SET_KINDS, random_occlusion, synthesize
from training.occlusion.testsets import (EVALUATED_SETS, SET_KINDS, contact_sheet, image_rng, main,
                                        write_test_sets)

__all__ = ["CLEAN", "EVALUATED_SETS", "KINDS", "SET_KINDS", "TEST_SET_KINDS", "contact_sheet", "image_rng", "main",
           "random_occlusion", "synthesize", "write_test_sets"]
