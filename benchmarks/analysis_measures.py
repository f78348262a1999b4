"""Importance measures to compare with SPP (EWC's Fisher, MAS), and reading a run directory back."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Subset

from avalanche_spp.importance import check_choice, trainable_parameters
from benchmarks.records import read_json

log = logging.getLogger(__name__)

#: Labels of :func:`fisher_importance`: the data's labels or the model's own predictive distribution.
FISHER_LABELS = ("empirical", "expected")
ForwardFn = Callable[[nn.Module, Tensor], Tensor]


def fisher_importance(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    forward: ForwardFn | None = None,
    *,
    labels: str = "empirical",
) -> dict[str, Tensor]:
    """EWC's importance: the diagonal Fisher information ``F_kk`` (Kirkpatrick et al., 2017).

    Per sample, not per mini-batch: ``F = 1/N sum_n (d log p(y_n | x_n) / dW)**2``.

    - ``labels="empirical"``: ``y_n`` is the data's label (the "empirical Fisher", what
      Avalanche's ``EWCPlugin`` uses, though it squares mini-batch gradients instead).
    - ``labels="expected"``: the expectation over the model's own predictive distribution,
      ``F = 1/N sum_n sum_c q_c(x_n) (d log q_c(x_n) / dW)**2`` (the true Fisher; one gradient
      per class).

    The model is put in eval mode for the pass and its modes are restored afterwards.

    Args:
        model: any ``nn.Module``.
        batches: items ``(x (B, ...), y (B,))``.
        forward: ``forward(model, x) -> (B, C)`` logits (default ``model(x)``); bind the task of a
            multi-head model here. It runs under ``torch.func.vmap``.
        labels: ``"empirical"`` or ``"expected"``.

    Returns:
        ``{name: F}`` shaped like each trainable parameter.
    """
    check_choice("labels", labels, FISHER_LABELS)
    forward = forward or _call_model

    def accumulate(wrapper: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor) -> dict:
        def log_prob(w: dict[str, Tensor], xs: Tensor, c: Tensor) -> Tensor:
            logits = functional_call(wrapper, w, (xs.unsqueeze(0),))
            return torch.log_softmax(logits, dim=-1)[0].gather(0, c.reshape(1))[0]

        per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0), chunk_size=_chunk(weights))
        if labels == "empirical":
            return {n: (g * g).sum(0) for n, g in per_sample(weights, x, y).items()}
        with torch.no_grad():
            q = torch.softmax(forward(wrapper.model, x), dim=-1)  # (B, C)
        sums = {n: torch.zeros_like(w) for n, w in weights.items()}
        for c in range(q.shape[1]):
            target = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
            for n, g in per_sample(weights, x, target).items():
                weight = q[:, c].reshape(-1, *([1] * (g.dim() - 1)))
                sums[n] += (weight * g * g).sum(0)
        return sums

    return _per_sample_mean(model, batches, forward, accumulate, needs_labels=True)


def mas_importance(
    model: nn.Module, batches: Iterable[Any], forward: ForwardFn | None = None
) -> dict[str, Tensor]:
    """MAS importance (Aljundi et al., 2018): ``Omega = 1/N sum_n |d ||f(x_n)||_2**2 / dW|``.

    ``f(x)`` is the model's output (logits of the task's head); the absolute value is taken per
    sample, as the paper defines it. Labels are not used. Eval mode, modes restored afterwards.

    Args:
        model: any ``nn.Module``.
        batches: items ``x (B, ...)`` or ``(x, y)`` (``y`` ignored).
        forward: ``forward(model, x) -> (B, C)`` (default ``model(x)``); runs under ``vmap``.

    Returns:
        ``{name: Omega}`` shaped like each trainable parameter.
    """
    forward = forward or _call_model

    def accumulate(wrapper: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor | None) -> dict:
        def squared_norm(w: dict[str, Tensor], xs: Tensor) -> Tensor:
            return functional_call(wrapper, w, (xs.unsqueeze(0),)).pow(2).sum()

        per_sample = vmap(grad(squared_norm), in_dims=(None, 0), chunk_size=_chunk(weights))
        return {n: g.abs().sum(0) for n, g in per_sample(weights, x).items()}

    return _per_sample_mean(model, batches, forward, accumulate, needs_labels=False)


class _ForwardModule(nn.Module):
    """Lets ``functional_call`` swap the weights of ``model`` under an arbitrary ``forward``."""

    def __init__(self, model: nn.Module, forward: ForwardFn) -> None:
        super().__init__()
        self.model = model
        self._forward_fn = forward

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_fn(self.model, x)


def _per_sample_mean(
    model: nn.Module,
    batches: Iterable[Any],
    forward: ForwardFn,
    accumulate: Callable[..., dict[str, Tensor]],
    *,
    needs_labels: bool,
) -> dict[str, Tensor]:
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad=True): nothing to measure")
    wrapper = _ForwardModule(model, forward)
    weights = {"model." + n: p.detach() for n, p in params.items()}
    device = next(iter(params.values())).device
    sums = {n: torch.zeros_like(w) for n, w in weights.items()}
    count = 0
    with eval_mode(model):
        for item in batches:
            x, y = _inputs_and_labels(item)
            if needs_labels and not isinstance(y, Tensor):
                raise ValueError("the empirical Fisher needs labels: batches must yield (x, y) tensors")
            x = x.to(device)
            y = y.to(device) if isinstance(y, Tensor) else None
            if x.shape[0] == 0:
                continue
            for name, value in accumulate(wrapper, weights, x, y).items():
                sums[name] += value
            count += x.shape[0]
    if count == 0:
        raise ValueError("no input sample to measure importance on: the batches were empty")
    return {n: sums["model." + n] / count for n in params}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every module's own mode back afterwards, even on error."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def _inputs_and_labels(item: Any) -> tuple[Tensor, Tensor | None]:
    """``(x, y)`` from an item ``x`` or ``(x, y, ...)``; ``y`` is ``None`` when absent."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _chunk(weights: Mapping[str, Tensor]) -> int:
    """Per-sample gradients held at once: about 2**25 floats (128 MiB in float32)."""
    return max(1, 2**25 // max(1, sum(w.numel() for w in weights.values())))


def _call_model(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def read_records(run_dir: str | os.PathLike[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """The run records of a comparison folder, by ``(method, seed)``.

    Raises:
        ValueError: no ``runs/*.json`` in the folder (not a ``benchmarks.run`` output).
    """
    run_dir = Path(run_dir)
    paths = sorted((run_dir / "runs").glob("*.json"))
    if not paths:
        raise ValueError(
            f"{run_dir} holds no runs/*.json: give the --out folder of `python -m benchmarks.run`"
        )
    records = {}
    for path in paths:
        record = read_json(path)
        records[(record["method"], int(record["seed"]))] = record
    return records


def load_task_tensors(run_dir: str | os.PathLike[str], method: str, seed: int, task: int) -> dict[str, Any]:
    """``{"task", "weights", "omega"}`` saved by ``TensorSaver`` after task ``task`` (0-based).

    Raises:
        ValueError: the file is missing, with the command option that writes it.
    """
    path = Path(run_dir) / "tensors" / f"{method}_seed{seed}" / f"task{task}.pt"
    if not path.exists():
        raise ValueError(
            f"{path} is missing: rerun `python -m benchmarks.run` with --save-tensors (and "
            f"--methods including {method}) to keep the weights and importances after each task"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "weights" not in payload:
        raise ValueError(f"{path} is not a TensorSaver file (a dict with 'weights' and 'omega')")
    return payload


def rebuild_model(
    record: Mapping[str, Any], weights: Mapping[str, Tensor], stream: Any, task: int
) -> nn.Module:
    """The run's model as it was after task ``task`` (0-based), in eval mode.

    The model is rebuilt with :func:`benchmarks.models.make_model` from the record's settings,
    adapted to experiences ``0 .. task`` and further ones until it has every saved parameter (the
    strategy's evaluation on the whole test stream creates all heads after the first task), and
    given the saved ``weights``. ``TensorSaver`` saves no buffer: BatchNorm running statistics
    keep their initial values, with a warning.

    Raises:
        ValueError: the saved weights do not match the rebuilt model's parameters.
    """
    from avalanche.models.dynamic_modules import avalanche_model_adaptation
    from avalanche.models.utils import is_multi_task_module

    from benchmarks.baselines import uses_multi_head
    from benchmarks.models import make_model
    from benchmarks.streams import benchmark_info

    config = record["config"]
    info = benchmark_info(record["benchmark"], n_tasks=config["n_tasks"])
    train = config.get("train", {})
    options: dict[str, Any] = {
        "multi_head": uses_multi_head(record["method"], bool(train.get("single_head", False)))
    }
    if info.model_family == "mlp":
        options.update(hidden=tuple(train.get("hidden", (512, 256))), dropout=train.get("dropout", 0.0))
    model = make_model(info, **options)
    if is_multi_task_module(model):
        # Heads appear as the strategy adapts to experiences, also during evaluation on the whole
        # test stream: adapt in stream order until the model has every saved parameter.
        for index, experience in enumerate(stream.train_stream):
            if index > task and set(weights) <= {n for n, _ in model.named_parameters()}:
                break
            avalanche_model_adaptation(model, experience)
    params = dict(model.named_parameters())
    if set(params) != set(weights):
        raise ValueError(
            f"the saved weights of {record['method']} after task {task + 1} do not fit the rebuilt "
            f"model: missing {sorted(set(params) - set(weights))}, unexpected "
            f"{sorted(set(weights) - set(params))}"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != weights[name].shape:
                raise ValueError(
                    f"saved {name} has shape {tuple(weights[name].shape)}, the model {tuple(p.shape)}"
                )
            p.copy_(weights[name])
    batch_norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        log.warning(
            "TensorSaver saves parameters only: the running statistics of %s keep their initial "
            "values, so importances of this model are measured with untrained normalisation",
            batch_norms,
        )
    return model.eval()


def task_forward(model: nn.Module, task: int) -> ForwardFn:
    """``forward(model, x)`` giving the logits of ``task``'s head (any head for a single-head model)."""
    from avalanche.models.utils import is_multi_task_module

    if is_multi_task_module(model):
        return lambda m, x: m(x, task)
    return _call_model


def task_batches(
    stream: Any, task: int, *, samples: int | None = None, batch_size: int = 256, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` mini-batches of task ``task``'s training data (eval transforms).

    With ``samples`` below the task's size, a seeded subset is used: the same one ``SPPPlugin``
    draws with ``importance_samples=samples`` and ``seed=seed``.
    """
    experience = list(stream.train_stream)[task]
    dataset = experience.dataset
    dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
    if samples is not None and samples < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator)[:samples]
        dataset = Subset(dataset, sorted(order.tolist()))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=getattr(experience.dataset, "collate_fn", None),
    )
    return [(batch[0], torch.as_tensor(batch[1])) for batch in loader]
