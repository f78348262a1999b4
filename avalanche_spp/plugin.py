"""Avalanche plugin for Soft Parameter Pruning (SPP; Peng et al., arXiv 1812.01640).

The math lives in :mod:`avalanche_spp.importance`; this module wires it into Avalanche. Usage::

    from avalanche.training import Naive
    from avalanche_spp import SPPPlugin

    strategy = Naive(model, optimizer, criterion, plugins=[SPPPlugin()])
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from typing import Any

import dill
import torch
from avalanche.models.utils import is_multi_task_module
from avalanche.training.plugins import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from avalanche_spp._model_parts import _grow_to, _leaves_reached, _only
from avalanche_spp.distributed import _all_reduce_if_distributed, _distributed_sampler, _unwrap
from avalanche_spp.importance import (
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    SCALES,
    check_choice,
    check_form,
    entropy_importance,
    trainable_parameters,
)
from avalanche_spp.penalty import add_spp_penalty_grad_, mean_importance, scaled_importance, spp_penalty

# Avalanche's save_checkpoint / maybe_load_checkpoint dill-pickle the whole strategy; with
# avalanche-lib 0.6.0 and current typing_extensions that fails on a sentinel object unless dill
# pickles module-level objects by value. Setting it here lets users checkpoint a strategy that uses
# this plugin without knowing about it (it only widens what dill can pickle).
dill.settings["recurse"] = True

ACCUMULATIONS = ("sum", "max")
PENALTY_PATHS = ("gradient", "loss")
#: The constructor's keyword settings, as :meth:`SPPPlugin.state_dict` stores them.
SETTINGS = ("importance_samples", "importance_batch_size", "scale", "taylor_of", "clamp", "fisher",
            "accumulate", "seed", "penalty_via")  # fmt: skip

#: Default of ``SPPPlugin(importance_samples=...)``, chosen by measurement (docs/method.md, "Defaults").
DEFAULT_IMPORTANCE_SAMPLES: int | None = None


class SPPPlugin(SupervisedPlugin, supports_distributed=True):
    """Soft Parameter Pruning: a label-free, entropy-based importance penalty.

    After each training experience the plugin measures every trainable parameter's importance
    ``Omega`` on that experience's training data (eval mode, labels never read; paper eq. 3, see
    :func:`avalanche_spp.importance.entropy_importance`), adds it to the running total (eq. 4) and
    stores the weights ``W*``. While learning later experiences the loss gains
    ``lam * sum M * (W - W*)**2`` (eq. 5), ``M`` the accumulated importance on the chosen ``scale``.

    The penalty's gradient goes to the ``.grad`` of the parameters this step's loss reached (see
    ``penalty_via``); one the loss did not reach keeps no gradient, so no optimiser state moves it.

    A parameter created after the last snapshot (a new head) is free until its task is learned; a
    layer whose output grew (``IncrementalClassifier``) keeps its old rows penalised. Multi-head
    models are measured on each head's own logits, never on Avalanche's zero-padded output. In a
    ``torch.distributed`` run the ranks sum their statistics, so every rank holds the ``Omega`` of
    the whole experience.
    """

    def __init__(
        self,
        lam: float = DEFAULT_LAM,
        *,
        scale: str = DEFAULT_SCALE,
        taylor_of: str = DEFAULT_TAYLOR_OF,
        clamp: str = DEFAULT_CLAMP,
        importance_samples: int | None = DEFAULT_IMPORTANCE_SAMPLES,
        importance_batch_size: int = 256,
        fisher: str = DEFAULT_FISHER,
        accumulate: str = "sum",
        seed: int = 0,
        penalty_via: str = "gradient",
    ) -> None:
        """``SPPPlugin()``: the defaults chosen on validation streams (docs/method.md, section 4).

        Args:
            lam: strength of the penalty (>= 0, finite; 10). With the default ``scale="saturate"`` it is
                the stiffness of a weight far more important than average: such a weight is pulled
                back to ``W*`` like an L2 term ``lam * (W - W*)**2``, a weight of average importance
                gets half that, an unimportant one nearly none. 10 lost least against each stream's
                best over the MLP and CNN streams screened, whose best ran from 0.1 to 30 on permuted
                data, 0.3 to 300 on split and 10 to 300 on rotated data (``benchmarks.strength_by_kind``).
            scale: how the accumulated importance weighs the penalty. ``"saturate"`` (default):
                ``M = Omega / (Omega + m)``, ``m`` the mean accumulated ``Omega`` over every
                penalised scalar: a soft pruning mask in ``[0, 1)`` with the paper's ranking but
                none of its units, so ``lam`` does not depend on the model, data, importance form or
                number of tasks, and SGD stays stable for ``lam < (1 + momentum) / lr``.
                ``"mean"``: ``Omega / m`` (unbounded). ``"raw"``: the paper's eq. 5 as written.
            taylor_of, clamp, fisher: the importance's form, as in
                :func:`~avalanche_spp.importance.entropy_importance` (default ``"second_order"``:
                ``1/2 W**2 F``; ``clamp="batch"`` clamps each mini-batch; ``"none"`` is refused here).
            importance_samples: training samples of each experience the importance pass uses (a
                subset drawn with ``seed``); ``None``: the whole experience.
            importance_batch_size: mini-batch of the importance pass (of the batch Fisher and clamp), sent
                through the model in chunks of at most ``train_mb_size`` (the same ``Omega``).
            accumulate: ``"sum"`` (paper eq. 4) or ``"max"`` (the authors' Caltech-101 runs).
            seed: seed of the subset drawn when ``importance_samples`` is set.
            penalty_via: ``"gradient"`` (default): add ``2 lam M (W - W*)`` to ``.grad`` after the
                backward pass, the same update at a fifth of the cost; ``"loss"``: add the penalty to
                ``strategy.loss`` before it (eq. 5 literally), for anything that must see it there,
                e.g. a mixed-precision gradient scaler.

        ``ValueError`` for an argument outside its allowed values.
        """
        super().__init__()
        self.lam = _check_strength(lam)
        if importance_samples is not None and not _is_positive_int(importance_samples):
            raise ValueError(
                f"importance_samples must be a positive int or None (whole experience), "
                f"got {importance_samples!r}"
            )
        if not _is_positive_int(importance_batch_size):
            raise ValueError(f"importance_batch_size must be a positive int, got {importance_batch_size!r}")
        check_form(taylor_of, clamp, fisher)
        check_choice("scale", scale, SCALES)
        if clamp == "none":
            raise ValueError('clamp="none" gives negative importances, which cannot weigh a penalty')
        check_choice("accumulate", accumulate, ACCUMULATIONS)
        check_choice("penalty_via", penalty_via, PENALTY_PATHS)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.importance_samples = importance_samples
        self.importance_batch_size = importance_batch_size
        self.scale, self.taylor_of, self.clamp, self.fisher = scale, taylor_of, clamp, fisher
        self.accumulate, self.seed, self.penalty_via = accumulate, seed, penalty_via

        self.omega: dict[str, Tensor] = {}
        """Accumulated importance ``Omega^{1:t}`` by parameter name."""
        self.anchor: dict[str, Tensor] = {}
        """Weights ``W*`` after the last learned experience, by parameter name."""
        self.importance_time_s: list[float] = []
        """Wall time of each importance pass, in seconds."""
        self._penalty_terms: tuple[list[nn.Parameter], list[Tensor], list[Tensor]] | None = None
        self._penalty_model: nn.Module | None = None

    # ----------------------------------------------------------------------------- callbacks
    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """Refuse an empty experience now, before Avalanche's loader fails on it with a bare error."""
        _check_not_empty(strategy, getattr(strategy, "adapted_dataset", None))

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Match the stored state to the model as adapted for this experience."""
        if not trainable_parameters(_unwrap(strategy.model)):
            raise ValueError(
                "SPPPlugin: the model has no trainable parameter (requires_grad=True), so there is "
                "nothing to learn, measure or protect; unfreeze some parameters"
            )
        self._penalty_terms = None  # rebuilt lazily on the first step (heads may have changed)
        if self.scale == "saturate":  # M < 1: the bound below holds whatever Omega
            _warn_if_sgd_unstable(self.lam, getattr(strategy, "optimizer", None))

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        """``penalty_via="loss"``: ``strategy.loss += lam * sum Omega (W - W*)^2`` (paper eq. 5)."""
        if self.penalty_via != "loss":
            return
        params, anchors, omegas = self._live_penalty_terms(strategy)
        reached = _leaves_reached(strategy.loss)
        params, anchors, omegas = _only(params, anchors, omegas, keep=[p in reached for p in params])
        if params:  # as the gradient path: only the parameters the loss reaches (see there)
            strategy.loss = strategy.loss + self.lam * spp_penalty(params, anchors, omegas)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        """``penalty_via="gradient"``: ``W.grad += 2 lam Omega (W - W*)``, the penalty's gradient."""
        if self.penalty_via != "gradient":
            return
        params, anchors, omegas = self._live_penalty_terms(strategy)
        # Only the parameters this step's loss reached (with a .grad): one it did not touch gets no
        # .grad, so the optimiser (its momentum or Adam state) leaves it exactly where it is.
        params, anchors, omegas = _only(params, anchors, omegas, keep=[p.grad is not None for p in params])
        if params:
            add_spp_penalty_grad_(params, anchors, omegas, self.lam)

    def _live_penalty_terms(self, strategy: Any) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        if self.lam == 0.0 or not self.omega:
            return [], [], []
        model = _unwrap(strategy.model)
        if self._penalty_terms is None or self._penalty_model is not model:
            self._penalty_terms = self._training_terms(model)
            self._penalty_model = model
        return self._penalty_terms

    def _training_terms(self, model: nn.Module) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        """The terms training uses (:meth:`penalty_terms`; a subclass may reshape them)."""
        return self.penalty_terms(model)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Measure this experience's importance, accumulate it, and snapshot ``W*``."""
        model = _unwrap(strategy.model)
        _check_not_empty(strategy, strategy.experience.dataset)
        start = time.perf_counter()
        mb = getattr(strategy, "train_mb_size", None)  # the batch Fisher's chunks: a training step's size
        chunk = mb if _is_positive_int(mb) and self.fisher == "batch" else None
        omega = self._importance(model, self._importance_batches(strategy, model), chunk_size=chunk)
        self.importance_time_s.append(time.perf_counter() - start)
        self.update(model, omega)

    def _importance(self, model: nn.Module, batches: Iterator[Any], **options: Any) -> dict[str, Tensor]:
        """This experience's ``Omega`` (eq. 3); a subclass may add ``entropy_importance`` ``options``."""
        # A multi-head item is (x, int task): the default forward, model(x, task), takes
        # MultiTaskModule's single-task path, that head's own logits with no zero padding.
        return entropy_importance(
            model,
            batches,
            taylor_of=self.taylor_of,
            clamp=self.clamp,
            fisher=self.fisher,
            all_reduce=_all_reduce_if_distributed(),
            **options,
        )

    # ------------------------------------------------------------------------------- state
    def update(self, model: nn.Module, omega: dict[str, Tensor]) -> None:
        """Fold one experience's importance into the total and store ``W*`` of ``model``."""
        with torch.no_grad():
            for name, value in omega.items():
                old = self.omega.get(name)
                if old is None:
                    self.omega[name] = value.detach().clone()
                    continue
                old = _grow_to(old, value.shape, name, what="importance").to(value.device)
                if self.accumulate == "sum":
                    self.omega[name] = old + value
                else:
                    self.omega[name] = torch.maximum(old, value)
            # W* of every parameter that has an importance, frozen ones included (a parameter frozen
            # now may be unfrozen later, and the state must name the same parameters twice).
            self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.omega}
        self._penalty_terms = None

    def penalty_terms(self, model: nn.Module) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        """The ``(W, W*, Omega)`` triples of every parameter that has an importance.

        A parameter that grew since the snapshot (new output rows) gets ``W*`` and ``Omega``
        zero-padded, so its new entries are free. A parameter that is gone, or whose shape shrank or
        changed in another way, raises ``ValueError``: the stored importance no longer fits the model.
        """
        current = dict(model.named_parameters())
        params, anchors, omegas = [], [], []
        mean = self.importance_mean()
        for name, omega in self.omega.items():
            p = current.get(name)
            if p is None:
                raise ValueError(
                    f"SPP holds an importance for parameter {name!r}, which the model no longer has. "
                    "Parameters must not be removed or renamed between experiences."
                )
            if not p.requires_grad:
                continue
            omega = _grow_to(omega, p.shape, name, what="importance").to(p.device, p.dtype)
            anchor = _grow_to(self.anchor[name], p.shape, name, what="anchor").to(p.device, p.dtype)
            self.omega[name], self.anchor[name] = omega, anchor
            params.append(p)
            anchors.append(anchor)
            omegas.append(scaled_importance(omega, self.scale, mean))
        return params, anchors, omegas

    def importance_mean(self) -> float:
        """``m``: the mean accumulated ``Omega`` over every scalar that has an importance."""
        return mean_importance(self.omega.values())

    def penalty(self, model: nn.Module) -> Tensor:
        """The current penalty ``lam * sum M (W - W*)^2`` of ``model``, ``M`` the scaled importance."""
        params, anchors, omegas = self.penalty_terms(model)
        if not params or self.lam == 0.0:
            device = next(model.parameters(), torch.empty(0)).device
            return torch.zeros((), device=device)
        return self.lam * spp_penalty(params, anchors, omegas)

    def state_dict(self) -> dict[str, Any]:
        """Importances, anchors and settings, as plain tensors and values."""
        return {
            "lam": self.lam,
            "omega": {n: t.detach().clone() for n, t in self.omega.items()},
            "anchor": {n: t.detach().clone() for n, t in self.anchor.items()},
            "importance_time_s": list(self.importance_time_s),
            "settings": {key: getattr(self, key) for key in SETTINGS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors move to the model's device lazily)."""
        missing = {"lam", "omega", "anchor"} - set(state)
        if missing:
            raise ValueError(f"not an SPPPlugin state: missing keys {sorted(missing)}")
        if set(state["omega"]) != set(state["anchor"]):
            raise ValueError("corrupt SPPPlugin state: omega and anchor name different parameters")
        for name, omega in state["omega"].items():
            anchor = state["anchor"][name]
            if not isinstance(omega, Tensor) or not isinstance(anchor, Tensor):
                raise ValueError(f"corrupt SPPPlugin state: omega and anchor of {name!r} must be tensors")
            if omega.shape != anchor.shape:
                raise ValueError(
                    f"corrupt SPPPlugin state: omega {tuple(omega.shape)} and anchor "
                    f"{tuple(anchor.shape)} of {name!r} differ in shape"
                )
            if not bool(torch.isfinite(omega).all()) or bool((omega < 0).any()):
                raise ValueError(
                    f"corrupt SPPPlugin state: the importance of {name!r} has negative, NaN or "
                    "Inf values (Omega must be finite and >= 0)"
                )
            if not bool(torch.isfinite(anchor).all()):
                raise ValueError(f"corrupt SPPPlugin state: the anchor of {name!r} is not finite")
        settings = dict(state.get("settings", {}))
        try:
            type(self)(state["lam"], **settings)
        except (TypeError, ValueError) as error:
            raise ValueError(f"corrupt SPPPlugin state: its settings are refused: {error}") from None
        self.lam = _check_strength(state["lam"])
        self.omega = {n: t.detach().clone() for n, t in state["omega"].items()}
        self.anchor = {n: t.detach().clone() for n, t in state["anchor"].items()}
        self.importance_time_s = list(state.get("importance_time_s", []))
        for key, value in settings.items():
            setattr(self, key, value)
        self._penalty_terms = None

    def __getstate__(self) -> dict[str, Any]:
        # The terms are views of live parameters: rebuilt after loading.
        return {**self.__dict__, "_penalty_terms": None, "_penalty_model": None}

    # ----------------------------------------------------------------------------- helpers
    def _importance_batches(self, strategy: Any, model: nn.Module) -> Iterator[Any]:
        """Input-only items from this experience's training data (eval transforms, no labels).

        Multi-head models yield ``(x, task_id)`` per task present in a mini-batch, so the entropy
        is taken over that head's own logits.
        """
        dataset = strategy.experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        if self.importance_samples is not None and self.importance_samples < len(dataset):
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(dataset), generator=generator)[: self.importance_samples]
            dataset = Subset(dataset, sorted(order.tolist()))
        sampler = _distributed_sampler(dataset)
        loader = DataLoader(
            dataset,
            batch_size=self.importance_batch_size,
            shuffle=False,
            sampler=sampler,
            # Its own generator: iterating a loader draws a seed from the global RNG otherwise,
            # which would shift the training shuffles of later tasks (SPP at lam=0 == Naive).
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=getattr(strategy.experience.dataset, "collate_fn", None),
        )
        multi_task = is_multi_task_module(model)
        for batch in loader:
            x = batch[0]
            if not multi_task:
                yield x
                continue
            task_labels = batch[-1]
            for task in torch.unique(task_labels).tolist():
                yield x[task_labels == task], int(task)


def _check_not_empty(strategy: Any, dataset: Any) -> None:
    if dataset is not None and len(dataset) == 0:
        number = getattr(strategy.experience, "current_experience", "?")
        raise ValueError(
            f"SPPPlugin: experience {number} has no training sample, so SPP cannot measure its "
            "importance; drop empty experiences from the stream"
        )


def _check_strength(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(
            f"lam (the penalty strength lambda) must be a finite number >= 0, got {lam!r}. "
            "0 disables the penalty; the paper found 0.5-4 stable on MNIST."
        )
    return float(lam)


def sgd_strength_limit(group: Any) -> float:
    """The largest ``lam`` SGD follows stably on ``lam * M (W - W*)**2``, ``M <= 1``, for an optimiser
    param group: ``(1 + mu) / (eta (1 - d))`` (``lr`` ``eta``, ``momentum`` ``mu``, ``dampening`` ``d``),
    with Nesterov ``(1 + mu) / (eta (1 + 2 mu))`` (docs/method.md, section 3); ``inf`` at ``eta = 0``."""
    lr, mu, damp = float(group["lr"]), float(group.get("momentum", 0)), float(group.get("dampening", 0))
    step = lr * ((1.0 - damp) if mu else 1.0) * ((1.0 + 2.0 * mu) if group.get("nesterov") else 1.0)
    return (1.0 + mu) / step if step > 0 else math.inf


def _warn_if_sgd_unstable(lam: float, optimizer: Any) -> None:
    """Warn, once, where an SGD group cannot follow the penalty stably (:func:`sgd_strength_limit`)."""
    for group in optimizer.param_groups if isinstance(optimizer, torch.optim.SGD) else []:
        if lam >= (limit := sgd_strength_limit(group)):
            warnings.warn(
                f"SPPPlugin(lam={lam:g}): SGD with lr {group['lr']:g}, momentum {group.get('momentum', 0):g} "
                f"follows the penalty stably only for lam < (1 + momentum) / lr = {limit:.3g} (with this "
                "group's dampening and Nesterov setting), so training may diverge; use a smaller lam or lr",
                stacklevel=2,
            )
            return


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
