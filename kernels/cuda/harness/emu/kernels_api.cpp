// C entry points to the project's CUDA launchers (kernels/cuda/cb_kernels.h), run by the emulator:
// the Python check (check_kernels.py) fills the argument structs through these with ctypes. Compiled
// like a kernel source (with cuda_emu.h), so the kernels' plan helpers are callable too. Dtype codes are
// cb::Dtype's: 0 f32, 1 f16, 2 bf16, 3 f64. Each call makes `device` the current device first.
#include <cstdio>

#include "cb_kernels.h"
#include "cb_sigmoid_rows.cuh"

namespace {
// The divisor computed in a kernel's launch (cb_kernels.h, FusedDivisor): fused 0 = off, 1 = "mean", 2 =
// "weighted_mean"; it writes `divisor` and the call's grad_scale, with `partials` (cbk_divisor_chunks
// doubles) and `sync` (kDivisorSyncWords zeroed words). `positives` (dtype code `positives_dtype`): a
// multi-hot "mean"'s target, summed whole.
cb::FusedDivisor fused_divisor(int fused, const int64_t* target, const float* weight, const float* sample_weight,
                               const void* positives, int positives_dtype, int64_t ignore_index, int64_t rows,
                               int64_t classes, bool multi_hot, int floor, void* divisor, const void* grad_scale,
                               double* partials, unsigned* sync) {
  cb::FusedDivisor f{};
  if (fused == 0) return f;
  f.on = true;
  f.args = cb::DivisorArgs{target, weight,     sample_weight, positives, cb::Dtype(positives_dtype),
                           ignore_index, rows, classes,       multi_hot, fused == 2,
                           floor != 0,   divisor, const_cast<void*>(grad_scale)};
  f.chunks = cb::divisor_chunks(f.args);
  f.partials = partials;
  f.sync = sync;
  return f;
}
}  // namespace

extern "C" {

int cbk_softmax_ce(int device, void* stream, int dtype, const void* logits, const int64_t* target, const float* weight,
                   const float* logit_offset, const float* target_margin, double scale, double label_smoothing,
                   double gamma, const float* alpha, const float* sample_weight, int64_t ignore_index,
                   const void* grad_scale, void* loss_rows, void* grad, int64_t rows, int64_t classes,
                   void* workspace, int fused, void* divisor, double* partials, unsigned* sync) {
  cbemu_set_current_device(device);
  cb::SoftmaxCeArgs a{logits,       target,     weight,    logit_offset, target_margin, scale,   label_smoothing,
                      gamma,        alpha,      sample_weight, ignore_index, grad_scale, loss_rows, grad,
                      rows,         classes,    workspace};
  a.fused = fused_divisor(fused, target, weight, sample_weight, nullptr, 0, ignore_index, rows, classes, false, 1,
                          divisor, grad_scale, partials, sync);
  return int(cb::softmax_ce(a, cb::Dtype(dtype), device, static_cast<cudaStream_t>(stream)));
}

std::size_t cbk_softmax_ce_workspace_bytes(int64_t rows, int64_t classes, int dtype, int device) {
  return cb::softmax_ce_workspace_bytes(rows, classes, cb::Dtype(dtype), device);
}

void cbk_softmax_ce_plan(int64_t classes, int dtype, int device, void* stream, char* out, std::size_t len) {
  cbemu_set_current_device(device);
  cb::softmax_ce_plan(classes, cb::Dtype(dtype), device, out, len, static_cast<cudaStream_t>(stream));
}

int cbk_sigmoid_focal(int device, void* stream, int dtype, const void* logits, const int64_t* class_target,
                      const void* multi_hot_target, const float* weight, double gamma, double alpha,
                      const float* sample_weight, int64_t ignore_index, int focal, const void* grad_scale,
                      void* loss_rows, void* grad, int64_t rows, int64_t classes, int fused, void* divisor,
                      double* partials, unsigned* sync) {
  cbemu_set_current_device(device);
  cb::SigmoidFocalArgs a{logits, class_target, multi_hot_target, weight, gamma, alpha, sample_weight, ignore_index,
                         focal != 0, grad_scale, loss_rows, grad, rows, classes};
  // a multi-hot "mean" sums its target (in the logits' dtype) for the divisor
  const void* positives = (multi_hot_target != nullptr && fused == 1) ? multi_hot_target : nullptr;
  a.fused = fused_divisor(fused, class_target, weight, sample_weight, positives, dtype, ignore_index, rows, classes,
                          multi_hot_target != nullptr, 1, divisor, grad_scale, partials, sync);
  return int(cb::sigmoid_focal(a, cb::Dtype(dtype), device, static_cast<cudaStream_t>(stream)));
}

// The sigmoid / focal kernels' layout of a row of `classes` elements: "group<G>" or "block<threads>".
void cbk_sigmoid_focal_plan(int64_t classes, int dtype, char* out, std::size_t len) {
  int g = 0;
  switch (cb::Dtype(dtype)) {
    case cb::Dtype::f32: g = cb::sigmoid::lanes_per_row<float>(classes); break;
    case cb::Dtype::f16: g = cb::sigmoid::lanes_per_row<__half>(classes); break;
    case cb::Dtype::bf16: g = cb::sigmoid::lanes_per_row<__nv_bfloat16>(classes); break;
    case cb::Dtype::f64: g = cb::sigmoid::lanes_per_row<double>(classes); break;
  }
  if (g > 0) std::snprintf(out, len, "group%d", g);
  else std::snprintf(out, len, "block%d", cb::sigmoid::kRowBlock);
}

int cbk_loss_divisor(int device, void* stream, const int64_t* target, const float* weight, const float* sample_weight,
                     const void* positives, int positives_dtype, int64_t ignore_index, int64_t rows, int64_t classes,
                     int multi_hot, int weighted, int floor, void* divisor, void* grad_scale, int loss_is_double,
                     double* partials, unsigned* sync) {
  cbemu_set_current_device(device);
  const cb::FusedDivisor f = fused_divisor(weighted != 0 ? 2 : 1, target, weight, sample_weight, positives,
                                           positives_dtype, ignore_index, rows, classes, multi_hot != 0, floor,
                                           divisor, grad_scale, partials, sync);
  return int(cb::loss_divisor(f, loss_is_double != 0, static_cast<cudaStream_t>(stream)));
}

// How many partials the divisor of `items` rows (target entries for a multi-hot "mean") has.
int64_t cbk_divisor_chunks(int64_t items) {
  cb::DivisorArgs a{};
  a.rows = items;
  return cb::divisor_chunks(a);
}

int cbk_scale_in_place(int device, void* stream, int dtype, void* grad, int64_t numel, const void* grad_output,
                       int grad_output_is_double) {
  cbemu_set_current_device(device);
  return int(cb::scale_in_place(grad, numel, cb::Dtype(dtype), grad_output, grad_output_is_double != 0, device,
                                static_cast<cudaStream_t>(stream)));
}

}  // extern "C"
