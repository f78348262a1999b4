"""Looking inside a comparison run: the numbers and plots of the paper's Sec. 4.2.5 (Figs. 6-8).

Peng et al., "Overcome Catastrophic Forgetting by Soft Parameter Pruning", arXiv 1812.01640, argue
that SPP's importance is "concentrated and polarised" and that important weights stay put. This
module measures that on a run directory written by ``python -m benchmarks.run --save-tensors``
(``runs/<method>_seed<s>.json`` records and ``tensors/<method>_seed<s>/task<j>.pt`` holding
``{"task": j, "weights": {name: W}, "omega": {name: Omega} | None}`` after each task ``j``):

- Fig. 6: the distribution of three importance measures on the *same* trained model (the weights
  after task 1): EWC's diagonal Fisher (:func:`fisher_importance`), MAS (:func:`mas_importance`)
  and SPP (:func:`avalanche_spp.importance.entropy_importance`), each divided by its maximum and
  shown as a normalised density (:func:`normalized_density`), per layer and overall, with the
  fraction of near-zero values (:func:`near_zero_fraction`).
- Fig. 7(a): average accuracy on the tasks seen so far after each task.
- Fig. 7(b): per layer, the Frechet distance (:func:`frechet_distance_1d`) between the importance
  distribution of the first task (measured after task 1) and of the last task (after task T).
- Fig. 7(c): per layer, ``sum Omega_1 (W_T - W_1)**2`` (:func:`weighted_squared_change`).
- Fig. 8: for one layer, heatmaps of the task-1 importance and of ``|W_j - W_1|`` after later tasks.

Layers: parameters are grouped by the module that owns them (weight and bias together; see
:func:`layer_key`); every output head, whatever the model, is called ``head``. For a multi-head
model, "head" at task ``t`` means head ``t`` (the head of the task being measured).

Pure functions (numbers) come first, then the two importance measures, the run-directory reading,
:func:`analyze_run` (everything behind the figures), the plots (on
:class:`matplotlib.figure.Figure`, Agg canvas, no ``pyplot`` state) and :func:`write_analysis`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.stats import rankdata
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Subset

from avalanche_spp.importance import check_choice, entropy_importance, trainable_parameters
from benchmarks.report import _write_text_atomic, read_json, write_json

log = logging.getLogger(__name__)

#: Methods of the paper's Fig. 7: SPP, multi-head fine-tuning, single-head SGD.
DEFAULT_METHODS = ("spp", "finetune", "sgd")
#: Importance measures of Fig. 6, in the paper's colour order (blue, orange, green).
MEASURES = ("ewc", "mas", "spp")
#: Labels of :func:`fisher_importance`: the data's labels or the model's own predictive distribution.
FISHER_LABELS = ("empirical", "expected")
#: A value is "near zero" when below this fraction of the maximum (see :func:`near_zero_fraction`).
NEAR_ZERO = 1e-3
#: Lower end of the log10 density's range, in decades below the maximum.
LOG_DECADES = 8

#: File names :func:`write_analysis` writes.
ANALYSIS_JSON = "analysis.json"
ANALYSIS_MD = "analysis.md"
DENSITY_PLOT = "importance_density.png"
LOG_DENSITY_PLOT = "importance_density_log.png"
ACCURACY_PLOT = "accuracy_over_tasks.png"
FRECHET_PLOT = "frechet_distance.png"
CHANGE_PLOT = "weighted_change.png"
HEATMAP_PLOT = "importance_change_heatmaps.png"
OUTPUT_FILES = (
    ANALYSIS_JSON,
    ANALYSIS_MD,
    DENSITY_PLOT,
    LOG_DENSITY_PLOT,
    ACCURACY_PLOT,
    FRECHET_PLOT,
    CHANGE_PLOT,
    HEATMAP_PLOT,
)

_MEASURE_COLORS = {"ewc": "tab:blue", "mas": "tab:orange", "spp": "tab:green"}  # the paper's Fig. 6
_METHOD_COLORS = {"spp": "tab:red", "finetune": "tab:blue", "sgd": "tab:green"}  # the paper's Fig. 7
_HEAD = re.compile(r"^classifier\.(?:classifiers|heads)\.(?P<task>\d+)(?:\.(?P<rest>.+))?$")

ForwardFn = Callable[[nn.Module, Tensor], Tensor]


# ------------------------------------------------------------------------------------ layers


def layer_key(name: str) -> tuple[str, int | None]:
    """The layer a parameter belongs to, and the task of its head (``None``: shared).

    ``features.1.weight`` -> ``("features.1", None)``; a multi-head MLP's
    ``classifier.classifiers.3.classifier.bias`` -> ``("head", 3)``; a multi-head CNN's
    ``classifier.heads.3.0.weight`` -> ``("head.0", 3)``; a single head ``classifier.weight`` ->
    ``("head", None)`` (the repository's models call their output layer(s) ``classifier``).
    """
    path = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    match = _HEAD.match(path)
    if match:
        rest = match["rest"]
        return ("head" if rest in (None, "classifier") else f"head.{rest}"), int(match["task"])
    if path == "classifier":
        return "head", None
    if path.startswith("classifier."):
        return "head." + path[len("classifier.") :], None
    return path, None


def layer_values(tensors: Mapping[str, Tensor], task: int = 0) -> dict[str, Tensor]:
    """Flatten and concatenate the tensors of each layer (weights, then bias), in model order.

    Args:
        tensors: ``{param_name: tensor}`` (weights, importances, ...).
        task: which head of a multi-head model to keep (others are left out); shared layers and a
            single head are always kept.

    Returns:
        ``{layer: (n,) float64 tensor}``.
    """
    grouped: dict[str, list[Tensor]] = {}
    for name, tensor in tensors.items():
        layer, head_task = layer_key(name)
        if head_task is not None and head_task != task:
            continue
        grouped.setdefault(layer, []).append(tensor.detach().reshape(-1).to(torch.float64).cpu())
    return {layer: torch.cat(parts) for layer, parts in grouped.items()}


def layer_weight(tensors: Mapping[str, Tensor], layer: str, task: int = 0) -> Tensor:
    """The ``weight`` tensor of ``layer`` (head ``task`` of a multi-head model).

    Raises:
        ValueError: no such layer, naming the layers there are.
    """
    for name, tensor in tensors.items():
        if name.endswith(".weight") and layer_key(name) in ((layer, task), (layer, None)):
            return tensor.detach().to(torch.float64).cpu()
    layers = sorted({layer_key(n)[0] for n in tensors if n.endswith(".weight")})
    raise ValueError(f"no layer {layer!r} with a weight; layers: {layers}")


def weight_layers(tensors: Mapping[str, Tensor]) -> list[str]:
    """Layers whose ``weight`` is a 2-D matrix, in model order (candidates for Fig. 8)."""
    found: list[str] = []
    for name, tensor in tensors.items():
        layer = layer_key(name)[0]
        if name.endswith(".weight") and tensor.dim() == 2 and layer not in found:
            found.append(layer)
    return found


# ------------------------------------------------------------------------- pure numbers


def fit_gaussian(values: Tensor | np.ndarray) -> tuple[float, float]:
    """Mean and (population, ``ddof=0``) standard deviation of a 1-D sample, in float64."""
    array = _flat64(values)
    if array.size == 0:
        raise ValueError("cannot fit a Gaussian to an empty set of values")
    return float(array.mean()), float(array.std())


def frechet_distance_gaussians(mu1: float, sigma1: float, mu2: float, sigma2: float) -> float:
    """Frechet distance between two 1-D Gaussians ``N(mu1, sigma1**2)`` and ``N(mu2, sigma2**2)``.

    ``d**2 = (mu1 - mu2)**2 + sigma1**2 + sigma2**2 - 2 sigma1 sigma2 = (mu1 - mu2)**2 +
    (sigma1 - sigma2)**2``: the 1-D case of ``|mu1 - mu2|**2 + tr(S1 + S2 - 2 (S1 S2)**0.5)`` (the
    formula behind FID). Like FID, the squared distance is reported.
    """
    if sigma1 < 0 or sigma2 < 0:
        raise ValueError(f"standard deviations must be >= 0, got {sigma1!r} and {sigma2!r}")
    return (mu1 - mu2) ** 2 + sigma1**2 + sigma2**2 - 2.0 * sigma1 * sigma2


def frechet_distance_1d(first: Tensor | np.ndarray, second: Tensor | np.ndarray) -> float:
    """Frechet distance of two samples, each fitted by a Gaussian (:func:`fit_gaussian`).

    The paper's Fig. 7(b) compares the importance distribution of a layer after the first task with
    the one after the last task this way.
    """
    return frechet_distance_gaussians(*fit_gaussian(first), *fit_gaussian(second))


# Runs recorded before the sign option was named by what it computes.
_OLD_SIGNS = {"paper": "entropy", "authors": "neg_entropy"}


def normalized_density(
    values: Tensor | np.ndarray, *, bins: int = 50, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram density of ``values / scale`` on ``[0, 1]``: it integrates to 1.

    Args:
        values: ``(n,)`` non-negative importances.
        bins: number of equal-width bins.
        scale: divisor (default: the maximum of ``values``; all-zero values stay 0).

    Returns:
        ``(edges (bins + 1,), density (bins,))`` with ``sum(density * diff(edges)) == 1``.
    """
    scaled = _scaled(values, scale)
    edges = np.linspace(0.0, 1.0, _check_bins(bins) + 1)
    counts, _ = np.histogram(np.clip(scaled, 0.0, 1.0), bins=edges)
    return edges, counts / (scaled.size * np.diff(edges))


def log_density(
    values: Tensor | np.ndarray,
    *,
    bins: int = 50,
    scale: float | None = None,
    decades: int = LOG_DECADES,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram density of ``log10(values / scale)`` over the *non-zero* values, on ``[-decades, 0]``.

    Exact zeros have no logarithm: they are left out (report their fraction apart, e.g. SPP's
    clamped estimates). Non-zero values below ``10**-decades`` of the scale are counted in the first
    bin, so the density integrates to 1 whenever one value is non-zero (all zeros: a zero density).

    Returns:
        ``(edges (bins + 1,), density (bins,))``.
    """
    if isinstance(decades, bool) or not isinstance(decades, int) or decades < 1:
        raise ValueError(f"decades must be a positive int, got {decades!r}")
    scaled = _scaled(values, scale)
    positive = scaled[scaled > 0]
    edges = np.linspace(-float(decades), 0.0, _check_bins(bins) + 1)
    if positive.size == 0:
        return edges, np.zeros(bins)
    logs = np.log10(np.clip(positive, 10.0 ** (-decades), 1.0))
    counts, _ = np.histogram(logs, bins=edges)
    return edges, counts / (positive.size * np.diff(edges))


def near_zero_fraction(
    values: Tensor | np.ndarray, threshold: float = NEAR_ZERO, *, scale: float | None = None
) -> float:
    """Fraction of ``values`` below ``threshold * scale`` (default scale: their maximum).

    All-zero values are all near zero (1.0).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1) (a fraction of the maximum), got {threshold!r}")
    array = _flat64(values)
    if array.size == 0:
        raise ValueError("near_zero_fraction of an empty set of values")
    peak = float(array.max()) if scale is None else float(scale)
    if peak <= 0:
        return 1.0
    return float(np.mean(array < threshold * peak))


def weighted_squared_change(omega: Tensor, first: Tensor, last: Tensor) -> float:
    """``sum_k Omega_k (W_T,k - W_1,k)**2`` (the paper's Fig. 7(c)), in float64.

    Args:
        omega: ``Omega_1``, the importance measured after the first task, any shape.
        first: ``W_1``, the weights after the first task, shaped like ``omega``.
        last: ``W_T``, the weights after the last task, shaped like ``omega``.
    """
    if not (omega.shape == first.shape == last.shape):
        raise ValueError(
            f"omega {tuple(omega.shape)}, first {tuple(first.shape)} and last {tuple(last.shape)} "
            "must have the same shape"
        )
    diff = last.detach().to(torch.float64) - first.detach().to(torch.float64)
    return float((omega.detach().to(torch.float64) * diff * diff).sum())


def rank_correlation(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float | None:
    """Spearman's rank correlation of two equal-length samples (ties get their average rank).

    Returns ``None`` when either sample is constant (the correlation is undefined).
    """
    x, y = _flat64(a), _flat64(b)
    if x.shape != y.shape:
        raise ValueError(f"samples of different sizes: {x.size} and {y.size}")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def change_by_importance(
    omega: Tensor, change: Tensor, *, top: float = 0.1, bottom: float = 0.5
) -> dict[str, float]:
    """Mean absolute change of the most and of the least important weights.

    Args:
        omega: importances, any shape. change: ``|W_j - W_1|``, shaped like ``omega``.
        top: fraction of the most important weights (by rank).
        bottom: fraction of the least important weights (by rank).

    Returns:
        ``{"top": mean change of the top fraction, "bottom": ... of the bottom fraction,
        "all": mean change}``.
    """
    if omega.shape != change.shape:
        raise ValueError(f"omega {tuple(omega.shape)} and change {tuple(change.shape)} differ in shape")
    for name, value in (("top", top), ("bottom", bottom)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
    order = np.argsort(_flat64(omega), kind="stable")  # ascending importance
    values = _flat64(change)[order]
    n = values.size
    n_top, n_bottom = max(1, round(top * n)), max(1, round(bottom * n))
    return {
        "top": float(values[n - n_top :].mean()),
        "bottom": float(values[:n_bottom].mean()),
        "all": float(values.mean()),
    }


def _flat64(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().to(torch.float64).reshape(-1).numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _scaled(values: Tensor | np.ndarray, scale: float | None) -> np.ndarray:
    array = _flat64(values)
    if array.size == 0:
        raise ValueError("no values to make a density of")
    if np.any(array < 0):
        raise ValueError("importances must be >= 0 for a density on [0, 1]")
    peak = float(array.max()) if scale is None else float(scale)
    return array / peak if peak > 0 else array


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    return bins


# --------------------------------------------------------------------- importance measures


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
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
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
    finally:
        for module, training in modes.items():
            module.train(training)
    if count == 0:
        raise ValueError("no input sample to measure importance on: the batches were empty")
    return {n: sums["model." + n] / count for n in params}


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


# ------------------------------------------------------------------------ run directories


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
    options: dict[str, Any] = {"multi_head": uses_multi_head(record["method"])}
    if info.model_family == "mlp":
        train = config.get("train", {})
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


# ---------------------------------------------------------------------------- the analysis


@dataclass
class Analysis:
    """What :func:`analyze_run` found: ``numbers`` (JSON-ready) and the Fig. 8 matrices.

    ``heatmaps[method]`` holds ``"importance"`` and ``"change_after_task<j>"`` (1-based) as
    ``(out, in)`` float arrays of the chosen layer.
    """

    numbers: dict[str, Any]
    heatmaps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def analyze_run(
    run_dir: str | os.PathLike[str],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int | None = None,
    reference_method: str = "spp",
    samples: int | None = None,
    fisher_labels: str = "empirical",
    near_zero: float = NEAR_ZERO,
    bins: int = 50,
    layer: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> Analysis:
    """Compute every number behind Figs. 6-8 for a comparison run directory.

    Args:
        run_dir: the ``--out`` folder of ``python -m benchmarks.run --save-tensors``.
        methods: the methods of Figs. 7-8 (those present in the run are used; at least one).
        seed: which seed's tensors to analyse (default: the smallest). Fig. 7(a) averages all seeds.
        reference_method: whose weights after task 1 Fig. 6 measures (EWC, MAS and SPP on them).
        samples: training samples of a task used by every importance pass (default: the run's
            ``spp_importance_samples``, i.e. what the SPP plugin used; ``None`` there: all).
        fisher_labels: EWC's Fisher, ``"empirical"`` or ``"expected"`` (:func:`fisher_importance`).
        near_zero: threshold of :func:`near_zero_fraction`, a fraction of the maximum.
        bins: bins of the densities.
        layer: Fig. 8's layer (default: the last shared layer with a weight matrix).
        data_root: overrides the records' data folder.

    Returns:
        An :class:`Analysis`.
    """
    from benchmarks.streams import make_benchmark

    run_dir = Path(run_dir)
    records = read_records(run_dir)
    seeds = sorted({s for (_, s) in records})
    seed = seeds[0] if seed is None else seed
    present = [m for m in methods if (m, seed) in records]
    if not present:
        available = sorted({m for (m, s) in records if s == seed})
        raise ValueError(f"none of the methods {list(methods)} ran with seed {seed}; the run has {available}")
    if (reference_method, seed) not in records:
        raise ValueError(
            f"reference method {reference_method!r} has no run with seed {seed} in {run_dir}; "
            f"choose one of {sorted({m for (m, s) in records if s == seed})}"
        )
    check_choice("fisher_labels", fisher_labels, FISHER_LABELS)
    _check_bins(bins)
    if not 0 < near_zero < 1:
        raise ValueError(f"near_zero must be a fraction of the maximum in (0, 1), got {near_zero!r}")
    first_record = records[(present[0], seed)]
    config = first_record["config"]
    benchmark, n_tasks = first_record["benchmark"], int(config["n_tasks"])
    for m in {*present, reference_method}:
        other = records[(m, seed)]
        if other["benchmark"] != benchmark or int(other["config"]["n_tasks"]) != n_tasks:
            raise ValueError(f"{m} ran on a different benchmark or task count than {present[0]}")
    train = config.get("train", {})
    spp_options = {
        "fisher": train.get("spp_fisher", "per_sample"),
        "taylor_of": train.get("spp_taylor_of", _OLD_SIGNS.get(train.get("spp_first_order"), "entropy")),
        "clamp": train.get("spp_clamp", "experience"),
        "normalize": train.get("spp_normalize"),
    }
    samples = train.get("spp_importance_samples") if samples is None else samples
    root = data_root if data_root is not None else config.get("data_root")
    stream = make_benchmark(
        benchmark,
        split=config.get("split", "test"),
        seed=seed,
        data_root=root,
        n_tasks=n_tasks,
        **config.get("benchmark_options", {}),
    )
    last = n_tasks - 1
    data = {t: task_batches(stream, t, samples=samples) for t in sorted({0, last})}
    n_samples = {t: sum(len(x) for x, _ in batches) for t, batches in data.items()}

    def spp_importance(model: nn.Module, task: int) -> dict[str, Tensor]:
        items = [x for x, _ in data[task]]
        return entropy_importance(model, items, task_forward(model, task), **spp_options)

    # Fig. 6: EWC, MAS and SPP on the reference method's weights after task 1.
    reference = load_task_tensors(run_dir, reference_method, seed, 0)
    candidates = weight_layers(reference["weights"])
    if layer is not None and layer not in candidates:
        raise ValueError(f"layer {layer!r} has no weight matrix; choose one of {candidates}")
    model = rebuild_model(records[(reference_method, seed)], reference["weights"], stream, 0)
    forward = task_forward(model, 0)
    measures = {
        "ewc": fisher_importance(model, data[0], forward, labels=fisher_labels),
        "mas": mas_importance(model, data[0], forward),
        "spp": spp_importance(model, 0),
    }
    numbers: dict[str, Any] = {
        "run": {
            "run_dir": str(run_dir),
            "benchmark": benchmark,
            "n_tasks": n_tasks,
            "seed": seed,
            "seeds": seeds,
            "methods": present,
            "strengths": {m: records[(m, seed)].get("strength") for m in present},
        },
        "settings": {
            "samples_per_task": n_samples,
            "spp_importance": spp_options,
            "fisher_labels": fisher_labels,
            "near_zero_threshold": near_zero,
            "bins": bins,
            "log_decades": LOG_DECADES,
        },
        "accuracy": accuracy_after_each_task(records, present),
        "importance_distribution": importance_distribution(
            measures, near_zero=near_zero, bins=bins, model=f"{reference_method} seed {seed} after task 1"
        ),
    }

    # Figs. 7(b), 7(c), 8: SPP's entropy importance of each method's weights after tasks 1 and T.
    first_importance, last_importance, weights = {}, {}, {}
    checks = {}
    for method in present:
        tensors = {t: load_task_tensors(run_dir, method, seed, t) for t in range(n_tasks)}
        weights[method] = {t: tensors[t]["weights"] for t in range(n_tasks)}
        for task, target in ((0, first_importance), (last, last_importance)):
            rebuilt = rebuild_model(records[(method, seed)], weights[method][task], stream, task)
            target[method] = spp_importance(rebuilt, task)
        saved = [tensors[t].get("omega") for t in range(n_tasks)]
        if all(o is not None for o in saved):
            checks[method] = saved_importance_check(
                saved, first_importance[method], last_importance[method], train.get("spp_accumulate", "sum")
            )
    numbers["run"]["same_weights_after_task_1"] = _same_weights([weights[m][0] for m in present])
    numbers["frechet"] = frechet_by_layer(first_importance, last_importance, last_task=last)
    numbers["weighted_change"] = change_by_layer(first_importance, weights, last_task=last)
    chosen = layer or _default_layer(weights[present[0]][0])
    heatmap_numbers, heatmaps = heatmap_data(first_importance, weights, chosen)
    numbers["heatmaps"] = heatmap_numbers
    numbers["checks"] = {"saved_vs_recomputed_spp_importance": checks}
    return Analysis(numbers=numbers, heatmaps=heatmaps)


def accuracy_after_each_task(
    records: Mapping[tuple[str, int], Mapping[str, Any]], methods: Sequence[str]
) -> dict[str, Any]:
    """Fig. 7(a): ACC on the tasks seen so far after each task, mean over seeds, per method.

    Reads each record's ``metrics_after_each_task["acc"]`` (fractions).
    """
    out = {}
    for method in methods:
        runs = {s: r for (m, s), r in sorted(records.items()) if m == method}
        curves = {s: r["metrics_after_each_task"]["acc"] for s, r in runs.items()}
        lengths = {len(c) for c in curves.values()}
        if len(lengths) != 1:
            raise ValueError(f"{method}: seeds saw different numbers of tasks {sorted(lengths)}")
        stacked = np.asarray([[math.nan if v is None else v for v in c] for c in curves.values()])
        out[method] = {
            "seeds": list(curves),
            "mean": stacked.mean(axis=0).tolist(),
            "per_seed": {str(s): c for s, c in curves.items()},
        }
    return out


def importance_distribution(
    measures: Mapping[str, Mapping[str, Tensor]], *, near_zero: float, bins: int, model: str
) -> dict[str, Any]:
    """Fig. 6 numbers: per measure, overall and per layer, densities and near-zero fractions.

    Each group (``"all"`` or a layer) is divided by its own maximum. Head ``0`` of a multi-head
    model is the task-1 head.
    """
    groups: dict[str, dict[str, Any]] = {}
    edges = log_edges = None
    for measure, omega in measures.items():
        layers = layer_values(omega, task=0)
        for group, values in {"all": torch.cat(list(layers.values())), **layers}.items():
            edges, density = normalized_density(values, bins=bins)
            log_edges, log_dens = log_density(values, bins=bins)
            groups.setdefault(group, {})[measure] = {
                "n": int(values.numel()),
                "max": float(values.max()),
                "mean": float(values.mean()),
                "near_zero_fraction": near_zero_fraction(values, near_zero),
                "zero_fraction": float((values == 0).double().mean()),
                "density": density,
                "log_density": log_dens,
            }
    return {
        "model": model,
        "measures": list(measures),
        "edges": edges,
        "log_edges": log_edges,
        "groups": groups,
    }


def frechet_by_layer(
    first: Mapping[str, Mapping[str, Tensor]],
    last: Mapping[str, Mapping[str, Tensor]],
    *,
    last_task: int,
) -> dict[str, Any]:
    """Fig. 7(b): per method and layer, Gaussian fits and the Frechet distance, first vs last task.

    ``first[method]`` is measured after task 1 (head 0), ``last[method]`` after task T (head
    ``last_task``, 0-based), so "head" compares the head of each task being measured.
    """
    out: dict[str, Any] = {}
    for method in first:
        a = layer_values(first[method], task=0)
        b = layer_values(last[method], task=last_task)
        rows = {}
        for layer in a:
            if layer not in b:
                continue
            (mu1, s1), (mu2, s2) = fit_gaussian(a[layer]), fit_gaussian(b[layer])
            rows[layer] = {
                "mu_first": mu1,
                "sigma_first": s1,
                "mu_last": mu2,
                "sigma_last": s2,
                "frechet": frechet_distance_gaussians(mu1, s1, mu2, s2),
            }
        out[method] = rows
    return out


def change_by_layer(
    first_importance: Mapping[str, Mapping[str, Tensor]],
    weights: Mapping[str, Mapping[int, Mapping[str, Tensor]]],
    *,
    last_task: int,
) -> dict[str, Any]:
    """Fig. 7(c): per method and layer, ``sum Omega_1 (W_T - W_1)**2`` and ``sum (W_T - W_1)**2``.

    Parameters that exist after task 1 are compared (head 0 for a multi-head model).
    """
    out: dict[str, Any] = {}
    for method, omega in first_importance.items():
        w_first, w_last = weights[method][0], weights[method][last_task]
        per_layer: dict[str, dict[str, float]] = {}
        for name, o in omega.items():
            layer, task = layer_key(name)
            if task not in (None, 0):
                continue
            row = per_layer.setdefault(layer, {"weighted": 0.0, "squared": 0.0, "n": 0})
            row["weighted"] += weighted_squared_change(o, w_first[name], w_last[name])
            row["squared"] += weighted_squared_change(torch.ones_like(o), w_first[name], w_last[name])
            row["n"] += o.numel()
        out[method] = per_layer
    return out


def heatmap_data(
    first_importance: Mapping[str, Mapping[str, Tensor]],
    weights: Mapping[str, Mapping[int, Mapping[str, Tensor]]],
    layer: str,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Fig. 8: the task-1 importance and ``|W_j - W_1|`` of one layer, with summary numbers.

    The changes are shown after task 2 and after task T. Numbers per method: Spearman's rank
    correlation of importance and change after task T, and the mean change of the 10 % most and
    the 50 % least important weights (:func:`change_by_importance`).
    """
    numbers: dict[str, Any] = {"layer": layer, "methods": {}}
    matrices: dict[str, dict[str, np.ndarray]] = {}
    for method, omega in first_importance.items():
        n_tasks = len(weights[method])
        shown = sorted({min(1, n_tasks - 1), n_tasks - 1} - {0}) or [0]
        importance = layer_weight(omega, layer, 0)
        first = layer_weight(weights[method][0], layer, 0)
        matrices[method] = {"importance": importance.numpy()}
        for j in shown:
            change = (layer_weight(weights[method][j], layer, 0) - first).abs()
            matrices[method][f"change_after_task{j + 1}"] = change.numpy()
        final = (layer_weight(weights[method][n_tasks - 1], layer, 0) - first).abs()
        numbers["methods"][method] = {
            "shape": list(importance.shape),
            "tasks_shown": [j + 1 for j in shown],
            "spearman_importance_vs_change": rank_correlation(importance, final),
            "mean_change_by_importance": change_by_importance(importance, final),
        }
    return numbers, matrices


def saved_importance_check(
    saved: Sequence[Mapping[str, Tensor]],
    first: Mapping[str, Tensor],
    last: Mapping[str, Tensor],
    accumulate: str,
) -> dict[str, float | None]:
    """Largest relative difference between recomputed and saved (plugin) SPP importances.

    ``saved[j]`` is the plugin's accumulated ``Omega`` after task ``j``; with ``accumulate="sum"``
    the last task's own importance is ``saved[T-1] - saved[T-2]``.
    """
    result: dict[str, float | None] = {"first_task": _relative_difference(first, saved[0])}
    if len(saved) > 1 and accumulate == "sum":
        own = {n: saved[-1][n] - saved[-2][n] for n in saved[-1] if n in saved[-2]}
        result["last_task"] = _relative_difference(last, own)
    else:
        result["last_task"] = None
    return result


def _relative_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    common = [n for n in a if n in b and a[n].shape == b[n].shape]
    if not common:
        raise ValueError("no parameter in common between the recomputed and the saved importance")
    diff = max(float((a[n].double() - b[n].double()).abs().max()) for n in common)
    scale = max(float(b[n].double().abs().max()) for n in common)
    return diff / scale if scale > 0 else diff


def _same_weights(states: Sequence[Mapping[str, Tensor]]) -> bool:
    """Whether every state holds the same weights, layer by layer (the task-1 head for multi-head)."""

    def shared(state: Mapping[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        keys = {n: layer_key(n) for n in state}
        return {(keys[n][0], n.rsplit(".", 1)[-1]): t for n, t in state.items() if keys[n][1] in (None, 0)}

    first = shared(states[0])
    for state in states[1:]:
        other = shared(state)
        if set(other) != set(first) or any(not torch.equal(first[n], other[n]) for n in first):
            return False
    return True


def _default_layer(weights: Mapping[str, Tensor]) -> str:
    shared = [layer for layer in weight_layers(weights) if not layer.startswith("head")]
    if not shared:
        raise ValueError("the model has no shared layer with a weight matrix; pass a layer name")
    return shared[-1]


# -------------------------------------------------------------------------------- plots


def _method_color(method: str, index: int) -> Any:
    return _METHOD_COLORS.get(method, colormaps["tab10"].colors[(index + 3) % 10])


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def _grid(n: int, width: float = 3.6, height: float = 3.0) -> tuple[Figure, list[Any]]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_importance_density(
    distribution: Mapping[str, Any], path: str | os.PathLike[str], *, log: bool = False
) -> Path:
    """Fig. 6: one panel per group (overall, then each layer), a density line per measure.

    ``log=False``: ``Omega / max`` on ``[0, 1]`` with a logarithmic density axis (both ends of a
    polarised distribution show); ``log=True``: ``log10(Omega / max)`` of the non-zero values
    (the legend gives the fraction of exact zeros).
    """
    groups = distribution["groups"]
    edges = np.asarray(distribution["log_edges" if log else "edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig, axes = _grid(len(groups))
    for ax, (group, by_measure) in zip(axes, groups.items(), strict=True):
        for measure, row in by_measure.items():
            density = np.asarray(row["log_density" if log else "density"], dtype=float)
            if log:
                label = f"{measure.upper()} ({100 * row['zero_fraction']:.0f}% = 0, left out)"
            else:
                label = f"{measure.upper()} ({100 * row['near_zero_fraction']:.0f}% near 0)"
            ax.plot(centers, density, color=_MEASURE_COLORS.get(measure), label=label, drawstyle="steps-mid")
        ax.set_title("all layers" if group == "all" else group)
        ax.set_xlabel("log10(importance / max)" if log else "importance / max")
        ax.set_ylabel("density")
        if not log:
            ax.set_yscale("log")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Importance distributions on {distribution['model']}")
    return _save(fig, path)


def plot_accuracy(accuracy: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 7(a): ACC on the tasks seen so far after each task, one line per method."""
    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for index, (method, row) in enumerate(accuracy.items()):
        mean = 100 * np.asarray([math.nan if v is None else v for v in row["mean"]], dtype=float)
        color = _method_color(method, index)
        ax.plot(np.arange(1, len(mean) + 1), mean, marker="o", label=method, color=color)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("average accuracy on tasks seen (%)")
    ax.set_title("(a) average accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _layer_bars(ax: Any, table: Mapping[str, Mapping[str, Mapping[str, float]]], key: str) -> None:
    methods = list(table)
    layers: list[str] = []
    for rows in table.values():
        layers += [layer for layer in rows if layer not in layers]
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(layers))
    for index, method in enumerate(methods):
        values = [table[method].get(layer, {}).get(key, math.nan) for layer in layers]
        positions = x + (index - (len(methods) - 1) / 2) * width
        ax.bar(positions, values, width, label=method, color=_method_color(method, index))
        for position, value in zip(positions, values, strict=True):
            if value == 0:  # invisible on a log axis: say it
                ax.annotate("0", (position, 0), xycoords=("data", "axes fraction"), ha="center",
                            va="bottom", fontsize="small", color=_method_color(method, index))
    ax.set_xticks(x, layers, rotation=20)
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")


def plot_frechet(frechet: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 7(b): per layer, the Frechet distance of first- and last-task importance, per method."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _layer_bars(ax, frechet, "frechet")
    ax.set_ylabel("Frechet distance (task 1 vs task T)")
    ax.set_title("(b) importance distribution, first vs last task")
    return _save(fig, path)


def plot_weighted_change(change: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 7(c): per layer, ``sum Omega_1 (W_T - W_1)**2``, per method."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _layer_bars(ax, change, "weighted")
    ax.set_ylabel("sum Omega_1 (W_T - W_1)^2")
    ax.set_title("(c) importance-weighted parameter change")
    return _save(fig, path)


def plot_heatmaps(
    heatmaps: Mapping[str, Mapping[str, np.ndarray]],
    layer: str,
    path: str | os.PathLike[str],
    *,
    block: int | None = None,
) -> Path:
    """Fig. 8: per method (rows), the task-1 importance and ``|W_j - W_1|`` (columns) of one layer.

    Matrices are drawn transposed as in the paper: input units down, output units across; with
    ``block``, only the first ``block`` input and output units (single weights become visible). Each
    importance panel has its own colour scale (warm: important); the change panels share one scale
    per column (cold: small change). Scales are clipped at the 99th percentile, so a few extreme
    values do not wash the rest out.
    """
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ValueError(f"block must be a positive int or None (whole matrix), got {block!r}")
    crop = slice(None) if block is None else slice(0, block)
    heatmaps = {m: {c: a.T[crop, crop] for c, a in by.items()} for m, by in heatmaps.items()}  # (in, out)
    methods = list(heatmaps)
    columns = list(next(iter(heatmaps.values())))
    fig = Figure(figsize=(3.4 * len(columns), 3.0 * len(methods)), layout="constrained")
    axes = fig.subplots(len(methods), len(columns), squeeze=False)
    change_max = {
        c: max(float(np.percentile(heatmaps[m][c], 99)) for m in methods) or 1.0
        for c in columns
        if c != "importance"
    }
    for r, method in enumerate(methods):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            matrix = heatmaps[method][column]
            if column == "importance":
                vmax = float(np.percentile(matrix, 99)) or float(matrix.max()) or 1.0
                image = ax.imshow(matrix, cmap="hot", vmin=0, vmax=vmax, aspect="auto")
                title = f"{method}: task-1 importance"
            else:
                image = ax.imshow(matrix, cmap="Blues_r", vmin=0, vmax=change_max[column], aspect="auto")
                title = f"{method}: |W{column.removeprefix('change_after_task')} - W1|"
            ax.set_title(title, fontsize="small")
            ax.set_xlabel("output unit")
            ax.set_ylabel("input unit")
            fig.colorbar(image, ax=ax, shrink=0.8)
    shown = "" if block is None else f", first {block} x {block} units"
    fig.suptitle(f"Layer {layer}{shown}: importance after task 1 and weight change after later tasks")
    return _save(fig, path)


# ------------------------------------------------------------------------------ writing


def write_analysis(
    out_dir: str | os.PathLike[str],
    analysis: Analysis,
    *,
    command: str | None = None,
    config: Mapping[str, Any] | None = None,
    heatmap_block: int | None = 64,
) -> list[Path]:
    """Write ``analysis.json``, ``analysis.md`` and the PNGs (:data:`OUTPUT_FILES`) to ``out_dir``.

    Args:
        out_dir: the folder (created if missing).
        analysis: from :func:`analyze_run`.
        command: the command line that made it, shown in the markdown.
        config: the command line's settings, saved in the JSON as ``"config"``.
        heatmap_block: Fig. 8 shows the first ``heatmap_block`` input and output units of the
            layer (``None``: the whole matrix); its numbers always cover the whole layer.

    Returns:
        The paths written, in the order of :data:`OUTPUT_FILES`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = dict(analysis.numbers)
    numbers["heatmaps"] = {**numbers["heatmaps"], "block": heatmap_block}
    if config is not None:
        numbers["config"] = dict(config)
    if command is not None:
        numbers["command"] = command
    paths = [write_json(out_dir / ANALYSIS_JSON, numbers)]
    markdown = analysis_markdown(numbers, command=command)
    _write_text_atomic(out_dir / ANALYSIS_MD, markdown)
    paths.append(out_dir / ANALYSIS_MD)
    distribution = numbers["importance_distribution"]
    paths.append(plot_importance_density(distribution, out_dir / DENSITY_PLOT))
    paths.append(plot_importance_density(distribution, out_dir / LOG_DENSITY_PLOT, log=True))
    paths.append(plot_accuracy(numbers["accuracy"], out_dir / ACCURACY_PLOT))
    paths.append(plot_frechet(numbers["frechet"], out_dir / FRECHET_PLOT))
    paths.append(plot_weighted_change(numbers["weighted_change"], out_dir / CHANGE_PLOT))
    paths.append(
        plot_heatmaps(
            analysis.heatmaps, numbers["heatmaps"]["layer"], out_dir / HEATMAP_PLOT, block=heatmap_block
        )
    )
    return paths


def analysis_markdown(numbers: Mapping[str, Any], *, command: str | None = None) -> str:
    """The markdown page: setup, the figures and the tables of the numbers behind them."""
    run = numbers["run"]
    settings = numbers["settings"]
    dist = numbers["importance_distribution"]
    threshold = settings["near_zero_threshold"]
    n_tasks = run["n_tasks"]
    parts = [f"# Looking inside: {run['benchmark']}, {n_tasks} tasks (seed {run['seed']})\n"]
    if command:
        parts.append(f"Command:\n\n```\n{command}\n```\n")
    parts.append(
        f"- Run folder: `{run['run_dir']}`; methods: {', '.join(f'`{m}`' for m in run['methods'])}; "
        f"strengths: {json.dumps(run['strengths'])}\n"
        f"- Importance passes use {_samples_text(settings['samples_per_task'])} training samples "
        f"of the task measured; SPP's importance options: `{json.dumps(settings['spp_importance'])}`.\n"
        f"- Task numbers are 1-based: task 1 is the first task, task T = {n_tasks} the last.\n"
    )
    if run.get("same_weights_after_task_1") and len(run["methods"]) > 1:
        parts.append(
            "The methods hold identical weights after task 1 (same seed and initialisation, and no "
            "penalty acts during the first task), so their task-1 importances are identical too; "
            "they differ from task 2 on.\n"
        )
    parts.append("## Fig. 6: distribution of parameter importance\n")
    parts.append(
        f"EWC (diagonal Fisher, {settings['fisher_labels']} labels, per sample), MAS (mean absolute "
        "gradient of the squared L2 norm of the logits) and SPP (entropy importance, paper eq. 3) on "
        f"the same weights: {dist['model']}. Each measure is divided by its maximum in the group "
        f"(all layers, or one layer). \"near 0\": below {threshold:g} of that maximum; \"= 0\": exactly "
        "zero (SPP clamps negative estimates to 0).\n"
    )
    parts.append(f"![Importance densities]({DENSITY_PLOT})\n")
    parts.append(f"![Importance densities, log10 scale]({LOG_DENSITY_PLOT})\n")
    measures = dist["measures"]
    header = "| group | " + " | ".join(f"{m.upper()} near 0 | {m.upper()} = 0" for m in measures) + " |"
    parts.append(header)
    parts.append("|" + "---|" * (1 + 2 * len(measures)))
    for group, rows in dist["groups"].items():
        cells = " | ".join(
            f"{100 * rows[m]['near_zero_fraction']:.1f}% | {100 * rows[m]['zero_fraction']:.1f}%"
            for m in measures
        )
        parts.append(f"| {group} | {cells} |")
    parts.append("")
    parts.append("## Fig. 7(a): average accuracy over tasks\n")
    parts.append(
        "ACC on the tasks seen so far after each task (mean over seeds "
        f"{', '.join(str(s) for s in run['seeds'])}).\n"
    )
    parts.append(f"![Average accuracy]({ACCURACY_PLOT})\n")
    parts.append("| method | " + " | ".join(str(t) for t in range(1, n_tasks + 1)) + " |")
    parts.append("|" + "---|" * (1 + n_tasks))
    for method, row in numbers["accuracy"].items():
        parts.append(f"| {method} | " + " | ".join(_percent(v) for v in row["mean"]) + " |")
    parts.append("")
    parts.append("## Fig. 7(b): importance distribution, first vs last task\n")
    parts.append(
        "Per layer, SPP's entropy importance of each method's weights after task 1 (on task 1's "
        f"data) and after task {n_tasks} (on task {n_tasks}'s data), each fitted by a Gaussian; the "
        "Frechet distance is `(mu1 - mu2)^2 + s1^2 + s2^2 - 2 s1 s2`. Fine-tuning and SGD have no "
        "importance of their own: the same SPP measure is applied to their weights. \"head\" is the "
        "head of the task measured (head 1 vs head T for multi-head models).\n"
    )
    parts.append(f"![Frechet distance]({FRECHET_PLOT})\n")
    parts.append(_layer_table(numbers["frechet"], "frechet"))
    parts.append("## Fig. 7(c): importance-weighted parameter change\n")
    parts.append(
        f"Per layer, `sum Omega_1 (W_{n_tasks} - W_1)^2` with `Omega_1` the SPP importance of the "
        "method's own weights after task 1 (for a multi-head model, the task-1 head). The "
        "unweighted `sum (W_T - W_1)^2` is in the JSON (`squared`).\n"
    )
    parts.append(f"![Weighted change]({CHANGE_PLOT})\n")
    parts.append(_layer_table(numbers["weighted_change"], "weighted"))
    heat = numbers["heatmaps"]
    parts.append(f"## Fig. 8: importance and weight change of layer `{heat['layer']}`\n")
    parts.append(
        "Left: task-1 importance (warm: important). Right: `|W_j - W_1|` after later tasks (cold: "
        f"small change). {_block_text(heat.get('block'))} The table, over the whole layer, compares, "
        "after the last task, the mean absolute change of the "
        "10 % most important weights with that of the 50 % least important, and gives Spearman's "
        "rank correlation of importance and change (negative: important weights moved less).\n"
    )
    parts.append(f"![Importance and change heatmaps]({HEATMAP_PLOT})\n")
    parts.append("| method | mean change, top 10 % | mean change, bottom 50 % | all | Spearman |")
    parts.append("|---|---|---|---|---|")
    for method, row in heat["methods"].items():
        by = row["mean_change_by_importance"]
        rho = row["spearman_importance_vs_change"]
        parts.append(
            f"| {method} | {by['top']:.4g} | {by['bottom']:.4g} | {by['all']:.4g} | "
            f"{'n/a' if rho is None else f'{rho:.3f}'} |"
        )
    parts.append("")
    checks = numbers["checks"]["saved_vs_recomputed_spp_importance"]
    if checks:
        parts.append("## Check\n")
        cells = "; ".join(
            f"`{m}`: {_number(c['first_task'])}, {_number(c['last_task'])}" for m, c in checks.items()
        )
        parts.append(
            "Largest relative difference between the SPP importance recomputed here and the one the "
            "plugin saved during the run (first task, then last task as a difference of accumulated "
            f"importances): {cells}.\n"
        )
    parts.append("Every number is in `analysis.json`.\n")
    return "\n".join(parts)


def _layer_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], key: str) -> str:
    layers: list[str] = []
    for rows in table.values():
        layers += [layer for layer in rows if layer not in layers]
    lines = ["| method | " + " | ".join(layers) + " |", "|" + "---|" * (1 + len(layers))]
    for method, rows in table.items():
        cells = [f"{rows[layer][key]:.3g}" if layer in rows else "" for layer in layers]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _block_text(block: int | None) -> str:
    if block is None:
        return "The whole weight matrix is shown."
    return f"Only the first {block} input and {block} output units are shown."


def _samples_text(samples: Mapping[Any, int]) -> str:
    counts = sorted(set(samples.values()))
    return " / ".join(str(c) for c in counts)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}"
