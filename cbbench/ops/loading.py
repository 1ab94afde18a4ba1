"""Which compiled modules exist, and which backend a call runs on.

``cbbench._C`` defines the ops (kernels/ops/ops.cpp); ``cbbench._cpu`` and ``cbbench._cuda`` register their
device kernels. They are imported once, when this module is imported (never lazily inside a call: a first
call traced by ``torch.compile(fullgraph=True)`` cannot import), by :func:`cbbench.jit.import_extension`:
the install-time build when it matches this torch, else (CPU modules) a first-use build. A module that is
missing or fails to import is recorded with the reason, never raised (and warned about, loudly, once):
importing cbbench works without any compiled kernel (the losses then run the reference), and importing
``cbbench._cuda`` loads a library without initialising CUDA.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from ..jit import import_extension

BACKENDS = ("auto", "reference", "cpu", "cuda")
OPS_MODULE = "cbbench._C"
KERNEL_MODULES = {"cpu": "cbbench._cpu", "cuda": "cbbench._cuda"}


_ops: Tuple[Optional[object], Optional[str]] = import_extension(OPS_MODULE)
_loaded: Dict[str, Tuple[Optional[object], Optional[str]]] = {
    device: import_extension(name) for device, name in KERNEL_MODULES.items()}


# CPU kernels and the op library both imported: "auto" takes the op for CPU tensors (fixed at import).
_cpu_ready = _ops[0] is not None and _loaded["cpu"][0] is not None


def ops_available() -> bool:
    """Whether the ops are defined (``cbbench._C`` imported)."""
    return _ops[0] is not None


def kernel_module(device_type: str):
    """The compiled kernel module for ``"cpu"`` or ``"cuda"``, or ``None`` when it (or the op library it
    registers into) is not available."""
    entry = _loaded.get(device_type)
    if entry is None or _ops[0] is None:
        return None
    return entry[0]


def kernel_status(device_type: str) -> str:
    """``"available"``, or why the kernels for ``device_type`` are not."""
    if device_type not in _loaded:
        return f"cbbench has no kernels for {device_type!r} tensors"
    if _ops[0] is None:
        return f"the op library {OPS_MODULE} is missing ({_ops[1]})"
    module, reason = _loaded[device_type]
    return "available" if module is not None else reason


def backend_override() -> str:
    """The ``CBBENCH_BACKEND`` environment variable ("" when unset). Read through the op library's C getenv
    where it is built (``os.environ`` writes through to the C environment; its own lookup costs more than a
    small loss call's kernel), else -- and in a ``torch.compile`` trace, which cannot enter it -- through
    ``os.environ``."""
    module = _ops[0]
    if module is None or torch.compiler.is_compiling():
        return os.environ.get("CBBENCH_BACKEND", "")
    return module.backend_override()


def uses_kernels(backend: str, logits: torch.Tensor) -> bool:
    """``resolve_backend(backend, logits.device) != "reference"``, with a fast path for ``"auto"`` on CPU
    tensors."""
    if backend == "auto" and logits.is_cpu and not backend_override():
        return _cpu_ready
    return resolve_backend(backend, logits.device) != "reference"


def eager_module_for(backend: str, logits: torch.Tensor):
    """``cbbench._C`` when a call on ``logits`` (a tensor) outside a ``torch.compile`` trace -- both checked by
    the caller, ``cbbench.functional._op_takes``; not public -- takes the kernels, else ``None``:
    :func:`uses_kernels` with the common case -- ``"auto"``, CPU tensors, no ``CBBENCH_BACKEND`` -- read in
    one step (a small loss call is a few microseconds)."""
    module = _ops[0]
    if backend == "auto" and _cpu_ready and logits.is_cpu and not module.backend_override():
        return module
    return module if uses_kernels(backend, logits) else None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map a requested backend (and ``CBBENCH_BACKEND`` for ``"auto"``) to ``reference``/``cpu``/``cuda``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = backend_override().strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"environment variable CBBENCH_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        kind = device.type
        return kind if kind in _loaded and kernel_module(kind) is not None else "reference"
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
