"""occlufer runtime: everything a user's machine runs, on onnxruntime alone (never torch)."""

import os
from pathlib import Path

# OpenCV's own warnings (a camera index that does not exist, a codec probe) would reach the
# user's terminal beside our clear message; keep its errors only.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"

#: The repository root; `assets/` (manifest, shipped weights, model cards) lives beside `app/`.
REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
