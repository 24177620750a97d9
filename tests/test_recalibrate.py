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

from app.errors import DatasetError, OccluferError
from app.pipeline.preprocess import InputSpec, prepare_batch
from exporters.temperature import TemperatureError, add_temperature, with_temperature
from training.calibration import fit_temperature
from training.data import load_split
from training.distill import raw_posterior

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def without_temperature(model: onnx.ModelProto) -> onnx.ModelProto:
    """The file as it was shipped before recalibration: the folded divisor (if any) taken out
    again, and the temperature its training fitted (if any) back in the metadata."""
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
        posthoc = next(json.loads(p.value) for p in model.metadata_props if p.key == "posthoc")
        kept_meta = [p for p in model.metadata_props if p.key != "posthoc"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept_meta)
        if "trained_temperature" in posthoc:
            posthoc["temperature"] = posthoc.pop("trained_temperature")
            model.metadata_props.append(onnx.StringStringEntryProto(
                key="posthoc", value=json.dumps(posthoc)))
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


@pytest.fixture(scope="module")
def mini(ferplus_root, tmp_path_factory) -> dict[str, Path]:
    """A FERPlus root with the first rows of validation and test, the validation copies under
    every occluder and degradation (seed 1, as the command's help says), and two test sets."""
    from training.occlusion import EVALUATED_SETS, write_test_sets

    base = tmp_path_factory.mktemp("recal")
    root = base / "ferplus"
    for folder, rows in (("FER2013Valid", 96), ("FER2013Test", 32)):
        (root / folder).mkdir(parents=True)
        lines = (ferplus_root / folder / "label.csv").read_text().splitlines()[:rows]
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
        for line in lines:
            name = line.split(",")[0]
            shutil.copyfile(ferplus_root / folder / name, root / folder / name)
    write_test_sets(root, base / "valid_sets", EVALUATED_SETS, split="valid", seed=1,
                    progress=False)
    write_test_sets(root, base / "test_sets", ("masked", "blur"), split="test", progress=False)
    return {"root": root, "valid_sets": base / "valid_sets", "test_sets": base / "test_sets"}


def weighted_nll(parts: list[tuple[np.ndarray, np.ndarray]], t: float) -> float:
    """Half the weight on the clean set (first), the other half shared equally by the rest."""
    def mean_nll(p, y):
        z = np.log(np.clip(p.astype(np.float64), 1e-30, 1)) / t
        z -= z.max(1, keepdims=True)
        return float(-(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(y)), y].mean())
    rest = [mean_nll(p, y) for p, y in parts[1:]]
    return 0.5 * mean_nll(*parts[0]) + 0.5 * float(np.mean(rest))


def test_recalibrate_fits_folds_cards_and_registers(mini, tmp_path):
    from app.runtime.store import ModelStore
    from training.evaluate import sha256_file
    from training.occlusion import EVALUATED_SETS
    from training.recalibrate import recalibrate

    manifest = shipped_copy(tmp_path, "resnet18_fast")
    old_file = manifest.parent / "models" / "resnet18_fast.onnx"
    old_sha = sha256_file(old_file)
    shutil.copy(old_file, tmp_path / "original.onnx")
    result = recalibrate("resnet18_fast", mini["root"], mini["valid_sets"], out_dir=tmp_path / "run",
                         manifest=manifest, occlusion_dir=mini["test_sets"], shifts=["tilt"],
                         code="test", command="cmd")

    # the two temperatures are the NLL minima of what they say they are fitted on
    clean = load_split("ferplus", mini["root"], "valid", "majority", use_cache=False)
    parts = [(run(tmp_path / "original.onnx", clean.images)["probs"], clean.labels)]
    for kind in EVALUATED_SETS:
        data = load_split("ferplus", mini["valid_sets"] / kind, "valid", "majority",
                          use_cache=False)
        assert not np.array_equal(data.images, clean.images)  # really occluded / degraded
        parts.append((run(tmp_path / "original.onnx", data.images)["probs"], data.labels))
    expected_clean = fit_temperature(np.log(np.clip(parts[0][0].astype(np.float64), 1e-30, 1)),
                                     parts[0][1])
    assert result.temperature_clean == pytest.approx(expected_clean, rel=1e-6)
    t = result.temperature
    assert weighted_nll(parts, t) <= min(weighted_nll(parts, t * 1.03), weighted_nll(parts, t / 1.03))
    assert set(result.test) == {"clean", "masked", "blur", "held-out tilt"}
    assert result.test["clean"]["n"] == len(load_split("ferplus", mini["root"], "test",
                                                       "majority", use_cache=False).labels)

    new_file = manifest.parent / "models" / "resnet18_fast.onnx"
    faces = clean.images[:32]
    built, new = run(tmp_path / "run" / "resnet18_fast.onnx", faces), run(new_file, faces)
    original = run(tmp_path / "original.onnx", faces)
    assert np.array_equal(new["probs"], built["probs"])  # the registered file is the built one
    assert np.array_equal(new["cam"], original["cam"])  # only probs may change
    assert np.array_equal(new["probs"].argmax(1), original["probs"].argmax(1))
    expected = np.exp(np.log(np.clip(original["probs"], 1e-30, 1)) / t)
    np.testing.assert_allclose(new["probs"], expected / expected.sum(1, keepdims=True), atol=1e-5)
    # distilling from the new file gives what the old one gave
    posthoc = json.loads(ort.InferenceSession(str(new_file)).get_modelmeta()
                         .custom_metadata_map["posthoc"])
    assert posthoc["temperature"] == pytest.approx(t)
    np.testing.assert_allclose(raw_posterior(new["probs"], posthoc), original["probs"], atol=1e-5)

    entry = json.loads(manifest.read_text())["models"]["resnet18_fast"]
    assert entry["sha256"] == result.new_sha256 == sha256_file(new_file) != old_sha
    card = (manifest.parent / "cards" / "resnet18_fast.md").read_text()
    assert "## Temperature (fitted after export" in card and old_sha in card
    assert f"sha256 `{result.new_sha256}`" in card and "| held-out tilt |" in card
    lower = sum(v["ece_shift_fit"] < v["ece_clean_fit"] for k, v in result.test.items()
                if k != "clean")
    assert f"on {3 - lower} of the 3 occluded, degraded and held-out test sets" in card
    assert json.loads((tmp_path / "run" / "resnet18_fast.json").read_text())["temperature"] == t
    store = ModelStore(root=tmp_path / "home", manifest=manifest)
    assert store.fetch("resnet18_fast").is_file()  # the store accepts the new sha256

    with pytest.raises(OccluferError, match="--refit replaces it"):
        recalibrate("resnet18_fast", mini["root"], mini["valid_sets"], out_dir=tmp_path / "again",
                    manifest=manifest, occlusion_dir=mini["test_sets"])
    # a calibrated file can still be measured, and nothing is written for it
    measured = recalibrate("resnet18_fast", mini["root"], mini["valid_sets"],
                           out_dir=tmp_path / "measure", manifest=manifest,
                           occlusion_dir=mini["test_sets"], shifts=[], measure_only=True)
    assert measured.temperature_before == pytest.approx(t)
    assert measured.temperature == pytest.approx(t, rel=1e-3)  # the same fit from its logits
    assert sha256_file(new_file) == result.new_sha256 and measured.path is None


def test_missing_validation_copies_are_built_as_the_help_says(mini, tmp_path):
    """The copies the fit needs are built where missing, the same draw (seed 1) as
    `python -m training.occlusion --split valid --seed 1` gives."""
    from training.evaluate import valid_copies

    built = dict(valid_copies(mini["root"], tmp_path / "copies"))
    name = sorted((mini["root"] / "FER2013Valid").glob("*.png"))[0].name
    for kind in ("masked", "degraded"):
        ours = (built[kind] / "FER2013Valid" / name).read_bytes()
        assert ours == (mini["valid_sets"] / kind / "FER2013Valid" / name).read_bytes()
    with pytest.raises(DatasetError, match="--split valid --seed 1"):
        valid_copies(mini["root"], tmp_path / "none", build=False)


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


def test_orsanet_is_fitted_on_the_priors_the_app_gives_it(mini, tmp_path):
    """The prior-guided model goes through the same command with runtime priors."""
    from training.recalibrate import recalibrate

    manifest = shipped_copy(tmp_path, "orsanet_fast")
    result = recalibrate("orsanet_fast", mini["root"], mini["valid_sets"], out_dir=tmp_path / "run",
                         manifest=manifest, occlusion_dir=mini["test_sets"], shifts=[],
                         code="test", command="cmd")
    assert result.temperature > 0 and set(result.test) == {"clean", "masked", "blur"}
    meta = ort.InferenceSession(str(result.path)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["posthoc"])["temperature"] == pytest.approx(result.temperature)


def test_refit_replaces_a_trained_temperature_and_keeps_the_logit_adjustment(mini, tmp_path):
    """A model calibrated at training time (logit bias + clean-fit T) gets the shift fit in
    place of its T: same arg-max, its bias kept, its trained T recorded, nothing else moved."""
    from training.recalibrate import recalibrate

    manifest = shipped_copy(tmp_path, "resnet18_cpu")
    source = manifest.parent / "models" / "resnet18_cpu.onnx"
    shutil.copy(source, tmp_path / "original.onnx")
    before = json.loads(ort.InferenceSession(str(source)).get_modelmeta()
                        .custom_metadata_map["posthoc"])
    assert before["temperature"] != 1.0 and any(before["logit_bias"])
    with pytest.raises(OccluferError, match="--refit"):
        recalibrate("resnet18_cpu", mini["root"], mini["valid_sets"], out_dir=tmp_path / "no",
                    manifest=manifest, occlusion_dir=mini["test_sets"], shifts=[])
    result = recalibrate("resnet18_cpu", mini["root"], mini["valid_sets"], out_dir=tmp_path / "run",
                         manifest=manifest, occlusion_dir=mini["test_sets"], shifts=[],
                         refit=True, code="test", command="cmd")
    after = json.loads(ort.InferenceSession(str(source)).get_modelmeta()
                       .custom_metadata_map["posthoc"])
    assert after["logit_bias"] == before["logit_bias"] and after["flip_tta"] == before["flip_tta"]
    assert after["trained_temperature"] == before["temperature"]
    assert after["temperature"] == pytest.approx(result.temperature)
    assert result.temperature_before == before["temperature"]
    faces = load_split("ferplus", mini["root"], "test", "majority", use_cache=False).images
    old, new = run(tmp_path / "original.onnx", faces), run(source, faces)
    assert np.array_equal(new["probs"].argmax(1), old["probs"].argmax(1))
    z = np.log(np.clip(old["probs"], 1e-30, 1)) * before["temperature"] / result.temperature
    expected = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(new["probs"], expected / expected.sum(1, keepdims=True), atol=1e-5)
    # the teacher's view (post-hoc undone) is the same file's network either way
    np.testing.assert_allclose(raw_posterior(new["probs"], after),
                               raw_posterior(old["probs"], before), atol=1e-5)
    card = (manifest.parent / "cards" / "resnet18_cpu.md").read_text()
    assert f"shipped with T = {before['temperature']:.4f}" in card
    # a second refit scales the divisor already in place instead of stacking another
    model = with_temperature(onnx.load(str(source)), 0.9, refit=True)
    assert sum(n.name == "posthoc_temperature_div" for n in model.graph.node) == 1
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["posthoc"])["trained_temperature"] == before["temperature"]
