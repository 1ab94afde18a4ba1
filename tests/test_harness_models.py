"""The ImageNet ResNets of the large-scale recipes, backbone weights, and the optimizer / schedule
options those recipes need (cosine decay, Nesterov, no decay on normalisation parameters, a backbone
learning-rate factor)."""
import math

import pytest
import torch

from cbbench.harness.models import ResNet, build_model, load_backbone_weights
from cbbench.harness.train import TrainConfig, _optimizer, lr_at_epoch, resolve_config


@pytest.mark.parametrize("name, params", [
    # torchvision's resnet50 / resnext50_32x4d / resnet152 with 1000 classes have exactly these counts
    ("resnet50", 25_557_032), ("resnext50", 25_028_904), ("resnet152", 60_192_808),
    # OLTR's ResNet-10: BasicBlock x [1, 1, 1, 1]
    ("resnet10", 5_418_792),
])
def test_imagenet_resnets_have_the_reference_parameter_counts(name, params):
    model = build_model(name, 0, 1000)
    assert sum(p.numel() for p in model.parameters()) == params
    assert isinstance(model, ResNet) and model.classifier.out_features == 1000


def test_resnet_runs_on_small_crops_and_uses_torchvision_names():
    model = build_model("resnet10", 0, 7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    names = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.0.bn2.weight", "classifier.weight"} <= names
    grouped = build_model("resnext50", 0, 3)
    assert grouped.layer1[0].conv2.groups == 32 and grouped.layer1[0].conv2.out_channels == 128


def test_backbone_weights_load_all_but_the_classifier(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet10", 0, 1000)
    state = {k.replace("classifier.", "fc."): v for k, v in source.state_dict().items()}  # torchvision names
    torch.save(state, tmp_path / "w.pth")
    target = build_model("resnet10", 0, 5)
    head = target.classifier.weight.detach().clone()
    loaded = load_backbone_weights(target, str(tmp_path / "w.pth"))
    assert "layer3.0.conv1.weight" in loaded and not any(k.startswith(("fc.", "classifier.")) for k in loaded)
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(target.bn1.running_var, source.bn1.running_var)
    assert torch.equal(target.classifier.weight, head)  # 5 classes: the head stays as initialised
    with pytest.raises(ValueError, match=r"w.pth: the weights do not fit this model"):
        load_backbone_weights(build_model("resnet50", 0, 5), str(tmp_path / "w.pth"))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad.pth: cannot read backbone weights"):
        load_backbone_weights(target, str(tmp_path / "bad.pth"))


def test_cosine_schedule_matches_cosine_annealing_per_epoch():
    config = resolve_config(TrainConfig("features", "softmax", epochs=10, lr=0.2))
    assert config.lr_schedule == "cosine" and config.warmup_epochs == 0
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.0)
    for epoch in range(10):
        assert lr_at_epoch(config, epoch) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()
    warm = resolve_config(TrainConfig("features", "softmax", epochs=10, lr=0.2, warmup_epochs=2))
    assert lr_at_epoch(warm, 0) == pytest.approx(0.1) and lr_at_epoch(warm, 2) == pytest.approx(0.2)
    assert lr_at_epoch(warm, 6) == pytest.approx(0.1 * (1 + math.cos(math.pi * 4 / 8)))


def test_optimizer_groups_for_norm_decay_and_backbone_lr():
    model = build_model("resnet10", 0, 4)
    config = resolve_config(TrainConfig("places-lt", "softmax", data_dir="/x", norm_weight_decay=False))
    opt = _optimizer(model, config, [], torch.device("cpu"))
    by_key = {(g["weight_decay"], g["lr_scale"]): g for g in opt.param_groups}
    assert set(by_key) == {(5e-4, 0.01), (0.0, 0.01), (5e-4, 1.0), (0.0, 1.0)}
    no_decay_backbone = {id(p) for p in by_key[(0.0, 0.01)]["params"]}
    assert id(model.bn1.weight) in no_decay_backbone and id(model.conv1.weight) not in no_decay_backbone
    assert by_key[(0.0, 1.0)]["params"] == [model.classifier.bias]
    assert by_key[(5e-4, 1.0)]["params"] == [model.classifier.weight]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # each group has its own learning-rate tensor, scaled
    assert by_key[(5e-4, 0.01)]["lr"].item() == pytest.approx(lr_at_epoch(config, 0) * 0.01)
    assert len({id(g["lr"]) for g in opt.param_groups}) == len(opt.param_groups)
    inat = resolve_config(TrainConfig("inat2018", "softmax", data_dir="/x"))
    assert _optimizer(model, inat, [], torch.device("cpu")).defaults["nesterov"] is True


def test_model_must_fit_the_kind_of_data():
    with pytest.raises(ValueError, match=r"model 'resnet50' does not fit dataset 'digits-lt'"):
        resolve_config(TrainConfig("digits-lt", "softmax", model="resnet50"))
    with pytest.raises(ValueError, match=r"model 'mlp' does not fit dataset 'imagenet-lt'"):
        resolve_config(TrainConfig("imagenet-lt", "softmax", model="mlp", data_dir="/x"))
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        resolve_config(TrainConfig("places-lt", "softmax", data_dir="/x", init_weights="/no/such.pth"))
