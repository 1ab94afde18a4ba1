// The reduction's divisor on the device, in one launch: the CUDA twin of kernels/cpu/cb_cpu_loss.h's
// cb_index_local_divisor / cb_multi_hot_local_divisor / cb_finish_divisor (the formula:
// cbbench/shapes.py, local_divisor and finish_divisor).
//
// One block walks the rows in a fixed thread -> row mapping and reduces in a fixed tree (block_reduce),
// in float64, so the divisor is the same bits on every launch. It writes the divisor and its reciprocal
// (the gradient scale the loss kernels read through grad_scale) in the loss dtype, so a "mean" /
// "weighted_mean" loss call is this launch, the loss kernel and the final sum -- where the ATen form of
// the same divisor (gather, cast, multiply, where, sum, clamp, cast, reciprocal) took about nine.
// The work is O(rows) (O(rows + classes) for multi-hot "weighted_mean"), a few microseconds of one SM
// against the loss kernel's O(rows x classes); a multi-hot "mean" (the sum of the whole target) is
// summed by the caller and finished here (`local`).
#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cb {
namespace {

constexpr int kThreads = 256;

// The finished divisor of cb_finish_divisor: "mean" at least 1 (NaN stays NaN), a "weighted_mean" of
// exactly 0 becomes 1 (a negative one is kept).
__device__ __forceinline__ double finish(double d, bool weighted) {
  if (!weighted) return d < 1.0 ? 1.0 : d;
  return d != 0.0 ? d : 1.0;
}

template <typename L>
__global__ void __launch_bounds__(kThreads) divisor_kernel(DivisorArgs a) {
  __shared__ double scratch[33];
  double acc = 0.0;
  if (a.local != nullptr) {
    acc = threadIdx.x == 0 ? *a.local : 0.0;
  } else if (a.multi_hot) {
    // sum_i s_i (or the row count) times the mean column weight (1 without a weight)
    double rows = 0.0, columns = 0.0;
    for (int64_t i = threadIdx.x; i < a.rows; i += kThreads) rows += a.sample_weight ? double(a.sample_weight[i]) : 1.0;
    if (a.weight != nullptr) {
      for (int64_t j = threadIdx.x; j < a.classes; j += kThreads) columns += double(a.weight[j]);
    }
    rows = block_reduce(rows, SumOp(), 0.0, scratch);
    columns = block_reduce(columns, SumOp(), 0.0, scratch);
    acc = threadIdx.x == 0 ? (a.weight != nullptr ? columns / double(a.classes) * rows : rows) : 0.0;
  } else {
    // class-index targets: the valid rows, or for a weighted divisor the sum of their s_i w_{y_i}; a
    // target out of range is clamped for the gather (its row's loss is NaN: the kernels' contract)
    for (int64_t i = threadIdx.x; i < a.rows; i += kThreads) {
      const int64_t y = a.target[i];
      if (y == a.ignore_index) continue;
      double w = 1.0;
      if (a.weighted) {
        if (a.weight != nullptr) w = double(a.weight[y < 0 ? 0 : (y >= a.classes ? a.classes - 1 : y)]);
        if (a.sample_weight != nullptr) w *= double(a.sample_weight[i]);
      }
      acc += w;
    }
  }
  acc = block_reduce(acc, SumOp(), 0.0, scratch);
  if (threadIdx.x == 0) {
    const double d = a.floor ? finish(acc, a.weighted) : acc;
    const L dv = L(d);
    if (a.divisor != nullptr) *static_cast<L*>(a.divisor) = dv;
    if (a.grad_scale != nullptr) *static_cast<L*>(a.grad_scale) = L(1) / dv;
  }
}

}  // namespace

cudaError_t loss_divisor(const DivisorArgs& a, bool loss_is_double, cudaStream_t stream) {
  if (a.divisor == nullptr && a.grad_scale == nullptr) return cudaSuccess;
  if (a.local == nullptr && !a.multi_hot && a.rows > 0 && a.target == nullptr) return cudaErrorInvalidValue;
  if (loss_is_double) {
    divisor_kernel<double><<<1, kThreads, 0, stream>>>(a);
  } else {
    divisor_kernel<float><<<1, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace cb
