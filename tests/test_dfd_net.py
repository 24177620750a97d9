"""DFD-Net (seed 002) on real FERPlus faces: module shapes at the paper's and the fast sizes,
the gradient reversal and mutual-information losses pulling the right ways, the two training
stages touching the right parameters, export parity of the expression branch, and a short
run through the real trainer (EIFE stage, then expression stage, then export + evaluation)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.providers import create_session
from exporters import classifier as exporter
from models import create_model, list_models
from models.dfd_net import (PROXY_BINS, RAFDB_ATTRIBUTES, AttributeEncoder, DFDNet,
                            gamma_schedule, grad_reverse, photometric_attributes, pool_to,
                            save_eife)
from models.preact_resnet import preact_resnet18
from training.data import load_split
from training.data.classes import EMOTIONS8
from training.recipes import get_recipe
from training.trainer import train

FAST = dict(width=8, small_input=True, stem_stride=2)  # the fast layout, narrow for tests
SPEC = InputSpec(size=48)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These networks are a few MFLOPs: on a shared 2-core machine torch's second thread
    spends far more time waiting on the other one than it saves (measured 50x slower steps
    under load), so this module runs single-threaded and restores the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def valid(ferplus_root: Path):
    return load_split("ferplus", ferplus_root, "valid", "majority")


@pytest.fixture(scope="module")
def batch(valid) -> tuple[torch.Tensor, torch.Tensor]:
    """64 real FERPlus validation faces at 48 px and their majority labels."""
    x = torch.from_numpy(prepare_batch(list(valid.images[:64]), SPEC))
    return x, torch.from_numpy(valid.labels[:64])


def expression_params(model: DFDNet) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if not n.startswith(("eifes", "mips"))}


# --------------------------------------------------------------------------- shapes
def test_registered_with_recipes():
    assert "dfd_net" in list_models()
    for name in ("paper", "fast", "cpu"):
        recipe = get_recipe("dfd_net", name)
        assert 0.0 < recipe.model_cfg["eife_fraction"] < 0.5 and recipe.optimizer == "adamw"
    fast, cpu = get_recipe("dfd_net", "fast"), get_recipe("dfd_net", "cpu")
    # both stages tripled: the proxy EIFE keeps its share of the run, the expression stage 42
    assert cpu.epochs == 3 * fast.epochs == 45
    assert cpu.model_cfg["eife_fraction"] == pytest.approx(fast.model_cfg["eife_fraction"])
    assert cpu.epochs * (1 - cpu.model_cfg["eife_fraction"]) == pytest.approx(42)
    assert cpu.label_mode == "crossentropy" and cpu.posthoc and cpu.augment.degrade.p > 0
    assert "42 expression epochs" in cpu.description and "3 epochs" in cpu.description
    paper = get_recipe("dfd_net", "paper")
    assert paper.size == 90 and paper.betas == (0.5, 0.999) and paper.cosine_epochs == 100
    assert paper.batch_size == 128 and paper.epochs - 10 == 60 and paper.lr == 5e-4


@pytest.mark.parametrize("size,cfg,maps", [
    (90, dict(width=8), [23, 12, 6, 3]),  # the paper: ImageNet stem at 90 px
    (48, FAST, [24, 12, 6, 3]),  # fast: 3x3 stride-2 stem at 48 px
])
def test_preact_stages_fusion_and_attention_shapes(size, cfg, maps, valid):
    torch.manual_seed(0)
    x = torch.from_numpy(prepare_batch(list(valid.images[:4]), InputSpec(size=size)))
    trunk = preact_resnet18(**cfg).eval()
    with torch.no_grad():
        stages = trunk.stages(x)
    assert [tuple(f.shape[1:]) for f in stages] == [
        (8 * 2 ** i, s, s) for i, s in enumerate(maps)]
    assert float(stages[-1].min()) >= 0.0  # final BN-ReLU of the pre-activation trunk
    pooled = [pool_to(f, (3, 3)) for f in stages[:3]]
    assert all(p.shape[-2:] == (3, 3) for p in pooled)
    # max-pooling keeps the maximum: the global max survives the reduction (Eq. 3)
    assert torch.allclose(pooled[0].amax((2, 3)), stages[0].amax((2, 3)))

    model = create_model("dfd_net", num_classes=8, **cfg).eval()
    with torch.no_grad():
        *shallow, deep = model.branch.backbone.stages(x)
        selected, mask = model.branch.attention(shallow, deep)
        logits, evidence = model.logits_and_cam(x)
        out = model(x)
    assert mask.shape == deep.shape == selected.shape == (4, 64, 3, 3)
    assert float(mask.min()) > 0.0 and float(mask.max()) < 1.0  # sigmoid mask (Eq. 4)
    assert model.forward_features(x).shape == (4, 64, 3, 3)
    assert logits.shape == (4, 8) and evidence.shape == (4, 8, 3, 3)
    assert torch.allclose(out, logits)
    # Att_out is the global max-pool of h's map; the classifier reads it (Eqs. 5-6)
    assert torch.allclose(model.classifier(selected.amax((2, 3))), out, atol=1e-6)
    # the EIFE and MIP shapes: d_k from the proxy encoder, MIP maps Att_out onto it
    d = model.eifes[0].features(x)
    assert d.shape == (4, 64) and model.mips[0](selected.amax((2, 3))).shape == d.shape


def test_paper_size_parameter_count():
    model = create_model("dfd_net", num_classes=8, width=64)
    exported = sum(p.numel() for p in expression_params(model).values())
    assert 18.0e6 < exported < 19.0e6  # PreAct ResNet-18 11.2 M + attention block ~7.3 M


# --------------------------------------------------------------------------- losses
def test_gamma_schedule_is_the_dann_ramp():
    values = [gamma_schedule(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and abs(values[-1] - (2 / (1 + np.exp(-10)) - 1)) < 1e-12
    assert all(b > a for a, b in zip(values, values[1:]))
    assert abs(gamma_schedule(0.5) - 0.98661429815) < 1e-9


def test_grl_is_identity_forward_and_reverses_scaled_gradients(batch):
    x = batch[0][:8].clone().requires_grad_(True)
    weight = torch.randn_like(x)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    (y * weight).sum().backward()
    assert torch.allclose(x.grad, -0.7 * weight)


def test_mi_loss_gradient_reaches_att_out_reversed(batch):
    """∂L_MI/∂Att_out = -λ ∂L_MI/∂GRL(Att_out) (Eq. 9), with d from the frozen EIFE."""
    torch.manual_seed(1)
    model = create_model("dfd_net", num_classes=8, grl_lambda=0.5, **FAST).train()
    x = batch[0][:32]
    att = model.attention_out(x).detach().requires_grad_(True)
    mi = model.mi_loss(att, x)
    assert mi.ndim == 0 and float(mi.detach()) > 0.0
    mi.backward()
    plain = att.detach().clone().requires_grad_(True)
    with torch.no_grad():
        d = model.eifes[0].features(x)
    F.smooth_l1_loss(model.mips[0](plain), d).backward()
    assert torch.allclose(att.grad, -0.5 * plain.grad, atol=1e-7)
    assert all(p.grad is None for p in model.eifes.parameters())  # EIFE stays frozen


def test_mip_minimises_and_the_expression_branch_maximises_l_mi(batch):
    """The MIP learns to predict d (L_MI falls), while steps on the expression branch along
    the reversed gradient make Att_out *less* predictive (L_MI rises)."""
    torch.manual_seed(2)
    model = create_model("dfd_net", num_classes=8, **FAST).train()
    model.branch.eval()  # fixed BN statistics, so only the parameters change the loss
    x = batch[0][:32]

    def l_mi() -> float:
        with torch.no_grad():
            return float(model.mi_loss(model.attention_out(x), x))

    start = l_mi()
    with torch.no_grad():  # the branch and the EIFE are fixed while the MIP trains
        att, d = model.attention_out(x), model.eifes[0].features(x)
    mip_opt = torch.optim.Adam(model.mips.parameters(), lr=3e-3)
    for _ in range(20):
        mip_opt.zero_grad()
        F.smooth_l1_loss(model.mips[0](model.grl(att)), d).backward()
        mip_opt.step()
    trained = l_mi()
    assert trained < start
    branch_opt = torch.optim.SGD(model.branch.parameters(), lr=0.05)
    for _ in range(3):
        branch_opt.zero_grad()
        model.mi_loss(model.attention_out(x), x).backward()
        branch_opt.step()
    assert l_mi() > trained


def test_proxy_attributes_on_real_faces(batch, valid):
    x = torch.from_numpy(prepare_batch(list(valid.images[:300]), SPEC))
    z = photometric_attributes(x)
    assert z.shape == (300, len(PROXY_BINS)) and z.dtype == torch.int64
    for j in range(len(PROXY_BINS)):  # tercile bins: every class reasonably populated
        share = np.bincount(z[:, j].numpy(), minlength=3) / 300
        assert share.min() > 0.12, (j, share)
    flipped = photometric_attributes(torch.flip(x, dims=[3]))
    assert torch.equal(flipped[:, :2], z[:, :2])  # brightness and contrast ignore a flip
    assert torch.equal(flipped[:, 2], 2 - z[:, 2])  # lateral lighting mirrors
    assert bool((photometric_attributes(x + 0.3)[:, 0] >= z[:, 0]).all())


def test_proxy_eife_learns_attributes_and_its_trunk_unlearns_expression(batch):
    torch.manual_seed(3)
    encoder = AttributeEncoder({k: 3 for k in PROXY_BINS}, width=8, small_input=True,
                               stem_stride=2, expression_classes=8).train()
    x, y = batch[0][:32], batch[1][:32]
    z = photometric_attributes(x)

    def attribute_ce() -> float:
        encoder.eval()
        with torch.no_grad():
            f = encoder.features(x)
            return float(sum(F.cross_entropy(h(f), z[:, j])
                             for j, h in enumerate(encoder.heads.values())))

    start = attribute_ce()
    opt = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    for _ in range(8):
        encoder.train()
        opt.zero_grad()
        loss, logits = encoder.proxy_loss(x, y)
        loss.backward()
        opt.step()
    assert logits.shape == (32, 8)
    assert attribute_ce() < start
    # the expression head's gradient reaches the trunk reversed: compare with a plain head
    encoder.zero_grad()
    f = encoder.features(x)
    F.cross_entropy(encoder.expression_head(encoder.grl(f)), y).backward()
    reversed_grad = encoder.trunk.conv1.weight.grad.clone()
    encoder.zero_grad()
    F.cross_entropy(encoder.expression_head(encoder.features(x)), y).backward()
    assert torch.allclose(reversed_grad, -encoder.trunk.conv1.weight.grad, atol=1e-6)


def test_stages_update_the_right_parameters(batch):
    x, y = batch[0][:16], batch[1][:16]
    model = create_model("dfd_net", num_classes=8, eife_fraction=0.25, **FAST).train()
    model.set_progress(0.1)  # stage 1: the proxy EIFE only
    loss, logits = model.training_loss(x, y, 0.1)
    loss.backward()
    assert logits.shape == (16, 8) and model.last_terms["stage"] == 1.0
    assert all(p.grad is None for p in expression_params(model).values())
    assert all(p.grad is None for p in model.mips.parameters())
    assert all(p.grad is not None for p in model.eifes.parameters())
    model.zero_grad(set_to_none=True)
    model.set_progress(0.25)  # stage 2 starts: γ(0) = 0, so L = CE exactly
    loss, logits = model.training_loss(x, y, 0.1)
    assert model.last_terms["gamma"] == 0.0
    assert torch.allclose(loss, F.cross_entropy(logits, y, label_smoothing=0.1))
    model.set_progress(0.7)
    loss, logits = model.training_loss(x, y, 0.1)
    terms = model.last_terms
    assert terms["stage"] == 2.0 and abs(terms["gamma"] - gamma_schedule(0.6)) < 1e-9
    assert abs(float(loss.detach()) - (terms["cls"] + terms["gamma"] * terms["mi"])) < 1e-4
    loss.backward()
    assert all(p.grad is None for p in model.eifes.parameters())
    assert all(p.grad is not None for n, p in expression_params(model).items()), \
        [n for n, p in expression_params(model).items() if p.grad is None]
    assert all(p.grad is not None for p in model.mips.parameters())


def test_attribute_pretrained_eife_checkpoint_is_loaded_once(batch, tmp_path):
    """The path for users with RAF-DB attributes: an AttributeEncoder trained with Eq. 2
    (labels -1 = missing) is saved and loaded by DFD-Net on its first training step."""
    torch.manual_seed(4)
    x, y = batch[0][:16], batch[1][:16]
    encoder = AttributeEncoder(RAFDB_ATTRIBUTES, width=8, small_input=True, stem_stride=2)
    z = torch.stack([torch.arange(16) % 3, torch.arange(16) % 3, torch.arange(16) % 5], 1)
    z[0, 1] = -1
    loss = encoder.attribute_loss(x, z)
    assert loss.ndim == 0 and float(loss.detach()) > 0.0
    loss.backward()
    path = save_eife(encoder, tmp_path / "eife.pt")
    cfg = dict(num_classes=8, eife="checkpoint", eife_checkpoints=[str(path)],
               eife_attributes=[RAFDB_ATTRIBUTES], **FAST)
    model = create_model("dfd_net", **cfg).train()
    assert int(model.eife_ready) == 0 and model.eife_fraction == 0.0
    model.set_progress(0.0)
    model.training_loss(x, y, 0.0)
    assert int(model.eife_ready) == 1
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(model.eifes[0].state_dict()[key], tensor), key
    rebuilt = create_model("dfd_net", **cfg)
    rebuilt.load_state_dict(model.state_dict())
    path.unlink()  # a rebuilt checkpoint must not need the EIFE file any more
    rebuilt.training_loss(x, y, 0.0)
    with pytest.raises(ValueError, match="one eife_attributes"):
        create_model("dfd_net", eife="checkpoint", eife_checkpoints=["a.pt"])


# --------------------------------------------------------------------------- export
def test_export_parity_of_the_expression_branch(batch, valid, tmp_path):
    torch.manual_seed(5)
    model = create_model("dfd_net", num_classes=8, eife_fraction=0.0, **FAST)
    x, y = batch
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(4):  # non-trivial BN statistics, δ's, PReLU slopes and class weights
        model.set_progress(0.2 + 0.2 * step)
        opt.zero_grad()
        model.training_loss(x, y, 0.0)[0].backward()
        opt.step()
    model.eval()
    faces = list(valid.images[:48])
    out = tmp_path / "dfd.onnx"
    report = exporter.export_classifier_report(model, SPEC, EMOTIONS8, out, model_name="dfd_net",
                                               verify_images=faces)
    assert report.max_abs_diff_probs < 1e-4 and report.max_abs_diff_cam < 1e-4
    session = create_session(out, "cpu")
    xs = prepare_batch(list(valid.images[100:132]), SPEC)
    probs, cam = session.run(["probs", "cam"], {"input": xs})
    with torch.no_grad():
        logits, evidence = model.logits_and_cam(torch.from_numpy(xs))
        ref_probs = F.softmax(logits, 1).numpy()
        ref_cam = F.relu(evidence)
        ref_cam = (ref_cam / (ref_cam.amax((2, 3), keepdim=True) + exporter.CAM_EPS)).numpy()
    assert cam.shape == (32, 8, 3, 3)
    assert np.abs(probs - ref_probs).max() < 1e-4 and np.abs(cam - ref_cam).max() < 1e-4
    assert float(cam.max()) > 0.99  # the strongest location of some class reaches 1
    # only the expression branch is in the graph: no EIFE/EIFP weights were exported
    proto = onnx.load(str(out))
    exported = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    expression = sum(p.numel() for p in expression_params(model).values())
    assert exported < expression * 1.02 < sum(p.numel() for p in model.parameters())
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_name"] == "dfd_net"


# --------------------------------------------------------------------------- trainer
def test_short_run_through_the_trainer(ferplus_root, tmp_path):
    """Two epochs on 128 faces: epoch 1 trains only the proxy EIFE (the expression branch is
    still at its initial weights afterwards), epoch 2 the expression branch with EIFP; the
    run then exports, evaluates and writes its card (not registered)."""
    recipe = replace(get_recipe("dfd_net", "fast"), epochs=2, batch_size=32,
                     model_cfg={**FAST, "eifp": True, "eife": "proxy", "eife_width": 8,
                                "eife_fraction": 0.5})
    settings = dict(limit=128, val_limit=64, test_limit=64, workers=0, progress=False, seed=5,
                    register=False, occlusion_dir=tmp_path / "no-occluded-sets")
    out = tmp_path / "run"
    first = train("dfd_net", "ferplus", ferplus_root, recipe, "cpu", out_dir=out, stop_after=1,
                  **settings)
    after_stage1 = torch.load(first, weights_only=False)["model"]
    torch.manual_seed(5)  # the trainer seeds torch the same way before building the model
    init = create_model("dfd_net", num_classes=8, in_chans=3, **recipe.model_cfg).state_dict()
    expression_keys = [k for k in init if not k.startswith(("eifes", "mips"))
                       and "running" not in k and "num_batches" not in k]
    assert all(torch.equal(after_stage1[k], init[k]) for k in expression_keys)
    assert not torch.equal(after_stage1["eifes.0.trunk.conv1.weight"],
                           init["eifes.0.trunk.conv1.weight"])
    onnx_path = train("dfd_net", "ferplus", ferplus_root, recipe, "cpu", out_dir=out,
                      resume=True, **settings)
    final = torch.load(out / "last.pt", weights_only=False)["model"]
    assert not torch.equal(final["classifier.weight"], init["classifier.weight"])
    assert not torch.equal(final["mips.0.net.0.weight"], init["mips.0.net.0.weight"])
    assert torch.equal(final["eifes.0.trunk.conv1.weight"],
                       after_stage1["eifes.0.trunk.conv1.weight"])  # frozen in stage 2
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert onnx_path == out / "dfd_net_fast.onnx" and onnx_path.is_file()
    report = json.loads((out / "reports" / "test_clean" / "report.json").read_text())
    assert report["n"] == 64
    assert "dfd_net" in (out / "dfd_net_fast.md").read_text()


# --------------------------------------------------------------------------- RAF-DB attributes
def write_rafdb_fixture(root: Path, faces: list[np.ndarray]) -> list[tuple[str, list[int]]]:
    """A tiny RAF-DB basic/ tree in the real layout: EmoLabel list, aligned 100x100 JPEGs and
    `Annotation/manual/<name>_manu_attri.txt` (5 tab-separated landmark lines, then gender,
    race and age, one per line, as RAF-DB's README describes)."""
    import cv2

    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    (root / "Annotation" / "manual").mkdir(parents=True)
    rows, entries = [], []
    for i, face in enumerate(faces):
        name = f"train_{i + 1:05d}.jpg" if i < len(faces) - 4 else f"test_{i + 1:04d}.jpg"
        attributes = [i % 3, (i // 3) % 3, i % 5]
        bgr = cv2.cvtColor(cv2.resize(face, (100, 100)), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"), bgr)
        landmarks = ["36.12\t43.80", "63.95\t43.15", "50.07\t58.64", "38.47\t74.21",
                     "61.66\t73.98"]
        text = "\n".join(landmarks + [str(a) for a in attributes]) + "\n"
        (root / "Annotation" / "manual" / f"{Path(name).stem}_manu_attri.txt").write_text(text)
        rows.append(f"{name} {i % 7 + 1}")
        entries.append((name, attributes))
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(rows) + "\n")
    return entries


def test_rafdb_attribute_reader_and_eife_pretraining(valid, tmp_path, monkeypatch):
    from app.errors import DatasetError
    from training.data.rafdb_attributes import parse_attribute_file, read_attributes
    from training.dfd_eife import pretrain_eife

    monkeypatch.setenv("OCCLUFER_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "basic"
    entries = write_rafdb_fixture(root, list(valid.images[:16]))
    names = [n for n, _ in entries]
    z = read_attributes(root, names)
    assert z.tolist() == [a for _, a in entries] and z.dtype == np.int64
    bad = root / "Annotation" / "manual" / "bad_manu_attri.txt"
    bad.write_text("1\t2\n" * 5 + "0\n1\n7\n")  # age 7 does not exist
    with pytest.raises(DatasetError, match="age 7"):
        parse_attribute_file(bad)
    with pytest.raises(DatasetError, match="missing"):
        read_attributes(tmp_path, names)

    out = pretrain_eife(root, "fast", epochs=1, out=tmp_path / "eife.pt", progress=False)
    info = json.loads((tmp_path / "eife.pt.json").read_text())
    assert info["train_images"] == 12 and set(info["test_accuracy"]) == set(RAFDB_ATTRIBUTES)
    cfg = {**get_recipe("dfd_net", "fast_rafdb").model_cfg, "eife_checkpoints": [str(out)],
           "eife_width": 4, "width": 8}
    with pytest.raises(RuntimeError):  # the EIFE must match the recipe it was trained for
        create_model("dfd_net", num_classes=8, **cfg).training_loss(
            torch.zeros(2, 3, 48, 48), torch.zeros(2, dtype=torch.long))
    cfg["eife_width"] = 16  # fast's EIFE width
    model = create_model("dfd_net", num_classes=8, **cfg).train()
    model.set_progress(0.5)
    x = torch.from_numpy(prepare_batch(list(valid.images[:8]), SPEC))
    loss, _ = model.training_loss(x, torch.from_numpy(valid.labels[:8]), 0.1)
    assert int(model.eife_ready) == 1 and model.last_terms["mi"] > 0.0 and loss.requires_grad
