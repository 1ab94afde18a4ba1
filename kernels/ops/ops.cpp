// The cbbench ops, defined once (module cbbench._C), in the layout of torchvision's csrc/ops: the schemas
// (TORCH_LIBRARY), the autograd on the Autograd key (a torch::autograd::Function), the no-autograd
// kernel of the public ops, and their differentiable composite. The device kernels are registered by
// the kernel modules -- CPU: kernels/cpu/cpu_ops.h in the Cython module cbbench._CPU; CUDA:
// kernels/cuda/binding.cpp in cbbench._cuda -- and only the fake kernels in Python (cbbench/ops/fake.py).
//
//   softmax_cross_entropy(logits, target, weight?, logit_offset?, target_margin?, scale, label_smoothing,
//                         ignore_index, reduction) -> loss
//   sigmoid_focal(logits, target, weight?, gamma, alpha, ignore_index, focal, reduction) -> loss
//       The public losses on (M, C) logits (cbbench/functional.py reshapes (N, C, d1, ...) and checks
//       the arguments). Differentiable.
//   softmax_cross_entropy_fused(..., need_grad) -> (loss, grad)
//   sigmoid_focal_fused(..., need_grad) -> (loss, grad)
//       One pass of the device kernel: the reduced loss (rows for "none") in the loss dtype and the
//       gradient of that loss w.r.t. the logits in their dtype ((0,) without need_grad). The reduction's
//       divisor is computed inside the kernel module, before the rows.
//   loss_divisor(target, weight?, num_classes, ignore_index, reduction, floor) -> 0-dim float64
//       The divisor of a reduction (floor: as the losses divide by it; else the additive local value the
//       distributed normaliser all-reduces), by the kernel module of the target's device.
//   scale_grad_(grad!, grad_output) -> ()
//       grad *= grad_output (0-dim), nothing when grad_output is 1 -- read on the device on CUDA.
//
// Autograd of the public ops (see docs/design.md, "Autograd"):
//   * first backward: the gradient the forward wrote is handed over, scaled in place by grad_output
//     (skipped when it is 1); out of place when grad_output is batched (vmap over grad_outputs,
//     gradcheck's batched check), traced (torch.compile) or otherwise not a plain tensor;
//   * a later backward (retain_graph=True) runs the kernel again on the saved logits;
//   * create_graph=True differentiates the composite at the saved logits: exact to any order;
//   * calls the fused kernels cannot serve take the composite from the start: forward-mode AD (dual
//     inputs), functorch transforms (where a C++ autograd Function is not allowed), and gradients for
//     inputs other than the logits (learnable class vectors, soft targets).
// The composite is cbbench/reference.py's formulas in ATen (tests/test_autograd_contract.py compares
// the two), so it composes with every autograd feature and transform.
#include <torch/extension.h>

#include <ATen/FuncTorchTLS.h>

#include <string>
#include <tuple>

#include "cb_ops.h"

namespace cbops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Pair = std::tuple<Tensor, Tensor>;

// ---- the device ops, by handle ------------------------------------------------------------------------
Pair softmax_fused(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                   const OptTensor& margin, double scale, double eps, int64_t ignore_index, c10::string_view reduction,
                   bool need_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbbench::softmax_cross_entropy_fused", "")
                             .typed<Pair(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                         const OptTensor&, double, double, int64_t, c10::string_view, bool)>();
  return op.call(logits, target, weight, offset, margin, scale, eps, ignore_index, reduction, need_grad);
}

Pair sigmoid_fused(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma, double alpha,
                   int64_t ignore_index, bool focal, c10::string_view reduction, bool need_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbbench::sigmoid_focal_fused", "")
                             .typed<Pair(const Tensor&, const Tensor&, const OptTensor&, double, double, int64_t,
                                         bool, c10::string_view, bool)>();
  return op.call(logits, target, weight, gamma, alpha, ignore_index, focal, reduction, need_grad);
}

void scale_grad_(Tensor& grad, const Tensor& grad_output) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbbench::scale_grad_", "")
                             .typed<void(Tensor&, const Tensor&)>();
  op.call(grad, grad_output);
}

// ---- the composite: cbbench/reference.py in ATen ------------------------------------------------------
Tensor compute_dtype(const Tensor& logits) { return logits.to(loss_dtype(logits.scalar_type())); }

// A CPU class target outside [0, C) that is not ignore_index: the same ValueError the CPU kernel raises
// (tensors of a transform or a trace are not read).
void check_targets_on_host(const Tensor& target, int64_t classes, int64_t ignore_index) {
  constexpr auto unreadable = c10::functorch_transforms_ks | c10::python_ks;
  if (!target.is_cpu() || target.key_set().has_any(unreadable) || target.is_floating_point()) return;
  const Tensor y = target.contiguous();
  const int64_t* p = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < y.numel(); ++i)
    TORCH_CHECK_VALUE(p[i] == ignore_index || (p[i] >= 0 && p[i] < classes),
                      target_range_message(p[i], classes, ignore_index));
}

// w * v where w != 0, else 0 (even where v is inf): reference.py's _times.
Tensor times(const Tensor& w, const Tensor& v) { return at::where(w != 0, w * v, at::zeros_like(v)); }

// log(1 + exp(x)) as logaddexp(x, 0): stable, derivative sigmoid(x) everywhere (reference.py softplus).
Tensor log1p_exp(const Tensor& x) { return at::logaddexp(x, at::zeros_like(x)); }

Tensor bce(const Tensor& z, const Tensor& t) { return times(t, log1p_exp(-z)) + times(1.0 - t, log1p_exp(z)); }

Tensor nonzero_or_one(const Tensor& d) { return at::where(d != 0, d, at::ones_like(d)); }

Tensor reduce(const Tensor& per_row, Reduction red, const Tensor& divisor) {
  if (red == Reduction::none) return per_row;
  const Tensor total = per_row.sum();
  if (red == Reduction::sum) return total;
  return total / divisor.to(total.scalar_type());
}

// The divisor of class-index targets (reference.py / shapes.py local_divisor + finish_divisor).
Tensor index_divisor(const Tensor& valid, const Tensor& row_weight, Reduction red) {
  if (red == Reduction::mean || !row_weight.defined()) return valid.sum(at::kDouble).clamp_min(1.0);
  return nonzero_or_one(at::where(valid, row_weight, at::zeros_like(row_weight)).sum(at::kDouble));
}

Tensor softmax_composite(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                         const OptTensor& margin, double scale, double eps, int64_t ignore_index, Reduction red) {
  const int64_t classes = logits.size(1);
  check_targets_on_host(target, classes, ignore_index);
  Tensor z = compute_dtype(logits);
  const auto dtype = z.scalar_type();
  const Tensor valid = target.ne(ignore_index);
  const Tensor y = at::where(valid, target, at::zeros_like(target));
  if (offset.has_value()) z = z + offset->to(dtype);
  if (margin.has_value()) z = z - at::one_hot(y, classes).to(dtype) * margin->to(dtype).index_select(0, y).unsqueeze(1);
  z = z * scale;
  const Tensor log_prob = z - z.logsumexp(1, /*keepdim=*/true);
  Tensor nll = -log_prob.gather(1, y.unsqueeze(1)).squeeze(1);  // not one-hot * log_prob: -inf * 0 is NaN
  if (eps > 0) nll = (1.0 - eps) * nll - eps * log_prob.mean(1);
  Tensor row_weight;
  if (weight.has_value()) {
    const Tensor w = weight->to(dtype).index_select(0, y);
    row_weight = at::where(valid, w, at::zeros_like(w));
  }
  const Tensor per_row = at::where(valid, row_weight.defined() ? row_weight * nll : nll, at::zeros_like(nll));
  return reduce(per_row, red, red == Reduction::none || red == Reduction::sum ? Tensor()
                                                                              : index_divisor(valid, row_weight, red));
}

Tensor sigmoid_composite(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma,
                         double alpha, int64_t ignore_index, bool focal, Reduction red) {
  const int64_t classes = logits.size(1);
  check_targets_on_host(target, classes, ignore_index);
  const Tensor z = compute_dtype(logits);
  const auto dtype = z.scalar_type();
  const bool multi_hot = target.is_floating_point();
  Tensor t, valid, element_weight;
  if (multi_hot) {
    t = target.to(dtype);
    if (weight.has_value()) element_weight = weight->to(dtype).unsqueeze(0);
  } else {
    valid = target.ne(ignore_index);
    const Tensor y = at::where(valid, target, at::zeros_like(target));
    t = at::one_hot(y, classes).to(dtype);
    const Tensor w = weight.has_value() ? weight->to(dtype).index_select(0, y) : at::ones({y.size(0)}, z.options());
    element_weight = at::where(valid, w, at::zeros_like(w)).unsqueeze(1);
  }
  Tensor terms = bce(z, t);
  if (focal && gamma != 0) terms = terms * at::exp(-gamma * bce(z, 1.0 - t));
  if (alpha >= 0) terms = terms * (alpha * t + (1.0 - alpha) * (1.0 - t));
  if (element_weight.defined()) terms = terms * element_weight;
  Tensor per_row = terms.sum(1);
  if (!multi_hot) per_row = at::where(valid, per_row, at::zeros_like(per_row));
  Tensor divisor;
  if (red == Reduction::mean || red == Reduction::weighted_mean) {
    if (multi_hot) {
      const int64_t rows = z.size(0);
      divisor = red == Reduction::mean ? t.sum(at::kDouble).clamp_min(1.0)
                : weight.has_value()   ? nonzero_or_one(weight->to(at::kDouble).mean() * double(rows))
                                       : nonzero_or_one(at::full({}, double(rows), z.options().dtype(at::kDouble)));
    } else {
      divisor = index_divisor(valid, weight.has_value() ? element_weight.squeeze(1) : Tensor(), red);
    }
  }
  return reduce(per_row, red, divisor);
}

// ---- when the fused kernels cannot serve a call ---------------------------------------------------------
// A functorch transform is active (a C++ autograd Function refuses to run then: custom_function.h makes
// the same check), an input is dual (forward-mode AD: the C++ Function has no jvp), or an input other
// than the logits needs a gradient (the kernels give the logits' only).
bool functorch_active() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

bool dual(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool dual(const OptTensor& t) { return t.has_value() && dual(*t); }
bool needs_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

bool grad_mode_with(const Tensor& logits) { return at::GradMode::is_enabled() && logits.requires_grad(); }

// ---- the handed-over gradient, scaled by grad_output ------------------------------------------------------
// In place only on a plain tensor: not batched (vmap over grad_outputs), not a fake or functional tensor
// of a trace (torch.compile), whose values cannot be read.
bool plain(const Tensor& t) {
  constexpr auto wrapped = c10::functorch_transforms_ks | c10::python_ks |
                           c10::DispatchKeySet(c10::DispatchKey::Functionalize);
  return !t.key_set().has_any(wrapped);
}

Tensor scaled(Tensor grad, const Tensor& grad_output, Reduction red) {
  const Tensor factor = red == Reduction::none ? grad_output.unsqueeze(1) : grad_output;
  if (!plain(grad_output) || !plain(grad)) return (grad * factor).to(grad.scalar_type());
  if (red == Reduction::none) return grad.mul_(factor);
  scale_grad_(grad, grad_output);
  return grad;
}

// ---- autograd ---------------------------------------------------------------------------------------------
struct SoftmaxArgs {
  Tensor target;
  OptTensor weight, offset, margin;
  double scale, eps;
  int64_t ignore_index;
  std::string reduction;
};

class SoftmaxFunction : public torch::autograd::Function<SoftmaxFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target, const OptTensor& weight,
                        const OptTensor& offset, const OptTensor& margin, double scale, double eps,
                        int64_t ignore_index, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = softmax_fused(logits, target, weight, offset, margin, scale, eps, ignore_index, reduction, true);
    ctx->save_for_backward({logits});
    ctx->saved_data["grad"] = grad;
    ctx->saved_data["target"] = target;
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["margin"] = margin;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->set_materialize_grads(false);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);
    const Tensor& go = grads[0];
    if (!go.defined()) return out;
    const Tensor logits = ctx->get_saved_variables()[0];
    auto& d = ctx->saved_data;
    const Tensor target = d["target"].toTensor();
    const OptTensor weight = d["weight"].toOptional<Tensor>(), offset = d["offset"].toOptional<Tensor>(),
                    margin = d["margin"].toOptional<Tensor>();
    const double scale = d["scale"].toDouble(), eps = d["eps"].toDouble();
    const int64_t ignore_index = d["ignore_index"].toInt();
    const std::string reduction = d["reduction"].toStringRef();
    const Reduction red = parse_reduction(reduction);
    if (at::GradMode::is_enabled()) {  // create_graph=True: the composite's gradient, itself differentiable
      const Tensor value = softmax_composite(logits, target, weight, offset, margin, scale, eps, ignore_index, red);
      out[0] = torch::autograd::grad({value}, {logits}, {go}, /*retain_graph=*/true, /*create_graph=*/true)[0];
      return out;
    }
    Tensor grad;
    if (d["grad"].isTensor()) {  // the first backward: hand it over
      grad = d["grad"].toTensor();
      d["grad"] = c10::IValue();
    } else {  // it was handed over: run the kernel again
      at::AutoDispatchBelowADInplaceOrView below;
      grad = std::get<1>(
          softmax_fused(logits, target, weight, offset, margin, scale, eps, ignore_index, reduction, true));
    }
    out[0] = scaled(std::move(grad), go, red);
    return out;
  }
};

class SigmoidFunction : public torch::autograd::Function<SigmoidFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target, const OptTensor& weight,
                        double gamma, double alpha, int64_t ignore_index, bool focal, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = sigmoid_fused(logits, target, weight, gamma, alpha, ignore_index, focal, reduction, true);
    ctx->save_for_backward({logits});
    ctx->saved_data["grad"] = grad;
    ctx->saved_data["target"] = target;
    ctx->saved_data["weight"] = weight;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["focal"] = focal;
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->set_materialize_grads(false);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(8);
    const Tensor& go = grads[0];
    if (!go.defined()) return out;
    const Tensor logits = ctx->get_saved_variables()[0];
    auto& d = ctx->saved_data;
    const Tensor target = d["target"].toTensor();
    const OptTensor weight = d["weight"].toOptional<Tensor>();
    const double gamma = d["gamma"].toDouble(), alpha = d["alpha"].toDouble();
    const int64_t ignore_index = d["ignore_index"].toInt();
    const bool focal = d["focal"].toBool();
    const std::string reduction = d["reduction"].toStringRef();
    const Reduction red = parse_reduction(reduction);
    if (at::GradMode::is_enabled()) {
      const Tensor value = sigmoid_composite(logits, target, weight, gamma, alpha, ignore_index, focal, red);
      out[0] = torch::autograd::grad({value}, {logits}, {go}, /*retain_graph=*/true, /*create_graph=*/true)[0];
      return out;
    }
    Tensor grad;
    if (d["grad"].isTensor()) {
      grad = d["grad"].toTensor();
      d["grad"] = c10::IValue();
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      grad = std::get<1>(sigmoid_fused(logits, target, weight, gamma, alpha, ignore_index, focal, reduction, true));
    }
    out[0] = scaled(std::move(grad), go, red);
    return out;
  }
};

// ---- the public ops' kernels --------------------------------------------------------------------------------
Tensor softmax_autograd(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                        const OptTensor& margin, double scale, double eps, int64_t ignore_index,
                        c10::string_view reduction) {
  if (needs_grad(weight) || needs_grad(offset) || needs_grad(margin) || dual(logits) || dual(weight) ||
      dual(offset) || dual(margin) || functorch_active())
    return softmax_composite(logits, target, weight, offset, margin, scale, eps, ignore_index,
                             parse_reduction(reduction));
  if (!grad_mode_with(logits)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return std::get<0>(softmax_fused(logits, target, weight, offset, margin, scale, eps, ignore_index, reduction,
                                     false));
  }
  return SoftmaxFunction::apply(logits, target, weight, offset, margin, scale, eps, ignore_index, reduction);
}

Tensor sigmoid_autograd(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma,
                        double alpha, int64_t ignore_index, bool focal, c10::string_view reduction) {
  if (needs_grad(weight) || target.requires_grad() || dual(logits) || dual(target) || dual(weight) ||
      functorch_active())
    return sigmoid_composite(logits, target, weight, gamma, alpha, ignore_index, focal, parse_reduction(reduction));
  if (!grad_mode_with(logits)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return std::get<0>(sigmoid_fused(logits, target, weight, gamma, alpha, ignore_index, focal, reduction, false));
  }
  return SigmoidFunction::apply(logits, target, weight, gamma, alpha, ignore_index, focal, reduction);
}

// Below autograd (inference tensors, AutoDispatchBelowAutograd): the kernel, no gradient.
Tensor softmax_plain(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                     const OptTensor& margin, double scale, double eps, int64_t ignore_index,
                     c10::string_view reduction) {
  return std::get<0>(softmax_fused(logits, target, weight, offset, margin, scale, eps, ignore_index, reduction, false));
}

Tensor sigmoid_plain(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma, double alpha,
                     int64_t ignore_index, bool focal, c10::string_view reduction) {
  return std::get<0>(sigmoid_fused(logits, target, weight, gamma, alpha, ignore_index, focal, reduction, false));
}

}  // namespace
}  // namespace cbops

TORCH_LIBRARY(cbbench, m) {
  m.def("softmax_cross_entropy(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_offset, "
        "Tensor? target_margin, float scale, float label_smoothing, int ignore_index, str reduction) -> Tensor");
  m.def("sigmoid_focal(Tensor logits, Tensor target, Tensor? weight, float gamma, float alpha, int ignore_index, "
        "bool focal, str reduction) -> Tensor");
  m.def("softmax_cross_entropy_fused(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_offset, "
        "Tensor? target_margin, float scale, float label_smoothing, int ignore_index, str reduction, "
        "bool need_grad) -> (Tensor, Tensor)");
  m.def("sigmoid_focal_fused(Tensor logits, Tensor target, Tensor? weight, float gamma, float alpha, "
        "int ignore_index, bool focal, str reduction, bool need_grad) -> (Tensor, Tensor)");
  m.def("loss_divisor(Tensor target, Tensor? weight, int num_classes, int ignore_index, str reduction, "
        "bool floor) -> Tensor");
  m.def("scale_grad_(Tensor(a!) grad, Tensor grad_output) -> ()");
}

TORCH_LIBRARY_IMPL(cbbench, Autograd, m) {
  m.impl("softmax_cross_entropy", &cbops::softmax_autograd);
  m.impl("sigmoid_focal", &cbops::sigmoid_autograd);
}

TORCH_LIBRARY_IMPL(cbbench, CompositeExplicitAutograd, m) {
  m.impl("softmax_cross_entropy", &cbops::softmax_plain);
  m.impl("sigmoid_focal", &cbops::sigmoid_plain);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cbbench's ops: schemas, autograd and composites (kernels/ops/ops.cpp); device kernels live in "
            "cbbench._cpu and cbbench._cuda";
}
