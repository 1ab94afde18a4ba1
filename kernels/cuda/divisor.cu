// The reduction's divisor in a launch of its own (the `loss_divisor` op, used by the fused heads and
// their plans): one block of block_divisor (cb_divisor.cuh), the code the loss kernels run inside their
// own launch (fused_divisor), so both give the same bits.
#include "cb_cuda.cuh"
#include "cb_divisor.cuh"
#include "cb_kernels.h"

namespace cb {
namespace {

constexpr int kThreads = 256;

template <typename L>
__global__ void __launch_bounds__(kThreads) divisor_kernel(DivisorArgs a) {
  block_divisor<L>(a);
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
