"""int8 static quantisation of an exported expression model, calibrated on FERPlus.

onnxruntime's `quantize_static` does the work (QDQ format, per-channel int8 weights, uint8
activations with ranges from real faces); this module only feeds it what is ours: the
shipped file (whose fp16-stored weights are first restored to plain float32 initializers,
since the quantiser cannot see through the `Cast` nodes of `classifier.store_weights_fp16`),
calibration faces preprocessed exactly as the runtime does it, and the model's metadata,
which the quantiser drops. Whether int8 is worth shipping is measured, not assumed:
`python -m exporters.quantize` reports both files' accuracy on FERPlus validation and
their latency on one face, and BENCHMARKS.md keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from app.pipeline.preprocess import InputSpec, prepare_batch


def float32_weights(proto) -> int:
    """Undo `store_weights_fp16` in place: every float16 initializer that feeds only a Cast
    to float32 becomes a float32 initializer under the Cast's output name; returns how many."""
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    halves = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    casts = [n for n in graph.node if n.op_type == "Cast" and len(n.input) == 1
             and n.input[0] in halves
             and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)]
    users = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    restored = {}
    for cast in casts:
        if users.get(cast.input[0]) != 1:
            continue
        array = numpy_helper.to_array(halves[cast.input[0]]).astype(np.float32)
        restored[cast.input[0]] = numpy_helper.from_array(array, cast.output[0])
    kept = [restored.get(i.name, i) for i in graph.initializer]
    nodes = [n for n in graph.node if not (n.op_type == "Cast" and n.input and n.input[0] in restored)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(restored)


class FaceBatches:
    """onnxruntime's CalibrationDataReader over preprocessed faces, one batch per call."""

    def __init__(self, images: np.ndarray, spec: InputSpec, input_name: str, batch: int = 64) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: prepare_batch(images[s:s + batch], spec)}
             for s in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_classifier(src: Path, out: Path, calibration: np.ndarray,
                        per_channel: bool = True, reduce_range: bool = True) -> Path:
    """Write the int8 version of expression model `src` to `out`, calibrated on `calibration`
    (uint8 faces as the data sets hold them). Outputs, names and metadata stay the same.

    `reduce_range` (7-bit weights) by default: on x86 CPUs without VNNI (AVX2, AVX-512F)
    onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW, whose int16
    pair sums saturate (onnxruntime's quantization guide names exactly this); a file is made
    once and run on any CPU, and on a 2-core AVX2 EPYC full-range weights changed the top
    label on 12.5 % of real test faces against the fp32 model."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from training.evaluate import model_metadata
    from app.runtime.providers import create_session

    session = create_session(src, "cpu")
    spec, _, _ = model_metadata(session)
    input_name = session.get_inputs()[0].name
    proto = onnx.load(str(src))
    float32_weights(proto)
    metadata = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "float32.onnx"
        onnx.save(proto, str(plain))
        quantize_static(str(plain), str(out), FaceBatches(calibration, spec, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
    quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    for key, value in {**metadata, "weights_dtype": ("int8 (QDQ, per-channel, "
                  + ("7-bit weights, " if reduce_range else "") + "FERPlus-calibrated)")}.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(out))
    return out


def latency_ms(path: Path, spec: InputSpec, runs: int = 200, threads: int = 1) -> float:
    """Median milliseconds of one face through the model (batch 1)."""
    from app.runtime.providers import create_session

    session = create_session(path, "cpu", threads)
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, spec.size, spec.size), np.float32)}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    """`python -m exporters.quantize --model resnet18_fast --data-root FERPLUS --out F.onnx`."""
    from app.runtime.store import ModelStore
    from training.data import load_split
    from training.evaluate import evaluate, model_metadata
    from app.runtime.providers import create_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="expression model name in the store, or an ONNX file")
    parser.add_argument("--data-root", required=True, type=Path, help="FERPlus root")
    parser.add_argument("--out", required=True, type=Path, help="the int8 ONNX to write")
    parser.add_argument("--calibration", type=int, default=1024,
                        help="FERPlus training faces used to calibrate the activation ranges")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    args = parser.parse_args(argv)
    src = Path(args.model) if Path(args.model).is_file() else ModelStore().verified_path(args.model)
    train = load_split("ferplus", args.data_root, "train", progress=False)
    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(len(train.images), min(args.calibration, len(train.images)), replace=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    quantize_classifier(src, args.out, train.images[picks])
    spec, _, _ = model_metadata(create_session(src, "cpu"))
    rows = {}
    for label, path in (("source", src), ("int8", args.out)):
        reports = {}
        for split in ("valid", "test"):
            report = evaluate(path, "ferplus", args.data_root, split,
                              report_dir=args.out.parent / f"{args.out.stem}_reports" / label / split)
            reports[split] = round(report["accuracy"], 2)
        rows[label] = {"file": str(path), "size_bytes": path.stat().st_size,
                       "accuracy": reports, "latency_ms_1thread": round(latency_ms(path, spec), 3),
                       "latency_ms_2threads": round(latency_ms(path, spec, threads=2), 3)}
    result = {"model": args.model, "calibration_faces": int(len(picks)), **rows,
              "accuracy_change_points": {s: round(rows["int8"]["accuracy"][s] - rows["source"]["accuracy"][s], 2)
                                         for s in ("valid", "test")},
              "speedup_1thread": round(rows["source"]["latency_ms_1thread"] / rows["int8"]["latency_ms_1thread"], 3)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
