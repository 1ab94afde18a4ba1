// Torch binding of the cbbench CUDA kernels (module cbbench._cuda): input checks, the current CUDA
// stream, and the kernel contract of cbbench/ops/__init__.py -- the reduction included: the divisor is
// computed on the device before the rows (their gradients are written already divided by it, read by
// the kernels through grad_scale: no host synchronisation), and the row losses are summed after them
// (a fixed-order device reduction). Built only on machines with torch's CUDA build.
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <string>

#include "cb_kernels.h"

namespace {

using torch::Tensor;

cb::Dtype kernel_dtype(const Tensor& t, const char* fn) {
  switch (t.scalar_type()) {
    case at::kFloat: return cb::Dtype::f32;
    case at::kHalf: return cb::Dtype::f16;
    case at::kBFloat16: return cb::Dtype::bf16;
    case at::kDouble: return cb::Dtype::f64;
    default:
      TORCH_CHECK(false, fn, ": logits must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
  return cb::Dtype::f32;  // unreachable
}

at::ScalarType loss_type(const Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_logits(const Tensor& logits, const char* fn) {
  TORCH_CHECK(logits.is_cuda(), fn, ": logits must be a CUDA tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 2, fn, ": logits must be 2-D (rows, classes), got shape ", logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), fn, ": logits must be contiguous");
  TORCH_CHECK(logits.size(1) >= 1, fn, ": logits need at least one class, got shape ", logits.sizes());
  // Grids are one block per row at most (per row and chunk on the split/cluster paths, which only
  // large C takes, so those grids stay far below the limit for any tensor that fits in memory).
  TORCH_CHECK(logits.size(0) <= int64_t(0x7fffffff), fn, ": at most 2**31 - 1 rows, got ", logits.size(0));
}

void check_same_device(const Tensor& t, const Tensor& logits, const char* fn, const char* name) {
  TORCH_CHECK(t.device() == logits.device(), fn, ": ", name, " is on ", t.device(), " but logits are on ",
              logits.device());
}

void check_class_targets(const Tensor& target, const Tensor& logits, const char* fn) {
  check_same_device(target, logits, fn, "target");
  TORCH_CHECK(target.scalar_type() == at::kLong, fn, ": class-index target must be int64, got ",
              target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), fn, ": target must have shape (",
              logits.size(0), ",), got ", target.sizes());
  TORCH_CHECK(target.is_contiguous(), fn, ": target must be contiguous");
}

const float* class_vector(const std::optional<Tensor>& v, const Tensor& logits, const char* fn, const char* name) {
  if (!v.has_value()) return nullptr;
  const Tensor& t = *v;
  check_same_device(t, logits, fn, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, fn, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(1), fn, ": ", name, " must have shape (", logits.size(1),
              ",), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
  return t.data_ptr<float>();
}

enum class Reduction { none, sum, mean, weighted_mean };

Reduction parse_reduction(const std::string& r, const char* fn) {
  if (r == "mean") return Reduction::mean;
  if (r == "weighted_mean") return Reduction::weighted_mean;
  if (r == "sum") return Reduction::sum;
  TORCH_CHECK(r == "none", fn, ": reduction must be one of mean, weighted_mean, sum, none, got ", r);
  return Reduction::none;
}

// A divisor of exactly 0 (nothing to average, or weights summing to 0) becomes 1; a negative weight
// sum is kept (cbbench/reference.py, reduction_denominator).
Tensor nonzero_or_one(const Tensor& d) { return at::where(d != 0, d, at::ones_like(d)); }

// The divisor of class-index targets as a 0-dim float64 device tensor, undefined for sum/none.
Tensor index_divisor(const Tensor& target, const std::optional<Tensor>& weight, int64_t ignore_index,
                     Reduction red, int64_t classes) {
  if (red == Reduction::sum || red == Reduction::none) return Tensor();
  const Tensor valid = target.ne(ignore_index);
  if (red == Reduction::weighted_mean && weight.has_value()) {
    // clamped: neither ignore_index nor a bad target indexes out of bounds (a bad row is NaN anyway)
    const Tensor w = weight->index_select(0, target.clamp(0, classes - 1));
    return nonzero_or_one(at::where(valid, w, at::zeros_like(w)).sum(at::kDouble));
  }
  return valid.sum(at::kDouble).clamp_min(1.0);
}

// The divisor of multi-hot targets: the number of positives for "mean" (at least 1), rows times the
// mean column weight for "weighted_mean".
Tensor multi_hot_divisor(const Tensor& target, const std::optional<Tensor>& weight, Reduction red, int64_t rows) {
  if (red == Reduction::sum || red == Reduction::none) return Tensor();
  if (red == Reduction::mean) return target.sum(at::kDouble).clamp_min(1.0);
  const auto opts = target.options().dtype(at::kDouble);
  if (!weight.has_value()) return at::full({}, double(rows > 0 ? rows : 1), opts);
  return nonzero_or_one(weight->mean(at::kDouble) * double(rows));
}

struct Outputs {
  Tensor loss_rows;  // (rows,) loss dtype
  Tensor grad;       // (rows, classes) logits' dtype, or undefined
  Tensor divisor;    // 0-dim loss dtype, or undefined (sum / none)
  Tensor grad_scale; // its reciprocal, read by the kernels, or undefined (1)
};

Outputs make_outputs(const Tensor& logits, const Tensor& divisor64, bool need_grad) {
  Outputs o;
  o.loss_rows = at::empty({logits.size(0)}, logits.options().dtype(loss_type(logits)));
  if (need_grad) o.grad = at::empty_like(logits);
  if (divisor64.defined()) {
    o.divisor = divisor64.to(loss_type(logits));
    o.grad_scale = o.divisor.reciprocal();
  }
  return o;
}

// The fields both argument structs share: logits, gradient scale, outputs and shape (after the checks).
template <typename Args>
void set_common(Args& a, const Tensor& logits, const Outputs& o) {
  a.logits = logits.data_ptr();
  a.grad_scale = o.grad_scale.defined() ? o.grad_scale.data_ptr() : nullptr;
  a.loss_rows = o.loss_rows.data_ptr();
  a.grad = o.grad.defined() ? o.grad.data_ptr() : nullptr;
  a.rows = logits.size(0);
  a.classes = logits.size(1);
}

// (loss, grad): the row losses reduced (summed in a fixed order, divided by the divisor), and the
// gradient of that reduced loss (None without need_grad).
std::tuple<Tensor, std::optional<Tensor>> reduced(const Outputs& o, Reduction red) {
  std::optional<Tensor> grad;
  if (o.grad.defined()) grad = o.grad;
  if (red == Reduction::none) return {o.loss_rows, grad};
  Tensor total = o.loss_rows.sum();
  return {o.divisor.defined() ? total / o.divisor : total, grad};
}

std::tuple<Tensor, std::optional<Tensor>> softmax_ce(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& logit_offset, const std::optional<Tensor>& target_margin, double scale,
    double label_smoothing, int64_t ignore_index, const std::string& reduction, bool need_grad) {
  const char* fn = "cbbench._cuda.softmax_ce";
  check_logits(logits, fn);
  const cb::Dtype dtype = kernel_dtype(logits, fn);
  check_class_targets(target, logits, fn);
  const Reduction red = parse_reduction(reduction, fn);
  TORCH_CHECK(scale > 0, fn, ": scale must be > 0, got ", scale);
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1, fn, ": label_smoothing must be in [0, 1], got ",
              label_smoothing);

  const c10::cuda::CUDAGuard guard(logits.device());
  const int device = logits.get_device();
  cb::SoftmaxCeArgs a{};
  a.weight = class_vector(weight, logits, fn, "weight");
  a.logit_offset = class_vector(logit_offset, logits, fn, "logit_offset");
  a.target_margin = class_vector(target_margin, logits, fn, "target_margin");
  const Outputs o = make_outputs(logits, index_divisor(target, weight, ignore_index, red, logits.size(1)), need_grad);
  set_common(a, logits, o);
  a.target = target.data_ptr<int64_t>();
  a.scale = scale;
  a.label_smoothing = label_smoothing;
  a.ignore_index = ignore_index;
  // The split path's partials live in a workspace from the caching allocator (graph-capture safe).
  const std::size_t ws_bytes = cb::softmax_ce_workspace_bytes(a.rows, a.classes, dtype, device);
  Tensor workspace;
  if (ws_bytes > 0) {
    workspace = at::empty({int64_t(ws_bytes)}, logits.options().dtype(at::kByte));
    a.workspace = workspace.data_ptr();
  }
  C10_CUDA_CHECK(cb::softmax_ce(a, dtype, device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return reduced(o, red);
}

std::tuple<Tensor, std::optional<Tensor>> sigmoid_focal(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, double gamma, double alpha,
    int64_t ignore_index, bool focal, const std::string& reduction, bool need_grad) {
  const char* fn = "cbbench._cuda.sigmoid_focal";
  check_logits(logits, fn);
  const cb::Dtype dtype = kernel_dtype(logits, fn);
  const Reduction red = parse_reduction(reduction, fn);
  TORCH_CHECK(gamma >= 0, fn, ": gamma must be >= 0, got ", gamma);
  TORCH_CHECK(alpha <= 1, fn, ": alpha must be <= 1 (negative: no alpha), got ", alpha);

  cb::SigmoidFocalArgs a{};
  Tensor divisor;
  if (target.is_floating_point()) {
    check_same_device(target, logits, fn, "target");
    TORCH_CHECK(target.scalar_type() == logits.scalar_type(), fn,
                ": a multi-hot target must have the logits' dtype ", logits.scalar_type(), ", got ",
                target.scalar_type());
    TORCH_CHECK(target.sizes() == logits.sizes() && target.is_contiguous(), fn,
                ": a multi-hot target must be contiguous with the logits' shape ", logits.sizes(), ", got ",
                target.sizes());
    a.multi_hot_target = target.data_ptr();
  } else {
    check_class_targets(target, logits, fn);
    a.class_target = target.data_ptr<int64_t>();
  }
  const c10::cuda::CUDAGuard guard(logits.device());
  const int device = logits.get_device();
  a.weight = class_vector(weight, logits, fn, "weight");
  divisor = target.is_floating_point() ? multi_hot_divisor(target, weight, red, logits.size(0))
                                       : index_divisor(target, weight, ignore_index, red, logits.size(1));
  const Outputs o = make_outputs(logits, divisor, need_grad);
  set_common(a, logits, o);
  a.gamma = gamma;
  a.alpha = alpha;
  a.ignore_index = ignore_index;
  a.focal = focal;
  C10_CUDA_CHECK(cb::sigmoid_focal(a, dtype, device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return reduced(o, red);
}

// d loss / d logits = grad * grad_output for a reduced (0-dim) loss, computed IN PLACE in `grad` (the
// gradient forward computed, which backward hands over: cbbench/ops/autograd.py) and returned. The
// kernel reads grad_output on the device and does nothing when it is 1 (no host synchronisation, no
// extra pass over the gradient, where grad.mul_(grad_output) would always make one).
Tensor scaled_grad(Tensor grad, const Tensor& grad_output) {
  const char* fn = "cbbench._cuda.scaled_grad";
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous(), fn, ": grad must be a contiguous CUDA tensor");
  const cb::Dtype dtype = kernel_dtype(grad, fn);
  check_same_device(grad_output, grad, fn, "grad_output");
  TORCH_CHECK(grad_output.numel() == 1, fn, ": grad_output must have one element (a reduced loss), got shape ",
              grad_output.sizes());
  const at::ScalarType go_type = loss_type(grad);
  const Tensor go = grad_output.scalar_type() == go_type ? grad_output : grad_output.to(go_type);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int device = grad.get_device();
  C10_CUDA_CHECK(cb::scale_in_place(grad.data_ptr(), grad.numel(), dtype, go.data_ptr(), go_type == at::kDouble,
                                    device, c10::cuda::getCurrentCUDAStream(device).stream()));
  grad.unsafeGetTensorImpl()->bump_version();
  return grad;
}


std::string softmax_plan(int64_t classes, const Tensor& like) {
  TORCH_CHECK(like.is_cuda(), "cbbench._cuda.softmax_plan: `like` must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(like.device());  // the plan (and its cached queries) are per device
  char buf[64];
  const int device = like.get_device();
  // device queries (cached) are made on the stream a launch would use, never inside its capture
  cb::softmax_ce_plan(classes, kernel_dtype(like, "cbbench._cuda.softmax_plan"), device, buf, sizeof(buf),
                      c10::cuda::getCurrentCUDAStream(device).stream());
  return std::string(buf);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "cbbench fused CUDA kernels (see the kernel contract in cbbench/ops/__init__.py)";
  m.def("softmax_ce", &softmax_ce, "Fused softmax cross-entropy: (reduced loss, gradient of the reduced loss)",
        py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("logit_offset"), py::arg("target_margin"),
        py::arg("scale"), py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("reduction"),
        py::arg("need_grad"));
  m.def("sigmoid_focal", &sigmoid_focal,
        "Fused sigmoid cross-entropy / focal loss: (reduced loss, gradient of the reduced loss)",
        py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("gamma"), py::arg("alpha"),
        py::arg("ignore_index"), py::arg("focal"), py::arg("reduction"), py::arg("need_grad"));
  m.def("scaled_grad", &scaled_grad, "grad * grad_output in place (no work when grad_output == 1)",
        py::arg("grad"), py::arg("grad_output"));
  m.def("softmax_plan", &softmax_plan, "How softmax_ce lays out rows of `classes` elements of like's dtype",
        py::arg("classes"), py::arg("like"));
}
