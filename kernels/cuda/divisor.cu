// The reduction's divisor in a launch of its own (the `loss_divisor` op, used by the fused heads and
// their plans): one block running fused_divisor (cb_divisor.cuh) -- it draws every chunk and finishes the
// divisor itself -- the code the loss kernels run inside their own launch, so both give the same bits.
#include "cb_cuda.cuh"
#include "cb_divisor.cuh"
#include "cb_kernels.h"

namespace cb {
namespace {

constexpr int kThreads = 256;

template <typename L>
__global__ void __launch_bounds__(kThreads) divisor_kernel(FusedDivisor f) {
  fused_divisor<L>(f, false);
}

}  // namespace

cudaError_t loss_divisor(const FusedDivisor& f, bool loss_is_double, cudaStream_t stream) {
  const DivisorArgs& a = f.args;
  if (a.divisor == nullptr && a.grad_scale == nullptr) return cudaSuccess;
  if (!f.on || f.partials == nullptr || f.sync == nullptr) return cudaErrorInvalidValue;
  if (!a.multi_hot && a.rows > 0 && a.target == nullptr) return cudaErrorInvalidValue;
  if (loss_is_double) {
    divisor_kernel<double><<<1, kThreads, 0, stream>>>(f);
  } else {
    divisor_kernel<float><<<1, kThreads, 0, stream>>>(f);
  }
  return cudaGetLastError();
}

}  // namespace cb
