// The cbbench ops, defined once (module cbbench._C), in the layout of torchvision's csrc/ops: the schemas
// (TORCH_LIBRARY), the autograd on the Autograd key (a torch::autograd::Function), the no-autograd
// kernel of the public ops, and their differentiable composite. The device kernels are registered by
// the kernel modules -- CPU: kernels/cpu/cpu_ops.h in the Cython module cbbench._CPU; CUDA:
// kernels/cuda/binding.cpp in cbbench._cuda -- and only the fake kernels in Python (cbbench/ops/fake.py).
//
//   softmax_cross_entropy(logits, target, weight?, logit_offset?, target_margin?, scale, label_smoothing,
//                         gamma, alpha?, sample_weight?, ignore_index, reduction) -> loss
//   sigmoid_focal(logits, target, weight?, gamma, alpha, sample_weight?, ignore_index, focal, reduction) -> loss
//       The public losses on (M, C) logits (cbbench/functional.py reshapes (N, C, d1, ...) and checks
//       the arguments). Differentiable. Softmax with gamma > 0 is the softmax focal loss (alpha: a
//       per-class factor); sample_weight (M,) scales each row after its class weight.
//   softmax_cross_entropy_fused(..., need_grad) -> (loss, grad)
//   sigmoid_focal_fused(..., need_grad) -> (loss, grad)
//       One pass of the device kernel: the reduced loss (rows for "none") in the loss dtype and the
//       gradient of that loss w.r.t. the logits in their dtype ((0,) without need_grad). The reduction's
//       divisor is computed inside the kernel module, before the rows.
//   loss_divisor(target, weight?, sample_weight?, num_classes, ignore_index, reduction, floor) -> 0-dim float64
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
// The softmax op's arguments after the logits, in schema order (saved for backward as they came).
struct SoftmaxArgs {
  Tensor target;
  OptTensor weight, offset, margin;
  double scale, eps, gamma;
  OptTensor alpha, sample_weight;
  int64_t ignore_index;
  std::string reduction;
};

struct SigmoidArgs {
  Tensor target;
  OptTensor weight;
  double gamma, alpha;
  OptTensor sample_weight;
  int64_t ignore_index;
  bool focal;
  std::string reduction;
};

Pair softmax_fused(const Tensor& logits, const SoftmaxArgs& a, bool need_grad) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cbbench::softmax_cross_entropy_fused", "")
          .typed<Pair(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double, double,
                      double, const OptTensor&, const OptTensor&, int64_t, c10::string_view, bool)>();
  return op.call(logits, a.target, a.weight, a.offset, a.margin, a.scale, a.eps, a.gamma, a.alpha, a.sample_weight,
                 a.ignore_index, a.reduction, need_grad);
}

Pair sigmoid_fused(const Tensor& logits, const SigmoidArgs& a, bool need_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbbench::sigmoid_focal_fused", "")
                             .typed<Pair(const Tensor&, const Tensor&, const OptTensor&, double, double,
                                         const OptTensor&, int64_t, bool, c10::string_view, bool)>();
  return op.call(logits, a.target, a.weight, a.gamma, a.alpha, a.sample_weight, a.ignore_index, a.focal, a.reduction,
                 need_grad);
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

// The divisor of class-index targets (reference.py / shapes.py local_divisor + finish_divisor): valid rows,
// or for "weighted_mean" the sum of their applied weights s_i w_{y_i} (undefined: none given).
Tensor index_divisor(const Tensor& valid, const Tensor& applied, Reduction red) {
  if (red == Reduction::mean || !applied.defined()) return valid.sum(at::kDouble).clamp_min(1.0);
  return nonzero_or_one(at::where(valid, applied, at::zeros_like(applied)).sum(at::kDouble));
}

// (1 - p_y)^gamma from log p_y, 0 where p_y = 1 (reference.py softmax_focal_modulator).
Tensor focal_modulator(const Tensor& log_py, double gamma) {
  const Tensor q = -at::expm1(log_py);
  const Tensor positive = q > 0;
  const Tensor safe = at::where(positive, q, at::ones_like(q));  // no log(0) in the graph
  return at::where(positive, at::exp(gamma * at::log(safe)), at::zeros_like(q));
}

Tensor softmax_composite(const Tensor& logits, const SoftmaxArgs& a, Reduction red) {
  const int64_t classes = logits.size(1);
  check_targets_on_host(a.target, classes, a.ignore_index);
  Tensor z = compute_dtype(logits);
  const auto dtype = z.scalar_type();
  const Tensor valid = a.target.ne(a.ignore_index);
  const Tensor y = at::where(valid, a.target, at::zeros_like(a.target));
  if (a.offset.has_value()) z = z + a.offset->to(dtype);
  if (a.margin.has_value())
    z = z - at::one_hot(y, classes).to(dtype) * a.margin->to(dtype).index_select(0, y).unsqueeze(1);
  z = z * a.scale;
  const Tensor log_prob = z - z.logsumexp(1, /*keepdim=*/true);
  const Tensor log_py = log_prob.gather(1, y.unsqueeze(1)).squeeze(1);  // not one-hot * log_prob: -inf * 0
  Tensor nll = -log_py;
  if (a.eps > 0) nll = (1.0 - a.eps) * nll - a.eps * log_prob.mean(1);
  if (a.gamma > 0) nll = focal_modulator(log_py, a.gamma) * nll;
  // the weight a row is divided by (w_y s_i) and the one its loss carries (w_y alpha_y s_i)
  Tensor applied;
  if (a.weight.has_value()) applied = a.weight->to(dtype).index_select(0, y);
  if (a.sample_weight.has_value()) {
    const Tensor s = a.sample_weight->to(dtype);
    applied = applied.defined() ? applied * s : s;
  }
  Tensor carried = applied;
  if (a.alpha.has_value()) {
    const Tensor al = a.alpha->to(dtype).index_select(0, y);
    carried = carried.defined() ? carried * al : al;
  }
  const Tensor per_row = at::where(valid, carried.defined() ? carried * nll : nll, at::zeros_like(nll));
  return reduce(per_row, red, red == Reduction::none || red == Reduction::sum ? Tensor()
                                                                              : index_divisor(valid, applied, red));
}

Tensor sigmoid_composite(const Tensor& logits, const SigmoidArgs& a, Reduction red) {
  const int64_t classes = logits.size(1), rows = logits.size(0);
  check_targets_on_host(a.target, classes, a.ignore_index);
  const Tensor z = compute_dtype(logits);
  const auto dtype = z.scalar_type();
  const bool multi_hot = a.target.is_floating_point();
  const Tensor s = a.sample_weight.has_value() ? a.sample_weight->to(dtype) : Tensor();
  Tensor t, valid, element_weight, applied;
  if (multi_hot) {
    t = a.target.to(dtype);
    if (a.weight.has_value()) element_weight = a.weight->to(dtype).unsqueeze(0);
  } else {
    valid = a.target.ne(a.ignore_index);
    const Tensor y = at::where(valid, a.target, at::zeros_like(a.target));
    t = at::one_hot(y, classes).to(dtype);
    if (a.weight.has_value()) applied = a.weight->to(dtype).index_select(0, y);
    if (s.defined()) applied = applied.defined() ? applied * s : s;
    const Tensor w = applied.defined() ? applied : at::ones({rows}, z.options());
    element_weight = at::where(valid, w, at::zeros_like(w)).unsqueeze(1);
  }
  Tensor terms = bce(z, t);
  if (a.focal && a.gamma != 0) terms = terms * at::exp(-a.gamma * bce(z, 1.0 - t));
  if (a.alpha >= 0) terms = terms * (a.alpha * t + (1.0 - a.alpha) * (1.0 - t));
  if (element_weight.defined()) terms = terms * element_weight;
  Tensor per_row = terms.sum(1);
  if (multi_hot && s.defined()) per_row = per_row * s;
  if (!multi_hot) per_row = at::where(valid, per_row, at::zeros_like(per_row));
  Tensor divisor;
  if (red == Reduction::mean || red == Reduction::weighted_mean) {
    if (multi_hot) {
      const Tensor weighted_rows = s.defined() ? s.to(at::kDouble).sum()
                                               : at::full({}, double(rows), z.options().dtype(at::kDouble));
      divisor = red == Reduction::mean ? t.sum(at::kDouble).clamp_min(1.0)
                : a.weight.has_value() ? nonzero_or_one(a.weight->to(at::kDouble).mean() * weighted_rows)
                                       : nonzero_or_one(weighted_rows);
    } else {
      divisor = index_divisor(valid, applied, red);
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
bool needs_grad(const Tensor& t) { return t.requires_grad(); }
bool needs_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

template <typename... Ts>
bool any_needs_grad_or_dual(const Ts&... ts) {
  return ((needs_grad(ts) || dual(ts)) || ...);
}

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
  // a float32 grad_output of 1 on the CPU (a training step's loss) is read here, without an op call
  if (grad_output.is_cpu() && grad_output.scalar_type() == at::kFloat && *grad_output.const_data_ptr<float>() == 1.0f)
    return grad;
  scale_grad_(grad, grad_output);
  return grad;
}

// ---- autograd ---------------------------------------------------------------------------------------------
// The saved arguments of a Function and the gradient its forward wrote (until handed over), in one capsule.
template <typename Args>
struct Saved : torch::CustomClassHolder {
  Args args;
  Tensor grad;
  Saved(Args a, Tensor g) : args(std::move(a)), grad(std::move(g)) {}
};

// A loss's Function takes the logits and one non-tensor argument (the rest of the op's arguments): the
// logits are its only differentiable input (any other input needing a gradient takes the composite), so
// autograd records one input and one edge, not one per tensor argument.
template <typename Args, Pair (*fused)(const Tensor&, const Args&, bool),
          Tensor (*composite)(const Tensor&, const Args&, Reduction)>
struct LossFunction {
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, Args args) {
    Tensor loss, grad;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(loss, grad) = fused(logits, args, true);
    }
    ctx->save_for_backward({logits});
    ctx->saved_data["saved"] = c10::IValue::make_capsule(c10::make_intrusive<Saved<Args>>(std::move(args), grad));
    ctx->set_materialize_grads(false);
    return loss;
  }

  // The first backward hands the forward's gradient over; a later one runs the kernel again; with
  // create_graph=True the composite is differentiated at the saved logits.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(2);  // the logits' gradient; none for the arguments
    const Tensor& go = grads[0];
    if (!go.defined()) return out;
    auto* saved = static_cast<Saved<Args>*>(ctx->saved_data["saved"].toCapsule().get());
    const Reduction red = parse_reduction(saved->args.reduction);
    // the saved logits are unpacked only where they are used: the first backward needs none
    if (at::GradMode::is_enabled()) {
      const Tensor logits = ctx->get_saved_variables()[0];
      const Tensor value = composite(logits, saved->args, red);
      out[0] = torch::autograd::grad({value}, {logits}, {go}, /*retain_graph=*/true, /*create_graph=*/true)[0];
      return out;
    }
    Tensor grad = std::move(saved->grad);  // undefined after the first backward
    if (!grad.defined()) {
      const Tensor logits = ctx->get_saved_variables()[0];
      at::AutoDispatchBelowADInplaceOrView below;
      grad = std::get<1>(fused(logits, saved->args, true));
    }
    out[0] = scaled(std::move(grad), go, red);
    return out;
  }
};

// Named classes: the autograd node's name (grad_fn.name()) says which loss it is.
class SoftmaxFunction : public torch::autograd::Function<SoftmaxFunction>,
                        public LossFunction<SoftmaxArgs, softmax_fused, softmax_composite> {};
class SigmoidFunction : public torch::autograd::Function<SigmoidFunction>,
                        public LossFunction<SigmoidArgs, sigmoid_fused, sigmoid_composite> {};

// ---- the public ops' kernels --------------------------------------------------------------------------------
Tensor softmax_autograd(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                        const OptTensor& margin, double scale, double eps, double gamma, const OptTensor& alpha,
                        const OptTensor& sample_weight, int64_t ignore_index, c10::string_view reduction) {
  SoftmaxArgs a{target, weight, offset, margin, scale, eps, gamma, alpha, sample_weight, ignore_index,
                std::string(reduction)};
  if (any_needs_grad_or_dual(weight, offset, margin, alpha, sample_weight) || dual(logits) || functorch_active())
    return softmax_composite(logits, a, parse_reduction(reduction));
  if (!grad_mode_with(logits)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return std::get<0>(softmax_fused(logits, a, false));
  }
  return SoftmaxFunction::apply(logits, std::move(a));
}

Tensor sigmoid_autograd(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma,
                        double alpha, const OptTensor& sample_weight, int64_t ignore_index, bool focal,
                        c10::string_view reduction) {
  SigmoidArgs a{target, weight, gamma, alpha, sample_weight, ignore_index, focal, std::string(reduction)};
  if (any_needs_grad_or_dual(target, weight, sample_weight) || dual(logits) || functorch_active())
    return sigmoid_composite(logits, a, parse_reduction(reduction));
  if (!grad_mode_with(logits)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return std::get<0>(sigmoid_fused(logits, a, false));
  }
  return SigmoidFunction::apply(logits, std::move(a));
}

// Below autograd (inference tensors, AutoDispatchBelowAutograd): the kernel, no gradient.
Tensor softmax_plain(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                     const OptTensor& margin, double scale, double eps, double gamma, const OptTensor& alpha,
                     const OptTensor& sample_weight, int64_t ignore_index, c10::string_view reduction) {
  const SoftmaxArgs a{target, weight, offset, margin, scale, eps, gamma, alpha, sample_weight, ignore_index,
                      std::string(reduction)};
  return std::get<0>(softmax_fused(logits, a, false));
}

Tensor sigmoid_plain(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma, double alpha,
                     const OptTensor& sample_weight, int64_t ignore_index, bool focal, c10::string_view reduction) {
  const SigmoidArgs a{target, weight, gamma, alpha, sample_weight, ignore_index, focal, std::string(reduction)};
  return std::get<0>(sigmoid_fused(logits, a, false));
}

}  // namespace
}  // namespace cbops

TORCH_LIBRARY(cbbench, m) {
  m.def("softmax_cross_entropy(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_offset, "
        "Tensor? target_margin, float scale, float label_smoothing, float gamma, Tensor? alpha, "
        "Tensor? sample_weight, int ignore_index, str reduction) -> Tensor");
  m.def("sigmoid_focal(Tensor logits, Tensor target, Tensor? weight, float gamma, float alpha, "
        "Tensor? sample_weight, int ignore_index, bool focal, str reduction) -> Tensor");
  m.def("softmax_cross_entropy_fused(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_offset, "
        "Tensor? target_margin, float scale, float label_smoothing, float gamma, Tensor? alpha, "
        "Tensor? sample_weight, int ignore_index, str reduction, bool need_grad) -> (Tensor, Tensor)");
  m.def("sigmoid_focal_fused(Tensor logits, Tensor target, Tensor? weight, float gamma, float alpha, "
        "Tensor? sample_weight, int ignore_index, bool focal, str reduction, bool need_grad) -> (Tensor, Tensor)");
  m.def("loss_divisor(Tensor target, Tensor? weight, Tensor? sample_weight, int num_classes, int ignore_index, "
        "str reduction, bool floor) -> Tensor");
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

// Eager calls from cbbench/functional.py enter here rather than through torch.ops: the same op through the
// dispatcher (its Autograd kernel, then the device kernel), with pybind's argument conversion instead of
// torch.ops' schema-driven boxing -- at a training batch of 8x10 that boxing is a large share of the call.
// torch.compile traces torch.ops.cbbench.* (cbbench/ops/__init__.py chooses). The GIL is released for large
// calls only (releasing it costs more than a small call).
namespace cbops {
namespace {

constexpr int64_t kReleaseGilElements = 32768;

template <typename Fn>
Tensor call_op(const Tensor& logits, Fn&& fn) {
  if (logits.numel() >= kReleaseGilElements) {
    py::gil_scoped_release nogil;
    return fn();
  }
  return fn();
}

Tensor softmax_entry(const Tensor& logits, const Tensor& target, const OptTensor& weight, const OptTensor& offset,
                     const OptTensor& margin, double scale, double eps, double gamma, const OptTensor& alpha,
                     const OptTensor& sample_weight, int64_t ignore_index, const std::string& reduction) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbbench::softmax_cross_entropy", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                           const OptTensor&, double, double, double, const OptTensor&,
                                           const OptTensor&, int64_t, c10::string_view)>();
  return call_op(logits, [&] {
    return op.call(logits, target, weight, offset, margin, scale, eps, gamma, alpha, sample_weight, ignore_index,
                   reduction);
  });
}

Tensor sigmoid_entry(const Tensor& logits, const Tensor& target, const OptTensor& weight, double gamma, double alpha,
                     const OptTensor& sample_weight, int64_t ignore_index, bool focal, const std::string& reduction) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cbbench::sigmoid_focal", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&, double, double,
                                           const OptTensor&, int64_t, bool, c10::string_view)>();
  return call_op(logits, [&] {
    return op.call(logits, target, weight, gamma, alpha, sample_weight, ignore_index, focal, reduction);
  });
}

}  // namespace
}  // namespace cbops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cbbench's ops: schemas, autograd and composites (kernels/ops/ops.cpp); device kernels live in "
            "cbbench._cpu and cbbench._cuda";
  m.def("softmax_cross_entropy", &cbops::softmax_entry,
        "torch.ops.cbbench.softmax_cross_entropy for eager calls (same op, same dispatch; pybind arguments)");
  m.def("sigmoid_focal", &cbops::sigmoid_entry,
        "torch.ops.cbbench.sigmoid_focal for eager calls (same op, same dispatch; pybind arguments)");
  m.def("backend_override", [] {
    const char* v = std::getenv("CBBENCH_BACKEND");  // os.environ writes through to the C environment
    return std::string(v ? v : "");
  }, "The CBBENCH_BACKEND environment variable (\"\" when unset), read without Python's os.environ");
}
