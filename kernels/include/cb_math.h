// Scalar math of the class-balanced losses, written once for the Cython (C++) and CUDA kernels.
//
// Every function is the stable form of the formula in cbbench/reference.py:
//   softplus(x)        = max(x, 0) + log1p(exp(-|x|))          never log(1 + exp(x))
//   bce(z, t)          = t max(-z, 0) + (1 - t) max(z, 0) + log1p(exp(-|z|))
//                                                               = softplus(z) - t z without cancellation
//   focal modulator    = exp(-gamma bce(z, 1 - t))             = (1 - p_t)^gamma, never overflows
//   d/dz [m * bce]     = m (p - t) - gamma m (p + t - 1) bce    (no (1 - p)^(gamma - 1): safe for gamma < 1)
// Float and double overloads; CB_FN makes them __host__ __device__ under nvcc.
#ifndef CBBENCH_CB_MATH_H_
#define CBBENCH_CB_MATH_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define CB_FN __host__ __device__ __forceinline__
#else
#define CB_FN static inline
#endif

// The vectorisable functions must inline into the CPU kernels' `#pragma omp simd` loops (a call
// stops vectorisation, and GCC declines to inline the larger ones on its own).
#if defined(__CUDACC__) || !defined(__GNUC__)
#define CB_FN_INLINE CB_FN
#else
#define CB_FN_INLINE static inline __attribute__((always_inline))
#endif

// ---- exp / log1p, one name for both precisions ------------------------------------------------
CB_FN float cb_exp(float x) { return expf(x); }
CB_FN double cb_exp(double x) { return exp(x); }
CB_FN float cb_log(float x) { return logf(x); }
CB_FN double cb_log(double x) { return log(x); }
CB_FN float cb_log1p(float x) { return log1pf(x); }
CB_FN double cb_log1p(double x) { return log1p(x); }
CB_FN float cb_expm1(float x) { return expm1f(x); }
CB_FN double cb_expm1(double x) { return expm1(x); }
CB_FN float cb_abs(float x) { return fabsf(x); }
CB_FN double cb_abs(double x) { return fabs(x); }
CB_FN float cb_max(float a, float b) { return a > b ? a : b; }
CB_FN double cb_max(double a, double b) { return a > b ? a : b; }

// ---- vectorisable exp / log1p -----------------------------------------------------------------
// A libm call keeps a `#pragma omp simd` loop scalar (GCC maps expf/log1pf to vector libmvec only
// under -ffast-math, which also drops inf/NaN semantics). These use arithmetic, selects and bit
// operations only, so loops over them vectorise at any ISA, and they keep inf/NaN semantics:
//   exp:   Cody-Waite reduction by ln 2 and a polynomial; 2^k is applied in two halves so results
//          that are subnormal or overflow are rounded once, like expf/exp.
//   log1p: u = 1 + x written as 2^k m with m in [sqrt(1/2), sqrt(2)), log m by polynomial, and the
//          rounding error of 1 + x added back as c / u (fdlibm's log1p scheme).
// Accuracy against float64 / correctly rounded values is tested in tests/test_cpu_kernels.py.
CB_FN_INLINE uint32_t cb_bits(float x) { uint32_t i; memcpy(&i, &x, sizeof i); return i; }
CB_FN_INLINE uint64_t cb_bits(double x) { uint64_t i; memcpy(&i, &x, sizeof i); return i; }
CB_FN_INLINE float cb_float_from_bits(uint32_t i) { float x; memcpy(&x, &i, sizeof x); return x; }
CB_FN_INLINE double cb_double_from_bits(uint64_t i) { double x; memcpy(&x, &i, sizeof x); return x; }

CB_FN_INLINE float cb_exp_simd(float x) {
  x = x < -104.0f ? -104.0f : x;  // exp(-104) rounds to 0, exp(89) to inf; NaN fails both tests
  x = x > 89.0f ? 89.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  const float kf = x * 1.44269504088896341f + shifter;
  const float n = kf - shifter;
  const uint32_t k = cb_bits(kf) - cb_bits(shifter);  // n as a two's complement integer
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const uint32_t k1 = ((k + 256u) >> 1) - 128u;  // floor(n / 2) by a logical shift: n >= -151
  const uint32_t k2 = k - k1;
  return y * cb_float_from_bits((k1 + 127u) << 23) * cb_float_from_bits((k2 + 127u) << 23);
}

CB_FN_INLINE double cb_exp_simd(double x) {
  x = x < -746.0 ? -746.0 : x;
  x = x > 710.0 ? 710.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double kf = x * 1.4426950408889634074 + shifter;
  const double n = kf - shifter;
  const uint64_t k = cb_bits(kf) - cb_bits(shifter);
  const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  // Taylor series to r^13: the truncation error is below 1e-17 for |r| <= ln(2) / 2.
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const uint64_t k1 = ((k + 2048u) >> 1) - 1024u;  // n >= -1077
  const uint64_t k2 = k - k1;
  return p * cb_double_from_bits((k1 + 1023u) << 52) * cb_double_from_bits((k2 + 1023u) << 52);
}

CB_FN_INLINE float cb_log1p_simd(float x) {
  const float u = 1.0f + x;
  // c = (1 + x) - u exactly (Sterbenz), relative to u. Times 1 / u rather than divided by u: the
  // sigmoid next to it in the kernels computes the same 1 / (1 + x), and the compiler shares the
  // (slow, vector) division; c is a correction below ulp(u), so the extra rounding does not show.
  const float c = (u < 2.0f ? x - (u - 1.0f) : 1.0f - (u - x)) * (1.0f / u);
  uint32_t iu = cb_bits(u) + (0x3f800000u - 0x3f3504f3u);
  const float kf = (float)((int32_t)(iu >> 23) - 127);
  iu = (iu & 0x007fffffu) + 0x3f3504f3u;
  const float f = cb_float_from_bits(iu) - 1.0f;  // m - 1, m in [sqrt(1/2), sqrt(2))
  const float z = f * f;
  float y = 7.0376836292e-2f;  // Cephes logf
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += kf * -2.12194440e-4f + c;
  y += -0.5f * z;
  float res = (f + y) + kf * 0.693359375f;
  res = x < INFINITY ? res : x;  // +inf and NaN pass through
  res = x == -1.0f ? -INFINITY : res;
  return x < -1.0f ? NAN : res;
}

CB_FN_INLINE double cb_log1p_simd(double x) {
  const double u = 1.0 + x;
  const double c = (u < 2.0 ? x - (u - 1.0) : 1.0 - (u - x)) * (1.0 / u);
  const uint64_t iu = cb_bits(u);
  uint32_t hu = (uint32_t)(iu >> 32) + (0x3ff00000u - 0x3fe6a09eu);
  const double dk = (double)((int32_t)(hu >> 20) - 1023);
  hu = (hu & 0x000fffffu) + 0x3fe6a09eu;
  const double f = cb_double_from_bits(((uint64_t)hu << 32) | (iu & 0xffffffffu)) - 1.0;
  const double hfsq = 0.5 * f * f;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double w = z * z;
  const double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 +
                    w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  double res = s * (hfsq + (t2 + t1)) + (dk * 1.90821492927058770002e-10 + c) - hfsq + f +
               dk * 6.93147180369123816490e-01;
  res = x < INFINITY ? res : x;
  res = x == -1.0 ? -INFINITY : res;
  return x < -1.0 ? NAN : res;
}

// ---- choice of exp / log1p for the composite functions below ------------------------------------
// cb_libm_math: libm (and CUDA's) exp/log1p, what the one-argument-shorter overloads use.
// cb_simd_math: the vectorisable versions above, for the CPU kernels' `#pragma omp simd` row loops.
struct cb_libm_math {};
struct cb_simd_math {};
CB_FN_INLINE float cb_exp(float x, cb_libm_math) { return cb_exp(x); }
CB_FN_INLINE double cb_exp(double x, cb_libm_math) { return cb_exp(x); }
CB_FN_INLINE float cb_log1p(float x, cb_libm_math) { return cb_log1p(x); }
CB_FN_INLINE double cb_log1p(double x, cb_libm_math) { return cb_log1p(x); }
CB_FN_INLINE float cb_exp(float x, cb_simd_math) { return cb_exp_simd(x); }
CB_FN_INLINE double cb_exp(double x, cb_simd_math) { return cb_exp_simd(x); }
CB_FN_INLINE float cb_log1p(float x, cb_simd_math) { return cb_log1p_simd(x); }
CB_FN_INLINE double cb_log1p(double x, cb_simd_math) { return cb_log1p_simd(x); }

// ---- sigmoid family ---------------------------------------------------------------------------
template <typename T, typename Math>
CB_FN_INLINE T cb_softplus(T x, Math math) {
  return cb_max(x, T(0)) + cb_log1p(cb_exp(-cb_abs(x), math), math);
}
template <typename T>
CB_FN T cb_softplus(T x) { return cb_softplus(x, cb_libm_math()); }

// sigmoid(x) from e = exp(-|x|): no overflow, full relative precision on both tails.
template <typename T, typename Math>
CB_FN_INLINE T cb_sigmoid(T x, Math math) {
  const T e = cb_exp(-cb_abs(x), math);
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}
template <typename T>
CB_FN T cb_sigmoid(T x) { return cb_sigmoid(x, cb_libm_math()); }

// t softplus(-z) + (1 - t) softplus(z) with softplus(+-z) = max(+-z, 0) + log1p(exp(-|z|)) sharing
// one log1p. A term whose coefficient is exactly 0 is skipped, not multiplied: a masked logit
// z = -inf with t = 0 gives 0, not 0 * inf = NaN (likewise z = +inf with t = 1).
template <typename T>
CB_FN_INLINE T cb_weighted_hinges(T z, T t) {
  const T neg = t != T(0) ? t * cb_max(-z, T(0)) : T(0);
  const T pos = t != T(1) ? (T(1) - t) * cb_max(z, T(0)) : T(0);
  return neg + pos;
}

template <typename T, typename Math>
CB_FN_INLINE T cb_bce(T z, T t, Math math) {
  return cb_weighted_hinges(z, t) + cb_log1p(cb_exp(-cb_abs(z), math), math);
}
template <typename T>
CB_FN T cb_bce(T z, T t) { return cb_bce(z, t, cb_libm_math()); }

// (1 - p_t)^gamma for target t in [0, 1], in log space: -log(1 - p_t) = t z + softplus(-z) is the
// binary cross-entropy against the flipped target, bce(z, 1 - t) (finite at z = -inf, t = 0).
template <typename T, typename Math>
CB_FN_INLINE T cb_focal_modulator(T z, T t, T gamma, Math math) {
  return cb_exp(-gamma * cb_bce(z, T(1) - t, math), math);
}
template <typename T>
CB_FN T cb_focal_modulator(T z, T t, T gamma) { return cb_focal_modulator(z, t, gamma, cb_libm_math()); }

// One focal term and its derivative with respect to z. gamma = 0 gives exactly bce and p - t.
template <typename T, typename Math>
CB_FN_INLINE void cb_focal_term(T z, T t, T gamma, T* loss, T* dloss, Math math) {
  const T p = cb_sigmoid(z, math);
  const T b = cb_bce(z, t, math);
  if (gamma == T(0)) {
    *loss = b;
    *dloss = p - t;
    return;
  }
  const T m = cb_focal_modulator(z, t, gamma, math);
  *loss = m * b;
  *dloss = m * ((p - t) - gamma * (p + t - T(1)) * b);
}
template <typename T>
CB_FN void cb_focal_term(T z, T t, T gamma, T* loss, T* dloss) {
  cb_focal_term(z, t, gamma, loss, dloss, cb_libm_math());
}

// RetinaNet's alpha_t = alpha t + (1 - alpha)(1 - t); alpha < 0 means "no alpha" (factor 1).
template <typename T>
CB_FN T cb_alpha_factor(T t, T alpha) {
  return alpha < T(0) ? T(1) : alpha * t + (T(1) - alpha) * (T(1) - t);
}

// ---- softmax focal ------------------------------------------------------------------------------
// The softmax focal loss of a row is (1 - p_y)^gamma * nll with nll = -log p_y = lse - z'_y >= 0, and
// its gradient is grad_factor * (p_j - [j == y]) with (L = log p_y, q = 1 - p_y)
//   grad_factor = q^gamma - gamma p_y q^(gamma - 1) L = q^gamma (1 + gamma p_y L / expm1(L)),
// where q = -expm1(L) and L / expm1(L) in (0, 1] are formed without cancellation, and q^gamma =
// exp(gamma log q): no (1 - p_y)^(gamma - 1), so every gamma >= 0 is finite as p_y -> 1 (q -> 0 gives a
// modulator and a factor of 0 for gamma > 0). gamma = 0 gives exactly 1 and 1: cross-entropy.
template <typename T>
CB_FN void cb_softmax_focal(T nll, T gamma, T* modulator, T* grad_factor) {
  if (gamma == T(0)) {
    *modulator = T(1);
    *grad_factor = T(1);
    return;
  }
  const T L = -nll;
  const T em = cb_expm1(L);                 // p_y - 1 = -q, in [-1, 0]
  const T m = cb_exp(gamma * cb_log(-em));  // q^gamma; exp(-inf) = 0 at q = 0
  const T py = cb_exp(L);
  // p_y L / expm1(L): its limit 1 at p_y = 1, and 0 where p_y underflows (a masked target: L = -inf)
  const T term = em == T(0) ? T(1) : (py == T(0) ? T(0) : py * (L / em));
  *modulator = m;
  *grad_factor = m * (T(1) + gamma * term);
}

#endif  // CBBENCH_CB_MATH_H_
