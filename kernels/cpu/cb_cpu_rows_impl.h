// Row kernels of cbbench._cpu, compiled once per instruction set: cb_cpu_rows.h includes this file
// inside a namespace under `#pragma GCC target(...)`, so there is deliberately no include guard.
//
// Each function handles one row of C logits: loss and (optionally) gradient in one call, with every
// per-element loop a `#pragma omp simd` loop over cb_math.h's vectorisable exp/log1p. Rows are
// independent and every reduction runs in a fixed order, so results do not depend on the thread
// count. The target column is picked by a `j == y` select inside the loops, not by splitting them.
//
// A row runs as [0, nm) in place plus its last n - nm < W columns copied into a W-wide buffer and
// run through the same loop with a constant trip count (padding masked by `j < n`). The compiler's
// own remainder loop is scalar and branchy (mispredicted on the sign of z): it cost 5-10x a vector
// lane, which dominated rows of C = 10 and every row's last few columns.

template <typename T>
struct Lanes {
  static constexpr int W = 64 / int(sizeof(T));  // one AVX-512 vector, two AVX2, four SSE
};

template <typename T>
static inline void fill_row(T* out, int n, T value) {
#pragma omp simd
  for (int j = 0; j < n; ++j) out[j] = value;
}

// dst[k] = src[nm + k] for nm + k < n, else 0, for k < W: the lane count of the row's dtype, which
// a float buffer of a double row (offsets, column weights) shares -- not Lanes<float>::W
template <int W, typename T, typename S>
static inline void load_tail(T* dst, const S* src, int nm, int n) {
  for (int k = 0; k < W; ++k) dst[k] = nm + k < n ? T(src[nm + k]) : T(0);
}

template <typename T>
static inline void store_tail(T* dst, const T* src, int nm, int n) {
  for (int k = 0; nm + k < n; ++k) dst[nm + k] = src[k];
}

// ---- softmax cross-entropy ------------------------------------------------------------------
// z'_j = scale * v_j with v_j = z_j + offset_j - [j == y] margin_y (reference.softmax_cross_entropy).
// Working on v (scale > 0 keeps the max) gives z'_j - max z' = scale * (v_j - max v): a product of a
// difference, which -ffp-contract=fast cannot fuse, so the target row's max cancels exactly (C = 1
// gives a loss of exactly 0, not +-ulp).
// z, offset and out point at column `base`; the loop covers columns base .. base + cnt - 1.
template <typename T, bool OFFSET>
static inline T shifted_logit(const T* z, const float* offset, int j, int column, int y, T my) {
  const T v = OFFSET ? z[j] + T(offset[j]) : z[j];
  return column == y ? v - my : v;
}

template <typename T, bool OFFSET>
static inline void softmax_max_sum(const T* z, const float* offset, int base, int cnt, int n, int y, T my,
                                   T* max_io, T* sum_io) {
  T mv = *max_io, vsum = *sum_io;
#pragma omp simd reduction(max : mv) reduction(+ : vsum)
  for (int j = 0; j < cnt; ++j) {
    const bool valid = base + j < n;
    const T v = shifted_logit<T, OFFSET>(z, offset, j, base + j, y, my);
    const T vm = valid ? v : T(-INFINITY);
    mv = vm > mv ? vm : mv;
    vsum += valid ? v : T(0);
  }
  *max_io = mv;
  *sum_io = vsum;
}

// sum of exp(z'_j - max z'); with STORE the terms go to out (the gradient row, or the tail buffer)
template <typename T, bool OFFSET, bool STORE>
static inline T softmax_exp_sum(const T* z, const float* offset, int base, int cnt, int n, int y, T my, T mv,
                                T scale, T* out) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < cnt; ++j) {
    const T v = shifted_logit<T, OFFSET>(z, offset, j, base + j, y, my);
    const T e = base + j < n ? cb_exp(scale * (v - mv), cb_simd_math()) : T(0);
    if (STORE) out[j] = e;
    s += e;
  }
  return s;
}

template <typename T>
static inline void softmax_grad(T* out, int base, int cnt, int y, T a, T b, T ty) {
#pragma omp simd
  for (int j = 0; j < cnt; ++j) out[j] = out[j] * a - (base + j == y ? b + ty : b);
}

// gamma > 0: the softmax focal loss (cb_softmax_focal: the modulator scales the loss, its factor the
// gradient; no label smoothing); alpha: a per-class factor of the sample beside the weight.
template <typename T, bool OFFSET, bool STORE>
static T softmax_ce_row_t(const T* z, int n, int y, const float* weight, const float* offset,
                          const float* margin, T scale, T eps, T gamma, const float* alpha, T g, T* grad) {
  constexpr int W = Lanes<T>::W;
  const int nm = n - n % W;
  T zt[W], gt[W];
  float ot[W];
  load_tail<W>(zt, z, nm, n);
  if (OFFSET) load_tail<W>(ot, offset, nm, n);
  const T my = margin ? T(margin[y]) : T(0);
  const T vy = shifted_logit<T, OFFSET>(z, offset, y, y, y, my);
  T mv = vy, vsum = T(0);
  softmax_max_sum<T, OFFSET>(z, offset, 0, nm, n, y, my, &mv, &vsum);
  if (nm < n) softmax_max_sum<T, OFFSET>(zt, ot, nm, W, n, y, my, &mv, &vsum);
  T s = softmax_exp_sum<T, OFFSET, STORE>(z, offset, 0, nm, n, y, my, mv, scale, grad);
  if (nm < n) s += softmax_exp_sum<T, OFFSET, STORE>(zt, ot, nm, W, n, y, my, mv, scale, gt);
  const T log_s = cb_log(s);
  const T w = (weight ? T(weight[y]) : T(1)) * (alpha ? T(alpha[y]) : T(1));
  T nll = scale * (mv - vy) + log_s;  // lse - z'_y without forming lse (no cancellation at large |z|)
  if (eps > T(0)) nll = (T(1) - eps) * nll + eps * (scale * (mv - vsum / T(n)) + log_s);
  T modulator = T(1), factor = T(1);
  cb_softmax_focal(nll, gamma, &modulator, &factor);
  if (STORE) {
    const T gw = g * w * scale * factor;
    const T a = gw / s;
    const T b = gw * eps / T(n);
    const T ty = gw * (T(1) - eps);
    softmax_grad(grad, 0, nm, y, a, b, ty);
    if (nm < n) {
      softmax_grad(gt, nm, W, y, a, b, ty);
      store_tail(grad, gt, nm, n);
    }
  }
  return w * (modulator * nll);
}

template <typename T>
static T softmax_ce_row(const T* z, int64_t C, int64_t y, const float* weight, const float* offset,
                        const float* margin, T scale, T eps, T gamma, const float* alpha, int64_t ignore_index, T g,
                        T* grad) {
  if (y == ignore_index) {
    if (grad) fill_row(grad, C, T(0));
    return T(0);
  }
  if (y < 0 || y >= C) {  // a bad target poisons its row instead of reading out of bounds
    if (grad) fill_row(grad, C, T(NAN));
    return T(NAN);
  }
  if (offset) {
    return grad ? softmax_ce_row_t<T, true, true>(z, C, y, weight, offset, margin, scale, eps, gamma, alpha, g, grad)
                : softmax_ce_row_t<T, true, false>(z, C, y, weight, offset, margin, scale, eps, gamma, alpha, g, grad);
  }
  return grad ? softmax_ce_row_t<T, false, true>(z, C, y, weight, offset, margin, scale, eps, gamma, alpha, g, grad)
              : softmax_ce_row_t<T, false, false>(z, C, y, weight, offset, margin, scale, eps, gamma, alpha, g, grad);
}

// ---- sigmoid cross-entropy / focal loss -----------------------------------------------------
// FOCAL = false passes gamma = 0 as a constant, so cb_focal_term folds to bce and p - t.
template <typename T, bool FOCAL, bool ALPHA, bool STORE>
static inline T sigmoid_index_span(const T* z, int base, int cnt, int n, int y, T gamma, T alpha, T gw, T* out) {
  const T gm = FOCAL ? gamma : T(0);
  const T a0 = ALPHA ? cb_alpha_factor(T(0), alpha) : T(1);
  const T a1 = ALPHA ? cb_alpha_factor(T(1), alpha) : T(1);
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int j = 0; j < cnt; ++j) {
    const bool pos = base + j == y;
    T l, d;
    cb_focal_term(z[j], pos ? T(1) : T(0), gm, &l, &d, cb_simd_math());
    const T a = pos ? a1 : a0;
    acc += base + j < n ? a * l : T(0);
    if (STORE) out[j] = gw * a * d;
  }
  return acc;
}

template <typename T, bool FOCAL, bool ALPHA, bool STORE>
static T sigmoid_index_row_t(const T* z, int n, int y, T w, T gamma, T alpha, T g, T* grad) {
  constexpr int W = Lanes<T>::W;
  const int nm = n - n % W;
  T zt[W], gt[W];
  load_tail<W>(zt, z, nm, n);
  const T gw = g * w;
  T acc = sigmoid_index_span<T, FOCAL, ALPHA, STORE>(z, 0, nm, n, y, gamma, alpha, gw, grad);
  if (nm < n) {
    acc += sigmoid_index_span<T, FOCAL, ALPHA, STORE>(zt, nm, W, n, y, gamma, alpha, gw, gt);
    if (STORE) store_tail(grad, gt, nm, n);
  }
  return w * acc;
}

template <typename T, bool FOCAL, bool ALPHA, bool WEIGHT, bool STORE>
static inline T sigmoid_multihot_span(const T* z, const T* t, const float* weight, int base, int cnt, int n,
                                      T gamma, T alpha, T g, T* out) {
  const T gm = FOCAL ? gamma : T(0);
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int j = 0; j < cnt; ++j) {
    T l, d;
    cb_focal_term(z[j], t[j], gm, &l, &d, cb_simd_math());
    const T f = (WEIGHT ? T(weight[j]) : T(1)) * (ALPHA ? cb_alpha_factor(t[j], alpha) : T(1));
    acc += base + j < n ? f * l : T(0);
    if (STORE) out[j] = g * f * d;
  }
  return acc;
}

template <typename T, bool FOCAL, bool ALPHA, bool WEIGHT, bool STORE>
static T sigmoid_multihot_row_t(const T* z, const T* t, int n, const float* weight, T gamma, T alpha,
                                T g, T* grad) {
  constexpr int W = Lanes<T>::W;
  const int nm = n - n % W;
  T zt[W], tt[W], gt[W];
  float wt[W];
  load_tail<W>(zt, z, nm, n);
  load_tail<W>(tt, t, nm, n);
  if (WEIGHT) load_tail<W>(wt, weight, nm, n);
  T acc = sigmoid_multihot_span<T, FOCAL, ALPHA, WEIGHT, STORE>(z, t, weight, 0, nm, n, gamma, alpha, g, grad);
  if (nm < n) {
    acc += sigmoid_multihot_span<T, FOCAL, ALPHA, WEIGHT, STORE>(zt, tt, wt, nm, W, n, gamma, alpha, g, gt);
    if (STORE) store_tail(grad, gt, nm, n);
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
