// Row kernels of cbbench._cpu, compiled once per instruction set: cb_cpu_rows.h includes this file
// inside a namespace under `#pragma GCC target(...)`, so there is deliberately no include guard.
//
// Each function handles one row of C logits: loss and (optionally) gradient in one call, with every
// per-element loop a `#pragma omp simd` loop over cb_math.h's vectorisable exp/log1p. Rows are
// independent and every reduction runs in a fixed order, so results do not depend on the thread
// count. One loop per pass over the row (the target column picked by a `j == y` select, not by
// splitting the loop at y): every loop leaves a scalar remainder, and that costs more than the select.

template <typename T>
static inline void fill_row(T* out, int n, T value) {
#pragma omp simd
  for (int j = 0; j < n; ++j) out[j] = value;
}

// ---- softmax cross-entropy ------------------------------------------------------------------
// z'_j = scale * v_j with v_j = z_j + offset_j - [j == y] margin_y (reference.softmax_cross_entropy).
// Working on v (scale > 0 keeps the max) gives z'_j - max z' = scale * (v_j - max v): a product of a
// difference, which -ffp-contract=fast cannot fuse, so the target row's max cancels exactly (C = 1
// gives a loss of exactly 0, not +-ulp).
template <typename T, bool OFFSET>
static inline T shifted_logit(const T* z, const float* offset, int j, int y, T my) {
  const T v = OFFSET ? z[j] + T(offset[j]) : z[j];
  return j == y ? v - my : v;
}

template <typename T, bool OFFSET, bool STORE>
static T softmax_ce_row_t(const T* z, int n, int y, const float* weight, const float* offset,
                          const float* margin, T scale, T eps, T g, T* grad) {
  const T my = margin ? T(margin[y]) : T(0);
  const T vy = shifted_logit<T, OFFSET>(z, offset, y, y, my);
  T mv = vy, vsum = T(0);
#pragma omp simd reduction(max : mv) reduction(+ : vsum)
  for (int j = 0; j < n; ++j) {
    const T v = shifted_logit<T, OFFSET>(z, offset, j, y, my);
    mv = v > mv ? v : mv;
    vsum += v;
  }
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) {
    const T e = cb_exp(scale * (shifted_logit<T, OFFSET>(z, offset, j, y, my) - mv), cb_simd_math());
    if (STORE) grad[j] = e;  // the gradient row holds the exponentials until the last pass
    s += e;
  }
  const T log_s = cb_log(s);
  const T w = weight ? T(weight[y]) : T(1);
  T nll = scale * (mv - vy) + log_s;  // lse - z'_y without forming lse (no cancellation at large |z|)
  if (eps > T(0)) nll = (T(1) - eps) * nll + eps * (scale * (mv - vsum / T(n)) + log_s);
  if (STORE) {
    const T gw = g * w * scale;
    const T a = gw / s;
    const T b = gw * eps / T(n);
    const T ty = gw * (T(1) - eps);
#pragma omp simd
    for (int j = 0; j < n; ++j) grad[j] = grad[j] * a - (j == y ? b + ty : b);
  }
  return w * nll;
}

template <typename T>
static T softmax_ce_row(const T* z, int64_t C, int64_t y, const float* weight, const float* offset,
                        const float* margin, T scale, T eps, int64_t ignore_index, T g, T* grad) {
  if (y == ignore_index) {
    if (grad) fill_row(grad, C, T(0));
    return T(0);
  }
  if (y < 0 || y >= C) {  // a bad target poisons its row instead of reading out of bounds
    if (grad) fill_row(grad, C, T(NAN));
    return T(NAN);
  }
  if (offset) {
    return grad ? softmax_ce_row_t<T, true, true>(z, C, y, weight, offset, margin, scale, eps, g, grad)
                : softmax_ce_row_t<T, true, false>(z, C, y, weight, offset, margin, scale, eps, g, grad);
  }
  return grad ? softmax_ce_row_t<T, false, true>(z, C, y, weight, offset, margin, scale, eps, g, grad)
              : softmax_ce_row_t<T, false, false>(z, C, y, weight, offset, margin, scale, eps, g, grad);
}

// ---- sigmoid cross-entropy / focal loss -----------------------------------------------------
// FOCAL = false passes gamma = 0 as a constant, so cb_focal_term folds to bce and p - t.
template <typename T, bool FOCAL, bool ALPHA, bool STORE>
static T sigmoid_index_row_t(const T* z, int n, int y, T w, T gamma, T alpha, T g, T* grad) {
  const T gm = FOCAL ? gamma : T(0);
  const T gw = g * w;
  const T a0 = ALPHA ? cb_alpha_factor(T(0), alpha) : T(1);
  const T a1 = ALPHA ? cb_alpha_factor(T(1), alpha) : T(1);
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int j = 0; j < n; ++j) {
    const bool pos = j == y;
    T l, d;
    cb_focal_term(z[j], pos ? T(1) : T(0), gm, &l, &d, cb_simd_math());
    const T a = pos ? a1 : a0;
    acc += a * l;
    if (STORE) grad[j] = gw * a * d;
  }
  return w * acc;
}

template <typename T, bool FOCAL, bool ALPHA, bool WEIGHT, bool STORE>
static T sigmoid_multihot_row_t(const T* z, const T* t, int n, const float* weight, T gamma, T alpha,
                                T g, T* grad) {
  const T gm = FOCAL ? gamma : T(0);
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int j = 0; j < n; ++j) {
    T l, d;
    cb_focal_term(z[j], t[j], gm, &l, &d, cb_simd_math());
    const T f = (WEIGHT ? T(weight[j]) : T(1)) * (ALPHA ? cb_alpha_factor(t[j], alpha) : T(1));
    acc += f * l;
    if (STORE) grad[j] = g * f * d;
  }
  return acc;
}

template <typename T>
static T sigmoid_index_row(const T* z, int64_t C, int64_t y, const float* weight, T gamma, T alpha, bool focal,
                           int64_t ignore_index, T g, T* grad) {
  if (y == ignore_index) {
    if (grad) fill_row(grad, C, T(0));
    return T(0);
  }
  if (y < 0 || y >= C) {
    if (grad) fill_row(grad, C, T(NAN));
    return T(NAN);
  }
  const T w = weight ? T(weight[y]) : T(1);
  const int variant = (focal && gamma != T(0) ? 4 : 0) + (alpha >= T(0) ? 2 : 0) + (grad ? 1 : 0);
  switch (variant) {
    case 0: return sigmoid_index_row_t<T, false, false, false>(z, C, y, w, gamma, alpha, g, grad);
    case 1: return sigmoid_index_row_t<T, false, false, true>(z, C, y, w, gamma, alpha, g, grad);
    case 2: return sigmoid_index_row_t<T, false, true, false>(z, C, y, w, gamma, alpha, g, grad);
    case 3: return sigmoid_index_row_t<T, false, true, true>(z, C, y, w, gamma, alpha, g, grad);
    case 4: return sigmoid_index_row_t<T, true, false, false>(z, C, y, w, gamma, alpha, g, grad);
    case 5: return sigmoid_index_row_t<T, true, false, true>(z, C, y, w, gamma, alpha, g, grad);
    case 6: return sigmoid_index_row_t<T, true, true, false>(z, C, y, w, gamma, alpha, g, grad);
    default: return sigmoid_index_row_t<T, true, true, true>(z, C, y, w, gamma, alpha, g, grad);
  }
}

template <typename T, bool FOCAL, bool ALPHA>
static T sigmoid_multihot_row_w(const T* z, const T* t, int64_t C, const float* weight, T gamma, T alpha, T g,
                                T* grad) {
  if (weight) {
    return grad ? sigmoid_multihot_row_t<T, FOCAL, ALPHA, true, true>(z, t, C, weight, gamma, alpha, g, grad)
                : sigmoid_multihot_row_t<T, FOCAL, ALPHA, true, false>(z, t, C, weight, gamma, alpha, g, grad);
  }
  return grad ? sigmoid_multihot_row_t<T, FOCAL, ALPHA, false, true>(z, t, C, weight, gamma, alpha, g, grad)
              : sigmoid_multihot_row_t<T, FOCAL, ALPHA, false, false>(z, t, C, weight, gamma, alpha, g, grad);
}

template <typename T>
static T sigmoid_multihot_row(const T* z, const T* t, int64_t C, const float* weight, T gamma, T alpha, bool focal,
                              T g, T* grad) {
  const bool f = focal && gamma != T(0);
  const bool a = alpha >= T(0);
  if (f) {
    return a ? sigmoid_multihot_row_w<T, true, true>(z, t, C, weight, gamma, alpha, g, grad)
             : sigmoid_multihot_row_w<T, true, false>(z, t, C, weight, gamma, alpha, g, grad);
  }
  return a ? sigmoid_multihot_row_w<T, false, true>(z, t, C, weight, gamma, alpha, g, grad)
           : sigmoid_multihot_row_w<T, false, false>(z, t, C, weight, gamma, alpha, g, grad);
}

// ---- the vectorised exp / log1p over an array, for the accuracy tests ------------------------
template <typename T>
static void exp_array(const T* x, T* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = cb_exp(x[i], cb_simd_math());
}

template <typename T>
static void log1p_array(const T* x, T* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = cb_log1p(x[i], cb_simd_math());
}
