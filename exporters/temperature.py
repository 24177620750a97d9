"""A temperature folded into a shipped classifier that was exported without one.

Why edit the ONNX graph rather than re-export: the models trained before the calibration step
existed (the `fast` recipes) are shipped as ONNX files whose checkpoints were never kept, and
retraining them to add one scalar would cost hours of CPU and change their weights. Every
occlufer classifier's graph ends in `probs = Softmax(logits)`; this module puts `Div(logits, T)`
in front of that Softmax, which is exactly what `exporters.classifier.PostHoc(temperature=T)`
exports for a newly trained model, and records it in the same `posthoc` metadata, so
`training.distill.raw_posterior` and `exporters.ensemble` undo it like any other temperature.

A file that already has a temperature (fitted when it was trained) can have it *replaced*
(`refit`): the inserted `Div` is by T_new / T_old, so the graph computes
`softmax((logits + b) / T_new)` and the metadata says T_new (and `trained_temperature`
T_old, for the record); its logit bias is kept.

A temperature changes no arg-max and nothing but `probs`: the CAM, the occlusion map and every
other output stay bit-identical, and `verify_temperature` checks both on real faces before the
file is moved into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PROBS = "probs"
TEMPERATURE_NAME = "posthoc_temperature"
TEMPERED_NAME = "posthoc_tempered_logits"
PARITY_TOLERANCE = 1e-4


class TemperatureError(ValueError):
    """The file cannot take a temperature this way (already calibrated, or not a classifier
    whose `probs` come straight from a Softmax)."""


def existing_posthoc(model: onnx.ModelProto) -> dict:
    """The file's `posthoc` metadata ({} for a file exported before post-hoc steps existed)."""
    for prop in model.metadata_props:
        if prop.key == "posthoc" and prop.value:
            return json.loads(prop.value)
    return {}


def is_calibrated(posthoc: dict) -> bool:
    """True when the file already carries a fitted temperature or logit adjustment."""
    return (float(posthoc.get("temperature", 1.0)) != 1.0
            or any(float(b) != 0.0 for b in posthoc.get("logit_bias") or ()))


def _softmax_producing_probs(model: onnx.ModelProto) -> int:
    producers = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    if PROBS not in producers:
        raise TemperatureError(f"the graph has no `{PROBS}` output")
    index = producers[PROBS]
    node = model.graph.node[index]
    if node.op_type != "Softmax":
        raise TemperatureError(f"`{PROBS}` comes from a {node.op_type} node, not a Softmax: "
                               "this is not a graph occlufer's classifier exporter wrote")
    return index


def _logits_dtype(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        if info.name == name:
            return info.type.tensor_type.elem_type
    return TensorProto.FLOAT


def with_temperature(model: onnx.ModelProto, temperature: float,
                     refit: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose `probs` are `Softmax((logits + b) / temperature)`; `refit`
    replaces a temperature the file already has (else such a file is refused)."""
    if not temperature > 0.0 or not np.isfinite(temperature):
        raise TemperatureError(f"temperature must be a positive number, got {temperature}")
    posthoc = existing_posthoc(model)
    if is_calibrated(posthoc) and not refit:
        raise TemperatureError(
            f"the file already has a post-hoc step (temperature {posthoc.get('temperature')}, "
            f"logit bias {posthoc.get('logit_bias')}), fitted when it was trained; refitting it "
            "here would fold a second one on top (pass refit to replace its temperature)")
    divisor = temperature / float(posthoc.get("temperature", 1.0))
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = [t for t in model.graph.initializer if t.name == TEMPERATURE_NAME]
    if existing:  # refitted before: scale the divisor already in place
        value = numpy_helper.to_array(existing[0])
        existing[0].CopyFrom(numpy_helper.from_array(
            np.array(float(value) * divisor, value.dtype), TEMPERATURE_NAME))
    else:
        index = _softmax_producing_probs(model)
        softmax = model.graph.node[index]
        logits = softmax.input[0]
        dtype = _logits_dtype(model, logits)
        np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
        model.graph.initializer.append(
            numpy_helper.from_array(np.array(divisor, np_dtype), TEMPERATURE_NAME))
        divide = helper.make_node("Div", [logits, TEMPERATURE_NAME], [TEMPERED_NAME],
                                  name="posthoc_temperature_div")
        softmax.input[0] = TEMPERED_NAME
        model.graph.node.insert(index, divide)
    trained = float(posthoc.get("trained_temperature", posthoc.get("temperature", 1.0)))
    posthoc = {**posthoc, "logit_bias": list(posthoc.get("logit_bias") or ()),
               "temperature": float(temperature),
               "flip_tta": bool(posthoc.get("flip_tta", False))}
    if refit and is_calibrated(existing_posthoc(model)):
        posthoc["trained_temperature"] = trained  # what the training fitted, for the record
    kept = [p for p in model.metadata_props if p.key != "posthoc"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.append(onnx.StringStringEntryProto(key="posthoc",
                                                            value=json.dumps(posthoc)))
    onnx.checker.check_model(model)
    return model


def verify_temperature(original: Path, tempered: Path, divisor: float,
                       feeds: dict[str, np.ndarray]) -> float:
    """The largest |probs - softmax(log(original probs) / divisor)| on `feeds` (divisor =
    T_new / T_old); raises when it is above `PARITY_TOLERANCE` or when any other output
    differs at all."""
    before = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(tempered), providers=["CPUExecutionProvider"])
    names = [o.name for o in before.get_outputs()]
    old = dict(zip(names, before.run(names, feeds)))
    new = dict(zip(names, after.run(names, feeds)))
    z = np.log(np.clip(old[PROBS].astype(np.float64), 1e-30, 1.0)) / divisor
    z -= z.max(axis=1, keepdims=True)
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    gap = float(np.abs(new[PROBS] - expected).max())
    if gap > PARITY_TOLERANCE:
        raise TemperatureError(f"tempered probs differ from softmax(log p / T) by {gap:.2e}")
    for name in names:
        if name != PROBS and not np.array_equal(old[name], new[name]):
            raise TemperatureError(f"output `{name}` changed; a temperature may only touch probs")
    return gap


def add_temperature(source: Path, target: Path, temperature: float,
                    verify_feeds: dict[str, np.ndarray], refit: bool = False) -> Path:
    """Write `source` with `temperature` folded in to `target`, verified on `verify_feeds`
    before it lands (atomic rename; never a half-written file)."""
    original = onnx.load(str(source))
    divisor = temperature / float(existing_posthoc(original).get("temperature", 1.0))
    model = with_temperature(original, temperature, refit=refit)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=target.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        verify_temperature(Path(source), Path(tmp), divisor, verify_feeds)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
