"""The shared attention modules (CBAM, Coordinate Attention, Shuffle Attention): shapes on
square and non-square maps, the gates' ranges and the papers' initial states, and ONNX parity
of each module on its own."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from models.attention import (CBAM, ChannelGate, CoordinateAttention, ShuffleAttention,
                              SpatialGate, channel_shuffle)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", [(2, 32, 14, 14), (2, 32, 7, 14), (1, 64, 3, 5)])
@pytest.mark.parametrize("make", [lambda c: CBAM(c), lambda c: CoordinateAttention(c),
                                  lambda c: ShuffleAttention(c, groups=8)],
                         ids=["cbam", "coordinate", "shuffle"])
def test_every_module_keeps_the_shape_on_square_and_non_square_maps(make, shape):
    module = make(shape[1])
    x = torch.randn(*shape)
    module.train()
    out = module(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()  # every module is differentiable end to end
    module.eval()
    with torch.no_grad():
        assert module(x).shape == x.shape


def test_cbam_gates_lie_in_zero_one_and_apply_channel_then_spatial():
    cbam = CBAM(32).eval()
    x = torch.randn(3, 32, 9, 11)
    with torch.no_grad():
        channel = cbam.channel.gate(x)
        assert channel.shape == (3, 32, 1, 1)
        spatial = cbam.spatial.gate(x * channel)
        assert spatial.shape == (3, 1, 9, 11)
        for gate in (channel, spatial):
            assert float(gate.min()) > 0.0 and float(gate.max()) < 1.0
        assert torch.allclose(cbam(x), x * channel * spatial, atol=1e-6)
    # reduction 16 as in the paper; narrow layers keep at least one hidden unit
    assert cbam.channel.mlp[0].out_channels == 2
    assert ChannelGate(8).mlp[0].out_channels == 1
    assert SpatialGate().conv.kernel_size == (7, 7)


def test_coordinate_attention_gates_one_per_axis_and_default_width():
    ca = CoordinateAttention(64).eval()
    assert ca.conv1.out_channels == 8  # max(8, 64 // 32)
    assert CoordinateAttention(512).conv1.out_channels == 16
    x = torch.randn(2, 64, 7, 14)
    with torch.no_grad():
        a_h, a_w = ca.gates(x)
        assert a_h.shape == (2, 64, 7, 1) and a_w.shape == (2, 64, 1, 14)
        assert torch.allclose(ca(x), x * a_h * a_w, atol=1e-6)
    # the gates depend on the position along each axis: a feature at one row lifts that row
    bump = torch.zeros(1, 64, 8, 8)
    bump[:, :, 2, :] = 5.0
    ca.train()
    ca(torch.randn(4, 64, 8, 8))  # non-trivial BN statistics
    ca.eval()
    with torch.no_grad():
        a_h, _ = ca.gates(bump)
    assert not torch.allclose(a_h[:, :, 2], a_h[:, :, 5])


def test_shuffle_attention_starts_as_a_scaled_channel_shuffle():
    # SA-Net initialises both gates' scales at 0 and shifts at 1: every gate is sigmoid(1)
    sa = ShuffleAttention(64, groups=8).eval()
    x = torch.randn(2, 64, 5, 6)
    with torch.no_grad():
        out = sa(x)
    assert torch.allclose(out, channel_shuffle(x, 2) * torch.sigmoid(torch.tensor(1.0)),
                          atol=1e-6)
    # the shuffle is the ShuffleNet permutation: channel 1 of the output is channel C/2
    assert torch.equal(channel_shuffle(x, 2)[:, 1], x[:, 32])
    with pytest.raises(ValueError, match="divisible"):
        ShuffleAttention(40, groups=8)


def test_shuffle_attention_learned_gates_act_per_group_half():
    sa = ShuffleAttention(32, groups=2)
    with torch.no_grad():
        sa.cweight.fill_(2.0)
        sa.sweight.fill_(-3.0)
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        out = sa(x)
        # undo the final shuffle, then group g's channel half is x * sigmoid(2 * mean + 1)
        unshuffled = channel_shuffle(out, 16)
        first_half = x[:, :8]
        expected = first_half * torch.sigmoid(2.0 * first_half.mean((2, 3), keepdim=True) + 1)
    assert torch.allclose(unshuffled[:, :8], expected, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: CBAM(32), lambda: CoordinateAttention(32),
                                  lambda: ShuffleAttention(32, groups=8)],
                         ids=["cbam", "coordinate", "shuffle"])
def test_each_module_exports_to_onnx_with_a_dynamic_batch(make, tmp_path):
    import onnxruntime as ort

    module = make()
    module.train()
    module(torch.randn(8, 32, 6, 10))  # BN running statistics away from their defaults
    module.eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter, as exporters/classifier.py
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 32, 6, 10),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, 32, 6, 10)
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(["y"], {"x": x.numpy()})[0]
        assert np.abs(got - expected).max() < 1e-5


def test_modules_are_plain_nn_modules():
    for module in (CBAM(16), CoordinateAttention(16), ShuffleAttention(16, groups=8)):
        assert isinstance(module, nn.Module)
        assert sum(p.numel() for p in module.parameters()) > 0
