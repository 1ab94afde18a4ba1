# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused CPU kernels of cbbench: softmax cross-entropy, sigmoid cross-entropy and focal loss.

Implements the kernel contract in the docstring of :mod:`cbbench.ops` (reduction included: one call
returns the reduced loss and the gradient of the reduced loss). This module checks the arguments and
allocates the outputs; ``cb_cpu_loss.h`` runs the call without the GIL (divisor, rows in fixed chunks
over OpenMP threads, reduced loss), on the row kernels of ``cb_cpu_rows.h`` with the vectorised
exp/log1p of ``cb_math.h``. torch is imported at run time (dtypes, data pointers, outputs); the build
does not need it.
"""
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport free

import os

cdef extern from "cb_cpu_loss.h" nogil:
    int CB_ISA_BASELINE
    int CB_ISA_AVX2
    int CB_ISA_AVX512
    int CB_MULTI_ISA
    int cb_isa_compiled(int isa)
    int cb_isa_supported(int isa)
    int cb_best_isa()
    int cb_openmp()
    int CB_RED_NONE
    int CB_RED_SUM
    int CB_RED_MEAN
    int CB_RED_WEIGHTED_MEAN
    int cb_loss_threads(int64_t M, int64_t C, int max_threads)
    int64_t cb_chunk_rows(int64_t C)
    double* cb_chunk_buffer(int64_t M, int64_t chunk)
    double cb_index_divisor(const int64_t* y, int64_t M, int64_t C, const float* weight, int64_t ignore_index,
                            int red, int64_t* bad_row)
    double cb_softmax_rows[T](int isa, const T* z, const int64_t* y, int64_t M, int64_t C, const float* weight,
                              const float* offset, const float* margin, T scale, T eps, int64_t ignore_index, T g,
                              T* loss_rows, T* grad, int n_threads, double* chunk_sums)
    double cb_sigmoid_rows[T](int isa, const T* z, const int64_t* y, const T* multi_hot, int64_t M, int64_t C,
                              const float* weight, T gamma, T alpha, bint focal, int64_t ignore_index, T g,
                              T* loss_rows, T* grad, int n_threads, double* chunk_sums)
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

_ISA_NAMES = {"baseline": CB_ISA_BASELINE, "avx2": CB_ISA_AVX2, "avx512": CB_ISA_AVX512}
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
    try:  # the C++ fast path runs the same row kernels: one choice for both
        from cbbench import _C
        _C.set_isa(_isa)
    except ImportError:
        pass
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
# argument checks: the contract is cbbench/ops/__init__.py's, but a wrong call must raise, never
# read out of bounds. Cheap attribute reads only: at a batch of 8x10 this wrapper is most of the call.
# ----------------------------------------------------------------------------------------------
import torch

_Tensor = torch.Tensor
_f32 = torch.float32
_f64 = torch.float64
_i64 = torch.int64

_REDUCTION_CODES = {"none": CB_RED_NONE, "sum": CB_RED_SUM, "mean": CB_RED_MEAN,
                    "weighted_mean": CB_RED_WEIGHTED_MEAN}


cdef uintptr_t _ptr(t):
    return <uintptr_t> t.data_ptr()


cdef int _reduction_code(reduction) except -1:
    code = _REDUCTION_CODES.get(reduction)
    if code is None:
        raise ValueError(f"reduction must be one of {tuple(_REDUCTION_CODES)}, got {reduction!r}")
    return code


cdef _check_cpu_tensor(t, name):
    if not isinstance(t, _Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be a CPU tensor, got one on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


cdef tuple _check_logits(logits):
    _check_cpu_tensor(logits, "logits")
    dt = logits.dtype
    if dt is not _f32 and dt is not _f64:
        raise TypeError(f"logits must be float32 or float64 (upcast float16/bfloat16 first), got {dt}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (M, C), got {tuple(logits.shape)}")
    M, C = logits.shape
    if C >= 2 ** 31:  # a row is indexed with int (vector compares of j == y); M is int64
        raise ValueError(f"at most 2**31 - 1 classes, got {C}")
    return M, C


cdef uintptr_t _class_vector(vec, int64_t C, name) except? 0:
    if vec is None:
        return 0
    _check_cpu_tensor(vec, name)
    if vec.dtype is not _f32 or vec.dim() != 1 or vec.shape[0] != C:
        raise ValueError(f"{name} must be a float32 tensor of shape ({C},), got {vec.dtype} {tuple(vec.shape)}")
    return _ptr(vec) if C > 0 else 0


cdef _check_index_target(target, M):
    _check_cpu_tensor(target, "target")
    if target.dtype is not _i64 or target.dim() != 1 or target.shape[0] != M:
        raise ValueError(f"target must be an int64 tensor of shape ({M},), got {target.dtype} {tuple(target.shape)}")


# ----------------------------------------------------------------------------------------------
# reductions (the class-index divisor and the row loops are cb_cpu_loss.h's)
# ----------------------------------------------------------------------------------------------
def _multi_hot_divisor(target, weight, int red, int64_t M):
    """Divisor for multi-hot targets: ``"mean"`` the sum of the targets (at least 1),
    ``"weighted_mean"`` M times the mean column weight (M without a weight; 0 becomes 1)."""
    cdef double d
    if red == CB_RED_MEAN:
        return max(float(target.sum(dtype=_f64)), 1.0)
    if red == CB_RED_WEIGHTED_MEAN:
        d = float(weight.sum(dtype=_f64)) / weight.shape[0] * M if weight is not None else <double> M
        return d if d != 0.0 else 1.0
    return 1.0


cdef _bad_target_error(int64_t value, int64_t C, int64_t ignore_index):
    return ValueError(f"target value {value} is out of range for {C} classes "
                      f"(valid: 0..{C - 1} or ignore_index={ignore_index})")


cdef _reduced(double total, double divisor, dtype):
    """A 0-dim tensor of ``dtype`` holding total / divisor (computed in float64)."""
    out = torch.empty((), dtype=dtype)
    cdef uintptr_t p = _ptr(out)
    if dtype is _f64:
        (<double*> p)[0] = total / divisor
    else:
        (<float*> p)[0] = <float> (total / divisor)
    return out


cdef tuple _outputs(logits, int64_t m, int red, bint need_grad):
    """The row losses' buffer ("none" only) and the gradient (with need_grad), uninitialised."""
    return (torch.empty(m, dtype=logits.dtype) if red == CB_RED_NONE else None,
            torch.empty_like(logits) if need_grad else None)


cdef uintptr_t _ptr_or_null(t):
    return _ptr(t) if t is not None else 0


cdef double* _chunk_buffer(int64_t M, int64_t C) except NULL:
    cdef double* buf = cb_chunk_buffer(M, cb_chunk_rows(C))
    if buf == NULL:
        raise MemoryError()
    return buf


# ----------------------------------------------------------------------------------------------
# the contract
# ----------------------------------------------------------------------------------------------
def softmax_ce(logits, target, weight, logit_offset, target_margin, double scale, double label_smoothing,
               int64_t ignore_index, reduction, bint need_grad):
    """Weighted softmax cross-entropy of (M, C) logits, reduced: ``(loss, grad)``, ``grad`` the
    gradient of the reduced loss (``None`` without ``need_grad``). See :mod:`cbbench.ops`."""
    M, C = _check_logits(logits)
    _check_index_target(target, M)
    cdef const float* w = <const float*> _class_vector(weight, C, "weight")
    cdef const float* off = <const float*> _class_vector(logit_offset, C, "logit_offset")
    cdef const float* mar = <const float*> _class_vector(target_margin, C, "target_margin")
    cdef int red = _reduction_code(reduction)
    cdef int64_t m = M, c = C, bad = -1
    cdef const int64_t* y = <const int64_t*> _ptr(target)
    cdef double divisor
    with nogil:
        divisor = cb_index_divisor(y, m, c, w, ignore_index, red, &bad)
    if bad >= 0:
        raise _bad_target_error(y[bad], c, ignore_index)
    dtype = logits.dtype
    loss_rows, grad = _outputs(logits, m, red, need_grad)
    cdef uintptr_t zp = _ptr(logits), lp = _ptr_or_null(loss_rows), gp = _ptr_or_null(grad)
    cdef int nt = cb_loss_threads(m, c, torch.get_num_threads()), isa = _isa
    cdef double total = 0.0
    cdef bint f32 = dtype is _f32
    cdef double* sums = _chunk_buffer(m, c)
    try:
        with nogil:
            if f32:
                total = cb_softmax_rows[float](isa, <const float*> zp, y, m, c, w, off, mar, <float> scale,
                                               <float> label_smoothing, ignore_index, <float> (1.0 / divisor),
                                               <float*> lp, <float*> gp, nt, sums)
            else:
                total = cb_softmax_rows[double](isa, <const double*> zp, y, m, c, w, off, mar, scale,
                                                label_smoothing, ignore_index, 1.0 / divisor, <double*> lp,
                                                <double*> gp, nt, sums)
    finally:
        free(sums)
    return (loss_rows if red == CB_RED_NONE else _reduced(total, divisor, dtype)), grad


def sigmoid_focal(logits, target, weight, double gamma, double alpha, int64_t ignore_index, bint focal, reduction,
                  bint need_grad):
    """Sigmoid cross-entropy (``focal=False``) or focal loss of (M, C) logits, reduced: ``(loss, grad)``;
    ``alpha < 0``: no alpha. Integer ``target`` (M,) holds class indices (the row weight multiplies all
    C terms); a float ``target`` (M, C) of the logits' dtype is multi-hot (``weight`` per column)."""
    M, C = _check_logits(logits)
    _check_cpu_tensor(target, "target")
    cdef bint multi_hot = target.is_floating_point()
    if multi_hot:
        if target.dtype is not logits.dtype or target.shape != logits.shape:
            raise ValueError(f"a multi-hot target must match the logits ({logits.dtype} {tuple(logits.shape)}), "
                             f"got {target.dtype} {tuple(target.shape)}")
    else:
        _check_index_target(target, M)
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    cdef const float* w = <const float*> _class_vector(weight, C, "weight")
    cdef int red = _reduction_code(reduction)
    cdef int64_t m = M, c = C, bad = -1
    cdef uintptr_t tp = _ptr(target)
    cdef double divisor
    if multi_hot:
        divisor = _multi_hot_divisor(target, weight, red, m)
    else:
        with nogil:
            divisor = cb_index_divisor(<const int64_t*> tp, m, c, w, ignore_index, red, &bad)
        if bad >= 0:
            raise _bad_target_error((<const int64_t*> tp)[bad], c, ignore_index)
    dtype = logits.dtype
    loss_rows, grad = _outputs(logits, m, red, need_grad)
    cdef uintptr_t zp = _ptr(logits), lp = _ptr_or_null(loss_rows), gp = _ptr_or_null(grad)
    cdef uintptr_t yp = 0 if multi_hot else tp, hp = tp if multi_hot else 0
    cdef int nt = cb_loss_threads(m, c, torch.get_num_threads()), isa = _isa
    cdef double total = 0.0
    cdef bint f32 = dtype is _f32
    cdef double* sums = _chunk_buffer(m, c)
    try:
        with nogil:
            if f32:
                total = cb_sigmoid_rows[float](isa, <const float*> zp, <const int64_t*> yp, <const float*> hp, m, c,
                                               w, <float> gamma, <float> alpha, focal, ignore_index,
                                               <float> (1.0 / divisor), <float*> lp, <float*> gp, nt, sums)
            else:
                total = cb_sigmoid_rows[double](isa, <const double*> zp, <const int64_t*> yp, <const double*> hp, m,
                                                c, w, gamma, alpha, focal, ignore_index, 1.0 / divisor, <double*> lp,
                                                <double*> gp, nt, sums)
    finally:
        free(sums)
    return (loss_rows if red == CB_RED_NONE else _reduced(total, divisor, dtype)), grad


def simd_exp(x):
    """exp of a contiguous float32/float64 CPU tensor through the kernels' vectorised exp (for tests)."""
    return _simd_map(x, True)


def simd_log1p(x):
    """log1p through the kernels' vectorised log1p (for tests)."""
    return _simd_map(x, False)


def _simd_map(x, bint is_exp):
    _check_cpu_tensor(x, "x")
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
