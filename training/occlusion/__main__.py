"""`python -m training.occlusion --data-root DIR --out DIR [--kinds ...] [--seed 0]`."""

import sys

from training.occlusion.testsets import main

if __name__ == "__main__":
    sys.exit(main())
