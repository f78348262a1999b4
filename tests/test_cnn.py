"""Tests of benchmarks.cnn: VGG-9 and ResNet-18 with per-task heads, and freeze_features."""

from __future__ import annotations

import copy
import math
import pickle
from types import SimpleNamespace

import pytest
import torch
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from avalanche.models import MultiTaskModule
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from torch import nn

from benchmarks.cnn import (
    PAD_VALUE,
    MultiHeadCNN,
    SingleHeadCNN,
    TaskHeads,
    freeze_features,
    make_cnn,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _info(classes, size=32):
    return SimpleNamespace(input_shape=(3, size, size), classes_per_task=tuple(classes))


def _experience(task: int, n_classes: int):
    """What Avalanche's model adaptation reads from an experience."""
    return SimpleNamespace(
        classes_in_this_experience=list(range(n_classes)), task_labels=ConstantSequence(task, 8)
    )


def _adapt(model: nn.Module, task: int, n_classes: int) -> None:
    avalanche_model_adaptation(model, _experience(task, n_classes))


def _weight_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ---------------------------------------------------------------------------------------------
# VGG-9
# ---------------------------------------------------------------------------------------------


def test_vgg9_has_nine_weight_layers_with_batch_norm_and_per_task_outputs():
    model = make_cnn("vgg9", _info([10, 10, 5]))
    assert isinstance(model, MultiTaskModule)
    layers = _weight_layers(model)
    assert [type(m).__name__ for m in layers] == ["Conv2d"] * 6 + ["Linear"] * 3  # head 0 only
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features.modules()) == 6
    assert model.features.fc[1].in_features == 256 * 4 * 4
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    assert model(x, torch.zeros(4, dtype=torch.long)).shape == (4, 10)
    model.train()
    _adapt(model, 2, 5)
    model.eval()
    assert model(x, torch.full((4,), 2)).shape == (4, 5)
    assert model.forward_single_task(x, 2).shape == (4, 5)
    assert model(x, 0).shape == (4, 10)


def test_vgg9_is_xavier_initialised():
    model = make_cnn("vgg9", _info([10]))
    for layer in _weight_layers(model):
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        if isinstance(layer, nn.Conv2d):
            fan_out *= layer.weight[0, 0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound  # uniform(-b, b): std b/sqrt(3)
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0


def test_vgg9_refuses_inputs_of_another_size():
    model = make_cnn("vgg9", _info([10]))
    with pytest.raises(ValueError, match=r"built for inputs \(3, 32, 32\), got \(3, 64, 64\)"):
        model(torch.rand(2, 3, 64, 64), 0)
    with pytest.raises(ValueError, match="at least 8x8"):
        make_cnn("vgg9", _info([10], size=4))


def test_single_head_vgg9_shares_one_head_as_wide_as_the_widest_task():
    model = make_cnn("vgg9", _info([5, 10, 5]), multi_head=False)
    assert isinstance(model, SingleHeadCNN) and not isinstance(model, MultiTaskModule)
    assert isinstance(model.classifier[-1], nn.Linear) and model.classifier[-1].out_features == 10
    assert model.eval()(torch.rand(3, 3, 32, 32)).shape == (3, 10)


# ---------------------------------------------------------------------------------------------
# Task heads (shared by both families)
# ---------------------------------------------------------------------------------------------


def test_adaptation_creates_a_head_per_new_task_and_widens_existing_ones():
    model = make_cnn("vgg9", _info([3]))
    heads = model.classifier
    n_params = sum(p.numel() for p in model.parameters())
    _adapt(model, 0, 3)  # same task, same classes: nothing changes
    assert list(heads.heads) == ["0"] and sum(p.numel() for p in model.parameters()) == n_params
    _adapt(model, 1, 4)
    assert list(heads.heads) == ["0", "1"] and heads.n_classes(1) == 4
    assert sum(p.numel() for p in model.parameters()) == n_params + 512 * 4 + 4
    assert heads.known_train_tasks_labels == {0, 1}
    old = heads.heads["1"][-1].weight.detach().clone()
    _adapt(model, 1, 6)  # more classes for task 1: its head grows, the old rows kept
    new = heads.heads["1"][-1].weight.detach()
    assert heads.n_classes(1) == 6 and torch.equal(new[:4], old)
    model.eval()
    _adapt(model, 7, 2)  # evaluation on an unseen task also gets a head, as in Avalanche
    assert heads.n_classes(7) == 2 and heads.known_train_tasks_labels == {0, 1}


def test_mixed_task_batches_pad_with_a_large_negative_logit_not_zero():
    model = make_cnn("vgg9", _info([3])).eval()
    model.train()
    _adapt(model, 1, 5)
    model.eval()
    x = torch.rand(6, 3, 32, 32)
    tasks = torch.tensor([0, 1, 0, 1, 1, 0])
    out = model(x, tasks)
    assert out.shape == (6, 5)
    narrow, wide = tasks == 0, tasks == 1
    assert torch.allclose(out[narrow, :3], model.forward_single_task(x[narrow], 0), atol=1e-5)
    assert torch.allclose(out[wide], model.forward_single_task(x[wide], 1), atol=1e-5)
    assert torch.all(out[narrow, 3:] == PAD_VALUE)
    # Cross-entropy and entropy over a padded row equal those over the head's own logits
    # (with zero padding, as Avalanche's MultiHeadClassifier does, they would not).
    own = model.forward_single_task(x[narrow], 0)
    y = torch.tensor([2, 0, 1])
    ce = nn.functional.cross_entropy(out[narrow], y)
    assert torch.allclose(ce, nn.functional.cross_entropy(own, y), atol=1e-6)

    def entropy(z):
        return -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)

    assert torch.allclose(entropy(out[narrow]), entropy(own), atol=1e-6)
    zero_padded = torch.cat([own, torch.zeros(3, 2)], dim=1)
    assert not torch.allclose(entropy(zero_padded), entropy(own), atol=1e-3)


def test_forward_without_task_labels_gives_every_trained_head():
    model = make_cnn("vgg9", _info([3]))
    _adapt(model, 0, 3)
    _adapt(model, 1, 4)
    out = model.eval()(torch.rand(2, 3, 32, 32), None)
    assert set(out) == {0, 1} and out[0].shape == (2, 3) and out[1].shape == (2, 4)


def test_models_deep_copy_and_pickle():  # LwF deep-copies the model; checkpoints pickle it
    model = make_cnn("vgg9", _info([3]))
    _adapt(model, 1, 4)
    x = torch.rand(2, 3, 32, 32)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone.eval()(x, 1), model.eval()(x, 1))
        _adapt(clone.train(), 2, 2)  # the head factory survives the copy
        assert clone.classifier.n_classes(2) == 2


def test_task_heads_refuse_an_unknown_task():
    heads = TaskHeads(lambda n: nn.Sequential(nn.Linear(4, n)), initial_classes=2)
    with pytest.raises(ValueError, match=r"no head for task 3; heads exist for tasks \['0'\]"):
        heads.forward_single_task(torch.rand(1, 4), 3)


# ---------------------------------------------------------------------------------------------
# ResNet-18
# ---------------------------------------------------------------------------------------------


def test_resnet18_trunk_and_fc2048_dropout_heads():
    model = make_cnn("resnet18", _info([30, 25, 25, 22], size=32))
    assert isinstance(model, MultiHeadCNN) and isinstance(model.features.fc, nn.Identity)
    head = model.classifier.heads["0"]
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (512, 2048, 30)
    assert head[2].p == 0.5
    _adapt(model, 3, 22)
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x, torch.zeros(2, dtype=torch.long)).shape == (2, 30)
    assert model(x, torch.full((2,), 3)).shape == (2, 22)
    assert model(x, torch.tensor([0, 3])).shape == (2, 30)
    single = make_cnn("resnet18", _info([30, 25, 25, 22], size=32), multi_head=False).eval()
    assert single(x).shape == (2, 30)


# ---------------------------------------------------------------------------------------------
# freeze_features
# ---------------------------------------------------------------------------------------------


def _bn_state(model):
    return {
        k: v.clone() for k, v in model.features.state_dict().items() if "running" in k or "num_batches" in k
    }


@pytest.mark.parametrize("family", ["vgg9", "resnet18"])
def test_freeze_features_stops_gradients_and_keeps_bn_statistics(family):
    model = make_cnn(family, _info([4], size=32)).train()
    x, y = torch.rand(8, 3, 32, 32) * 3, torch.randint(0, 4, (8,))  # not N(0, 1): stats would move
    freeze_features(model)
    trunk = {k: v.clone() for k, v in model.features.state_dict().items()}
    head = [p.detach().clone() for p in model.classifier.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x, 0), y).backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in model.features.parameters())
    after = model.features.state_dict()
    assert all(torch.equal(trunk[k], after[k]) for k in trunk)  # weights and BN statistics
    assert any(not torch.equal(a, b) for a, b in zip(head, model.classifier.parameters(), strict=True))
    assert model.classifier.training  # the heads still train (dropout on)


def test_without_freezing_a_training_step_moves_the_bn_statistics():  # the test above can fail
    model = make_cnn("vgg9", _info([4])).train()
    before = _bn_state(model)
    model(torch.rand(8, 3, 32, 32) * 3, 0)
    after = _bn_state(model)
    assert not torch.equal(before["conv.1.running_mean"], after["conv.1.running_mean"])


def test_model_train_undoes_the_bn_freeze_so_it_must_be_reapplied():
    model = make_cnn("vgg9", _info([4]))
    freeze_features(model)
    bn = model.features.conv[1]
    assert not bn.training
    model.train()
    assert bn.training and not bn.weight.requires_grad  # requires_grad stays, the mode does not
    freeze_features(model)
    assert not bn.training


def test_freeze_features_works_for_an_mlp_and_refuses_a_model_without_features():
    mlp = nn.Module()
    mlp.features = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    mlp.classifier = nn.Linear(8, 2)
    freeze_features(mlp)
    assert not any(p.requires_grad for p in mlp.features.parameters()) and not mlp.features[1].training
    assert all(p.requires_grad for p in mlp.classifier.parameters())
    with pytest.raises(ValueError, match="Linear has no 'features' module"):
        freeze_features(nn.Linear(2, 2))


def test_freeze_from_before_training_exp_keeps_the_trunk_fixed_through_avalanche_training():
    from avalanche.benchmarks import dataset_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
    from avalanche.training import Naive
    from avalanche.training.plugins import SupervisedPlugin
    from torch.utils.data import TensorDataset

    class FreezeTrunk(SupervisedPlugin):  # what the sgd_f baseline does after the first task
        def before_training_exp(self, strategy, **kwargs):
            if strategy.clock.train_exp_counter > 0:
                freeze_features(strategy.model)

    def task(t):
        data = TensorDataset(torch.rand(16, 3, 8, 8) * 3, torch.arange(16) % 2)
        data.targets = (torch.arange(16) % 2).tolist()
        return _make_taskaware_classification_dataset(data, task_labels=t, targets=data.targets)

    benchmark = dataset_benchmark([task(0), task(1)], [task(0), task(1)])
    model = make_cnn("vgg9", _info([2], size=8))
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=8,
        train_epochs=1,
        eval_mb_size=16,
        plugins=[FreezeTrunk()],
        evaluator=None,
    )
    strategy.train(benchmark.train_stream[0])
    trunk = {k: v.clone() for k, v in model.features.state_dict().items()}
    head0 = model.classifier.heads["0"][0].weight.detach().clone()
    strategy.train(benchmark.train_stream[1])  # model.train() first, then the plugin freezes
    after = model.features.state_dict()
    assert all(torch.equal(trunk[k], after[k]) for k in trunk)  # weights and BN statistics
    assert torch.equal(head0, model.classifier.heads["0"][0].weight)  # task 0's head: not in the loss
    assert model.classifier.n_classes(1) == 2


def test_sgd_f_strategy_keeps_the_bn_running_statistics_after_the_first_task():
    from avalanche.benchmarks import dataset_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
    from torch.utils.data import TensorDataset

    from benchmarks.baselines import TrainConfig, build_strategy

    def task(t):  # inputs far from N(0, 1), different per task: the statistics would move
        data = TensorDataset(torch.rand(16, 3, 8, 8) * (3 + 2 * t) + t, torch.arange(16) % 2)
        data.targets = (torch.arange(16) % 2).tolist()
        return _make_taskaware_classification_dataset(data, task_labels=t, targets=data.targets)

    benchmark = dataset_benchmark([task(0), task(1)], [task(0), task(1)])
    model = make_cnn("vgg9", _info([2], size=8))
    initial = _bn_state(model)
    strategy = build_strategy("sgd_f", model, TrainConfig(epochs=2, batch_size=8, lr=0.1))
    strategy.train(benchmark.train_stream[0])
    after_task0 = _bn_state(model)
    assert not torch.equal(initial["conv.1.running_mean"], after_task0["conv.1.running_mean"])  # task 0 moves
    strategy.eval(benchmark.test_stream)
    strategy.train(benchmark.train_stream[1], reset_optimizer_state=True)
    after_task1 = _bn_state(model)
    assert after_task1.keys() == after_task0.keys() and any("running_var" in k for k in after_task1)
    for key in after_task0:  # running mean, variance and batch count of every BN layer
        assert torch.equal(after_task0[key], after_task1[key]), key
    assert model.classifier.n_classes(1) == 2


def test_make_cnn_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown CNN family 'vgg16'; choose one of vgg9, resnet18"):
        make_cnn("vgg16", _info([10]))
    with pytest.raises(ValueError, match="classes_per_task"):
        make_cnn("vgg9", _info([]))
    with pytest.raises(ValueError, match="3-channel"):
        make_cnn("vgg9", SimpleNamespace(input_shape=(1, 32, 32), classes_per_task=(10,)))
    with pytest.raises(ValueError, match="dropout must be in"):
        make_cnn("vgg9", _info([10]), dropout=1.0)
