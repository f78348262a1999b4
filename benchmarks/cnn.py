"""The paper's CNNs: VGG-9 with batch normalisation and ResNet-18, one head per task.

Both are a shared trunk ``features`` (input ``(B, 3, H, W)`` -> features ``(B, D)``) and a
``classifier``: :class:`TaskHeads` (one head per task label, created when an experience with a new
task label arrives) or, for the single-head ``sgd`` baseline, one shared head.

* ``vgg9`` (Sec. 4.2.1: "VGG with 9 layers and batch normalization"): 9 weight layers,
  6 conv + 2 fc in the trunk and the per-task fc head::

      conv3x3-64  BN ReLU, conv3x3-64  BN ReLU, maxpool 2
      conv3x3-128 BN ReLU, conv3x3-128 BN ReLU, maxpool 2
      conv3x3-256 BN ReLU, conv3x3-256 BN ReLU, maxpool 2
      flatten (256 * H/8 * W/8 = 4096 at 32x32), fc-512 ReLU dropout, fc-512 ReLU dropout  (D = 512)
      head t: fc-n_t

  Xavier-uniform weights, zero biases (Sec. 4: "applied Xavier on CNN"); BN weight 1, bias 0.
  Convolutions have no bias (the BN after each one has it). Dropout 0.5 by default.
* ``resnet18`` (supplementary Sec. 6): torchvision's ``resnet18(weights=None)`` with its ``fc``
  replaced by the identity as the trunk (``D = 512``; torchvision's own initialisation), and per
  task "a new fully connected layer [of] 2048 neural units [with] dropout 0.5" and a classifier::

      head t: fc-2048 ReLU dropout(0.5) fc-n_t

All heads are Xavier-initialised.

Batch normalisation across tasks
--------------------------------
The BN layers sit in the shared trunk and are shared by all tasks. Their affine weight and bias are
parameters like any other: every method (SPP, EWC, MAS, SI, ...) computes importance for them and
protects them. Their running mean and variance are buffers, not parameters: no importance method
sees them, they are updated by every forward pass in training mode, and so after task ``t`` they
describe task ``t``'s data (momentum 0.1: mostly its last batches). Evaluation of an earlier task
then uses statistics of the latest task. This is the same for all nine methods, so the comparison
stays fair, and it is part of what every method's forgetting measures; we do not keep per-task
statistics (that would be a different method). The one exception is ``sgd_f``: "shared layers
frozen" must mean a fixed function, so :func:`freeze_features` also freezes the BN statistics by
putting the trunk's BN modules in eval mode. Avalanche calls ``model.train()`` at the start of each
training experience, which undoes that, so the caller re-applies it from a plugin's
``before_training_exp`` (and after any later ``model.train()``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from avalanche.benchmarks.scenarios import CLExperience
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from avalanche.models import MultiTaskModule
from torch import Tensor, nn

from benchmarks.info import MIN_IMAGE_SIZE
from benchmarks.trunks import (
    DEFAULT_DROPOUT,
    RESNET_HEAD_HIDDEN,
    VGG9_CHANNELS,
    VGG9_HIDDEN,
    VGG9Features,
    _check_shape,
    _hidden_head,
    _linear_head,
    resnet18_features,
    xavier_init_,
)

__all__ = [
    "DEFAULT_DROPOUT",
    "FAMILIES",
    "PAD_VALUE",
    "RESNET_HEAD_HIDDEN",
    "VGG9_CHANNELS",
    "VGG9_HIDDEN",
    "MultiHeadCNN",
    "SingleHeadCNN",
    "TaskHeads",
    "VGG9Features",
    "freeze_features",
    "make_cnn",
    "resnet18_features",
    "xavier_init_",
]

FAMILIES = ("vgg9", "resnet18")
PAD_VALUE = -1000.0  # logit given to the missing classes of narrower heads in a mixed-task batch


class TaskHeads(MultiTaskModule):
    """One head per task label, added when an experience brings a new task label.

    Mirrors Avalanche's ``MultiHeadClassifier.adaptation`` (0.6.0): on every experience (training
    or evaluation) a head is created for a task label not seen before, as wide as the experience's
    classes (``max(classes_in_this_experience) + 1``), and an existing head is widened (its last
    linear layer gets new Xavier-initialised rows) if the experience has more classes. Differences:
    a head is any ``nn.Sequential`` ending in ``nn.Linear`` (built by ``head_factory``), there is
    no active-unit masking (a head is exactly as wide as its task), and in a batch mixing tasks
    the narrower heads' rows are padded with :data:`PAD_VALUE` (-1000) rather than 0, so a
    softmax, cross-entropy or entropy over a padded row equals the one over the head's own logits
    (``exp(-1000)`` is 0 in float32).

    Args:
        head_factory: ``head_factory(n_classes) -> nn.Sequential`` ending in ``nn.Linear``;
            picklable (a ``functools.partial`` of a module-level function) so the model can be
            deep-copied and checkpointed.
        initial_classes: width of head ``"0"``, created now so the model has parameters before
            the first adaptation (as ``MultiHeadClassifier`` does). ``None``: no head yet.
    """

    def __init__(self, head_factory: Any, initial_classes: int | None = None):
        super().__init__()
        self.head_factory = head_factory
        self.heads = nn.ModuleDict()
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)
        if initial_classes is not None:
            self.heads["0"] = head_factory(initial_classes)

    @property
    def _adaptation_device(self) -> torch.device:
        return self._device_probe.device

    def n_classes(self, task_label: int) -> int:
        """Width of the head of ``task_label``."""
        return self._last_linear(str(task_label)).out_features

    def _last_linear(self, key: str) -> nn.Linear:
        last = self.heads[key][-1]
        if not isinstance(last, nn.Linear):
            raise ValueError(f"head {key} must end in nn.Linear, ends in {type(last).__name__}")
        return last

    @torch.no_grad()
    def _widen(self, key: str, n_classes: int) -> None:
        old = self._last_linear(key)
        new = nn.Linear(old.in_features, n_classes).to(old.weight.device)
        xavier_init_(new)
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        self.heads[key][-1] = new

    def adaptation(self, experience: CLExperience) -> None:
        """Create (or widen) the head of each task label of ``experience``."""
        super().adaptation(experience)
        task_labels = experience.task_labels
        if isinstance(task_labels, ConstantSequence):
            task_labels = [task_labels[0]]
        n_classes = max(experience.classes_in_this_experience) + 1
        for task in sorted(set(task_labels)):
            key = str(int(task))
            if key not in self.heads:
                self.heads[key] = self.head_factory(n_classes).to(self._adaptation_device)
            elif self.n_classes(int(task)) < n_classes:
                self._widen(key, n_classes)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """``(B, D)`` features -> ``(B, n_t)`` logits of head ``task_label``."""
        key = str(int(task_label))
        if key not in self.heads:
            raise ValueError(f"no head for task {task_label}; heads exist for tasks {list(self.heads)}")
        return self.heads[key](x)

    def forward(self, x: Tensor, task_labels: Tensor | int | None) -> Tensor | dict[int, Tensor]:
        """Logits for each sample from its task's head.

        Args:
            x: ``(B, D)`` features.
            task_labels: ``(B,)`` ints, one int for the whole batch, or ``None`` for a dict
                ``{task: (B, n_task) logits}`` over the tasks trained so far.

        Returns:
            ``(B, max n_t over the batch's tasks)``; a narrower head's missing columns are
            :data:`PAD_VALUE`.
        """
        if task_labels is None:
            return self.forward_all_tasks(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        tasks = torch.unique(task_labels).tolist()
        if len(tasks) == 1:
            return self.forward_single_task(x, tasks[0])
        width = max(self.n_classes(t) for t in tasks)
        out = x.new_full((x.shape[0], width), PAD_VALUE)
        for task in tasks:
            mask = task_labels == task
            logits = self.forward_single_task(x[mask], task)
            out[mask, : logits.shape[1]] = logits
        return out


class MultiHeadCNN(MultiTaskModule):
    """A shared trunk ``features`` and per-task heads ``classifier`` (a :class:`TaskHeads`).

    ``forward(x, task_labels)`` runs the trunk once on the whole batch ``(B, 3, H, W)`` and each
    sample's head; ``forward_single_task(x, t)`` gives head ``t``'s own ``(B, n_t)`` logits.
    """

    def __init__(self, features: nn.Module, classifier: TaskHeads):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor, task_labels: Tensor | int | None) -> Tensor | dict[int, Tensor]:
        """``(B, 3, H, W)`` -> logits, as :meth:`TaskHeads.forward`."""
        return self.classifier(self.features(x), task_labels)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, n_t)`` logits of head ``task_label``."""
        return self.classifier.forward_single_task(self.features(x), task_label)

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """``{task: (B, n_task)}`` for the tasks trained so far, the trunk run once."""
        return self.classifier.forward_all_tasks(self.features(x))


class SingleHeadCNN(nn.Module):
    """A shared trunk ``features`` and one shared head ``classifier`` (the ``sgd`` baseline).

    ``forward(x)``: ``(B, 3, H, W)`` -> ``(B, n)`` with ``n`` the widest task's class count; task
    ``t``'s class ``k`` is output ``k`` for every task (the paper's "single output layer").
    """

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, n)`` logits."""
        return self.classifier(self.features(x))


def make_cnn(family: str, info: Any, *, multi_head: bool = True, dropout: float | None = None) -> nn.Module:
    """Build the paper's CNN for a benchmark.

    Args:
        family: ``"vgg9"`` (five data sets, Split CIFAR-100) or ``"resnet18"`` (Caltech-101).
        info: the benchmark's description (``BenchmarkInfo``); only ``input_shape`` ``(C, H, W)``
            and ``classes_per_task`` (one int per task) are read.
        multi_head: ``True``: a :class:`MultiHeadCNN` whose head 0 exists now (as wide as task
            0) and whose other heads are created by Avalanche's model adaptation; ``False``: a
            :class:`SingleHeadCNN` with one head as wide as the widest task (VGG-9: a linear
            layer; ResNet-18: the same fc-2048 + classifier head, shared).
        dropout: dropout probability in the VGG-9 trunk's fc layers / the ResNet-18 heads;
            ``None``: 0.5.

    Returns:
        The model, Xavier-initialised as the module docstring says.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown CNN family {family!r}; choose one of {', '.join(FAMILIES)}")
    p = DEFAULT_DROPOUT if dropout is None else float(dropout)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    classes = [int(n) for n in getattr(info, "classes_per_task", ())]
    if not classes or min(classes) < 1:
        raise ValueError(f"info.classes_per_task must list at least one positive int, got {classes}")
    input_shape = _check_shape(getattr(info, "input_shape", ()))
    if input_shape[0] != 3:
        raise ValueError(f"the CNNs take 3-channel images, info.input_shape is {input_shape}")
    if min(input_shape[1:]) < MIN_IMAGE_SIZE[family]:
        raise ValueError(
            f"{family} needs images of at least {MIN_IMAGE_SIZE[family]}x{MIN_IMAGE_SIZE[family]}, "
            f"info.input_shape is {input_shape}"
        )
    if family == "vgg9":
        features: nn.Module = VGG9Features(input_shape, dropout=p)
        factory = functools.partial(_linear_head, features.out_features)
    else:
        features = resnet18_features()
        factory = functools.partial(_hidden_head, features.out_features, RESNET_HEAD_HIDDEN, p)
    if multi_head:
        return MultiHeadCNN(features, TaskHeads(factory, initial_classes=classes[0]))
    return SingleHeadCNN(features, factory(max(classes)))


def freeze_features(model: nn.Module) -> None:
    """Freeze the shared trunk ``model.features`` and its batch-normalisation statistics (``sgd_f``).

    Sets ``requires_grad_(False)`` on every parameter of ``features`` and puts its BatchNorm
    modules in eval mode, so neither their weights nor their running mean/variance change. Works
    for any model with a ``features`` attribute (the CNNs here, the MLPs), also inside
    ``DistributedDataParallel``. ``model.train()`` puts the BN modules back in training mode:
    call this again after it (e.g. from a plugin's ``before_training_exp``).

    Raises:
        ValueError: the model has no ``features`` module.
    """
    inner = (
        model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    )
    features = getattr(inner, "features", None)
    if not isinstance(features, nn.Module):
        raise ValueError(
            f"{type(inner).__name__} has no 'features' module to freeze; freeze_features needs a model "
            "whose shared layers are model.features (the heads being model.classifier)"
        )
    features.requires_grad_(False)
    for module in features.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
