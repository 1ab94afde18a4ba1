// The CUDA kernels of the cbbench ops (schemas and autograd: kernels/ops/ops.cpp), registered for the
// CUDA dispatch key by the module cbbench._cuda: the current stream, the outputs, and the reduction --
// the divisor is computed on the device inside the loss kernel's own launch (cb_divisor.cuh; the
// gradients are written already divided by it, read by the kernels through grad_scale: no host
// synchronisation), and the row losses are summed after them (a fixed-order device reduction). The
// kernels themselves are torch-free (cb_kernels.h).
// Built only on machines with torch's CUDA build; `make cuda-check` compiles it against any torch.
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cb_kernels.h"
#include "cb_ops.h"

namespace {

using torch::Tensor;
using cbops::OptTensor;
using cbops::Reduction;
using Pair = std::tuple<Tensor, Tensor>;

cb::Dtype kernel_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return cb::Dtype::f16;
    case at::kBFloat16: return cb::Dtype::bf16;
    case at::kDouble: return cb::Dtype::f64;
    default: return cb::Dtype::f32;  // the ops' checks (cb_ops.h) admit these four only
  }
}

void check_cuda(const Tensor& logits, const char* op) {
  // Grids are one block per row at most (per row and chunk on the split/cluster paths, which only
  // large C takes, so those grids stay far below the limit for any tensor that fits in memory).
  TORCH_CHECK(logits.size(0) <= int64_t(0x7fffffff), op, ": at most 2**31 - 1 rows, got ", logits.size(0));
}

const float* ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

// The divisor's arguments (cb_kernels.h, DivisorArgs) for outputs `divisor` / `grad_scale` (0-dim tensors
// of the loss dtype, either may be undefined). `floor`: finished (cbbench/shapes.py, finish_divisor).
// `keep` holds what the arguments point into until the launch is enqueued (the caching allocator reuses
// it in stream order after that).
cb::DivisorArgs divisor_args(const Tensor& target, const OptTensor& weight, const OptTensor& sample_weight,
                             int64_t ignore_index, Reduction red, int64_t classes, bool floor, const Tensor& divisor,
                             const Tensor& grad_scale, std::vector<Tensor>& keep) {
  const bool multi_hot = target.is_floating_point();
  cb::DivisorArgs a{};
  if (multi_hot && red == Reduction::mean) {
    // the number of positives: the whole target summed by the divisor's chunks (in one of the kernels' dtypes)
    const at::ScalarType t = target.scalar_type();
    const bool kernel_type = t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
    keep.push_back((kernel_type ? target : target.to(at::kFloat)).contiguous());
    a.positives = keep.back().data_ptr();
    a.positives_dtype = kernel_dtype(keep.back());
  } else if (!multi_hot) {
    keep.push_back(target.contiguous());
    a.target = keep.back().data_ptr<int64_t>();
  }
  a.weight = ptr(weight);
  a.sample_weight = ptr(sample_weight);
  a.ignore_index = ignore_index;
  a.rows = target.size(0);
  a.classes = classes;
  a.multi_hot = multi_hot;
  a.weighted = red == Reduction::weighted_mean;
  a.floor = floor;
  a.divisor = divisor.defined() ? divisor.data_ptr() : nullptr;
  a.grad_scale = grad_scale.defined() ? grad_scale.data_ptr() : nullptr;
  return a;
}

// Zeroed sync words (cb::kDivisorSyncWords) for the divisor computed in a kernel's launch (cb_kernels.h,
// FusedDivisor), which every launch that uses them leaves zero again. Outside a CUDA graph capture: one set
// per device and stream, zeroed once when first used (launches on one stream run one at a time, so they
// never share them at the same time; one small tensor per stream ever used); the map is never destroyed,
// so no tensor outlives the CUDA context at exit. Inside a capture nothing may run outside the graph, so
// the call takes a fresh set whose zeroing is captured with it (a memset node the graph replays each time,
// in the graph's memory pool).
unsigned* divisor_sync(const Tensor& like, cudaStream_t stream, std::vector<Tensor>& keep) {
  const auto zeros = [&] { return at::zeros({cb::kDivisorSyncWords}, like.options().dtype(at::kInt)); };
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  if (status != cudaStreamCaptureStatusNone) {
    keep.push_back(zeros());
    return reinterpret_cast<unsigned*>(keep.back().data_ptr<int>());
  }
  static std::mutex mutex;
  static auto* words = new std::map<std::pair<int, cudaStream_t>, Tensor>();
  const std::pair<int, cudaStream_t> key(like.get_device(), stream);
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = words->find(key);
  if (it == words->end()) it = words->emplace(key, zeros()).first;
  return reinterpret_cast<unsigned*>(it->second.data_ptr<int>());
}

// The divisor of a kernel's launch: its arguments, the chunks' partials (from the caching allocator: no
// zeroing needed) and the sync words of the current stream. `keep` holds what it points into.
cb::FusedDivisor fused_divisor(const Tensor& target, const OptTensor& weight, const OptTensor& sample_weight,
                               int64_t ignore_index, Reduction red, int64_t classes, bool floor, const Tensor& divisor,
                               const Tensor& grad_scale, const Tensor& like, std::vector<Tensor>& keep) {
  cb::FusedDivisor f{};
  f.on = true;
  f.args = divisor_args(target, weight, sample_weight, ignore_index, red, classes, floor, divisor, grad_scale, keep);
  f.chunks = cb::divisor_chunks(f.args);
  keep.push_back(at::empty({f.chunks}, like.options().dtype(at::kDouble)));
  f.partials = keep.back().data_ptr<double>();
  f.sync = divisor_sync(like, c10::cuda::getCurrentCUDAStream(like.get_device()).stream(), keep);
  return f;
}

// The reduction's divisor by its own launch (the `loss_divisor` op).
void launch_divisor(const Tensor& target, const OptTensor& weight, const OptTensor& sample_weight,
                    int64_t ignore_index, Reduction red, int64_t classes, bool floor, const Tensor& divisor,
                    const Tensor& grad_scale) {
  const Tensor& out = divisor.defined() ? divisor : grad_scale;
  const c10::cuda::CUDAGuard guard(out.device());
  std::vector<Tensor> keep;
  const cb::FusedDivisor f = fused_divisor(target, weight, sample_weight, ignore_index, red, classes, floor, divisor,
                                           grad_scale, out, keep);
  C10_CUDA_CHECK(cb::loss_divisor(f, out.scalar_type() == at::kDouble,
                                  c10::cuda::getCurrentCUDAStream(out.get_device()).stream()));
}

struct Outputs {
  Tensor loss_rows;  // (rows,) loss dtype
  Tensor grad;       // (rows, classes) logits' dtype, or undefined
  Tensor divisor;    // 0-dim loss dtype, or undefined (sum / none)
  Tensor grad_scale; // its reciprocal, read by the kernels, or undefined (1)
  cb::FusedDivisor fused{};   // the divisor, computed inside the loss kernel's launch
  std::vector<Tensor> keep;   // what `fused` points into
};

// The outputs, and for "mean" / "weighted_mean" the divisor that the loss kernel computes in its own
// launch (no launch of its own).
Outputs make_outputs(const Tensor& logits, const Tensor& target, const OptTensor& weight,
                     const OptTensor& sample_weight, int64_t ignore_index, Reduction red, bool need_grad) {
  Outputs o;
  const auto loss_type = cbops::loss_dtype(logits.scalar_type());
  o.loss_rows = at::empty({logits.size(0)}, logits.options().dtype(loss_type));
  if (need_grad) o.grad = at::empty_like(logits);
  if (red == Reduction::mean || red == Reduction::weighted_mean) {
    const Tensor both = at::empty({2}, logits.options().dtype(loss_type));  // [divisor, 1 / divisor]
    o.divisor = both.select(0, 0);
    o.grad_scale = both.select(0, 1);
    o.fused = fused_divisor(target, weight, sample_weight, ignore_index, red, logits.size(1), true, o.divisor,
                            o.grad_scale, logits, o.keep);
  }
  return o;
}

// The fields both argument structs share: logits, gradient scale, outputs and shape.
template <typename Args>
void set_common(Args& a, const Tensor& logits, const Outputs& o) {
  a.logits = logits.data_ptr();
  a.grad_scale = o.grad_scale.defined() ? o.grad_scale.data_ptr() : nullptr;
  a.loss_rows = o.loss_rows.data_ptr();
  a.grad = o.grad.defined() ? o.grad.data_ptr() : nullptr;
  a.rows = logits.size(0);
  a.classes = logits.size(1);
  a.fused = o.fused;
}

// (loss, grad): the row losses reduced (summed in a fixed order, divided by the divisor), and the
// gradient of that reduced loss ((0,) without need_grad).
Pair reduced(const Tensor& logits, const Outputs& o, Reduction red) {
  const Tensor grad = o.grad.defined() ? o.grad : at::empty({0}, logits.options());
  if (red == Reduction::none) return {o.loss_rows, grad};
  const Tensor total = o.loss_rows.sum();
  return {o.divisor.defined() ? total / o.divisor : total, grad};
}

Pair softmax_cross_entropy(const Tensor& logits_in, const Tensor& target_in, const OptTensor& weight_in,
                           const OptTensor& logit_offset, const OptTensor& target_margin, double scale,
                           double label_smoothing, double gamma, const OptTensor& alpha_in,
                           const OptTensor& sample_weight_in, int64_t ignore_index, c10::string_view reduction,
                           bool need_grad) {
  const char* op = "cbbench::softmax_cross_entropy_fused";
  cbops::check_fused_args(op, logits_in, target_in, false,
                          {{"weight", &weight_in}, {"logit_offset", &logit_offset}, {"target_margin", &target_margin},
                           {"alpha", &alpha_in}});
  cbops::check_sample_weight(op, logits_in, sample_weight_in);
  check_cuda(logits_in, op);
  TORCH_CHECK(gamma >= 0, op, ": gamma must be >= 0, got ", gamma);
  const Reduction red = cbops::parse_reduction(reduction);
  const Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const OptTensor weight = cbops::float_vector(weight_in), offset = cbops::float_vector(logit_offset),
                  margin = cbops::float_vector(target_margin), alpha = cbops::float_vector(alpha_in),
                  sample_weight = cbops::float_vector(sample_weight_in);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int device = logits.get_device();
  const cb::Dtype dtype = kernel_dtype(logits);
  const Outputs o = make_outputs(logits, target, weight, sample_weight, ignore_index, red, need_grad);
  cb::SoftmaxCeArgs a{};
  set_common(a, logits, o);
  a.target = target.data_ptr<int64_t>();
  a.weight = ptr(weight);
  a.logit_offset = ptr(offset);
  a.target_margin = ptr(margin);
  a.scale = scale;
  a.label_smoothing = label_smoothing;
  a.gamma = gamma;
  a.alpha = ptr(alpha);
  a.sample_weight = ptr(sample_weight);
  a.ignore_index = ignore_index;
  // The split path's partials live in a workspace from the caching allocator (graph-capture safe).
  const std::size_t ws_bytes = cb::softmax_ce_workspace_bytes(a.rows, a.classes, dtype, device);
  Tensor workspace;
  if (ws_bytes > 0) {
    workspace = at::empty({int64_t(ws_bytes)}, logits.options().dtype(at::kByte));
    a.workspace = workspace.data_ptr();
  }
  C10_CUDA_CHECK(cb::softmax_ce(a, dtype, device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return reduced(logits, o, red);
}

Pair sigmoid_focal(const Tensor& logits_in, const Tensor& target_in, const OptTensor& weight_in, double gamma,
                   double alpha, const OptTensor& sample_weight_in, int64_t ignore_index, bool focal,
                   c10::string_view reduction, bool need_grad) {
  const char* op = "cbbench::sigmoid_focal_fused";
  cbops::check_fused_args(op, logits_in, target_in, true, {{"weight", &weight_in}});
  cbops::check_sample_weight(op, logits_in, sample_weight_in);
  check_cuda(logits_in, op);
  TORCH_CHECK(gamma >= 0, op, ": gamma must be >= 0, got ", gamma);
  const Reduction red = cbops::parse_reduction(reduction);
  const Tensor logits = logits_in.contiguous();
  const bool multi_hot = target_in.is_floating_point();
  // the kernels read a multi-hot target in the logits' dtype
  const Tensor target = (multi_hot ? target_in.to(logits.scalar_type()) : target_in).contiguous();
  const OptTensor weight = cbops::float_vector(weight_in), sample_weight = cbops::float_vector(sample_weight_in);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int device = logits.get_device();
  const Outputs o = make_outputs(logits, target, weight, sample_weight, ignore_index, red, need_grad);
  cb::SigmoidFocalArgs a{};
  set_common(a, logits, o);
  if (multi_hot) {
    a.multi_hot_target = target.data_ptr();
  } else {
    a.class_target = target.data_ptr<int64_t>();
  }
  a.weight = ptr(weight);
  a.gamma = gamma;
  a.alpha = alpha;
  a.sample_weight = ptr(sample_weight);
  a.ignore_index = ignore_index;
  a.focal = focal;
  C10_CUDA_CHECK(cb::sigmoid_focal(a, kernel_dtype(logits), device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return reduced(logits, o, red);
}

Tensor loss_divisor(const Tensor& target, const OptTensor& weight_in, const OptTensor& sample_weight_in,
                    int64_t num_classes, int64_t ignore_index, c10::string_view reduction, bool floor) {
  const Reduction red = cbops::parse_reduction(reduction);
  const OptTensor weight = cbops::float_vector(weight_in), sample_weight = cbops::float_vector(sample_weight_in);
  cbops::check_divisor_args(target, weight, sample_weight, num_classes);  // the kernel reads within these sizes
  const Tensor out = at::empty({}, target.options().dtype(at::kDouble));
  if (red == Reduction::sum || red == Reduction::none) return out.fill_(1.0);
  launch_divisor(target, weight, sample_weight, ignore_index, red, num_classes, floor, out, Tensor());
  return out;
}

// grad *= grad_output, in place. The kernel reads grad_output on the device and does nothing when it is 1
// (no host synchronisation, no extra pass over the gradient, where grad.mul_(grad_output) would always
// make one).
void scale_grad_(Tensor& grad, const Tensor& grad_output) {
  const char* op = "cbbench::scale_grad_";
  TORCH_CHECK(grad.is_contiguous(), op, ": grad must be contiguous");
  TORCH_CHECK(grad_output.numel() == 1, op, ": grad_output must have one element (a reduced loss), got shape ",
              grad_output.sizes());
  const at::ScalarType go_type = cbops::loss_dtype(grad.scalar_type());
  const Tensor go = grad_output.scalar_type() == go_type ? grad_output : grad_output.to(go_type);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int device = grad.get_device();
  C10_CUDA_CHECK(cb::scale_in_place(grad.data_ptr(), grad.numel(), kernel_dtype(grad), go.data_ptr(),
                                    go_type == at::kDouble, device, c10::cuda::getCurrentCUDAStream(device).stream()));
}

std::string softmax_plan(int64_t classes, const Tensor& like) {
  TORCH_CHECK(like.is_cuda(), "cbbench._cuda.softmax_plan: `like` must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(like.device());  // the plan (and its cached queries) are per device
  char buf[64];
  const int device = like.get_device();
  // device queries (cached) are made on the stream a launch would use, never inside its capture
  cb::softmax_ce_plan(classes, kernel_dtype(like), device, buf, sizeof(buf),
                      c10::cuda::getCurrentCUDAStream(device).stream());
  return std::string(buf);
}

}  // namespace

TORCH_LIBRARY_IMPL(cbbench, CUDA, m) {
  m.impl("softmax_cross_entropy_fused", &softmax_cross_entropy);
  m.impl("sigmoid_focal_fused", &sigmoid_focal);
  m.impl("loss_divisor", &loss_divisor);
  m.impl("scale_grad_", &scale_grad_);
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "cbbench's CUDA kernels, registered for the ops' CUDA dispatch key (kernels/ops/ops.cpp)";
  m.def("softmax_plan", &softmax_plan, "How softmax_ce lays out rows of `classes` elements of like's dtype",
        py::arg("classes"), py::arg("like"));
}
