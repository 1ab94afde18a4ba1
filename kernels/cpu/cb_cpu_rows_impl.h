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

#if CB_ISA_LEVEL >= 2
// AVX-512 versions of the two passes over a row's first nm (a multiple of 16) float logits, without a logit
// offset. Written with intrinsics because the `omp simd` loops above keep one accumulator (a 4-cycle
// vmaxps/vaddps chain per vector) and build 2^k from integer ops and two multiplies.
static inline __m512 exp_avx512(__m512 x) {  // cb_exp_simd(float), the scaling by vscalefps
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // (lo > x) ? lo : x -- NaN passes, as in cb_exp_simd
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 shifter = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shifter), shifter);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// The lane of the 16 columns [j, j + 16) that holds column y (no lane when y is outside them).
static inline __mmask16 target_lane_avx512(int j, int y) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_cmpeq_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(j)), _mm512_set1_epi32(y));
}

static inline void softmax_max_sum_avx512(const float* z, int nm, int y, float my, bool smooth, float* max_io,
                                          float* sum_io) {
  const __m512 vmy = _mm512_set1_ps(my);
  __m512 m0 = _mm512_set1_ps(*max_io), m1 = m0, m2 = m0, m3 = m0;
  int j = 0;
  // the target's column (v_y = z_y - margin_y) is already in *max_io; its raw z_y must not count
  const int yb = y - y % 16;
  for (; j + 64 <= nm; j += 64) {
    __m512 a = _mm512_loadu_ps(z + j), b = _mm512_loadu_ps(z + j + 16), c = _mm512_loadu_ps(z + j + 32),
           d = _mm512_loadu_ps(z + j + 48);
    if (yb >= j && yb < j + 64) {
      const __mmask16 k = target_lane_avx512(yb, y);
      if (yb == j) a = _mm512_mask_sub_ps(a, k, a, vmy);
      else if (yb == j + 16) b = _mm512_mask_sub_ps(b, k, b, vmy);
      else if (yb == j + 32) c = _mm512_mask_sub_ps(c, k, c, vmy);
      else d = _mm512_mask_sub_ps(d, k, d, vmy);
    }
    m0 = _mm512_max_ps(a, m0);
    m1 = _mm512_max_ps(b, m1);
    m2 = _mm512_max_ps(c, m2);
    m3 = _mm512_max_ps(d, m3);
  }
  for (; j < nm; j += 16) {
    __m512 a = _mm512_loadu_ps(z + j);
    if (yb == j) {
      const __mmask16 k = target_lane_avx512(j, y);
      a = _mm512_mask_sub_ps(a, k, a, vmy);
    }
    m0 = _mm512_max_ps(a, m0);
  }
  *max_io = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
  if (smooth) {  // sum of v over the row (label smoothing only)
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    for (j = 0; j + 32 <= nm; j += 32) {
      s0 = _mm512_add_ps(s0, _mm512_loadu_ps(z + j));
      s1 = _mm512_add_ps(s1, _mm512_loadu_ps(z + j + 16));
    }
    for (; j < nm; j += 16) s0 = _mm512_add_ps(s0, _mm512_loadu_ps(z + j));
    float vs = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    if (y < nm) vs -= my;
    *sum_io += vs;
  }
}

// sum of exp(scale (v_j - max)) over [0, nm); with out, the terms are stored there
static inline float softmax_exp_sum_avx512(const float* z, int nm, int y, float my, float mv, float scale,
                                           float* out) {
  const __m512 vmy = _mm512_set1_ps(my), vmv = _mm512_set1_ps(mv), vscale = _mm512_set1_ps(scale);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  const int yb = y - y % 16;
  int j = 0;
  for (; j + 32 <= nm; j += 32) {
    __m512 a = _mm512_loadu_ps(z + j), b = _mm512_loadu_ps(z + j + 16);
    if (yb == j || yb == j + 16) {
      const __mmask16 k = target_lane_avx512(yb, y);
      if (yb == j) a = _mm512_mask_sub_ps(a, k, a, vmy);
      else b = _mm512_mask_sub_ps(b, k, b, vmy);
    }
    const __m512 ea = exp_avx512(_mm512_mul_ps(vscale, _mm512_sub_ps(a, vmv)));
    const __m512 eb = exp_avx512(_mm512_mul_ps(vscale, _mm512_sub_ps(b, vmv)));
    if (out) {
      _mm512_storeu_ps(out + j, ea);
      _mm512_storeu_ps(out + j + 16, eb);
    }
    s0 = _mm512_add_ps(s0, ea);
    s1 = _mm512_add_ps(s1, eb);
  }
  for (; j < nm; j += 16) {
    __m512 a = _mm512_loadu_ps(z + j);
    if (yb == j) {
      const __mmask16 k = target_lane_avx512(j, y);
      a = _mm512_mask_sub_ps(a, k, a, vmy);
    }
    const __m512 ea = exp_avx512(_mm512_mul_ps(vscale, _mm512_sub_ps(a, vmv)));
    if (out) _mm512_storeu_ps(out + j, ea);
    s0 = _mm512_add_ps(s0, ea);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
#endif

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
  T s;
#if CB_ISA_LEVEL >= 2
  if (std::is_same<T, float>::value && !OFFSET) {
    // AVX-512: the same math with four max accumulators, the sum only for label smoothing, and the 2^k of
    // exp by one vscalefps (rounded once, like cb_exp_simd's two halves); see softmax_max_sum_avx512.
    const float* zf = reinterpret_cast<const float*>(z);
    float mvf = float(mv), vsf = float(vsum);
    softmax_max_sum_avx512(zf, nm, y, float(my), eps > T(0), &mvf, &vsf);
    mv = T(mvf);
    vsum = T(vsf);
    if (nm < n) softmax_max_sum<T, OFFSET>(zt, ot, nm, W, n, y, my, &mv, &vsum);
    s = T(softmax_exp_sum_avx512(zf, nm, y, float(my), float(mv), float(scale),
                                 STORE ? reinterpret_cast<float*>(grad) : nullptr));
  } else
#endif
  {
    softmax_max_sum<T, OFFSET>(z, offset, 0, nm, n, y, my, &mv, &vsum);
    if (nm < n) softmax_max_sum<T, OFFSET>(zt, ot, nm, W, n, y, my, &mv, &vsum);
    s = softmax_exp_sum<T, OFFSET, STORE>(z, offset, 0, nm, n, y, my, mv, scale, grad);
  }
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

#if CB_ISA_LEVEL >= 2
// cb_log1p_simd(float) of x = exp(-|z|) in [0, 1] (or NaN), given u = 1 + x and inv_u = 1 / u (shared with
// the sigmoid beside it, as the compiler shares them in the portable loop)
static inline __m512 log1p_avx512(__m512 x, __m512 u, __m512 inv_u) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __mmask16 lt2 = _mm512_cmp_ps_mask(u, _mm512_set1_ps(2.0f), _CMP_LT_OQ);
  __m512 c = _mm512_mask_blend_ps(lt2, _mm512_sub_ps(one, _mm512_sub_ps(u, x)), _mm512_sub_ps(x, _mm512_sub_ps(u, one)));
  c = _mm512_mul_ps(c, inv_u);
  __m512i iu = _mm512_add_epi32(_mm512_castps_si512(u), _mm512_set1_epi32(0x3f800000 - 0x3f3504f3));
  const __m512 kf = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(iu, 23), _mm512_set1_epi32(127)));
  iu = _mm512_add_epi32(_mm512_and_si512(iu, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x3f3504f3));
  const __m512 f = _mm512_sub_ps(_mm512_castsi512_ps(iu), one);
  const __m512 zz = _mm512_mul_ps(f, f);
  __m512 y = _mm512_set1_ps(7.0376836292e-2f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.1514610310e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.1676998740e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.2420140846e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.4249322787e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.6668057665e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.0000714765e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-2.4999993993e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(3.3333331174e-1f));
  y = _mm512_mul_ps(_mm512_mul_ps(y, f), zz);
  y = _mm512_add_ps(y, _mm512_fmadd_ps(kf, _mm512_set1_ps(-2.12194440e-4f), c));
  y = _mm512_fmadd_ps(_mm512_set1_ps(-0.5f), zz, y);
  const __m512 res = _mm512_fmadd_ps(kf, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(INFINITY), _CMP_LT_OQ), x, res);
}

// The sigmoid cross-entropy / focal loss of a row's first nm (a multiple of 16) float logits against the
// one-hot target y: cb_focal_term (gamma = 0 without FOCAL), with exp_avx512 and the shared 1 / (1 + e).
template <bool FOCAL>
static inline float sigmoid_index_span_avx512(const float* z, int nm, int y, float gamma, bool alpha_on, float a0,
                                              float a1, float gw, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps(), va0 = _mm512_set1_ps(a0),
               va1 = _mm512_set1_ps(a1), vgw = _mm512_set1_ps(gw);
  const __m512i sign = _mm512_set1_epi32(int(0x80000000u));
  __m512 acc = zero;
  for (int j = 0; j < nm; j += 16) {
    const __m512 x = _mm512_loadu_ps(z + j);
    const __mmask16 pos = target_lane_avx512(j, y);
    const __m512 e = exp_avx512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), sign)));  // exp(-|x|)
    const __m512 u = _mm512_add_ps(one, e);
    const __m512 r = _mm512_div_ps(one, u);
    const __m512 p = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GE_OQ), _mm512_mul_ps(e, r), r);
    const __m512 nx = _mm512_sub_ps(zero, x);
    const __m512 hinge = _mm512_mask_blend_ps(pos, _mm512_max_ps(x, zero), _mm512_max_ps(nx, zero));
    const __m512 lp = log1p_avx512(e, u, r);
    const __m512 b = _mm512_add_ps(hinge, lp);
    const __m512 pt = _mm512_mask_sub_ps(p, pos, p, one);  // p - t
    __m512 l = b, d = pt;
    if (FOCAL) {  // cb_focal_term, gamma != 0: the modulator exp(-gamma bce(z, 1 - t)) shares log1p(e)
      const __m512 flipped = _mm512_add_ps(_mm512_mask_blend_ps(pos, _mm512_max_ps(nx, zero), _mm512_max_ps(x, zero)), lp);
      const __m512 m = exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-gamma), flipped));
      l = _mm512_mul_ps(m, b);
      const __m512 ptm1 = _mm512_sub_ps(_mm512_mask_add_ps(p, pos, p, one), one);  // p + t - 1
      d = _mm512_mul_ps(m, _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_set1_ps(gamma), ptm1), b, pt));
    }
    if (alpha_on) {
      const __m512 a = _mm512_mask_blend_ps(pos, va0, va1);
      acc = _mm512_fmadd_ps(a, l, acc);
      if (out) _mm512_storeu_ps(out + j, _mm512_mul_ps(_mm512_mul_ps(vgw, a), d));
    } else {
      acc = _mm512_add_ps(acc, l);
      if (out) _mm512_storeu_ps(out + j, _mm512_mul_ps(vgw, d));
    }
  }
  return _mm512_reduce_add_ps(acc);
}
#endif

template <typename T, bool FOCAL, bool ALPHA, bool STORE>
static T sigmoid_index_row_t(const T* z, int n, int y, T w, T gamma, T alpha, T g, T* grad) {
  constexpr int W = Lanes<T>::W;
  const int nm = n - n % W;
  T zt[W], gt[W];
  load_tail<W>(zt, z, nm, n);
  const T gw = g * w;
  T acc;
#if CB_ISA_LEVEL >= 2
  if (std::is_same<T, float>::value) {
    acc = T(sigmoid_index_span_avx512<FOCAL>(reinterpret_cast<const float*>(z), nm, y, float(gamma), ALPHA,
                                      float(ALPHA ? cb_alpha_factor(T(0), alpha) : T(1)),
                                      float(ALPHA ? cb_alpha_factor(T(1), alpha) : T(1)), float(gw),
                                      STORE ? reinterpret_cast<float*>(grad) : nullptr));
  } else
#endif
  {
    acc = sigmoid_index_span<T, FOCAL, ALPHA, STORE>(z, 0, nm, n, y, gamma, alpha, gw, grad);
  }
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

// ---- row loops of one chunk ------------------------------------------------------------------
// What the Cython prange hands each chunk: rows [0, n) of z, y, sample_weight, loss_rows and grad (all
// pointing at the chunk's first row). A sample weight s scales its row's loss and, through the gradient
// scale g, its gradient. Row losses are added to *acc one by one in row order (the order, and so the
// bits, of the reduced loss do not depend on how a chunk is cut up inside).

// Short rows (C <= CB_SHORT_ROW_MAX, no logit offset, no focal term): R = Lanes<T>::W rows at a time,
// one row per vector lane. The block is transposed into zt[c][r] (a strided gather per column, from
// L1), every pass runs down the columns with all R rows in one register (max, exp-sum, gradient), the
// row log is the vectorised log1p of s - 1 (exact: s >= 1), and the gradient goes back to row-major
// through a precomputed index table. Before this, a C = 10 row ran its own padded 16-lane vector with
// scalar tail copies, a libm logf and three calls: about 10x the time per row.
#define CB_SHORT_ROW_MAX 32

template <typename T>
static void softmax_ce_block(const T* z, const int64_t* y, int C, const float* weight, const float* margin,
                             T scale, T eps, const float* alpha, const float* sample_weight, int64_t ignore_index,
                             T g, const int* idx, T* loss, T* grad) {
  constexpr int R = Lanes<T>::W;
  alignas(64) T zt[CB_SHORT_ROW_MAX * R];
  alignas(64) T mv[R], vy[R], vsum[R], s[R], a[R], b[R], by[R], myv[R], fill[R], wv[R], swv[R];
  alignas(64) int yc[R], flag[R];
  // the per-row loads each in their own loop, so that none is conditional (those keep a loop scalar)
#pragma omp simd
  for (int r = 0; r < R; ++r) {
    const int64_t yi = y[r];
    flag[r] = yi == ignore_index ? 1 : (yi < 0 || yi >= C ? 2 : 0);
    yc[r] = flag[r] ? 0 : int(yi);
  }
  if (margin) {
#pragma omp simd
    for (int r = 0; r < R; ++r) myv[r] = T(margin[yc[r]]);
  } else {
    fill_row(myv, R, T(0));
  }
  if (weight) {
#pragma omp simd
    for (int r = 0; r < R; ++r) wv[r] = T(weight[yc[r]]);
  } else {
    fill_row(wv, R, T(1));
  }
  if (alpha) {
#pragma omp simd
    for (int r = 0; r < R; ++r) wv[r] *= T(alpha[yc[r]]);
  }
  if (sample_weight) {
#pragma omp simd
    for (int r = 0; r < R; ++r) swv[r] = T(sample_weight[r]);
  } else {
    fill_row(swv, R, T(1));
  }
  for (int c = 0; c < C; ++c) {
#pragma omp simd
    for (int r = 0; r < R; ++r) zt[c * R + r] = z[r * C + c];
  }
#pragma omp simd
  for (int r = 0; r < R; ++r) {
    vy[r] = z[r * C + yc[r]] - myv[r];
    mv[r] = vy[r];
    vsum[r] = T(0);
    s[r] = T(0);
  }
  for (int c = 0; c < C; ++c) {
#pragma omp simd
    for (int r = 0; r < R; ++r) {
      const T v = c == yc[r] ? zt[c * R + r] - myv[r] : zt[c * R + r];
      mv[r] = v > mv[r] ? v : mv[r];
      vsum[r] += v;
    }
  }
  for (int c = 0; c < C; ++c) {
#pragma omp simd
    for (int r = 0; r < R; ++r) {
      const T v = c == yc[r] ? zt[c * R + r] - myv[r] : zt[c * R + r];
      const T e = cb_exp(scale * (v - mv[r]), cb_simd_math());
      zt[c * R + r] = e;
      s[r] += e;
    }
  }
#pragma omp simd
  for (int r = 0; r < R; ++r) {
    const T log_s = cb_log1p(s[r] - T(1), cb_simd_math());  // s >= 1: s - 1 is exact
    const T w = wv[r];
    const T nll0 = scale * (mv[r] - vy[r]) + log_s;
    const T nll = eps > T(0) ? (T(1) - eps) * nll0 + eps * (scale * (mv[r] - vsum[r] / T(C)) + log_s) : nll0;
    const T sw = swv[r];
    const T gw = (g * sw) * w * scale;
    a[r] = gw / s[r];
    b[r] = gw * eps / T(C);
    by[r] = b[r] + gw * (T(1) - eps);
    const T l = sw * (w * nll);
    // ignored rows: loss and gradient 0; bad targets: NaN (as softmax_ce_row)
    fill[r] = flag[r] == 1 ? T(0) : T(NAN);
    loss[r] = flag[r] == 0 ? l : fill[r];
  }
  if (!grad) return;
  for (int c = 0; c < C; ++c) {
#pragma omp simd
    for (int r = 0; r < R; ++r) {
      const T gv = zt[c * R + r] * a[r] - (c == yc[r] ? by[r] : b[r]);
      zt[c * R + r] = flag[r] ? fill[r] : gv;
    }
  }
#pragma omp simd
  for (int k = 0; k < R * C; ++k) grad[k] = zt[idx[k]];
}

template <typename T>
static void softmax_ce_rows(const T* z, const int64_t* y, int64_t n, int64_t C, const float* weight,
                            const float* offset, const float* margin, T scale, T eps, T gamma, const float* alpha,
                            const float* sample_weight, int64_t ignore_index, T g, T* loss_rows, T* grad,
                            double* acc) {
  constexpr int R = Lanes<T>::W;
  int64_t i = 0;
  if (C <= CB_SHORT_ROW_MAX && offset == nullptr && gamma == T(0) && n >= R) {
    const int c = int(C);
    int idx[CB_SHORT_ROW_MAX * R];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < c; ++j) idx[r * c + j] = j * R + r;
    alignas(64) T loss[R];
    for (; i + R <= n; i += R) {
      softmax_ce_block<T>(z + i * C, y + i, c, weight, margin, scale, eps, alpha,
                          sample_weight ? sample_weight + i : nullptr, ignore_index, g, idx, loss,
                          grad ? grad + i * C : nullptr);
      for (int r = 0; r < R; ++r) {
        if (loss_rows) loss_rows[i + r] = loss[r];
        *acc += loss[r];
      }
    }
  }
  for (; i < n; ++i) {
    const T s = sample_weight ? T(sample_weight[i]) : T(1);
    const T v = s * softmax_ce_row<T>(z + i * C, C, y[i], weight, offset, margin, scale, eps, gamma, alpha,
                                      ignore_index, g * s, grad ? grad + i * C : nullptr);
    if (loss_rows) loss_rows[i] = v;
    *acc += v;
  }
}

template <typename T>
static void sigmoid_rows(const T* z, const int64_t* y, const T* multi_hot, int64_t n, int64_t C,
                         const float* weight, T gamma, T alpha, bool focal, const float* sample_weight,
                         int64_t ignore_index, T g, T* loss_rows, T* grad, double* acc) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = sample_weight ? T(sample_weight[i]) : T(1);
    T* grad_row = grad ? grad + i * C : nullptr;
    T v = multi_hot ? sigmoid_multihot_row<T>(z + i * C, multi_hot + i * C, C, weight, gamma, alpha, focal, g * s,
                                              grad_row)
                    : sigmoid_index_row<T>(z + i * C, C, y[i], weight, gamma, alpha, focal, ignore_index, g * s,
                                           grad_row);
    v = s * v;
    if (loss_rows) loss_rows[i] = v;
    *acc += v;
  }
}

// ---- float16 / bfloat16 logits ---------------------------------------------------------------
// Computed in float32, converted in registers a few rows at a time: up to CB_HALF_BLOCK logits are widened
// into a float buffer that stays in L1, run through the float row loops in place (the gradient overwrites
// the buffer), and the gradient is rounded back into the half-precision output -- no float32 copy of the
// logits or of the gradient. The rounding is torch's (round to nearest even; NaN stays NaN), so the
// results are bitwise those of converting the whole tensor, computing in float32 and converting back.
#define CB_HALF_BLOCK 4096

static inline void half_to_float(const uint16_t* src, float* dst, int64_t n, cb_bf16_kind) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = cb_float_from_bits(uint32_t(src[j]) << 16);
}

static inline void float_to_half(const float* src, uint16_t* dst, int64_t n, cb_bf16_kind) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = cb_bits(src[j]);
    const uint16_t r = uint16_t((u + (((u >> 16) & 1u) + 0x7fffu)) >> 16);
    dst[j] = src[j] != src[j] ? uint16_t(0x7fc0) : r;
  }
}

static inline void half_to_float(const uint16_t* src, float* dst, int64_t n, cb_f16_kind) {
  int64_t j = 0;
#if CB_ISA_LEVEL >= 2
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j))));
#elif CB_ISA_LEVEL >= 1
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
#endif
  for (; j < n; ++j) dst[j] = c10::detail::fp16_ieee_to_fp32_value(src[j]);
}

static inline void float_to_half(const float* src, uint16_t* dst, int64_t n, cb_f16_kind) {
  int64_t j = 0;
#if CB_ISA_LEVEL >= 2
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif CB_ISA_LEVEL >= 1
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; j < n; ++j) dst[j] = c10::detail::fp16_ieee_from_fp32_value(src[j]);
}

// Rows per float buffer: CB_HALF_BLOCK logits (whole blocks of short rows), or one row when longer.
static inline int64_t half_rows_per_block(int64_t C) {
  int64_t rows = C <= CB_HALF_BLOCK ? CB_HALF_BLOCK / C : 1;
  if (rows >= 2 * Lanes<float>::W) rows -= rows % Lanes<float>::W;
  return rows;
}

template <typename K>
static void softmax_ce_rows_half(const uint16_t* z, const int64_t* y, int64_t n, int64_t C, const float* weight,
                                 const float* offset, const float* margin, float scale, float eps, float gamma,
                                 const float* alpha, const float* sample_weight, int64_t ignore_index, float g,
                                 float* loss_rows, uint16_t* grad, double* acc) {
  const int64_t rows = half_rows_per_block(C);
  alignas(64) float small[CB_HALF_BLOCK];
  std::vector<float> large(C > CB_HALF_BLOCK ? size_t(C) : 0);
  float* buf = C > CB_HALF_BLOCK ? large.data() : small;
  for (int64_t i = 0; i < n; i += rows) {
    const int64_t m = n - i < rows ? n - i : rows;
    half_to_float(z + i * C, buf, m * C, K());
    softmax_ce_rows<float>(buf, y + i, m, C, weight, offset, margin, scale, eps, gamma, alpha,
                           sample_weight ? sample_weight + i : nullptr, ignore_index, g,
                           loss_rows ? loss_rows + i : nullptr, grad ? buf : nullptr, acc);
    if (grad) float_to_half(buf, grad + i * C, m * C, K());
  }
}

template <typename K>
static void sigmoid_rows_half(const uint16_t* z, const int64_t* y, const float* multi_hot, int64_t n, int64_t C,
                              const float* weight, float gamma, float alpha, bool focal, const float* sample_weight,
                              int64_t ignore_index, float g, float* loss_rows, uint16_t* grad, double* acc) {
  const int64_t rows = half_rows_per_block(C);
  alignas(64) float small[CB_HALF_BLOCK];
  std::vector<float> large(C > CB_HALF_BLOCK ? size_t(C) : 0);
  float* buf = C > CB_HALF_BLOCK ? large.data() : small;
  for (int64_t i = 0; i < n; i += rows) {
    const int64_t m = n - i < rows ? n - i : rows;
    half_to_float(z + i * C, buf, m * C, K());
    sigmoid_rows<float>(buf, y ? y + i : nullptr, multi_hot ? multi_hot + i * C : nullptr, m, C, weight, gamma,
                        alpha, focal, sample_weight ? sample_weight + i : nullptr, ignore_index, g,
                        loss_rows ? loss_rows + i : nullptr, grad ? buf : nullptr, acc);
    if (grad) float_to_half(buf, grad + i * C, m * C, K());
  }
}
