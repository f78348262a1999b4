"""The paper's continual-learning metrics, as pure functions of the accuracy matrix.

Peng et al., "Overcome Catastrophic Forgetting by Soft Parameter Pruning", arXiv 1812.01640,
eqs. 6-9 (ACC, FWT, BWT after Lopez-Paz & Ranzato's GEM paper; SMT is the paper's own).

With ``T`` tasks, the accuracy matrix ``P`` has shape ``(T, T)`` and ``P[j][i]`` is the test accuracy
(a fraction in ``[0, 1]``) on task ``i`` after training task ``j``. Indices here are 0-based; the
paper's are 1-based, so its ``P_{T,i}`` is ``P[T-1][i]`` here. Entries above the diagonal
(``i > j``: tasks not trained yet) may be measured or ``NaN``; no metric reads them::

    ACC = 1/T     * sum_{i<T}   P[T-1][i]                       (eq. 6, higher is better)
    FWT = 1/(T-1) * sum_{i<T-1} (P[i][i] - m_i)                 (eq. 7, higher is better)
    BWT = 1/(T-1) * sum_{i<T-1} (P[T-1][i] - P[i][i])           (eq. 8, higher is better)
    SMT = 1/(T-1) * sum_{j<T-1} D_j,  D_j = Var(P[j:, j])       (eq. 9, lower is more stable)

``m_i`` is the test accuracy on task ``i`` of joint training on all tasks (the ``joint`` baseline).

This module needs numpy only; :func:`accuracy_matrix_from_avalanche` reads the plain dictionary
that Avalanche's ``EvaluationPlugin.get_all_metrics()`` returns, without importing Avalanche.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The metric names, in the order of the paper's tables.
METRIC_NAMES = ("acc", "bwt", "fwt", "smt")

ArrayLike = Sequence[Sequence[float]] | np.ndarray


def _as_accuracy_matrix(accuracy_matrix: ArrayLike) -> np.ndarray:
    """``accuracy_matrix`` as a float ``(T, T)`` array (``None`` -> ``NaN``); only the shape is checked."""
    try:
        matrix = np.asarray(accuracy_matrix, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"accuracy_matrix must be a (T, T) array of accuracies in [0, 1], with T the number of "
            f"tasks; could not convert it to floats: {err}"
        ) from err
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(
            f"accuracy_matrix must be a square (T, T) array with T >= 1 (P[j][i] = accuracy on task "
            f"i after training task j); got shape {matrix.shape}"
        )
    return matrix


def _checked(values: np.ndarray, names: list[str], what: str) -> np.ndarray:
    """``values`` (``(N,)``, labelled ``names``), unless one is not a finite fraction in ``[0, 1]``."""
    bad = [
        f"{name}={value!r}"
        for name, value in zip(names, values.tolist(), strict=True)
        if not (np.isfinite(value) and 0.0 <= value <= 1.0)
    ]
    if bad:
        hint = ""
        if any(np.isfinite(v) and 1.0 < v <= 100.0 for v in values.tolist()):
            hint = " (values above 1 look like percentages: divide by 100)"
        raise ValueError(f"{what} needs finite accuracies as fractions in [0, 1]; got {', '.join(bad)}{hint}")
    return values


def _last_row(matrix: np.ndarray) -> np.ndarray:
    """``P[T-1][:]``, checked: the accuracy on every task after the last one."""
    t = matrix.shape[0]
    return _checked(matrix[t - 1], [f"P[{t - 1}][{i}]" for i in range(t)], "the last row of P")


def _diagonal(matrix: np.ndarray) -> np.ndarray:
    """``P[i][i]``, checked: the accuracy on each task right after learning it."""
    return _checked(np.diag(matrix).copy(), [f"P[{i}][{i}]" for i in range(len(matrix))], "the diagonal of P")


def average_accuracy(accuracy_matrix: ArrayLike) -> float:
    """Average accuracy ACC (eq. 6) of ``P`` (module docstring), a fraction; reads the last row.

    ``ValueError`` if ``P`` is not square or an entry read is not in ``[0, 1]`` (so for every metric).
    """
    return float(np.mean(_last_row(_as_accuracy_matrix(accuracy_matrix))))


def backward_transfer(accuracy_matrix: ArrayLike) -> float | None:
    """Backward transfer BWT (eq. 8), < 0: forgetting; ``None`` when ``T == 1`` (a mean over no task)."""
    matrix = _as_accuracy_matrix(accuracy_matrix)
    t = matrix.shape[0]
    if t == 1:
        return None
    last, diag = _last_row(matrix), _diagonal(matrix)
    return float(np.mean(last[: t - 1] - diag[: t - 1]))


def _check_joint(joint_accuracies: Sequence[float] | np.ndarray, t: int) -> np.ndarray:
    """``(T,)`` joint-training accuracies ``m_i``, checked against ``T`` tasks."""
    joint = np.asarray(joint_accuracies, dtype=float)
    if joint.ndim != 1 or joint.shape[0] != t:
        raise ValueError(
            f"joint_accuracies must hold one accuracy m_i per task ({t} for a {t}x{t} accuracy "
            f"matrix); got shape {joint.shape}"
        )
    return _checked(joint, [f"m[{i}]" for i in range(t)], "joint_accuracies")


def forward_transfer(
    accuracy_matrix: ArrayLike, joint_accuracies: Sequence[float] | np.ndarray | None
) -> float | None:
    """Forward transfer FWT (eq. 7): < 0 means what the model keeps gets in the way of new tasks.

    ``joint_accuracies``: ``m_i``, ``(T,)`` fractions. ``None`` when they are ``None`` or ``T == 1``.
    """
    matrix = _as_accuracy_matrix(accuracy_matrix)
    if joint_accuracies is None:
        return None
    t = matrix.shape[0]
    joint = _check_joint(joint_accuracies, t)
    if t == 1:
        return None
    diag = _diagonal(matrix)
    return float(np.mean(diag[: t - 1] - joint[: t - 1]))


def stability(accuracy_matrix: ArrayLike) -> float | None:
    """Stability SMT (eq. 9): the mean variance of a task's accuracy after it was learned.

    The paper says only "the variance of one task for sequential learning"; here ``D_j`` is the
    population variance (``ddof=0``) of ``P[j:, j]``, from right after task ``j`` was learned (the
    diagonal included) to after the last task. The last task is left out as in eqs. 7-8. In squared
    fractions; lower is more stable; ``None`` when ``T == 1``.
    """
    matrix = _as_accuracy_matrix(accuracy_matrix)
    t = matrix.shape[0]
    if t == 1:
        return None
    variances = []
    for j in range(t - 1):
        column = _checked(matrix[j:, j].copy(), [f"P[{k}][{j}]" for k in range(j, t)], "stability (SMT)")
        variances.append(np.var(column))  # population variance, ddof=0
    return float(np.mean(variances))


def all_metrics(
    accuracy_matrix: ArrayLike, joint_accuracies: Sequence[float] | np.ndarray | None = None
) -> dict[str, float | None]:
    """``{"acc", "bwt", "fwt", "smt"}`` of one accuracy matrix (``None`` where undefined)."""
    return {
        "acc": average_accuracy(accuracy_matrix),
        "bwt": backward_transfer(accuracy_matrix),
        "fwt": forward_transfer(accuracy_matrix, joint_accuracies),
        "smt": stability(accuracy_matrix),
    }


def metrics_after_each_task(
    accuracy_matrix: ArrayLike, joint_accuracies: Sequence[float] | np.ndarray | None = None
) -> dict[str, list[float | None]]:
    """The four metrics after each task (the paper's Figs. 3, 9 and 10): ``{name: [T values]}``.

    Entry ``t - 1`` is the metric of the first ``t`` tasks, of ``P[:t, :t]`` and ``m[:t]``: ACC on
    the tasks seen so far; BWT, FWT and SMT start with ``None``.
    """
    matrix = _as_accuracy_matrix(accuracy_matrix)
    t = matrix.shape[0]
    joint = None if joint_accuracies is None else _check_joint(joint_accuracies, t)
    out: dict[str, list[float | None]] = {name: [] for name in METRIC_NAMES}
    for k in range(1, t + 1):
        values = all_metrics(matrix[:k, :k], None if joint is None else joint[:k])
        for name in METRIC_NAMES:
            out[name].append(values[name])
    return out


_EXP_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/(?P<stream>[^/]+)/Task(?P<task>\d+)/Exp(?P<exp>\d+)$")


def accuracy_matrix_from_avalanche(
    all_metrics: Mapping[str, Any], n_tasks: int, *, stream: str = "test_stream"
) -> np.ndarray:
    """``P`` (``(T, T)``) from ``EvaluationPlugin.get_all_metrics()`` of a run evaluated after each task.

    Expects ``accuracy_metrics(experience=True)`` and, per experience ``j``, ``strategy.train(exp_j)``
    then ``strategy.eval(stream)`` over all ``n_tasks`` experiences (``eval_every=-1``). Then the key
    ``Top1_Acc_Exp/eval_phase/{stream}/Task{t:03d}/Exp{i:03d}`` holds ``(x_steps, values)`` with
    ``values[j] = P[j][i]`` (the task label ``t`` is not read). Other streams' keys are ignored.
    ``ValueError`` if a key is missing or doubled, or the counts do not match ``n_tasks``.
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int | np.integer) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int (the number of experiences); got {n_tasks!r}")
    found: dict[int, str] = {}
    for key in all_metrics:
        match = _EXP_KEY.match(str(key))
        if match is None or match["stream"] != stream:
            continue
        exp = int(match["exp"])
        if exp in found:
            raise ValueError(
                f"experience {exp} of {stream!r} appears under two keys: {found[exp]!r} and {key!r}"
            )
        found[exp] = key
    expected = f"Top1_Acc_Exp/eval_phase/{stream}/Task<t>/Exp<i>"
    missing = [i for i in range(n_tasks) if i not in found]
    if missing:
        streams = sorted({m["stream"] for m in map(_EXP_KEY.match, map(str, all_metrics)) if m is not None})
        raise ValueError(
            f"no per-experience accuracy for experience(s) {missing} of {stream!r} (keys like "
            f"{expected!r}); streams with such keys: {streams}. Add accuracy_metrics(experience=True) "
            f"to the EvaluationPlugin and call strategy.eval({stream}) after each train(exp)."
        )
    extra = sorted(i for i in found if i >= n_tasks)
    if extra:
        raise ValueError(
            f"{stream!r} has accuracies for experience(s) {extra} beyond n_tasks={n_tasks}; pass the "
            f"number of experiences in the stream"
        )
    matrix = np.empty((n_tasks, n_tasks), dtype=float)
    for i in range(n_tasks):
        value = all_metrics[found[i]]
        if not (isinstance(value, tuple | list) and len(value) == 2):
            raise ValueError(
                f"{found[i]!r} must map to a pair (x_steps, values) as get_all_metrics() returns; "
                f"got {value!r}"
            )
        values = list(value[1])
        if len(values) != n_tasks:
            raise ValueError(
                f"{found[i]!r} has {len(values)} values, expected one per task ({n_tasks}): call "
                f"strategy.eval({stream}) exactly once after each train(exp), with eval_every=-1"
            )
        matrix[:, i] = values
    return matrix
