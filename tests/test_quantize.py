"""int8 quantisation of the shipped expression model (`exporters/quantize.py`): the fp16
storage is undone exactly, the int8 file keeps the runtime's contract (outputs, metadata,
the store's classes) and agrees with the source on real FERPlus faces. Accuracy and speed
themselves are recorded in BENCHMARKS.md by `python -m exporters.quantize`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from app import ASSETS_DIR
from app.runtime.providers import create_session
from exporters.quantize import float32_weights, quantize_classifier
from training.data import load_split
from training.evaluate import model_metadata, predict

SOURCE = ASSETS_DIR / "models" / "resnet18_fast.onnx"


@pytest.fixture(scope="module")
def test_faces(ferplus_root):
    split = load_split("ferplus", ferplus_root, "test", progress=False)
    return split.images[:256], split.labels[:256]


def test_fp16_storage_is_undone_exactly():
    proto = onnx.load(str(SOURCE))
    halves = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves  # the shipped file stores its weights as float16
    restored = float32_weights(proto)
    assert restored == len(halves)
    assert not [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert not [n for n in proto.graph.node if n.op_type == "Cast" and n.input[0].endswith("__fp16")]
    onnx.checker.check_model(proto)


def test_int8_keeps_the_contract_and_the_answers(ferplus_root, test_faces, tmp_path):
    train = load_split("ferplus", ferplus_root, "train", progress=False)
    out = quantize_classifier(SOURCE, tmp_path / "int8.onnx", train.images[:128])
    source, int8 = create_session(SOURCE, "cpu", 1), create_session(out, "cpu", 1)
    assert [o.name for o in int8.get_outputs()] == [o.name for o in source.get_outputs()]
    spec, classes, meta = model_metadata(int8)
    assert (spec, classes) == model_metadata(source)[:2]
    assert meta["weights_dtype"].startswith("int8")
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    images, labels = test_faces
    p_source = predict(source, images, spec)
    p_int8 = predict(int8, images, spec)
    agree = float(np.mean(p_source.argmax(1) == p_int8.argmax(1)))
    assert agree > 0.9, agree
    assert float(np.abs(p_source - p_int8).max()) > 0  # it really is another computation
