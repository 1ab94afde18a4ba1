// The per-thread and per-row logic of the fused softmax cross-entropy kernels (softmax_ce.cu), written
// once as __host__ __device__ functions: the kernels are these functions plus shuffles, barriers and
// the cluster exchange, and kernels/cuda/harness/device_math_check.cu runs the same functions on the
// host, thread by thread, against a long-double evaluation of the loss of cbbench/reference.py.
//
// Pieces (in the order a row goes through them):
//   * Row / read_row / adjusted / load_adjusted: a row's target, weight and margin, and its adjusted
//     logits z'_j = scale * (z_j + logit_offset_j - [j == y] margin_y), -inf past the row's end;
//   * regs_load / regs_exp_sums / regs_store_grad: one thread's share of a row held in registers
//     (group and block / cluster kernels): local max, then exp(z' - max) kept for the gradient;
//   * online_update / online_rescale / combine_chunks: the split path's running (max, sum exp) per
//     thread, its rescaling to the block max, and the chunk partials combined in chunk order;
//   * row_loss / grad_vec: the loss from the row's log-sum-exp and the gradient of a vector;
//   * first_plan / split_plan: which kernel a row of C elements takes (the launch plan).
#ifndef CBBENCH_CB_SOFTMAX_ROWS_CUH_
#define CBBENCH_CB_SOFTMAX_ROWS_CUH_

#include <cstdint>

#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cb {
namespace softmax {

constexpr int kGroupBlock = 128;        // threads per block of the group kernel
constexpr int kMaxBlockThreads = 512;
constexpr int kMaxCluster = 8;          // portable cluster size
constexpr int kSplitThreads = 256;
constexpr int kSplitChunkVecs = 4096;   // vectors per block of the split path

// Vectors per thread held in registers by the block / cluster kernels: 32 values of 4 or 2 bytes, 16
// doubles (more spills at the 128 registers that 512-thread blocks allow).
template <typename T> struct BlockNV { static constexpr int value = sizeof(T) == 8 ? 8 : 32 / Vec<T>::size; };

// ---- per-row state --------------------------------------------------------------------------------
template <typename A>
struct Row {
  bool live;      // valid class index: compute
  bool ignored;   // target == ignore_index: loss 0, gradient 0
  int64_t y;      // target (only meaningful when live)
  A weight;       // w_y alpha_y s_row: what the row's loss and gradient carry
  A margin;       // target_margin_y
};

template <typename A>
CB_FN Row<A> read_row(const SoftmaxCeArgs& a, int64_t row) {
  Row<A> r;
  r.y = a.target[row];
  r.ignored = r.y == a.ignore_index;
  r.live = !r.ignored && r.y >= 0 && r.y < a.classes;
  const int64_t ys = r.live ? r.y : 0;
  r.weight = (r.live && a.weight) ? A(a.weight[ys]) : A(1);
  if (r.live && a.alpha) r.weight = r.weight * A(a.alpha[ys]);
  if (r.live && a.sample_weight) r.weight = r.weight * A(a.sample_weight[row]);
  r.margin = (r.live && a.target_margin) ? A(a.target_margin[ys]) : A(0);
  return r;
}

// The value written for every gradient entry of a row that is not live, and its loss.
template <typename A>
CB_FN A dead_row_value(const Row<A>& r) { return r.ignored ? A(0) : quiet_nan<A>(); }

// z'_j = scale * (z_j + logit_offset_j - [j == y] margin_y), the reference's order of operations.
template <typename A>
CB_FN A adjusted(A z, int64_t j, const SoftmaxCeArgs& a, const Row<A>& r, A scale) {
  if (a.logit_offset) z = z + A(a.logit_offset[j]);
  if (j == r.y) z = z - r.margin;
  return z * scale;
}

// Loads a vector at element j (< bound) and turns it into adjusted logits; -inf past the bound.
template <typename T, typename A = acc_t<T>>
CB_FN void load_adjusted(const T* zrow, int64_t j, int64_t bound, int aligned, const SoftmaxCeArgs& a,
                         const Row<A>& r, A scale, A (&x)[Vec<T>::size]) {
  constexpr int V = Vec<T>::size;
  load_vec<T>(zrow, j, bound, aligned, neg_inf<A>(), x);
#pragma unroll
  for (int v = 0; v < V; ++v)
    if (j + v < bound) x[v] = adjusted(x[v], j + v, a, r, scale);
}

// loss = w_y * [(1 - eps)(lse - z'_y) + eps (lse - mean_j z'_j)] (eps = 0: w_y (lse - z'_y)); gamma > 0:
// the softmax focal loss w_y (1 - p_y)^gamma (lse - z'_y) (cb_math.h, cb_softmax_focal; no smoothing).
template <typename A>
CB_FN A row_loss(const Row<A>& r, A lse, A zy, A sum_z, A eps, int64_t C, A gamma = A(0)) {
  const A nll = lse - zy;
  const A smoothed = eps > A(0) ? (A(1) - eps) * nll + eps * (lse - sum_z / A(C)) : nll;
  A modulator = A(1), factor = A(1);
  cb_softmax_focal(nll, gamma, &modulator, &factor);
  return r.weight * (modulator * smoothed);
}

// The softmax focal loss's gradient factor of a row (1 for cross-entropy): every gradient entry of the row
// is scaled by it (cb_math.h, cb_softmax_focal).
template <typename A>
CB_FN A focal_factor(A lse, A zy, A gamma) {
  A modulator = A(1), factor = A(1);
  cb_softmax_focal(lse - zy, gamma, &modulator, &factor);
  return factor;
}

// The target's adjusted logit, recomputed exactly as in the register pass (same operations).
template <typename T, typename A = acc_t<T>>
CB_FN A target_logit(const T* zrow, const SoftmaxCeArgs& a, const Row<A>& r, A scale) {
  return adjusted(to_acc(zrow[r.y]), r.y, a, r, scale);
}

// Gradient of one vector from e = exp(z' - max): coef * (e / s - [j == y](1 - eps) - eps / C).
template <typename A, int V>
CB_FN void grad_vec(A (&e)[V], int64_t j, const Row<A>& r, A inv_s, A coef, A one_minus_eps, A eps_over_c) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    A g = e[v] * inv_s - eps_over_c;
    if (j + v == r.y) g = g - one_minus_eps;
    e[v] = coef * g;
  }
}

// The gradient's common factor: grad_scale * w_y * scale.
template <typename A>
CB_FN A grad_coef(const SoftmaxCeArgs& a, const Row<A>& r, A scale) {
  return read_grad_scale<A>(a.grad_scale) * r.weight * scale;
}

template <typename T, typename A = acc_t<T>>
CB_FN void fill_dead_row(T* grow, int64_t begin, int64_t end, int64_t first, int64_t stride, int aligned, A value) {
  constexpr int V = Vec<T>::size;
  A x[V];
#pragma unroll
  for (int v = 0; v < V; ++v) x[v] = value;
  for (int64_t j = begin + first; j < end; j += stride) store_vec<T>(grow, j, end, aligned, x);
}

// The end of the k-th range [k chunk, (k + 1) chunk) of a row of C elements (a CTA of a cluster, a
// block of the split path), clipped to the row.
CB_FN int64_t chunk_end(int64_t k, int64_t chunk, int64_t C) {
  const int64_t end = (k + 1) * chunk;
  return end < C ? end : C;
}

// ---- one thread's share of a row in registers (group, block and cluster kernels) ----------------------
// The thread owns the NV vectors at j_k = first + k * stride, k < NV, of the elements before `end`
// (group kernel: first = lane * V, stride = G * V, end = C; block / cluster kernel: first = begin +
// threadIdx.x * V, stride = blockDim.x * V, end = the CTA's chunk end). Slots at or past `end` hold -inf.

// Loads the adjusted logits of a live row (all -inf for a row that is not live) and returns their max.
template <typename T, int NV, typename A = acc_t<T>>
CB_FN A regs_load(A (&x)[NV][Vec<T>::size], const T* zrow, int64_t first, int64_t stride, int64_t end, int aligned,
                  const SoftmaxCeArgs& a, const Row<A>& r, A scale) {
  constexpr int V = Vec<T>::size;
  A m = neg_inf<A>();
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = first + k * stride;
    if (r.live) {
      load_adjusted<T>(zrow, j, end, aligned, a, r, scale, x[k]);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) x[k][v] = neg_inf<A>();
    }
#pragma unroll
    for (int v = 0; v < V; ++v) m = MaxOp()(m, x[k][v]);
  }
  return m;
}

// Given the row max m: x <- exp(x - m) (0 for the -inf padding) and this thread's sums of exp(z' - m)
// and of z' (in-range elements only).
template <typename T, int NV, typename A = acc_t<T>>
CB_FN void regs_exp_sums(A (&x)[NV][Vec<T>::size], A m, int64_t first, int64_t stride, int64_t end, A& s,
                         A& sum_z) {
  constexpr int V = Vec<T>::size;
  s = A(0);
  sum_z = A(0);
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = first + k * stride;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (j + v < end) sum_z += x[k][v];
      x[k][v] = cb_exp(x[k][v] - m);
      s += x[k][v];
    }
  }
}

// Writes the gradient of the thread's in-range vectors from x = exp(z' - m).
template <typename T, int NV, typename A = acc_t<T>>
CB_FN void regs_store_grad(A (&x)[NV][Vec<T>::size], T* grow, int64_t first, int64_t stride, int64_t end,
                           int galigned, const Row<A>& r, A inv_s, A coef, A eps, int64_t C) {
  constexpr int V = Vec<T>::size;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = first + k * stride;
    if (j < end) {
      grad_vec<A, V>(x[k], j, r, inv_s, coef, A(1) - eps, eps / A(C));
      store_vec<T>(grow, j, end, galigned, x[k]);
    }
  }
}

// ---- running (max, sum of exp) of the split path ---------------------------------------------------
// Invariant: s = sum over the elements seen of exp(x - m); m = -inf and s = 0 before any finite or
// +inf element. A -inf element adds exp(-inf - m) = 0 and is skipped: computing it would be
// exp(-inf - (-inf)) = NaN while m is still -inf. NaN elements (never > m) reach the sum and make it
// NaN; +inf gives NaN through exp(inf - inf) on the next merge, as in the other paths.
template <typename A>
CB_FN void online_update(A& m, A& s, A x) {
  if (x > m) {
    s = s * cb_exp(m - x) + A(1);
    m = x;
  } else if (x != neg_inf<A>()) {
    s += cb_exp(x - m);
  }
}

// A partial sum s of exp(x - m) rescaled to a larger max M: s exp(m - M). A partial with m = -inf has
// seen only -inf and NaN elements: its s (0, or NaN) is kept as it is, whatever M is (exp(-inf - M)
// would be NaN for M = -inf, and 0 would drop the NaN).
template <typename A>
CB_FN A online_rescale(A s, A m, A M) {
  return m == neg_inf<A>() ? s : s * cb_exp(m - M);
}

// One split-path thread's pass over its elements j = first + i * stride < end of the row: running max,
// sum of exp and sum of the adjusted logits.
template <typename T, typename A = acc_t<T>>
CB_FN void split_thread_stats(const T* zrow, int64_t first, int64_t stride, int64_t end, int aligned,
                              const SoftmaxCeArgs& a, const Row<A>& r, A scale, A& m, A& s, A& sum_z) {
  constexpr int V = Vec<T>::size;
  m = neg_inf<A>();
  s = A(0);
  sum_z = A(0);
  for (int64_t j = first; j < end; j += stride) {
    A x[V];
    load_adjusted<T>(zrow, j, end, aligned, a, r, scale, x);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (j + v >= end) continue;
      sum_z += x[v];
      online_update(m, s, x[v]);
    }
  }
}

// The row's (max, sum exp(z' - max), sum z') from the per-chunk partials [chunk][3] of the workspace,
// combined in chunk order (every thread of every block gets the same bits).
template <typename A>
struct RowStats {
  A m, s, sum_z;
};

template <typename A>
CB_FN RowStats<A> combine_chunks(const A* part, int chunks) {
  RowStats<A> t{neg_inf<A>(), A(0), A(0)};
  for (int i = 0; i < chunks; ++i) t.m = MaxOp()(t.m, part[3 * i]);
  for (int i = 0; i < chunks; ++i) {
    t.s += online_rescale(part[3 * i + 1], part[3 * i], t.m);
    t.sum_z += part[3 * i + 2];
  }
  return t;
}

// One split-path thread's gradient of elements j = first + i * stride < end, recomputed from the logits.
template <typename T, typename A = acc_t<T>>
CB_FN void split_thread_grad(const T* zrow, T* grow, int64_t first, int64_t stride, int64_t end, int aligned,
                             int galigned, const SoftmaxCeArgs& a, const Row<A>& r, A scale, A m, A inv_s, A coef,
                             A eps) {
  constexpr int V = Vec<T>::size;
  for (int64_t j = first; j < end; j += stride) {
    A x[V];
    load_adjusted<T>(zrow, j, end, aligned, a, r, scale, x);
#pragma unroll
    for (int v = 0; v < V; ++v) x[v] = cb_exp(x[v] - m);
    grad_vec<A, V>(x, j, r, inv_s, coef, A(1) - eps, eps / A(a.classes));
    store_vec<T>(grow, j, end, galigned, x);
  }
}

// ---- launch plan -------------------------------------------------------------------------------------
//   * group<G>xNV — small C (fp32 C <= 1024, bf16 C <= 2048): G = 4..32 lanes of one warp own a row,
//     each lane NV 16-byte vectors; several rows per 128-thread block;
//   * block<T>xNV — medium C (up to 512 threads x 32 values in registers: 16384 elements for 2- and
//     4-byte types, 8192 doubles): one block per row;
//   * cluster<n>x<T> — up to 8 such blocks as a thread-block cluster (sm_90, when the device runs the
//     cluster kernel and a cluster of that shape fits: decided at launch);
//   * split<k> — anything else: k chunks of kSplitChunkVecs vectors per row, two kernels.
enum class Kind { group, block, cluster, split };

struct Plan {
  Kind kind;
  int g = 0, nv = 0;         // group
  int threads = 0;           // block / cluster
  int cluster = 1;           // cluster
  int chunks = 1;            // split
  int64_t chunk = 0;         // elements per CTA (cluster) or per block (split)
};

inline int round_up32(int64_t x) { return int((x + 31) / 32 * 32); }

template <typename T>
inline Plan split_plan(int64_t C) {
  constexpr int V = Vec<T>::size;
  Plan p;
  p.kind = Kind::split;
  p.chunk = int64_t(kSplitChunkVecs) * V;
  p.chunks = int((C + p.chunk - 1) / p.chunk);
  return p;
}

// The plan for rows of C elements when clusters may be used: group, block, a cluster candidate (to be
// confirmed on the device, else split_plan) or split.
template <typename T>
inline Plan first_plan(int64_t C) {
  constexpr int V = Vec<T>::size;
  const int64_t nvec = (C + V - 1) / V;
  Plan p;
  if (nvec <= 32) {
    p.kind = Kind::group;
    p.nv = 1;
    p.g = nvec <= 4 ? 4 : nvec <= 8 ? 8 : nvec <= 16 ? 16 : 32;
    return p;
  }
  if (nvec <= 32 * 8) {
    p.kind = Kind::group;
    p.g = 32;
    p.nv = nvec <= 64 ? 2 : nvec <= 128 ? 4 : 8;
    return p;
  }
  constexpr int NV = BlockNV<T>::value;
  constexpr int64_t per_cta = int64_t(kMaxBlockThreads) * NV;
  if (nvec <= per_cta) {
    p.kind = Kind::block;
    p.threads = round_up32((nvec + NV - 1) / NV);
    p.chunk = C;
    return p;
  }
  if (nvec <= per_cta * kMaxCluster) {
    p.kind = Kind::cluster;
    p.cluster = int((nvec + per_cta - 1) / per_cta);
    const int64_t vecs = (nvec + p.cluster - 1) / p.cluster;
    p.threads = round_up32((vecs + NV - 1) / NV);
    p.chunk = vecs * V;
    return p;
  }
  return split_plan<T>(C);
}

// Bytes of workspace the launch may need: the split path's partials whenever a row is too long for one
// block (a cluster candidate may fall back to split at launch), else none.
template <typename T>
inline std::size_t workspace_bytes(int64_t rows, int64_t C) {
  const Plan p = first_plan<T>(C);
  if (p.kind == Kind::group || p.kind == Kind::block) return 0;
  return std::size_t(rows) * split_plan<T>(C).chunks * 3 * sizeof(acc_t<T>);
}

}  // namespace softmax
}  // namespace cb

#endif  // CBBENCH_CB_SOFTMAX_ROWS_CUH_
