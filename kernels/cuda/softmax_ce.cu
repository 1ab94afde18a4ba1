// Fused class-weighted softmax cross-entropy: loss and gradient in one pass over the logits.
//
// The floor for forward+backward is "read the logits once, write the gradient once". A row's gradient
// needs its log-sum-exp, so each row is held in registers between the reduction and the gradient
// write; how a row is spread over threads depends on C (first_plan in cb_softmax_rows.cuh, which also
// holds every piece of per-thread and per-row math of these kernels, tested on the host by
// kernels/cuda/harness/device_math_check.cu):
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
// reused for the gradient), the label-smoothing sum, the loss and the gradient; with gamma > 0 the softmax
// focal loss, whose modulator and gradient factor come from the row's lse and target logit
// (cb_softmax_focal); alpha and sample weights scale a row with its class weight. Accumulation is fp32
// (fp64 for fp64 logits); the gradient is written in the logits' dtype and the target entry
// p_y - (1 - eps) is formed in fp32 before rounding. A thread's 16 bytes are moved with 16-, 8- or
// 4-byte accesses as the row's alignment allows, and element-wise (bounds-checked) in row tails and
// 2-byte aligned fp16/bf16 rows, with the same element -> thread mapping in every case, so results are
// bitwise reproducible and never depend on data addresses. Reductions are fixed-order
// trees (no atomic sums). grad_scale is read on the device: no host synchronisation, graph capturable. With
// a.fused on, the launch also computes the reduction's divisor and grad_scale (cb_divisor.cuh: atomics
// only hand out its chunks and order the blocks; its sums are fixed-order too).
// Indices are int64. A target outside [0, C) that is not ignore_index gives a NaN loss and gradient
// for its row and is never used as an address.
#include <cooperative_groups.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>

#include "cb_cuda.cuh"
#include "cb_divisor.cuh"
#include "cb_kernels.h"
#include "cb_softmax_rows.cuh"

namespace cg = cooperative_groups;

namespace cb {
namespace {

using namespace softmax;  // the per-thread / per-row logic (cb_softmax_rows.cuh)

// ---- small C: G lanes per row -----------------------------------------------------------------------
template <typename T, int G, int NV>
__global__ void __launch_bounds__(kGroupBlock) softmax_group_kernel(SoftmaxCeArgs a) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  fused_divisor<A>(a.fused, a.grad != nullptr);  // before any exit (cb_divisor.cuh)
  const int lane = threadIdx.x % G;
  const int64_t row = int64_t(blockIdx.x) * (kGroupBlock / G) + threadIdx.x / G;
  const bool active = row < a.rows;
  const int64_t C = a.classes;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const int64_t first = int64_t(lane) * V, stride = int64_t(G) * V;

  Row<A> r{false, false, -1, A(1), A(0)};
  if (active) r = read_row<A>(a, row);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;

  // Every lane runs the loads (masked) and all reductions: the shuffles span the whole warp.
  A x[NV][V];
  A m = regs_load<T, NV>(x, zrow, first, stride, C, row_align(zrow), a, r, scale);
  m = group_reduce<G>(m, MaxOp());
  A s, sum_z;
  regs_exp_sums<T, NV>(x, m, first, stride, C, s, sum_z);
  s = group_reduce<G>(s, SumOp());
  if (eps > A(0)) sum_z = group_reduce<G>(sum_z, SumOp());
  if (!active) return;

  const A lse = m + cb_log(s);
  const A gamma = A(a.gamma);
  // the target's logit: for the loss (lane 0) and, in the focal loss, every lane's gradient factor
  const A zy = (r.live && (lane == 0 || gamma > A(0))) ? target_logit<T>(zrow, a, r, scale) : A(0);
  if (lane == 0) {
    const A loss = r.live ? row_loss(r, lse, zy, sum_z, eps, C, gamma) : dead_row_value(r);
    static_cast<A*>(a.loss_rows)[row] = loss;
  }
  if (a.grad == nullptr) return;
  T* grow = static_cast<T*>(a.grad) + row * C;
  if (!r.live) {
    fill_dead_row<T>(grow, 0, C, first, stride, row_align(grow), dead_row_value(r));
    return;
  }
  regs_store_grad<T, NV>(x, grow, first, stride, C, row_align(grow), r, A(1) / s,
                         grad_coef(a, r, scale) * focal_factor(lse, zy, gamma), eps, C);
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
  fused_divisor<A>(a.fused, a.grad != nullptr);  // before any exit (cb_divisor.cuh)

  const int64_t row = CLUSTER ? int64_t(blockIdx.x) / cluster_size : int64_t(blockIdx.x);
  const int rank = CLUSTER ? int(blockIdx.x % cluster_size) : 0;
  const int64_t C = a.classes;
  const int64_t begin = int64_t(rank) * chunk, end = chunk_end(rank, chunk, C);
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);  // the same for every CTA of a cluster: early exits are uniform
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const int64_t first = begin + int64_t(threadIdx.x) * V, stride = int64_t(blockDim.x) * V;

  if (!r.live) {
    if (rank == 0 && threadIdx.x == 0) static_cast<A*>(a.loss_rows)[row] = dead_row_value(r);
    if (a.grad) {
      T* grow = static_cast<T*>(a.grad) + row * C;
      fill_dead_row<T>(grow, begin, end, int64_t(threadIdx.x) * V, stride, row_align(grow), dead_row_value(r));
    }
    return;
  }

  A x[NV][V];
  A m = regs_load<T, NV>(x, zrow, first, stride, end, row_align(zrow), a, r, scale);
  m = block_reduce(m, MaxOp(), neg_inf<A>(), scratch);
  if (CLUSTER) m = ClusterExchange<A>::max(&xfer[0], m, cluster_size);

  A s, sum_z;
  regs_exp_sums<T, NV>(x, m, first, stride, end, s, sum_z);
  s = block_reduce(s, SumOp(), A(0), scratch);
  if (eps > A(0)) sum_z = block_reduce(sum_z, SumOp(), A(0), scratch);
  if (CLUSTER) {
    s = ClusterExchange<A>::sum(&xfer[1], s, cluster_size);
    if (eps > A(0)) sum_z = ClusterExchange<A>::sum(&xfer[2], sum_z, cluster_size);
    ClusterExchange<A>::arrive();
  }

  const A lse = m + cb_log(s);
  const A gamma = A(a.gamma);
  const bool writes_loss = rank == 0 && threadIdx.x == 0;
  const A zy = (writes_loss || gamma > A(0)) ? target_logit<T>(zrow, a, r, scale) : A(0);
  if (writes_loss) static_cast<A*>(a.loss_rows)[row] = row_loss(r, lse, zy, sum_z, eps, C, gamma);
  if (a.grad) {
    T* grow = static_cast<T*>(a.grad) + row * C;
    regs_store_grad<T, NV>(x, grow, first, stride, end, row_align(grow), r, A(1) / s,
                           grad_coef(a, r, scale) * focal_factor(lse, zy, gamma), eps, C);
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
  // the divisor for the second kernel, which reads grad_scale after this launch: no wait here
  fused_divisor<A>(a.fused, false);
  const int64_t row = int64_t(blockIdx.x) / chunks;
  const int c = int(blockIdx.x % chunks);
  const int64_t C = a.classes;
  const int64_t begin = int64_t(c) * chunk, end = chunk_end(c, chunk, C);
  const Row<A> r = read_row<A>(a, row);
  if (!r.live) return;  // the grad kernel handles dead rows without reading the workspace
  const T* zrow = static_cast<const T*>(a.logits) + row * C;

  // Online max / sum per thread (one exp per element), then block trees.
  A m, s, sum_z;
  split_thread_stats<T>(zrow, begin + int64_t(threadIdx.x) * V, int64_t(kSplitThreads) * V, end, row_align(zrow), a,
                        r, A(a.scale), m, s, sum_z);
  const A bm = block_reduce(m, MaxOp(), neg_inf<A>(), scratch);
  s = block_reduce(online_rescale(s, m, bm), SumOp(), A(0), scratch);
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
  const int64_t begin = int64_t(c) * chunk, end = chunk_end(c, chunk, C);
  const int64_t stride = int64_t(kSplitThreads) * V;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);
  if (!r.live) {
    if (c == 0 && threadIdx.x == 0) static_cast<A*>(a.loss_rows)[row] = dead_row_value(r);
    if (a.grad) {
      T* grow = static_cast<T*>(a.grad) + row * C;
      fill_dead_row<T>(grow, begin, end, int64_t(threadIdx.x) * V, stride, row_align(grow), dead_row_value(r));
    }
    return;
  }
  // Every thread combines the row's partials in chunk order: identical bits in every block.
  const RowStats<A> t = combine_chunks(static_cast<const A*>(a.workspace) + row * chunks * 3, chunks);
  const A lse = t.m + cb_log(t.s);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const A gamma = A(a.gamma);
  const bool writes_loss = c == 0 && threadIdx.x == 0;
  const A zy = (writes_loss || gamma > A(0)) ? target_logit<T>(zrow, a, r, scale) : A(0);
  if (writes_loss) static_cast<A*>(a.loss_rows)[row] = row_loss(r, lse, zy, t.sum_z, eps, C, gamma);
  if (a.grad == nullptr) return;
  T* grow = static_cast<T*>(a.grad) + row * C;
  split_thread_grad<T>(zrow, grow, begin + int64_t(threadIdx.x) * V, stride, end, row_align(zrow), row_align(grow), a,
                       r, scale, t.m, A(1) / t.s, grad_coef(a, r, scale) * focal_factor(lse, zy, gamma), eps);
}

// ---- planning and launch -------------------------------------------------------------------------------
// A cluster candidate (first_plan) runs as a cluster only when this device runs the cluster kernel as
// compiled and a cluster of that shape can be resident; both are runtime queries. They are made
//   * never while `stream` is being captured into a CUDA graph (cudaStreamIsCapturing): a query inside
//     a capture could invalidate it; such a launch takes the split path (correct at any C) until an
//     uncaptured call has filled the cache;
//   * on the launch's own stream (its context), with this thread's capture mode relaxed for the
//     duration, so that a capture going on in another thread is not disturbed either;
//   * cached per device (and shape) only when they succeeded: a failed query is not an answer; it is
//     retried by the next call, and this call takes the split path. An error it raises is cleared
//     unless an earlier one was already pending (not ours to clear).
enum class Probe { yes, no, unknown };

// Runs `query` (returning cudaError_t) with this thread's stream-capture mode relaxed.
template <typename Query>
cudaError_t relaxed_query(Query query) {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  const bool swapped = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
  const cudaError_t err = query();
  if (swapped) (void)cudaThreadExchangeStreamCaptureMode(&mode);
  return err;
}

// Whether the thread's last-error state may be reset after a failed query of ours.
void clear_our_error(cudaError_t pending) {
  if (pending == cudaSuccess) (void)cudaGetLastError();
}

// True when `stream` is (or may be: the query failed) capturing; then no runtime query may run.
bool capturing(cudaStream_t stream) {
  const cudaError_t pending = cudaPeekAtLastError();
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    clear_our_error(pending);
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
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

// Whether this device can run the cluster kernel as compiled (sm_90+ hardware *and* sm_90+ code: a
// compute_80 PTX JIT-compiled on an H100 has no cluster instructions). Cached per device and dtype.
template <typename T>
Probe cluster_capable(int device, cudaStream_t stream, bool may_query) {
  static std::atomic<int> cache[64];  // 0: not known yet, 1: yes, 2: no
  if (device < 0 || device >= 64) return Probe::no;
  const int v = cache[device].load(std::memory_order_relaxed);
  if (v != 0) return v == 1 ? Probe::yes : Probe::no;
  if (!may_query || capturing(stream)) return Probe::unknown;
  const cudaError_t pending = cudaPeekAtLastError();
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    clear_our_error(pending);
    return Probe::unknown;
  }
  bool yes = false;
  if (major >= 9) {
    cudaFuncAttributes attr{};
    if (relaxed_query([&] { return cudaFuncGetAttributes(&attr, softmax_block_kernel<T, true>); }) != cudaSuccess) {
      clear_our_error(pending);
      return Probe::unknown;
    }
    yes = attr.ptxVersion >= 90;
  }
  int expected = 0;
  cache[device].compare_exchange_strong(expected, yes ? 1 : 2, std::memory_order_relaxed);  // first answer wins
  return cache[device].load(std::memory_order_relaxed) == 1 ? Probe::yes : Probe::no;
}

// Whether a cluster of this shape can be resident at all on the device (a cluster of 1-CTA-per-SM
// blocks needs that many SMs in one GPC). Cached per (device, cluster size, block size).
template <typename T>
Probe cluster_fits(const Plan& p, int device, cudaStream_t stream, bool may_query) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int>, bool> cache;
  const std::tuple<int, int, int> key(device, p.cluster, p.threads);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second ? Probe::yes : Probe::no;
  }
  if (!may_query || capturing(stream)) return Probe::unknown;
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(p, 1, stream, &attr);
  const cudaError_t pending = cudaPeekAtLastError();
  int clusters = 0;
  if (relaxed_query([&] { return cudaOccupancyMaxActiveClusters(&clusters, softmax_block_kernel<T, true>, &cfg); }) !=
      cudaSuccess) {
    clear_our_error(pending);
    return Probe::unknown;
  }
  const std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, clusters > 0).first->second ? Probe::yes : Probe::no;  // the first stored answer wins
}

// The plan a launch on `stream` takes. may_query = false: from the caches only (never a runtime query).
template <typename T>
Plan make_plan(int64_t C, int device, cudaStream_t stream, bool may_query) {
  const Plan p = first_plan<T>(C);
  if (p.kind != Kind::cluster) return p;
  if (cluster_capable<T>(device, stream, may_query) == Probe::yes &&
      cluster_fits<T>(p, device, stream, may_query) == Probe::yes)
    return p;
  return split_plan<T>(C);
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
  const Plan p = make_plan<T>(a.classes, device, stream, /*may_query=*/true);
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
void describe(int64_t C, int device, cudaStream_t stream, char* out, std::size_t len) {
  const Plan p = make_plan<T>(C, device, stream, /*may_query=*/true);
  switch (p.kind) {
    case Kind::group: std::snprintf(out, len, "group%dx%d", p.g, p.nv); break;
    case Kind::block: std::snprintf(out, len, "block%dx%d", p.threads, BlockNV<T>::value); break;
    case Kind::cluster: std::snprintf(out, len, "cluster%dx%d", p.cluster, p.threads); break;
    case Kind::split: std::snprintf(out, len, "split%d", p.chunks); break;
  }
}

}  // namespace

void softmax_ce_plan(int64_t classes, Dtype dtype, int device, char* out, std::size_t len, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::f32: return describe<float>(classes, device, stream, out, len);
    case Dtype::f16: return describe<__half>(classes, device, stream, out, len);
    case Dtype::bf16: return describe<__nv_bfloat16>(classes, device, stream, out, len);
    case Dtype::f64: return describe<double>(classes, device, stream, out, len);
  }
}

// No runtime query: sized for the split fallback whenever a row is too long for one block, so the
// launch may take either path (softmax::workspace_bytes).
std::size_t softmax_ce_workspace_bytes(int64_t rows, int64_t classes, Dtype dtype, int /*device*/) {
  switch (dtype) {
    case Dtype::f32: return workspace_bytes<float>(rows, classes);
    case Dtype::f16: return workspace_bytes<__half>(rows, classes);
    case Dtype::bf16: return workspace_bytes<__nv_bfloat16>(rows, classes);
    case Dtype::f64: return workspace_bytes<double>(rows, classes);
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
