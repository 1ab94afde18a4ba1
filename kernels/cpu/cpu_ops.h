// The CPU kernels of the cbbench ops (schemas: kernels/ops/ops.cpp), registered for the CPU dispatch key.
// Included by the Cython module kernels/cpu/_cpu.pyx (cbbench._cpu), which is this header's only
// translation unit and supplies the row loops it calls: cbcpu_*_rows below are Cython `cdef public`
// functions (prange over chunks of rows, each chunk by the C++ row loop of cb_cpu_rows.h, the chunk sums
// added in order; float16/bfloat16 logits are read and their gradient written in their own dtype, computed
// in float32 inside the row loop). This header does the rest of a call: the internal checks, the divisor
// (cb_cpu_loss.h) before the rows -- so their gradients are written already divided -- the outputs, and
// the reduced loss.
#ifndef CBBENCH_CPU_OPS_H_
#define CBBENCH_CPU_OPS_H_

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "cb_cpu_loss.h"
#include "cb_cpu_rows.h"
#include "cb_ops.h"

// The Cython row loops (kernels/cpu/_cpu.pyx): the sum of the row losses; row losses into loss_rows (or
// NULL), g * d row loss / d z into grad (or NULL); chunk_sums holds cb_chunk_count(M, C) doubles. (Cython
// gives `cdef public` functions C++ linkage in a C++ module.)
double cbcpu_softmax_rows_f32(const float* z, const int64_t* y, int64_t M, int64_t C, const float* weight,
                              const float* offset, const float* margin, float scale, float eps, float gamma,
                              const float* alpha, const float* sample_weight, int64_t ignore_index, float g,
                              float* loss_rows, float* grad, int n_threads, double* chunk_sums);
double cbcpu_softmax_rows_f64(const double* z, const int64_t* y, int64_t M, int64_t C, const float* weight,
                              const float* offset, const float* margin, double scale, double eps, double gamma,
                              const float* alpha, const float* sample_weight, int64_t ignore_index, double g,
                              double* loss_rows, double* grad, int n_threads, double* chunk_sums);
double cbcpu_sigmoid_rows_f32(const float* z, const int64_t* y, const float* multi_hot, int64_t M, int64_t C,
                              const float* weight, float gamma, float alpha, int focal, const float* sample_weight,
                              int64_t ignore_index, float g, float* loss_rows, float* grad, int n_threads,
                              double* chunk_sums);
double cbcpu_softmax_rows_half(int kind, const uint16_t* z, const int64_t* y, int64_t M, int64_t C,
                               const float* weight, const float* offset, const float* margin, float scale, float eps,
                               float gamma, const float* alpha, const float* sample_weight, int64_t ignore_index,
                               float g, float* loss_rows, uint16_t* grad, int n_threads, double* chunk_sums);
double cbcpu_sigmoid_rows_half(int kind, const uint16_t* z, const int64_t* y, const float* multi_hot, int64_t M,
                               int64_t C, const float* weight, float gamma, float alpha, int focal,
                               const float* sample_weight, int64_t ignore_index, float g, float* loss_rows,
                               uint16_t* grad, int n_threads, double* chunk_sums);
double cbcpu_sigmoid_rows_f64(const double* z, const int64_t* y, const double* multi_hot, int64_t M, int64_t C,
                              const float* weight, double gamma, double alpha, int focal, const float* sample_weight,
                              int64_t ignore_index, double g, double* loss_rows, double* grad, int n_threads,
                              double* chunk_sums);

namespace cbcpu {

using at::Tensor;
using cbops::OptTensor;
using cbops::Reduction;
using Pair = std::tuple<Tensor, Tensor>;

inline const float* ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

// The logits the row kernels read, contiguous, in their own dtype: float16 / bfloat16 rows are widened to
// float32 a few at a time inside the row loops (cb_cpu_rows_impl.h), never as a float32 copy of the tensor.
inline Tensor compute_logits(const Tensor& logits) { return logits.contiguous(); }

inline bool is_half(const Tensor& z) { return z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16; }
inline int half_kind(const Tensor& z) { return z.scalar_type() == at::kBFloat16 ? CB_HALF_BF16 : CB_HALF_F16; }
// float16 / bfloat16 storage as the row loops see it
inline const uint16_t* half_ptr(const Tensor& t) { return static_cast<const uint16_t*>(t.const_data_ptr()); }
inline uint16_t* half_ptr_mut(const Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); }

inline void check_classes(const Tensor& z) {
  // a row is indexed with int (vector compares of j == y); M is int64
  TORCH_CHECK(z.size(1) < (int64_t(1) << 31), "cbbench CPU kernels: at most 2**31 - 1 classes, got ", z.size(1));
}

// The reduced loss (0-dim, loss dtype) or the rows, and the gradient in the logits' dtype ((0,) without one).
inline Pair finish(const Tensor& logits, const Tensor& loss_rows, Tensor grad, Reduction red, double total,
                   double divisor) {
  Tensor loss = red == Reduction::none
                    ? loss_rows
                    : at::scalar_tensor(total / divisor, logits.options().dtype(cbops::loss_dtype(logits.scalar_type())));
  if (!grad.defined()) return {loss, at::empty({0}, logits.options())};
  if (grad.scalar_type() != logits.scalar_type()) grad = grad.to(logits.scalar_type());
  return {loss, grad};
}

inline Pair softmax_cross_entropy(const Tensor& logits, const Tensor& target, const OptTensor& weight,
                                  const OptTensor& logit_offset, const OptTensor& target_margin, double scale,
                                  double label_smoothing, double gamma, const OptTensor& alpha,
                                  const OptTensor& sample_weight, int64_t ignore_index, c10::string_view reduction,
                                  bool need_grad) {
  const char* op = "cbbench::softmax_cross_entropy_fused";
  cbops::check_fused_args(op, logits, target, false,
                          {{"weight", &weight}, {"logit_offset", &logit_offset}, {"target_margin", &target_margin},
                           {"alpha", &alpha}});
  cbops::check_sample_weight(op, logits, sample_weight);
  TORCH_CHECK(gamma >= 0, op, ": gamma must be >= 0, got ", gamma);
  const Reduction red = cbops::parse_reduction(reduction);
  const Tensor z = compute_logits(logits);
  check_classes(z);
  const Tensor y = target.contiguous();
  const OptTensor w = cbops::float_vector(weight), off = cbops::float_vector(logit_offset),
                  mar = cbops::float_vector(target_margin), al = cbops::float_vector(alpha),
                  sw = cbops::float_vector(sample_weight);
  const int64_t M = z.size(0), C = z.size(1);
  const int64_t* yp = y.data_ptr<int64_t>();
  int64_t bad = -1;
  const double divisor = cb_finish_divisor(
      int(red), cb_index_local_divisor(yp, M, C, ptr(w), ptr(sw), ignore_index, int(red), &bad));
  TORCH_CHECK_VALUE(bad < 0, cbops::target_range_message(bad < 0 ? 0 : yp[bad], C, ignore_index));
  const Tensor loss_rows =
      red == Reduction::none ? at::empty({M}, z.options().dtype(cbops::loss_dtype(z.scalar_type()))) : Tensor();
  Tensor grad = need_grad ? at::empty_like(z) : Tensor();
  const int threads = cb_loss_threads(M, C, at::get_num_threads());
  std::vector<double> sums(size_t(cb_chunk_count(M, C)) + 1);
  double total = 0.0;
  if (is_half(z)) {
    total = cbcpu_softmax_rows_half(half_kind(z), half_ptr(z), yp, M, C, ptr(w), ptr(off), ptr(mar), float(scale),
                                    float(label_smoothing), float(gamma), ptr(al), ptr(sw), ignore_index,
                                    float(1.0 / divisor),
                                    loss_rows.defined() ? loss_rows.data_ptr<float>() : nullptr,
                                    grad.defined() ? half_ptr_mut(grad) : nullptr, threads, sums.data());
  } else if (z.scalar_type() == at::kFloat) {
    total = cbcpu_softmax_rows_f32(z.data_ptr<float>(), yp, M, C, ptr(w), ptr(off), ptr(mar), float(scale),
                                   float(label_smoothing), float(gamma), ptr(al), ptr(sw), ignore_index,
                                   float(1.0 / divisor),
                                   loss_rows.defined() ? loss_rows.data_ptr<float>() : nullptr,
                                   grad.defined() ? grad.data_ptr<float>() : nullptr, threads, sums.data());
  } else {
    total = cbcpu_softmax_rows_f64(z.data_ptr<double>(), yp, M, C, ptr(w), ptr(off), ptr(mar), scale, label_smoothing,
                                   gamma, ptr(al), ptr(sw), ignore_index, 1.0 / divisor,
                                   loss_rows.defined() ? loss_rows.data_ptr<double>() : nullptr,
                                   grad.defined() ? grad.data_ptr<double>() : nullptr, threads, sums.data());
  }
  return finish(logits, loss_rows, grad, red, total, divisor);
}

inline Pair sigmoid_focal(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma,
                          double alpha, const OptTensor& sample_weight, int64_t ignore_index, bool focal,
                          c10::string_view reduction, bool need_grad) {
  const char* op = "cbbench::sigmoid_focal_fused";
  cbops::check_fused_args(op, logits, target, true, {{"weight", &weight}});
  cbops::check_sample_weight(op, logits, sample_weight);
  TORCH_CHECK(gamma >= 0, op, ": gamma must be >= 0, got ", gamma);
  const Reduction red = cbops::parse_reduction(reduction);
  const Tensor z = compute_logits(logits);
  check_classes(z);
  const OptTensor w = cbops::float_vector(weight), sw = cbops::float_vector(sample_weight);
  const int64_t M = z.size(0), C = z.size(1);
  const bool multi_hot = target.is_floating_point();
  // multi-hot targets in the compute dtype (float32 for half logits)
  const Tensor t = multi_hot ? target.to(z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous()
                             : target.contiguous();
  double local = 1.0;
  const int64_t* yp = multi_hot ? nullptr : t.data_ptr<int64_t>();
  if (multi_hot) {
    local = t.scalar_type() == at::kFloat
                ? cb_multi_hot_local_divisor(t.data_ptr<float>(), M, C, ptr(w), ptr(sw), int(red))
                : cb_multi_hot_local_divisor(t.data_ptr<double>(), M, C, ptr(w), ptr(sw), int(red));
  } else {
    int64_t bad = -1;
    local = cb_index_local_divisor(yp, M, C, ptr(w), ptr(sw), ignore_index, int(red), &bad);
    TORCH_CHECK_VALUE(bad < 0, cbops::target_range_message(bad < 0 ? 0 : yp[bad], C, ignore_index));
  }
  const double divisor = cb_finish_divisor(int(red), local);
  const Tensor loss_rows =
      red == Reduction::none ? at::empty({M}, z.options().dtype(cbops::loss_dtype(z.scalar_type()))) : Tensor();
  Tensor grad = need_grad ? at::empty_like(z) : Tensor();
  const int threads = cb_loss_threads(M, C, at::get_num_threads());
  std::vector<double> sums(size_t(cb_chunk_count(M, C)) + 1);
  double total = 0.0;
  if (is_half(z)) {
    total = cbcpu_sigmoid_rows_half(half_kind(z), half_ptr(z), yp, multi_hot ? t.data_ptr<float>() : nullptr, M, C,
                                    ptr(w), float(gamma), float(alpha), focal, ptr(sw), ignore_index,
                                    float(1.0 / divisor), loss_rows.defined() ? loss_rows.data_ptr<float>() : nullptr,
                                    grad.defined() ? half_ptr_mut(grad) : nullptr, threads, sums.data());
  } else if (z.scalar_type() == at::kFloat) {
    total = cbcpu_sigmoid_rows_f32(z.data_ptr<float>(), yp, multi_hot ? t.data_ptr<float>() : nullptr, M, C, ptr(w),
                                   float(gamma), float(alpha), focal, ptr(sw), ignore_index, float(1.0 / divisor),
                                   loss_rows.defined() ? loss_rows.data_ptr<float>() : nullptr,
                                   grad.defined() ? grad.data_ptr<float>() : nullptr, threads, sums.data());
  } else {
    total = cbcpu_sigmoid_rows_f64(z.data_ptr<double>(), yp, multi_hot ? t.data_ptr<double>() : nullptr, M, C,
                                   ptr(w), gamma, alpha, focal, ptr(sw), ignore_index, 1.0 / divisor,
                                   loss_rows.defined() ? loss_rows.data_ptr<double>() : nullptr,
                                   grad.defined() ? grad.data_ptr<double>() : nullptr, threads, sums.data());
  }
  return finish(logits, loss_rows, grad, red, total, divisor);
}

inline Tensor loss_divisor(const Tensor& target, const OptTensor& weight, const OptTensor& sample_weight,
                           int64_t num_classes, int64_t ignore_index, c10::string_view reduction, bool floor) {
  const Reduction red = cbops::parse_reduction(reduction);
  const OptTensor w = cbops::float_vector(weight), sw = cbops::float_vector(sample_weight);
  cbops::check_divisor_args(target, w, sw, num_classes);
  double local = 1.0;
  if (target.is_floating_point()) {
    const Tensor t = target.to(at::kDouble).contiguous();
    local = cb_multi_hot_local_divisor(t.data_ptr<double>(), t.size(0), num_classes, ptr(w), ptr(sw), int(red));
  } else {
    const Tensor y = target.contiguous();
    const int64_t* yp = y.data_ptr<int64_t>();
    int64_t bad = -1;
    local = cb_index_local_divisor(yp, y.numel(), num_classes, ptr(w), ptr(sw), ignore_index, int(red), &bad);
    TORCH_CHECK_VALUE(bad < 0, cbops::target_range_message(bad < 0 ? 0 : yp[bad], num_classes, ignore_index));
  }
  return at::scalar_tensor(floor ? cb_finish_divisor(int(red), local) : local, target.options().dtype(at::kDouble));
}

// grad *= grad_output: grad_output is read on the host (a CPU tensor), and 1 costs nothing.
inline void scale_grad_(Tensor& grad, const Tensor& grad_output) {
  TORCH_CHECK(grad_output.numel() == 1, "cbbench::scale_grad_: grad_output must have one element, got shape ",
              grad_output.sizes());
  const auto t = grad_output.scalar_type();
  const double go = t == at::kFloat    ? double(*grad_output.const_data_ptr<float>())
                    : t == at::kDouble ? *grad_output.const_data_ptr<double>()
                                       : grad_output.item<double>();
  if (go != 1.0) grad.mul_(grad_output);
}

}  // namespace cbcpu

TORCH_LIBRARY_IMPL(cbbench, CPU, m) {
  m.impl("softmax_cross_entropy_fused", &cbcpu::softmax_cross_entropy);
  m.impl("sigmoid_focal_fused", &cbcpu::sigmoid_focal);
  m.impl("loss_divisor", &cbcpu::loss_divisor);
  m.impl("scale_grad_", &cbcpu::scale_grad_);
}

#endif  // CBBENCH_CPU_OPS_H_
