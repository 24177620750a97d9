"""Fixed occluded and camera-degraded test sets, and contact sheets.

A test set is a copy of a FERPlus split with every image occluded and the labels untouched,
written in the official FERPlus layout so the ordinary FERPlus reader loads it
(`--data-root OUT/<kind>`); masks are written beside it for mask-supervised models and for
looking at. The degraded sets (`training.degrade.TEST_SETS`: blur, small, jpeg, noise,
lowlight and the combined `degraded`) have no occluder and no masks. Each image's generator is derived from (seed, kind, file name) alone, so any one
image can be regenerated without the others and re-runs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from app.errors import DatasetError, OccluferError
from training.data.ferplus import LABEL_FILE, SPLIT_FOLDERS, read_votes
from app.occlusion.synthesis import KINDS, TEST_SET_KINDS, synthesize
from training.degrade import TEST_SETS as DEGRADED_SETS, degrade_for_test_set

#: every fixed test set this module can write: occluders, then camera degradations
SET_KINDS: tuple[str, ...] = KINDS + tuple(DEGRADED_SETS)
#: what a model's final evaluation scores beside the clean split
EVALUATED_SETS: tuple[str, ...] = TEST_SET_KINDS + tuple(DEGRADED_SETS)

SHEET_COUNT = 48
SHEET_TILE = 96  # contact sheet tiles are upscaled to at least this many pixels


def image_rng(seed: int, kind: str, name: str) -> np.random.Generator:
    """The generator for one image: a stable hash (not Python's salted hash()) of kind and
    name, so the same (seed, image) gets the same occluder in any run, order or process."""
    digest = hashlib.sha256(f"{kind}/{name}".encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def write_test_sets(ferplus_root: Path, out_dir: Path, kinds: Sequence[str] = TEST_SET_KINDS,
                    split: str = "test", seed: int = 0, progress: bool = True,
                    only: Sequence[str] | None = None) -> dict[str, Path]:
    """Write `out_dir/<kind>/<split folder>/` (occluded PNGs + the split's label.csv),
    `out_dir/<kind>/masks/<name>.png` and `out_dir/<kind>/contact_sheet.png` for each kind.
    Returns {kind: out_dir/<kind>}, each a FERPlus root for that one split. `only` writes just
    those images (each image's draw depends on (seed, kind, name) alone, so a set built in
    parts is the set built at once)."""
    ferplus_root, out_dir = Path(ferplus_root), Path(out_dir)
    unknown = [k for k in kinds if k not in SET_KINDS]
    if unknown:
        raise ValueError(f"unknown test-set kinds {unknown}; expected some of {SET_KINDS}")
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown FERPlus split {split!r}; expected one of {tuple(SPLIT_FOLDERS)}")
    names, _ = read_votes(ferplus_root, split)  # validates the layout, with a helpful error
    if only is not None:
        wanted = set(only)
        names = [n for n in names if n in wanted]
    source = ferplus_root / SPLIT_FOLDERS[split]
    written: dict[str, Path] = {}
    for kind in kinds:
        root = out_dir / kind
        images_dir, masks_dir = root / SPLIT_FOLDERS[split], root / "masks"
        images_dir.mkdir(parents=True, exist_ok=True)
        if kind not in DEGRADED_SETS:
            masks_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / LABEL_FILE, images_dir / LABEL_FILE)
        sheet_images: list[np.ndarray] = []
        sheet_masks: list[np.ndarray] = []
        for name in tqdm(names, desc=f"occlusion {kind}", unit="img", disable=not progress,
                         file=sys.stderr):
            image = cv2.imread(str(source / name), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise DatasetError(f"cannot read {source / name}: the file is missing or not an "
                                   "image; re-extract the FERPlus split")
            if image.ndim == 3 and image.shape[2] == 4:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
            if kind in DEGRADED_SETS:  # the camera, not an occluder: nothing is hidden
                occluded = degrade_for_test_set(image, kind, image_rng(seed, kind, name))
                mask = np.zeros(image.shape[:2], np.float32)
            else:
                occluded, mask = synthesize(image, kind, image_rng(seed, kind, name))
                _write(masks_dir / f"{Path(name).stem}.png",
                       np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8))
            _write(images_dir / name, occluded)
            if len(sheet_images) < SHEET_COUNT:
                sheet_images.append(occluded)
                sheet_masks.append(mask)
        if sheet_images:
            contact_sheet(sheet_images, None if kind in DEGRADED_SETS else sheet_masks,
                          root / "contact_sheet.png")
        written[kind] = root
    return written


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OccluferError(f"could not write {path}; check that the disk has space and the "
                            "folder is writable")


def contact_sheet(images: list[np.ndarray], masks: list[np.ndarray] | None, path: Path,
                  cols: int = 12) -> Path:
    """Tile images (gray or BGR) into one PNG, upscaled so small faces are inspectable, with
    each mask's outline (alpha 0.5) drawn in red; returns `path`."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    tile, gap = max(SHEET_TILE, max(max(im.shape[:2]) for im in images)), 2
    sheet = np.full((rows * (tile + gap) + gap, cols * (tile + gap) + gap, 3), 32, np.uint8)
    for i, image in enumerate(images):
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        zoom = max(1, tile // max(bgr.shape[:2]))  # whole pixels, so small faces stay crisp
        h, w = bgr.shape[0] * zoom, bgr.shape[1] * zoom
        big = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_NEAREST)
        if masks is not None:
            m = cv2.resize(np.asarray(masks[i], np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            contours, _ = cv2.findContours((m >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(big, contours, -1, (0, 0, 255), 1, lineType=cv2.LINE_AA)
        r, c = divmod(i, cols)
        y, x = gap + r * (tile + gap), gap + c * (tile + gap)
        sheet[y:y + h, x:x + w] = big
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, sheet)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.occlusion --data-root DIR --out DIR [--kinds ...] [--seed 0]`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.occlusion",
        description="Write fixed occluded FERPlus test sets (images, masks, contact sheets).")
    parser.add_argument("--data-root", type=Path, required=True,
                        help="FERPlus root holding FER2013Train/Valid/Test")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--kinds", nargs="+", default=list(EVALUATED_SETS), choices=SET_KINDS,
                        metavar="KIND",
                        help=f"test sets (default: {' '.join(EVALUATED_SETS)}; "
                             f"all: {' '.join(SET_KINDS)})")
    parser.add_argument("--split", default="test", choices=tuple(SPLIT_FOLDERS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        written = write_test_sets(args.data_root, args.out, args.kinds, args.split, args.seed)
    except OccluferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for kind, root in written.items():
        print(f"{kind}: {root}  (contact sheet: {root / 'contact_sheet.png'})")
    return 0
