"""One factory for every method of the comparison, on the same model, optimiser and budget.

The paper (Sec. 4, "Baseline") compares SPP with single-head SGD, SGD with frozen intermediate
layers (SGD-F), multi-head fine-tuning, EWC, SI, MAS, LwF and joint training. Here each of them is
an Avalanche strategy built by :func:`build_strategy` from the same :class:`TrainConfig`, so only
the method differs between runs. EWC, SI, MAS and LwF are Avalanche's own plugins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.training import JointTraining, Naive
from avalanche.training.plugins import (
    EWCPlugin,
    LwFPlugin,
    MASPlugin,
    SupervisedPlugin,
    SynapticIntelligencePlugin,
)
from torch import nn

from avalanche_spp.importance import (
    CLAMPS,
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    FISHER_ESTIMATES,
    SCALES,
    TAYLOR_OF,
    check_choice,
)
from avalanche_spp.plugin import ACCUMULATIONS, SPPPlugin
from benchmarks.cnn import freeze_features
from benchmarks.spp_variants import (
    ANCHORS,
    IMPORTANCES,
    MASK_MEANS,
    NORMALIZATIONS,
    STIFFNESSES,
    SPPVariantPlugin,
)

METHODS = ("sgd", "sgd_f", "finetune", "ewc", "si", "mas", "lwf", "joint", "spp")
"""Every method name :func:`build_strategy` accepts, in the paper's table order."""

STRENGTH_NAMES = {
    "ewc": "ewc_lambda",
    "si": "si_lambda",
    "mas": "lambda_reg",
    "lwf": "alpha",
    "spp": "lam",
}
"""The hyper-parameter each regularised method tunes (its Avalanche / SPPPlugin argument name)."""

STRENGTH_GRIDS: dict[str, tuple[float, ...]] = {
    "ewc": (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6),
    "si": (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4),
    "mas": (1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3),
    "lwf": (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    "spp": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0),  # half a decade apart around DEFAULT_LAM = 10
}
"""Default validation grids: the same number of points (7) for every method, centred on its default.

Centres: SPP ``SPPPlugin``'s default strength; MAS and LwF Avalanche's defaults (1); SI 100 and EWC
1000 (Avalanche has none; the middle of the ranges their papers and Avalanche's examples use). EWC
and SI and MAS are a decade apart (their useful strengths span decades), LwF a factor 2 and SPP half
a decade (``scale="saturate"`` gives SPP's strength a fixed meaning). A strength at which
training diverges is recorded as diverged and never chosen; the tuner then skips the larger
strengths of the grid (:func:`benchmarks.experiment.tune_strength`).
"""


@dataclass(frozen=True)
class TrainConfig:
    """Training budget shared by every method of a comparison."""

    epochs: int = 5  # passes over each experience (joint: over the union)
    batch_size: int = 64  # training mini-batch size
    lr: float = 0.01  # learning rate
    momentum: float = 0.9  # SGD momentum (0 for plain SGD)
    optimizer: str = "sgd"  # "sgd" or "adam"
    eval_batch_size: int = 512  # evaluation mini-batch size
    hidden: tuple[int, ...] = (512, 256)  # MLP hidden widths (the paper's 784-512-256)
    dropout: float | None = None  # dropout; None: the model's default (MLP 0, CNN heads 0.5 as the paper)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    reset_optimizer: bool = True  # a fresh optimiser state per experience (False: Avalanche's default, kept)
    single_head: bool = False  # one shared head for every method (domain-incremental); else uses_multi_head
    spp_fisher: str = DEFAULT_FISHER  # SPP's Fisher estimate
    spp_scale: str = DEFAULT_SCALE  # how SPP's importance weighs its penalty (see SPPPlugin)
    spp_taylor_of: str = DEFAULT_TAYLOR_OF  # what SPP's Taylor estimate measures (its first-order sign)
    spp_clamp: str = DEFAULT_CLAMP  # where SPP's max(0, .) sits
    spp_normalize: str | None = None  # SPP's normalisation
    spp_accumulate: str = "sum"  # SPP's accumulation across tasks
    spp_importance_samples: int | None = None  # SPP importance subset (None: whole experience)
    spp_importance_batch_size: int = 256  # SPP importance mini-batch (SPPPlugin's default)
    spp_curvature_cap: float | None = None  # SPP's optional cap on lam * Omega (not in the paper)
    spp_importance: str = "entropy"  # "output_norm": MAS's importance through SPP's penalty (a diagnostic)
    spp_temperature: float = 1.0  # SPP's importance of the entropy of softmax(z / T) (a harness experiment)
    spp_sharpness: float = 1.0  # Hill exponent of SPP's saturating mask (a harness experiment)
    spp_stiffness: str = "unit"  # "curvature": lam in the loss's mean curvature (a harness experiment)
    spp_measure_curvature: bool = False  # keep that curvature in the run record, unapplied (a diagnostic)
    spp_mask_mean: str = "all"  # "tensor" / "experience": the saturating mask's m (a harness experiment)
    spp_anchor: str = "last"  # "weighted": W* the Omega-weighted mean of past W* (a harness experiment)
    spp_decay: float = 1.0  # past importance times this before each new one is added (a harness experiment)
    spp_auto_drop: float | None = None  # lam per task by stability decay (a harness experiment)
    spp_auto_monotone: bool = False  # and each task's search starts at the previous task's lam

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not _finite_positive(self.lr):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be one of ['sgd', 'adam'], got {self.optimizer!r}")
        dropout = self.dropout
        if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        hidden = self.hidden
        if not isinstance(hidden, (tuple, list)) or not hidden or not all(_positive_int(h) for h in hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive ints (widths), got {hidden!r}")
        if not _is_device(self.device):
            raise ValueError(
                f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {self.device!r}"
            )
        check_choice("spp_fisher", self.spp_fisher, FISHER_ESTIMATES)
        check_choice("spp_scale", self.spp_scale, SCALES)
        check_choice("spp_taylor_of", self.spp_taylor_of, TAYLOR_OF)
        check_choice("spp_clamp", self.spp_clamp, tuple(c for c in CLAMPS if c != "none"))
        check_choice("spp_normalize", self.spp_normalize, NORMALIZATIONS)
        check_choice("spp_accumulate", self.spp_accumulate, ACCUMULATIONS)
        check_choice("spp_importance", self.spp_importance, IMPORTANCES)
        check_choice("spp_mask_mean", self.spp_mask_mean, MASK_MEANS)
        check_choice("spp_anchor", self.spp_anchor, ANCHORS)
        check_choice("spp_stiffness", self.spp_stiffness, STIFFNESSES)
        for name in ("spp_measure_curvature", "reset_optimizer", "single_head", "spp_auto_monotone"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _finite_positive(self.spp_temperature):
            raise ValueError(f"spp_temperature must be a finite number > 0, got {self.spp_temperature!r}")
        decay = self.spp_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"spp_decay must be a number in (0, 1], got {decay!r}")
        drop = self.spp_auto_drop
        bad_drop = isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1
        if drop is not None and bad_drop:
            raise ValueError(f"spp_auto_drop must be None or a number in [0, 1), got {drop!r}")
        if not _finite_positive(self.spp_sharpness):
            raise ValueError(f"spp_sharpness must be a finite number > 0, got {self.spp_sharpness!r}")
        cap = self.spp_curvature_cap
        bad_cap = isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap <= 1
        if cap is not None and bad_cap:
            raise ValueError(f"spp_curvature_cap must be None or a number in (0, 1], got {cap!r}")
        if cap is not None and self.optimizer != "sgd":
            raise ValueError("spp_curvature_cap bounds SGD's step: it needs optimizer='sgd'")
        samples = self.spp_importance_samples
        if samples is not None and not _positive_int(samples):
            raise ValueError(f"spp_importance_samples must be a positive int or None, got {samples!r}")
        if not _positive_int(self.spp_importance_batch_size):
            raise ValueError(
                f"spp_importance_batch_size must be a positive int, got {self.spp_importance_batch_size!r}"
            )


def uses_multi_head(method: str, single_head: bool = False) -> bool:
    """Every method but single-head ``sgd`` gets one output head per task, unless ``single_head``
    (``TrainConfig.single_head``) gives every method one shared head."""
    return _check_method(method) != "sgd" and not single_head


def default_strength(method: str) -> float | None:
    """The middle of the method's grid, or ``None`` for a method without a strength."""
    grid = STRENGTH_GRIDS.get(_check_method(method))
    return None if grid is None else grid[len(grid) // 2]


def build_strategy(
    method: str,
    model: nn.Module,
    config: TrainConfig,
    *,
    strength: float | None = None,
    evaluator: Any = None,
    extra_plugins: Sequence[SupervisedPlugin] = (),
) -> Any:
    """The Avalanche strategy of ``method`` around ``model``.

    Args:
        method: one of :data:`METHODS`.
        model: single-head for ``sgd`` (see :func:`uses_multi_head`), multi-head otherwise; its
            shared layers must be the attribute ``features`` for ``sgd_f``.
        config: the shared budget.
        strength: the method's hyper-parameter (see :data:`STRENGTH_NAMES`); ``None`` takes
            :func:`default_strength`. Methods without one refuse a value.
        evaluator: an Avalanche ``EvaluationPlugin`` (``None``: Avalanche's default).
        extra_plugins: more plugins (loggers, probes).

    Returns:
        A ``Naive`` strategy with the method's plugin, or ``JointTraining`` for ``joint``.

    Raises:
        ValueError: unknown method, a model or config of the wrong type, a strength given to a
            method without one, or a strength that is not a finite number >= 0.
    """
    method = _check_method(method)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise ValueError(
            f"config must be a TrainConfig (e.g. TrainConfig(epochs=1)), got {type(config).__name__}"
        )
    if method in STRENGTH_NAMES:
        strength = default_strength(method) if strength is None else strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise ValueError(f"{method} strength must be a number, got {strength!r}")
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(f"{method} strength must be finite and >= 0, got {strength!r}")
    elif strength is not None:
        raise ValueError(f"{method} has no strength to tune; got strength={strength!r}")
    if method == "sgd_f" and not hasattr(model, "features"):
        raise ValueError("sgd_f freezes model.features after the first task: the model has none")

    plugins: list[SupervisedPlugin] = list(extra_plugins)
    if method == "sgd_f":
        plugins.append(FreezeFeaturesPlugin())
    elif method == "ewc":
        plugins.append(EWCPlugin(ewc_lambda=float(strength), mode="separate"))
    elif method == "si":
        plugins.append(CopyingSynapticIntelligencePlugin(si_lambda=float(strength)))
    elif method == "mas":
        plugins.append(ZeroLossMASPlugin(lambda_reg=float(strength)))
    elif method == "lwf":
        plugins.append(LwFPlugin(alpha=float(strength), temperature=2.0))
    elif method == "spp":
        options = {
            "fisher": config.spp_fisher,
            "scale": config.spp_scale,
            "taylor_of": config.spp_taylor_of,
            "clamp": config.spp_clamp,
            "accumulate": config.spp_accumulate,
            "importance_samples": config.spp_importance_samples,
            "importance_batch_size": config.spp_importance_batch_size,
        }
        variants = {"normalize": config.spp_normalize, "curvature_cap": config.spp_curvature_cap}
        if config.spp_importance != "entropy":
            variants["importance"] = config.spp_importance
        if config.spp_temperature != 1.0:
            variants["temperature"] = config.spp_temperature
        if config.spp_sharpness != 1.0:
            variants["sharpness"] = config.spp_sharpness
        if config.spp_mask_mean != "all":
            variants["mask_mean"] = config.spp_mask_mean
        if config.spp_stiffness != "unit":
            variants["stiffness"] = config.spp_stiffness
        if config.spp_anchor != "last":
            variants["anchor_mode"] = config.spp_anchor
        if config.spp_decay != 1.0:
            variants["decay"] = config.spp_decay
        if config.spp_measure_curvature:
            variants["measure_curvature"] = True
        if any(value is not None for value in variants.values()):  # an experiment of the harness
            plugins.append(SPPVariantPlugin(float(strength), **variants, **options))
        else:
            plugins.append(SPPPlugin(float(strength), **options))
    kwargs: dict[str, Any] = {
        "model": model,
        "optimizer": make_optimizer(model, config),
        "criterion": nn.CrossEntropyLoss(),
        "train_mb_size": config.batch_size,
        "train_epochs": config.epochs,
        "eval_mb_size": config.eval_batch_size,
        "device": torch.device(config.device),
        "plugins": plugins,
    }
    if evaluator is not None:
        kwargs["evaluator"] = evaluator
    strategy_class = JointTraining if method == "joint" else Naive
    return strategy_class(**kwargs)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The shared optimiser (Avalanche re-adds new heads' parameters to it before each task)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


class CopyingSynapticIntelligencePlugin(SynapticIntelligencePlugin):
    """Avalanche's SI (Zenke et al. 2017) with its weight snapshots really copied.

    Avalanche 0.6.0 stores its snapshots with ``param.detach().cpu().flatten()``. On the CPU that
    is a *view* of the live weights, not a copy: ``theta_old`` and ``theta_new`` of every step are
    the same memory, the path integral ``sum g * (theta_new - theta_old)`` is exactly 0, the
    anchor of the penalty moves with the weights, and SI trains exactly like fine-tuning
    (``tests/test_baselines.py`` shows it). On a GPU ``.cpu()`` copies and Avalanche's class works.
    This subclass takes the snapshots as copies and otherwise keeps Avalanche's algorithm
    (its damping ``xi``, clipping and sign conventions) untouched.
    """

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_exp(strategy, **kwargs)  # creates the buffers for new parameters
        self._snapshot(strategy.model, self.ewc_data[0])  # the start of the path: a copy

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self._snapshot(strategy.model, self.syn_data["old_theta"])

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self._snapshot(strategy.model, self.syn_data["new_theta"])
        self._snapshot(strategy.model, self.syn_data["grad"], grad=True)
        with torch.no_grad():
            for name, trajectory in self.syn_data["trajectory"].items():
                step = self.syn_data["new_theta"][name].data - self.syn_data["old_theta"][name].data
                trajectory.data += self.syn_data["grad"][name].data * step

    @torch.no_grad()
    def _snapshot(self, model: nn.Module, target: Any, *, grad: bool = False) -> None:
        for name, param in SynapticIntelligencePlugin.allowed_parameters(model, self.excluded_parameters):
            source = param.grad if grad else param
            if source is None:  # a parameter without gradient this step: no path increment
                target[name].data = torch.zeros(param.numel())
                continue
            target[name].data = source.detach().flatten().to("cpu", copy=True)


class ZeroLossMASPlugin(MASPlugin):
    """Avalanche's MAS (Aljundi et al. 2018) that accepts a mini-batch whose loss is exactly 0.

    Avalanche 0.6.0's ``before_backward`` checks ``if not strategy.loss`` and raises "Loss is not
    available" for a zero loss tensor, which a fitted mini-batch reaches in float32 (split digits,
    lr 0.1, 20 epochs: the comparison stopped there). This subclass adds the same penalty,
    ``lambda * sum Omega (W - W*)^2``, and refuses only a missing loss.
    """

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if strategy.clock.train_exp_counter == 0:
            return
        if not self.importance or not self.params:
            raise ValueError("MAS has no importance or anchor yet: was after_training_exp skipped?")
        if strategy.loss is None:
            raise ValueError("Loss is not available")
        penalty = sum(
            torch.sum(self.importance[name].expand(p.shape) * (p - self.params[name].expand(p.shape)).pow(2))
            for name, p in strategy.model.named_parameters()
            if name in self.importance
        )
        strategy.loss = strategy.loss + self._lambda * penalty


class FreezeFeaturesPlugin(SupervisedPlugin):
    """SGD-F: after the first experience the shared layers ``model.features`` stop learning.

    Freezing is ``requires_grad_(False)`` plus eval mode for the BatchNorm layers inside
    ``features`` (their running statistics are frozen too). Avalanche re-adds every parameter to
    the optimiser and calls ``model.train()`` before each experience, so the plugin re-applies both
    in ``before_training_exp``. Heads keep learning.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.frozen:
            freeze_features(strategy.model)

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        if self.frozen:  # the strategy calls model.train() before every epoch
            freeze_features(strategy.model)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.frozen = True
        freeze_features(strategy.model)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return method


def _is_device(value: Any) -> bool:
    if isinstance(value, torch.device):
        return True
    try:
        return isinstance(value, str) and torch.device(value) is not None
    except RuntimeError:
        return False


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite_positive(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
