"""The measured_* methods of the harness (cbbench/harness/measured.py): weights 1/E_c from the run's own
checkpoint at the switch epoch, from the inputs, a feature file or an encoder, or E_c given; provenance in
the result; configuration errors before training."""
import numpy as np
import pytest
import torch

import cbbench
from cbbench.harness.datasets import load_dataset, make_prototypes_lt, write_fake_cifar
from cbbench.harness.methods import Method
from cbbench.harness.train import TrainConfig, check_run, resolve_config, train_run


@pytest.fixture(scope="module")
def proto():
    return make_prototypes_lt(n_max=300, num_classes=5, prototypes=[3, 30, 8, 60, 15], views=True,
                              test_per_class=20, data_seed=4)


def _config(method="measured_softmax", **kw):
    return TrainConfig("prototypes-lt", method, epochs=4, batch_size=64, device="cpu", **kw)


def _weights_of(result):
    return torch.tensor(result["effective"]["weights"])


def test_given_effective_numbers_are_the_weights_from_the_first_step(proto):
    e = [40.0, 10.0, 5.0, 2.0, 1.0]
    result, model = train_run(_config(effective_numbers=e), proto, progress=False, return_model=True)
    want = cbbench.class_weights(proto.train_counts, "measured", effective=e)
    assert torch.allclose(_weights_of(result), want, rtol=1e-5)
    assert result["effective"]["source"] == "given" and result["config"]["effective_numbers"] == e
    assert result["status"] == "ok"


def test_input_source_measures_the_training_inputs_and_their_views(proto):
    result = train_run(_config("measured_focal", effective_source="input"), proto, progress=False)
    direct = cbbench.effective_number_from_features(proto.x_train, proto.y_train, 5, features_aug=proto.x_train_aug)
    info = result["effective"]
    assert info["effective_number"] == [int(v) for v in direct.effective_number.tolist()]
    assert info["source"] == "input" and info["epoch"] is None and info["views"] is True
    assert info["radius"] == pytest.approx(direct.radius)
    assert torch.allclose(_weights_of(result), direct.weights(), rtol=1e-5)


def test_checkpoint_source_switches_at_the_switch_epoch(proto, monkeypatch):
    """Unweighted until switch_epoch, then 1/E of the model's own penultimate features (and their views)."""
    from cbbench.harness import measured

    seen, modes = [], set()
    original = measured.MeasuredWeights._model_features
    hook = measured._Penultimate._hook

    def recording(self, model, inputs, device):
        x, aug = original(self, model, inputs, device)
        seen.append((x, aug, model.training))
        return x, aug

    def mode_of(self, module, args):
        modes.add(module.training)
        return hook(self, module, args)

    monkeypatch.setattr(measured.MeasuredWeights, "_model_features", recording)
    monkeypatch.setattr(measured._Penultimate, "_hook", mode_of)
    config = resolve_config(_config(switch_epoch=2, hidden=24))
    result, model = train_run(config, proto, progress=False, return_model=True)
    assert len(seen) == 1
    x, aug, training_after = seen[0]
    assert x.shape == (len(proto.y_train), 24) and aug.shape == x.shape
    assert modes == {False} and training_after is True  # features in eval mode, training mode restored
    info = result["effective"]
    assert info["source"] == "checkpoint" and info["epoch"] == 2 and info["feature_dim"] == 24
    direct = cbbench.effective_number_from_features(x, proto.y_train, 5, features_aug=aug)
    assert info["effective_number"] == [int(v) for v in direct.effective_number.tolist()]
    assert result["config"]["effective_source"] is None  # the default: the run's own checkpoint
    # the deferred weights divide by the sum of the applied weights, as DRW
    assert Method("measured_softmax", proto.train_counts, measured_deferred=True).reduction == "weighted_mean"
    assert Method("measured_softmax", proto.train_counts).reduction == "mean"


def test_checkpoint_weights_before_the_switch_are_ones(proto):
    method = Method("measured_sigmoid", proto.train_counts, switch_epoch=3, measured_deferred=True)
    assert torch.equal(method.loss.weight, torch.ones(5))


def test_feature_file_source(proto, tmp_path):
    rng = np.random.RandomState(0)
    feats = proto.x_train @ rng.normal(size=(16, 8))
    path = tmp_path / "feats.npz"
    np.savez(path, features=feats, features_aug=proto.x_train_aug @ rng.normal(size=(16, 8)), labels=proto.y_train)
    result = train_run(_config(effective_source=str(path)), proto, progress=False)
    assert result["effective"]["source"] == str(path) and result["effective"]["views"] is True
    np.savez(tmp_path / "bad.npz", features=feats, labels=proto.y_train[::-1])
    with pytest.raises(ValueError, match="labels differ from the training labels"):
        check_run(_config(effective_source=str(tmp_path / "bad.npz")), proto)
    np.savez(tmp_path / "short.npz", features=feats[:10])
    with pytest.raises(ValueError, match=r"features must be \(300, D\)|features must be"):
        check_run(_config(effective_source=str(tmp_path / "short.npz")), proto)


def test_encoder_source(proto, tmp_path):
    torch.manual_seed(0)
    encoder = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Tanh()))
    path = tmp_path / "encoder.pt"
    encoder.save(str(path))
    result = train_run(_config(effective_source=str(path)), proto, progress=False)
    with torch.no_grad():
        x = encoder(torch.as_tensor(proto.x_train))
        aug = encoder(torch.as_tensor(proto.x_train_aug))
    direct = cbbench.effective_number_from_features(x, proto.y_train, 5, features_aug=aug)
    assert result["effective"]["effective_number"] == [int(v) for v in direct.effective_number.tolist()]
    assert result["effective"]["feature_dim"] == 12


def test_estimator_options_reach_the_estimator(proto):
    result = train_run(_config(effective_source="input", effective_options={"radius": 0.0}), proto, progress=False)
    assert result["effective"]["radius_source"] == "given"
    assert result["effective"]["effective_number"] == proto.train_counts.tolist()  # radius 0: distinct vectors


def test_image_views_are_two_crop_flip_augmentations(tmp_path):
    root = write_fake_cifar(tmp_path, per_class=12, test_per_class=2)
    data = load_dataset("cifar10-lt", data_dir=root, imbalance=4)
    config = TrainConfig("cifar10-lt", "measured_softmax", data_dir=root, imbalance=4, epochs=2, batch_size=16,
                         device="cpu")
    result = train_run(config, data, progress=False)
    info = result["effective"]
    assert info["views"] is True and info["epoch"] == 1 and info["feature_dim"] == 64
    assert sum(info["counts"]) == len(data.y_train)


@pytest.mark.parametrize("kw, error, message", [
    (dict(effective_source="no/such/file.npz"), FileNotFoundError, "neither checkpoint nor input"),
    (dict(effective_source="input", effective_numbers=[1, 2, 3, 4, 5]), ValueError, "not both"),
    (dict(effective_numbers=[1, 0, 3, 4, 5]), ValueError, "effective_numbers must be > 0"),
    (dict(effective_options={"radious": 1}), ValueError, "unknown option"),
    (dict(switch_epoch=4), ValueError, "never reaches"),
])
def test_bad_measured_configuration_fails_before_training(kw, error, message):
    kw = dict(kw)
    method = kw.pop("method", "measured_softmax")
    with pytest.raises(error, match=message):
        resolve_config(_config(method, **kw))
    if "switch_epoch" in kw:  # a static source does not switch
        resolve_config(_config(method, effective_source="input", **kw))


def test_other_methods_ignore_the_measured_options():
    resolve_config(_config("cb_softmax", effective_source="no/such/file.npz", effective_numbers=[0]))


def test_given_effective_numbers_must_match_the_classes(proto):
    with pytest.raises(ValueError, match="3 values for 5 classes"):
        check_run(_config(effective_numbers=[1, 2, 3]), proto)


def test_the_loss_trains_with_the_measured_weights(proto):
    """The weights reach the loss module's buffer (in place: a captured CUDA graph sees them)."""
    from cbbench.harness.measured import MeasuredWeights

    config = resolve_config(_config(effective_source="input"))
    method = Method("measured_softmax", proto.train_counts)
    storage = method.loss.weight.data_ptr()
    assert torch.equal(method.loss.weight, torch.ones(5))
    MeasuredWeights(config, proto, proto.train_counts).start(method, torch.device("cpu"))
    want = cbbench.effective_number_from_features(proto.x_train, proto.y_train, 5,
                                                  features_aug=proto.x_train_aug).weights()
    assert torch.allclose(method.loss.weight, want) and method.loss.weight.data_ptr() == storage
    deferred = resolve_config(_config())
    method = Method("measured_softmax", proto.train_counts, measured_deferred=True)
    MeasuredWeights(deferred, proto, proto.train_counts).start(method, torch.device("cpu"))
    assert torch.equal(method.loss.weight, torch.ones(5))  # waits for its checkpoint
