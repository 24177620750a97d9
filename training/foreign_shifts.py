"""Image changes that no occlufer training ever applies, as a held-out check of robustness:
`python -m training.foreign_shifts MODEL... --data-root DATA_ROOT`.

Why: the fixed degraded and occluded test sets come from the same generators as the training
augmentation (other seeds, narrower ranges), so a model can look robust on them by having
learnt those generators. occlufer is also judged on camera degradations drawn by code it never
sees; a model choice (the default, an ensemble over a single network) should hold on changes
from outside the training family too. Each shift below is deliberately *not* in
`training.degrade` or `training.augment` (which apply exposure gain, disk/line blur, area
downsampling, Gaussian+shot noise, JPEG, and rotations within ±10°):

    haze       contrast squeezed towards a grey veil (fog, a dirty lens, a projector room)
    posterize  3-bit grey levels (a webcam's aggressive tone compression, banding)
    pixelate   nearest-neighbour blocks at 16-22 px (a digital zoom, a thumbnail stream)
    median     a 5x5 median filter (a webcam's denoiser or a beauty filter flattening skin)
    tilt       in-plane rotation of 18-28° (a tilted head or a laptop on a lap)
    impulse    4 % salt-and-pepper pixels (transmission errors, dead pixels)
    washout    gamma 0.4: mid-tones lifted to white (a face lit by a bright screen)

The parameters were written down before any model was scored on them (pixelation was eased
once, from 10-14 px, after a look at the faces and before any score) and are not changed
after; one fixed seed per shift draws the per-face values. Scores are each file's shipped
argmax, so they compare what a user gets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from app.errors import OccluferError
from app.runtime.providers import create_session
from training.data import load_split
from training.evaluate import classification_metrics, model_metadata, predict

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def haze(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    veil = rng.uniform(150, 200)
    keep = rng.uniform(0.35, 0.5)
    return np.clip(img.astype(np.float32) * keep + veil * (1 - keep), 0, 255).astype(np.uint8)


def posterize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ((img >> 5) << 5) + 16


def pixelate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(16, 23))
    h, w = img.shape[:2]
    small = cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def median(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.medianBlur(img, 5)


def tilt(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(18, 28) * rng.choice((-1.0, 1.0))
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def impulse(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = img.copy()
    hit = rng.random(img.shape[:2]) < 0.04
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
    return out


def washout(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    table = (255.0 * (np.arange(256) / 255.0) ** 0.4).astype(np.uint8)
    return cv2.LUT(img, table)


SHIFTS: dict[str, Shift] = {"haze": haze, "posterize": posterize, "pixelate": pixelate,
                            "median": median, "tilt": tilt, "impulse": impulse,
                            "washout": washout}


def shifted(images: np.ndarray, name: str, seed: int = 2026) -> np.ndarray:
    """Every face under shift `name`, each with its own draw from one fixed seed."""
    if name not in SHIFTS:
        raise OccluferError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")
    rng = np.random.default_rng([seed, list(SHIFTS).index(name)])
    return np.stack([SHIFTS[name](img, rng) for img in images])


def score(models: Sequence[Path], data_root: Path, shifts: Sequence[str],
          limit: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"clean" | shift: {accuracy, macro_f1}}} on FERPlus test (majority protocol)."""
    data = load_split("ferplus", data_root, "test", "majority")
    images, labels = data.images[:limit], data.labels[:limit]
    sets = {"clean": images, **{s: shifted(images, s) for s in shifts}}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        session = create_session(model, "cpu")
        spec, classes, _ = model_metadata(session)
        if tuple(classes) != tuple(data.classes):
            raise OccluferError(f"{model} has classes {classes}, FERPlus {data.classes}")
        row = {}
        for name, faces in sets.items():
            probs = predict(session, faces, spec, desc=f"{Path(model).stem} {name}")
            m = classification_metrics(labels, probs.argmax(1), len(classes), len(classes))
            row[name] = {"accuracy": round(m["accuracy"], 2), "macro_f1": round(m["macro_f1"], 2)}
        results[Path(model).stem] = row
    return results


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    sets = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(sets) + " | mean drop |", "|---|" + "---|" * (len(sets) + 1)]
    for model, row in results.items():
        drop = np.mean([row["clean"]["accuracy"] - row[s]["accuracy"] for s in sets[1:]])
        lines.append(f"| `{model}` | " + " | ".join(f"{row[s]['accuracy']:.2f}" for s in sets)
                     + f" | {drop:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from training.ablation import model_path
    from training.cli import report_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model names from the store or .onnx files")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--shifts", nargs="*", default=list(SHIFTS), choices=list(SHIFTS))
    parser.add_argument("--limit", type=int, default=None, help="first N test faces")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    return report_results(lambda: score([model_path(m) for m in args.models], args.data_root,
                                        args.shifts, args.limit), markdown_table, args.out)

if __name__ == "__main__":
    sys.exit(main())
