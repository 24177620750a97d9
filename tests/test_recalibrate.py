"""Folding a temperature into a shipped classifier that has none (`exporters.temperature`,
`training.recalibrate`), on the real shipped files and real FERPlus faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.errors import OccluferError
from app.pipeline.preprocess import InputSpec, prepare_batch
from exporters.temperature import TemperatureError, add_temperature, with_temperature
from training.calibration import fit_temperature
from training.data import load_split
from training.distill import raw_posterior

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def without_temperature(model: onnx.ModelProto) -> onnx.ModelProto:
    """The file as it was first shipped: the folded temperature (if any) taken out again."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    divide = [n for n in model.graph.node if n.name == "posthoc_temperature_div"]
    if divide:
        for node in model.graph.node:
            node.input[:] = [divide[0].input[0] if i == divide[0].output[0] else i
                             for i in node.input]
        model.graph.node.remove(divide[0])
        kept = [t for t in model.graph.initializer if t.name != "posthoc_temperature"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        kept_meta = [p for p in model.metadata_props if p.key != "posthoc"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept_meta)
    return model


def shipped_copy(tmp_path: Path, *names: str) -> Path:
    """A private manifest holding shipped entries as first shipped (no temperature), with
    their files and cards."""
    from training.evaluate import sha256_file

    data = json.loads((ASSETS / "manifest.json").read_text())
    root = tmp_path / "assets"
    (root / "models").mkdir(parents=True)
    (root / "cards").mkdir()
    models = {}
    for name in names:
        entry = dict(data["models"][name])
        target = root / entry["file"]
        onnx.save(without_temperature(onnx.load(str(ASSETS / entry["file"]))), target)
        card = (ASSETS / entry["card"]).read_text().split("\n## Temperature (fitted after")[0]
        (root / entry["card"]).write_text(card.replace(entry["sha256"], sha256_file(target)))
        entry["sha256"] = sha256_file(target)
        models[name] = entry
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"default_expression": names[0], "models": models}))
    return manifest


def run(path: Path, faces: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    spec = InputSpec.from_manifest(json.loads(meta["input"]))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": prepare_batch(list(faces), spec)})))


@pytest.fixture(scope="module")
def valid(ferplus_root):
    return load_split("ferplus", ferplus_root, "valid", "majority")


def test_recalibrate_fits_folds_cards_and_registers(ferplus_root, valid, tmp_path):
    from app.runtime.store import ModelStore
    from training.evaluate import sha256_file
    from training.recalibrate import recalibrate

    manifest = shipped_copy(tmp_path, "resnet18_fast")
    old_file = manifest.parent / "models" / "resnet18_fast.onnx"
    old_sha = sha256_file(old_file)
    shutil.copy(old_file, tmp_path / "original.onnx")
    before = run(old_file, valid.images[:256])
    result = recalibrate("resnet18_fast", ferplus_root, out_dir=tmp_path / "run",
                         manifest=manifest, val_limit=256, test_limit=64,
                         occlusion_dir=tmp_path / "no_sets", code="test", command="cmd")

    # T is the NLL fit on the same faces' logits (up to a per-face constant: log probs)
    expected_t = fit_temperature(np.log(np.clip(before["probs"].astype(np.float64), 1e-30, 1)),
                                 valid.labels[:256])
    assert result.temperature == pytest.approx(expected_t, rel=1e-6)
    assert result.temperature != pytest.approx(1.0, abs=0.02)
    assert result.nll_after <= result.nll_before

    new_file = manifest.parent / "models" / "resnet18_fast.onnx"
    faces = load_split("ferplus", ferplus_root, "test", "majority").images[:32]
    built, new = run(tmp_path / "run" / "resnet18_fast.onnx", faces), run(new_file, faces)
    original = run(tmp_path / "original.onnx", faces)
    assert np.array_equal(new["probs"], built["probs"])  # the registered file is the built one
    assert np.array_equal(new["cam"], original["cam"])  # only probs may change
    assert np.array_equal(new["probs"].argmax(1), original["probs"].argmax(1))
    expected = np.exp(np.log(np.clip(original["probs"], 1e-30, 1)) / result.temperature)
    np.testing.assert_allclose(new["probs"], expected / expected.sum(1, keepdims=True), atol=1e-5)
    # distilling from the new file gives what the old one gave
    posthoc = json.loads(ort.InferenceSession(str(new_file)).get_modelmeta()
                         .custom_metadata_map["posthoc"])
    assert posthoc["temperature"] == pytest.approx(result.temperature)
    np.testing.assert_allclose(raw_posterior(new["probs"], posthoc), original["probs"], atol=1e-5)

    entry = json.loads(manifest.read_text())["models"]["resnet18_fast"]
    assert entry["sha256"] == result.new_sha256 == sha256_file(new_file) != old_sha
    card = (manifest.parent / "cards" / "resnet18_fast.md").read_text()
    assert "## Temperature (fitted after export" in card and old_sha in card
    assert f"sha256 `{result.new_sha256}`" in card and "| clean |" in card
    store = ModelStore(root=tmp_path / "home", manifest=manifest)
    assert store.fetch("resnet18_fast").is_file()  # the store accepts the new sha256

    with pytest.raises(OccluferError, match="already has a temperature"):
        recalibrate("resnet18_fast", ferplus_root, out_dir=tmp_path / "again", manifest=manifest,
                    val_limit=32, test_limit=8, occlusion_dir=tmp_path / "no_sets")


def test_a_trained_model_with_its_own_post_hoc_step_is_refused():
    model = onnx.load(str(ASSETS / "models" / "resnet18_cpu.onnx"))
    with pytest.raises(TemperatureError, match="already has a post-hoc step"):
        with_temperature(model, 1.3)
    tempered = with_temperature(without_temperature(
        onnx.load(str(ASSETS / "models" / "resnet18_fast.onnx"))), 1.3)
    with pytest.raises(TemperatureError, match="already has a post-hoc step"):
        with_temperature(tempered, 1.3)  # never a second temperature on top of the first


def test_a_wrong_temperature_or_a_graph_without_softmax_is_refused():
    model = without_temperature(onnx.load(str(ASSETS / "models" / "resnet18_fast.onnx")))
    with pytest.raises(TemperatureError, match="positive"):
        with_temperature(model, 0.0)
    producer = next(n for n in model.graph.node if "probs" in n.output)
    producer.op_type = "Sigmoid"
    producer.ClearField("attribute")
    with pytest.raises(TemperatureError, match="not a Softmax"):
        with_temperature(model, 1.2)


def test_the_verification_catches_a_changed_output(tmp_path, valid):
    """A temperature that reached the CAM would be caught before the file lands."""
    source = tmp_path / "resnet18_fast.onnx"
    onnx.save(without_temperature(onnx.load(str(ASSETS / "models" / "resnet18_fast.onnx"))), source)
    spec = InputSpec.from_manifest(json.loads(ort.InferenceSession(str(source)).get_modelmeta()
                                              .custom_metadata_map["input"]))
    feeds = {"input": prepare_batch(list(valid.images[:8]), spec)}
    good = add_temperature(source, tmp_path / "good.onnx", 1.25, feeds)
    assert ort.InferenceSession(str(good)).get_modelmeta().custom_metadata_map["posthoc"]

    model = with_temperature(onnx.load(str(source)), 1.25)
    cam_producer = next(n for n in model.graph.node if "cam" in n.output)
    cam_producer.output[0] = "cam_raw"
    model.graph.node.append(onnx.helper.make_node("Div", ["cam_raw", "posthoc_temperature"],
                                                  ["cam"]))
    from exporters.temperature import verify_temperature

    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    with pytest.raises(TemperatureError, match="output `cam` changed"):
        verify_temperature(source, bad, 1.25, feeds)


def test_orsanet_is_fitted_on_the_priors_the_app_gives_it(ferplus_root, tmp_path):
    """The prior-guided model goes through the same command with runtime priors."""
    from training.recalibrate import recalibrate

    manifest = shipped_copy(tmp_path, "orsanet_fast")
    result = recalibrate("orsanet_fast", ferplus_root, out_dir=tmp_path / "run",
                         manifest=manifest, val_limit=64, test_limit=16,
                         occlusion_dir=tmp_path / "no_sets", code="test", command="cmd")
    assert result.temperature > 0 and result.reports["clean"]["n"] == 16
    meta = ort.InferenceSession(str(result.path)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["posthoc"])["temperature"] == pytest.approx(result.temperature)
