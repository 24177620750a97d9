"""Whether onnxruntime's CUDA provider really works here, and if not, exactly why and what fixes it.

onnxruntime-gpu 1.31 is built against CUDA 13 and cuDNN 9. It lists `CUDAExecutionProvider`
on every machine, so the list proves nothing; the truth is a session that reports CUDA. This
module makes that session from a tiny model built in memory (one Conv, which needs cuDNN, and
one MatMul, which needs cuBLAS), and when it falls back to the CPU it names what is missing:
the NVIDIA driver (`libcuda.so.1` / `nvcuda.dll`, which no pip package can provide), a driver
too old for CUDA 13, or the CUDA/cuDNN libraries that `pip install 'onnxruntime-gpu[cuda,cudnn]'`
brings. Those pip libraries live in site-packages, not on the loader's path, so
`onnxruntime.preload_dlls()` must load them before the first CUDA session
(`preload_cuda_libraries`, called by the session factory).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: The CUDA major version onnxruntime-gpu was built against (1.31: "13.0").
BUILD_CUDA = str(getattr(ort, "cuda_version", "") or "")
#: CUDA 13 needs the R580 driver branch: >= 580.65.06 on Linux, >= 580.88 on Windows
#: (NVIDIA's CUDA 13.0 release notes, table "CUDA Toolkit and minimum required driver").
MIN_DRIVER = {"Linux": "580.65.06", "Windows": "580.88"}

_preload_log: str | None = None  # what preload_dlls printed, once it has run


# ---------------------------------------------------------------- the probe model
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes/str."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto (float32, raw_data): dims=1, data_type=2, name=8, raw_data=9."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return (b"".join(_field(1, d) for d in array.shape) + _field(2, 1) + _field(8, name)
            + _field(9, array.tobytes()))


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    """ValueInfoProto of a float tensor with a fixed shape."""
    dims = b"".join(_field(1, _field(1, d)) for d in shape)
    tensor_type = _field(1, 1) + _field(2, dims)
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str]) -> bytes:
    return (b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
            + _field(3, f"{op.lower()}0") + _field(4, op))


PROBE_INPUT_SHAPE = (1, 1, 8, 8)


def probe_weights() -> tuple[np.ndarray, np.ndarray]:
    """The probe's fixed weights: a 2x1x3x3 conv kernel and a 6x6 matrix (deterministic)."""
    rng = np.random.default_rng(13)
    return (rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
            rng.standard_normal((6, 6)).astype(np.float32))


def probe_model() -> bytes:
    """A serialized ONNX model, y = Conv(x, W) @ M, built without the `onnx` package (which a
    runtime install does not have). Conv runs through cuDNN and MatMul through cuBLAS, so a
    CUDA session that runs it has proven both libraries, not only that the provider loads."""
    weight, matrix = probe_weights()
    graph = (_field(1, _node("Conv", ["x", "W"], ["c"])) + _field(1, _node("MatMul", ["c", "M"], ["y"]))
             + _field(2, "occlufer_cuda_probe") + _field(5, _tensor("W", weight))
             + _field(5, _tensor("M", matrix)) + _field(11, _value_info("x", PROBE_INPUT_SHAPE))
             + _field(12, _value_info("y", (1, 2, 6, 6))))
    opset = _field(1, "") + _field(2, 17)
    return _field(1, 8) + _field(2, "occlufer") + _field(7, graph) + _field(8, opset)


def probe_input() -> np.ndarray:
    return np.arange(np.prod(PROBE_INPUT_SHAPE), dtype=np.float32).reshape(PROBE_INPUT_SHAPE) / 64.0


# ---------------------------------------------------------------- libraries and driver
def preload_cuda_libraries() -> str:
    """Load the CUDA/cuDNN libraries pip installed (onnxruntime-gpu[cuda,cudnn]) so the CUDA
    provider finds them; once per process, silently (its messages are kept and returned).
    A no-op where onnxruntime has no `preload_dlls` (before 1.21) or no CUDA provider."""
    global _preload_log
    if _preload_log is None:
        buffer = io.StringIO()
        if hasattr(ort, "preload_dlls") and CUDA in ort.get_available_providers():
            with contextlib.redirect_stdout(buffer):
                try:
                    ort.preload_dlls()
                except Exception as exc:  # a broken nvidia package must not stop a CPU run
                    print(f"preload_dlls failed: {exc}")
        _preload_log = buffer.getvalue()
    return _preload_log


def _driver_library() -> str:
    return "nvcuda.dll" if platform.system() == "Windows" else "libcuda.so.1"


def driver_cuda_version() -> tuple[int, int] | None:
    """The CUDA version the installed NVIDIA driver supports (cuDriverGetVersion), e.g.
    (13, 0); None when there is no driver library at all."""
    try:
        lib = ctypes.CDLL(_driver_library())
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def gpu_names() -> list[str]:
    """The GPUs the driver sees (cuInit + cuDeviceGetName); [] without a driver or a GPU."""
    try:
        lib = ctypes.CDLL(_driver_library())
    except OSError:
        return []
    if lib.cuInit(0) != 0:
        return []
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    names = []
    for index in range(count.value):
        device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(device), index) == 0 and \
                lib.cuDeviceGetName(name, 256, device) == 0:
            names.append(name.value.decode(errors="replace"))
    return names


def _nvidia_libraries() -> list[tuple[str, ...]]:
    """The CUDA/cuDNN libraries this onnxruntime build needs, as relative site-packages paths
    (onnxruntime's own list, so it follows its CUDA version); [] when it cannot say."""
    lister = getattr(ort, "_get_nvidia_dll_paths", None)
    if lister is None or not BUILD_CUDA:
        return []
    try:
        return [tuple(p) for p in lister(platform.system() == "Windows", True, True)]
    except Exception:  # private helper: its signature may change between releases
        return []


def missing_libraries() -> list[str]:
    """Library files the CUDA provider needs that cannot be loaded, neither from the nvidia
    pip packages nor from the system's search path."""
    site = Path(ort.__file__).resolve().parent.parent
    missing = []
    for relative in _nvidia_libraries():
        candidates = [site.joinpath(*relative), relative[-1]]
        for candidate in candidates:
            if isinstance(candidate, Path) and not candidate.is_file():
                continue
            try:
                ctypes.CDLL(str(candidate))
                break
            except OSError:
                continue
        else:
            missing.append(relative[-1])
    return missing


def provider_library_error() -> str | None:
    """The loader's own message for onnxruntime's CUDA provider library (it names the first
    library it could not find), or None when the library loads."""
    name = "onnxruntime_providers_cuda.dll" if platform.system() == "Windows" else \
        "libonnxruntime_providers_cuda.so"
    path = Path(ort.__file__).resolve().parent / "capi" / name
    if not path.is_file():
        return f"{name} is not part of this onnxruntime build"
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return str(exc)
    return None


def tensorrt_loads() -> bool:
    """Whether TensorRT's runtime (libnvinfer 10) can be loaded, for the optional TensorRT
    provider; it is never required."""
    if TENSORRT not in ort.get_available_providers():
        return False
    name = "nvinfer_10.dll" if platform.system() == "Windows" else "libnvinfer.so.10"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def pip_fix() -> str:
    """The exact command that installs the CUDA/cuDNN libraries for this onnxruntime-gpu."""
    return (f"{sys.executable} -m pip install "
            f"'onnxruntime-gpu[cuda,cudnn]=={ort.__version__}'   (or, in a checkout: "
            "pip install -e '.[cuda]')")


# ---------------------------------------------------------------- the verdict
@dataclass
class CudaProbe:
    """What a tiny CUDA session showed: whether it ran on CUDA and, if not, why and the fix."""

    loads: bool
    providers: list[str]  # what the probe session reports
    build_cuda: str  # the CUDA version onnxruntime was built for ("" for a CPU build)
    driver_cuda: str | None  # the CUDA version the driver supports, None without a driver
    gpus: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # library files that do not load
    reason: str = ""
    fix: str = ""
    max_abs_diff_vs_cpu: float | None = None  # the probe's CUDA output against the CPU's
    tensorrt: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def diagnose(providers: list[str] | None = None) -> CudaProbe:
    """Why CUDA does not load (or that it does), from the driver and the library files, given
    the providers a CUDA session reported (None: not tried)."""
    preload_cuda_libraries()
    providers = providers or []
    driver = driver_cuda_version()
    driver_text = None if driver is None else f"{driver[0]}.{driver[1]}"
    probe = CudaProbe(loads=CUDA in providers, providers=providers, build_cuda=BUILD_CUDA,
                      driver_cuda=driver_text, tensorrt=tensorrt_loads())
    if CUDA not in ort.get_available_providers():
        probe.reason = f"this onnxruntime build ({ort.__version__}) has no CUDA provider"
        probe.fix = ("pip uninstall -y onnxruntime && pip install "
                     f"'onnxruntime-gpu[cuda,cudnn]=={ort.__version__}'  (x86_64 Linux/Windows)")
        return probe
    probe.gpus = gpu_names() if driver else []
    probe.missing = missing_libraries()
    min_driver = MIN_DRIVER.get(platform.system(), MIN_DRIVER["Linux"])
    build_major = int(BUILD_CUDA.split(".")[0]) if BUILD_CUDA[:1].isdigit() else 0
    reasons, fixes = [], []
    if driver is None:
        reasons.append(f"no NVIDIA driver ({_driver_library()} cannot be loaded; no pip package "
                       "provides it)")
        fixes.append(f"on a machine with an NVIDIA GPU, install NVIDIA driver >= {min_driver}")
    elif driver[0] < build_major:
        reasons.append(f"the NVIDIA driver supports CUDA {driver_text}, onnxruntime-gpu "
                       f"{ort.__version__} needs CUDA {BUILD_CUDA}")
        fixes.append(f"update the NVIDIA driver to >= {min_driver}")
    elif not probe.gpus:
        reasons.append("the NVIDIA driver is installed but sees no GPU")
        fixes.append("check `nvidia-smi`; in a container, pass the GPU in (--gpus all)")
    if probe.missing:
        reasons.append(f"missing CUDA {BUILD_CUDA} / cuDNN 9 libraries: {', '.join(probe.missing)}")
        fixes.append(pip_fix())
    if not reasons and not probe.loads:
        error = provider_library_error()
        reasons.append(f"the CUDA provider did not load ({error or 'no error from the loader'})")
        fixes.append(pip_fix())
    if not probe.loads:
        probe.reason = "; ".join(reasons)
        probe.fix = "; then ".join(fixes)
    return probe


def probe_cuda() -> CudaProbe:
    """Create the tiny probe session on CUDA, run it, compare it with the CPU; the verdict."""
    preload_cuda_libraries()
    if CUDA not in ort.get_available_providers():
        return diagnose()
    model, x = probe_model(), probe_input()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    previous = ort.get_default_logger_severity() if hasattr(ort, "get_default_logger_severity") else 2
    ort.set_default_logger_severity(4)  # the CPU fallback logs an error we explain ourselves
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=[CUDA, CPU])
    finally:
        ort.set_default_logger_severity(previous)
    probe = diagnose(session.get_providers())
    if probe.loads:
        try:
            got = session.run(None, {"x": x})[0]
        except Exception as exc:  # e.g. a cuDNN that loads but fails on this GPU
            probe.loads = False
            probe.reason = f"the CUDA session failed to run: {str(exc).splitlines()[0][:300]}"
            probe.fix = pip_fix()
            return probe
        cpu = ort.InferenceSession(model, providers=[CPU]).run(None, {"x": x})[0]
        probe.max_abs_diff_vs_cpu = float(np.abs(got - cpu).max())
    return probe


__all__ = ["CudaProbe", "probe_cuda", "diagnose", "preload_cuda_libraries", "probe_model",
           "probe_input", "probe_weights", "pip_fix", "tensorrt_loads", "MIN_DRIVER"]
