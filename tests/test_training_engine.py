"""The CPU training engine and the long recipe's pieces, on real FERPlus faces: bf16 autocast,
the per-epoch occluder bank, camera degradations, vote-distribution targets, information-gap
distillation targets, and the post-hoc logit adjustment + temperature folded into the ONNX."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.providers import create_session
from training import augment, degrade
from training.augment import AugmentConfig, OccluderBank, augment_batch
from training.calibration import (class_prior, expected_calibration_error, fit_calibration,
                                  nll, softmax)
from training.data import load_split
from training.recipes import get_recipe
from training.trainer import (BatchSource, SplitArrays, cpu_supports_bf16, resolve_precision,
                              train)

SPEC = InputSpec(size=48, color="gray")
CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
TINY = replace(get_recipe("resnet18", "cpu"), epochs=1, batch_size=32,
               model_cfg={"small_input": True, "stem_stride": 2, "width": 8})


@pytest.fixture(scope="module")
def faces(ferplus_root: Path) -> np.ndarray:
    split = load_split("ferplus", ferplus_root, "valid", "majority")
    return split.images[:64]


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F).var())


# ---------------------------------------------------------------- precision
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else None)
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16


def test_a_bf16_channels_last_run_trains_and_records_its_engine(ferplus_root, tmp_path):
    last = train("resnet18", "ferplus", ferplus_root, TINY, "cpu", out_dir=tmp_path / "run",
                 limit=128, val_limit=64, workers=0, progress=False, finalize=False,
                 precision="bf16", channels_last=True, occluder_bank=64)
    checkpoint = torch.load(last, weights_only=False)
    session = checkpoint["state"]["sessions"][0]
    assert session["precision"] == "bfloat16" and session["channels_last"] is True
    assert checkpoint["recipe"]["label_mode"] == "crossentropy"
    # the weights stay fp32 (autocast computes in bf16, the master weights are fp32)
    assert all(v.dtype == torch.float32 for k, v in checkpoint["model"].items()
               if v.is_floating_point())
    assert checkpoint["state"]["history"][0]["train_loss"] > 0


# ---------------------------------------------------------------- occluder bank
def test_the_bank_is_a_function_of_seed_and_epoch_and_its_quarter_refresh_is_exact():
    from training.occlusion import KINDS

    fresh = OccluderBank(5, 3, (48, 48), KINDS, 32)
    again = OccluderBank(5, 3, (48, 48), KINDS, 32)
    carried = OccluderBank(5, 3, (48, 48), KINDS, 32,
                           previous=OccluderBank(5, 2, (48, 48), KINDS, 32))
    for a, b, c in zip(fresh.items, again.items, carried.items):
        assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.alpha, c.alpha)
    older = OccluderBank(5, 2, (48, 48), KINDS, 32)
    changed = sum(not np.array_equal(a.alpha, b.alpha) for a, b in zip(older.items, fresh.items))
    assert changed == 32 // augment.BANK_LIFE
    assert {item.kind for item in fresh.items} == set(KINDS)  # every kind, balanced by slot


def test_bank_occlusion_hides_pixels_and_reports_them_like_the_painter(faces):
    cfg = AugmentConfig(occluder_bank=64, occlusion_p_clean=0.0, rotate_deg=0, scale=(1, 1),
                        translate=0, flip=0, brightness=0, contrast=0)
    x, extras = augment_batch(faces, range(16), 0, 0, SPEC, cfg, True, aux=("occlusion",))
    clean = prepare_batch(list(faces[:16]), SPEC)
    masks = extras["occlusion"]
    assert (masks.reshape(16, -1).max(axis=1) > 0.5).all()  # every face got an occluder
    untouched = masks == 0
    assert np.allclose(x[:, 0][untouched], clean[:, 0][untouched])  # the rest is the face


# ---------------------------------------------------------------- degradations
def test_each_degradation_does_what_it_says(faces):
    rng = np.random.default_rng(0)
    face = faces[3]
    ranges = degrade.TRAIN_RANGES
    for blur in (degrade.defocus, degrade.motion, degrade.small):
        assert _sharpness(blur(face, rng, ranges)) < 0.6 * _sharpness(face), blur.__name__
    noisy = degrade.noise(face, np.random.default_rng(1), replace(ranges, noise_sigma=(15, 15),
                                                                   noise_shot=(0, 0),
                                                                   noise_blur_p=0.0))
    residual = noisy.astype(np.float32) - face
    assert 10 < residual[(face > 30) & (face < 225)].std() < 20
    dark = degrade.exposure(face, rng, replace(ranges, p_bright=0.0, dark_gain=(0.3, 0.3),
                                               dark_gamma=(1.0, 1.0)))
    assert abs(dark.mean() - 0.3 * face.mean()) < 2.0
    bright = degrade.exposure(face, rng, replace(ranges, p_bright=1.0, bright_gain=(1.8, 1.8)))
    assert (bright == 255).mean() > (face == 255).mean()
    coded = degrade.jpeg(face, rng, replace(ranges, jpeg_quality=(6, 6)))
    diff = np.abs(np.diff(coded.astype(np.float32), axis=1))
    at_block_edges = diff[:, 7::8].mean()
    inside = np.delete(diff, np.s_[7::8], axis=1).mean()
    assert at_block_edges > 1.3 * inside  # 8x8 block boundaries: what JPEG leaves
    assert degrade.apply(face, (), rng) is face


def test_training_degradations_are_drawn_per_face_and_seeded(faces):
    cfg = degrade.DegradeConfig(p=1.0)
    out1 = [degrade.random_degradation(f, np.random.default_rng(i), cfg) for i, f in
            enumerate(faces[:20])]
    out2 = [degrade.random_degradation(f, np.random.default_rng(i), cfg) for i, f in
            enumerate(faces[:20])]
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(out1, out2))
    assert all(1 <= len(kinds) <= 3 for _, kinds in out1)
    assert len({k for _, kinds in out1 for k in kinds}) >= 5  # the families are all used
    face = faces[0]
    image, kinds = degrade.random_degradation(face, np.random.default_rng(0),
                                              degrade.DegradeConfig(p=0.0))
    assert image is face and kinds == ()


def test_degraded_test_sets_are_written_and_scored(ferplus_root, tmp_path):
    from tests.app_support import export_resnet18, mini_ferplus
    from training.evaluate import evaluate
    from training.occlusion import write_test_sets

    mini = mini_ferplus(ferplus_root, tmp_path / "mini", 24)
    written = write_test_sets(mini, tmp_path / "sets", ["small", "degraded"], progress=False)
    for kind, root in written.items():
        assert not (root / "masks").exists()  # nothing is hidden by a camera
        names = sorted(p.name for p in (root / "FER2013Test").glob("*.png"))
        assert len(names) == 24
        a = cv2.imread(str(root / "FER2013Test" / names[0]), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(mini / "FER2013Test" / names[0]), cv2.IMREAD_GRAYSCALE)
        assert a.shape == b.shape and not np.array_equal(a, b)
    model = export_resnet18(tmp_path / "m.onnx", ferplus_root, classes=CLASSES,
                            spec=SPEC.to_manifest())
    report = evaluate(model, "ferplus", mini, "test", occlusion="small",
                      occlusion_dir=tmp_path / "sets", report_dir=tmp_path / "rep",
                      build_occluded=False)
    assert report["occlusion"] == "small" and report["n"] > 0
    assert 0.0 <= report["ece"] <= 100.0
    assert (tmp_path / "rep" / "reliability.png").is_file()


# ---------------------------------------------------------------- targets
def test_vote_distribution_targets_are_the_annotators_votes(ferplus_root):
    split = load_split("ferplus", ferplus_root, "valid", "crossentropy")
    arrays = SplitArrays(split.images[:40], split.labels[:40], split.soft_labels[:40],
                         split.classes, "valid")
    source = BatchSource(arrays, SPEC, None, False, 0, "crossentropy")
    x, target = source[(0, tuple(range(8)))]
    assert target.shape == (8, len(split.classes))
    assert torch.allclose(target.sum(1), torch.ones(8))
    assert torch.allclose(target, torch.from_numpy(split.soft_labels[:8]))


def test_distillation_targets_are_the_teachers_on_the_clean_face(ferplus_root, tmp_path):
    from tests.app_support import export_resnet18
    from training.distill import mix_targets, teacher_targets

    classes = CLASSES
    teacher = export_resnet18(tmp_path / "teacher.onnx", ferplus_root, classes=classes,
                              spec=SPEC.to_manifest())
    split = load_split("ferplus", ferplus_root, "train", "crossentropy")
    images, names = split.images[:48], list(split.names[:48])
    targets, note = teacher_targets([str(teacher)], images, names, classes,
                                    progress=False, cache=tmp_path / "cache")
    session = create_session(teacher, "cpu")
    x = prepare_batch(list(images), SPEC)
    direct = (session.run(["probs"], {"input": x})[0]
              + session.run(["probs"], {"input": x[..., ::-1].copy()})[0]) / 2
    assert np.allclose(targets, direct, atol=1e-5)  # the teacher's output on the clean faces
    assert "teacher" in note
    cached, _ = teacher_targets([str(teacher)], images, names, classes, progress=False,
                                cache=tmp_path / "cache")
    assert np.array_equal(cached, targets) and len(list((tmp_path / "cache").glob("*.npy"))) == 1
    arrays = SplitArrays(images, split.labels[:48], split.soft_labels[:48], classes, "train")
    source = BatchSource(arrays, SPEC, None, False, 0, "crossentropy")
    source.teacher, source.distill_weight = targets, 0.5
    _, target = source[(0, tuple(range(6)))]
    expected = mix_targets(split.soft_labels[:6], targets[:6], 0.5)
    assert np.allclose(target.numpy(), expected)
    assert np.allclose(target.numpy(), 0.5 * split.soft_labels[:6] + 0.5 * targets[:6])


# ---------------------------------------------------------------- post-hoc
def test_logit_adjustment_and_temperature_fitted_on_real_validation_logits(ferplus_root,
                                                                           tmp_path):
    from app import REPO_ROOT

    model = REPO_ROOT / "assets" / "models" / "resnet18_fast.onnx"
    split = load_split("ferplus", ferplus_root, "valid", "majority")
    session = create_session(model, "cpu")
    probs = np.concatenate([session.run(["probs"], {"input": prepare_batch(
        list(split.images[s:s + 512]), SPEC)})[0] for s in range(0, 1536, 512)])
    labels = split.labels[:1536]
    logits = np.log(np.clip(probs, 1e-12, 1))  # the network's logits up to a constant
    train = load_split("ferplus", ferplus_root, "train", "majority")
    prior = class_prior(None, train.labels, len(split.classes))
    assert prior.argmax() == split.classes.index("neutral") and np.isclose(prior.sum(), 1)
    cal = fit_calibration(logits, labels, prior, split.classes, "test prior")
    assert cal.tau_table[0]["tau"] == 0.0
    assert np.isclose(cal.tau_table[0]["accuracy"], (probs.argmax(1) == labels).mean() * 100)
    chosen = max(r["accuracy"] + r["macro_f1"] for r in cal.tau_table)
    assert np.isclose(cal.valid["after"]["accuracy"] + cal.valid["after"]["macro_f1"], chosen)
    adjusted = logits - cal.tau * np.log(prior)
    assert nll(adjusted, labels, cal.temperature) <= nll(adjusted, labels, 1.0) + 1e-9
    rare = [split.classes.index(c) for c in ("disgust", "contempt")]
    full = (logits - 1.0 * np.log(prior)).argmax(1)
    assert np.isin(full, rare).sum() > np.isin(logits.argmax(1), rare).sum()
    ece = expected_calibration_error(softmax(adjusted / cal.temperature), labels)
    assert sum(b["count"] for b in ece["bins"]) == len(labels)


def test_the_export_carries_the_posthoc_step_and_mirror_averaging_is_symmetric(tmp_path,
                                                                               faces):
    from exporters.classifier import PostHoc, export_classifier
    from models import create_model

    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=8, small_input=True, stem_stride=2, width=8).eval()
    bias = tuple(float(v) for v in np.linspace(-1, 1, 8))
    plain = export_classifier(net, SPEC, [f"c{i}" for i in range(8)], tmp_path / "plain.onnx",
                              verify_images=list(faces[:8]))
    post = export_classifier(net, SPEC, [f"c{i}" for i in range(8)], tmp_path / "post.onnx",
                             verify_images=list(faces[:8]),
                             posthoc=PostHoc(logit_bias=bias, temperature=1.7, flip_tta=True))
    x = prepare_batch(list(faces[:8]), SPEC)
    mirrored = x[..., ::-1].copy()
    p_plain = create_session(plain, "cpu").run(["probs"], {"input": x})[0]
    p_plain_m = create_session(plain, "cpu").run(["probs"], {"input": mirrored})[0]
    session = create_session(post, "cpu")
    p_post = session.run(["probs"], {"input": x})[0]
    assert np.allclose(p_post, session.run(["probs"], {"input": mirrored})[0], atol=1e-5)
    logits = (np.log(p_plain) + np.log(p_plain_m)) / 2  # up to a per-row constant
    assert np.allclose(p_post, softmax((logits + np.array(bias)) / 1.7), atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["posthoc"]) == {"logit_bias": list(bias), "temperature": 1.7,
                                           "flip_tta": True}


def test_the_trainer_fits_its_temperature_on_clean_and_shifted_validation(ferplus_root, tmp_path):
    """The temperature a trained model ships with is the NLL minimum over its clean validation
    faces (half the weight) and their occluded/degraded copies (the other half), the copies
    being the validation faces themselves, in order, with their labels."""
    from models import create_model
    from training.calibration import shift_weights
    from training.evaluate import VALID_COPIES_SEED
    from training.occlusion import EVALUATED_SETS
    from training.trainer import choose_posthoc, shifted_validation, wrapper_logits

    split = load_split("ferplus", ferplus_root, "valid", "majority")
    valid = SplitArrays(split.images[:48], split.labels[:48], None, split.classes,
                        "ferplus valid", list(split.names)[:48])
    shifted = shifted_validation("ferplus", ferplus_root, valid)
    assert [k for k, _, _ in shifted] == list(EVALUATED_SETS) and VALID_COPIES_SEED == 1
    for kind, images, labels in shifted:
        assert images.shape == valid.images.shape and np.array_equal(labels, valid.labels)
        assert not np.array_equal(images, valid.images), kind
    assert shifted_validation("ferplus", ferplus_root, replace(valid, source="ferplus train "
                                                               "(held-out 10%)")) == []

    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=8, small_input=True, stem_stride=2, width=8).eval()
    recipe = replace(TINY, flip_tta="off")
    prior = np.full(8, 1 / 8)
    posthoc, calibration, _ = choose_posthoc(net, valid, SPEC, recipe, prior, CLASSES, shifted)
    assert calibration.tau == 0.0 or calibration.tau > 0  # chosen on the clean faces alone
    parts = [wrapper_logits(net, valid.images, SPEC, flip=False)] + [
        wrapper_logits(net, images, SPEC, flip=False) for _, images, _ in shifted]
    adjusted = [z - calibration.tau * np.log(prior) for z in parts]
    z, y = np.concatenate(adjusted), np.concatenate([valid.labels] * len(parts))
    w = shift_weights([len(valid.labels)] * len(parts))
    t = calibration.temperature
    assert posthoc.temperature == t
    assert nll(z, y, t, w) <= min(nll(z, y, t * 1.02, w), nll(z, y, t / 1.02, w)) + 1e-12
    assert calibration.valid["shifted"]["sets"] == len(EVALUATED_SETS)
    assert calibration.valid["shifted"]["n"] == len(EVALUATED_SETS) * len(valid.labels)
    clean_only = fit_calibration(parts[0], valid.labels, prior, CLASSES, "p")
    assert "shifted" not in clean_only.valid
