"""The paper's multilayer perceptron with one head per task or one shared head, and a factory.

Peng et al., arXiv 1812.01640, Sec. 4 "Training" and Sec. 4.2: an MLP with 784-512-256 hidden units,
ReLU and dropout, whose weights were drawn from N(0, 0.1) ("mu = 0, sigma = 0.1").

Both models expose the shared trunk as ``features`` and the output layer(s) as ``classifier``:
baselines freeze ``features`` (``sgd_f``) and regularisers may treat the heads apart. Usage::

    from benchmarks.streams import benchmark_info
    from benchmarks.models import make_model

    info = benchmark_info("split_fmnist")
    model = make_model(info)                    # MultiHeadMLP: 784-512-256, a head per task
    baseline = make_model(info, multi_head=False)   # SingleHeadMLP: one shared 2-way head

Initialisation: ``init="default"`` (the default) keeps PyTorch's fan-in scaled uniform init, which
suits any input width (64-pixel digits as well as 784-pixel images) and is what every Avalanche
baseline gets; ``init="paper"`` draws every weight and bias of the MLP, heads created later
included, from N(0, 0.1) as the paper did. A fixed sigma ignores the layer's fan-in, so it is an
option for reproducing the paper rather than the default.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.info import BenchmarkInfo

INITS = ("default", "paper")
PAPER_INIT_STD = 0.1  # sigma of the paper's Gaussian initialisation (Sec. 4, "Training")
DEFAULT_HIDDEN = (512, 256)  # the paper's MLP: 784-512-256-classes


def mlp_trunk(
    input_size: int, hidden: Sequence[int] = DEFAULT_HIDDEN, dropout: float = 0.0
) -> nn.Sequential:
    """``Flatten -> [Linear -> ReLU (-> Dropout)] * len(hidden)``: ``(B, ...)`` to ``(B, H)``.

    ``H = hidden[-1]``; inputs of any shape are flattened to ``(B, input_size)`` first.

    Args:
        input_size: number of input features after flattening (e.g. 784 for 28x28 images).
        hidden: widths of the hidden layers, e.g. ``(512, 256)``.
        dropout: dropout probability after each ReLU, in [0, 1); 0 adds no dropout layer.
    """
    _check_mlp_args(input_size, hidden, dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    width_in = input_size
    for width in hidden:
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width_in = width
    return nn.Sequential(*layers)


@torch.no_grad()
def gaussian_init_(module: nn.Module, std: float = PAPER_INIT_STD) -> nn.Module:
    """Draw each weight and bias of every ``nn.Linear`` in ``module`` from N(0, std**2) in place."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.weight.normal_(0.0, std)
            if layer.bias is not None:
                layer.bias.normal_(0.0, std)
    return module


class GaussianInitMultiHeadClassifier(MultiHeadClassifier):
    """A ``MultiHeadClassifier`` whose heads, also those added later, start from N(0, std**2).

    Avalanche creates a head when a new task label arrives (and widens one when a task shows a new
    class), with PyTorch's default init; this subclass redraws exactly the new rows.
    """

    def __init__(self, in_features: int, initial_out_features: int, *, std: float = PAPER_INIT_STD):
        super().__init__(in_features, initial_out_features, masking=False)
        self.std = std
        gaussian_init_(self.classifiers, std)

    @torch.no_grad()
    def adaptation(self, experience: Any) -> None:
        widths_before = {
            tid: head.classifier.out_features for tid, head in self.classifiers.items()
        }
        super().adaptation(experience)
        for tid, head in self.classifiers.items():
            old = widths_before.get(tid, 0)
            if head.classifier.out_features > old:
                head.classifier.weight[old:].normal_(0.0, self.std)
                head.classifier.bias[old:].normal_(0.0, self.std)


class MultiHeadMLP(MultiTaskModule):
    """The paper's MLP with one output head per task (task-incremental, "multi-head").

    ``features``: ``Flatten -> Linear(input_size, 512) -> ReLU -> Linear(512, 256) -> ReLU``
    (sizes from ``hidden``, optional dropout after each ReLU). ``classifier``: an Avalanche
    ``MultiHeadClassifier(hidden[-1], ...)`` that adds a head for each new task label when the
    strategy adapts the model to an experience. Heads are not masked: every head is exactly as wide
    as its task's classes (``initial_out_features`` should be the narrowest task's width), so there
    is nothing to mask, and a head not trained yet gives chance-level logits instead of -1000s.

    Args:
        input_size: number of input features after flattening.
        hidden: hidden widths, default ``(512, 256)``.
        dropout: dropout probability after each ReLU, in [0, 1).
        initial_out_features: width of a new head before it sees its task's classes.
        init: ``"default"`` (PyTorch's) or ``"paper"`` (N(0, 0.1) for all weights and biases).

    Shapes: ``forward(x, task_labels)`` takes ``x`` of shape ``(B, ...)`` and an int or a ``(B,)``
    tensor of task labels, and returns ``(B, C)`` logits; ``forward_single_task(x, t)`` returns
    head ``t``'s own ``(B, C_t)`` logits.
    """

    def __init__(
        self,
        input_size: int,
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = 0.0,
        initial_out_features: int = 2,
        init: str = "default",
    ) -> None:
        super().__init__()
        _check_init(init)
        if isinstance(initial_out_features, bool) or not isinstance(initial_out_features, int):
            raise ValueError(
                f"initial_out_features must be an int >= 1, got {initial_out_features!r}"
            )
        if initial_out_features < 1:
            raise ValueError(
                f"initial_out_features must be an int >= 1, got {initial_out_features!r}"
            )
        self.features = mlp_trunk(input_size, hidden, dropout)
        width = int(hidden[-1])
        if init == "paper":
            gaussian_init_(self.features)
            self.classifier = GaussianInitMultiHeadClassifier(width, initial_out_features)
        else:
            self.classifier = MultiHeadClassifier(width, initial_out_features, masking=False)
        # Width of the padded output of forward() with a tensor of task labels; Avalanche raises
        # it as tasks are seen. Starting at head 0's width makes forward() work before adaptation.
        self.max_class_label = initial_out_features

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits ``(B, C_t)`` of head ``task_label`` for inputs ``x`` of shape ``(B, ...)``."""
        return self.classifier.forward_single_task(self.features(x), task_label)


class SingleHeadMLP(nn.Module):
    """The paper's MLP with one output layer shared by all tasks (the ``sgd`` baseline).

    ``features`` as in :class:`MultiHeadMLP`; ``classifier = nn.Linear(hidden[-1], n_classes)``.
    With task-incremental streams whose labels restart at 0, ``n_classes`` is
    ``max(classes_per_task)`` and every task reuses the same output units.

    Shapes: ``forward(x)`` maps ``(B, ...)`` to ``(B, n_classes)`` logits.
    """

    def __init__(
        self,
        input_size: int,
        n_classes: int,
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        _check_init(init)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be an int >= 1, got {n_classes!r}")
        self.features = mlp_trunk(input_size, hidden, dropout)
        self.classifier = nn.Linear(int(hidden[-1]), n_classes)
        if init == "paper":
            gaussian_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def make_model(
    info: BenchmarkInfo,
    *,
    multi_head: bool = True,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    dropout: float | None = None,
    init: str = "default",
) -> nn.Module:
    """The paper's network for a benchmark, with a head per task or one shared head.

    Args:
        info: from :func:`benchmarks.streams.benchmark_info`.
        multi_head: True: one head per task (:class:`MultiHeadMLP`); False: one shared head of
            width ``max(info.classes_per_task)`` (:class:`SingleHeadMLP`).
        hidden, init: MLP options (see :class:`MultiHeadMLP`); CNN families refuse non-default
            values.
        dropout: dropout probability in [0, 1); None: the family's default (MLP: 0, no dropout
            layer; CNNs: whatever ``make_cnn`` uses). Given for a CNN, it is passed on.

    Returns:
        For ``info.model_family == "mlp"`` an MLP taking ``prod(info.input_shape)`` inputs; for
        ``"vgg9"`` / ``"resnet18"`` what ``benchmarks.cnn.make_cnn`` builds (imported only then).
    """
    if not isinstance(multi_head, bool):
        raise ValueError(f"multi_head must be True or False, got {multi_head!r}")
    family = info.model_family
    if family != "mlp":
        if tuple(hidden) != DEFAULT_HIDDEN or init != "default":
            raise ValueError(
                f"hidden and init configure the MLP only; {info.name} uses {family!r}: "
                "leave them at their defaults"
            )
        cnn = importlib.import_module("benchmarks.cnn")
        if dropout is None:
            return cnn.make_cnn(family, info, multi_head=multi_head)
        return cnn.make_cnn(family, info, multi_head=multi_head, dropout=dropout)
    dropout = 0.0 if dropout is None else dropout
    input_size = math.prod(info.input_shape)
    if multi_head:
        return MultiHeadMLP(
            input_size,
            hidden=hidden,
            dropout=dropout,
            initial_out_features=min(info.classes_per_task),
            init=init,
        )
    return SingleHeadMLP(
        input_size, info.max_classes_per_task, hidden=hidden, dropout=dropout, init=init
    )


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _check_mlp_args(input_size: int, hidden: Sequence[int], dropout: float) -> None:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be an int >= 1, got {input_size!r}")
    widths = list(hidden) if isinstance(hidden, Sequence) and not isinstance(hidden, str) else None
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"hidden must be a non-empty sequence of ints >= 1, got {hidden!r}")
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
