"""Public API: argument checking, backend choice, modules."""
import pytest
import torch
import torch.nn.functional as TF

import cbbench
from cbbench import functional as F
from cbbench import ops
from cbbench import reference as R

LOSSES = {
    "softmax": F.softmax_cross_entropy,
    "sigmoid": F.sigmoid_cross_entropy,
    "focal": F.sigmoid_focal_loss,
}


def _inputs(n=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g), torch.rand(c, generator=g)


@pytest.mark.parametrize("name", list(LOSSES))
def test_reference_backend_equals_reference_module(name):
    z, y, w = _inputs()
    fn = LOSSES[name]
    ref = {"softmax": R.softmax_cross_entropy, "sigmoid": R.sigmoid_cross_entropy,
           "focal": R.sigmoid_focal_loss}[name]
    for reduction in ("mean", "weighted_mean", "sum", "none"):
        torch.testing.assert_close(fn(z, y, w, reduction=reduction, backend="reference"),
                                   ref(z, y, w, reduction=reduction))


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_with_fp32_weight(name, dtype):
    z, y, w = _inputs(n=64, c=10)
    zh = z.to(dtype).requires_grad_(True)
    loss = LOSSES[name](zh, y, w)
    assert loss.dtype == torch.float32
    want = LOSSES[name](zh.detach().float(), y, w, backend="reference")
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert zh.grad.dtype == dtype and torch.isfinite(zh.grad.float()).all()


def test_weight_of_other_float_dtype_and_list():
    z, y, w = _inputs()
    a = F.softmax_cross_entropy(z, y, w.double())
    b = F.softmax_cross_entropy(z, y, w.tolist())
    torch.testing.assert_close(a.float(), b)


def test_integer_target_dtypes_accepted():
    z, y, w = _inputs()
    base = F.softmax_cross_entropy(z, y, w)
    for dt in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(F.softmax_cross_entropy(z, y.to(dt), w), base)


# ---------------------------------------------------------------- bad input: clear errors
@pytest.mark.parametrize("name", list(LOSSES))
def test_errors_name_the_argument(name):
    fn = LOSSES[name]
    z, y, w = _inputs()
    with pytest.raises(ValueError, match=r"target value 4 is out of range for 4 classes"):
        fn(z, torch.tensor([0, 1, 2, 4, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="target value -3 is out of range"):
        fn(z, torch.tensor([0, 1, 2, -3, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="target shape"):
        fn(z, y[:5])
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        fn(z, y, torch.ones(3))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(z, y, reduction="avg")
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(z, y, backend="triton")
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        fn(z.long(), y)
    with pytest.raises(ValueError, match="logits must have shape"):
        fn(z[0], y[0])
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        fn(z, y, ignore_index=1.5)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        fn(z, y.bool())
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        fn(z, y.tolist())


def test_softmax_specific_errors():
    z, y, _ = _inputs()
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        F.softmax_cross_entropy(z, TF.one_hot(y, 4).float())
    with pytest.raises(ValueError, match=r"label_smoothing must be a finite number in \[0.0, 1.0\]"):
        F.softmax_cross_entropy(z, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        F.softmax_cross_entropy(z, y, scale=0.0)
    with pytest.raises(ValueError, match=r"logit_offset must have shape \(4,\)"):
        F.softmax_cross_entropy(z, y, logit_offset=torch.zeros(5))
    with pytest.raises(ValueError, match=r"target_margin must have shape \(4,\)"):
        F.softmax_cross_entropy(z, y, target_margin=torch.zeros(4, 1))


def test_sigmoid_specific_errors():
    z, y, _ = _inputs()
    with pytest.raises(ValueError, match="multi-hot"):
        F.sigmoid_cross_entropy(z, torch.zeros(8, 3))
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        F.sigmoid_focal_loss(z, y, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        F.sigmoid_focal_loss(z, y, alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        F.sigmoid_focal_loss(z, y, gamma=float("nan"))


def test_ignore_index_is_not_out_of_range():
    z, y, w = _inputs()
    y[0] = -100
    y[1] = 7
    with pytest.raises(ValueError, match="target value 7"):
        F.softmax_cross_entropy(z, y)
    y[1] = 0
    assert torch.isfinite(F.softmax_cross_entropy(z, y, w))
    y[0] = 0
    y[2] = 9
    assert torch.isfinite(F.softmax_cross_entropy(z, y, w, ignore_index=9))


# ---------------------------------------------------------------- backend choice
def test_backend_env_override(monkeypatch):
    dev = torch.device("cpu")
    monkeypatch.setenv("CBBENCH_BACKEND", "reference")
    assert ops.resolve_backend("auto", dev) == "reference"
    monkeypatch.setenv("CBBENCH_BACKEND", "bogus")
    with pytest.raises(ValueError, match="CBBENCH_BACKEND"):
        ops.resolve_backend("auto", dev)
    monkeypatch.delenv("CBBENCH_BACKEND")
    expected = "cpu" if ops.kernel_module("cpu") is not None else "reference"
    assert ops.resolve_backend("auto", dev) == expected


def test_cuda_backend_on_cpu_tensors_is_an_error():
    z, y, _ = _inputs()
    with pytest.raises(ValueError, match="backend='cuda' needs cuda tensors"):
        F.softmax_cross_entropy(z, y, backend="cuda")


def test_missing_kernel_module_gives_clear_error(monkeypatch):
    monkeypatch.setitem(ops.loading._loaded, "cpu", (None, "ModuleNotFoundError: No module named 'cbbench._cpu'"))
    z, y, _ = _inputs()
    with pytest.raises(RuntimeError, match="cpu kernels of cbbench are not built"):
        F.softmax_cross_entropy(z, y, backend="cpu")
    assert ops.resolve_backend("auto", torch.device("cpu")) == "reference"


def test_weight_requiring_grad_gets_its_gradient_on_every_backend():
    z, y, w = _inputs()
    grads = {}
    for backend in ("auto", "reference"):
        wr = w.clone().requires_grad_(True)
        F.softmax_cross_entropy(z, y, wr, backend=backend).backward()
        grads[backend] = wr.grad
    assert grads["auto"] is not None and grads["auto"].abs().sum() > 0
    torch.testing.assert_close(grads["auto"], grads["reference"])


# ---------------------------------------------------------------- modules
def test_class_balanced_loss_module():
    counts = [100, 30, 10, 1]
    z, y, _ = _inputs()
    w = cbbench.class_balanced_weights(counts, 0.999)
    for loss_type, fn in (("softmax", F.softmax_cross_entropy), ("sigmoid", F.sigmoid_cross_entropy)):
        m = cbbench.ClassBalancedLoss(counts, beta=0.999, loss_type=loss_type)
        torch.testing.assert_close(m(z, y), fn(z, y, w))
    m = cbbench.ClassBalancedLoss(counts, beta=0.999, loss_type="focal", gamma=0.5)
    torch.testing.assert_close(m(z, y), F.sigmoid_focal_loss(z, y, w, gamma=0.5))
    assert "weight" in dict(m.named_buffers())
    m64 = m.to(torch.float64)
    assert m64.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="samples_per_class has 4 classes but logits have C = 5"):
        m(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="loss_type must be one of"):
        cbbench.ClassBalancedLoss(counts, loss_type="hinge")
    with pytest.raises(ValueError, match="zero training samples"):
        cbbench.ClassBalancedLoss([3, 0, 1])
    with pytest.raises(ValueError, match="beta"):
        cbbench.ClassBalancedLoss(counts, beta=1.0)


def test_class_balanced_loss_state_dict_roundtrip_and_drw_switch():
    m = cbbench.ClassBalancedLoss([10, 5, 1], beta=0.99)
    m2 = cbbench.ClassBalancedLoss([1, 1, 1], beta=0.99)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.weight, m.weight)
    m2.set_weight(torch.ones(3))
    torch.testing.assert_close(m2.weight, torch.ones(3))


def test_logit_adjustment_family_modules():
    counts = [50, 20, 10, 1]
    z, y, _ = _inputs()
    prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    torch.testing.assert_close(cbbench.BalancedSoftmaxLoss(counts)(z, y),
                               TF.cross_entropy(z + torch.log(torch.tensor(counts, dtype=torch.float32)), y))
    torch.testing.assert_close(cbbench.LogitAdjustedLoss(counts, tau=2.0)(z, y),
                               TF.cross_entropy(z + 2.0 * torch.log(prior), y))
    m = torch.tensor(counts, dtype=torch.float32).pow(-0.25)
    m = m * (0.5 / m.max())
    torch.testing.assert_close(cbbench.LDAMLoss(counts)(z, y),
                               TF.cross_entropy(30.0 * (z - TF.one_hot(y, 4) * m[y].unsqueeze(1)), y))
    with pytest.raises(ValueError, match="samples_per_class has 4 classes"):
        cbbench.LDAMLoss(counts)(torch.randn(2, 3), torch.tensor([0, 1]))
    assert {"logit_offset"} <= set(dict(cbbench.BalancedSoftmaxLoss(counts).named_buffers()))


def test_plain_modules_match_functional():
    z, y, w = _inputs()
    torch.testing.assert_close(cbbench.SoftmaxCrossEntropyLoss(w, label_smoothing=0.1)(z, y),
                               F.softmax_cross_entropy(z, y, w, label_smoothing=0.1))
    torch.testing.assert_close(cbbench.SigmoidCrossEntropyLoss(w, reduction="sum")(z, y),
                               F.sigmoid_cross_entropy(z, y, w, reduction="sum"))
    torch.testing.assert_close(cbbench.SigmoidFocalLoss(w, gamma=1.0, alpha=0.25)(z, y),
                               F.sigmoid_focal_loss(z, y, w, gamma=1.0, alpha=0.25))


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = (x[:, 0] > 1.0).long() + (x[:, 1] > 1.5).long()
    counts = torch.bincount(y, minlength=3)
    model = torch.nn.Linear(5, 3)
    crit = cbbench.ClassBalancedLoss(counts, beta=0.999, loss_type="softmax")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = crit(model(x), y).item()
    for _ in range(100):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    pred = model(x).argmax(1)
    recall = [(pred[y == c] == c).float().mean().item() for c in range(3)]
    assert min(recall) > 0.5, recall


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_jit_trace_records_the_loss_not_a_constant(backend):
    # the tracer records only ATen ops: a kernel call was recorded as the empty tensor it fills, so the
    # traced module returned garbage (0) for every new input; traced calls take the reference
    if backend == "cpu" and ops.kernel_module("cpu") is None:
        pytest.skip("CPU kernels not built")
    import warnings
    counts = [50, 20, 5, 2]
    z, y, _ = _inputs(6, 4, seed=3)
    fresh = torch.randn(6, 4, generator=torch.Generator().manual_seed(4)) * 5
    hidden, fresh_hidden = torch.randn(6, 8), torch.randn(6, 8)
    modules = [(cbbench.ClassBalancedLoss(counts, 0.99, loss_type, backend=backend), z, fresh)
               for loss_type in ("softmax", "sigmoid", "focal")]
    modules.append((cbbench.nn.ClassBalancedLinearLoss(8, counts, 0.99, backend=backend), hidden, fresh_hidden))
    for module, example, new in modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace is deprecated
            traced = torch.jit.trace(module, (example, y), check_trace=False)
        a = new.clone().requires_grad_(True)
        b = new.clone().requires_grad_(True)
        got, want = traced(a, y), module(b, y)
        torch.testing.assert_close(got, want)
        got.backward()
        want.backward()
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_focal_alpha_minus_one_is_torchvisions_no_alpha(backend):
    # torchvision.ops.sigmoid_focal_loss: "alpha ... or -1 for ignore"; its formula (from its docs),
    # summed over classes per sample
    if backend == "cpu" and ops.kernel_module("cpu") is None:
        pytest.skip("CPU kernels not built")
    z, y, w = _inputs(8, 4, seed=5)
    t = TF.one_hot(y, 4).float()
    p = torch.sigmoid(z)
    p_t = p * t + (1 - p) * (1 - t)
    per_element = TF.binary_cross_entropy_with_logits(z, t, reduction="none") * (1 - p_t) ** 2
    for alpha in (-1, -1.0):
        got = F.sigmoid_focal_loss(z, y, gamma=2.0, alpha=alpha, reduction="sum", backend=backend)
        torch.testing.assert_close(got, per_element.sum())
        torch.testing.assert_close(got, F.sigmoid_focal_loss(z, y, gamma=2.0, alpha=None, reduction="sum",
                                                             backend=backend), rtol=0, atol=0)
        head = F.linear_sigmoid_focal_loss(torch.eye(4), torch.eye(4), torch.arange(4), alpha=alpha,
                                           backend=backend)
        assert torch.isfinite(head)
    with_alpha = (0.25 * t + 0.75 * (1 - t)) * per_element
    torch.testing.assert_close(F.sigmoid_focal_loss(z, y, gamma=2.0, alpha=0.25, reduction="sum", backend=backend),
                               with_alpha.sum())
    with pytest.raises(ValueError, match="alpha"):
        F.sigmoid_focal_loss(z, y, alpha=-0.5, backend=backend)


def test_set_weight_takes_one_value_per_class_or_a_scalar():
    # a wrong shape raised torch's bare broadcasting RuntimeError ((2,) into (3,)) or, for (1, 3),
    # "output with shape [3] doesn't match the broadcast shape"
    for module in (cbbench.ClassBalancedLoss([10, 5, 1], beta=0.99),
                   cbbench.nn.ClassBalancedLinearLoss(4, [10, 5, 1], beta=0.99)):
        for bad in ([1.0, 2.0], torch.ones(1, 3), torch.ones(4)):
            with pytest.raises(ValueError, match=r"set_weight: weight must have shape \(3,\)"):
                module.set_weight(bad)
        with pytest.raises(TypeError, match="set_weight"):
            module.set_weight("abc")
        module.set_weight([1.0, 2.0, 3.0])
        torch.testing.assert_close(module.weight, torch.tensor([1.0, 2.0, 3.0]))
        module.set_weight(0.5)
        torch.testing.assert_close(module.weight, torch.full((3,), 0.5))


def test_jit_script_gives_a_clear_error():
    # TorchScript used to fail on the first Python construct of forward ("keyword-arg expansion is not
    # supported", "cannot statically infer the expected size of a list"), also inside a user's model
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)
            self.criterion = cbbench.nn.LDAMLoss([5, 3, 1])

        def forward(self, x, y):
            return self.criterion(self.fc(x), y)

    counts = [5, 3, 1]
    for module in (cbbench.ClassBalancedLoss(counts), cbbench.nn.SigmoidFocalLoss(),
                   cbbench.nn.BalancedSoftmaxLoss(counts), cbbench.nn.ClassBalancedLinearLoss(3, counts), Model()):
        with pytest.raises(RuntimeError, match=r"cannot be compiled by torch.jit.script.*torch.compile"):
            torch.jit.script(module)


def test_non_numeric_options_are_clear_type_errors():
    # weight="abc" escaped as torch's "new(): invalid data type 'str'"; gamma="x" / tau="x" as
    # float()'s "could not convert string to float"
    z, y, _ = _inputs()
    for name, fn in LOSSES.items():
        with pytest.raises(TypeError, match=f"{fn.__name__}: weight must be a tensor or a sequence of numbers"):
            fn(z, y, "abcd")
        with pytest.raises(TypeError, match=f"{fn.__name__}: weight must hold real numbers"):
            fn(z, y, torch.ones(4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="ClassBalancedLoss: gamma must be a real number"):
        cbbench.ClassBalancedLoss([5, 3], loss_type="focal", gamma="x")
    with pytest.raises(ValueError, match="ClassBalancedLoss: gamma"):
        cbbench.ClassBalancedLoss([5, 3], loss_type="focal", gamma=-1.0)
    with pytest.raises(TypeError, match="LogitAdjustedLoss: tau must be a real number"):
        cbbench.LogitAdjustedLoss([5, 3], tau="x")
    with pytest.raises(ValueError, match="LogitAdjustedLoss: tau"):
        cbbench.LogitAdjustedLoss([5, 3], tau=float("nan"))


@pytest.mark.parametrize("name", list(LOSSES))
def test_sparse_and_nested_inputs_are_clear_errors(name):
    # torch's internals answered: "unsupported memory format option Contiguous", "reshape is not
    # implemented for sparse tensors", "NestedTensorImpl doesn't support sizes"
    z, y, _ = _inputs()
    fn = LOSSES[name]
    cases = [(z.to_sparse(), y, "logits", "sparse_coo"), (z.to_sparse_csr(), y, "logits", "sparse_csr"),
             (torch.nested.nested_tensor([z, z[:3]]), y, "logits", "nested"),
             (z, y.to_sparse(), "target", "sparse_coo")]
    if name != "softmax":
        cases.append((z, torch.zeros_like(z).to_sparse(), "target", "sparse_coo"))  # multi-hot
    for backend in ("auto", "reference"):
        for logits, target, what, kind in cases:
            match = f"{fn.__name__}: {what} must be a dense .strided. tensor, got a {kind}"
            with pytest.raises(TypeError, match=match):
                fn(logits, target, backend=backend)


def test_scalar_options_that_require_grad_are_rejected_not_detached():
    # float(tensor) dropped the gradient of a learnable scale / gamma with only a UserWarning
    z, y, _ = _inputs()
    learnable = torch.tensor(2.0, requires_grad=True)
    for backend in ("auto", "reference"):
        with pytest.raises(TypeError, match="softmax_cross_entropy: scale is a tensor that requires grad"):
            F.softmax_cross_entropy(z, y, scale=learnable, backend=backend)
        with pytest.raises(TypeError, match="sigmoid_focal_loss: gamma is a tensor that requires grad"):
            F.sigmoid_focal_loss(z, y, gamma=learnable, backend=backend)
        torch.testing.assert_close(F.softmax_cross_entropy(z, y, scale=learnable.detach(), backend=backend),
                                   F.softmax_cross_entropy(z, y, scale=2.0, backend=backend))
