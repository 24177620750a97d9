"""The one place where onnxruntime sessions are made.

onnxruntime-gpu lists `CUDAExecutionProvider` as available even on machines without CUDA
libraries; a session asked for CUDA then logs an error and quietly runs on the CPU. So the
truth is taken from `session.get_providers()` after creation, never from the list of
available providers, and a failed CUDA attempt is remembered so later sessions do not retry.

Before the first CUDA session the CUDA/cuDNN libraries that `pip install -e '.[cuda]'` brings
(onnxruntime-gpu[cuda,cudnn]) are loaded with `onnxruntime.preload_dlls()`: they live in
site-packages, where the loader would not look. When CUDA still does not load, the reason and
the fix come from `cuda_probe.diagnose` (the driver, or the exact libraries missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from app.errors import ModelIntegrityError, OccluferError
from app.runtime.cuda_probe import TENSORRT, diagnose, preload_cuda_libraries, tensorrt_loads

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_cuda_failure: str | None = None  # why CUDA could not be used, once we know


@dataclass(frozen=True)
class CudaStatus:
    usable: bool | None  # None: not tried yet (provider compiled in, libraries unproven)
    reason: str


def cuda_status() -> CudaStatus:
    """What the app can say about CUDA without creating a session."""
    if CUDA not in ort.get_available_providers():
        return CudaStatus(False, f"this onnxruntime build ({ort.__version__}) has no CUDA provider")
    if _cuda_failure is not None:
        return CudaStatus(False, _cuda_failure)
    return CudaStatus(None, "CUDA provider present; libraries are checked when a model loads")


def default_threads() -> int | None:
    """Threads per session: OCCLUFER_THREADS if set, else onnxruntime's own choice."""
    value = os.environ.get("OCCLUFER_THREADS")
    return int(value) if value else None


#: CUDA provider settings, each overridable by environment (gpu-check measures the choices):
#: cuDNN's conv algorithm search HEURISTIC, not onnxruntime's EXHAUSTIVE default: the per-face
#: models see a new batch shape whenever the face count changes (1..16), and an exhaustive
#: search per new shape stalls the live view for that frame; arena growth kSameAsRequested,
#: not next-power-of-two, so a consumer GPU shared with a desktop is not over-reserved.
CUDA_OPTION_ENV = {"cudnn_conv_algo_search": ("OCCLUFER_CUDNN_CONV_SEARCH", "HEURISTIC"),
                   "arena_extend_strategy": ("OCCLUFER_CUDA_ARENA", "kSameAsRequested"),
                   "device_id": ("OCCLUFER_CUDA_DEVICE", "0")}


def cuda_provider_options(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The CUDA provider options a session gets: the defaults above, then the environment,
    then `overrides` (gpu-check's measured alternatives)."""
    options = {key: os.environ.get(env, default) for key, (env, default) in CUDA_OPTION_ENV.items()}
    options["do_copy_in_default_stream"] = "1"
    return options | dict(overrides or {})


def _gpu_providers(cuda_options: dict[str, str] | None) -> list:
    """[TensorRT?, CUDA, CPU] with options. TensorRT only when asked for (OCCLUFER_TENSORRT=1)
    and its libraries load: it is never required, and its engine build costs minutes."""
    providers: list = [(CUDA, cuda_provider_options(cuda_options)), CPU]
    if os.environ.get("OCCLUFER_TENSORRT") == "1" and tensorrt_loads():
        cache = Path(os.environ.get("OCCLUFER_HOME", Path.home() / ".cache" / "occlufer")) / "trt"
        cache.mkdir(parents=True, exist_ok=True)
        providers.insert(0, (TENSORRT, {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                                        "trt_engine_cache_path": str(cache)}))
    return providers


def _options(threads: int | None, quiet: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads if threads is not None else default_threads()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # The pipeline runs several sessions one after another. With spinning on, each session's
    # idle worker threads keep spinning while the next session runs and steal its cores:
    # measured with 4 sessions x 2 threads on 2 cores, 12.7 fps with spinning vs the figures
    # in BENCHMARKS.md without (OCCLUFER_SPIN=1 restores onnxruntime's default).
    if os.environ.get("OCCLUFER_SPIN") != "1":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 4 if quiet else 3
    return opts


def _load(model: Path | bytes, providers: list, opts: ort.SessionOptions) -> ort.InferenceSession:
    try:
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / NoSuchFile types
        name = "in-memory model" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ModelIntegrityError(f"Model file not found: {name}") from exc
        raise ModelIntegrityError(
            f"Cannot load ONNX model {name}: {str(exc).splitlines()[0][:300]}\n"
            "The file is damaged or not an ONNX model; run `occlufer models verify` and "
            "`occlufer models fetch` to replace it."
        ) from exc


def create_session(
    model: Path | str | bytes, device: Device = "auto", threads: int | None = None,
    cuda_options: dict[str, str] | None = None,
) -> ort.InferenceSession:
    """Create a session on `device`; "auto" uses CUDA only when it really loads.
    `cuda_options` overrides `cuda_provider_options()` for this session."""
    global _cuda_failure
    model = model if isinstance(model, bytes) else Path(model)
    if device not in ("auto", "cpu", "cuda"):
        raise OccluferError(f"Unknown device {device!r}: use auto, cpu or cuda")
    want_cuda = device == "cuda" or (device == "auto" and cuda_status().usable is not False)
    if want_cuda:
        status = cuda_status()
        if status.usable is False:
            raise OccluferError(f"CUDA was requested but cannot be used: {status.reason}")
        previous = ort.get_default_logger_severity() if hasattr(ort, "get_default_logger_severity") else 2
        ort.set_default_logger_severity(4)  # the CPU fallback logs an error we report ourselves
        preload_cuda_libraries()
        try:
            session = _load(model, _gpu_providers(cuda_options), _options(threads, quiet=True))
        finally:
            ort.set_default_logger_severity(previous)
        if CUDA in session.get_providers():
            return session
        probe = diagnose(session.get_providers())
        _cuda_failure = f"{probe.reason}. Fix: {probe.fix}"
        if device == "cuda":
            raise OccluferError(f"CUDA was requested but cannot be used: {_cuda_failure}")
        return session
    return _load(model, [CPU], _options(threads, quiet=False))


def session_provider(session: ort.InferenceSession) -> str:
    """The provider that really runs the session's nodes first ("CUDA" or "CPU")."""
    return session.get_providers()[0].replace("ExecutionProvider", "")
