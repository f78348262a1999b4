"""Tests of benchmarks.models: shapes, heads added per task, init, and a real training run."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
from avalanche.models import MultiHeadClassifier
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from avalanche.models.utils import avalanche_forward
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from benchmarks.models import (
    PAPER_INIT_STD,
    GaussianInitMultiHeadClassifier,
    MultiHeadMLP,
    SingleHeadMLP,
    make_model,
)
from benchmarks.streams import benchmark_info, make_benchmark


@pytest.fixture(scope="module")
def split_digits():
    return make_benchmark("split_digits", seed=0)


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_multi_head_mlp_has_the_papers_trunk_and_an_avalanche_head():
    model = make_model(benchmark_info("split_fmnist"))
    assert isinstance(model, MultiHeadMLP)
    assert isinstance(model.features, nn.Sequential)
    assert isinstance(model.classifier, MultiHeadClassifier)
    shapes = [(m.in_features, m.out_features) for m in linear_layers(model.features)]
    assert shapes == [(784, 512), (512, 256)]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.rand(5, 1, 28, 28)  # any input shape is flattened
    assert model(x, 0).shape == (5, 2)
    assert model.forward_single_task(x, 0).shape == (5, 2)
    assert model(x, torch.zeros(5, dtype=torch.long)).shape == (5, 2)


def test_a_new_head_appears_when_the_model_meets_a_new_task(split_digits):
    model = make_model(benchmark_info("split_digits"), hidden=(32, 16))
    experiences = list(split_digits.train_stream)
    avalanche_model_adaptation(model, experiences[0])
    assert set(model.classifier.classifiers) == {"0"}
    trunk = [p.clone() for p in model.features.parameters()]
    head0 = model.classifier.classifiers["0"].classifier.weight.clone()
    avalanche_model_adaptation(model, experiences[1])
    assert set(model.classifier.classifiers) == {"0", "1"}
    assert model.classifier.classifiers["1"].classifier.weight.shape == (2, 16)
    # Adaptation adds a head and touches nothing that exists.
    assert all(torch.equal(a, b) for a, b in zip(trunk, model.features.parameters(), strict=True))
    assert torch.equal(head0, model.classifier.classifiers["0"].classifier.weight)
    x = torch.rand(6, 64)
    tasks = torch.tensor([0, 1, 0, 1, 1, 0])
    out = avalanche_forward(model, x, tasks)
    assert out.shape == (6, 2)
    for t in (0, 1):  # each row comes from its own task's head
        torch.testing.assert_close(out[tasks == t], model.forward_single_task(x[tasks == t], t))
    assert not torch.allclose(model.forward_single_task(x, 0), model.forward_single_task(x, 1))


def test_single_head_mlp_shares_one_head_as_wide_as_the_widest_task():
    model = make_model(benchmark_info("split_digits"), multi_head=False, dropout=0.5)
    assert isinstance(model, SingleHeadMLP) and isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == 2
    assert sum(isinstance(m, nn.Dropout) for m in model.features) == 2
    assert model(torch.rand(3, 8, 8)).shape == (3, 2)
    wide = make_model(benchmark_info("permuted_fmnist"), multi_head=False, hidden=(64,))
    assert wide(torch.rand(4, 784)).shape == (4, 10)
    assert [(m.in_features, m.out_features) for m in linear_layers(wide)] == [(784, 64), (64, 10)]


def test_dropout_is_active_in_training_only():
    model = SingleHeadMLP(20, 3, hidden=(200,), dropout=0.5)
    x = torch.rand(8, 20)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_paper_init_draws_weights_from_a_gaussian_with_std_0_1(split_digits):
    torch.manual_seed(0)
    model = make_model(benchmark_info("split_fmnist"), init="paper")
    first = model.features[1]
    model.requires_grad_(False)  # only reading weights here
    assert isinstance(model.classifier, GaussianInitMultiHeadClassifier)
    for tensor in (first.weight, model.features[3].weight):  # 401,408 and 131,072 draws
        assert abs(float(tensor.std()) - PAPER_INIT_STD) < 0.002
        assert abs(float(tensor.mean())) < 0.002
    assert abs(float(first.bias.std()) - PAPER_INIT_STD) < 0.015  # 512 draws
    # A head created later by Avalanche is drawn the same way (2 x 256 = 512 draws).
    small = make_model(benchmark_info("split_digits"), init="paper")
    for experience in list(split_digits.train_stream)[:3]:
        avalanche_model_adaptation(small, experience)
    for tid in ("1", "2"):
        weight = small.classifier.classifiers[tid].classifier.weight.detach()
        assert abs(float(weight.std()) - PAPER_INIT_STD) < 0.015
    # The default keeps PyTorch's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 * 784).
    default = make_model(benchmark_info("split_fmnist"))
    expected = 1 / math.sqrt(3 * 784)
    assert abs(float(default.features[1].weight.detach().std()) - expected) < 0.02 * expected
    head = make_model(benchmark_info("split_digits"))
    avalanche_model_adaptation(head, next(iter(split_digits.train_stream)))
    assert float(head.classifier.classifiers["0"].classifier.weight.detach().abs().max()) <= 1 / 16


def test_gaussian_heads_redraw_only_rows_a_head_gains():
    classifier = GaussianInitMultiHeadClassifier(8, 2, std=0.1)
    classifier.classifiers["0"].classifier.weight.data.fill_(7.0)
    experience = SimpleNamespace(classes_in_this_experience=[0, 1, 2, 3], task_labels=[0])
    classifier.adaptation(experience)
    weight = classifier.classifiers["0"].classifier.weight.detach()
    assert weight.shape == (4, 8)
    assert torch.all(weight[:2] == 7.0)  # old rows kept
    assert float(weight[2:].abs().max()) < 1.0  # new rows drawn from N(0, 0.01)


def test_cnn_families_are_delegated_to_the_cnn_module(monkeypatch):
    calls = []

    def make_cnn(family, info, *, multi_head, **kwargs):
        calls.append((family, info.name, multi_head, kwargs))
        return nn.Identity()

    monkeypatch.setitem(sys.modules, "benchmarks.cnn", SimpleNamespace(make_cnn=make_cnn))
    assert isinstance(make_model(benchmark_info("split_caltech101"), multi_head=False), nn.Identity)
    make_model(benchmark_info("five_datasets"), dropout=0.25)
    assert calls == [
        ("resnet18", "split_caltech101", False, {}),
        ("vgg9", "five_datasets", True, {"dropout": 0.25}),
    ]
    with pytest.raises(ValueError, match="configure the MLP only"):
        make_model(benchmark_info("split_cifar100"), hidden=(128,))
    with pytest.raises(ValueError, match="configure the MLP only"):
        make_model(benchmark_info("split_cifar100"), init="paper")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden=()), "hidden must be"),
        (dict(hidden=(512, 0)), "hidden must be"),
        (dict(dropout=1.0), "dropout must be"),
        (dict(dropout=-0.1), "dropout must be"),
        (dict(init="xavier"), "init must be one of"),
        (dict(multi_head="yes"), "multi_head must be"),
    ],
)
def test_bad_model_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(benchmark_info("split_digits"), **kwargs)


def test_naive_training_on_split_digits_learns_each_task(split_digits):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_model(benchmark_info("split_digits"))
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=1,
        eval_mb_size=256,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    accuracies = []
    for train_exp, test_exp in zip(split_digits.train_stream, split_digits.test_stream, strict=True):
        strategy.train(train_exp)
        model.eval()
        dataset = test_exp.dataset
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        y = torch.tensor([dataset[i][1] for i in range(len(dataset))])
        with torch.no_grad():
            predicted = model.forward_single_task(x, test_exp.task_label).argmax(dim=1)
        accuracies.append(float((predicted == y).float().mean()))
    assert set(model.classifier.classifiers) == {"0", "1", "2", "3", "4"}
    assert accuracies[0] > 0.9, accuracies  # task 0 (digits 0 vs 1) after one epoch
    assert min(accuracies) > 0.8, accuracies  # each task right after learning it
