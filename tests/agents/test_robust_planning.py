"""Exact pessimism (``agents.planning.robust_optimize``) against a conic solver and its certificate.

The oracle never calls the code under test: cvxpy (Clarabel) solves the occupancy-measure
formulation ``max_q min_{theta in C} theta . (Phi^T q - d_ref)`` over the flow polytope, with the
set's support function written out in closed form (second-order cones for seminorm sets, a
p-norm for the p-norm ball). Instances are drawn by hypothesis and include full-dimensional
sets, zero radius, radii so large that the reference policy is optimal, rank-deficient and
duplicated bases, sets of two seminorm terms and a set without seminorm structure.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lr_mdp_env
from agents import ComplementSeminorm, ConfidenceSet, ConvergenceWarning, Ellipsoid, LinearSeminorm, planning
from lr_mdp_env import backward_induction, expected_features, uniform_policy
from lr_mdp_env.dynamic_programming import check_policy
from lr_mdp_env.testing import mdps, policies

cp = pytest.importorskip("cvxpy")

SEMINORM_METHODS = ("auto", "interior-point", "column-generation")


# -- sets the tests define: two seminorm terms, and no seminorm structure at all ----------------


class EllipsoidPlusBall(ConfidenceSet):
    """``{theta_hat + radius K^T z + epsilon (I - U U^T) e : ||z|| <= 1, ||e|| <= 1}``: an ellipsoid
    widened by a ball orthogonal to ``U`` (two seminorm terms)."""

    def __init__(self, theta_hat, matrix, radius, basis, epsilon):
        self._theta_hat = np.asarray(theta_hat, dtype=float)
        self.terms = (LinearSeminorm(radius, np.asarray(matrix, dtype=float)), ComplementSeminorm(epsilon, basis))

    @property
    def n_features(self):
        return self._theta_hat.size

    @property
    def theta_hat(self):
        return self._theta_hat

    def seminorms(self):
        return self.terms

    def lower(self, vectors):
        vectors = np.asarray(vectors, dtype=float)
        value = vectors @ self._theta_hat - sum(term.radius * term.norm(vectors) for term in self.terms)
        return float(value) if np.ndim(value) == 0 else value

    def minimizer(self, vectors):
        vectors = np.asarray(vectors, dtype=float)
        theta = np.broadcast_to(self._theta_hat, vectors.shape).copy()
        for term in self.terms:
            whitened = term.whiten(vectors)
            norms = np.linalg.norm(whitened, axis=-1, keepdims=True)
            direction = np.divide(whitened, norms, out=np.zeros_like(whitened), where=norms > 0)
            theta -= term.radius * term.adjoint(direction)
        return theta

    def contains(self, theta, *, atol=1e-9):
        # theta - theta_hat = K^T z r + eps (I - UU^T) e with both balls: a small SOCP.
        d = self.n_features
        first, second = self.terms
        z, e = cp.Variable(first.matrix.shape[0]), cp.Variable(d)
        residual = np.asarray(theta) - self._theta_hat
        projector = np.eye(d) - second.basis @ second.basis.T
        problem = cp.Problem(cp.Minimize(cp.norm(first.radius * first.matrix.T @ z + second.radius * projector @ e - residual)),
                             [cp.norm(z) <= 1, cp.norm(e) <= 1])
        problem.solve(solver="CLARABEL")
        return problem.value <= atol * max(1.0, np.linalg.norm(theta))


class PNormBall(ConfidenceSet):
    """``{center + radius M^T u : ||u||_p <= 1}``: ``lower(v) = center . v - radius ||M v||_q`` with
    ``1/p + 1/q = 1``, smooth and not a sum of Euclidean seminorms (no ``seminorms()``)."""

    def __init__(self, center, matrix, radius, p):
        self.center, self.matrix, self.radius, self.p = np.asarray(center, float), np.asarray(matrix, float), radius, p
        self.q = p / (p - 1)

    @property
    def n_features(self):
        return self.center.size

    @property
    def theta_hat(self):
        return self.center

    def lower(self, vectors):
        vectors = np.asarray(vectors, dtype=float)
        value = vectors @ self.center - self.radius * np.linalg.norm(vectors @ self.matrix.T, ord=self.q, axis=-1)
        return float(value) if np.ndim(value) == 0 else value

    def minimizer(self, vectors):
        image = np.asarray(vectors, dtype=float) @ self.matrix.T
        norm = np.linalg.norm(image, ord=self.q, axis=-1, keepdims=True)
        u = np.sign(image) * np.abs(np.divide(image, norm, out=np.zeros_like(image), where=norm > 0)) ** (self.q - 1)
        return self.center - self.radius * u @ self.matrix

    def contains(self, theta, *, atol=1e-9):
        u, *_ = np.linalg.lstsq(self.matrix.T, (np.asarray(theta) - self.center) / max(self.radius, 1e-300), rcond=None)
        return np.linalg.norm(u, ord=self.p) <= 1 + atol


# -- instances --------------------------------------------------------------------------------


def random_ellipsoid(rng, d, k, radius, *, rank=None, duplicate=False):
    """A random set; ``k > d``, ``rank < min(d, k)`` or a duplicated column make the basis not injective."""
    rank = min(d, k) if rank is None else rank
    basis = rng.normal(size=(d, rank)) @ rng.normal(size=(rank, k)) / np.sqrt(rank)
    if duplicate and k > 1:
        basis[:, -1] = basis[:, 0]
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    matrix = (q * np.exp(rng.uniform(-2, 2, size=k))) @ q.T
    return Ellipsoid(offset=0.3 * rng.normal(size=d), basis=basis, center=rng.normal(size=k),
                     matrix=0.5 * (matrix + matrix.T), radius=radius)


def full_dimensional_set(rng, mdp, radius):
    """An independent-MLE-like set: every identifiable direction, a data-like matrix."""
    basis = lr_mdp_env.identifiability.identifiable_basis(mdp)
    k = basis.shape[1]
    data = rng.normal(size=(3 * k, k))
    return Ellipsoid(offset=np.zeros(mdp.n_features), basis=basis, center=rng.normal(size=k),
                     matrix=data.T @ data / k + 0.1 * np.eye(k), radius=radius)


def two_term_set(rng, d, radius, epsilon):
    k = int(rng.integers(1, d + 1))
    basis, _ = np.linalg.qr(rng.normal(size=(d, min(2, d))))
    return EllipsoidPlusBall(rng.normal(size=d), rng.normal(size=(k, d)) / np.sqrt(d), radius, basis, epsilon)


RADII = st.sampled_from([0.0, 0.05, 0.5, 2.0, 1e3])


@st.composite
def seminorm_problems(draw):
    """``(mdp, set, reference policy, d_ref)``: small MDPs, every kind of seminorm set."""
    mdp = draw(mdps(max_states=3, max_actions=3, max_horizon=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = mdp.n_features
    kind = draw(st.sampled_from(["ellipsoid", "rank-deficient", "duplicated", "full", "two-term"]))
    radius = draw(RADII)
    if kind == "full":
        confidence_set = full_dimensional_set(rng, mdp, radius)
    elif kind == "two-term":
        confidence_set = two_term_set(rng, d, radius, draw(st.sampled_from([0.0, 0.1, 1.0])))
    else:
        k = draw(st.integers(1, d + 2))
        rank = draw(st.integers(1, min(d, k))) if kind == "rank-deficient" else None
        confidence_set = random_ellipsoid(rng, d, k, radius, rank=rank, duplicate=kind == "duplicated")
    reference_policy = draw(policies(mdp))
    return mdp, confidence_set, reference_policy, expected_features(mdp, reference_policy)


def conic_optimum(mdp, confidence_set, reference):
    """``max_q min_{theta in C} theta . (Phi^T q - d_ref)`` over the flow polytope, by cvxpy.

    Variables ``q[h, s, a] >= 0`` with ``sum_a q[0, s, a] = rho(s)`` and
    ``sum_a q[h+1, s', a] = sum_{s, a} P[h, s, a, s'] q[h, s, a]``.
    """
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    q = cp.Variable((horizon, n_states * n_actions), nonneg=True)
    summing = np.kron(np.eye(n_states), np.ones((n_actions, 1)))
    constraints = [q[0] @ summing == mdp.initial_distribution]
    for step in range(horizon - 1):
        constraints.append(q[step + 1] @ summing == q[step] @ mdp.transitions[step].reshape(-1, n_states))
    features = np.asarray(mdp.features).reshape(horizon, n_states * n_actions, -1)
    g = sum(features[step].T @ q[step] for step in range(horizon)) - reference
    if isinstance(confidence_set, PNormBall):
        objective = confidence_set.center @ g - confidence_set.radius * cp.pnorm(confidence_set.matrix @ g, confidence_set.q)
    else:
        d = confidence_set.n_features
        objective = confidence_set.theta_hat @ g
        for term in confidence_set.seminorms():
            objective = objective - term.radius * cp.norm(term.whiten(np.eye(d)).T @ g)
    problem = cp.Problem(cp.Maximize(objective), constraints)
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal", problem.status
    return problem.value


def objective_scale(mdp, confidence_set):
    """A bound on ``|theta . g|`` over the set and every ``g = d_pi - d_ref``: the scale on which
    the conic solver's relative accuracy (1e-8) is measured. ``||g|| <= 2 H max ||phi||``."""
    reach = 2 * mdp.horizon * np.linalg.norm(mdp.features, axis=-1).max()
    if isinstance(confidence_set, PNormBall):
        spread = confidence_set.radius * np.linalg.norm(confidence_set.matrix, 2) * confidence_set.matrix.shape[0]
    else:
        d = confidence_set.n_features
        spread = sum(term.radius * np.linalg.norm(term.whiten(np.eye(d)), 2) for term in confidence_set.seminorms())
    return max(1.0, reach * (np.linalg.norm(confidence_set.theta_hat) + spread))


def best_response_value(mdp, theta, reference):
    """``max_pi theta . (d_pi - d_ref)`` by backward induction on ``theta``'s reward."""
    _, values = backward_induction(mdp, mdp.reward(theta))
    return values[0] @ mdp.initial_distribution - theta @ reference


def assert_certified(mdp, confidence_set, reference, solution, optimum=None):
    """The solution's numbers are what they claim, and the conic optimum lies between them (up to
    the conic solver's own error: 1e-8 of the objective's scale, with a factor 10 of margin)."""
    check_policy(mdp, solution.policy)
    features = expected_features(mdp, solution.policy)
    assert solution.value == pytest.approx(confidence_set.lower(features - reference), abs=1e-12)
    assert np.allclose(lr_mdp_env.occupancy(mdp, solution.policy), solution.occupancy, atol=1e-12)
    assert solution.gap == pytest.approx(solution.upper_bound - solution.value, abs=1e-15)
    assert best_response_value(mdp, solution.certificate, reference) == pytest.approx(solution.upper_bound, abs=1e-10)
    if optimum is not None:
        slack = 1e-7 * objective_scale(mdp, confidence_set)
        assert solution.value <= optimum + slack
        assert solution.upper_bound >= optimum - slack


# -- agreement with the conic program ---------------------------------------------------------------


@settings(max_examples=40)
@given(seminorm_problems(), st.sampled_from(SEMINORM_METHODS))
def test_every_method_reaches_the_conic_optimum_with_an_honest_certificate(problem, method):
    mdp, confidence_set, _, reference = problem
    solution = planning.robust_optimize(mdp, confidence_set, reference, tol=1e-8, method=method)
    optimum = conic_optimum(mdp, confidence_set, reference)
    assert_certified(mdp, confidence_set, reference, solution, optimum)
    # The value and the bound are sums of terms as large as the objective's scale (a radius of
    # 1000 with a rank-deficient basis gives 3e4 while the optimum is 0.3): they cancel, and
    # rounding, amplified by the Newton systems' conditioning, leaves about 1e-12 of that scale
    # uncertifiable (robust_optimize documents rounding below about 1e-11). Below that floor a
    # gap above tol relative to |value| is rounding, not a solver failure.
    floor = 1e-12 * objective_scale(mdp, confidence_set)
    assert solution.gap <= max(1e-8 * max(1.0, abs(solution.value)), floor)
    assert solution.converged or solution.gap <= floor
    assert abs(solution.value - optimum) <= 1e-7 * objective_scale(mdp, confidence_set)
    # The reference policy is feasible with L = 0, so the optimum (hence value + gap) is >= 0.
    assert solution.value + solution.gap >= -1e-12


@settings(max_examples=15)
@given(seminorm_problems())
def test_the_certificate_is_a_member_of_the_set(problem):
    mdp, confidence_set, reference_policy, reference = problem
    solution = planning.robust_optimize(mdp, confidence_set, reference, reference_policy=reference_policy)
    assert confidence_set.contains(solution.certificate, atol=1e-7)


@settings(max_examples=10)
@given(st.data(), st.sampled_from(["auto", "frank-wolfe"]))
def test_a_set_without_seminorm_structure_is_planned_with_a_certified_gap(data, method):
    mdp = data.draw(mdps(max_states=3, max_actions=3, max_horizon=3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    d = mdp.n_features
    confidence_set = PNormBall(rng.normal(size=d), rng.normal(size=(d, d)) / np.sqrt(d),
                               data.draw(st.sampled_from([0.1, 1.0])), data.draw(st.sampled_from([1.5, 4.0])))
    reference = expected_features(mdp, uniform_policy(mdp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        solution = planning.robust_optimize(mdp, confidence_set, reference, tol=1e-4, max_iterations=2000,
                                            method=method)
    assert solution.method == ("cutting-plane" if method == "auto" else method)
    optimum = conic_optimum(mdp, confidence_set, reference)
    assert_certified(mdp, confidence_set, reference, solution, optimum)
    # The cutting-plane method's master is a linear program whose multipliers certify its value,
    # and Kelley's method converges for any compact convex set: within the budget the gap must
    # close wherever the optimum lies. Frank-Wolfe's gap falls only like 1/t, and not at all where
    # L is not differentiable at the optimum (the minimisers oscillate): for it only the honest
    # certificate above is guaranteed.
    if method == "auto":
        assert solution.converged and solution.gap <= 1e-4 * max(1.0, abs(solution.value))


# -- batching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SEMINORM_METHODS)
def test_the_batched_call_equals_the_single_calls(method):
    mdp = lr_mdp_env.random_mdp(6, 3, 5, seed=7)
    rng = np.random.default_rng(8)
    d = mdp.n_features
    sets = [random_ellipsoid(rng, d, k, radius) for k, radius in ((2, 0.5), (4, 3.0), (3, 0.0), (4, 0.7), (2, 2.0))]
    sets += [full_dimensional_set(rng, mdp, 1.0), two_term_set(rng, d, 0.5, 0.2)]
    references = np.stack([expected_features(mdp, policy) for policy in
                           [uniform_policy(mdp), planning.greedy(mdp, rng.normal(size=d))] * 3 + [uniform_policy(mdp)]])
    batch = planning.robust_optimize(mdp, sets, references, method=method)
    assert isinstance(batch, list) and len(batch) == len(sets)
    for solution, confidence_set, reference in zip(batch, sets, references):
        single = planning.robust_optimize(mdp, confidence_set, reference, method=method)
        # Every problem's arithmetic is its own (no quantity is shared across the batch), so the
        # two runs differ only by rounding: numpy's stacked products may sum in another order,
        # and near the optimum the barrier and Newton steps amplify that. Both values are
        # certified within their gaps of the same optimum, which bounds the difference.
        assert solution.method == single.method
        assert abs(solution.value - single.value) <= max(solution.gap, single.gap) + 1e-12
        assert abs(solution.upper_bound - single.upper_bound) <= max(solution.gap, single.gap) + 1e-12
        assert abs(solution.value - single.value) <= 1e-9 * max(1.0, abs(single.value))
    values = planning.pessimistic_value(mdp, sets[:5], references[:5], np.stack([s.policy for s in batch[:5]]))
    assert np.allclose(values, [s.value for s in batch[:5]], atol=1e-12)


# -- special cases -------------------------------------------------------------------------------


def test_zero_radius_is_greedy():
    mdp = lr_mdp_env.random_mdp(4, 3, 4, seed=1)
    ellipsoid = random_ellipsoid(np.random.default_rng(2), mdp.n_features, 3, 0.0)
    reference = expected_features(mdp, uniform_policy(mdp))
    solution = planning.robust_optimize(mdp, ellipsoid, reference)
    greedy_policy = planning.greedy(mdp, ellipsoid.theta_hat)
    assert solution.method == "greedy" and solution.iterations == 1
    assert np.array_equal(solution.policy, greedy_policy)
    assert solution.gap == 0.0


@pytest.mark.parametrize("method", SEMINORM_METHODS)
def test_large_radius_keeps_to_the_reference(method):
    # A set spanning every identifiable direction (as IndependentMLE's): G g = 0 only for g = 0,
    # so with a huge radius every other policy has L < 0 and the optimum is L = 0 at d_pi = d_ref.
    mdp = lr_mdp_env.random_mdp(5, 3, 4, seed=5)
    ellipsoid = full_dimensional_set(np.random.default_rng(6), mdp, 1e3)
    reference_policy = uniform_policy(mdp)
    reference = expected_features(mdp, reference_policy)
    for seed_policy in (reference_policy, None):
        solution = planning.robust_optimize(mdp, ellipsoid, reference, reference_policy=seed_policy, method=method)
        assert solution.converged and abs(solution.value) <= 1e-8
        # L(g) >= -1e-8 forces radius ||K g|| <= |theta_hat . g| + 1e-8, so g = 0 up to 1e-8 / radius.
        assert np.allclose(expected_features(mdp, solution.policy), reference, atol=1e-8)


def test_the_interior_point_method_takes_a_number_of_steps_independent_of_the_dimension():
    mdp = lr_mdp_env.random_mdp(8, 4, 5, seed=11)
    rng = np.random.default_rng(12)
    reference = expected_features(mdp, uniform_policy(mdp))
    steps = []
    for k in (1, 4, 16, mdp.n_features - 1):
        ellipsoid = random_ellipsoid(rng, mdp.n_features, k, 0.5)
        solution = planning.robust_optimize(mdp, ellipsoid, reference, method="interior-point")
        assert solution.converged
        steps.append(solution.iterations)
    # Interior-point theory bounds the steps by O(sqrt(H S A) log(1/tol)), whatever k; in practice
    # 10-40. Column generation needs about 2 k pricing steps, so k = 31 alone would exceed 40.
    assert max(steps) <= 40


# -- budgets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SEMINORM_METHODS)
def test_an_iteration_budget_returns_an_honest_gap_and_warns(method):
    mdp = lr_mdp_env.random_mdp(6, 3, 5, seed=23)
    ellipsoid = random_ellipsoid(np.random.default_rng(24), mdp.n_features, 8, radius=2.0)
    reference = expected_features(mdp, uniform_policy(mdp))
    finished = planning.robust_optimize(mdp, ellipsoid, reference, method=method)
    assert finished.converged and finished.iterations > 2
    with pytest.warns(ConvergenceWarning, match="gap"):
        stopped = planning.robust_optimize(mdp, ellipsoid, reference, method=method, max_iterations=2)
    assert stopped.iterations == 2 and not stopped.converged
    assert_certified(mdp, ellipsoid, reference, stopped)
    assert stopped.value <= finished.upper_bound + 1e-12
    assert stopped.upper_bound >= finished.value - 1e-12
    assert stopped.gap > 1e-8 * max(1.0, abs(stopped.value))


def test_a_spent_time_budget_still_returns_a_certified_policy():
    mdp = lr_mdp_env.random_mdp(6, 3, 5, seed=25)
    rng = np.random.default_rng(26)
    sets = [random_ellipsoid(rng, mdp.n_features, 4, radius=1.0) for _ in range(3)]
    reference = expected_features(mdp, uniform_policy(mdp))
    with pytest.warns(ConvergenceWarning):
        solutions = planning.robust_optimize(mdp, sets, reference, max_seconds=1e-9)
    for solution, ellipsoid in zip(solutions, sets):
        assert solution.iterations == 0 and not solution.converged
        assert_certified(mdp, ellipsoid, reference, solution)


def test_converged_runs_do_not_warn():
    mdp = lr_mdp_env.random_mdp(5, 3, 4, seed=27)
    ellipsoid = random_ellipsoid(np.random.default_rng(28), mdp.n_features, 3, radius=1.0)
    reference = expected_features(mdp, uniform_policy(mdp))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert planning.robust_optimize(mdp, ellipsoid, reference).converged


# -- larger instances -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_robust_optimum_agrees_with_a_conic_solver_on_larger_instances(seed):
    rng = np.random.default_rng(seed)
    features = ("one_hot", "one_hot_time", "dense")[seed % 3]
    mdp = lr_mdp_env.random_mdp(12, 3, 6, features=features, n_features=6 if features == "dense" else None,
                                stationary=bool(seed % 2), seed=seed)
    sets = [random_ellipsoid(rng, mdp.n_features, 6, radius=float(rng.uniform(0.2, 3.0))),
            full_dimensional_set(rng, mdp, float(rng.uniform(0.2, 3.0)))]
    reference = expected_features(mdp, uniform_policy(mdp))
    for confidence_set in sets:
        optimum = conic_optimum(mdp, confidence_set, reference)
        for method in ("interior-point", "column-generation"):
            solution = planning.robust_optimize(mdp, confidence_set, reference, method=method)
            print(f"MEASURED robust_vs_conic[seed={seed}, {features}, k={confidence_set.dimension}, {method}]: "
                  f"value - conic optimum {solution.value - optimum:.2e}, upper bound - optimum "
                  f"{solution.upper_bound - optimum:.2e} ({solution.iterations} iterations)")
            assert solution.converged
            assert solution.value == pytest.approx(optimum, abs=1e-6 * max(1.0, abs(optimum)))
            assert_certified(mdp, confidence_set, reference, solution, optimum)


# -- arguments ------------------------------------------------------------------------------------


def test_robust_planner_arguments_are_checked():
    mdp = lr_mdp_env.random_mdp(3, 2, 2, seed=21)
    ellipsoid = random_ellipsoid(np.random.default_rng(22), mdp.n_features, 2, 1.0)
    reference = expected_features(mdp, uniform_policy(mdp))
    with pytest.raises(ValueError, match="method"):
        planning.robust_optimize(mdp, ellipsoid, reference, method="simplex")
    with pytest.raises(ValueError, match="max_seconds"):
        planning.robust_optimize(mdp, ellipsoid, reference, max_seconds=0.0)
    with pytest.raises(ValueError, match="max_iterations"):
        planning.robust_optimize(mdp, ellipsoid, reference, max_iterations=0)
    with pytest.raises(ValueError, match="reference_policy"):
        planning.robust_optimize(mdp, ellipsoid, reference, reference_policy=np.ones((2, 3)))
    with pytest.raises(ValueError, match="reference_policy"):
        planning.robust_optimize(mdp, ellipsoid, reference, reference_policy=np.ones((2, 3, 2)))
