// The reduction's divisor on the device: the CUDA twin of kernels/cpu/cb_cpu_loss.h's cb_index_local_divisor /
// cb_multi_hot_local_divisor / cb_finish_divisor (the formula: cbbench/shapes.py, local_divisor and
// finish_divisor), computed inside a loss kernel's launch (cb_kernels.h, FusedDivisor), so a "mean" /
// "weighted_mean" call launches the loss kernel and nothing else for its divisor -- or alone, by one
// block (divisor.cu, the `loss_divisor` op), with the same code and bits.
//
// The rows are cut into chunks of kDivisorChunkRows. Every block, as it starts, claims chunks from a
// counter until none is left, sums each -- in float64, in an order fixed by the row count alone
// (fixed_order_sum) -- and publishes it; the block that publishes the last one sums the partials in a
// fixed order, finishes the divisor, writes it and its reciprocal (the kernels' grad_scale) in the loss
// dtype, and releases a flag behind a fence; blocks that write a gradient wait for the flag before their
// rows. A block waits only when every chunk is claimed, and each claimed chunk is held by a running block
// that waits for nothing before publishing it, so the wait cannot deadlock whatever the grid size or the
// number of resident blocks (one block alone sums them all). The last block through resets the counters
// for the next launch. A chunk of 1024 rows is 8 rows per lane: the
// divisor of a million rows is about a thousand blocks' short sums, not one block's long one.
//
// Callers place fused_divisor before any early exit: every block of the grid must pass it.
#ifndef CBBENCH_CB_DIVISOR_CUH_
#define CBBENCH_CB_DIVISOR_CUH_

#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cb {

// The finished divisor of cb_finish_divisor: "mean" at least 1 (NaN stays NaN), a "weighted_mean" of
// exactly 0 becomes 1 (a negative one is kept).
__device__ __forceinline__ double finish_divisor(double d, bool weighted) {
  if (!weighted) return d < 1.0 ? 1.0 : d;
  return d != 0.0 ? d : 1.0;
}

// The sum of term(i) over i < n in a fixed order that does not depend on the block size: 128 virtual
// lanes (lane v sums i = v, v + 128, ...), then warp 0 sums lanes l, l + 32, l + 64, l + 96 and a
// butterfly. Every thread of the block calls it (blockDim.x a multiple of 32) and gets the sum.
constexpr int kDivisorLanes = 128;
template <typename Term>
__device__ __forceinline__ double fixed_order_sum(int64_t n, Term term, double* part) {
  for (int v = threadIdx.x; v < kDivisorLanes; v += blockDim.x) {
    double acc = 0.0;
#pragma unroll 4
    for (int64_t i = v; i < n; i += kDivisorLanes) acc += term(i);
    part[v] = acc;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    double x = part[threadIdx.x];
#pragma unroll
    for (int k = 1; k < kDivisorLanes / 32; ++k) x += part[threadIdx.x + 32 * k];
    x = group_reduce<32>(x, SumOp());
    if (threadIdx.x == 0) part[kDivisorLanes] = x;
  }
  __syncthreads();
  const double total = part[kDivisorLanes];
  __syncthreads();  // part may be reused right away
  return total;
}

// The local divisor's share of items [k * kDivisorChunkRows, ...): the valid rows, or for a weighted divisor
// the sum of their s_i w_{y_i}; for a multi-hot target sum_i s_i (the row count without sample weights); for
// `positives` the sum of those target entries. A class target out of range is clamped for the gather (its
// row's loss is NaN: the kernels' contract).
template <typename T>
__device__ __forceinline__ double sum_entries(const void* p, int64_t first, int64_t n, double* part) {
  const T* t = static_cast<const T*>(p) + first;
  return fixed_order_sum(n, [&](int64_t i) { return double(to_acc(t[i])); }, part);
}

__device__ __forceinline__ double chunk_partial(const DivisorArgs& a, int64_t k, double* part) {
  const int64_t first = k * kDivisorChunkRows;
  const int64_t items = a.positives != nullptr ? a.rows * a.classes : a.rows;
  const int64_t n = (items - first < kDivisorChunkRows) ? items - first : kDivisorChunkRows;
  if (a.positives != nullptr) {
    switch (a.positives_dtype) {
      case Dtype::f16: return sum_entries<__half>(a.positives, first, n, part);
      case Dtype::bf16: return sum_entries<__nv_bfloat16>(a.positives, first, n, part);
      case Dtype::f64: return sum_entries<double>(a.positives, first, n, part);
      default: return sum_entries<float>(a.positives, first, n, part);
    }
  }
  if (a.multi_hot) {
    const float* s = a.sample_weight;
    if (s == nullptr) return double(n);
    return fixed_order_sum(n, [&](int64_t i) { return double(s[first + i]); }, part);
  }
  return fixed_order_sum(n, [&](int64_t i) {
    const int64_t r = first + i;
    const int64_t y = a.target[r];
    if (y == a.ignore_index) return 0.0;
    double w = 1.0;
    if (a.weighted) {
      if (a.weight != nullptr) w = double(a.weight[y < 0 ? 0 : (y >= a.classes ? a.classes - 1 : y)]);
      if (a.sample_weight != nullptr) w *= double(a.sample_weight[r]);
    }
    return w;
  }, part);
}

// The block that published the last partial: their fixed-order sum (read past the fence with volatile
// loads: other blocks wrote them), times the mean column weight for a weighted multi-hot target, finished;
// thread 0 writes the divisor and its reciprocal.
template <typename L>
__device__ __forceinline__ void finish_block(const FusedDivisor& f, double* part) {
  const DivisorArgs& a = f.args;
  const volatile double* partials = f.partials;
  double d = fixed_order_sum(f.chunks, [&](int64_t k) { return partials[k]; }, part);
  if (a.positives == nullptr && a.multi_hot && a.weight != nullptr) {
    const float* w = a.weight;
    d = fixed_order_sum(a.classes, [&](int64_t j) { return double(w[j]); }, part) / double(a.classes) * d;
  }
  if (threadIdx.x == 0) {
    if (a.floor) d = finish_divisor(d, a.weighted);
    const L dv = L(d);
    if (a.divisor != nullptr) *static_cast<L*>(a.divisor) = dv;
    if (a.grad_scale != nullptr) *static_cast<L*>(a.grad_scale) = L(1) / dv;
  }
}

// A spinning thread's pause (sm_70+; older architectures spin without one).
__device__ __forceinline__ void backoff() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  __nanosleep(64);
#endif
}

// A loss kernel's prologue (and the whole of divisor.cu's kernel), called by every thread of every block
// before any early exit. `wait`: this launch reads grad_scale (it writes a gradient), so its blocks wait
// for the divisor before their rows.
template <typename L>
__device__ __forceinline__ void fused_divisor(const FusedDivisor& f, bool wait) {
  if (!f.on) return;
  __shared__ double part[kDivisorLanes + 1];
  __shared__ unsigned claim;
  __shared__ unsigned last;
  const unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
  // Claim chunks until none is left, summing and publishing each: a block waits only once every chunk is
  // claimed, and a claimed chunk is being summed by a running block that waits for nothing before it
  // publishes -- so however few blocks are resident, the flag comes.
  for (;;) {
    if (threadIdx.x == 0) claim = atomicAdd(&f.sync[0], 1u);
    __syncthreads();
    const int64_t k = claim;
    if (k >= f.chunks) break;
    const double p = chunk_partial(f.args, k, part);
    if (threadIdx.x == 0) {
      f.partials[k] = p;
      __threadfence();  // the partial is visible before the count
      last = atomicAdd(&f.sync[1], 1u) + 1u == unsigned(f.chunks);
    }
    __syncthreads();
    if (last) {
      __threadfence();
      finish_block<L>(f, part);
      if (threadIdx.x == 0) {
        __threadfence();  // the divisor and scale are visible before the flag
        atomicExch(&f.sync[2], 1u);
      }
    }
    __syncthreads();  // before thread 0 draws again
  }
  if (wait && threadIdx.x == 0) {
    while (*reinterpret_cast<volatile unsigned*>(&f.sync[2]) == 0u) backoff();
    __threadfence();  // ... and read after it
  }
  // The last block through resets the words: every block has made its last claim, every chunk is published
  // and the flag is set (its publisher counted itself after setting it).
  if (threadIdx.x == 0 && atomicAdd(&f.sync[3], 1u) == blocks - 1u) {
    atomicExch(&f.sync[0], 0u);
    atomicExch(&f.sync[1], 0u);
    atomicExch(&f.sync[2], 0u);
    atomicExch(&f.sync[3], 0u);
  }
  __syncthreads();  // the block's threads read grad_scale after thread 0 has seen the flag
}

}  // namespace cb

#endif  // CBBENCH_CB_DIVISOR_CUH_
