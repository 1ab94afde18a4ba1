"""Which compiled kernel modules exist, and which backend a call runs on.

The kernel modules are imported once, when this module is imported (never lazily inside a call: a
first call traced by ``torch.compile(fullgraph=True)`` cannot import). A module that is missing or
fails to import is recorded with the reason, never raised: importing cbbench works without any
compiled kernel, and importing ``cbbench._cuda`` loads a library without initialising CUDA.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, Optional, Tuple

import torch

BACKENDS = ("auto", "reference", "cpu", "cuda")
KERNEL_MODULES = {"cpu": "cbbench._cpu", "cuda": "cbbench._cuda"}


def _import(name: str) -> Tuple[Optional[object], Optional[str]]:
    try:
        return importlib.import_module(name), None
    except ImportError as exc:  # not built, or built against another torch
        return None, f"{type(exc).__name__}: {exc}"


_loaded: Dict[str, Tuple[Optional[object], Optional[str]]] = {
    device: _import(name) for device, name in KERNEL_MODULES.items()}

# cbbench._C: the small-batch fast path of the CPU losses (kernels/cpu/fast_path.cpp), a torch
# extension built where torch is importable at build time; CBBENCH_FAST_PATH=0 turns it off.
FAST_PATH_MODULE = "cbbench._C"
_fast: Tuple[Optional[object], Optional[str]] = (
    _import(FAST_PATH_MODULE) if os.environ.get("CBBENCH_FAST_PATH", "1").strip() != "0"
    else (None, "off (CBBENCH_FAST_PATH=0)"))


def fast_path():
    """The fast-path module, or ``None`` (not built, turned off, or the CPU kernels are unavailable)."""
    return _fast[0] if _loaded["cpu"][0] is not None else None


def fast_path_status() -> str:
    return "available" if fast_path() is not None else (_fast[1] or kernel_status("cpu"))


def kernel_module(device_type: str):
    """The compiled kernel module for ``"cpu"`` or ``"cuda"``, or ``None`` when it is not available."""
    entry = _loaded.get(device_type)
    return entry[0] if entry is not None else None


def kernel_status(device_type: str) -> str:
    """``"available"``, or why the kernel module for ``device_type`` is not."""
    if device_type not in _loaded:
        return f"cbbench has no kernels for {device_type!r} tensors"
    module, reason = _loaded[device_type]
    return "available" if module is not None else reason


# os.environ.get encodes the key and walks a Mapping: ~1.5 us, 5 % of a whole small loss call;
# CPython's environ keeps a plain dict of the encoded keys beside it (updated by os.environ[...] = ...).
_ENV_NAME = "CBBENCH_BACKEND"
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(_ENV_NAME) if _ENV_DATA is not None and hasattr(os.environ, "encodekey") else None


def _env_backend() -> str:
    if _ENV_KEY is not None:
        value = _ENV_DATA.get(_ENV_KEY)
        if value is None:
            return ""
        return os.environ.decodevalue(value)
    return os.environ.get(_ENV_NAME, "")


def fast_path_backend(backend: str) -> bool:
    """Whether ``backend`` may take the CPU fast path: ``"cpu"``, or ``"auto"`` without an override."""
    return backend == "cpu" or (backend == "auto" and not _env_backend())


def uses_kernels(backend: str, logits: torch.Tensor) -> bool:
    """``resolve_backend(backend, logits.device) != "reference"``, with a fast path for ``"auto"``."""
    if backend == "auto" and not _env_backend():
        if logits.is_cpu:
            return _loaded["cpu"][0] is not None
        if logits.is_cuda:
            return _loaded["cuda"][0] is not None
    return resolve_backend(backend, logits.device) != "reference"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map a requested backend (and ``CBBENCH_BACKEND`` for ``"auto"``) to ``reference``/``cpu``/``cuda``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = _env_backend().strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"environment variable CBBENCH_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        kind = device.type
        return kind if kernel_module(kind) is not None else "reference"
    if backend in KERNEL_MODULES:
        if device.type != backend:
            raise ValueError(f"backend={backend!r} needs {backend} tensors, got tensors on {device}")
        if kernel_module(backend) is None:
            raise RuntimeError(
                f"backend={backend!r}: the {backend} kernels of cbbench are not built "
                f"({kernel_status(backend)}); reinstall cbbench"
                + (" with CBBENCH_CUDA=1 and `pip install --no-build-isolation`" if backend == "cuda" else "")
                + ", or use backend='reference'"
            )
    return backend
