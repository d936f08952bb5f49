"""Which fused-op backend runs for a tensor's device.

Backends:
  reference  plain torch (hnerv_fast/ops/reference.py), always available, any device
  cpp        the C++ CPU kernels of ``hnerv_fast._C`` (CPU tensors)
  cuda       the CUDA kernels of ``hnerv_fast._C_cuda`` (CUDA tensors)
  triton     the Triton kernels of ``hnerv_triton`` (the kernels/ folder) (CUDA tensors, or CPU tensors
             when TRITON_INTERPRET=1 was set before the first use)

``set_backend("auto")`` (the default) picks, per device: CPU -> cpp, else reference;
CUDA -> cuda, else triton, else reference. An explicitly requested backend that cannot run on a
tensor's device falls back the same way as ``auto`` (one warning per backend and device type,
never an exception). The choice is resolved eagerly (at import / ``set_backend``) and cached, so
the per-call lookup is a dict read that ``torch.compile`` traces without graph breaks.
The initial setting comes from the environment variable HNERV_FAST_OPS_BACKEND (default "auto").
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Dict, Optional, Tuple

import torch

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")
_CONCRETE = ("reference", "cpp", "cuda", "triton")

_setting = {"name": "auto"}
_resolved: Dict[Tuple[str, str], str] = {}
_load_errors: Dict[str, str] = {}
_loaded: Dict[str, bool] = {}
_warned: set = set()


def _env_backend() -> str:
    name = os.environ.get("HNERV_FAST_OPS_BACKEND", "auto").strip().lower() or "auto"
    return name if name in BACKENDS else "auto"


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _load_cpp() -> bool:
    if "cpp" not in _loaded:
        try:
            importlib.import_module("hnerv_fast._C")
            _loaded["cpp"] = hasattr(torch.ops.hnerv_fast, "ssim_fwd")
            if not _loaded["cpp"]:
                _load_errors["cpp"] = "hnerv_fast._C imported but registered no ops"
        except Exception as e:  # ImportError, undefined symbols after a torch upgrade, ...
            _loaded["cpp"] = False
            _load_errors["cpp"] = f"{type(e).__name__}: {e}"
    return _loaded["cpp"]


def _load_module(backend: str, module: str, unavailable) -> bool:
    """Import `module` once for `backend` unless `unavailable()` names a reason it cannot load; the
    outcome (and the reason or import error) is cached."""
    if backend not in _loaded:
        reason = unavailable()
        if reason is None:
            try:
                importlib.import_module(module)
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
        if reason is not None:
            _load_errors[backend] = reason
        _loaded[backend] = reason is None
    return _loaded[backend]


def _cuda_unavailable():
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not _load_cpp():
        return "hnerv_fast._C (op schemas) did not load: " + _load_errors.get("cpp", "")
    return None


def _load_cuda() -> bool:
    return _load_module("cuda", "hnerv_fast._C_cuda", _cuda_unavailable)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_unavailable():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not (torch.cuda.is_available() or triton_interpreted()):
        return "no CUDA device (set TRITON_INTERPRET=1 to run Triton on CPU)"
    return None


def _load_triton() -> bool:
    return _load_module("triton", "hnerv_fast.ops._triton_ops", _triton_unavailable)


def _usable(backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpp":
        return device_type == "cpu" and _load_cpp()
    if backend == "cuda":
        return device_type == "cuda" and _load_cuda()
    if backend == "triton":
        if device_type == "cuda" or (device_type == "cpu" and triton_interpreted()):
            return _load_triton()
        return False
    return False


def _auto(device_type: str) -> str:
    order = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}.get(device_type, ())
    for b in order:
        if _usable(b, device_type):
            return b
    return "reference"


def _why(backend: str, device_type: str) -> str:
    if backend in ("cpp",) and device_type != "cpu":
        return f"it runs on CPU tensors only, got a {device_type} tensor"
    if backend == "cuda" and device_type != "cuda":
        return f"it runs on CUDA tensors only, got a {device_type} tensor"
    return _load_errors.get(backend, "not available")


def _resolve_uncached(name: str, device_type: str) -> str:
    if name == "auto":
        got = _auto(device_type)
        if device_type == "cpu" and got == "reference":
            _warn_once(("auto", device_type),
                       f"hnerv_fast.ops: the C++ CPU kernels are not available ({_load_errors.get('cpp', '?')}); "
                       "using the plain-torch reference ops (slower). Rebuild with `pip install -e .`.")
        elif device_type == "cuda" and got == "reference":
            _warn_once(("auto", device_type),
                       "hnerv_fast.ops: neither the CUDA extension nor Triton is available "
                       f"(cuda: {_load_errors.get('cuda', '?')}; triton: {_load_errors.get('triton', '?')}); "
                       "using the plain-torch reference ops (slower).")
        return got
    if _usable(name, device_type):
        return name
    got = _auto(device_type)
    _warn_once((name, device_type),
               f"hnerv_fast.ops: backend {name!r} cannot run on {device_type} tensors ({_why(name, device_type)}); "
               f"falling back to {got!r}.")
    return got


def _warn_once(key, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _prime(name: str) -> None:
    for dt in ("cpu", "cuda"):
        if dt == "cuda" and not torch.cuda.is_available():
            continue
        key = (name, dt)
        if key not in _resolved:
            _resolved[key] = _resolve_uncached(name, dt)


# ------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------
def set_backend(name: str) -> None:
    """Select the fused-op backend: "auto" | "reference" | "cpp" | "cuda" | "triton"."""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; expected one of {BACKENDS}")
    name = name.lower()
    _setting["name"] = name
    _prime(name)


def get_backend() -> str:
    """The current setting (as given to set_backend; "auto" by default)."""
    return _setting["name"]


def resolve(device: torch.device) -> str:
    """The concrete backend that runs for tensors on ``device`` under the current setting."""
    key = (_setting["name"], device.type)
    got = _resolved.get(key)
    if got is None:
        got = _resolve_uncached(*key)
        _resolved[key] = got
    return got


def available_backends(device_type: str = "cpu") -> Tuple[str, ...]:
    """Concrete backends that can run on ``device_type`` here (for tests and diagnostics)."""
    return tuple(b for b in _CONCRETE if _usable(b, device_type))


def load_error(backend: str) -> Optional[str]:
    return _load_errors.get(backend)


_load_cpp()
_setting["name"] = _env_backend()
_prime(_setting["name"])
