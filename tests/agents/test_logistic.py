"""The batched ridge logistic solver against a generic optimiser and its own certificates."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st

import agents.logistic
from agents import ConvergenceWarning, fit_logistic


# -- an independent implementation of the documented objective ----------------------------------

def objective(theta, features, labels, offsets, beta, ridge):
    """``sum_j softplus(eta_j) - y_j eta_j + ridge / 2 ||theta||^2``, ``eta = offset + beta x . theta``."""
    eta = offsets + beta * features @ theta
    return float(np.sum(np.logaddexp(0.0, eta) - labels * eta) + 0.5 * ridge * theta @ theta)


def gradient(theta, features, labels, offsets, beta, ridge):
    eta = offsets + beta * features @ theta
    probability = 0.5 * (1.0 + np.tanh(0.5 * eta))  # sigmoid, written independently of expit
    return beta * features.T @ (probability - labels) + ridge * theta


def hessian(theta, features, labels, offsets, beta, ridge):
    eta = offsets + beta * features @ theta
    slope = 0.25 / np.cosh(0.5 * eta) ** 2  # sigmoid'(eta)
    return beta**2 * (features.T * slope) @ features + ridge * np.eye(features.shape[1])


def reference_minimiser(features, labels, offsets, beta, ridge):
    """Generic scipy optimisers on the same objective, with a certificate of their accuracy.

    L-BFGS-B, polished by scipy's root finder on ``grad f = 0`` (with the Hessian above) when its
    gradient is not yet tiny. ``f`` is ``ridge``-strongly convex, so any point's distance to the
    minimiser is at most ``||grad f|| / ridge``; the returned bound is that distance.
    """
    args = (features, labels, offsets, beta, ridge)
    result = scipy.optimize.minimize(
        objective, np.zeros(features.shape[1]), args=args, jac=gradient,
        method="L-BFGS-B", options={"ftol": 0.0, "gtol": 1e-13, "maxiter": 20000, "maxcor": 30},
    )
    point = result.x
    if np.linalg.norm(gradient(point, *args)) > 1e-8 * ridge:
        # Near the optimum objective values stop resolving progress (their changes fall below an
        # ulp), so polish by solving grad f = 0 with scipy's root finder instead.
        point = scipy.optimize.root(gradient, point, args=args, jac=hessian, method="hybr", tol=1e-15).x
    return point, np.linalg.norm(gradient(point, *args)) / ridge


def sigmoid_of(eta):
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def random_problem(rng, n, k, label_kind="mixed"):
    features = rng.normal(size=(n, k)) * rng.uniform(0.2, 3.0)
    if label_kind == "mixed":
        labels = rng.choice([0.0, 1.0, 0.5], size=n, p=[0.45, 0.45, 0.1])
    else:
        labels = rng.uniform(0, 1, size=n)
    offsets = rng.normal(size=n)
    beta = float(rng.uniform(0.3, 3.0))
    ridge = float(10 ** rng.uniform(-1.5, 1))
    return features, labels, offsets, beta, ridge


# -- agreement with a generic optimiser ---------------------------------------------------------

@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), k=st.integers(1, 8),
       label_kind=st.sampled_from(["mixed", "fractional"]))
def test_matches_generic_optimiser(seed, n, k, label_kind):
    rng = np.random.default_rng(seed)
    features, labels, offsets, beta, ridge = random_problem(rng, n, k, label_kind)
    reference, bound = reference_minimiser(features, labels, offsets, beta, ridge)
    assert bound < 5e-7, "the reference optimiser itself is not accurate enough to judge"
    fit = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=ridge)
    assert fit.converged.all()
    np.testing.assert_allclose(fit.theta[0], reference, rtol=0, atol=1e-6)
    assert fit.objective[0] == pytest.approx(objective(reference, features, labels, offsets, beta, ridge),
                                             rel=1e-10, abs=1e-10)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), k=st.integers(1, 6))
def test_reported_certificates_are_true(seed, n, k):
    """Gradient norm, relative gradient norm, objective and Fisher, recomputed from scratch."""
    rng = np.random.default_rng(seed)
    features, labels, offsets, beta, ridge = random_problem(rng, n, k)
    fit = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=ridge)
    theta = fit.theta[0]
    grad = gradient(theta, features, labels, offsets, beta, ridge)
    grad_at_zero = gradient(np.zeros(k), features, labels, offsets, beta, ridge)
    # Floating-point noise of a computed gradient: a few ulps of the sum of the magnitudes of its
    # terms. Below it, two correct implementations legitimately disagree.
    noise = 1e-14 * (beta * np.abs(features).sum() + ridge * np.abs(theta).sum() + 1.0)
    assert fit.gradient_norm[0] == pytest.approx(np.linalg.norm(grad), rel=1e-6, abs=noise)
    assert np.linalg.norm(grad) <= 1e-6 * np.linalg.norm(grad_at_zero) + noise
    assert fit.relative_gradient_norm[0] == pytest.approx(
        np.linalg.norm(grad) / np.linalg.norm(grad_at_zero), rel=1e-6, abs=noise / np.linalg.norm(grad_at_zero))
    assert fit.objective[0] == pytest.approx(objective(theta, features, labels, offsets, beta, ridge), rel=1e-12)

    # The Fisher matrix is the Hessian of f: central differences of the independent gradient.
    step = 1e-5
    columns = [(gradient(theta + step * e, features, labels, offsets, beta, ridge)
                - gradient(theta - step * e, features, labels, offsets, beta, ridge)) / (2 * step)
               for e in np.eye(k)]
    hessian = np.array(columns).T
    scale = np.abs(hessian).max()
    np.testing.assert_allclose(fit.fisher[0], hessian, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(fit.fisher[0], fit.fisher[0].T, rtol=1e-14, atol=1e-15 * scale)


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(3)
    sizes = [7, 0, 25, 1, 12]  # problem 1 has no samples
    k = 4
    features = rng.normal(size=(sum(sizes), k))
    labels = rng.choice([0.0, 1.0, 0.5], size=sum(sizes))
    offsets = rng.normal(size=sum(sizes))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    shuffle = rng.permutation(groups.size)  # samples of a problem need not be contiguous
    features, labels, offsets, groups = features[shuffle], labels[shuffle], offsets[shuffle], groups[shuffle]
    ridge = np.array([0.1, 1.0, 0.5, 2.0, 0.03])
    batched = fit_logistic(features, labels, groups=groups, n_problems=len(sizes), offsets=offsets,
                           beta=1.5, ridge=ridge)
    assert batched.theta.shape == (len(sizes), k)
    np.testing.assert_array_equal(batched.theta[1], 0.0)  # no data: the ridge alone
    np.testing.assert_allclose(batched.fisher[1], ridge[1] * np.eye(k))
    for b in range(len(sizes)):
        rows = groups == b
        single = fit_logistic(features[rows], labels[rows], offsets=offsets[rows], beta=1.5, ridge=ridge[b])
        # Both stop at a relative gradient of 1e-10; strong convexity turns that into <= 1e-10 / ridge.
        np.testing.assert_allclose(batched.theta[b], single.theta[0], rtol=0, atol=1e-8)
        np.testing.assert_allclose(batched.fisher[b], single.fisher[0], rtol=1e-7, atol=1e-10)
        assert batched.objective[b] == pytest.approx(single.objective[0], rel=1e-10, abs=1e-12)


def test_dual_and_primal_paths_agree(monkeypatch):
    """A problem with n < k is solved in sample space alone, and in weight space when batched
    with a problem that has n >= k; both must give the generic optimiser's answer."""
    paths = []
    original = agents.logistic._newton_direction

    def recording(problems, rows, weights, ridge, grad, gram):
        paths.append("primal" if gram is None else "dual")
        return original(problems, rows, weights, ridge, grad, gram)

    monkeypatch.setattr(agents.logistic, "_newton_direction", recording)
    rng = np.random.default_rng(11)
    k, n_small, n_large = 30, 6, 40
    features = rng.normal(size=(n_small, k))
    labels = rng.choice([0.0, 1.0], size=n_small)
    offsets = rng.normal(size=n_small)
    dual = fit_logistic(features, labels, offsets=offsets, beta=2.0, ridge=0.3)
    assert set(paths) == {"dual"}

    paths.clear()
    filler = rng.normal(size=(n_large, k))
    primal = fit_logistic(
        np.vstack([features, filler]), np.concatenate([labels, rng.choice([0.0, 1.0], size=n_large)]),
        groups=np.repeat([0, 1], [n_small, n_large]), offsets=np.concatenate([offsets, np.zeros(n_large)]),
        beta=2.0, ridge=0.3,
    )
    assert set(paths) == {"primal"}
    np.testing.assert_allclose(dual.theta[0], primal.theta[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(dual.fisher[0], primal.fisher[0], rtol=1e-9, atol=1e-12)
    reference, bound = reference_minimiser(features, labels, offsets, 2.0, 0.3)
    assert bound < 5e-7
    np.testing.assert_allclose(dual.theta[0], reference, rtol=0, atol=1e-6)
    # The minimiser lies in the row space of the data (the ridge kills the rest).
    row_space = np.linalg.lstsq(features.T, dual.theta[0], rcond=None)[0]
    np.testing.assert_allclose(features.T @ row_space, dual.theta[0], atol=1e-10)


# -- hard data ---------------------------------------------------------------------------------

def assert_finite_and_stationary(fit, features, labels, offsets, beta, ridge):
    assert np.all(np.isfinite(fit.theta)) and np.all(np.isfinite(fit.fisher))
    assert fit.converged.all()
    grad = gradient(fit.theta[0], features, labels, offsets, beta, ridge)
    grad_at_zero = gradient(np.zeros(features.shape[1]), features, labels, offsets, beta, ridge)
    assert np.linalg.norm(grad) <= 1e-6 * max(np.linalg.norm(grad_at_zero), 1.0)


def test_bernoulli_losses_are_softplus_minus_label_times_logit():
    """Against ``logaddexp(0, eta) - y eta`` where that is accurate (|eta| moderate), and against the
    asymptotics where it cancels: a confident correct prediction at |eta| = 50 still loses
    ``log(1 + e^-50) = e^-50 (1 - O(e^-50))``, a confident wrong one loses ``|eta|``."""
    from agents.logistic import bernoulli_losses

    eta = np.linspace(-30.0, 30.0, 2001)
    for label in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(bernoulli_losses(eta, np.full_like(eta, label)),
                                   np.logaddexp(0.0, eta) - label * eta, rtol=1e-13, atol=1e-13)
    with np.errstate(over="raise", invalid="raise"):  # no overflow or NaN at extreme logits
        confident = bernoulli_losses(np.array([50.0, -50.0, 800.0, -800.0]), np.array([1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(confident, [np.exp(-50.0), np.exp(-50.0), 800.0, 800.0], rtol=1e-15)


def test_separable_data_stays_finite():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    labels = (features @ np.array([1.0, -2.0, 0.5]) > 0).astype(float)  # perfectly separable
    for ridge in (1e-1, 1e-3, 1e-6):
        fit = fit_logistic(features, labels, ridge=ridge)
        assert_finite_and_stationary(fit, features, labels, np.zeros(50), 1.0, ridge)
    # The separating direction is found: every training pair is classified correctly.
    assert np.all((features @ fit.theta[0] > 0) == (labels == 1))


def test_duplicated_rows_equal_halved_ridge():
    """Duplicating every sample doubles the loss: the minimiser is that of the original data
    with half the ridge (f_dup(theta) = 2 [loss(theta) + (ridge / 4) ||theta||^2])."""
    rng = np.random.default_rng(1)
    features, labels, offsets, beta, _ = random_problem(rng, 15, 4)
    doubled = fit_logistic(np.vstack([features, features]), np.concatenate([labels, labels]),
                           offsets=np.concatenate([offsets, offsets]), beta=beta, ridge=0.2)
    halved = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=0.1)
    np.testing.assert_allclose(doubled.theta, halved.theta, rtol=0, atol=1e-8)
    # A single row repeated many times (a rank-one design) is fine too.
    repeated = np.repeat(features[:1], 200, axis=0)
    fit = fit_logistic(repeated, np.ones(200), ridge=1e-3)
    assert_finite_and_stationary(fit, repeated, np.ones(200), np.zeros(200), 1.0, 1e-3)


def test_zero_information_direction():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(30, 4))
    features[:, 2] = 0.0  # no sample says anything about coordinate 2
    labels = rng.choice([0.0, 1.0], size=30)
    fit = fit_logistic(features, labels, ridge=0.05)
    assert_finite_and_stationary(fit, features, labels, np.zeros(30), 1.0, 0.05)
    assert fit.theta[0, 2] == 0.0
    assert fit.fisher[0, 2, 2] == pytest.approx(0.05)  # only the ridge
    np.testing.assert_array_equal(np.delete(fit.fisher[0, 2], 2), 0.0)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_all_equal_labels(value):
    rng = np.random.default_rng(4)
    features = rng.normal(size=(20, 3))
    labels = np.full(20, value)
    fit = fit_logistic(features, labels, ridge=1e-4)
    assert_finite_and_stationary(fit, features, labels, np.zeros(20), 1.0, 1e-4)
    fit = fit_logistic(features, labels, ridge=1e-2)
    reference, bound = reference_minimiser(features, labels, np.zeros(20), 1.0, 1e-2)
    assert bound < 5e-7
    np.testing.assert_allclose(fit.theta[0], reference, atol=1e-6)


def test_equal_labels_give_zero_without_offsets():
    """With every label 0.5 the gradient at 0 is X^T (1/2 - 1/2) = 0: the minimiser is 0."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(25, 5))
    fit = fit_logistic(features, np.full(25, 0.5), ridge=1e-3)
    np.testing.assert_array_equal(fit.theta, 0.0)
    assert fit.converged.all() and fit.iterations == 0
    offsets = rng.normal(size=25)
    fit = fit_logistic(features, np.full(25, 0.5), offsets=offsets, ridge=1e-3)
    assert_finite_and_stationary(fit, features, np.full(25, 0.5), offsets, 1.0, 1e-3)
    reference, bound = reference_minimiser(features, np.full(25, 0.5), offsets, 1.0, 1e-3)
    assert bound < 1e-6
    np.testing.assert_allclose(fit.theta[0], reference, atol=2e-6)


def test_warm_start_at_the_answer_needs_no_step():
    rng = np.random.default_rng(6)
    features, labels, offsets, beta, ridge = random_problem(rng, 20, 3)
    fit = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=ridge)
    again = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=ridge, initial=fit.theta)
    assert again.iterations == 0
    np.testing.assert_array_equal(again.theta, fit.theta)


def test_convergence_warning_after_max_iter():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(40, 3)) * 3
    labels = (features @ np.ones(3) > 0).astype(float)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        fit = fit_logistic(features, labels, ridge=1e-3, max_iter=1)
    assert fit.iterations == 1
    assert not fit.converged[0]
    assert np.all(np.isfinite(fit.theta))
    # The reported norm is the true one at the returned point, even when not converged.
    assert fit.gradient_norm[0] == pytest.approx(
        np.linalg.norm(gradient(fit.theta[0], features, labels, np.zeros(40), 1.0, 1e-3)), rel=1e-8)


def test_fisher_can_be_skipped():
    rng = np.random.default_rng(8)
    features, labels, offsets, beta, ridge = random_problem(rng, 10, 3)
    fit = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=ridge, fisher=False)
    assert fit.fisher is None
    np.testing.assert_allclose(fit.theta, fit_logistic(features, labels, offsets=offsets, beta=beta,
                                                       ridge=ridge).theta)


# -- invalid input -------------------------------------------------------------------------------

X = np.ones((3, 2))
Y = np.array([0.0, 1.0, 1.0])


@pytest.mark.parametrize("kwargs, error, name", [
    ({"features": np.ones(3)}, ValueError, "features"),
    ({"features": np.array([[np.nan, 1.0]] * 3)}, ValueError, "features"),
    ({"features": "abc"}, TypeError, "features"),
    ({"labels": np.ones(4)}, ValueError, "labels"),
    ({"labels": np.array([0.0, 1.5, 1.0])}, ValueError, "labels"),
    ({"labels": np.array([0.0, -0.1, 1.0])}, ValueError, "labels"),
    ({"groups": np.array([0.0, 1.0, 0.0])}, TypeError, "groups"),
    ({"groups": np.array([0, -1, 0])}, ValueError, "groups"),
    ({"groups": np.array([0, 2, 0]), "n_problems": 2}, ValueError, "groups"),
    ({"groups": np.array([0, 1])}, TypeError, "groups"),
    ({"n_problems": 0}, ValueError, "n_problems"),
    ({"offsets": np.ones(2)}, ValueError, "offsets"),
    ({"beta": 0.0}, ValueError, "beta"),
    ({"beta": -1.0}, ValueError, "beta"),
    ({"ridge": 0.0}, ValueError, "ridge"),
    ({"ridge": np.array([1.0, -1.0]), "groups": np.array([0, 1, 1])}, ValueError, "ridge"),
    ({"ridge": np.ones(3), "groups": np.array([0, 1, 1])}, ValueError, "ridge"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"max_iter": -1}, ValueError, "max_iter"),
    ({"max_iter": 2.5}, TypeError, "max_iter"),
    ({"initial": np.zeros((1, 3))}, ValueError, "initial"),
])
def test_invalid_input_names_the_argument(kwargs, error, name):
    arguments = {"features": X, "labels": Y, **kwargs}
    features, labels = arguments.pop("features"), arguments.pop("labels")
    with pytest.raises(error, match=name):
        fit_logistic(features, labels, **arguments)


def test_large_primal_problems_reuse_hessians_and_match_the_generic_optimiser(monkeypatch):
    """From ``_SYMMETRIC_UPDATE_MIN_DIMENSION`` coordinates with more samples than coordinates, steps
    reuse the factor of an earlier Hessian (formed in single precision) while the gradient shrinks
    fourfold per step: fewer Hessians than steps, and the same minimiser as a generic optimiser,
    with an exact (double-precision) Fisher matrix at the answer."""
    k = agents.logistic._SYMMETRIC_UPDATE_MIN_DIMENSION + 6
    rng = np.random.default_rng(22)
    features, labels, offsets, beta, ridge = random_problem(rng, 600, k)
    features /= np.sqrt(k)
    factorisations = []
    real_factor = agents.logistic.cho_factor
    monkeypatch.setattr(agents.logistic, "cho_factor",
                        lambda *args, **kwargs: factorisations.append(1) or real_factor(*args, **kwargs))
    fit = fit_logistic(features, labels, offsets=offsets, beta=beta, ridge=ridge)
    reference, bound = reference_minimiser(features, labels, offsets, beta, ridge)
    assert bound < 5e-7, "the reference optimiser itself is not accurate enough to judge"
    assert fit.converged.all()
    assert 1 <= len(factorisations) < fit.iterations
    np.testing.assert_allclose(fit.theta[0], reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fit.fisher[0], hessian(fit.theta[0], features, labels, offsets, beta, ridge),
                               rtol=1e-12, atol=1e-12)


def test_rank_deficient_large_problems_with_a_tiny_ridge_fall_back_to_double_precision(monkeypatch):
    """A design of rank 80 in k = 200 coordinates (4 distinct contexts times 20 features): with the
    ridge below the single-precision rounding of ``X^T W X`` the single-precision Hessian comes out
    indefinite, and the step is solved in double precision; the fit still reaches its certificate,
    checked with the independent gradient."""
    rng = np.random.default_rng(1)
    n = 3000
    contexts = rng.standard_normal((4, 10))[rng.integers(0, 4, n)]
    differences = rng.integers(-3, 4, (n, 20)) * 0.5
    features = (contexts[:, :, None] * differences[:, None, :]).reshape(n, -1)
    labels = (rng.uniform(size=n) < sigmoid_of(features @ (0.05 * rng.standard_normal(200)))).astype(float)
    failures = []
    real_factor = agents.logistic.cho_factor

    def counting_factor(matrix, **kwargs):
        try:
            return real_factor(matrix, **kwargs)
        except np.linalg.LinAlgError:
            failures.append(ridge)
            raise

    monkeypatch.setattr(agents.logistic, "cho_factor", counting_factor)
    zeros = np.zeros(n)
    for ridge in (1e-3, 1e-8):
        fit = fit_logistic(features, labels, ridge=ridge)
        assert fit.converged.all()
        grad = gradient(fit.theta[0], features, labels, zeros, 1.0, ridge)
        start = gradient(np.zeros(200), features, labels, zeros, 1.0, ridge)
        assert np.linalg.norm(grad) <= 1e-10 * max(1.0, np.linalg.norm(start)) * (1 + 1e-6) + 1e-12
    assert 1e-3 in failures and 1e-8 in failures  # the fallback was needed at both ridges


def test_hessian_solver_falls_back_to_lu(monkeypatch):
    """When no Cholesky factorisation succeeds the step is solved by LU: the same ``H^{-1} g``."""
    rng = np.random.default_rng(2)
    features, weights = rng.normal(size=(300, 70)), rng.uniform(0.1, 0.25, size=300)
    hessian = features.T @ (weights[:, None] * features) + 0.3 * np.eye(70)
    gradient_vector = rng.normal(size=70)

    def refuse(*args, **kwargs):
        raise np.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(agents.logistic, "cho_factor", refuse)
    solve = agents.logistic._hessian_solver(features.astype(np.float32), features, weights, 0.3)
    np.testing.assert_allclose(solve(gradient_vector), np.linalg.solve(hessian, gradient_vector), rtol=1e-10)


def test_a_sorted_design_is_viewed_not_copied():
    """Rows already grouped by problem with equal counts (e.g. a single large problem) are used in
    place: the padded layout is a view of the caller's array."""
    features = np.random.default_rng(23).normal(size=(12, 3))
    single = agents.logistic._PaddedProblems(features, np.zeros(12), np.zeros(12, dtype=np.int64), np.zeros(12), 1)
    grouped = agents.logistic._PaddedProblems(features, np.zeros(12), np.repeat(np.arange(3), 4), np.zeros(12), 3)
    shuffled = agents.logistic._PaddedProblems(features, np.zeros(12), np.tile(np.arange(3), 4), np.zeros(12), 3)
    assert np.shares_memory(single.features, features) and np.shares_memory(grouped.features, features)
    assert not np.shares_memory(shuffled.features, features)
    np.testing.assert_array_equal(grouped.features[1], features[4:8])
    np.testing.assert_array_equal(shuffled.features[1], features[1::3])


def test_large_problems_use_the_symmetric_update_and_agree():
    """From ``_SYMMETRIC_UPDATE_MIN_DIMENSION`` coordinates on the Gram matrices come from BLAS syrk
    (upper triangle, mirrored): the Fisher matrices must equal ``X^T diag(w) X + ridge I`` computed
    independently, to rounding of sums of ``n`` terms, and be exactly symmetric."""
    k = agents.logistic._SYMMETRIC_UPDATE_MIN_DIMENSION + 6
    rng = np.random.default_rng(21)
    n, n_problems = 150, 2
    features = rng.normal(size=(n, k)) / np.sqrt(k)
    groups = np.repeat(np.arange(n_problems), n // n_problems)
    labels = (rng.uniform(size=n) < 0.5).astype(float)
    fit = fit_logistic(features, labels, groups=groups, ridge=0.7, beta=1.3)
    for problem in range(n_problems):
        rows = groups == problem
        eta = 1.3 * features[rows] @ fit.theta[problem]
        slope = 1.3**2 * np.exp(-np.logaddexp(0.0, eta) - np.logaddexp(0.0, -eta))  # sigmoid'(eta) beta^2
        expected = features[rows].T @ (slope[:, None] * features[rows]) + 0.7 * np.eye(k)
        np.testing.assert_allclose(fit.fisher[problem], expected, rtol=1e-12, atol=1e-13 * np.abs(expected).max())
        np.testing.assert_array_equal(fit.fisher[problem], fit.fisher[problem].T)


# -- sparse features ------------------------------------------------------------------------------

def sparse_problems(seed, n_problems, counts, k, density=0.05):
    """Signed small-integer features with a few non-zeros per row (like visit-count differences),
    rows of the problems shuffled together; ``counts`` pairs per problem (0 allowed)."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat(np.arange(n_problems), counts))
    n = groups.size
    mask = rng.uniform(size=(n, k)) < density
    dense = mask * rng.integers(-2, 3, size=(n, k)).astype(float)
    labels = rng.choice([0.0, 1.0, 0.5], size=n, p=[0.45, 0.45, 0.1])
    offsets = 0.3 * rng.normal(size=n)
    return scipy.sparse.csr_matrix(dense), dense, labels, offsets, groups


@pytest.mark.parametrize("counts, k", [
    ([30, 12, 0, 25, 30], 80),        # n < k in every problem: sample-space (Woodbury) steps
    ([300, 250, 400], 70),            # n > k >= 64: primal steps with stored Hessian factors
    ([400], 90),                      # one problem (a pooled fit)
])
def test_sparse_features_give_the_dense_fit(counts, k):
    """The sparse layout (no (B, n_max, k) array) is the same solver: same answer, certificates and
    Fisher matrices as the dense layout of the same data, and stationary by the independent gradient."""
    sparse, dense, labels, offsets, groups = sparse_problems(3, len(counts), counts, k)
    arguments = dict(groups=groups, n_problems=len(counts), offsets=offsets, beta=1.5, ridge=0.7)
    sparse_fit = fit_logistic(sparse, labels, **arguments)
    dense_fit = fit_logistic(dense, labels, **arguments)
    assert sparse_fit.converged.all() and dense_fit.converged.all()
    np.testing.assert_allclose(sparse_fit.theta, dense_fit.theta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(sparse_fit.objective, dense_fit.objective, rtol=1e-12)
    np.testing.assert_allclose(sparse_fit.fisher, dense_fit.fisher, rtol=1e-10, atol=1e-12)
    for problem, count in enumerate(counts):
        rows = groups == problem
        grad = gradient(sparse_fit.theta[problem], dense[rows], labels[rows], offsets[rows], 1.5, 0.7)
        grad_at_zero = gradient(np.zeros(k), dense[rows], labels[rows], offsets[rows], 1.5, 0.7)
        assert np.linalg.norm(grad) <= 1e-10 * max(np.linalg.norm(grad_at_zero), 1.0) + 1e-12
        assert sparse_fit.gradient_norm[problem] == pytest.approx(np.linalg.norm(grad), rel=1e-6, abs=1e-12)
        if count == 0:
            np.testing.assert_array_equal(sparse_fit.theta[problem], 0.0)


def test_sparse_features_with_few_columns_take_the_dense_layout(monkeypatch):
    """Below 64 columns a dense batch is small and faster: sparse input is densified there."""
    sparse, dense, labels, offsets, groups = sparse_problems(4, 3, [20, 20, 20], 12, density=0.3)
    created = []
    original = agents.logistic._SparseProblems.__init__

    def recording(self, *args, **kwargs):
        created.append(True)
        original(self, *args, **kwargs)

    monkeypatch.setattr(agents.logistic._SparseProblems, "__init__", recording)
    fit = fit_logistic(sparse, labels, groups=groups, offsets=offsets)
    assert not created
    np.testing.assert_allclose(fit.theta, fit_logistic(dense, labels, groups=groups, offsets=offsets).theta,
                               rtol=0, atol=1e-12)


def test_sparse_features_must_be_finite():
    sparse, _, labels, _, _ = sparse_problems(5, 1, [30], 70)
    sparse.data[0] = np.nan
    with pytest.raises(ValueError, match="features must be finite"):
        fit_logistic(sparse, labels)


def test_ridged_solve_survives_a_ridge_lost_to_rounding():
    """``M = X^T X + 0.01 I`` with rows of 1e9: in floating point the ridge vanishes and ``M`` is
    exactly singular. Its exact eigenvalues are 4e18 + 0.01 (along (1, 1)) and 0.01 (along (1, -1)),
    so ``M^{-1} (1, -1) = (100, -100)``: the eigenvalue floor at the ridge recovers it. Where the
    solve is regular the answer is the plain solve's."""
    from agents.logistic import ridged_solve

    design = np.full((2, 2), 1e9)
    matrix = design.T @ design + 0.01 * np.eye(2)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(matrix, np.array([1.0, -1.0]))
    np.testing.assert_allclose(ridged_solve(matrix[None], np.array([[[1.0], [-1.0]]]), 0.01)[0, :, 0],
                               [100.0, -100.0], rtol=1e-12)
    rng = np.random.default_rng(0)
    matrices = rng.normal(size=(4, 3, 3))
    matrices = matrices @ matrices.transpose(0, 2, 1) + np.eye(3)
    vectors = rng.normal(size=(4, 3, 2))
    np.testing.assert_allclose(ridged_solve(matrices, vectors, 1.0), np.linalg.solve(matrices, vectors))
