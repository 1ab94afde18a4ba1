"""ctypes binding of the CUDA emulator library (build_emulator.py): configuration, counters, guarded device
buffers as torch tensors, and the launchers of kernels/cuda/cb_kernels.h. Test-only."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

import build_emulator as _build

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ORDERS = {"forward": 0, "reverse": 1, "random": 2}

_c = ctypes
_P = _c.c_void_p
_I64 = _c.c_int64
_D = _c.c_double
_SIGNATURES = {
    "cbemu_set_order": (None, [_c.c_int, _c.c_ulonglong]),
    "cbemu_set_device": (None, [_c.c_int] * 5),
    "cbemu_set_current_device": (None, [_c.c_int]),
    "cbemu_set_capturing_stream": (None, [_P]),
    "cbemu_set_workers": (None, [_c.c_int]),
    "cbemu_set_winner_delay": (None, [_c.c_int]),
    "cbemu_launch_count": (_c.c_longlong, []),
    "cbemu_failure_count": (_c.c_longlong, []),
    "cbemu_capture_violations": (_c.c_longlong, []),
    "cbemu_reset_counters": (None, []),
    "cbemu_last_failure": (_c.c_char_p, []),
    "cbemu_alloc": (_P, [_c.c_size_t, _c.c_int]),
    "cbemu_canaries_intact": (_c.c_int, [_P]),
    "cbemu_free": (None, [_P]),
    "cbemu_install_fault_handler": (None, []),
    "cbemu_set_context": (None, [_c.c_char_p]),
    "cbk_softmax_ce": (_c.c_int, [_c.c_int, _P, _c.c_int, _P, _P, _P, _P, _P, _D, _D, _D, _P, _P, _I64, _P, _P, _P,
                                  _I64, _I64, _P, _c.c_int, _P, _P, _P]),
    "cbk_softmax_ce_workspace_bytes": (_c.c_size_t, [_I64, _I64, _c.c_int, _c.c_int]),
    "cbk_softmax_ce_plan": (None, [_I64, _c.c_int, _c.c_int, _P, _c.c_char_p, _c.c_size_t]),
    "cbk_sigmoid_focal": (_c.c_int, [_c.c_int, _P, _c.c_int, _P, _P, _P, _P, _D, _D, _P, _I64, _c.c_int, _P, _P,
                                     _P, _I64, _I64, _c.c_int, _P, _P, _P]),
    "cbk_sigmoid_focal_plan": (None, [_I64, _c.c_int, _c.c_char_p, _c.c_size_t]),
    "cbk_scale_in_place": (_c.c_int, [_c.c_int, _P, _c.c_int, _P, _I64, _P, _c.c_int]),
    "cbk_loss_divisor": (_c.c_int, [_c.c_int, _P, _P, _P, _P, _P, _c.c_int, _I64, _I64, _I64, _c.c_int, _c.c_int,
                                    _c.c_int, _P, _P, _c.c_int, _P, _P]),
    "cbk_divisor_chunks": (_I64, [_I64]),
}


class Emulator:
    """One loaded emulator library."""

    def __init__(self, lib_path: Path | str):
        self.path = Path(lib_path)
        self.lib = ctypes.CDLL(str(self.path))
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype = res
            fn.argtypes = args
        self._buffers: list[int] = []

    # ---- configuration ----
    def set_order(self, order: str, seed: int = 1) -> None:
        self.lib.cbemu_set_order(ORDERS[order], seed)

    def set_device(self, device: int, major: int, minor: int = 0, sms: int = 132, max_cluster: int = 8) -> None:
        self.lib.cbemu_set_device(device, major, minor, sms, max_cluster)

    def set_capturing(self, stream: int | None) -> None:
        self.lib.cbemu_set_capturing_stream(stream)

    def launches(self) -> int:
        return self.lib.cbemu_launch_count()

    def failures(self) -> int:
        return self.lib.cbemu_failure_count()

    def capture_violations(self) -> int:
        return self.lib.cbemu_capture_violations()

    def last_failure(self) -> str:
        return self.lib.cbemu_last_failure().decode()

    def reset(self) -> None:
        self.lib.cbemu_reset_counters()

    # ---- guarded buffers ----
    def tensor(self, like: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """A copy of ``like`` in emulator memory that starts ``offset`` bytes past a 16-byte boundary,
        with canaries around it and a guard page after it."""
        nbytes = like.numel() * like.element_size()
        ptr = self.lib.cbemu_alloc(max(nbytes, 1), offset)
        if not ptr:
            raise MemoryError("cbemu_alloc failed")
        self._buffers.append(ptr)
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        t = torch.frombuffer(raw, dtype=torch.uint8)[:nbytes].view(like.dtype).view(like.shape)
        t.copy_(like)
        return t

    def intact(self, t: torch.Tensor) -> bool:
        return bool(self.lib.cbemu_canaries_intact(t.data_ptr()))

    def free_all(self) -> None:
        for ptr in self._buffers:
            self.lib.cbemu_free(ptr)
        self._buffers.clear()

    # ---- the project's launchers ----
    def plan(self, classes: int, dtype: torch.dtype, device: int, stream: int | None = None) -> str:
        buf = ctypes.create_string_buffer(64)
        self.lib.cbk_softmax_ce_plan(classes, DTYPE_CODE[dtype], device, stream, buf, 64)
        return buf.value.decode()

    def sigmoid_plan(self, classes: int, dtype: torch.dtype) -> str:
        buf = ctypes.create_string_buffer(64)
        self.lib.cbk_sigmoid_focal_plan(classes, DTYPE_CODE[dtype], buf, 64)
        return buf.value.decode()

    def workspace_bytes(self, rows: int, classes: int, dtype: torch.dtype, device: int) -> int:
        return self.lib.cbk_softmax_ce_workspace_bytes(rows, classes, DTYPE_CODE[dtype], device)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def load(lib_path: Path | str | None = None, **build_options) -> Emulator:
    """The emulator with the project's kernels (built or taken from the cache when no path is given)."""
    return Emulator(lib_path or _build.build(**build_options))


__all__ = ["DTYPE_CODE", "ORDERS", "Emulator", "load", "_ptr"]
