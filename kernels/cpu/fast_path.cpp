// cbbench._C: the small-batch fast path of the CPU losses, as a torch extension.
//
// At a training batch of 8x10 a whole loss call -- forward and backward -- is ~30 us in eager PyTorch,
// and most of it is per-call overhead, not arithmetic. The Python op path (cbbench/ops: a Python
// autograd.Function over the Cython kernels) spends ~15 us more than eager in argument handling,
// Function.apply and a Python backward. This module does, for the common case only, the whole call
// in one C++ function: accept or decline the arguments, run cb_cpu_loss.h (the same code as the
// Cython module), and attach an autograd node written in C++ whose backward hands the forward's
// gradient over (scaled in place when grad_output is not 1) without entering Python.
//
// The fast path declines (returns None, and cbbench/functional.py takes the Python path, which
// validates and raises the public errors) anything that is not plainly valid: tensor subclasses,
// other devices or dtypes, spatial or non-contiguous inputs, per-class vectors that require grad, non-finite or out-of-range scalars, out-of-range targets, multi-hot targets. The
// rare backwards -- a second one through a retained graph (the gradient was handed over), and
// create_graph=True -- call cbbench.ops.autograd.slow_backward, the Python path's own.
#include <torch/extension.h>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "cb_cpu_loss.h"

namespace {

using at::Tensor;
using torch::autograd::variable_list;

int g_isa = cb_best_isa();  // set by cbbench._cpu.set_isa (one choice for both front ends)

enum class Kind { softmax, sigmoid_focal };

const char* reduction_name(int red) {
  switch (red) {
    case CB_RED_MEAN: return "mean";
    case CB_RED_WEIGHTED_MEAN: return "weighted_mean";
    case CB_RED_SUM: return "sum";
    default: return "none";
  }
}

// ---- accepting arguments (declining = std::nullopt / false) -----------------------------------
std::optional<Tensor> exact_tensor(py::handle h) {
  if (!THPVariable_CheckExact(h.ptr())) return std::nullopt;
  return THPVariable_Unpack(h.ptr());
}

bool plain_cpu(const Tensor& t) { return t.device().is_cpu() && t.layout() == at::kStrided && !t.is_conj() && !t.is_neg(); }

// A per-class vector: None, or a floating-point CPU tensor of shape (C,) that needs no gradient, held
// as float32 (as the Python path's cbbench/functional.py does).
bool class_vector(py::handle h, int64_t C, std::optional<Tensor>& out) {
  if (h.is_none()) return true;
  auto t = exact_tensor(h);
  if (!t || !plain_cpu(*t) || !at::isFloatingType(t->scalar_type()) || t->dim() != 1 || t->size(0) != C ||
      t->requires_grad())
    return false;
  out = (t->scalar_type() == at::kFloat && t->is_contiguous()) ? *t : t->to(at::kFloat).contiguous();
  return true;
}

bool real_in(py::handle h, double lo, double hi, bool lo_open, double& out) {
  PyObject* o = h.ptr();
  if (PyFloat_CheckExact(o)) {
    out = PyFloat_AS_DOUBLE(o);
  } else if (PyLong_CheckExact(o)) {
    out = PyLong_AsDouble(o);
    if (out == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
  } else {
    return false;
  }
  return std::isfinite(out) && (lo_open ? out > lo : out >= lo) && out <= hi;
}

bool int64_value(py::handle h, int64_t& out) {
  PyObject* o = h.ptr();
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (overflow || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  out = v;
  return true;
}

int reduction_code(py::handle h) {
  if (!PyUnicode_CheckExact(h.ptr())) return -1;
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
  if (!s) {
    PyErr_Clear();
    return -1;
  }
  for (int red : {CB_RED_MEAN, CB_RED_WEIGHTED_MEAN, CB_RED_SUM, CB_RED_NONE})
    if (std::strcmp(s, reduction_name(red)) == 0) return red;
  return -1;
}

// The validated arguments of one call (also what a slow backward needs to run the call again).
struct Call {
  Kind kind = Kind::softmax;
  Tensor logits, target;
  std::optional<Tensor> weight, offset, margin;
  double scale = 1.0, label_smoothing = 0.0, gamma = 0.0, alpha = -1.0;
  bool focal = false;
  int64_t ignore_index = -100;
  int red = CB_RED_MEAN;
};

bool accept_common(py::handle logits, py::handle target, py::handle weight, py::handle ignore_index,
                   py::handle reduction, Call& c) {
  auto z = exact_tensor(logits);
  if (!z || !plain_cpu(*z) || (z->scalar_type() != at::kFloat && z->scalar_type() != at::kDouble) ||
      z->dim() != 2 || z->size(1) < 1 || z->size(1) >= (int64_t(1) << 31) || !z->is_contiguous())
    return false;
  auto y = exact_tensor(target);
  if (!y || !plain_cpu(*y) || y->scalar_type() != at::kLong || y->dim() != 1 || y->size(0) != z->size(0) ||
      !y->is_contiguous())
    return false;
  c.logits = *z;
  c.target = *y;
  c.red = reduction_code(reduction);
  return c.red >= 0 && int64_value(ignore_index, c.ignore_index) && class_vector(weight, z->size(1), c.weight);
}

// ---- running a call ------------------------------------------------------------------------
const float* ptr(const std::optional<Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; }

// (loss, grad) of the call, or nullopt when a target is out of range (declined: the Python path
// raises the error that names it).
std::optional<std::pair<Tensor, Tensor>> run(const Call& c, bool need_grad) {
  const Tensor& z = c.logits;
  const int64_t M = z.size(0), C = z.size(1);
  int64_t bad = -1;
  const double divisor = cb_index_divisor(c.target.data_ptr<int64_t>(), M, C, ptr(c.weight), c.ignore_index, c.red, &bad);
  if (bad >= 0) return std::nullopt;
  Tensor loss_rows = c.red == CB_RED_NONE ? at::empty({M}, z.options()) : Tensor();
  Tensor grad = need_grad ? at::empty_like(z) : Tensor();
  const int threads = cb_loss_threads(M, C, at::get_num_threads());
  double* sums = cb_chunk_buffer(M, cb_chunk_rows(C));
  TORCH_CHECK(sums, "cbbench._C: out of memory");
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cbbench_fast_path", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* lp = loss_rows.defined() ? loss_rows.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
    const scalar_t g = scalar_t(1.0 / divisor);
    if (c.kind == Kind::softmax) {
      total = cb_softmax_rows<scalar_t>(g_isa, zp, c.target.data_ptr<int64_t>(), M, C, ptr(c.weight), ptr(c.offset),
                                        ptr(c.margin), scalar_t(c.scale), scalar_t(c.label_smoothing), c.ignore_index,
                                        g, lp, gp, threads, sums);
    } else {
      total = cb_sigmoid_rows<scalar_t>(g_isa, zp, c.target.data_ptr<int64_t>(), nullptr, M, C, ptr(c.weight),
                                        scalar_t(c.gamma), scalar_t(c.alpha), c.focal, c.ignore_index, g, lp, gp,
                                        threads, sums);
    }
  });
  free(sums);
  if (c.red == CB_RED_NONE) return std::make_pair(loss_rows, grad);
  Tensor loss = at::empty({}, z.options());
  if (z.scalar_type() == at::kDouble) {
    *loss.data_ptr<double>() = total / divisor;
  } else {
    *loss.data_ptr<float>() = float(total / divisor);
  }
  return std::make_pair(loss, grad);
}

// ---- the autograd node -------------------------------------------------------------------------
struct FusedLossBackward : public torch::autograd::Node {
  Call call;                           // logits held by `logits` below, not here
  torch::autograd::SavedVariable logits;
  Tensor grad;                         // the forward's gradient of the reduced loss, until handed over

  std::string name() const override { return "CbbenchFusedLossBackward"; }

  void release_variables() override {
    grad.reset();
    logits.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const Tensor& go = grads[0];
    if (!go.defined()) return {Tensor()};
    if (grad.defined() && !at::GradMode::is_enabled()) {
      Tensor g = std::move(grad);
      grad.reset();
      const Tensor factor = call.red == CB_RED_NONE ? go.unsqueeze(1) : go;
      if (go.key_set().has_any(c10::functorch_transforms_ks)) {
        return {g.mul(factor)};  // a batch of grad_outputs (jacobian(vectorize=True)): out of place
      }
      if (call.red == CB_RED_NONE || go.item<double>() != 1.0) {
        g.mul_(factor);
      }
      return {g};
    }
    // create_graph=True, or a backward after the gradient was handed over: the Python path's own
    Tensor z = logits.unpack(getptr());
    py::gil_scoped_acquire gil;
    py::object slow = py::module_::import("cbbench.ops.autograd").attr("slow_backward");
    py::object result = slow(call.kind == Kind::softmax ? "softmax_cross_entropy" : "sigmoid_focal", z,
                             call.target, call.weight, call.offset, call.margin, call.scale, call.label_smoothing,
                             call.gamma, call.alpha, call.focal, call.ignore_index, reduction_name(call.red), go);
    return {result.cast<Tensor>()};
  }
};

py::object finish(Call& c) {
  const bool need_grad = c.logits.requires_grad() && at::GradMode::is_enabled();
  std::optional<std::pair<Tensor, Tensor>> out;
  if (c.logits.numel() >= CB_MIN_ELEMENTS_PER_THREAD) {
    py::gil_scoped_release nogil;
    out = run(c, need_grad);
  } else {
    out = run(c, need_grad);
  }
  if (!out) return py::none();
  Tensor loss = out->first;
  if (need_grad) {
    auto node = c10::make_intrusive<FusedLossBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(c.logits));
    node->logits = torch::autograd::SavedVariable(c.logits, false);
    node->grad = out->second;
    c.logits = Tensor();
    node->call = std::move(c);
    torch::autograd::set_history(loss, node);
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(loss));
}

py::object softmax_cross_entropy(py::handle logits, py::handle target, py::handle weight, py::handle logit_offset,
                                 py::handle target_margin, py::handle scale, py::handle label_smoothing,
                                 py::handle ignore_index, py::handle reduction) {
  Call c;
  c.kind = Kind::softmax;
  if (!accept_common(logits, target, weight, ignore_index, reduction, c)) return py::none();
  const int64_t C = c.logits.size(1);
  if (!class_vector(logit_offset, C, c.offset) || !class_vector(target_margin, C, c.margin) ||
      !real_in(scale, 0.0, INFINITY, true, c.scale) || !real_in(label_smoothing, 0.0, 1.0, false, c.label_smoothing))
    return py::none();
  return finish(c);
}

py::object sigmoid_focal(py::handle logits, py::handle target, py::handle weight, py::handle gamma, py::handle alpha,
                         py::handle ignore_index, py::handle reduction) {
  Call c;
  c.kind = Kind::sigmoid_focal;
  if (!accept_common(logits, target, weight, ignore_index, reduction, c)) return py::none();
  if (!gamma.is_none()) {
    if (!real_in(gamma, 0.0, INFINITY, false, c.gamma)) return py::none();
    c.focal = true;
  }
  if (!alpha.is_none() && !real_in(alpha, 0.0, 1.0, false, c.alpha)) return py::none();
  return finish(c);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cbbench's small-batch fast path for CPU losses (see kernels/cpu/fast_path.cpp)";
  m.def("softmax_cross_entropy", &softmax_cross_entropy,
        "The loss of cbbench.functional.softmax_cross_entropy on 2-D CPU inputs, or None (declined)");
  m.def("sigmoid_focal", &sigmoid_focal,
        "Sigmoid cross-entropy (gamma None) or focal loss on 2-D CPU inputs with class-index targets, or None");
  m.def("set_isa", [](int isa) {
    TORCH_CHECK(cb_isa_supported(isa), "cbbench._C.set_isa: instruction set ", isa, " is not available");
    g_isa = isa;
  });
  m.def("get_isa", [] { return g_isa; });
}
