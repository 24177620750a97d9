"""Several shipped expression models averaged into one verified ONNX file.

Why one file rather than an ensemble in the app: every consumer (the app's expression stage,
`occlufer run`, `occlufer eval`, the teacher cache of `training.distill`) already takes an
expression model as one ONNX with `probs` and `cam`; a file keeps that contract, keeps its own
sha256 in the manifest, and runs all members in one onnxruntime session (one call per frame).

What the graph computes, for members i = 1..M, each given by its shipped file:

    z_i   = log_softmax(T_i * log(probs_i) - b_i)   the member's own posterior: its in-graph
                                                     post-hoc step (logit bias b_i, temperature
                                                     T_i, see `exporters.classifier.PostHoc`)
                                                     undone, as `training.distill.raw_posterior`
    z     = mean_i z_i                              (a mirrored member: z_i averaged over the
                                                     face and its mirror image first)
    probs = softmax((z + b) / T)                    the ensemble's own post-hoc step, fitted on
                                                     validation like any trained model's
    cam   = mean_i cam_i (each resized to the largest member's grid, mirrored views flipped
            back), scaled to [0, 1] per class by its maximum, as a single model's
    occlusion = mean of the members' own occlusion maps (the mask-aware models'), if any

Averaging log-probabilities (a geometric mean of the members' posteriors) is the usual way to
combine classifiers' logits (Hinton et al. 2015 average logits, which is the same up to a
per-face constant). Members whose graph already averages the mirror image (`flip_tta`) are run
once; the others are run on the face and its mirror image stacked into one batch when
`mirror` says so. Members that take priors beside the crop (ORSANet) are refused: the
ensemble's one input is the crop.

fp16 members stay fp16-stored (their `Cast` nodes are copied as they are). The file is checked
against the members' own sessions on real faces (`verify_ensemble`) before it is moved into
place, and is never left half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from app.pipeline.expression import prior_input_types
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.store import sha256_of

INPUT_NAME = "input"
PARITY_TOLERANCE = 1e-4
PROB_FLOOR = 1e-12
CAM_EPS = 1e-6
_INT64_MIN = -(2 ** 63)


class EnsembleError(ValueError):
    """The members cannot be combined (different inputs or classes, priors, opsets)."""


@dataclass(frozen=True)
class Member:
    """One shipped model in the ensemble: its file, and whether the ensemble also runs it on
    the mirror image (never for a member whose own graph already does)."""

    name: str
    path: Path
    mirror: bool = False


@dataclass(frozen=True)
class MemberInfo:
    """What the ensemble graph needs to know of a member, read from its file."""

    member: Member
    spec: dict
    classes: tuple[str, ...]
    logit_bias: tuple[float, ...]
    temperature: float
    in_graph_flip: bool
    cam_shape: tuple[int, int] | None
    has_occlusion: bool
    opset: int
    ir_version: int
    sha256: str

    @property
    def mirrored(self) -> bool:
        return self.member.mirror and not self.in_graph_flip


def read_member(member: Member) -> MemberInfo:
    """A member's contract from its metadata and graph, with a clear error for one that the
    ensemble cannot take."""
    session = ort.InferenceSession(str(member.path), providers=["CPUExecutionProvider"])
    if prior_input_types(session):
        raise EnsembleError(f"{member.name} takes priors beside the crop "
                            f"({', '.join(prior_input_types(session))}); an ensemble has one input")
    meta = session.get_modelmeta().custom_metadata_map
    for key in ("input", "classes"):
        if key not in meta:
            raise EnsembleError(f"{member.name}: no `{key}` in its metadata; not an occlufer "
                                "expression export")
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if "probs" not in outputs:
        raise EnsembleError(f"{member.name} has no `probs` output")
    classes = tuple(json.loads(meta["classes"]))
    posthoc = json.loads(meta["posthoc"]) if meta.get("posthoc") else {}
    bias = tuple(float(v) for v in (posthoc.get("logit_bias") or [0.0] * len(classes)))
    cam = outputs.get("cam")
    cam_shape = (int(cam[2]), int(cam[3])) if cam else None
    model = onnx.load(str(member.path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return MemberInfo(member=member, spec=json.loads(meta["input"]), classes=classes,
                      logit_bias=bias, temperature=float(posthoc.get("temperature", 1.0)),
                      in_graph_flip=bool(posthoc.get("flip_tta", False)), cam_shape=cam_shape,
                      has_occlusion="occlusion" in outputs, opset=opsets.get("ai.onnx", 0),
                      ir_version=model.ir_version,
                      sha256=sha256_of(member.path))


def check_compatible(infos: Sequence[MemberInfo]) -> None:
    if not infos:
        raise EnsembleError("an ensemble needs at least one member")
    first = infos[0]
    for info in infos[1:]:
        if info.spec != first.spec:
            raise EnsembleError(f"{info.member.name} takes input {info.spec}, "
                                f"{first.member.name} {first.spec}: members must share the crop")
        if info.classes != first.classes:
            raise EnsembleError(f"{info.member.name} has classes {info.classes}, "
                                f"{first.member.name} {first.classes}")
        if info.opset != first.opset:
            raise EnsembleError(f"{info.member.name} uses opset {info.opset}, "
                                f"{first.member.name} {first.opset}; re-export one of them")
    names = [i.member.name for i in infos]
    if len(set(names)) != len(names):
        raise EnsembleError(f"a member is named twice: {names}")
    if any(i.cam_shape is None for i in infos) and any(i.cam_shape for i in infos):
        raise EnsembleError("either every member has a `cam` output or none")


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


class _GraphBuilder:
    """Nodes and constants of the ensemble head, named under `ens/`."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"ens/{stem}_{self._count}"

    def const(self, stem: str, value) -> str:
        name = self.name(stem)
        self.initializers.append(_const(name, np.asarray(value)))
        return name

    def op(self, op_type: str, inputs: Sequence[str], stem: str | None = None,
           output: str | None = None, **attrs) -> str:
        out = output or self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def flip_width(self, x: str) -> str:
        """The last axis reversed (the mirror image of NCHW images and (N, h, w) maps)."""
        return self.op("Slice", [x, self.const("start", np.array([-1], np.int64)),
                                 self.const("end", np.array([_INT64_MIN], np.int64)),
                                 self.const("axis", np.array([-1], np.int64)),
                                 self.const("step", np.array([-1], np.int64))], "mirror")

    def batch_half(self, x: str, n: str, n2: str, second: bool) -> str:
        """Rows [0, n) or [n, 2n) of a tensor computed on the face-and-mirror batch."""
        start, end = (n, n2) if second else (self.const("zero", np.array([0], np.int64)), n)
        return self.op("Slice", [x, start, end, self.const("axis0", np.array([0], np.int64))],
                       "half")


def _member_subgraph(info: MemberInfo, index: int, feed: str) -> tuple[list, list, dict]:
    """The member's nodes and initializers with every name under `m<index>/`, fed by `feed`;
    returns (nodes, initializers, {output name: prefixed tensor name})."""
    model = onnx.load(str(info.member.path))
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in model.graph.node for a in n.attribute):
        raise EnsembleError(f"{info.member.name} has control-flow subgraphs; not supported")
    prefixed = onnx.compose.add_prefix(model, f"m{index}/")
    graph = prefixed.graph
    (graph_input,) = [i for i in graph.input
                      if i.name not in {t.name for t in graph.initializer}][:1]
    nodes = [helper.make_node("Identity", [feed], [graph_input.name])] + list(graph.node)
    outputs = {o.name[len(f"m{index}/"):]: o.name for o in graph.output}
    return nodes, list(graph.initializer), outputs


def build_ensemble(members: Sequence[Member], out: Path, *, logit_bias: Sequence[float] | None,
                   temperature: float, name: str, extra_metadata: dict[str, str] | None = None,
                   verify_images: Sequence[np.ndarray] | None = None) -> Path:
    """Write the ensemble of `members` to `out` with the post-hoc step (`logit_bias`,
    `temperature`) folded in; verified against the members on `verify_images` when given."""
    from exporters.classifier import PostHoc

    infos = [read_member(m) for m in members]
    check_compatible(infos)
    classes = infos[0].classes
    b = _GraphBuilder()
    shape = b.op("Shape", [INPUT_NAME], "n", start=0, end=1)
    n2 = b.op("Mul", [shape, b.const("two", np.array([2], np.int64))], "n2")
    pair = None
    if any(i.mirrored for i in infos):
        pair = b.op("Concat", [INPUT_NAME, b.flip_width(INPUT_NAME)], "face_and_mirror", axis=0)
    # the prelude feeds the members; everything the builder adds later reads their outputs
    nodes, initializers = list(b.nodes), []
    b.nodes.clear()
    member_z, cams, occlusions = [], [], []
    cam_grid = max((i.cam_shape for i in infos if i.cam_shape), default=None,
                   key=lambda s: s[0] * s[1])
    weight = 1.0 / len(infos)
    for index, info in enumerate(infos):
        feed = pair if info.mirrored else INPUT_NAME
        sub_nodes, sub_init, outs = _member_subgraph(info, index, feed)
        nodes += sub_nodes
        initializers += sub_init
        views = ((b.batch_half(outs["probs"], shape, n2, False),
                  b.batch_half(outs["probs"], shape, n2, True)) if info.mirrored
                 else (outs["probs"],))
        t = b.const("temperature", np.float32(info.temperature))
        bias = b.const("bias", np.asarray(info.logit_bias, np.float32))
        view_weight = b.const("w", np.float32(weight / len(views)))
        for probs in views:
            logp = b.op("Log", [b.op("Clip", [probs, b.const("floor", np.float32(PROB_FLOOR))])])
            raw = b.op("Sub", [b.op("Mul", [logp, t]), bias], "raw")
            member_z.append(b.op("Mul", [b.op("LogSoftmax", [raw], axis=1), view_weight]))
        if info.cam_shape:
            cam_views = ([b.batch_half(outs["cam"], shape, n2, False),
                          b.flip_width(b.batch_half(outs["cam"], shape, n2, True))]
                         if info.mirrored else [outs["cam"]])
            for cam in cam_views:
                if info.cam_shape != cam_grid:
                    scales = np.array([1.0, 1.0, cam_grid[0] / info.cam_shape[0],
                                       cam_grid[1] / info.cam_shape[1]], np.float32)
                    cam = b.op("Resize", [cam, "", b.const("scales", scales)], "cam_resized",
                               mode="linear", coordinate_transformation_mode="half_pixel")
                cams.append(b.op("Mul", [cam, b.const("w", np.float32(weight / len(cam_views)))]))
        if info.has_occlusion:
            occ_views = ([b.batch_half(outs["occlusion"], shape, n2, False),
                          b.flip_width(b.batch_half(outs["occlusion"], shape, n2, True))]
                         if info.mirrored else [outs["occlusion"]])
            for occ in occ_views:
                occlusions.append(b.op("Mul", [occ, b.const("w", np.float32(1.0 / len(occ_views)))]))

    z = b.op("Sum", member_z, "z")
    bias_vec = np.asarray(logit_bias if logit_bias is not None else [0.0] * len(classes),
                          np.float32)
    corrected = b.op("Div", [b.op("Add", [z, b.const("bias", bias_vec)]),
                             b.const("temperature", np.float32(temperature))], "corrected")
    b.op("Softmax", [corrected], output="probs", axis=1)
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(classes)])]
    described = {"probs": f"(N, {len(classes)}) softmax of the ensemble's averaged log-posterior"}
    if cams:
        total = b.op("Sum", cams, "cam_sum")
        peak = b.op("Add", [b.op("ReduceMax", [total], axes=[2, 3], keepdims=1),
                            b.const("eps", np.float32(CAM_EPS))], "cam_peak")
        b.op("Div", [total, peak], output="cam")
        outputs.append(helper.make_tensor_value_info(
            "cam", TensorProto.FLOAT, ["batch", len(classes), *cam_grid]))
        described["cam"] = (f"(N, {len(classes)}, {cam_grid[0]}, {cam_grid[1]}) the members' "
                            "class activation maps averaged, each class scaled to [0, 1] by "
                            "its own max")
    if occlusions:
        count = sum(i.has_occlusion for i in infos)
        b.op("Mul", [b.op("Sum", occlusions, "occ_sum"),
                     b.const("w", np.float32(1.0 / count))], output="occlusion")
        outputs.append(helper.make_tensor_value_info("occlusion", TensorProto.FLOAT,
                                                     ["batch", None, None]))
        described["occlusion"] = "(N, h, w) P(hidden), the mask-aware members' maps averaged"

    spec = infos[0].spec
    graph = helper.make_graph(
        nodes + b.nodes, f"ensemble_{name}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["batch", spec.get("channels", 3), spec["size"],
                                        spec["size"]])],
        outputs, initializer=initializers + b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", infos[0].opset)],
                              producer_name="occlufer exporters/ensemble.py")
    model.ir_version = infos[0].ir_version
    posthoc = PostHoc(logit_bias=tuple(float(v) for v in bias_vec), temperature=temperature)
    metadata = {
        "model_name": "ensemble", "entry_name": name, "input": json.dumps(spec),
        "classes": json.dumps(list(classes)), "posthoc": posthoc.to_metadata(),
        "outputs": json.dumps(described), "exporter": "occlufer exporters/ensemble.py",
        "members": json.dumps([{"name": i.member.name, "sha256": i.sha256,
                                "mirror": i.mirrored or i.in_graph_flip} for i in infos]),
        **(extra_metadata or {}),
    }
    for key, value in metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(handle)
    try:
        onnx.save(model, tmp_name)
        if verify_images is not None:
            verify_ensemble(Path(tmp_name), infos, verify_images, logit_bias=bias_vec,
                            temperature=temperature)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def expected_probs(infos: Sequence[MemberInfo], images: Sequence[np.ndarray],
                   logit_bias: np.ndarray, temperature: float) -> np.ndarray:
    """The ensemble's probabilities computed outside its graph, from each member's own
    session: the reference `verify_ensemble` holds the file to."""
    from training.calibration import softmax
    from training.distill import raw_posterior

    spec = InputSpec.from_manifest(infos[0].spec)
    x = prepare_batch(list(images), spec)
    z = np.zeros((len(x), len(infos[0].classes)), np.float64)
    for info in infos:
        session = ort.InferenceSession(str(info.member.path), providers=["CPUExecutionProvider"])
        posthoc = {"logit_bias": list(info.logit_bias), "temperature": info.temperature}
        views = (x, np.ascontiguousarray(x[..., ::-1])) if info.mirrored else (x,)
        for view in views:
            probs = session.run(["probs"], {session.get_inputs()[0].name: view})[0]
            z += np.log(np.clip(raw_posterior(probs, posthoc), PROB_FLOOR, 1.0)) / (
                len(views) * len(infos))
    return softmax((z + logit_bias) / temperature).astype(np.float32)


def verify_ensemble(path: Path, infos: Sequence[MemberInfo], images: Sequence[np.ndarray], *,
                    logit_bias: np.ndarray, temperature: float) -> float:
    """Max |file - members| over `probs` on real faces; raises when it exceeds the tolerance."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = InputSpec.from_manifest(infos[0].spec)
    got = session.run(["probs"], {INPUT_NAME: prepare_batch(list(images), spec)})[0]
    want = expected_probs(infos, images, np.asarray(logit_bias, np.float64), temperature)
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise EnsembleError(f"the ensemble graph disagrees with its members by {diff:.2e} "
                            f"(tolerance {PARITY_TOLERANCE:g}); nothing was written")
    return diff
