# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""cbbench's CPU kernels: the CPU front end of the ops ``cbbench::softmax_cross_entropy_fused`` and
``cbbench::sigmoid_focal_fused`` (and ``loss_divisor``, ``scale_grad_``).

Compiled as C++ against torch: ``kernels/cpu/cpu_ops.h`` registers the kernels for the CPU dispatch key
when this module is imported and does what a call needs around the rows (checks, outputs, the divisor);
the row loops are here -- ``prange`` over chunks of rows without the GIL, each row by the shared C++ row
math of ``cb_cpu_rows.h`` (one fused pass: loss and gradient), the chunks' sums added in chunk order so
the loss is bitwise the same at any thread count. The instruction set of the row kernels is chosen once,
here (``set_isa``). The schemas and the autograd are the op library's (``kernels/ops/ops.cpp``,
``cbbench._C``).
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uintptr_t

import os

cdef extern from "cpu_ops.h":
    pass  # the CPU kernels and their registration (static initialisers run when this module loads)

cdef extern from "cb_cpu_loss.h" nogil:
    int64_t cb_chunk_rows(int64_t C)
    int64_t cb_chunk_count(int64_t M, int64_t C)

cdef extern from "cb_cpu_rows.h" nogil:
    int CB_ISA_BASELINE
    int CB_ISA_AVX2
    int CB_ISA_AVX512
    int cb_isa_compiled(int isa)
    int cb_isa_supported(int isa)
    int cb_best_isa()
    int cb_openmp()
    T cb_softmax_ce_row[T](int isa, const T* z, int64_t C, int64_t y, const float* weight, const float* offset,
                           const float* margin, T scale, T eps, T gamma, const float* alpha, int64_t ignore_index,
                           T g, T* grad)
    T cb_sigmoid_index_row[T](int isa, const T* z, int64_t C, int64_t y, const float* weight, T gamma, T alpha,
                              bint focal, int64_t ignore_index, T g, T* grad)
    T cb_sigmoid_multihot_row[T](int isa, const T* z, const T* t, int64_t C, const float* weight, T gamma, T alpha,
                                 bint focal, T g, T* grad)
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
# the row loops (called by kernels/cpu/cpu_ops.h, without the GIL). A sample weight s_i scales its row's
# loss and, through the gradient scale g, its gradient, in the same pass.
# ----------------------------------------------------------------------------------------------
cdef inline real _softmax_row(int isa, const real* z, const int64_t* y, int64_t i, int64_t C, const float* weight,
                              const float* offset, const float* margin, real scale, real eps, real gamma,
                              const float* alpha, const float* sample_weight, int64_t ignore_index, real g,
                              real* loss_rows, real* grad) noexcept nogil:
    cdef real s = <real> sample_weight[i] if sample_weight != NULL else <real> 1
    cdef real v = s * cb_softmax_ce_row(isa, z + i * C, C, y[i], weight, offset, margin, scale, eps, gamma, alpha,
                                        ignore_index, g * s, grad + i * C if grad != NULL else NULL)
    if loss_rows != NULL:
        loss_rows[i] = v
    return v


cdef inline real _sigmoid_row(int isa, const real* z, const int64_t* y, const real* multi_hot, int64_t i, int64_t C,
                              const float* weight, real gamma, real alpha, bint focal, const float* sample_weight,
                              int64_t ignore_index, real g, real* loss_rows, real* grad) noexcept nogil:
    cdef real* grad_row = grad + i * C if grad != NULL else NULL
    cdef real s = <real> sample_weight[i] if sample_weight != NULL else <real> 1
    cdef real v
    if multi_hot != NULL:
        v = cb_sigmoid_multihot_row(isa, z + i * C, multi_hot + i * C, C, weight, gamma, alpha, focal, g * s,
                                    grad_row)
    else:
        v = cb_sigmoid_index_row(isa, z + i * C, C, y[i], weight, gamma, alpha, focal, ignore_index, g * s,
                                 grad_row)
    v = s * v
    if loss_rows != NULL:
        loss_rows[i] = v
    return v


cdef double _ordered_sum(const double* chunk_sums, int64_t n) noexcept nogil:
    cdef double total = 0.0
    cdef int64_t k
    for k in range(n):
        total = total + chunk_sums[k]
    return total


cdef inline double _softmax_chunk(int isa, int64_t k, int64_t chunk, const real* z, const int64_t* y, int64_t M,
                                  int64_t C, const float* weight, const float* offset, const float* margin,
                                  real scale, real eps, real gamma, const float* alpha, const float* sample_weight,
                                  int64_t ignore_index, real g, real* loss_rows, real* grad) noexcept nogil:
    cdef double acc = 0.0
    cdef int64_t i
    for i in range(k * chunk, min((k + 1) * chunk, M)):
        acc = acc + _softmax_row(isa, z, y, i, C, weight, offset, margin, scale, eps, gamma, alpha, sample_weight,
                                 ignore_index, g, loss_rows, grad)
    return acc


cdef inline double _sigmoid_chunk(int isa, int64_t k, int64_t chunk, const real* z, const int64_t* y,
                                  const real* multi_hot, int64_t M, int64_t C, const float* weight, real gamma,
                                  real alpha, bint focal, const float* sample_weight, int64_t ignore_index, real g,
                                  real* loss_rows, real* grad) noexcept nogil:
    cdef double acc = 0.0
    cdef int64_t i
    for i in range(k * chunk, min((k + 1) * chunk, M)):
        acc = acc + _sigmoid_row(isa, z, y, multi_hot, i, C, weight, gamma, alpha, focal, sample_weight,
                                 ignore_index, g, loss_rows, grad)
    return acc


cdef double _softmax_rows(const real* z, const int64_t* y, int64_t M, int64_t C, const float* weight,
                          const float* offset, const float* margin, real scale, real eps, real gamma,
                          const float* alpha, const float* sample_weight, int64_t ignore_index, real g,
                          real* loss_rows, real* grad, int n_threads, double* chunk_sums) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t chunk = cb_chunk_rows(C), n = cb_chunk_count(M, C), k
    if n_threads > 1:
        for k in prange(n, schedule="dynamic", chunksize=1, num_threads=n_threads):
            chunk_sums[k] = _softmax_chunk(isa, k, chunk, z, y, M, C, weight, offset, margin, scale, eps, gamma,
                                           alpha, sample_weight, ignore_index, g, loss_rows, grad)
    else:
        for k in range(n):
            chunk_sums[k] = _softmax_chunk(isa, k, chunk, z, y, M, C, weight, offset, margin, scale, eps, gamma,
                                           alpha, sample_weight, ignore_index, g, loss_rows, grad)
    return _ordered_sum(chunk_sums, n)


cdef double _sigmoid_rows(const real* z, const int64_t* y, const real* multi_hot, int64_t M, int64_t C,
                          const float* weight, real gamma, real alpha, bint focal, const float* sample_weight,
                          int64_t ignore_index, real g, real* loss_rows, real* grad, int n_threads,
                          double* chunk_sums) noexcept nogil:
    cdef int isa = _isa
    cdef int64_t chunk = cb_chunk_rows(C), n = cb_chunk_count(M, C), k
    if n_threads > 1:
        for k in prange(n, schedule="dynamic", chunksize=1, num_threads=n_threads):
            chunk_sums[k] = _sigmoid_chunk(isa, k, chunk, z, y, multi_hot, M, C, weight, gamma, alpha, focal,
                                           sample_weight, ignore_index, g, loss_rows, grad)
    else:
        for k in range(n):
            chunk_sums[k] = _sigmoid_chunk(isa, k, chunk, z, y, multi_hot, M, C, weight, gamma, alpha, focal,
                                           sample_weight, ignore_index, g, loss_rows, grad)
    return _ordered_sum(chunk_sums, n)


cdef public double cbcpu_softmax_rows_f32(const float* z, const int64_t* y, int64_t M, int64_t C,
                                          const float* weight, const float* offset, const float* margin, float scale,
                                          float eps, float gamma, const float* alpha, const float* sample_weight,
                                          int64_t ignore_index, float g, float* loss_rows, float* grad,
                                          int n_threads, double* chunk_sums) noexcept nogil:
    return _softmax_rows[float](z, y, M, C, weight, offset, margin, scale, eps, gamma, alpha, sample_weight,
                                ignore_index, g, loss_rows, grad, n_threads, chunk_sums)


cdef public double cbcpu_softmax_rows_f64(const double* z, const int64_t* y, int64_t M, int64_t C,
                                          const float* weight, const float* offset, const float* margin,
                                          double scale, double eps, double gamma, const float* alpha,
                                          const float* sample_weight, int64_t ignore_index, double g,
                                          double* loss_rows, double* grad, int n_threads,
                                          double* chunk_sums) noexcept nogil:
    return _softmax_rows[double](z, y, M, C, weight, offset, margin, scale, eps, gamma, alpha, sample_weight,
                                 ignore_index, g, loss_rows, grad, n_threads, chunk_sums)


cdef public double cbcpu_sigmoid_rows_f32(const float* z, const int64_t* y, const float* multi_hot, int64_t M,
                                          int64_t C, const float* weight, float gamma, float alpha, int focal,
                                          const float* sample_weight, int64_t ignore_index, float g,
                                          float* loss_rows, float* grad, int n_threads,
                                          double* chunk_sums) noexcept nogil:
    return _sigmoid_rows[float](z, y, multi_hot, M, C, weight, gamma, alpha, focal != 0, sample_weight, ignore_index,
                                g, loss_rows, grad, n_threads, chunk_sums)


cdef public double cbcpu_sigmoid_rows_f64(const double* z, const int64_t* y, const double* multi_hot, int64_t M,
                                          int64_t C, const float* weight, double gamma, double alpha, int focal,
                                          const float* sample_weight, int64_t ignore_index, double g,
                                          double* loss_rows, double* grad, int n_threads,
                                          double* chunk_sums) noexcept nogil:
    return _sigmoid_rows[double](z, y, multi_hot, M, C, weight, gamma, alpha, focal != 0, sample_weight,
                                 ignore_index, g, loss_rows, grad, n_threads, chunk_sums)


# ----------------------------------------------------------------------------------------------
# the vectorised exp / log1p of the row kernels, for their accuracy tests
# ----------------------------------------------------------------------------------------------
import torch


def simd_exp(x):
    """exp of a contiguous float32/float64 CPU tensor through the kernels' vectorised exp (for tests)."""
    return _simd_map(x, True)


def simd_log1p(x):
    """log1p through the kernels' vectorised log1p (for tests)."""
    return _simd_map(x, False)


def _simd_map(x, bint is_exp):
    if not isinstance(x, torch.Tensor) or not x.is_cpu or not x.is_contiguous():
        raise ValueError("x must be a contiguous CPU tensor")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    out = torch.empty_like(x)
    cdef uintptr_t xp = <uintptr_t> x.data_ptr(), op = <uintptr_t> out.data_ptr()
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
