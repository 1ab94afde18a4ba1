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

// The divisor of a "mean" / "weighted_mean" reduction and its reciprocal (the kernels' grad_scale),
// computed on the device (cb_divisor.cuh; the rules of kernels/cpu/cb_cpu_loss.h): inside a loss kernel's
// launch, or in a launch of its own (loss_divisor). Exactly one source: `positives` (a multi-hot target
// summed whole: the multi-hot "mean"), else `multi_hot` (sum_i s_i times the mean column weight), else the
// class-index `target`.
struct DivisorArgs {
  const int64_t* target;       // (rows,) class indices (class-index source)
  const float* weight;         // (classes,) or nullptr
  const float* sample_weight;  // (rows,) or nullptr
  const void* positives;       // (rows, classes) multi-hot target in positives_dtype, or nullptr
  Dtype positives_dtype;
  int64_t ignore_index;
  int64_t rows;
  int64_t classes;
  bool multi_hot;
  bool weighted;               // "weighted_mean" (else "mean"): the sum of the applied weights, and its floor rule
  bool floor;                  // finish the divisor ("mean" at least 1, a "weighted_mean" of 0 -> 1)
  void* divisor;               // 0-dim out in the loss dtype, or nullptr
  void* grad_scale;            // 0-dim out in the loss dtype (1 / divisor), or nullptr
};

// The divisor computed in a kernel's launch (on = true): in a loss kernel's, instead of a launch of its own,
// or alone in one block (loss_divisor). The rows are summed in `chunks` chunks of kDivisorChunkRows
// (divisor_chunks(args)), claimed by the blocks as they start, whose partials go to `partials` (chunks
// doubles of device memory, any content); the block that publishes the last one finishes the divisor, writes
// args.divisor / args.grad_scale and releases a flag, for which every block that writes a gradient waits
// (cb_divisor.cuh). `sync`: kDivisorSyncWords words of device memory, zero before the launch and zero again
// after it, used by one launch at a time (the binding keeps one set per device and stream).
// args.grad_scale must be the loss arguments' grad_scale (the kernels read it after the wait).
constexpr int64_t kDivisorChunkRows = 1024;  // items per chunk: rows, or target entries for `positives`
constexpr int kDivisorSyncWords = 4;
inline int64_t divisor_chunks(const DivisorArgs& a) {
  const int64_t items = a.positives != nullptr ? a.rows * a.classes : a.rows;
  return items <= kDivisorChunkRows ? 1 : (items + kDivisorChunkRows - 1) / kDivisorChunkRows;
}

struct FusedDivisor {
  bool on;
  DivisorArgs args;
  int64_t chunks;    // divisor_chunks(args)
  double* partials;  // (chunks,)
  unsigned* sync;    // (kDivisorSyncWords,)
};

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
  FusedDivisor fused;          // the reduction's divisor in this launch (writes grad_scale), or off
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
  FusedDivisor fused;          // as in SoftmaxCeArgs
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

// The divisor alone: one launch of one block (the `loss_divisor` op; the loss ops fuse it). f.on must be set.
cudaError_t loss_divisor(const FusedDivisor& f, bool loss_is_double, cudaStream_t stream);

// grad[i] *= *grad_output, in place, skipped entirely (one tiny launch) when *grad_output == 1.
// grad_output is float (loss of f32/f16/bf16 logits) or double (f64 logits), on the device.
cudaError_t scale_in_place(void* grad, int64_t numel, Dtype dtype, const void* grad_output, bool grad_output_is_double,
                           int device, cudaStream_t stream);

}  // namespace cb

#endif  // CBBENCH_CB_KERNELS_H_
