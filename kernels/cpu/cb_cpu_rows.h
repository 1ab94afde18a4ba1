// Entry points of cbbench._cpu's row kernels (cb_cpu_rows_impl.h), one build per instruction set and
// a runtime choice among them: the extension is built for the baseline ISA (so one wheel runs
// anywhere), and on x86-64 with GCC the row kernels are also compiled for AVX2+FMA and AVX-512,
// picked at run time by CPUID. That is where the speed comes from: 8 or 16 lanes of exp/log1p
// instead of 4.
#ifndef CBBENCH_CB_CPU_ROWS_H_
#define CBBENCH_CB_CPU_ROWS_H_

#include <stdint.h>

#include "cb_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CB_MULTI_ISA 1
#else
#define CB_MULTI_ISA 0
#endif

enum { CB_ISA_BASELINE = 0, CB_ISA_AVX2 = 1, CB_ISA_AVX512 = 2 };

namespace cb_isa_baseline {
#include "cb_cpu_rows_impl.h"
}

#if CB_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
namespace cb_isa_avx2 {
#include "cb_cpu_rows_impl.h"
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi,bmi2,f16c")
namespace cb_isa_avx512 {
#include "cb_cpu_rows_impl.h"
}
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
static inline T cb_softmax_ce_row(int isa, const T* z, int64_t C, int64_t y, const float* weight,
                                  const float* offset, const float* margin, T scale, T eps, T gamma,
                                  const float* alpha, int64_t ignore_index, T g, T* grad) {
  CB_DISPATCH(isa, softmax_ce_row<T>(z, C, y, weight, offset, margin, scale, eps, gamma, alpha, ignore_index, g, grad))
}

template <typename T>
static inline T cb_sigmoid_index_row(int isa, const T* z, int64_t C, int64_t y, const float* weight, T gamma,
                                     T alpha, bool focal, int64_t ignore_index, T g, T* grad) {
  CB_DISPATCH(isa, sigmoid_index_row<T>(z, C, y, weight, gamma, alpha, focal, ignore_index, g, grad))
}

template <typename T>
static inline T cb_sigmoid_multihot_row(int isa, const T* z, const T* t, int64_t C, const float* weight, T gamma,
                                        T alpha, bool focal, T g, T* grad) {
  CB_DISPATCH(isa, sigmoid_multihot_row<T>(z, t, C, weight, gamma, alpha, focal, g, grad))
}

template <typename T>
static inline void cb_exp_array(int isa, const T* x, T* out, int64_t n) {
  CB_DISPATCH(isa, exp_array<T>(x, out, n))
}

template <typename T>
static inline void cb_log1p_array(int isa, const T* x, T* out, int64_t n) {
  CB_DISPATCH(isa, log1p_array<T>(x, out, n))
}

#undef CB_DISPATCH
#endif  // CBBENCH_CB_CPU_ROWS_H_
