"""Methods, schedules and training details: the loss each method trains with, DRW / DRS switching epoch,
the paper learning-rate schedule, sigmoid bias initialisation and weight-decay exclusion, crop/flip."""
import math

import numpy as np
import pytest
import torch

import cbbench
from cbbench import nn as cbnn
from cbbench.harness import METHODS
from cbbench.harness.methods import Method
from cbbench.harness.models import ResNet32, build_model, init_sigmoid_bias
from cbbench.harness.train import TrainConfig, _optimizer, lr_at_epoch, random_crop_flip, resolve_config

COUNTS = [120, 40, 9, 3]


def test_every_method_is_listed_once():
    expected = {"softmax", "sigmoid", "focal", "cb_softmax", "cb_sigmoid", "cb_focal", "softmax_focal",
                "cb_softmax_focal", "inverse_freq",
                "inverse_freq_sigmoid", "inverse_freq_focal", "sqrt_inverse",
                "class_balanced_sampling", "sqrt_sampling", "progressive_sampling", "cb_sampling", "balanced_softmax",
                "logit_adjustment", "logit_adjustment_posthoc", "ldam", "ldam_drw", "cb_drw", "drs",
                "measured_softmax", "measured_sigmoid", "measured_focal"}
    assert set(METHODS) == expected and len(METHODS) == len(expected)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_with_a_cbbench_loss(name):
    method = Method(name, COUNTS, switch_epoch=3)
    assert type(method.loss).__module__ == cbnn.__name__
    logits = torch.randn(6, 4, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = method.loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_losses_match_the_formulas():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    n = torch.tensor(COUNTS, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy
    w = cbbench.class_balanced_weights(COUNTS, 0.9999).double()
    cb = Method("cb_softmax", COUNTS).loss
    assert cb(logits, target).item() == pytest.approx((w[target] * ce(logits, target, reduction="none")).mean().item(),
                                                      rel=1e-5)
    bs = Method("balanced_softmax", COUNTS).loss
    assert bs(logits, target).item() == pytest.approx(ce(logits + torch.log(n), target).item(), rel=1e-5)
    inv = Method("inverse_freq", COUNTS).loss
    w_inv = (1 / n) * 4 / (1 / n).sum()
    assert inv(logits, target).item() == pytest.approx((w_inv[target] * ce(logits, target, reduction="none")).mean()
                                                       .item(), rel=1e-5)


def test_drw_switches_weights_at_the_switch_epoch():
    for name in ("cb_drw", "ldam_drw"):
        method = Method(name, COUNTS, beta=0.999, switch_epoch=8)
        method.start_epoch(7)
        assert torch.equal(method.loss.weight, torch.ones(4))
        storage = method.loss.weight.data_ptr()
        method.start_epoch(8)
        torch.testing.assert_close(method.loss.weight, cbbench.class_balanced_weights(COUNTS, 0.999))
        assert method.loss.weight.data_ptr() == storage  # in place: a captured CUDA graph sees it
    with pytest.raises(ValueError, match="switch_epoch"):
        Method("drs", COUNTS)


def test_drw_divides_by_the_applied_weights_like_the_ldam_drw_code():
    # after the switch the loss is F.cross_entropy(z, y, weight=w): sum w_y l / sum w_y, not / N
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g)
    target = torch.randint(0, 4, (16,), generator=g)
    method = Method("cb_drw", COUNTS, beta=0.999, switch_epoch=1)
    method.start_epoch(1)
    w = cbbench.class_balanced_weights(COUNTS, 0.999)
    want = torch.nn.functional.cross_entropy(logits, target, weight=w)
    torch.testing.assert_close(method.loss(logits, target), want)
    assert Method("cb_softmax", COUNTS).reduction == "mean"  # the paper's convention elsewhere


def test_switching_methods_reject_a_switch_past_the_last_epoch():
    with pytest.raises(ValueError, match="never reaches"):
        resolve_config(TrainConfig("digits-lt", "cb_drw", epochs=5, milestones=(10,), lr_factors=(0.1,)))
    resolve_config(TrainConfig("digits-lt", "softmax", epochs=5, milestones=(10,), lr_factors=(0.1,)))


@pytest.mark.parametrize("epochs", [2, 3, 5, 10, 40])
def test_scaled_milestones_stay_strictly_increasing(epochs):
    config = resolve_config(TrainConfig("digits-lt", "drs", epochs=epochs))
    assert all(a < b for a, b in zip(config.milestones, config.milestones[1:])), config.milestones
    assert config.milestones[0] < epochs


@pytest.mark.parametrize("epochs, switch", [(200, 160), (40, 32), (10, 8), (2, 1)])
def test_switch_epoch_is_the_first_lr_decay_and_scales_with_epochs(epochs, switch):
    cifar = resolve_config(TrainConfig("cifar10-lt", "cb_drw", epochs=epochs))
    assert cifar.milestones[0] == switch
    assert lr_at_epoch(cifar, switch - 1) > lr_at_epoch(cifar, switch) * 50


def test_paper_lr_schedule():
    config = resolve_config(TrainConfig("cifar10-lt", "softmax"))
    assert (config.epochs, config.batch_size, config.weight_decay, config.model) == (200, 128, 2e-4, "resnet32")
    expected = {0: 0.02, 1: 0.04, 4: 0.1, 5: 0.1, 159: 0.1, 160: 0.001, 179: 0.001, 180: 1e-5, 199: 1e-5}
    for epoch, lr in expected.items():
        assert lr_at_epoch(config, epoch) == pytest.approx(lr)


def test_posthoc_adjustment_changes_predictions_by_the_log_prior():
    method = Method("logit_adjustment_posthoc", COUNTS, tau=1.0)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    # equal logits: the adjusted prediction is the rarest class; plain argmax would say class 0
    logits = torch.zeros(1, 4)
    assert method.predict(logits).item() == 3
    logits = torch.log(prior).float()[None] + torch.tensor([[0.0, 0.0, 0.01, -0.01]])
    assert method.predict(logits).item() == 2
    assert Method("softmax", COUNTS).predict(torch.zeros(1, 4)).item() == 0


def test_sigmoid_bias_init_and_no_weight_decay():
    model = build_model("mlp", 5, 10)
    bias = init_sigmoid_bias(model, 10)
    assert torch.allclose(bias, torch.full((10,), -math.log(9)))
    config = resolve_config(TrainConfig("digits-lt", "cb_focal"))
    opt = _optimizer(model, config, [bias], torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert no_decay["weight_decay"] == 0.0 and no_decay["params"] == [bias]
    assert decay["weight_decay"] == config.weight_decay and all(p is not bias for p in decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_ldam_uses_a_cosine_classifier():
    model = build_model("logistic", 5, 3, normed=True)
    out = model(torch.randn(7, 5) * 100)
    assert out.abs().max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="bias"):
        init_sigmoid_bias(model, 3)


def test_resnet32_shape_and_depth():
    model = ResNet32(10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31  # 1 + 3 stages x 5 blocks x 2, plus the classifier: 32 layers
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(464_154, rel=0.01)


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    out = random_crop_flip(images.repeat(50, 1, 1, 1), torch.Generator().manual_seed(0), padding=2)
    assert out.shape == (100, 3, 8, 8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for k in range(100):
        src = padded[k % 2]
        candidates = [(src[:, i:i + 8, j:j + 8], False) for i in range(5) for j in range(5)]
        candidates += [(c.flip(2), True) for c, _ in candidates]
        matches = [flipped for c, flipped in candidates if torch.equal(c, out[k])]
        assert matches, k
        flips += matches[0]
    assert 25 <= flips <= 75  # about half flipped
    assert (out == 0).any()  # some crops reach into the black padding


@pytest.mark.parametrize("bad, match", [
    (dict(method="softmax_plus"), "unknown method"),
    (dict(dataset="imagenet-21k"), "unknown dataset"),
    (dict(epochs=0), "epochs"),
    (dict(beta=1.0), "beta"),
    (dict(model="resnet32"), "does not fit"),
    (dict(device="tpu"), "device"),
    (dict(accel="cuda_graph", device="cpu"), "CUDA"),
])
def test_bad_configs_are_rejected(bad, match):
    kwargs = dict(dataset="digits-lt", method="softmax")
    kwargs.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_config(TrainConfig(**kwargs))


def test_methods_reject_empty_classes():
    with pytest.raises(ValueError, match="no training example"):
        Method("softmax", [5, 0, 2])


def test_lr_is_a_tensor_read_each_step():
    model = build_model("logistic", 3, 2)
    config = resolve_config(TrainConfig("synthetic-lt", "softmax", momentum=0.0, weight_decay=0.0))
    opt = _optimizer(model, config, [], torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)
    before = model.classifier.weight.detach().clone()
    lr.fill_(0.5)
    model.classifier.weight.grad = torch.ones_like(before)
    model.classifier.bias.grad = torch.zeros(2)
    opt.step()
    np.testing.assert_allclose(model.classifier.weight.detach(), before - 0.5)
