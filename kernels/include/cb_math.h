// Scalar math of the class-balanced losses, written once for the Cython (C++) and CUDA kernels.
//
// Every function is the stable form of the formula in cbbench/reference.py:
//   softplus(x)        = max(x, 0) + log1p(exp(-|x|))          never log(1 + exp(x))
//   bce(z, t)          = max(z, 0) - t z + log1p(exp(-|z|))     = softplus(z) - t z without cancellation
//   focal modulator    = exp(-gamma (t z + softplus(-z)))      = (1 - p_t)^gamma, never overflows
//   d/dz [m * bce]     = m (p - t) - gamma m (p + t - 1) bce    (no (1 - p)^(gamma - 1): safe for gamma < 1)
// Float and double overloads; CB_FN makes them __host__ __device__ under nvcc.
#ifndef CBBENCH_CB_MATH_H_
#define CBBENCH_CB_MATH_H_

#include <math.h>

#if defined(__CUDACC__)
#define CB_FN __host__ __device__ __forceinline__
#else
#define CB_FN static inline
#endif

// ---- exp / log1p, one name for both precisions ------------------------------------------------
CB_FN float cb_exp(float x) { return expf(x); }
CB_FN double cb_exp(double x) { return exp(x); }
CB_FN float cb_log(float x) { return logf(x); }
CB_FN double cb_log(double x) { return log(x); }
CB_FN float cb_log1p(float x) { return log1pf(x); }
CB_FN double cb_log1p(double x) { return log1p(x); }
CB_FN float cb_abs(float x) { return fabsf(x); }
CB_FN double cb_abs(double x) { return fabs(x); }
CB_FN float cb_max(float a, float b) { return a > b ? a : b; }
CB_FN double cb_max(double a, double b) { return a > b ? a : b; }

// ---- sigmoid family ---------------------------------------------------------------------------
template <typename T>
CB_FN T cb_softplus(T x) {
  return cb_max(x, T(0)) + cb_log1p(cb_exp(-cb_abs(x)));
}

// sigmoid(x) from e = exp(-|x|): no overflow, full relative precision on both tails.
template <typename T>
CB_FN T cb_sigmoid(T x) {
  const T e = cb_exp(-cb_abs(x));
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}

template <typename T>
CB_FN T cb_bce(T z, T t) {
  return cb_max(z, T(0)) - t * z + cb_log1p(cb_exp(-cb_abs(z)));
}

// (1 - p_t)^gamma for target t in [0, 1], in log space.
template <typename T>
CB_FN T cb_focal_modulator(T z, T t, T gamma) {
  return cb_exp(-gamma * (t * z + cb_softplus(-z)));
}

// One focal term and its derivative with respect to z. gamma = 0 gives exactly bce and p - t.
template <typename T>
CB_FN void cb_focal_term(T z, T t, T gamma, T* loss, T* dloss) {
  const T p = cb_sigmoid(z);
  const T b = cb_bce(z, t);
  if (gamma == T(0)) {
    *loss = b;
    *dloss = p - t;
    return;
  }
  const T m = cb_focal_modulator(z, t, gamma);
  *loss = m * b;
  *dloss = m * ((p - t) - gamma * (p + t - T(1)) * b);
}

// RetinaNet's alpha_t = alpha t + (1 - alpha)(1 - t); alpha < 0 means "no alpha" (factor 1).
template <typename T>
CB_FN T cb_alpha_factor(T t, T alpha) {
  return alpha < T(0) ? T(1) : alpha * t + (T(1) - alpha) * (T(1) - t);
}

#endif  // CBBENCH_CB_MATH_H_
