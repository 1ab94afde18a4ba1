// Fused class-weighted softmax cross-entropy: loss and gradient in one pass over the logits.
//
// Design (DESIGN §5, §6). The floor for forward+backward is "read the logits once, write the gradient
// once". A row's gradient needs its log-sum-exp, so each row is held in registers between the
// reduction and the gradient write; how a row is spread over threads depends on C (see make_plan):
//
//   * group<G>xNV — small C (fp32 C <= 1024, bf16 C <= 2048): G = 4..32 lanes of one warp own a row,
//     each lane NV 16-byte vectors; several rows per 128-thread block. Reductions are warp shuffles
//     only, so a 256 x 1000 problem is one short launch with no shared memory or __syncthreads.
//   * block<T>xNV — medium C (up to 512 threads x 32 values in registers: 16384 elements for 2- and 4-byte
//     types, 8192 doubles): one block per row, shared-memory tree reductions.
//   * cluster<n>x<T> — huge C on sm_90 (up to 8 x 16384 = 131072 elements, fp16/bf16/fp32): a thread-block
//     cluster of n CTAs owns a row, each CTA a contiguous chunk in registers; the per-CTA max and sums
//     are exchanged through distributed shared memory (read in rank order), so the row is still read
//     from HBM exactly once and the gradient written once, with no global workspace.
//   * split<k> — anything larger, fp64 rows beyond the cluster capacity, or GPUs without clusters:
//     k blocks per row write (max, sum exp, sum z) partials to a workspace, a second kernel combines
//     them in chunk order and writes the gradient. It re-reads the logits (1.5x the floor) but is
//     correct at any C.
//
// Every path: one fused pass computes max, sum of exp (the exponentials are kept in registers and
// reused for the gradient), the label-smoothing sum, the loss and the gradient. Accumulation is fp32
// (fp64 for fp64 logits); the gradient is written in the logits' dtype and the target entry
// p_y - (1 - eps) is formed in fp32 before rounding. A thread's 16 bytes are moved with 16-, 8- or
// 4-byte accesses as the row's alignment allows, and element-wise (bounds-checked) in row tails and
// 2-byte aligned fp16/bf16 rows, with the same element -> thread mapping in every case, so results are
// bitwise reproducible and never depend on data addresses. Reductions are fixed-order
// trees (no atomics). grad_scale is read on the device: no host synchronisation, graph capturable.
// Indices are int64. A target outside [0, C) that is not ignore_index gives a NaN loss and gradient
// for its row and is never used as an address.
#include <cooperative_groups.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>

#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cg = cooperative_groups;

namespace cb {
namespace {

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
  A weight;       // w_y
  A margin;       // target_margin_y
};

template <typename A>
__device__ __forceinline__ Row<A> read_row(const SoftmaxCeArgs& a, int64_t row) {
  Row<A> r;
  r.y = a.target[row];
  r.ignored = r.y == a.ignore_index;
  r.live = !r.ignored && r.y >= 0 && r.y < a.classes;
  const int64_t ys = r.live ? r.y : 0;
  r.weight = (r.live && a.weight) ? A(a.weight[ys]) : A(1);
  r.margin = (r.live && a.target_margin) ? A(a.target_margin[ys]) : A(0);
  return r;
}

// The value written for every gradient entry of a row that is not live.
template <typename A>
__device__ __forceinline__ A dead_row_value(const Row<A>& r) { return r.ignored ? A(0) : quiet_nan<A>(); }

// z'_j = scale * (z_j + logit_offset_j - [j == y] margin_y), the reference's order of operations.
template <typename A>
__device__ __forceinline__ A adjusted(A z, int64_t j, const SoftmaxCeArgs& a, const Row<A>& r, A scale) {
  if (a.logit_offset) z = z + A(a.logit_offset[j]);
  if (j == r.y) z = z - r.margin;
  return z * scale;
}

// Loads a vector at element j (< bound) and turns it into adjusted logits; -inf past the bound.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ void load_adjusted(const T* zrow, int64_t j, int64_t bound, int aligned,
                                              const SoftmaxCeArgs& a, const Row<A>& r, A scale,
                                              A (&x)[Vec<T>::size]) {
  constexpr int V = Vec<T>::size;
  load_vec<T>(zrow, j, bound, aligned, neg_inf<A>(), x);
#pragma unroll
  for (int v = 0; v < V; ++v)
    if (j + v < bound) x[v] = adjusted(x[v], j + v, a, r, scale);
}

template <typename A>
__device__ __forceinline__ A row_loss(const Row<A>& r, A lse, A zy, A sum_z, A eps, int64_t C) {
  const A nll = lse - zy;
  const A smoothed = eps > A(0) ? (A(1) - eps) * nll + eps * (lse - sum_z / A(C)) : nll;
  return r.weight * smoothed;
}

// The target's adjusted logit, recomputed exactly as in the register pass (same operations).
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ A target_logit(const T* zrow, const SoftmaxCeArgs& a, const Row<A>& r, A scale) {
  return adjusted(to_acc(zrow[r.y]), r.y, a, r, scale);
}

// Gradient of one vector from e = exp(z' - max): coef * (e / s - [j == y](1 - eps) - eps / C).
template <typename A, int V>
__device__ __forceinline__ void grad_vec(A (&e)[V], int64_t j, const Row<A>& r, A inv_s, A coef, A one_minus_eps,
                                         A eps_over_c) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    A g = e[v] * inv_s - eps_over_c;
    if (j + v == r.y) g = g - one_minus_eps;
    e[v] = coef * g;
  }
}

template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ void fill_dead_row(T* grow, int64_t begin, int64_t end, int64_t first, int64_t stride,
                                              int aligned, A value) {
  constexpr int V = Vec<T>::size;
  A x[V];
#pragma unroll
  for (int v = 0; v < V; ++v) x[v] = value;
  for (int64_t j = begin + first; j < end; j += stride) store_vec<T>(grow, j, end, aligned, x);
}

// ---- small C: G lanes per row -----------------------------------------------------------------------
template <typename T, int G, int NV>
__global__ void __launch_bounds__(kGroupBlock) softmax_group_kernel(SoftmaxCeArgs a) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  const int lane = threadIdx.x % G;
  const int64_t row = int64_t(blockIdx.x) * (kGroupBlock / G) + threadIdx.x / G;
  const bool active = row < a.rows;
  const int64_t C = a.classes;
  const A scale = A(a.scale), eps = A(a.label_smoothing);

  Row<A> r{false, false, -1, A(1), A(0)};
  if (active) r = read_row<A>(a, row);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const int aligned = row_align(zrow);

  // Every lane runs the loads (masked) and all reductions: the shuffles span the whole warp.
  A x[NV][V];
  A m = neg_inf<A>();
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = int64_t(k * G + lane) * V;
    if (r.live) {
      load_adjusted<T>(zrow, j, C, aligned, a, r, scale, x[k]);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) x[k][v] = neg_inf<A>();
    }
#pragma unroll
    for (int v = 0; v < V; ++v) m = MaxOp()(m, x[k][v]);
  }
  m = group_reduce<G>(m, MaxOp());

  A s = A(0), sum_z = A(0);
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = int64_t(k * G + lane) * V;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (j + v < C) sum_z += x[k][v];
      x[k][v] = cb_exp(x[k][v] - m);  // 0 for the -inf padding
      s += x[k][v];
    }
  }
  s = group_reduce<G>(s, SumOp());
  if (eps > A(0)) sum_z = group_reduce<G>(sum_z, SumOp());
  if (!active) return;

  const A lse = m + cb_log(s);
  if (lane == 0) {
    A loss = A(0);
    if (r.live) loss = row_loss(r, lse, target_logit<T>(zrow, a, r, scale), sum_z, eps, C);
    else if (!r.ignored) loss = quiet_nan<A>();
    static_cast<A*>(a.loss_rows)[row] = loss;
  }
  if (a.grad == nullptr) return;
  T* grow = static_cast<T*>(a.grad) + row * C;
  if (!r.live) {
    fill_dead_row<T>(grow, 0, C, int64_t(lane) * V, int64_t(G) * V, row_align(grow), dead_row_value(r));
    return;
  }
  const A coef = read_grad_scale<A>(a.grad_scale) * r.weight * scale;
  const A inv_s = A(1) / s;
  const int galigned = row_align(grow);
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = int64_t(k * G + lane) * V;
    if (j < C) {
      grad_vec<A, V>(x[k], j, r, inv_s, coef, A(1) - eps, eps / A(C));
      store_vec<T>(grow, j, C, galigned, x[k]);
    }
  }
}

// ---- medium / huge C: a block (or a cluster of blocks) per row ----------------------------------------
// CLUSTER: blockIdx.x = row * cluster_size + rank; CTA `rank` owns elements [rank * chunk, (rank+1) * chunk).
template <typename A>
struct ClusterExchange {
  // Max and sums of every CTA of the cluster, combined in rank order so all CTAs get the same bits.
  __device__ static A max(A* slot, A local, int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) *slot = local;
    cluster.sync();
    A m = neg_inf<A>();
    for (int rank = 0; rank < n; ++rank) m = MaxOp()(m, *cluster.map_shared_rank(slot, rank));
    return m;
#else
    __trap();
    return local;
#endif
  }
  __device__ static A sum(A* slot, A local, int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) *slot = local;
    cluster.sync();
    A s = A(0);
    for (int rank = 0; rank < n; ++rank) s += *cluster.map_shared_rank(slot, rank);
    return s;
#else
    __trap();
    return local;
#endif
  }
  // A CTA's shared memory must outlive the other CTAs' reads of it.
  __device__ static void arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::this_cluster().barrier_arrive();
#endif
  }
  __device__ static void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::this_cluster().barrier_wait();
#endif
  }
};

template <typename T, bool CLUSTER>
__global__ void __launch_bounds__(kMaxBlockThreads) softmax_block_kernel(SoftmaxCeArgs a, int cluster_size,
                                                                        int64_t chunk) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  constexpr int NV = BlockNV<T>::value;
  __shared__ A scratch[33];
  __shared__ A xfer[3];  // this CTA's max, sum of exp, sum of z' for the other CTAs of the cluster

  const int64_t row = CLUSTER ? int64_t(blockIdx.x) / cluster_size : int64_t(blockIdx.x);
  const int rank = CLUSTER ? int(blockIdx.x % cluster_size) : 0;
  const int64_t C = a.classes;
  const int64_t begin = int64_t(rank) * chunk;
  const int64_t end = begin + chunk < C ? begin + chunk : C;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);  // the same for every CTA of a cluster: early exits are uniform
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const int64_t stride = int64_t(blockDim.x) * V;

  if (!r.live) {
    if (rank == 0 && threadIdx.x == 0) static_cast<A*>(a.loss_rows)[row] = r.ignored ? A(0) : quiet_nan<A>();
    if (a.grad) {
      T* grow = static_cast<T*>(a.grad) + row * C;
      fill_dead_row<T>(grow, begin, end, int64_t(threadIdx.x) * V, stride, row_align(grow), dead_row_value(r));
    }
    return;
  }

  const int aligned = row_align(zrow);
  A x[NV][V];
  A m = neg_inf<A>();
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = begin + k * stride + int64_t(threadIdx.x) * V;
    load_adjusted<T>(zrow, j, end, aligned, a, r, scale, x[k]);
#pragma unroll
    for (int v = 0; v < V; ++v) m = MaxOp()(m, x[k][v]);
  }
  m = block_reduce(m, MaxOp(), neg_inf<A>(), scratch);
  if (CLUSTER) m = ClusterExchange<A>::max(&xfer[0], m, cluster_size);

  A s = A(0), sum_z = A(0);
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t j = begin + k * stride + int64_t(threadIdx.x) * V;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (j + v < end) sum_z += x[k][v];
      x[k][v] = cb_exp(x[k][v] - m);
      s += x[k][v];
    }
  }
  s = block_reduce(s, SumOp(), A(0), scratch);
  if (eps > A(0)) sum_z = block_reduce(sum_z, SumOp(), A(0), scratch);
  if (CLUSTER) {
    s = ClusterExchange<A>::sum(&xfer[1], s, cluster_size);
    if (eps > A(0)) sum_z = ClusterExchange<A>::sum(&xfer[2], sum_z, cluster_size);
    ClusterExchange<A>::arrive();
  }

  const A lse = m + cb_log(s);
  if (rank == 0 && threadIdx.x == 0)
    static_cast<A*>(a.loss_rows)[row] = row_loss(r, lse, target_logit<T>(zrow, a, r, scale), sum_z, eps, C);
  if (a.grad) {
    T* grow = static_cast<T*>(a.grad) + row * C;
    const int galigned = row_align(grow);
    const A coef = read_grad_scale<A>(a.grad_scale) * r.weight * scale;
    const A inv_s = A(1) / s;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t j = begin + k * stride + int64_t(threadIdx.x) * V;
      if (j < end) {
        grad_vec<A, V>(x[k], j, r, inv_s, coef, A(1) - eps, eps / A(C));
        store_vec<T>(grow, j, end, galigned, x[k]);
      }
    }
  }
  if (CLUSTER) ClusterExchange<A>::wait();
}

// ---- any C: blocks per row, two kernels through a workspace -------------------------------------------
// Workspace layout: [row][chunk][3] = (max, sum exp(z' - max), sum z') of the chunk, in the acc type.
template <typename T>
__global__ void __launch_bounds__(kSplitThreads) softmax_split_stats_kernel(SoftmaxCeArgs a, int chunks, int64_t chunk) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  __shared__ A scratch[33];
  const int64_t row = int64_t(blockIdx.x) / chunks;
  const int c = int(blockIdx.x % chunks);
  const int64_t C = a.classes;
  const int64_t begin = int64_t(c) * chunk;
  const int64_t end = begin + chunk < C ? begin + chunk : C;
  const A scale = A(a.scale);
  const Row<A> r = read_row<A>(a, row);
  if (!r.live) return;  // the grad kernel handles dead rows without reading the workspace
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const int aligned = row_align(zrow);

  // Online max / sum per thread (one exp per element), then block trees.
  A m = neg_inf<A>(), s = A(0), sum_z = A(0);
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(kSplitThreads) * V) {
    A x[V];
    load_adjusted<T>(zrow, j, end, aligned, a, r, scale, x);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (j + v >= end) continue;
      sum_z += x[v];
      if (x[v] > m) {
        s = s * cb_exp(m - x[v]) + A(1);
        m = x[v];
      } else {
        s += cb_exp(x[v] - m);
      }
    }
  }
  const A bm = block_reduce(m, MaxOp(), neg_inf<A>(), scratch);
  s = (m == neg_inf<A>()) ? A(0) : s * cb_exp(m - bm);
  s = block_reduce(s, SumOp(), A(0), scratch);
  sum_z = block_reduce(sum_z, SumOp(), A(0), scratch);
  if (threadIdx.x == 0) {
    A* out = static_cast<A*>(a.workspace) + (row * chunks + c) * 3;
    out[0] = bm;
    out[1] = s;
    out[2] = sum_z;
  }
}

template <typename T>
__global__ void __launch_bounds__(kSplitThreads) softmax_split_grad_kernel(SoftmaxCeArgs a, int chunks, int64_t chunk,
                                                                          int blocks_per_row) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  const int64_t row = int64_t(blockIdx.x) / blocks_per_row;
  const int c = int(blockIdx.x % blocks_per_row);
  const int64_t C = a.classes;
  const int64_t begin = int64_t(c) * chunk;
  const int64_t end = begin + chunk < C ? begin + chunk : C;
  const int64_t stride = int64_t(kSplitThreads) * V;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);
  if (!r.live) {
    if (c == 0 && threadIdx.x == 0) static_cast<A*>(a.loss_rows)[row] = r.ignored ? A(0) : quiet_nan<A>();
    if (a.grad) {
      T* grow = static_cast<T*>(a.grad) + row * C;
      fill_dead_row<T>(grow, begin, end, int64_t(threadIdx.x) * V, stride, row_align(grow), dead_row_value(r));
    }
    return;
  }
  // Every thread combines the row's partials in chunk order: identical bits in every block.
  const A* part = static_cast<const A*>(a.workspace) + row * chunks * 3;
  A m = neg_inf<A>();
  for (int i = 0; i < chunks; ++i) m = MaxOp()(m, part[3 * i]);
  A s = A(0), sum_z = A(0);
  for (int i = 0; i < chunks; ++i) {
    s += part[3 * i + 1] * cb_exp(part[3 * i] - m);
    sum_z += part[3 * i + 2];
  }
  const A lse = m + cb_log(s);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  if (c == 0 && threadIdx.x == 0)
    static_cast<A*>(a.loss_rows)[row] = row_loss(r, lse, target_logit<T>(zrow, a, r, scale), sum_z, eps, C);
  if (a.grad == nullptr) return;
  T* grow = static_cast<T*>(a.grad) + row * C;
  const int aligned = row_align(zrow), galigned = row_align(grow);
  const A coef = read_grad_scale<A>(a.grad_scale) * r.weight * scale;
  const A inv_s = A(1) / s;
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += stride) {
    A x[V];
    load_adjusted<T>(zrow, j, end, aligned, a, r, scale, x);
#pragma unroll
    for (int v = 0; v < V; ++v) x[v] = cb_exp(x[v] - m);
    grad_vec<A, V>(x, j, r, inv_s, coef, A(1) - eps, eps / A(C));
    store_vec<T>(grow, j, end, galigned, x);
  }
}

// ---- planning and launch -------------------------------------------------------------------------------
enum class Kind { group, block, cluster, split };

struct Plan {
  Kind kind;
  int g = 0, nv = 0;         // group
  int threads = 0;           // block / cluster
  int cluster = 1;           // cluster
  int chunks = 1;            // split
  int64_t chunk = 0;         // elements per CTA (cluster) or per block (split)
};

int round_up32(int64_t x) { return int((x + 31) / 32 * 32); }

// Whether this device can run the cluster kernel as compiled (sm_90+ hardware *and* sm_90+ code: a
// compute_80 PTX JIT-compiled on an H100 has no cluster instructions). Cached per device and dtype.
template <typename T>
bool cluster_capable(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) return false;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    const cudaError_t pending = cudaPeekAtLastError();
    int major = 0;
    cudaFuncAttributes attr{};
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                    major >= 9 && cudaFuncGetAttributes(&attr, softmax_block_kernel<T, true>) == cudaSuccess &&
                    attr.ptxVersion >= 90;
    // A failed query must not look like a failed launch later, but an error already pending (from
    // earlier work on this thread) is not ours to clear.
    if (!ok && pending == cudaSuccess) (void)cudaGetLastError();
    v = ok ? 1 : 2;
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

cudaLaunchConfig_t cluster_config(const Plan& p, int64_t rows, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(rows * p.cluster), 1, 1);
  cfg.blockDim = dim3(unsigned(p.threads), 1, 1);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = unsigned(p.cluster);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// Whether a cluster of this shape can be resident at all on the current device (a cluster of 1-CTA-
// per-SM blocks needs that many SMs in one GPC); the split path is the fallback. A successful occupancy
// query is cached per (device, cluster size, block size) — so after the first call a launch, and a
// CUDA-graph capture, makes no runtime query — and a failed one is retried by the next call.
template <typename T>
bool cluster_fits(const Plan& p, int device) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int>, bool> cache;
  const std::tuple<int, int, int> key(device, p.cluster, p.threads);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(p, 1, nullptr, &attr);
  const cudaError_t pending = cudaPeekAtLastError();
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, softmax_block_kernel<T, true>, &cfg) != cudaSuccess) {
    if (pending == cudaSuccess) (void)cudaGetLastError();  // ours to clear; an earlier error is not
    return false;
  }
  const std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, clusters > 0).first->second;  // the first stored answer wins
}

template <typename T>
Plan make_plan(int64_t C, int device) {
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
  if (nvec <= per_cta * kMaxCluster && cluster_capable<T>(device)) {
    p.kind = Kind::cluster;
    p.cluster = int((nvec + per_cta - 1) / per_cta);
    const int64_t vecs = (nvec + p.cluster - 1) / p.cluster;
    p.threads = round_up32((vecs + NV - 1) / NV);
    p.chunk = vecs * V;
    if (cluster_fits<T>(p, device)) return p;
  }
  p.kind = Kind::split;
  p.chunk = int64_t(kSplitChunkVecs) * V;
  p.chunks = int((C + p.chunk - 1) / p.chunk);
  return p;
}

template <typename T, int G, int NV>
cudaError_t launch_group(const SoftmaxCeArgs& a, cudaStream_t stream) {
  constexpr int rows_per_block = kGroupBlock / G;
  const int64_t blocks = (a.rows + rows_per_block - 1) / rows_per_block;
  softmax_group_kernel<T, G, NV><<<unsigned(blocks), kGroupBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(const SoftmaxCeArgs& a, int device, cudaStream_t stream) {
  const Plan p = make_plan<T>(a.classes, device);
  switch (p.kind) {
    case Kind::group:
      switch (p.g * 100 + p.nv) {
        case 401: return launch_group<T, 4, 1>(a, stream);
        case 801: return launch_group<T, 8, 1>(a, stream);
        case 1601: return launch_group<T, 16, 1>(a, stream);
        case 3201: return launch_group<T, 32, 1>(a, stream);
        case 3202: return launch_group<T, 32, 2>(a, stream);
        case 3204: return launch_group<T, 32, 4>(a, stream);
        default: return launch_group<T, 32, 8>(a, stream);
      }
    case Kind::block:
      softmax_block_kernel<T, false><<<unsigned(a.rows), p.threads, 0, stream>>>(a, 1, p.chunk);
      return cudaGetLastError();
    case Kind::cluster: {
      cudaLaunchAttribute attr;
      const cudaLaunchConfig_t cfg = cluster_config(p, a.rows, stream, &attr);
      return cudaLaunchKernelEx(&cfg, softmax_block_kernel<T, true>, a, p.cluster, p.chunk);
    }
    case Kind::split: {
      if (a.workspace == nullptr) return cudaErrorInvalidValue;  // see softmax_ce_workspace_bytes
      softmax_split_stats_kernel<T><<<unsigned(a.rows * p.chunks), kSplitThreads, 0, stream>>>(a, p.chunks, p.chunk);
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      // Forward only: one block per row combines the partials and writes the loss.
      const int per_row = a.grad ? p.chunks : 1;
      softmax_split_grad_kernel<T><<<unsigned(a.rows * per_row), kSplitThreads, 0, stream>>>(a, p.chunks, p.chunk,
                                                                                                per_row);
      return cudaGetLastError();
    }
  }
  return cudaErrorInvalidValue;
}

template <typename T>
void describe(int64_t C, int device, char* out, std::size_t len) {
  const Plan p = make_plan<T>(C, device);
  switch (p.kind) {
    case Kind::group: std::snprintf(out, len, "group%dx%d", p.g, p.nv); break;
    case Kind::block: std::snprintf(out, len, "block%dx%d", p.threads, BlockNV<T>::value); break;
    case Kind::cluster: std::snprintf(out, len, "cluster%dx%d", p.cluster, p.threads); break;
    case Kind::split: std::snprintf(out, len, "split%d", p.chunks); break;
  }
}

template <typename T>
std::size_t workspace_bytes(int64_t rows, int64_t C, int device) {
  const Plan p = make_plan<T>(C, device);
  return p.kind == Kind::split ? std::size_t(rows) * p.chunks * 3 * sizeof(acc_t<T>) : 0;
}

}  // namespace

void softmax_ce_plan(int64_t classes, Dtype dtype, int device, char* out, std::size_t len) {
  switch (dtype) {
    case Dtype::f32: return describe<float>(classes, device, out, len);
    case Dtype::f16: return describe<__half>(classes, device, out, len);
    case Dtype::bf16: return describe<__nv_bfloat16>(classes, device, out, len);
    case Dtype::f64: return describe<double>(classes, device, out, len);
  }
}

std::size_t softmax_ce_workspace_bytes(int64_t rows, int64_t classes, Dtype dtype, int device) {
  switch (dtype) {
    case Dtype::f32: return workspace_bytes<float>(rows, classes, device);
    case Dtype::f16: return workspace_bytes<__half>(rows, classes, device);
    case Dtype::bf16: return workspace_bytes<__nv_bfloat16>(rows, classes, device);
    case Dtype::f64: return workspace_bytes<double>(rows, classes, device);
  }
  return 0;
}

cudaError_t softmax_ce(const SoftmaxCeArgs& args, Dtype dtype, int device, cudaStream_t stream) {
  if (args.rows <= 0 || args.classes <= 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::f32: return launch<float>(args, device, stream);
    case Dtype::f16: return launch<__half>(args, device, stream);
    case Dtype::bf16: return launch<__nv_bfloat16>(args, device, stream);
    case Dtype::f64: return launch<double>(args, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cb
