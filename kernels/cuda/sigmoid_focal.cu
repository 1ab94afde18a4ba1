// Fused sigmoid cross-entropy / sigmoid focal loss (class-index or multi-hot targets): loss and gradient
// in one pass over the logits.
//
// Unlike softmax, every gradient entry depends only on its own logit (and the row's class weight), so
// each element is loaded, turned into its loss term and gradient, and the gradient stored right away:
// the logits are read once and the gradient written once at any C without holding the row. Only the
// per-row loss needs a reduction (fixed-order shuffle / shared-memory tree: deterministic).
//   * C up to 4096 fp32 (1024 vectors): G = 4..32 lanes of a warp per row, picked so a lane handles at
//     most ~4 vectors per row when C is small, several rows per 128-thread block;
//   * larger C: a 256-thread block per row.
// The scalar math (stable BCE, log-space focal modulator and its derivative, alpha_t) is cb_math.h, the
// same source as the CPU kernels. The transcendental cost per element (exp, log1p, one more exp for
// the modulator) is what makes focal the compute-heaviest of the three losses.
#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cb {
namespace {

constexpr int kGroupBlock = 128;
constexpr int kRowBlock = 256;

template <typename A>
struct Row {
  bool live;     // compute the row
  bool ignored;  // class target == ignore_index
  int64_t y;     // class target (-1 for multi-hot)
  A weight;      // w_y for class targets, 1 for multi-hot (weights are per column there)
};

template <bool MULTI_HOT, typename A>
__device__ __forceinline__ Row<A> read_row(const SigmoidFocalArgs& a, int64_t row) {
  if (MULTI_HOT) return Row<A>{true, false, -1, A(1)};
  Row<A> r;
  r.y = a.class_target[row];
  r.ignored = r.y == a.ignore_index;
  r.live = !r.ignored && r.y >= 0 && r.y < a.classes;
  r.weight = (r.live && a.weight) ? A(a.weight[r.y]) : A(1);
  return r;
}

// Loss terms of elements [first, C) with stride `stride` (in elements) of one row; writes the gradient
// when a.grad is set; returns this thread's share of the row's (unweighted by w_y) loss.
template <typename T, bool MULTI_HOT, typename A = acc_t<T>>
__device__ __forceinline__ A row_terms(const SigmoidFocalArgs& a, int64_t row, const Row<A>& r, int64_t first,
                                       int64_t stride) {
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
__device__ __forceinline__ void fill_row(T* grow, int64_t C, int64_t first, int64_t stride, A value) {
  constexpr int V = Vec<T>::size;
  A x[V];
#pragma unroll
  for (int v = 0; v < V; ++v) x[v] = value;
  const int al = row_align(grow);
  for (int64_t j = first; j < C; j += stride) store_vec<T>(grow, j, C, al, x);
}

template <typename A>
__device__ __forceinline__ A dead_value(const Row<A>& r) {
  return r.ignored ? A(0) : quiet_nan<A>();
}

template <typename T, int G, bool MULTI_HOT>
__global__ void __launch_bounds__(kGroupBlock) sigmoid_group_kernel(SigmoidFocalArgs a) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  const int lane = threadIdx.x % G;
  const int64_t row = int64_t(blockIdx.x) * (kGroupBlock / G) + threadIdx.x / G;
  const bool active = row < a.rows;
  Row<A> r{false, false, -1, A(1)};
  if (active) r = read_row<MULTI_HOT, A>(a, row);
  A acc = A(0);
  if (r.live) acc = row_terms<T, MULTI_HOT>(a, row, r, int64_t(lane) * V, int64_t(G) * V);
  acc = group_reduce<G>(acc, SumOp());  // every lane of the warp takes part
  if (!active) return;
  if (lane == 0) static_cast<A*>(a.loss_rows)[row] = r.live ? r.weight * acc : dead_value(r);
  if (!r.live && a.grad)
    fill_row<T>(static_cast<T*>(a.grad) + row * a.classes, a.classes, int64_t(lane) * V, int64_t(G) * V, dead_value(r));
}

template <typename T, bool MULTI_HOT>
__global__ void __launch_bounds__(kRowBlock) sigmoid_block_kernel(SigmoidFocalArgs a) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  __shared__ A scratch[33];
  const int64_t row = blockIdx.x;
  const Row<A> r = read_row<MULTI_HOT, A>(a, row);  // uniform over the block
  const int64_t first = int64_t(threadIdx.x) * V, stride = int64_t(kRowBlock) * V;
  if (!r.live) {
    if (threadIdx.x == 0) static_cast<A*>(a.loss_rows)[row] = dead_value(r);
    if (a.grad) fill_row<T>(static_cast<T*>(a.grad) + row * a.classes, a.classes, first, stride, dead_value(r));
    return;
  }
  A acc = row_terms<T, MULTI_HOT>(a, row, r, first, stride);
  acc = block_reduce(acc, SumOp(), A(0), scratch);
  if (threadIdx.x == 0) static_cast<A*>(a.loss_rows)[row] = r.weight * acc;
}

// Lanes per row: about 4 vectors per lane, 4 to 32 lanes; 0 = a block per row.
template <typename T>
int lanes_per_row(int64_t C) {
  constexpr int V = Vec<T>::size;
  const int64_t nvec = (C + V - 1) / V;
  if (nvec > 32 * 32) return 0;
  int g = 4;
  while (g < 32 && int64_t(g) * 4 < nvec) g *= 2;
  return g;
}

template <typename T, int G, bool MULTI_HOT>
cudaError_t launch_group(const SigmoidFocalArgs& a, cudaStream_t stream) {
  constexpr int rows_per_block = kGroupBlock / G;
  const int64_t blocks = (a.rows + rows_per_block - 1) / rows_per_block;
  sigmoid_group_kernel<T, G, MULTI_HOT><<<unsigned(blocks), kGroupBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, bool MULTI_HOT>
cudaError_t launch(const SigmoidFocalArgs& a, cudaStream_t stream) {
  switch (lanes_per_row<T>(a.classes)) {
    case 4: return launch_group<T, 4, MULTI_HOT>(a, stream);
    case 8: return launch_group<T, 8, MULTI_HOT>(a, stream);
    case 16: return launch_group<T, 16, MULTI_HOT>(a, stream);
    case 32: return launch_group<T, 32, MULTI_HOT>(a, stream);
    default:
      sigmoid_block_kernel<T, MULTI_HOT><<<unsigned(a.rows), kRowBlock, 0, stream>>>(a);
      return cudaGetLastError();
  }
}

template <typename T>
cudaError_t launch(const SigmoidFocalArgs& a, cudaStream_t stream) {
  return a.multi_hot_target ? launch<T, true>(a, stream) : launch<T, false>(a, stream);
}

}  // namespace

cudaError_t sigmoid_focal(const SigmoidFocalArgs& args, Dtype dtype, int /*device*/, cudaStream_t stream) {
  if (args.rows <= 0 || args.classes <= 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::f32: return launch<float>(args, stream);
    case Dtype::f16: return launch<__half>(args, stream);
    case Dtype::bf16: return launch<__nv_bfloat16>(args, stream);
    case Dtype::f64: return launch<double>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cb
