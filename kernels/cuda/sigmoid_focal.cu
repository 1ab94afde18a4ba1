// Fused sigmoid cross-entropy / sigmoid focal loss (class-index or multi-hot targets): loss and gradient
// in one pass over the logits.
//
// Unlike softmax, every gradient entry depends only on its own logit (and the row's class weight), so
// each element is loaded, turned into its loss term and gradient, and the gradient stored right away:
// the logits are read once and the gradient written once at any C without holding the row. Only the
// per-row loss needs a reduction (fixed-order shuffle / shared-memory tree: deterministic). With a.fused on,
// the launch also computes the reduction's divisor and grad_scale (cb_divisor.cuh).
//   * C up to 4096 fp32 (1024 vectors): G = 4..32 lanes of a warp per row, picked so a lane handles at
//     most ~4 vectors per row when C is small, several rows per 128-thread block;
//   * larger C: a 256-thread block per row.
// The scalar math (stable BCE, log-space focal modulator and its derivative, alpha_t) is cb_math.h, the
// same source as the CPU kernels; a thread's loop over its elements is cb_sigmoid_rows.cuh (tested on
// the host by kernels/cuda/harness/device_math_check.cu). The transcendental cost per element (exp, log1p, one more exp for
// the modulator) is what makes focal the compute-heaviest of the three losses.
#include "cb_cuda.cuh"
#include "cb_divisor.cuh"
#include "cb_kernels.h"
#include "cb_sigmoid_rows.cuh"

namespace cb {
namespace {

using namespace sigmoid;  // the per-thread / per-row logic (cb_sigmoid_rows.cuh)

template <typename T, int G, bool MULTI_HOT>
__global__ void __launch_bounds__(kGroupBlock) sigmoid_group_kernel(SigmoidFocalArgs a) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  fused_divisor<A>(a.fused, a.grad != nullptr);  // before any exit (cb_divisor.cuh)
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
  fused_divisor<A>(a.fused, a.grad != nullptr);  // before any exit (cb_divisor.cuh)
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
