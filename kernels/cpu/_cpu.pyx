# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused CPU kernels of cbbench: softmax cross-entropy, sigmoid cross-entropy and focal loss.

Implements the kernel contract in the docstring of :mod:`cbbench.ops`. Each row of the (M, C)
logits is one task for a ``prange`` worker (``nogil``): the row kernels in ``cb_cpu_rows.h`` compute
the row loss and the gradient row in one call, with vectorised exp/log1p from ``cb_math.h``. torch is
only imported at run time (to read dtypes and data pointers); the build does not need it.
"""
from libc.stdint cimport int64_t, uintptr_t
from cython.parallel cimport prange

import os

cdef extern from "cb_cpu_rows.h" nogil:
    int CB_ISA_BASELINE
    int CB_ISA_AVX2
    int CB_ISA_AVX512
    int CB_MULTI_ISA
    int cb_isa_compiled(int isa)
    int cb_isa_supported(int isa)
    int cb_best_isa()
    int cb_openmp()
    float cb_softmax_ce_row(int isa, const float* z, int64_t C, int64_t y, const float* weight,
                            const float* offset, const float* margin, float scale, float eps,
                            int64_t ignore_index, float g, float* grad)
    double cb_softmax_ce_row(int isa, const double* z, int64_t C, int64_t y, const float* weight,
                             const float* offset, const float* margin, double scale, double eps,
                             int64_t ignore_index, double g, double* grad)
    float cb_sigmoid_index_row(int isa, const float* z, int64_t C, int64_t y, const float* weight, float gamma,
                               float alpha, bint focal, int64_t ignore_index, float g, float* grad)
    double cb_sigmoid_index_row(int isa, const double* z, int64_t C, int64_t y, const float* weight,
                                double gamma, double alpha, bint focal, int64_t ignore_index, double g,
                                double* grad)
    float cb_sigmoid_multihot_row(int isa, const float* z, const float* t, int64_t C, const float* weight,
                                  float gamma, float alpha, bint focal, float g, float* grad)
    double cb_sigmoid_multihot_row(int isa, const double* z, const double* t, int64_t C, const float* weight,
                                   double gamma, double alpha, bint focal, double g, double* grad)
    void cb_exp_array(int isa, const float* x, float* out, int64_t n)
    void cb_exp_array(int isa, const double* x, double* out, int64_t n)
    void cb_log1p_array(int isa, const float* x, float* out, int64_t n)
    void cb_log1p_array(int isa, const double* x, double* out, int64_t n)

cdef extern from *:
    """
    #ifndef CB_BUILD_FLAGS
    #define CB_BUILD_FLAGS "unknown"
    #endif
    #ifdef __VERSION__
    #define CB_COMPILER __VERSION__
    #else
    #define CB_COMPILER "unknown"
    #endif
    """
    const char* CB_BUILD_FLAGS
    const char* CB_COMPILER

ctypedef fused real:
    float
    double

ctypedef fused loss_real:
    float
    double

_ISA_NAMES = {"baseline": CB_ISA_BASELINE, "avx2": CB_ISA_AVX2, "avx512": CB_ISA_AVX512}
# Below this many logits a second thread costs more (wake-up, cache traffic) than it saves.
_MIN_ELEMENTS_PER_THREAD = 32768
# Rows are handed out in chunks of about this many logits (dynamic schedule): a thread that the OS
# preempts (the cores are shared) then delays only its chunk, not a static half of the batch.
_ELEMENTS_PER_CHUNK = 65536
cdef int _isa = cb_best_isa()


def available_isas():
    """Instruction sets the row kernels were built for and this CPU runs, slowest first."""
    return [name for name, isa in _ISA_NAMES.items() if cb_isa_supported(isa)]


def get_isa():
    """The instruction set the kernels use now."""
    return {v: k for k, v in _ISA_NAMES.items()}[_isa]


def set_isa(name):
    """Use the row kernels built for ``name`` ("baseline", "avx2", "avx512", or "auto" = fastest).

    For tests and benchmarks of the slower builds; returns the previous choice.
    """
    global _isa
    previous = get_isa()
    if name == "auto":
        _isa = cb_best_isa()
    elif name not in _ISA_NAMES:
        raise ValueError(f"unknown instruction set {name!r}; choose from {list(_ISA_NAMES)} or 'auto'")
    elif not cb_isa_supported(_ISA_NAMES[name]):
        raise ValueError(f"instruction set {name!r} is not available here (available: {available_isas()})")
    else:
        _isa = _ISA_NAMES[name]
    return previous


def build_info():
    """How the CPU kernels were built and what they use on this machine."""
    omp = cb_openmp()
    flags = CB_BUILD_FLAGS.decode()
    return {
        "openmp": bool(omp),
        "openmp_version": int(omp) if omp else None,
        "compiler": CB_COMPILER.decode(),
        "compile_flags": flags,
        # the row loops vectorise (polynomial exp/log1p) when `#pragma omp simd` is honoured
        "vectorised_math": "-fopenmp" in flags,
        "isas_built": [name for name, isa in _ISA_NAMES.items() if cb_isa_compiled(isa)],
        "isa": get_isa(),
    }


if os.environ.get("CBBENCH_CPU_ISA"):
    set_isa(os.environ["CBBENCH_CPU_ISA"].strip().lower())


# ----------------------------------------------------------------------------------------------
# argument checks: the contract is ops.py's, but a wrong call must raise, never read out of bounds
# ----------------------------------------------------------------------------------------------
def _torch():
    import torch
    return torch


cdef uintptr_t _ptr(t):
    return <uintptr_t> t.data_ptr()


def _check_cpu_contiguous(t, name):
    torch = _torch()
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got one on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_logits(logits):
    torch = _torch()
    _check_cpu_contiguous(logits, "logits")
    if logits.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"logits must be float32 or float64 (upcast float16/bfloat16 first), got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (M, C), got {tuple(logits.shape)}")
    if logits.shape[1] >= 2 ** 31:  # a row is indexed with int (vector compares of j == y); M is int64
        raise ValueError(f"at most 2**31 - 1 classes, got {logits.shape[1]}")
    return logits.shape[0], logits.shape[1]


cdef uintptr_t _class_vector(vec, int64_t C, name) except? 0:
    torch = _torch()
    if vec is None:
        return 0
    _check_cpu_contiguous(vec, name)
    if vec.dtype != torch.float32 or tuple(vec.shape) != (C,):
        raise ValueError(f"{name} must be a float32 tensor of shape ({C},), got {vec.dtype} {tuple(vec.shape)}")
    return _ptr(vec) if C > 0 else 0


def _check_index_target(target, M):
    torch = _torch()
    _check_cpu_contiguous(target, "target")
    if target.dtype != torch.int64 or tuple(target.shape) != (M,):
        raise ValueError(f"target must be an int64 tensor of shape ({M},), got {target.dtype} {tuple(target.shape)}")


def _check_outputs(logits, loss_rows, grad, M):
    torch = _torch()
    _check_cpu_contiguous(loss_rows, "loss_rows")
    allowed = (torch.float32, torch.float64) if logits.dtype == torch.float64 else (torch.float32,)
    if loss_rows.dtype not in allowed or tuple(loss_rows.shape) != (M,):
        raise ValueError(f"loss_rows must be a tensor of shape ({M},) and dtype in {allowed}, "
                         f"got {loss_rows.dtype} {tuple(loss_rows.shape)}")
    if grad is not None:
        _check_cpu_contiguous(grad, "grad")
        if grad.dtype != logits.dtype or grad.shape != logits.shape:
            raise ValueError(f"grad must match the logits ({logits.dtype} {tuple(logits.shape)}), "
                             f"got {grad.dtype} {tuple(grad.shape)}")


def _read_grad_scale(value, loss_rows):
    """grad_scale: None (1) or a one-element CPU tensor of the loss dtype (that of ``loss_rows``)."""
    torch = _torch()
    if value is None:
        return 1.0
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.dtype != loss_rows.dtype \
            or value.device.type != "cpu":
        raise ValueError(f"grad_scale must be None or a one-element CPU tensor of the loss dtype {loss_rows.dtype}, "
                         f"got {value!r}")
    return float(value.item())


cdef int64_t _chunk(int64_t C):
    return max(1, _ELEMENTS_PER_CHUNK // max(C, 1))


cdef int _threads(int64_t M, int64_t C):
    cdef int64_t n = _torch().get_num_threads()
    cdef int64_t by_work = max(1, (M * C) // _MIN_ELEMENTS_PER_THREAD)
    return <int> max(1, min(n, by_work, M))


# ----------------------------------------------------------------------------------------------
# row loops
# ----------------------------------------------------------------------------------------------
cdef void _softmax_rows(int isa, const real* z, const int64_t* target, int64_t M, int64_t C,
                        const float* weight, const float* offset, const float* margin, real scale, real eps,
                        int64_t ignore_index, real g, loss_real* loss, real* grad, int n_threads,
                        int64_t chunk) noexcept nogil:
    cdef int64_t i
    for i in prange(M, num_threads=n_threads, schedule="dynamic", chunksize=chunk):
        loss[i] = <loss_real> cb_softmax_ce_row(isa, z + i * C, C, target[i], weight, offset, margin, scale, eps,
                                                ignore_index, g, (grad + i * C) if grad != NULL else NULL)


cdef void _sigmoid_index_rows(int isa, const real* z, const int64_t* target, int64_t M, int64_t C,
                              const float* weight, real gamma, real alpha, bint focal, int64_t ignore_index,
                              real g, loss_real* loss, real* grad, int n_threads, int64_t chunk) noexcept nogil:
    cdef int64_t i
    for i in prange(M, num_threads=n_threads, schedule="dynamic", chunksize=chunk):
        loss[i] = <loss_real> cb_sigmoid_index_row(isa, z + i * C, C, target[i], weight, gamma, alpha, focal,
                                                   ignore_index, g, (grad + i * C) if grad != NULL else NULL)


cdef void _sigmoid_multihot_rows(int isa, const real* z, const real* t, int64_t M, int64_t C,
                                 const float* weight, real gamma, real alpha, bint focal, real g,
                                 loss_real* loss, real* grad, int n_threads, int64_t chunk) noexcept nogil:
    cdef int64_t i
    for i in prange(M, num_threads=n_threads, schedule="dynamic", chunksize=chunk):
        loss[i] = <loss_real> cb_sigmoid_multihot_row(isa, z + i * C, t + i * C, C, weight, gamma, alpha, focal, g,
                                                      (grad + i * C) if grad != NULL else NULL)


# ----------------------------------------------------------------------------------------------
# the contract
# ----------------------------------------------------------------------------------------------
def softmax_ce_fwd(logits, target, weight, logit_offset, target_margin, scale, label_smoothing,
                   ignore_index, grad_scale, loss_rows, grad):
    """Per-row weighted softmax cross-entropy into ``loss_rows`` and ``grad_scale * d loss_rows / d logits``
    into ``grad`` (``None``: loss only). See :mod:`cbbench.ops` for the contract."""
    torch = _torch()
    M, C = _check_logits(logits)
    _check_index_target(target, M)
    _check_outputs(logits, loss_rows, grad, M)
    cdef const float* w = <const float*> _class_vector(weight, C, "weight")
    cdef const float* off = <const float*> _class_vector(logit_offset, C, "logit_offset")
    cdef const float* mar = <const float*> _class_vector(target_margin, C, "target_margin")
    cdef double s = float(scale), eps = float(label_smoothing), g = _read_grad_scale(grad_scale, loss_rows)
    cdef int64_t ign = int(ignore_index), m = M, c = C
    cdef int nt = _threads(m, c), isa = _isa
    cdef int64_t ch = _chunk(c)
    cdef const int64_t* y = <const int64_t*> _ptr(target)
    cdef uintptr_t zp = _ptr(logits), lp = _ptr(loss_rows), gp = _ptr(grad) if grad is not None else 0
    if m == 0:
        return
    if logits.dtype == torch.float32:
        with nogil:
            _softmax_rows[float, float](isa, <const float*> zp, y, m, c, w, off, mar, <float> s, <float> eps, ign,
                                        <float> g, <float*> lp, <float*> gp, nt, ch)
    elif loss_rows.dtype == torch.float64:
        with nogil:
            _softmax_rows[double, double](isa, <const double*> zp, y, m, c, w, off, mar, s, eps, ign, g,
                                          <double*> lp, <double*> gp, nt, ch)
    else:
        with nogil:
            _softmax_rows[double, float](isa, <const double*> zp, y, m, c, w, off, mar, s, eps, ign, g,
                                         <float*> lp, <double*> gp, nt, ch)


def sigmoid_focal_fwd(logits, target, weight, gamma, alpha, ignore_index, focal, grad_scale, loss_rows, grad):
    """Per-row sigmoid cross-entropy (``focal=False``) or focal loss; ``alpha < 0``: no alpha. Integer
    ``target`` (M,) holds class indices (the row weight multiplies all C terms); a float ``target``
    (M, C) of the logits' dtype is multi-hot (``weight`` per column). See :mod:`cbbench.ops`."""
    torch = _torch()
    M, C = _check_logits(logits)
    _check_cpu_contiguous(target, "target")
    cdef bint multi_hot = target.is_floating_point()
    if multi_hot:
        if target.dtype != logits.dtype or target.shape != logits.shape:
            raise ValueError(f"a multi-hot target must match the logits ({logits.dtype} {tuple(logits.shape)}), "
                             f"got {target.dtype} {tuple(target.shape)}")
    else:
        _check_index_target(target, M)
    _check_outputs(logits, loss_rows, grad, M)
    cdef const float* w = <const float*> _class_vector(weight, C, "weight")
    cdef double gm = float(gamma), al = float(alpha), g = _read_grad_scale(grad_scale, loss_rows)
    if not gm >= 0:
        raise ValueError(f"gamma must be >= 0, got {gm}")
    cdef bint fc = bool(focal)
    cdef int64_t ign = int(ignore_index), m = M, c = C
    cdef int nt = _threads(m, c), isa = _isa
    cdef int64_t ch = _chunk(c)
    cdef uintptr_t zp = _ptr(logits), tp = _ptr(target), lp = _ptr(loss_rows)
    cdef uintptr_t gp = _ptr(grad) if grad is not None else 0
    if m == 0:
        return
    cdef bint f32 = logits.dtype == torch.float32
    cdef bint loss64 = loss_rows.dtype == torch.float64
    with nogil:
        if multi_hot:
            if f32:
                _sigmoid_multihot_rows[float, float](isa, <const float*> zp, <const float*> tp, m, c, w, <float> gm,
                                                     <float> al, fc, <float> g, <float*> lp, <float*> gp, nt, ch)
            elif loss64:
                _sigmoid_multihot_rows[double, double](isa, <const double*> zp, <const double*> tp, m, c, w, gm, al,
                                                       fc, g, <double*> lp, <double*> gp, nt, ch)
            else:
                _sigmoid_multihot_rows[double, float](isa, <const double*> zp, <const double*> tp, m, c, w, gm, al,
                                                      fc, g, <float*> lp, <double*> gp, nt, ch)
        else:
            if f32:
                _sigmoid_index_rows[float, float](isa, <const float*> zp, <const int64_t*> tp, m, c, w, <float> gm,
                                                  <float> al, fc, ign, <float> g, <float*> lp, <float*> gp, nt, ch)
            elif loss64:
                _sigmoid_index_rows[double, double](isa, <const double*> zp, <const int64_t*> tp, m, c, w, gm, al,
                                                    fc, ign, g, <double*> lp, <double*> gp, nt, ch)
            else:
                _sigmoid_index_rows[double, float](isa, <const double*> zp, <const int64_t*> tp, m, c, w, gm, al,
                                                   fc, ign, g, <float*> lp, <double*> gp, nt, ch)


def simd_exp(x):
    """exp of a contiguous float32/float64 CPU tensor through the kernels' vectorised exp (for tests)."""
    return _simd_map(x, True)


def simd_log1p(x):
    """log1p through the kernels' vectorised log1p (for tests)."""
    return _simd_map(x, False)


def _simd_map(x, bint is_exp):
    torch = _torch()
    _check_cpu_contiguous(x, "x")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    out = torch.empty_like(x)
    cdef uintptr_t xp = _ptr(x), op = _ptr(out)
    cdef int64_t n = x.numel()
    cdef int isa = _isa
    if n == 0:
        return out
    if x.dtype == torch.float32:
        if is_exp:
            cb_exp_array(isa, <const float*> xp, <float*> op, n)
        else:
            cb_log1p_array(isa, <const float*> xp, <float*> op, n)
    else:
        if is_exp:
            cb_exp_array(isa, <const double*> xp, <double*> op, n)
        else:
            cb_log1p_array(isa, <const double*> xp, <double*> op, n)
    return out
