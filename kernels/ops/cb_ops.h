// What every registration of the cbbench ops shares: the schemas' argument conventions, the loss dtype,
// the reduction codes, the one message for an out-of-range target, and the invariants a device kernel
// checks before it touches memory. Header-only: included by the op library (kernels/ops/ops.cpp,
// cbbench._C), the CPU kernels (kernels/cpu/cpu_ops.h, compiled into the Cython module cbbench._cpu)
// and the CUDA kernels (kernels/cuda/binding.cpp, cbbench._cuda). Public torch C++ API only.
//
// The public errors a user meets (TypeError / ValueError naming the argument) are raised by
// cbbench/functional.py before any op runs; the checks here keep a direct `torch.ops.cbbench.*` call
// from reading out of bounds, and say which invariant failed.
#ifndef CBBENCH_CB_OPS_H_
#define CBBENCH_CB_OPS_H_

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

namespace cbops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Reduction codes: the values of CB_RED_* in kernels/cpu/cb_cpu_loss.h and of cb::Reduction in
// kernels/cuda/cb_kernels.h.
enum class Reduction : int { none = 0, sum = 1, mean = 2, weighted_mean = 3 };

inline Reduction parse_reduction(std::string_view r) {
  if (r == "mean") return Reduction::mean;
  if (r == "weighted_mean") return Reduction::weighted_mean;
  if (r == "sum") return Reduction::sum;
  TORCH_CHECK_VALUE(r == "none", "reduction must be one of ('mean', 'weighted_mean', 'sum', 'none'), got '",
                    std::string(r), "'");
  return Reduction::none;
}

// The loss (and the divisor's reciprocal the kernels scale by) is float32, float64 for float64 logits.
inline at::ScalarType loss_dtype(at::ScalarType logits) {
  return logits == at::kDouble ? at::kDouble : at::kFloat;
}

// The one wording of an out-of-range class target (cbbench/functional.py prefixes the function's name).
inline std::string target_range_message(int64_t value, int64_t classes, int64_t ignore_index) {
  std::ostringstream s;
  s << "target value " << value << " is out of range for " << classes << " classes (valid: 0.." << classes - 1
    << " or ignore_index=" << ignore_index << ")";
  return s.str();
}

// Invariants of a fused op's arguments (the schemas in kernels/ops/ops.cpp): (M, C) floating-point logits
// with C >= 1; class-index targets int64 (M,), or -- sigmoid family only -- a floating-point multi-hot
// target of the logits' shape; per-class vectors real (C,); everything on the logits' device.
inline void check_fused_args(const char* op, const Tensor& logits, const Tensor& target, bool multi_hot_ok,
                             std::initializer_list<std::pair<const char*, const OptTensor*>> vectors) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be (rows, classes), got shape ", logits.sizes());
  const auto t = logits.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
                   ": logits must be float32, float64, float16 or bfloat16, got ", t);
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits need at least one class, got shape ", logits.sizes());
  TORCH_CHECK(target.device() == logits.device(), op, ": target is on ", target.device(), " but logits are on ",
              logits.device());
  if (target.is_floating_point()) {
    TORCH_CHECK(multi_hot_ok, op, ": class targets must be int64, got ", target.scalar_type());
    TORCH_CHECK(target.sizes() == logits.sizes(), op, ": a multi-hot target must have the logits' shape ",
                logits.sizes(), ", got ", target.sizes());
  } else {
    TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, op, ": class targets must be int64, got ",
                     target.scalar_type());
    TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op, ": target must have shape (",
                logits.size(0), ",), got ", target.sizes());
  }
  for (const auto& [name, v] : vectors) {
    if (!v->has_value()) continue;
    const Tensor& x = **v;
    TORCH_CHECK(x.device() == logits.device(), op, ": ", name, " is on ", x.device(), " but logits are on ",
                logits.device());
    TORCH_CHECK_TYPE(x.is_floating_point(), op, ": ", name, " must be floating point, got ", x.scalar_type());
    TORCH_CHECK(x.dim() == 1 && x.size(0) == logits.size(1), op, ": ", name, " must have shape (", logits.size(1),
                ",), got ", x.sizes());
  }
}

// A per-sample weight: real (rows,) on the logits' device, or nullopt.
inline void check_sample_weight(const char* op, const Tensor& logits, const OptTensor& sample_weight) {
  if (!sample_weight.has_value()) return;
  const Tensor& s = *sample_weight;
  TORCH_CHECK(s.device() == logits.device(), op, ": sample_weight is on ", s.device(), " but logits are on ",
              logits.device());
  TORCH_CHECK_TYPE(s.is_floating_point(), op, ": sample_weight must be floating point, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 1 && s.size(0) == logits.size(0), op, ": sample_weight must have shape (", logits.size(0),
              ",), got ", s.sizes());
}

// The arguments of cbbench::loss_divisor, checked alike on every device (w, sw: after float_vector): class
// targets int64, a multi-hot target (rows, num_classes), the weights' devices and lengths.
inline void check_divisor_args(const Tensor& target, const OptTensor& w, const OptTensor& sw, int64_t num_classes) {
  const int64_t rows = target.dim() > 0 ? target.size(0) : 0;
  for (const OptTensor* v : {&w, &sw}) {
    TORCH_CHECK(!v->has_value() || (*v)->device() == target.device(), "cbbench::loss_divisor: ",
                v == &w ? "weight" : "sample_weight", " is on ", (*v)->device(), " but target is on ", target.device());
  }
  TORCH_CHECK(!sw.has_value() || sw->numel() == rows, "cbbench::loss_divisor: sample_weight must have ", rows,
              " elements, got ", sw.has_value() ? sw->numel() : 0);
  TORCH_CHECK(!w.has_value() || w->numel() == num_classes, "cbbench::loss_divisor: weight must have ", num_classes,
              " elements, got ", w.has_value() ? w->numel() : 0);
  if (target.is_floating_point()) {
    TORCH_CHECK(target.dim() == 2 && target.size(1) == num_classes, "cbbench::loss_divisor: a multi-hot target "
                "must be (rows, ", num_classes, "), got ", target.sizes());
  } else {
    TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "cbbench::loss_divisor: class targets must be int64, got ",
                     target.scalar_type());
  }
}

// A per-class vector (or per-sample weight) as the kernels read it: float32, contiguous (or nullopt).
inline OptTensor float_vector(const OptTensor& v) {
  if (!v.has_value()) return v;
  if (v->scalar_type() == at::kFloat && v->is_contiguous()) return v;
  return v->to(at::kFloat).contiguous();
}

}  // namespace cbops

#endif  // CBBENCH_CB_OPS_H_
