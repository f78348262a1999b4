"""Tests of avalanche_spp.metrics: hand-computed matrices, edge cases, the Avalanche adapter."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avalanche_spp.metrics import (
    accuracy_matrix_from_avalanche,
    all_metrics,
    average_accuracy,
    backward_transfer,
    forward_transfer,
    metrics_after_each_task,
    stability,
)

NAN = float("nan")

# P[j][i]: accuracy on task i after training task j. The upper triangle is not measured (NaN).
P3 = [
    [0.9, NAN, NAN],
    [0.8, 0.7, NAN],
    [0.6, 0.5, 0.8],
]
JOINT3 = [0.95, 0.75, 0.85]

# By hand:
# ACC = (0.6 + 0.5 + 0.8) / 3                         = 1.9 / 3        = 0.633333...
# BWT = ((0.6 - 0.9) + (0.5 - 0.7)) / 2               = -0.5 / 2       = -0.25
# FWT = ((0.9 - 0.95) + (0.7 - 0.75)) / 2             = -0.1 / 2       = -0.05
# SMT: D_0 = pop. var of (0.9, 0.8, 0.6): in units of 1/30 the values are 27, 24, 18, mean 23,
#      deviations 4, 1, -5, squares 16 + 1 + 25 = 42 -> 42 / 900 / 3 = 14 / 900
#      D_1 = pop. var of (0.7, 0.5) = 0.1**2 = 9 / 900
#      SMT = (14 + 9) / 900 / 2 = 23 / 1800 = 0.0127777...
# (A sample variance would give (21 + 18) / 1800; leaving the diagonal out would give 0.005.)
ACC3, BWT3, FWT3, SMT3 = 1.9 / 3, -0.25, -0.05, 23 / 1800


def test_hand_computed_3x3():
    assert average_accuracy(P3) == pytest.approx(ACC3, abs=1e-12)
    assert backward_transfer(P3) == pytest.approx(BWT3, abs=1e-12)
    assert forward_transfer(P3, JOINT3) == pytest.approx(FWT3, abs=1e-12)
    assert stability(P3) == pytest.approx(SMT3, abs=1e-12)
    out = all_metrics(P3, JOINT3)
    assert list(out) == ["acc", "bwt", "fwt", "smt"]
    assert out == pytest.approx({"acc": ACC3, "bwt": BWT3, "fwt": FWT3, "smt": SMT3}, abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())


def test_upper_triangle_is_never_read():
    measured = np.array(P3)
    measured[np.triu_indices(3, k=1)] = [0.1, 0.2, 0.3]  # accuracies on tasks not trained yet
    assert all_metrics(measured, JOINT3) == pytest.approx(all_metrics(P3, JOINT3), abs=1e-12)
    # accepts None (JSON null) for unmeasured entries too
    with_none = [[0.9, None, None], [0.8, 0.7, None], [0.6, 0.5, 0.8]]
    assert all_metrics(with_none, JOINT3) == pytest.approx(all_metrics(P3, JOINT3), abs=1e-12)


def test_last_task_of_joint_is_not_used_by_fwt():
    # eq. 7 sums i < T-1: m_{T-1} does not matter
    assert forward_transfer(P3, [0.95, 0.75, 0.0]) == pytest.approx(FWT3, abs=1e-12)


def test_no_forgetting_gives_zero_bwt_and_smt():
    p = np.tril(np.full((4, 4), 0.7)) + np.triu(np.full((4, 4), NAN), k=1)
    assert backward_transfer(p) == pytest.approx(0.0, abs=1e-15)
    assert stability(p) == pytest.approx(0.0, abs=1e-15)
    assert average_accuracy(p) == pytest.approx(0.7)


def test_single_task():
    p = [[0.83]]
    assert average_accuracy(p) == pytest.approx(0.83)
    assert backward_transfer(p) is None
    assert stability(p) is None
    assert forward_transfer(p, [0.9]) is None
    assert all_metrics(p, [0.9]) == {"acc": pytest.approx(0.83), "bwt": None, "fwt": None, "smt": None}
    # a wrong joint length is still an error for T == 1
    with pytest.raises(ValueError, match="one accuracy m_i per task"):
        forward_transfer(p, [0.9, 0.8])


def test_missing_joint_run():
    assert forward_transfer(P3, None) is None
    out = all_metrics(P3)
    assert out["fwt"] is None
    assert out["acc"] == pytest.approx(ACC3) and out["bwt"] == pytest.approx(BWT3)
    assert out["smt"] == pytest.approx(SMT3)


@pytest.mark.parametrize("joint", [[0.9, 0.8], [0.9, 0.8, 0.7, 0.6], [[0.9, 0.8, 0.7]]])
def test_joint_of_wrong_length(joint):
    with pytest.raises(ValueError, match=r"one accuracy m_i per task \(3 for a 3x3"):
        forward_transfer(P3, joint)


def test_joint_not_a_fraction():
    with pytest.raises(ValueError, match=r"m\[1\]=nan"):
        forward_transfer(P3, [0.9, NAN, 0.8])
    with pytest.raises(ValueError, match="look like percentages"):
        forward_transfer(P3, [95.0, 75.0, 85.0])


@pytest.mark.parametrize(
    "bad",
    [
        [0.9, 0.8],  # 1-D
        [[0.9, 0.8, 0.7], [0.1, 0.2, 0.3]],  # 2x3
        np.zeros((2, 2, 2)),  # 3-D
        np.zeros((0, 0)),  # no task
    ],
)
def test_bad_shapes(bad):
    for fn in (average_accuracy, backward_transfer, stability, all_metrics, metrics_after_each_task):
        with pytest.raises(ValueError, match="square"):
            fn(bad)


def test_not_numbers():
    with pytest.raises(ValueError, match="could not convert"):
        average_accuracy([["a", "b"], ["c", "d"]])


def test_nan_where_used_is_named():
    p = np.array(P3)
    p[2, 1] = NAN
    with pytest.raises(ValueError, match=r"P\[2\]\[1\]=nan"):
        average_accuracy(p)
    with pytest.raises(ValueError, match=r"P\[2\]\[1\]=nan"):
        stability(p)
    # FWT reads the diagonal only, so this NaN does not concern it
    assert forward_transfer(p, JOINT3) == pytest.approx(FWT3)
    p = np.array(P3)
    p[1, 1] = NAN
    with pytest.raises(ValueError, match=r"P\[1\]\[1\]=nan"):
        backward_transfer(p)
    with pytest.raises(ValueError, match=r"P\[1\]\[1\]=nan"):
        forward_transfer(p, JOINT3)
    # ACC reads the last row only
    assert average_accuracy(p) == pytest.approx(ACC3)


def test_percentages_and_out_of_range_are_refused():
    with pytest.raises(ValueError, match="look like percentages: divide by 100"):
        average_accuracy(np.array(P3) * 100)
    p = np.array(P3)
    p[2, 0] = -0.1
    with pytest.raises(ValueError, match=r"P\[2\]\[0\]=-0.1"):
        backward_transfer(p)
    p[2, 0] = math.inf
    with pytest.raises(ValueError, match=r"P\[2\]\[0\]=inf"):
        average_accuracy(p)


def test_metrics_after_each_task():
    out = metrics_after_each_task(P3, JOINT3)
    assert list(out) == ["acc", "bwt", "fwt", "smt"]
    # t = 1: P[:1, :1] = [[0.9]]
    # t = 2: P[:2, :2] = [[0.9, .], [0.8, 0.7]]: ACC = 0.75, BWT = 0.8 - 0.9 = -0.1,
    #        FWT = 0.9 - 0.95 = -0.05, SMT = pop. var(0.9, 0.8) = 0.05**2 = 0.0025
    # t = 3: the whole matrix
    assert out["acc"] == pytest.approx([0.9, 0.75, ACC3], abs=1e-12)
    assert out["bwt"][0] is None and out["bwt"][1:] == pytest.approx([-0.1, BWT3], abs=1e-12)
    assert out["fwt"][0] is None and out["fwt"][1:] == pytest.approx([-0.05, FWT3], abs=1e-12)
    assert out["smt"][0] is None and out["smt"][1:] == pytest.approx([0.0025, SMT3], abs=1e-12)
    no_joint = metrics_after_each_task(P3)
    assert no_joint["fwt"] == [None, None, None]
    assert no_joint["acc"] == out["acc"]
    with pytest.raises(ValueError, match="one accuracy m_i per task"):
        metrics_after_each_task(P3, JOINT3[:2])


def _avalanche_dict(columns, stream="test_stream", task_of=lambda i: i):
    """What get_all_metrics() returns: key -> (x_steps, values); values[j] = P[j][i]."""
    out = {}
    for i, column in enumerate(columns):
        key = f"Top1_Acc_Exp/eval_phase/{stream}/Task{task_of(i):03d}/Exp{i:03d}"
        out[key] = (list(range(len(column))), list(column))
    return out


def test_accuracy_matrix_from_avalanche_hand_built():
    columns = [[0.9, 0.8, 0.6], [0.1, 0.7, 0.5], [0.2, 0.3, 0.8]]  # column i = experience i
    results = _avalanche_dict(columns)
    results["Top1_Acc_Stream/eval_phase/test_stream/Task002"] = ([0, 1, 2], [0.5, 0.6, 0.7])
    results.update(_avalanche_dict([[0.0] * 3] * 3, stream="valid_stream"))
    results["Loss_Exp/eval_phase/test_stream/Task000/Exp000"] = ([0, 1, 2], [9.0, 9.0, 9.0])
    p = accuracy_matrix_from_avalanche(results, 3)
    expected = np.array([[0.9, 0.1, 0.2], [0.8, 0.7, 0.3], [0.6, 0.5, 0.8]])
    np.testing.assert_array_equal(p, expected)
    assert all_metrics(p)["bwt"] == pytest.approx(BWT3)
    np.testing.assert_array_equal(
        accuracy_matrix_from_avalanche(results, 3, stream="valid_stream"), np.zeros((3, 3))
    )
    # without task labels every key says Task000
    p0 = accuracy_matrix_from_avalanche(_avalanche_dict(columns, task_of=lambda i: 0), 3)
    np.testing.assert_array_equal(p0, expected)


def test_accuracy_matrix_from_avalanche_errors():
    columns = [[0.9, 0.8, 0.6], [0.1, 0.7, 0.5], [0.2, 0.3, 0.8]]
    results = _avalanche_dict(columns)
    del results["Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"]
    with pytest.raises(ValueError, match=r"experience\(s\) \[1\] of 'test_stream'"):
        accuracy_matrix_from_avalanche(results, 3)
    with pytest.raises(ValueError, match=r"experience\(s\) \[0, 1, 2\] of 'valid_stream'"):
        accuracy_matrix_from_avalanche(_avalanche_dict(columns), 3, stream="valid_stream")
    with pytest.raises(ValueError, match="has 2 values, expected one per task"):
        accuracy_matrix_from_avalanche(_avalanche_dict([c[:2] for c in columns]), 3)
    with pytest.raises(ValueError, match=r"experience\(s\) \[2\] beyond n_tasks=2"):
        accuracy_matrix_from_avalanche(_avalanche_dict(columns), 2)
    with pytest.raises(ValueError, match="positive int"):
        accuracy_matrix_from_avalanche(_avalanche_dict(columns), 0)
    twice = _avalanche_dict(columns)
    twice["Top1_Acc_Exp/eval_phase/test_stream/Task007/Exp001"] = ([0, 1, 2], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="experience 1 of 'test_stream' appears under two keys"):
        accuracy_matrix_from_avalanche(twice, 3)
    not_a_pair = _avalanche_dict(columns)
    not_a_pair["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] = 0.9
    with pytest.raises(ValueError, match=r"pair \(x_steps, values\)"):
        accuracy_matrix_from_avalanche(not_a_pair, 3)


def test_accuracy_matrix_from_a_real_avalanche_run():
    """A tiny multi-head Naive run: P from the adapter equals accuracies computed by hand."""
    import torch
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.models import MTSimpleMLP
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n_tasks = 3

    def task_data(n, feature):  # each task: the sign of a different input feature
        x = torch.randn(n, 8, generator=gen)
        return x, (x[:, feature] > 0).long()

    train = [task_data(64, k) for k in range(n_tasks)]
    test = [task_data(50, k) for k in range(n_tasks)]
    bench = tensors_benchmark(train_tensors=train, test_tensors=test, task_labels=[0, 1, 2])
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        train_mb_size=16,
        train_epochs=1,
        eval_mb_size=64,
        evaluator=evaluator,
    )
    by_hand = np.full((n_tasks, n_tasks), NAN)
    for j, experience in enumerate(bench.train_stream):
        strategy.train(experience)
        strategy.eval(bench.test_stream)
        model.eval()
        with torch.no_grad():
            for i, (x, y) in enumerate(test):
                by_hand[j, i] = (model(x, i).argmax(dim=1) == y).float().mean().item()

    p = accuracy_matrix_from_avalanche(evaluator.get_all_metrics(), n_tasks)
    assert p.shape == (n_tasks, n_tasks)
    np.testing.assert_allclose(p, by_hand, rtol=0, atol=1e-6)
    assert not np.allclose(p, p.T)  # the check above would catch rows and columns swapped
    assert 0.0 <= all_metrics(p)["acc"] <= 1.0


@pytest.mark.subprocess
def test_importing_metrics_does_not_import_avalanche():
    code = "import sys, avalanche_spp.metrics; print('avalanche' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------ mutants that survived (docs/testing.md)
def test_joint_accuracies_are_named_in_their_error():
    p = np.array([[0.9, 0.1], [0.8, 0.7]])
    with pytest.raises(ValueError, match=r"joint_accuracies needs finite accuracies.*m\[1\]"):
        forward_transfer(p, [0.9, NAN])


def test_accuracy_matrix_from_avalanche_with_one_task_and_bad_counts():
    p = accuracy_matrix_from_avalanche(_avalanche_dict([[0.75]]), 1)
    np.testing.assert_array_equal(p, [[0.75]])
    assert p.dtype == np.float64
    for bad in ("3", 0, 2.0, True):
        with pytest.raises(ValueError, match="n_tasks must be a positive int"):
            accuracy_matrix_from_avalanche(_avalanche_dict([[0.75]]), bad)


def test_missing_experiences_name_the_expected_key_and_the_streams_found():
    results = _avalanche_dict([[0.5, 0.6], [0.4, 0.7]], stream="valid_stream")
    results["Top1_Acc_Stream/eval_phase/other_stream/Task000"] = ([0], [0.5])  # not an experience key
    message = (
        r"experience\(s\) \[0, 1\] of 'test_stream' \(keys like "
        r"'Top1_Acc_Exp/eval_phase/test_stream/Task<t>/Exp<i>'\); streams with such keys: \['valid_stream'\]"
    )
    with pytest.raises(ValueError, match=message):
        accuracy_matrix_from_avalanche(results, 2)


def test_the_range_check_and_the_percentage_hint_at_their_edges():
    exact = np.tril(np.ones((2, 2)))  # accuracies of exactly 1 and 0 are valid
    assert average_accuracy(exact) == 1.0 and backward_transfer(exact) == 0.0
    for value, hint in ((1.5, True), (100.0, True), (100.5, False), (-0.5, False)):
        p = np.array([[0.5, NAN], [value, 0.5]])
        with pytest.raises(ValueError, match=rf"P\[1\]\[0\]={value}") as error:
            average_accuracy(p)
        assert ("look like percentages" in str(error.value)) is hint, value
    with pytest.raises(ValueError) as error:  # a NaN next to valid fractions (even 1.0): no hint
        average_accuracy([[0.5, NAN], [NAN, 1.0]])
    assert "percentages" not in str(error.value)


def test_the_error_names_what_was_read_and_ends_with_its_hint_or_the_bad_value():
    cases = (
        (average_accuracy, np.array([[0.5, NAN], [-0.5, 0.5]]), "the last row of P", "P[1][0]=-0.5"),
        (backward_transfer, np.array([[-0.5, NAN], [0.5, 0.5]]), "the diagonal of P", "P[0][0]=-0.5"),
        (stability, np.array([[0.5, NAN, NAN], [-0.5, 0.5, NAN], [0.5, 0.5, 0.5]]), "stability (SMT)",
         "P[1][0]=-0.5"),
    )  # fmt: skip
    for fn, p, what, last in cases:
        with pytest.raises(ValueError) as error:
            fn(p)
        message = str(error.value)
        assert message.startswith(f"{what} needs finite accuracies") and message.endswith(last), message
    with pytest.raises(ValueError) as error:
        average_accuracy(np.array([[0.5, NAN], [50.0, 0.5]]))
    assert str(error.value).endswith("P[1][0]=50.0 (values above 1 look like percentages: divide by 100)")
