// Entry points of cbbench._cpu's row kernels (cb_cpu_rows_impl.h), one build per instruction set and
// a runtime choice among them: the extension is built for the baseline ISA (so one wheel runs
// anywhere), and on x86-64 with GCC the row kernels are also compiled for AVX2+FMA and AVX-512,
// picked at run time by CPUID. That is where the speed comes from: 8 or 16 lanes of exp/log1p
// instead of 4.
#ifndef CBBENCH_CB_CPU_ROWS_H_
#define CBBENCH_CB_CPU_ROWS_H_

#include <stdint.h>

#include <type_traits>
#include <vector>

#include <c10/util/Half.h>

#include "cb_math.h"

// GCC 12's AVX-512 intrinsics (_mm512_undefined_ps: `__m512 __Y = __Y;`) trip -Wuninitialized /
// -Wmaybe-uninitialized where they inline (GCC bug 105593): silenced for this header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

// Tags of the half-precision logits (stored as uint16_t): bfloat16 and IEEE float16.
struct cb_bf16_kind {};
struct cb_f16_kind {};
enum { CB_HALF_BF16 = 0, CB_HALF_F16 = 1 };

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CB_MULTI_ISA 1
#else
#define CB_MULTI_ISA 0
#endif

enum { CB_ISA_BASELINE = 0, CB_ISA_AVX2 = 1, CB_ISA_AVX512 = 2 };

// CB_ISA_LEVEL: what the included copy may use beyond `#pragma omp simd` (explicit F16C / AVX-512
// conversions); GCC's target pragma does not define __AVX2__ / __AVX512F__ for the code under it.
#define CB_ISA_LEVEL 0
namespace cb_isa_baseline {
#include "cb_cpu_rows_impl.h"
}
#undef CB_ISA_LEVEL

#if CB_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define CB_ISA_LEVEL 1
namespace cb_isa_avx2 {
#include "cb_cpu_rows_impl.h"
}
#undef CB_ISA_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,f16c")
#define CB_ISA_LEVEL 2
namespace cb_isa_avx512 {
#include "cb_cpu_rows_impl.h"
}
#undef CB_ISA_LEVEL
#pragma GCC pop_options
#endif

static inline int cb_isa_compiled(int isa) {
  return isa == CB_ISA_BASELINE || (CB_MULTI_ISA && (isa == CB_ISA_AVX2 || isa == CB_ISA_AVX512));
}

static inline int cb_isa_supported(int isa) {
  if (!cb_isa_compiled(isa)) return 0;
#if CB_MULTI_ISA
  __builtin_cpu_init();
  if (isa == CB_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == CB_ISA_AVX512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("fma");
#endif
  return 1;
}

static inline int cb_best_isa(void) {
  if (cb_isa_supported(CB_ISA_AVX512)) return CB_ISA_AVX512;
  if (cb_isa_supported(CB_ISA_AVX2)) return CB_ISA_AVX2;
  return CB_ISA_BASELINE;
}

static inline int cb_openmp(void) {
#ifdef _OPENMP
  return _OPENMP;
#else
  return 0;
#endif
}

#if CB_MULTI_ISA
#define CB_DISPATCH(isa, call)                                                          \
  switch (isa) {                                                                        \
    case CB_ISA_AVX512: return cb_isa_avx512::call;                                     \
    case CB_ISA_AVX2: return cb_isa_avx2::call;                                         \
    default: return cb_isa_baseline::call;                                              \
  }
#else
#define CB_DISPATCH(isa, call) return cb_isa_baseline::call;
#endif

template <typename T>
static inline void cb_exp_array(int isa, const T* x, T* out, int64_t n) {
  CB_DISPATCH(isa, exp_array<T>(x, out, n))
}

template <typename T>
static inline void cb_log1p_array(int isa, const T* x, T* out, int64_t n) {
  CB_DISPATCH(isa, log1p_array<T>(x, out, n))
}

// One chunk's rows (see softmax_ce_rows in cb_cpu_rows_impl.h): the ISA is dispatched once per chunk.
template <typename T>
static inline void cb_softmax_ce_chunk(int isa, const T* z, const int64_t* y, int64_t n, int64_t C,
                                       const float* weight, const float* offset, const float* margin, T scale, T eps,
                                       T gamma, const float* alpha, const float* sample_weight, int64_t ignore_index,
                                       T g, T* loss_rows, T* grad, double* acc) {
  CB_DISPATCH(isa, softmax_ce_rows<T>(z, y, n, C, weight, offset, margin, scale, eps, gamma, alpha, sample_weight,
                                      ignore_index, g, loss_rows, grad, acc))
}

template <typename T>
static inline void cb_sigmoid_chunk(int isa, const T* z, const int64_t* y, const T* multi_hot, int64_t n, int64_t C,
                                    const float* weight, T gamma, T alpha, bool focal, const float* sample_weight,
                                    int64_t ignore_index, T g, T* loss_rows, T* grad, double* acc) {
  CB_DISPATCH(isa, sigmoid_rows<T>(z, y, multi_hot, n, C, weight, gamma, alpha, focal, sample_weight, ignore_index,
                                   g, loss_rows, grad, acc))
}

// float16 / bfloat16 logits (kind: CB_HALF_BF16 or CB_HALF_F16), float32 compute and loss.
static inline void cb_softmax_ce_chunk_half(int isa, int kind, const uint16_t* z, const int64_t* y, int64_t n,
                                            int64_t C, const float* weight, const float* offset, const float* margin,
                                            float scale, float eps, float gamma, const float* alpha,
                                            const float* sample_weight, int64_t ignore_index, float g,
                                            float* loss_rows, uint16_t* grad, double* acc) {
  if (kind == CB_HALF_BF16) {
    CB_DISPATCH(isa, softmax_ce_rows_half<cb_bf16_kind>(z, y, n, C, weight, offset, margin, scale, eps, gamma, alpha,
                                                        sample_weight, ignore_index, g, loss_rows, grad, acc))
  }
  CB_DISPATCH(isa, softmax_ce_rows_half<cb_f16_kind>(z, y, n, C, weight, offset, margin, scale, eps, gamma, alpha,
                                                     sample_weight, ignore_index, g, loss_rows, grad, acc))
}

static inline void cb_sigmoid_chunk_half(int isa, int kind, const uint16_t* z, const int64_t* y,
                                         const float* multi_hot, int64_t n, int64_t C, const float* weight,
                                         float gamma, float alpha, bool focal, const float* sample_weight,
                                         int64_t ignore_index, float g, float* loss_rows, uint16_t* grad,
                                         double* acc) {
  if (kind == CB_HALF_BF16) {
    CB_DISPATCH(isa, sigmoid_rows_half<cb_bf16_kind>(z, y, multi_hot, n, C, weight, gamma, alpha, focal,
                                                     sample_weight, ignore_index, g, loss_rows, grad, acc))
  }
  CB_DISPATCH(isa, sigmoid_rows_half<cb_f16_kind>(z, y, multi_hot, n, C, weight, gamma, alpha, focal, sample_weight,
                                                  ignore_index, g, loss_rows, grad, acc))
}

#undef CB_DISPATCH
#pragma GCC diagnostic pop
#endif  // CBBENCH_CB_CPU_ROWS_H_
