"""occlufer runtime: everything a user's machine runs, on onnxruntime alone (never torch)."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root; `assets/` (manifest, shipped weights, model cards) lives beside `app/`.
REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
