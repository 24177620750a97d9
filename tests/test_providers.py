"""Session factory: the provider a model really runs on, and damaged model files."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from app.errors import ModelIntegrityError, OccluferError
from app.runtime.providers import create_session, cuda_status, session_provider


def test_cpu_session_reports_cpu_and_threads(retinaface_onnx):
    session = create_session(retinaface_onnx, device="cpu", threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session_provider(session) == "CPU"
    assert session.get_session_options().intra_op_num_threads == 1


def test_auto_reports_the_provider_that_really_runs(retinaface_onnx):
    session = create_session(retinaface_onnx, device="auto")
    # whatever was asked for, the answer is what onnxruntime actually uses
    assert session_provider(session) == session.get_providers()[0].replace("ExecutionProvider", "")
    if "CUDAExecutionProvider" not in session.get_providers():
        assert cuda_status().usable is False and cuda_status().reason


def test_forcing_cuda_either_runs_on_cuda_or_says_why(retinaface_onnx):
    try:
        session = create_session(retinaface_onnx, device="cuda")
    except OccluferError as exc:
        assert "CUDA" in str(exc)
        assert "CUDAExecutionProvider" not in ort.get_available_providers() or \
            cuda_status().usable is False
    else:
        assert session_provider(session) == "CUDA"


def test_truncated_model_is_a_clear_error(retinaface_onnx, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(retinaface_onnx.read_bytes()[:50_000])
    with pytest.raises(ModelIntegrityError, match="damaged or not an ONNX model"):
        create_session(broken, device="cpu")


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(ModelIntegrityError, match="not found"):
        create_session(tmp_path / "nope.onnx", device="cpu")
    text = tmp_path / "readme.onnx"
    text.write_text("this is not a model")
    with pytest.raises(ModelIntegrityError):
        create_session(text, device="cpu")
    with pytest.raises(OccluferError, match="Unknown device"):
        create_session(text, device="tpu")  # type: ignore[arg-type]


def test_sessions_do_not_spin_unless_asked(retinaface_onnx, monkeypatch):
    """Idle intra-op threads must not spin: the pipeline's sessions run one after another on
    the same cores (BENCHMARKS.md: 12.7 -> 42 fps on 2 cores)."""
    from app.runtime.providers import _options

    assert _options(2, True).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("OCCLUFER_SPIN", "1")
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ort's default
        _options(2, True).get_session_config_entry("session.intra_op.allow_spinning")
    monkeypatch.delenv("OCCLUFER_SPIN")
    session = create_session(retinaface_onnx, "cpu", 2)
    assert session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
