"""The benchmark's three algorithms find the same subspace, so its speed comparison is fair."""

import itertools

import pytest
import torch

from benchmarks.precision import measure as measure_precision
from benchmarks.subspace import chunked_jacfwd, exact_reference, make_problem, max_angle_deg, measure, ours, sequential
from localedit.core.subspace import project_out

BUDGETS = {"sequential": (sequential, 35), "chunked_jacfwd": (chunked_jacfwd, 40), "ours": (ours, 8)}


@pytest.fixture(scope="module")
def problem():
    torch.set_num_threads(1)
    return make_problem("tiny", k=4)


@pytest.fixture(scope="module")
def found(problem):
    return {name: algorithm(problem, budget) for name, (algorithm, budget) in BUDGETS.items()}


@pytest.mark.parametrize("name", BUDGETS)
def test_each_algorithm_reaches_the_exact_subspace(problem, found, name):
    reference, _ = exact_reference(problem)
    assert found[name].basis.shape == (problem.dim, problem.k)
    assert max_angle_deg(found[name].basis, reference) < 1.0
    assert found[name].jvps == found[name].vjps > 0


def test_the_algorithms_agree_with_each_other(found):
    for a, b in itertools.combinations(found.values(), 2):
        assert max_angle_deg(a.basis, b.basis) < 2.0


def test_products_are_counted(problem):
    run = ours(problem, 3)
    assert (run.iterations, run.jvps, run.forwards) == (3, 3 * (problem.k + 2), 1)
    run = chunked_jacfwd(problem, 3, tol=0.0)
    assert (run.iterations, run.jvps) == (3, 3 * problem.k)


def test_angle_metric():
    q = torch.linalg.qr(torch.randn(50, 4)).Q
    assert max_angle_deg(q @ torch.linalg.qr(torch.randn(4, 4)).Q, q) < 1e-3  # same span
    x = torch.randn(50, 4)
    assert max_angle_deg(project_out(x, q), q) == pytest.approx(90.0)


def test_measure_sees_a_runs_own_memory():
    first = measure(lambda: float(torch.ones(2**26).sum()))  # 256 MB, freed on return
    again = measure(lambda: float(torch.ones(2**26).sum()))
    assert first.value == again.value == 2**26 and first.seconds >= 0
    for run in (first, again):  # the second run's peak is not hidden by memory the first one freed
        assert 250 * 2**20 < run.rss_growth < 300 * 2**20


def test_precision_benchmark_measures_the_reduced_precisions_against_fp32():
    torch.set_num_threads(1)
    run = measure_precision("tiny", k=2, seed=0)
    assert set(run) == {"fp32", "fp16", "bf16"} and set(run["fp32"]["max_angle_deg"]) == {"1", "2"}
    assert max(run["fp32"]["max_angle_deg"].values()) < 0.01  # the default engine against its converged self
    for reduced in ("fp16", "bf16"):
        assert 0.01 < max(run[reduced]["max_angle_deg"].values()) < 5
