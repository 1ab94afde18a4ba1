// In-place rescaling of a saved gradient by the incoming grad_output, read on the device.
//
// The forward kernels already wrote d(reduced loss)/d logits, so backward only has to multiply by
// grad_output, and in the common case (loss.backward(), grad_output == 1) not even that. The value is
// only known on the device; reading it there and returning early keeps backward free of host
// synchronisation and of a full read + write of the gradient. A small grid-stride launch keeps the
// early-exit case to a few microseconds.
#include "cb_cuda.cuh"
#include "cb_kernels.h"

namespace cb {
namespace {

constexpr int kThreads = 256;

// In place: grad is read and written through the same (non-restrict) pointer with plain loads, not the
// read-only (ld.global.nc) path of load_vec, which is only valid for memory no thread writes.
template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(T* grad, int64_t numel,
                                                         const acc_t<T>* __restrict__ grad_output) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  const A s = *grad_output;
  if (s == A(1)) return;
  const bool aligned = aligned16(grad);
  const int64_t stride = int64_t(gridDim.x) * kThreads * V;
  for (int64_t j = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * V; j < numel; j += stride) {
    if (aligned && j + V <= numel) {
      uint4 raw = *reinterpret_cast<const uint4*>(grad + j);
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int v = 0; v < V; ++v) e[v] = from_acc<T>(to_acc(e[v]) * s);
      *reinterpret_cast<uint4*>(grad + j) = raw;
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (j + v < numel) grad[j + v] = from_acc<T>(to_acc(grad[j + v]) * s);
      }
    }
  }
}

template <typename T>
cudaError_t launch(void* grad, int64_t numel, const void* grad_output, int device, cudaStream_t stream) {
  constexpr int V = Vec<T>::size;
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) sms = 80;
  const int64_t needed = (numel + int64_t(kThreads) * V - 1) / (int64_t(kThreads) * V);
  const int64_t cap = int64_t(sms) * 4;
  const unsigned blocks = unsigned(needed < cap ? needed : cap);
  scale_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<T*>(grad), numel,
                                                   static_cast<const acc_t<T>*>(grad_output));
  return cudaGetLastError();
}

}  // namespace

cudaError_t scale_in_place(void* grad, int64_t numel, Dtype dtype, const void* grad_output, bool grad_output_is_double,
                           int device, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  if (grad_output_is_double != (dtype == Dtype::f64)) return cudaErrorInvalidValue;
  switch (dtype) {
    case Dtype::f32: return launch<float>(grad, numel, grad_output, device, stream);
    case Dtype::f16: return launch<__half>(grad, numel, grad_output, device, stream);
    case Dtype::bf16: return launch<__nv_bfloat16>(grad, numel, grad_output, device, stream);
    case Dtype::f64: return launch<double>(grad, numel, grad_output, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cb
