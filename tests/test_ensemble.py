"""`exporters.ensemble` / `training.ensemble`: shipped models averaged into one ONNX file,
checked on real FERPlus faces against the members' own onnxruntime sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.pipeline.preprocess import InputSpec, prepare_batch
from exporters.ensemble import EnsembleError, Member, build_ensemble, read_member, verify_ensemble
from training.data import load_split
from training.distill import raw_posterior

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "assets" / "models"
RESNET = Member("resnet18_cpu", MODELS / "resnet18_cpu.onnx")        # 3x3 CAM, mirror in graph
MASK_AWARE = Member("mask_aware_cpu", MODELS / "mask_aware_cpu.onnx")  # 6x6 CAM, occlusion map
ORSANET = Member("orsanet_fast", MODELS / "orsanet_fast.onnx")       # takes priors


@pytest.fixture(scope="module")
def faces(ferplus_root: Path) -> np.ndarray:
    return load_split("ferplus", ferplus_root, "valid", "majority").images[:48]


def _run(path: Path, faces: np.ndarray, outputs=("probs", "cam")) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = InputSpec.from_manifest(json.loads(session.get_modelmeta().custom_metadata_map["input"]))
    return session.run(list(outputs), {"input": prepare_batch(list(faces), spec)})


def test_one_member_with_its_own_posthoc_is_that_member(faces, tmp_path):
    """Undoing a member's post-hoc step and applying it again gives back its probabilities:
    the graph's arithmetic, checked against the shipped file itself."""
    for member in (RESNET, MASK_AWARE):
        info = read_member(member)
        out = build_ensemble([member], tmp_path / f"{member.name}.onnx",
                             logit_bias=info.logit_bias, temperature=info.temperature,
                             name="one")
        want_probs, want_cam = _run(member.path, faces)
        got_probs, got_cam = _run(out, faces)
        np.testing.assert_allclose(got_probs, want_probs, atol=2e-5)
        np.testing.assert_allclose(got_cam, want_cam / (want_cam.max(axis=(2, 3), keepdims=True)
                                                        + 1e-6), atol=1e-4)


def test_mirrored_member_averages_the_face_and_its_mirror_image(faces, tmp_path):
    member = Member(MASK_AWARE.name, MASK_AWARE.path, mirror=True)
    out = build_ensemble([member], tmp_path / "mirror.onnx", logit_bias=None, temperature=1.0,
                         name="mirror")
    info = read_member(member)
    posthoc = {"logit_bias": list(info.logit_bias), "temperature": info.temperature}
    plain = _run(MASK_AWARE.path, faces, ("probs", "occlusion"))
    mirrored = _run(MASK_AWARE.path, faces[..., ::-1].copy(), ("probs", "occlusion"))
    z = (np.log(raw_posterior(plain[0], posthoc)) + np.log(raw_posterior(mirrored[0], posthoc))) / 2
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    got_probs, got_occlusion = _run(out, faces, ("probs", "occlusion"))
    np.testing.assert_allclose(got_probs, want, atol=2e-5)
    # the mirror view's occlusion map is flipped back before it is averaged
    np.testing.assert_allclose(got_occlusion, (plain[1] + mirrored[1][..., ::-1]) / 2, atol=1e-5)
    assert not np.allclose(got_probs, plain[0], atol=1e-3)  # the mirror image really counted


def test_two_members_verified_cam_on_the_largest_grid(faces, tmp_path):
    out = build_ensemble([RESNET, MASK_AWARE], tmp_path / "pair.onnx", logit_bias=[0.1] * 8,
                         temperature=0.8, name="pair", verify_images=list(faces))
    probs, cam, occlusion = _run(out, faces, ("probs", "cam", "occlusion"))
    assert probs.shape == (48, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert cam.shape == (48, 8, 6, 6) and cam.min() >= 0 and cam.max() <= 1
    assert occlusion.shape == (48, 12, 12)
    members = json.loads(ort.InferenceSession(str(out)).get_modelmeta()
                         .custom_metadata_map["members"])
    assert [m["name"] for m in members] == ["resnet18_cpu", "mask_aware_cpu"]
    # the verification really compares: another temperature than the file's is caught
    infos = [read_member(RESNET), read_member(MASK_AWARE)]
    with pytest.raises(EnsembleError, match="disagrees"):
        verify_ensemble(out, infos, list(faces), logit_bias=np.full(8, 0.1), temperature=1.3)


def test_members_it_cannot_take_are_refused(tmp_path):
    with pytest.raises(EnsembleError, match="priors"):
        build_ensemble([RESNET, ORSANET], tmp_path / "x.onnx", logit_bias=None,
                       temperature=1.0, name="x")
    with pytest.raises(EnsembleError, match="twice"):
        build_ensemble([RESNET, RESNET], tmp_path / "x.onnx", logit_bias=None,
                       temperature=1.0, name="x")
    assert not (tmp_path / "x.onnx").exists()


def test_make_ensemble_fits_scores_cards_and_registers(ferplus_root, tmp_path):
    """The whole command on a slice of real data: a card, a manifest entry, and a model the
    app's expression stage loads like any other."""
    from app.pipeline.expression import ExpressionClassifier
    from app.runtime.store import ModelStore
    from training.ensemble import make_ensemble

    manifest = tmp_path / "assets" / "manifest.json"
    final = make_ensemble("ens_test", [str(RESNET.path), str(MASK_AWARE.path)], ferplus_root,
                          out_dir=tmp_path / "run", manifest=manifest, val_limit=256,
                          test_limit=64, occlusion_dir=tmp_path / "no_sets")
    card = (tmp_path / "assets" / "cards" / "ens_test.md").read_text()
    assert "## Members" in card and "`resnet18_cpu`" in card and "FERPlus test (clean)" in card
    assert "python -m training.ensemble --name ens_test" in card
    entry = json.loads(manifest.read_text())["models"]["ens_test"]
    assert entry["task"] == "expression" and entry["metrics"]["clean"]["n"] == 64
    store = ModelStore(root=tmp_path / "home", manifest=manifest)
    classifier = ExpressionClassifier.from_store("ens_test", store, device="cpu")
    faces = load_split("ferplus", ferplus_root, "test", "majority").images[:4]
    probs, cam, extras = classifier.run(list(faces))
    assert probs.shape == (4, 8) and cam.shape == (4, 8, 6, 6) and "occlusion" in extras
    posthoc = json.loads(ort.InferenceSession(str(final)).get_modelmeta()
                         .custom_metadata_map["posthoc"])
    assert posthoc["temperature"] != 1.0  # fitted on validation, folded into the graph


def test_the_shipped_ensemble_is_what_the_committed_code_builds(faces, tmp_path):
    """Reproducibility of `ensemble_cpu`'s card: its members (by sha256) and post-hoc step,
    read from the shipped file, rebuilt by today's exporter, give the shipped probabilities."""
    from app.runtime.store import ModelStore

    shipped = MODELS / "ensemble_cpu.onnx"
    meta = ort.InferenceSession(str(shipped)).get_modelmeta().custom_metadata_map
    store = ModelStore()
    members = []
    for m in json.loads(meta["members"]):
        path = store.path(m["name"])
        info = read_member(Member(m["name"], path))
        assert info.sha256 == m["sha256"], f"{m['name']} is not the file the ensemble was built from"
        members.append(Member(m["name"], path, mirror=m["mirror"] and not info.in_graph_flip))
    posthoc = json.loads(meta["posthoc"])
    rebuilt = build_ensemble(members, tmp_path / "again.onnx", logit_bias=posthoc["logit_bias"],
                             temperature=posthoc["temperature"], name="ensemble_cpu")
    for want, got in zip(_run(shipped, faces, ("probs", "cam", "occlusion")),
                         _run(rebuilt, faces, ("probs", "cam", "occlusion"))):
        np.testing.assert_allclose(got, want, atol=1e-6)
