// The reduction's divisor on the device, computed by one block: the CUDA twin of kernels/cpu/cb_cpu_loss.h's
// cb_index_local_divisor / cb_multi_hot_local_divisor / cb_finish_divisor (the formula: cbbench/shapes.py,
// local_divisor and finish_divisor).
//
// block_divisor: the block sums in float64 in an order fixed by the row count alone (fixed_order_sum), so
// the divisor is the same bits on every launch, in its own launch or inside any loss kernel. It writes the divisor and its reciprocal (the gradient scale the loss kernels read through
// grad_scale) in the loss dtype L. The work is O(rows) (O(rows + classes) for multi-hot "weighted_mean"):
// a few microseconds of one SM against the loss kernel's O(rows x classes); a multi-hot "mean" (the sum of
// the whole target) is summed by the caller and finished here (`local`).
//
// fused_divisor: the same block code run inside a loss kernel's launch (cb_kernels.h, FusedDivisor), so a
// "mean" / "weighted_mean" call launches the loss kernel and nothing else for its divisor. The block that
// draws the first ticket computes it -- it is running, so the blocks waiting on it cannot keep it from
// finishing, whatever the grid size -- publishes it behind a fence and a flag, and the last block through
// resets the words for the next launch. Callers place it before any early exit: every block of the grid
// must pass it.
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

// Every thread of the block calls it (blockDim.x a multiple of 32); thread 0 writes the outputs.
template <typename L>
__device__ void block_divisor(const DivisorArgs& a) {
  __shared__ double part[kDivisorLanes + 1];
  double d;
  if (a.local != nullptr) {
    d = *a.local;
  } else if (a.multi_hot) {
    // sum_i s_i (or the row count) times the mean column weight (1 without a weight)
    const float* s = a.sample_weight;
    const double rows = s != nullptr ? fixed_order_sum(a.rows, [&](int64_t i) { return double(s[i]); }, part)
                                     : double(a.rows);
    d = rows;
    if (a.weight != nullptr) {
      const float* w = a.weight;
      d = fixed_order_sum(a.classes, [&](int64_t j) { return double(w[j]); }, part) / double(a.classes) * rows;
    }
  } else {
    // class-index targets: the valid rows, or for a weighted divisor the sum of their s_i w_{y_i}; a
    // target out of range is clamped for the gather (its row's loss is NaN: the kernels' contract)
    d = fixed_order_sum(a.rows, [&](int64_t i) {
      const int64_t y = a.target[i];
      if (y == a.ignore_index) return 0.0;
      double w = 1.0;
      if (a.weighted) {
        if (a.weight != nullptr) w = double(a.weight[y < 0 ? 0 : (y >= a.classes ? a.classes - 1 : y)]);
        if (a.sample_weight != nullptr) w *= double(a.sample_weight[i]);
      }
      return w;
    }, part);
  }
  if (threadIdx.x == 0) {
    if (a.floor) d = finish_divisor(d, a.weighted);
    const L dv = L(d);
    if (a.divisor != nullptr) *static_cast<L*>(a.divisor) = dv;
    if (a.grad_scale != nullptr) *static_cast<L*>(a.grad_scale) = L(1) / dv;
  }
}

// A loss kernel's prologue, called by every thread of every block before any early exit. `wait`: this
// launch reads grad_scale (it writes a gradient); otherwise block 0 just computes the divisor.
template <typename L>
__device__ __forceinline__ void fused_divisor(const FusedDivisor& f, bool wait) {
  if (!f.on) return;
  if (!wait) {
    if (blockIdx.x == 0) block_divisor<L>(f.args);
    return;
  }
  __shared__ unsigned ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(&f.sync[0], 1u);
  __syncthreads();
  if (ticket == 0) {
    block_divisor<L>(f.args);
    if (threadIdx.x == 0) {
      __threadfence();  // the divisor and scale are visible before the flag
      atomicExch(&f.sync[1], 1u);
    }
  } else if (threadIdx.x == 0) {
    while (*reinterpret_cast<volatile unsigned*>(&f.sync[1]) == 0u) __nanosleep(64);
    __threadfence();  // ... and read after it
  }
  // The last block through resets the words: every block has drawn its ticket and passed the flag.
  if (threadIdx.x == 0 && atomicAdd(&f.sync[2], 1u) == gridDim.x * gridDim.y * gridDim.z - 1u) {
    atomicExch(&f.sync[0], 0u);
    atomicExch(&f.sync[1], 0u);
    atomicExch(&f.sync[2], 0u);
  }
  __syncthreads();  // the block's threads read grad_scale after thread 0 has seen the flag
}

}  // namespace cb

#endif  // CBBENCH_CB_DIVISOR_CUH_
