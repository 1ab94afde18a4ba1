// Torch binding of the cbbench CUDA kernels (module cbbench._cuda): input checks, the current CUDA
// stream, and the kernel contract of cbbench/ops.py. Built only on machines with torch's CUDA build.
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

// grad_scale: None (1) or a one-element tensor of the loss dtype on the logits' device.
const void* grad_scale_ptr(const std::optional<Tensor>& grad_scale, const Tensor& logits, const char* fn) {
  if (!grad_scale.has_value()) return nullptr;
  const Tensor& g = *grad_scale;
  check_same_device(g, logits, fn, "grad_scale");
  TORCH_CHECK(g.scalar_type() == loss_type(logits) && g.numel() == 1, fn, ": grad_scale must be a one-element ",
              loss_type(logits), " tensor for ", logits.scalar_type(), " logits, got ", g.scalar_type(),
              " of shape ", g.sizes());
  return g.data_ptr();
}

void check_outputs(const Tensor& logits, const Tensor& loss_rows, const std::optional<Tensor>& grad,
                   const char* fn) {
  check_same_device(loss_rows, logits, fn, "loss_rows");
  TORCH_CHECK(loss_rows.scalar_type() == loss_type(logits), fn, ": loss_rows must be ", loss_type(logits),
              " for ", logits.scalar_type(), " logits, got ", loss_rows.scalar_type());
  TORCH_CHECK(loss_rows.dim() == 1 && loss_rows.size(0) == logits.size(0) && loss_rows.is_contiguous(), fn,
              ": loss_rows must be a contiguous (", logits.size(0), ",) tensor, got ", loss_rows.sizes());
  if (grad.has_value()) {
    check_same_device(*grad, logits, fn, "grad");
    TORCH_CHECK(grad->scalar_type() == logits.scalar_type(), fn, ": grad must have the logits' dtype ",
                logits.scalar_type(), ", got ", grad->scalar_type());
    TORCH_CHECK(grad->sizes() == logits.sizes() && grad->is_contiguous(), fn,
                ": grad must be contiguous with the logits' shape ", logits.sizes(), ", got ", grad->sizes());
  }
}

// The fields both argument structs share: logits, gradient scale, outputs and shape (after the checks).
template <typename Args>
void set_common(Args& a, const Tensor& logits, const std::optional<Tensor>& grad_scale, const Tensor& loss_rows,
                const std::optional<Tensor>& grad, const char* fn) {
  a.logits = logits.data_ptr();
  a.grad_scale = grad_scale_ptr(grad_scale, logits, fn);
  a.loss_rows = loss_rows.data_ptr();
  a.grad = grad.has_value() ? grad->data_ptr() : nullptr;
  a.rows = logits.size(0);
  a.classes = logits.size(1);
}

void softmax_ce_fwd(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                    const std::optional<Tensor>& logit_offset, const std::optional<Tensor>& target_margin, double scale,
                    double label_smoothing, int64_t ignore_index, const std::optional<Tensor>& grad_scale,
                    const Tensor& loss_rows, const std::optional<Tensor>& grad) {
  const char* fn = "cbbench._cuda.softmax_ce_fwd";
  check_logits(logits, fn);
  const cb::Dtype dtype = kernel_dtype(logits, fn);
  check_class_targets(target, logits, fn);
  check_outputs(logits, loss_rows, grad, fn);
  TORCH_CHECK(scale > 0, fn, ": scale must be > 0, got ", scale);
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1, fn, ": label_smoothing must be in [0, 1], got ",
              label_smoothing);

  const c10::cuda::CUDAGuard guard(logits.device());
  const int device = logits.get_device();
  cb::SoftmaxCeArgs a{};
  set_common(a, logits, grad_scale, loss_rows, grad, fn);
  a.target = target.data_ptr<int64_t>();
  a.weight = class_vector(weight, logits, fn, "weight");
  a.logit_offset = class_vector(logit_offset, logits, fn, "logit_offset");
  a.target_margin = class_vector(target_margin, logits, fn, "target_margin");
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
}

void sigmoid_focal_fwd(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, double gamma,
                       double alpha, int64_t ignore_index, bool focal, const std::optional<Tensor>& grad_scale,
                       const Tensor& loss_rows, const std::optional<Tensor>& grad) {
  const char* fn = "cbbench._cuda.sigmoid_focal_fwd";
  check_logits(logits, fn);
  const cb::Dtype dtype = kernel_dtype(logits, fn);
  check_outputs(logits, loss_rows, grad, fn);
  TORCH_CHECK(gamma >= 0, fn, ": gamma must be >= 0, got ", gamma);
  TORCH_CHECK(alpha <= 1, fn, ": alpha must be <= 1 (negative: no alpha), got ", alpha);

  cb::SigmoidFocalArgs a{};
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
  set_common(a, logits, grad_scale, loss_rows, grad, fn);
  a.weight = class_vector(weight, logits, fn, "weight");
  a.gamma = gamma;
  a.alpha = alpha;
  a.ignore_index = ignore_index;
  a.focal = focal;
  C10_CUDA_CHECK(cb::sigmoid_focal(a, dtype, device, c10::cuda::getCurrentCUDAStream(device).stream()));
}

// d loss / d logits = grad * grad_output for a reduced (0-dim) loss, computed IN PLACE in `grad` (the
// gradient saved by forward) and returned. The kernel reads grad_output on the device and does nothing
// when it is 1 (no host synchronisation, no extra pass over the gradient). Because the saved tensor is
// overwritten, its autograd version counter is bumped: a second backward through the same graph
// (retain_graph=True) then fails with PyTorch's standard "modified by an inplace operation" error
// instead of silently using an already-scaled gradient.
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
  cb::softmax_ce_plan(classes, kernel_dtype(like, "cbbench._cuda.softmax_plan"), like.get_device(), buf, sizeof(buf));
  return std::string(buf);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "cbbench fused CUDA kernels (see the kernel contract in cbbench/ops.py)";
  m.def("softmax_ce_fwd", &softmax_ce_fwd, "Fused softmax cross-entropy: per-row loss and scaled gradient",
        py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("logit_offset"), py::arg("target_margin"),
        py::arg("scale"), py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("grad_scale"),
        py::arg("loss_rows"), py::arg("grad"));
  m.def("sigmoid_focal_fwd", &sigmoid_focal_fwd, "Fused sigmoid cross-entropy / focal loss: per-row loss and scaled gradient",
        py::arg("logits"), py::arg("target"), py::arg("weight"), py::arg("gamma"), py::arg("alpha"),
        py::arg("ignore_index"), py::arg("focal"), py::arg("grad_scale"), py::arg("loss_rows"), py::arg("grad"));
  m.def("scaled_grad", &scaled_grad,
        "grad * grad_output in place (no work when grad_output == 1); bumps grad's version counter",
        py::arg("grad"), py::arg("grad_output"));
  m.def("softmax_plan", &softmax_plan, "How softmax_ce_fwd lays out rows of `classes` elements of like's dtype",
        py::arg("classes"), py::arg("like"));
}
