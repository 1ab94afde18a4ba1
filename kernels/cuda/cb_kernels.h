// Torch-free host API of the cbbench CUDA kernels: plain pointers, shapes and a stream.
// Included by the .cu files (nvcc) and by the torch binding (host C++ compiler).
#ifndef CBBENCH_CB_KERNELS_H_
#define CBBENCH_CB_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace cb {

// Element type of logits / multi-hot targets / gradient. Losses and grad_scale are in the "loss
// dtype": float32, or float64 for f64 logits (the kernels' accumulation type); per-class vectors are
// always float32.
enum class Dtype { f32, f16, bf16, f64 };

inline std::size_t dtype_size(Dtype t) {
  return t == Dtype::f64 ? 8 : (t == Dtype::f32 ? 4 : 2);
}

struct SoftmaxCeArgs {
  const void* logits;          // (rows, classes), contiguous
  const int64_t* target;       // (rows,)
  const float* weight;         // (classes,) or nullptr
  const float* logit_offset;   // (classes,) or nullptr
  const float* target_margin;  // (classes,) or nullptr
  double scale;
  double label_smoothing;
  double gamma;                // > 0: the softmax focal loss (no label smoothing then)
  const float* alpha;          // (classes,) or nullptr: a per-class factor of the sample (softmax focal)
  const float* sample_weight;  // (rows,) or nullptr: each row's loss and gradient scaled by it
  int64_t ignore_index;
  const void* grad_scale;      // 0-dim, device, loss dtype, read by the kernels (no host sync); nullptr: 1
  void* loss_rows;             // (rows,) float32, float64 for f64 logits
  void* grad;                  // (rows, classes) in the logits' dtype, or nullptr (forward only)
  int64_t rows;
  int64_t classes;
  void* workspace;             // softmax_ce_workspace_bytes(...) bytes of device memory, or nullptr if 0
};

struct SigmoidFocalArgs {
  const void* logits;          // (rows, classes), contiguous
  const int64_t* class_target; // (rows,) class indices, or nullptr when multi_hot_target is set
  const void* multi_hot_target;  // (rows, classes) in the logits' dtype, or nullptr
  const float* weight;         // (classes,) or nullptr; per sample (class_target) or per column (multi-hot)
  double gamma;                // used when focal is true
  double alpha;                // < 0: no alpha factor
  const float* sample_weight;  // (rows,) or nullptr: each row's loss and gradient scaled by it
  int64_t ignore_index;        // class targets only
  bool focal;
  const void* grad_scale;      // as in SoftmaxCeArgs
  void* loss_rows;
  void* grad;
  int64_t rows;
  int64_t classes;
};

// How softmax_ce lays a row of `classes` elements on the current device (also names the path
// for tests and benchmarks): "group<G>x<NV>", "block<threads>x<NV>", "cluster<n>x<threads>",
// or "split<chunks>". Writes at most `len` bytes including the terminating NUL. The cluster path
// depends on device queries, made (and cached) on `stream` unless it is being captured into a CUDA
// graph (then, until an uncaptured call has made them, the answer and the launch are "split").
void softmax_ce_plan(int64_t classes, Dtype dtype, int device, char* out, std::size_t len,
                     cudaStream_t stream = nullptr);
// Device memory softmax_ce needs in args.workspace: the split path's partials whenever a row is too
// long for one block (the cluster path, when taken, does not use it). Makes no device query.
std::size_t softmax_ce_workspace_bytes(int64_t rows, int64_t classes, Dtype dtype, int device);

// Launch on `stream`; return the launch error (cudaSuccess when nothing had to run).
cudaError_t softmax_ce(const SoftmaxCeArgs& args, Dtype dtype, int device, cudaStream_t stream);
cudaError_t sigmoid_focal(const SigmoidFocalArgs& args, Dtype dtype, int device, cudaStream_t stream);

// grad[i] *= *grad_output, in place, skipped entirely (one tiny launch) when *grad_output == 1.
// grad_output is float (loss of f32/f16/bf16 logits) or double (f64 logits), on the device.
cudaError_t scale_in_place(void* grad, int64_t numel, Dtype dtype, const void* grad_output, bool grad_output_is_double,
                           int device, cudaStream_t stream);

}  // namespace cb

#endif  // CBBENCH_CB_KERNELS_H_
