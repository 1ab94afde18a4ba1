// The per-thread and per-row logic of the fused sigmoid cross-entropy / focal kernels (sigmoid_focal.cu)
// as __host__ __device__ functions: the kernels are these plus a shuffle / block reduction of the row's
// loss, and kernels/cuda/harness/device_math_check.cu runs them on the host against a long-double
// evaluation of cbbench/reference.py's formulas.
#ifndef CBBENCH_CB_SIGMOID_ROWS_CUH_
#define CBBENCH_CB_SIGMOID_ROWS_CUH_

#include <cstdint>

#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cb {
namespace sigmoid {

constexpr int kGroupBlock = 128;
constexpr int kRowBlock = 256;

template <typename A>
struct Row {
  bool live;     // compute the row
  bool ignored;  // class target == ignore_index
  int64_t y;     // class target (-1 for multi-hot)
  A weight;      // w_y s_row for class targets, s_row for multi-hot (class weights are per column there)
};

template <bool MULTI_HOT, typename A>
CB_FN Row<A> read_row(const SigmoidFocalArgs& a, int64_t row) {
  if (MULTI_HOT) return Row<A>{true, false, -1, a.sample_weight ? A(a.sample_weight[row]) : A(1)};
  Row<A> r;
  r.y = a.class_target[row];
  r.ignored = r.y == a.ignore_index;
  r.live = !r.ignored && r.y >= 0 && r.y < a.classes;
  r.weight = (r.live && a.weight) ? A(a.weight[r.y]) : A(1);
  if (r.live && a.sample_weight) r.weight = r.weight * A(a.sample_weight[row]);
  return r;
}

// Loss terms of elements [first, C) with stride `stride` (in elements) of one row; writes the gradient
// when a.grad is set; returns this thread's share of the row's (unweighted by w_y) loss.
template <typename T, bool MULTI_HOT, typename A = acc_t<T>>
CB_FN A row_terms(const SigmoidFocalArgs& a, int64_t row, const Row<A>& r, int64_t first, int64_t stride) {
  constexpr int V = Vec<T>::size;
  const int64_t C = a.classes;
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const T* trow = MULTI_HOT ? static_cast<const T*>(a.multi_hot_target) + row * C : nullptr;
  T* grow = a.grad ? static_cast<T*>(a.grad) + row * C : nullptr;
  const int zal = row_align(zrow), tal = MULTI_HOT ? row_align(trow) : 0, gal = grow ? row_align(grow) : 0;
  const A gamma = a.focal ? A(a.gamma) : A(0);
  const A alpha = A(a.alpha);
  const A coef = grow ? read_grad_scale<A>(a.grad_scale) * r.weight : A(0);
  const float* col_weight = MULTI_HOT ? a.weight : nullptr;

  A acc = A(0);
#pragma unroll 2
  for (int64_t j = first; j < C; j += stride) {
    A z[V], t[V], g[V];
    load_vec<T>(zrow, j, C, zal, A(0), z);
    if (MULTI_HOT) {
      load_vec<T>(trow, j, C, tal, A(0), t);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) t[v] = (j + v == r.y) ? A(1) : A(0);
    }
#pragma unroll
    for (int v = 0; v < V; ++v) {
      A loss, dloss;
      cb_focal_term(z[v], t[v], gamma, &loss, &dloss);
      A factor = cb_alpha_factor(t[v], alpha);
      if (col_weight && j + v < C) factor *= A(col_weight[j + v]);
      if (j + v < C) acc += factor * loss;
      g[v] = coef * factor * dloss;
    }
    if (grow) store_vec<T>(grow, j, C, gal, g);
  }
  return acc;
}

template <typename T, typename A = acc_t<T>>
CB_FN void fill_row(T* grow, int64_t C, int64_t first, int64_t stride, A value) {
  constexpr int V = Vec<T>::size;
  A x[V];
#pragma unroll
  for (int v = 0; v < V; ++v) x[v] = value;
  const int al = row_align(grow);
  for (int64_t j = first; j < C; j += stride) store_vec<T>(grow, j, C, al, x);
}

template <typename A>
CB_FN A dead_value(const Row<A>& r) {
  return r.ignored ? A(0) : quiet_nan<A>();
}

// Lanes per row: about 4 vectors per lane, 4 to 32 lanes; 0 = a block per row.
template <typename T>
inline int lanes_per_row(int64_t C) {
  constexpr int V = Vec<T>::size;
  const int64_t nvec = (C + V - 1) / V;
  if (nvec > 32 * 32) return 0;
  int g = 4;
  while (g < 32 && int64_t(g) * 4 < nvec) g *= 2;
  return g;
}

}  // namespace sigmoid
}  // namespace cb

#endif  // CBBENCH_CB_SIGMOID_ROWS_CUH_
