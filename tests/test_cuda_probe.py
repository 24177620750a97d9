"""The CUDA probe: a real tiny ONNX session that proves CUDA loads, or says exactly why not."""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort
import pytest

from app.errors import OccluferError
from app.runtime import cuda_probe, providers
from app.runtime.cuda_probe import (CUDA, probe_cuda, probe_input, probe_model, probe_weights,
                                    preload_cuda_libraries)


def _conv_then_matmul(x: np.ndarray) -> np.ndarray:
    weight, matrix = probe_weights()
    image = x[0, 0]
    conv = np.array([[[(image[i:i + 3, j:j + 3] * weight[k, 0]).sum() for j in range(6)]
                      for i in range(6)] for k in range(weight.shape[0])], np.float64)
    return (conv @ matrix)[None]


def test_the_probe_model_is_valid_onnx_that_computes_conv_then_matmul():
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load_from_string(probe_model()), full_check=True)
    session = ort.InferenceSession(probe_model(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": probe_input()})[0]
    assert got.shape == (1, 2, 6, 6)
    np.testing.assert_allclose(got, _conv_then_matmul(probe_input()), rtol=1e-5, atol=1e-5)


def test_the_probe_runs_on_cuda_or_names_what_is_missing_and_the_fix():
    probe = probe_cuda()
    if probe.loads:
        assert probe.providers[0] == CUDA and probe.max_abs_diff_vs_cpu < 1e-3
        assert probe.reason == "" and probe.gpus
        return
    assert probe.providers[:1] != [CUDA] and probe.reason and probe.fix
    if CUDA not in ort.get_available_providers():
        assert "no CUDA provider" in probe.reason
        return
    if probe.driver_cuda is None:  # this machine: no NVIDIA driver at all
        assert "no NVIDIA driver" in probe.reason
        assert cuda_probe.MIN_DRIVER["Linux"] in probe.fix or cuda_probe.MIN_DRIVER["Windows"] in probe.fix
    for name in probe.missing:  # every library it names really does not load
        assert name in probe.reason
        with pytest.raises(OSError):
            ctypes.CDLL(name)
    if probe.missing:
        assert f"onnxruntime-gpu[cuda,cudnn]=={ort.__version__}" in probe.fix


def test_a_failed_cuda_session_says_the_probes_reason_and_fix(retinaface_onnx):
    probe = probe_cuda()
    if probe.loads:
        session = providers.create_session(retinaface_onnx, device="cuda")
        assert session.get_providers()[0] == CUDA
        return
    with pytest.raises(OccluferError) as failure:
        providers.create_session(retinaface_onnx, device="cuda")
    message = str(failure.value)
    assert "CUDA was requested but cannot be used" in message
    assert probe.reason in message and f"Fix: {probe.fix}" in message
    # auto falls back to the CPU and keeps the same reason for the app's greyed-out switch
    assert providers.session_provider(providers.create_session(retinaface_onnx, "auto")) == "CPU"
    assert providers.cuda_status().usable is False and probe.reason in providers.cuda_status().reason


def test_preloading_runs_once_and_prints_nothing(capsys):
    first = preload_cuda_libraries()
    assert preload_cuda_libraries() is first
    assert capsys.readouterr().out == ""


def test_cuda_options_default_env_and_overrides(monkeypatch):
    monkeypatch.delenv("OCCLUFER_CUDNN_CONV_SEARCH", raising=False)
    monkeypatch.delenv("OCCLUFER_TENSORRT", raising=False)
    options = providers.cuda_provider_options()
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    monkeypatch.setenv("OCCLUFER_CUDNN_CONV_SEARCH", "EXHAUSTIVE")
    assert providers.cuda_provider_options()["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert providers.cuda_provider_options({"device_id": "1"})["device_id"] == "1"
    # TensorRT is never used unless asked for, and only when its libraries load
    chain = providers._gpu_providers(None)
    assert [p if isinstance(p, str) else p[0] for p in chain] == [CUDA, "CPUExecutionProvider"]
    monkeypatch.setenv("OCCLUFER_TENSORRT", "1")
    first = providers._gpu_providers(None)[0]
    assert (first[0] == cuda_probe.TENSORRT) == cuda_probe.tensorrt_loads()
