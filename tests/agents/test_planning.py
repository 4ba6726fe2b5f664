"""Planners against a confidence set (docs/algorithms.md, Planning) and the L1-robust Bellman step.

Oracles never call the code under test: a conic solver (cvxpy) on the occupancy-measure
formulation of the exact robust problem, scipy's linear programming for the L1 inner problem and
for every row of a robust backward induction, closed forms for the bonus, and the deterministic
facts of docs/theory.md (pessimism lemma, lower bound, rectangular <= exact).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

import lr_mdp_env
from agents import ComplementSeminorm, ConfidenceSet, Ellipsoid, LinearSeminorm, planning
from lr_mdp_env import backward_induction, evaluate_policy, expected_features, uniform_policy
from lr_mdp_env.dynamic_programming import check_policy, l1_robust_expectation, l1_transition_radius
from lr_mdp_env.testing import mdps, policies, probability_arrays, reward_tables

# -- instances --------------------------------------------------------------------------------


def random_ellipsoid(rng, d, k, radius, *, rank=None):
    """A random set; ``k > d`` or ``rank < min(d, k)`` gives a basis that is not injective."""
    rank = min(d, k) if rank is None else rank
    basis = rng.normal(size=(d, rank)) @ rng.normal(size=(rank, k)) / np.sqrt(rank)
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    matrix = (q * np.exp(rng.uniform(-2, 2, size=k))) @ q.T
    return Ellipsoid(offset=0.3 * rng.normal(size=d), basis=basis, center=rng.normal(size=k),
                     matrix=0.5 * (matrix + matrix.T), radius=radius)


@st.composite
def planning_problems(draw, radii=st.sampled_from([0.0, 0.05, 0.5, 2.0, 20.0])):
    """``(mdp, set, reference policy, d_ref)`` with small S, A, H and a drawn set."""
    mdp = draw(mdps(max_states=3, max_actions=3, max_horizon=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = mdp.n_features
    k = draw(st.integers(1, d + 2))
    rank = draw(st.one_of(st.none(), st.integers(1, min(d, k))))
    ellipsoid = random_ellipsoid(rng, d, k, draw(radii), rank=rank)
    reference_policy = draw(policies(mdp))
    return mdp, ellipsoid, reference_policy, expected_features(mdp, reference_policy)


def whitening(ellipsoid):
    """``K`` with ``||G v||_{M^{-1}} = ||K v||``, from an eigendecomposition of ``M``."""
    values, vectors = np.linalg.eigh(ellipsoid.matrix)
    return ((vectors / np.sqrt(values)) @ vectors.T) @ ellipsoid.basis.T


def conic_optimum(mdp, ellipsoid, reference):
    """``max_q theta_hat . g - radius ||K g||`` over the occupancy polytope, by cvxpy.

    Variables ``q[h, s, a] >= 0`` with ``sum_a q[0, s, a] = rho(s)`` and
    ``sum_a q[h+1, s', a] = sum_{s, a} P[h, s, a, s'] q[h, s, a]``; ``g = Phi^T q - d_ref``.
    """
    cp = pytest.importorskip("cvxpy")
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    q = cp.Variable((horizon, n_states * n_actions), nonneg=True)
    summing = np.kron(np.eye(n_states), np.ones((n_actions, 1)))  # (S A, S): sum over actions
    constraints = [q[0] @ summing == mdp.initial_distribution]
    for step in range(horizon - 1):
        constraints.append(q[step + 1] @ summing == q[step] @ mdp.transitions[step].reshape(-1, n_states))
    features = np.asarray(mdp.features).reshape(horizon, n_states * n_actions, -1)
    g = sum(features[step].T @ q[step] for step in range(horizon)) - reference
    objective = ellipsoid.theta_hat @ g - ellipsoid.radius * cp.norm(whitening(ellipsoid) @ g)
    problem = cp.Problem(cp.Maximize(objective), constraints)
    if "CLARABEL" in cp.installed_solvers():
        problem.solve(solver="CLARABEL")
    else:
        problem.solve(solver="SCS", eps=1e-9, max_iters=200_000)
    assert problem.status == "optimal", problem.status
    return problem.value


def best_response_value(mdp, theta, reference):
    """``max_pi theta . (d_pi - d_ref)`` by backward induction on ``theta``'s reward."""
    _, values = backward_induction(mdp, mdp.reward(theta))
    return values[0] @ mdp.initial_distribution - theta @ reference


def point_in_set(rng, ellipsoid):
    """A member ``offset + B w`` with ``||w - c||_M <= radius``, anywhere in the set."""
    direction = rng.normal(size=ellipsoid.dimension)
    direction *= rng.uniform() ** (1 / ellipsoid.dimension) / np.linalg.norm(direction)
    cholesky = np.linalg.cholesky(ellipsoid.matrix)
    w = ellipsoid.center + ellipsoid.radius * np.linalg.solve(cholesky.T, direction)
    return ellipsoid.offset + ellipsoid.basis @ w


# -- exact robust optimisation ------------------------------------------------------------------


@given(planning_problems(), st.integers(0, 2**32 - 1))
def test_pessimism_lemma_and_lower_bound_hold_when_the_truth_is_in_the_set(problem, seed):
    mdp, ellipsoid, reference_policy, reference = problem
    truth = point_in_set(np.random.default_rng(seed), ellipsoid)
    solution = planning.robust_optimize(mdp, ellipsoid, reference)
    optimal_policy, _ = backward_induction(mdp, mdp.reward(truth))
    optimal_features = expected_features(mdp, optimal_policy)
    value = truth @ expected_features(mdp, solution.policy)
    optimal_value = truth @ optimal_features
    slack = 1e-9 * max(1.0, abs(optimal_value))
    # J(pi*) - J(pi_hat) <= 2 radius ||G (d* - d_ref)||_{M^-1} for the exact maximiser; the
    # computed policy is optimal within its certified gap, which enters the bound additively.
    coverage = ellipsoid.dual_norm(optimal_features - reference)
    assert 0 <= optimal_value - value + slack
    assert optimal_value - value <= 2 * ellipsoid.radius * coverage + solution.gap + slack
    # J(pi_hat) - J(ref) >= L(pi_hat): L is the worst case over the set, which contains the truth.
    assert value - truth @ reference >= solution.value - slack


@given(planning_problems())
def test_rectangular_pessimism_is_never_less_conservative_than_exact(problem):
    mdp, ellipsoid, _, reference = problem
    exact = planning.robust_optimize(mdp, ellipsoid, reference)
    rectangular = planning.rectangular(mdp, ellipsoid, reference)
    check_policy(mdp, rectangular.policy)
    assert rectangular.value == pytest.approx(
        ellipsoid.lower(expected_features(mdp, rectangular.policy) - reference), abs=1e-12
    )
    # L(pi_rect) <= max_pi L(pi) <= upper_bound, and the exact value is within its gap of the max.
    assert rectangular.value <= exact.upper_bound + 1e-12
    assert rectangular.value <= exact.value + exact.gap + 1e-12


@given(planning_problems(radii=st.just(0.0)))
def test_zero_radius_is_greedy(problem):
    mdp, ellipsoid, _, reference = problem
    solution = planning.robust_optimize(mdp, ellipsoid, reference)
    greedy_policy = planning.greedy(mdp, ellipsoid.theta_hat)
    greedy_value = ellipsoid.theta_hat @ (expected_features(mdp, greedy_policy) - reference)
    assert solution.iterations == 1
    assert solution.value == pytest.approx(greedy_value, abs=1e-12)
    assert solution.gap <= 1e-12
    rectangular = planning.rectangular(mdp, ellipsoid, reference)
    assert np.array_equal(rectangular.policy, greedy_policy)
    assert np.all(rectangular.bonus == 0)


def test_a_set_blind_to_every_policy_difference_plans_greedily():
    # With one-hot (s, a) features every trajectory feature sums to H, so the all-ones
    # direction sees no policy difference: G g = 0 for every g and the objective is linear.
    mdp = lr_mdp_env.random_mdp(4, 3, 5, seed=3)
    d = mdp.n_features
    rng = np.random.default_rng(4)
    blind = Ellipsoid(offset=rng.normal(size=d), basis=np.ones((d, 1)) / np.sqrt(d), center=np.array([0.7]),
                      matrix=np.eye(1), radius=5.0)
    reference = expected_features(mdp, uniform_policy(mdp))
    solution = planning.robust_optimize(mdp, blind, reference)
    greedy_value = blind.theta_hat @ (expected_features(mdp, planning.greedy(mdp, blind.theta_hat)) - reference)
    # The objective is linear, so greedy is optimal; the certified gap bounds the distance.
    assert solution.converged
    assert greedy_value - solution.gap - 1e-12 <= solution.value <= greedy_value + 1e-12


def test_contextual_style_set_with_more_coordinates_than_features():
    # LoCo-RLHF's set for one context has a basis (d, k) with k > d, of rank d.
    mdp = lr_mdp_env.random_mdp(4, 2, 3, features="dense", n_features=3, seed=9)
    rng = np.random.default_rng(10)
    ellipsoid = random_ellipsoid(rng, 3, 8, radius=0.7)
    reference = expected_features(mdp, uniform_policy(mdp))
    solution = planning.robust_optimize(mdp, ellipsoid, reference)
    optimum = conic_optimum(mdp, ellipsoid, reference)
    assert solution.converged
    assert solution.value == pytest.approx(optimum, abs=1e-6 * max(1.0, abs(optimum)))


# -- rectangular bonus and identifiability --------------------------------------------------------


def test_rectangular_bonus_uses_the_identifiable_part_of_one_hot_features():
    # M = n (I - 11^T/d) + lam 11^T/d: well determined along every within-step difference,
    # only the ridge lam along the all-ones direction that comparisons never see.
    mdp = lr_mdp_env.random_mdp(3, 2, 4, seed=11)
    d = mdp.n_features
    n, lam, radius = 400.0, 1e-4, 2.0
    ones = np.full((d, d), 1.0 / d)
    matrix = n * (np.eye(d) - ones) + lam * ones
    ellipsoid = Ellipsoid(offset=np.zeros(d), basis=np.eye(d), center=np.zeros(d), matrix=matrix, radius=radius)
    bonus = planning.rectangular_bonus(mdp, ellipsoid)
    # phi_id = e_j - 1/d lies in the well-determined subspace: ||phi_id||^2_{M^-1} = (1 - 1/d) / n.
    assert bonus.shape == (mdp.horizon, mdp.n_states, mdp.n_actions)
    assert np.allclose(bonus, radius * np.sqrt((1 - 1 / d) / n), rtol=1e-12)
    # Without the projection the all-ones direction would add 1 / (d lam) and swamp it.
    unprojected = radius * ellipsoid.dual_norm(mdp.features)
    # cond(M) = n / lam = 4e6 costs about 4e6 * eps = 1e-9 of relative precision.
    assert np.allclose(unprojected, radius * np.sqrt((1 - 1 / d) / n + 1 / (d * lam)), rtol=1e-8)
    assert np.all(unprojected > 10 * bonus)


def test_rectangular_bonus_of_dense_features_is_the_plain_dual_norm():
    mdp = lr_mdp_env.random_mdp(4, 3, 3, features="dense", n_features=3, seed=12)
    assert lr_mdp_env.identifiability.unidentified_directions(mdp).shape[1] == 0
    rng = np.random.default_rng(13)
    sets = [random_ellipsoid(rng, 3, 2, 1.5), random_ellipsoid(rng, 3, 5, 0.3)]
    bonus = planning.rectangular_bonus(mdp, sets)
    assert bonus.shape == (2, mdp.horizon, mdp.n_states, mdp.n_actions)
    for row, ellipsoid in zip(bonus, sets):
        assert np.allclose(row, ellipsoid.radius * ellipsoid.dual_norm(mdp.features), rtol=1e-12)


def test_rectangular_maximises_the_penalised_reward_for_every_user():
    mdp = lr_mdp_env.random_mdp(5, 3, 4, features="dense", n_features=4, seed=14)
    rng = np.random.default_rng(15)
    sets = [random_ellipsoid(rng, 4, 2, radius) for radius in (0.0, 0.4, 2.0)]
    reference = expected_features(mdp, uniform_policy(mdp))
    solution = planning.rectangular(mdp, sets, reference)
    for user, ellipsoid in enumerate(sets):
        penalised = mdp.reward(ellipsoid.theta_hat) - ellipsoid.radius * ellipsoid.dual_norm(mdp.features)
        _, best = backward_induction(mdp, penalised)
        achieved = evaluate_policy(mdp, solution.policy[user], penalised)
        assert achieved == pytest.approx(best[0] @ mdp.initial_distribution, abs=1e-12)


# -- rectangular pessimism on any set: the bonus against a conic solver ----------------------------


class EllipsoidPlusComplementBall(ConfidenceSet):
    """``{theta_hat + K^T z + (I - U U^T) e : ||z|| <= radius, ||e|| <= epsilon}``: an ellipsoid
    widened by a ball orthogonal to ``U`` (the shape of a reduced set that accounts for the
    error of its subspace), described by its two seminorm terms."""

    def __init__(self, ellipsoid, subspace, epsilon):
        self.ellipsoid, self.subspace, self.epsilon = ellipsoid, subspace, epsilon

    @property
    def n_features(self):
        return self.ellipsoid.n_features

    @property
    def theta_hat(self):
        return self.ellipsoid.theta_hat

    def seminorms(self):
        return (LinearSeminorm(self.ellipsoid.radius, self.ellipsoid.whitening),
                ComplementSeminorm(self.epsilon, self.subspace))

    def lower(self, vectors):
        vectors = np.asarray(vectors, dtype=float)
        projected = vectors - (vectors @ self.subspace) @ self.subspace.T
        value = self.ellipsoid.lower(vectors) - self.epsilon * np.linalg.norm(projected, axis=-1)
        return float(value) if np.ndim(value) == 0 else value

    def minimizer(self, vectors):  # not used by the rectangular planner
        raise NotImplementedError

    def contains(self, theta, *, atol=1e-9):  # not used by the rectangular planner
        raise NotImplementedError


class Box(ConfidenceSet):
    """``{theta : |theta_i - c_i| <= w_i}``: a set without seminorm structure, known to the planner
    only through ``lower(v) = c . v - w . |v|``."""

    def __init__(self, center, half_widths):
        self.center, self.half_widths = np.asarray(center, dtype=float), np.asarray(half_widths, dtype=float)

    @property
    def n_features(self):
        return self.center.size

    @property
    def theta_hat(self):
        return self.center

    def lower(self, vectors):
        vectors = np.asarray(vectors, dtype=float)
        value = vectors @ self.center - np.abs(vectors) @ self.half_widths
        return float(value) if np.ndim(value) == 0 else value

    def minimizer(self, vectors):
        return self.center - self.half_widths * np.sign(np.asarray(vectors, dtype=float))

    def contains(self, theta, *, atol=1e-9):
        return bool(np.all(np.abs(np.asarray(theta) - self.center) <= self.half_widths * (1 + atol) + atol))


def conic_membership(kind, confidence_set, theta):
    """cvxpy constraints saying that the variable ``theta`` lies in ``confidence_set``, written from
    the set's defining data (never from its ``lower``)."""
    cp = pytest.importorskip("cvxpy")
    if kind == "ellipsoid":
        w = cp.Variable(confidence_set.dimension)
        root = np.linalg.cholesky(confidence_set.matrix).T  # ||u||_M = ||L^T u||
        return [theta == confidence_set.offset + confidence_set.basis @ w,
                cp.norm(root @ (w - confidence_set.center)) <= confidence_set.radius]
    if kind == "ellipsoid+ball":
        inner = confidence_set.ellipsoid
        w, e = cp.Variable(inner.dimension), cp.Variable(confidence_set.n_features)
        root = np.linalg.cholesky(inner.matrix).T
        return [theta == inner.offset + inner.basis @ w + e,
                cp.norm(root @ (w - inner.center)) <= inner.radius,
                confidence_set.subspace.T @ e == 0, cp.norm(e) <= confidence_set.epsilon]
    return [cp.abs(theta - confidence_set.center) <= confidence_set.half_widths]


def conic_bonus(mdp, kind, confidence_set):
    """``theta_hat . phi - min_{theta in C} theta . phi`` for every ``(h, s, a)`` by cvxpy, on
    features without unidentified directions (so ``phi_id = phi``)."""
    cp = pytest.importorskip("cvxpy")
    theta = cp.Variable(mdp.n_features)
    constraints = conic_membership(kind, confidence_set, theta)
    bonus = []
    for phi in mdp.flat_features():
        problem = cp.Problem(cp.Minimize(phi @ theta), constraints)
        problem.solve(solver="CLARABEL")
        assert problem.status == "optimal", problem.status
        bonus.append(confidence_set.theta_hat @ phi - problem.value)
    return np.array(bonus)


def drawn_set(kind, rng, d):
    if kind == "ellipsoid":
        return random_ellipsoid(rng, d, int(rng.integers(1, d + 2)), float(rng.uniform(0.1, 2.0)))
    if kind == "ellipsoid+ball":
        subspace, _ = np.linalg.qr(rng.normal(size=(d, 1)))
        return EllipsoidPlusComplementBall(random_ellipsoid(rng, d, 2, float(rng.uniform(0.1, 2.0))), subspace,
                                           float(rng.uniform(0.05, 1.0)))
    return Box(rng.normal(size=d), rng.uniform(0.0, 1.0, size=d))


SET_KINDS = ("ellipsoid", "ellipsoid+ball", "box")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", SET_KINDS)
def test_rectangular_bonus_of_every_set_kind_is_its_support_function(kind, seed):
    mdp = lr_mdp_env.random_mdp(3, 2, 2, features="dense", n_features=4, seed=30 + seed)
    assert lr_mdp_env.identifiability.unidentified_directions(mdp).shape[1] == 0
    confidence_set = drawn_set(kind, np.random.default_rng(seed), mdp.n_features)
    bonus = planning.rectangular_bonus(mdp, confidence_set)
    expected = conic_bonus(mdp, kind, confidence_set).reshape(bonus.shape[1:]) if mdp.stationary_features \
        else conic_bonus(mdp, kind, confidence_set).reshape(bonus.shape)
    # Clarabel's default accuracy (1e-8 relative gap) on O(1) data.
    np.testing.assert_allclose(bonus, np.broadcast_to(expected, bonus.shape), atol=1e-6)


@pytest.mark.parametrize("kind", SET_KINDS)
def test_rectangular_maximises_the_conic_penalised_reward_for_every_set_kind(kind):
    mdp = lr_mdp_env.random_mdp(3, 2, 3, features="dense", n_features=3, seed=40)
    rng = np.random.default_rng(41)
    sets = [drawn_set(kind, rng, mdp.n_features) for _ in range(3)]
    reference = expected_features(mdp, uniform_policy(mdp))
    solution = planning.rectangular(mdp, sets, reference)
    assert not solution.safeguarded.any()  # no reference policy: no safeguard
    for user, confidence_set in enumerate(sets):
        bonus = np.broadcast_to(conic_bonus(mdp, kind, confidence_set).reshape(mdp.n_states, mdp.n_actions),
                                (mdp.horizon, mdp.n_states, mdp.n_actions))
        penalised = mdp.reward(confidence_set.theta_hat) - bonus
        _, best = backward_induction(mdp, penalised)
        achieved = evaluate_policy(mdp, solution.policy[user], penalised)
        assert achieved == pytest.approx(best[0] @ mdp.initial_distribution, abs=1e-6)
        assert solution.value[user] == pytest.approx(
            confidence_set.lower(expected_features(mdp, solution.policy[user]) - reference), abs=1e-12)


# -- the safeguard --------------------------------------------------------------------------------


def test_the_safeguard_returns_the_reference_policy_when_the_rectangular_policy_has_negative_value():
    """Two arms with features ``e_1, e_2``; comparisons see only ``e_1 - e_2`` (``phi_id = +-(1, -1) / 2``).
    The set ``{theta : ||theta - (0.1, 0)|| <= 1}`` slightly prefers arm 1 and rectangular
    pessimism pulls it (both arms get the same bonus ``1 / sqrt(2)``), but against the uniform
    reference ``L(arm 1) = 0.05 - ||(0.5, -0.5)|| = 0.05 - 0.707 < 0``: the safeguard returns the
    reference, with ``L = lower(0) = 0``."""
    mdp = lr_mdp_env.TabularMDP(np.ones((1, 2, 1)), np.ones(1), horizon=1, features=np.eye(2)[None])
    ball = Ellipsoid(offset=np.zeros(2), basis=np.eye(2), center=np.array([0.1, 0.0]), matrix=np.eye(2), radius=1.0)
    uniform = uniform_policy(mdp)
    reference = expected_features(mdp, uniform)
    plain = planning.rectangular(mdp, ball, reference)
    assert np.array_equal(plain.policy[0, 0], [1.0, 0.0])
    assert plain.value == pytest.approx(0.05 - np.sqrt(0.5), abs=1e-12)
    assert plain.safeguarded is False
    guarded = planning.rectangular(mdp, ball, reference, reference_policy=uniform)
    assert guarded.safeguarded is True
    assert np.array_equal(guarded.policy, uniform)
    assert guarded.value == 0.0
    np.testing.assert_array_equal(guarded.bonus, plain.bonus)


@given(planning_problems(), st.integers(0, 2**32 - 1))
def test_the_safeguarded_policy_is_never_worse_than_the_reference_when_the_truth_is_in_the_set(problem, seed):
    """The lower-bound fact: ``J(pi) - J(ref) >= L(pi) >= 0`` for the returned policy, whatever the
    rectangular policy was; users the safeguard left alone keep the rectangular policy."""
    mdp, ellipsoid, reference_policy, reference = problem
    truth = point_in_set(np.random.default_rng(seed), ellipsoid)
    plain = planning.rectangular(mdp, ellipsoid, reference)
    guarded = planning.rectangular(mdp, ellipsoid, reference, reference_policy=reference_policy)
    assert guarded.safeguarded == (plain.value < 0)
    expected_policy = reference_policy if guarded.safeguarded else plain.policy
    np.testing.assert_array_equal(guarded.policy, expected_policy)
    scale = 1.0 + np.abs(truth) @ (np.abs(reference) + np.abs(expected_features(mdp, guarded.policy)))
    assert guarded.value >= -1e-12 * scale
    gain = truth @ (expected_features(mdp, guarded.policy) - reference)
    assert gain >= guarded.value - 1e-9 * scale


# -- the L1-robust Bellman step -----------------------------------------------------------------


def linprog_worst_case(row, values, radius):
    """``min p . v`` s.t. ``p >= 0``, ``sum p = 1``, ``sum |p - p0| <= radius`` as a linear program
    in ``(p, e)`` with ``e >= |p - p0|``."""
    n = row.size
    cost = np.concatenate([values, np.zeros(n)])
    identity = np.eye(n)
    upper = np.block([[identity, -identity], [-identity, -identity], [np.zeros((1, n)), np.ones((1, n))]])
    bound = np.concatenate([row, -row, [min(radius, 4.0)]])  # any radius >= 2 is the whole simplex
    equality = np.concatenate([np.ones(n), np.zeros(n)])[None]
    result = scipy.optimize.linprog(cost, A_ub=upper, b_ub=bound, A_eq=equality, b_eq=[1.0], bounds=(0, None),
                                    method="highs", options={"primal_feasibility_tolerance": 1e-10,
                                                             "dual_feasibility_tolerance": 1e-10})
    assert result.status == 0
    return result.fun


radii = st.one_of(st.sampled_from([0.0, 2.0, 3.0, np.inf]), st.floats(0.0, 2.5))


@given(st.data())
def test_l1_worst_case_expectation_matches_linear_programming(data):
    n_outcomes = data.draw(st.integers(1, 5))
    row = data.draw(probability_arrays((n_outcomes,)))
    # Small integers give ties; floats give generic orders.
    values = data.draw(st.one_of(
        st.lists(st.integers(-2, 2), min_size=n_outcomes, max_size=n_outcomes).map(np.array),
        st.lists(st.floats(-5, 5), min_size=n_outcomes, max_size=n_outcomes).map(np.array),
    )).astype(float)
    radius = data.draw(radii)
    expected = linprog_worst_case(row, values, radius)
    assert l1_robust_expectation(row, values, radius) == pytest.approx(expected, abs=1e-9)


def test_l1_worst_case_expectation_closed_forms_and_broadcasting():
    row = np.array([0.2, 0.3, 0.5])
    values = np.array([3.0, 2.0, 0.0])
    # Radius 0.8 moves 0.4 of mass: 0.2 from the best state (3) and 0.2 from the next (2) to 0.
    assert l1_robust_expectation(row, values, 0.8) == pytest.approx(0.2 * 3 + 0.3 * 2 - 0.2 * 3 - 0.2 * 2)
    assert l1_robust_expectation(row, values, 0.0) == pytest.approx(row @ values)
    assert l1_robust_expectation(row, values, np.inf) == pytest.approx(0.0)
    batch = l1_robust_expectation(np.stack([row, row[::-1]]), values, np.array([[0.0], [2.0]]))
    assert batch.shape == (2, 2)
    assert batch[0, 0] == pytest.approx(row @ values) and batch[1, 1] == pytest.approx(0.0)


@given(st.data())
def test_zero_transition_radius_is_exactly_the_plain_backward_induction(data):
    mdp = data.draw(mdps(max_states=4, max_horizon=4))
    reward = data.draw(reward_tables(mdp, n_users=data.draw(st.sampled_from([None, 3]))))
    policy, values = backward_induction(mdp, reward)
    for radius in (0.0, np.zeros((mdp.horizon, mdp.n_states, mdp.n_actions))):
        robust_policy, robust_values = backward_induction(mdp, reward, transition_radius=radius)
        assert np.array_equal(robust_policy, policy)
        assert np.array_equal(robust_values, values)


@settings(max_examples=15)
@given(st.data())
def test_robust_backward_induction_matches_a_linear_program_per_row(data):
    mdp = data.draw(mdps(max_states=3, max_actions=2, max_horizon=3))
    reward = data.draw(reward_tables(mdp))
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    radius = data.draw(st.one_of(radii, st.lists(radii, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
                                 .map(lambda r: np.reshape(r, shape))))
    _, values = backward_induction(mdp, reward, transition_radius=radius)
    per_row = np.broadcast_to(radius, shape)
    expected = np.zeros(mdp.n_states)
    for step in range(mdp.horizon - 1, -1, -1):
        q = np.array([[reward[step, s, a] + linprog_worst_case(mdp.transitions[step, s, a], expected,
                                                                per_row[step, s, a])
                       for a in range(mdp.n_actions)] for s in range(mdp.n_states)])
        expected = q.max(axis=1)
        assert np.allclose(values[step], expected, atol=1e-9)


@given(st.data())
def test_robust_value_is_a_lower_bound_when_the_true_rows_are_in_the_balls(data):
    mdp = data.draw(mdps(max_states=4, max_horizon=4, stationary=False))
    estimate = data.draw(probability_arrays(mdp.transitions.shape))
    estimated = lr_mdp_env.TabularMDP(estimate, mdp.initial_distribution, features=mdp.features)
    reward = data.draw(reward_tables(mdp, n_users=2))
    # The smallest balls around the estimate that contain the truth.
    radius = np.abs(mdp.transitions - estimate).sum(axis=-1)
    robust_policy, robust_values = backward_induction(estimated, reward, transition_radius=radius)
    robust_start = robust_values[:, 0] @ mdp.initial_distribution
    true_values = evaluate_policy(mdp, robust_policy, reward)
    assert np.all(robust_start <= true_values + 1e-12)
    _, nominal_values = backward_induction(estimated, reward)
    assert np.all(robust_start <= nominal_values[:, 0] @ mdp.initial_distribution + 1e-12)


def test_infinite_radius_leaves_only_the_worst_next_state():
    mdp = lr_mdp_env.random_mdp(4, 2, 3, seed=16)
    reward = np.random.default_rng(17).normal(size=(3, 4, 2))
    _, values = backward_induction(mdp, reward, transition_radius=np.inf)
    expected = np.zeros(4)
    for step in range(2, -1, -1):
        expected = (reward[step] + expected.min()).max(axis=1)
        assert np.allclose(values[step], expected, atol=1e-12)


def test_l1_transition_radius_formula_and_edges():
    counts = np.array([[[[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])  # (H, S, A, S) = (1, 1, 2, 3)
    radius = l1_transition_radius(counts, 0.05)
    assert radius.shape == (1, 1, 2)
    assert radius[0, 0, 0] == pytest.approx(min(2.0, np.sqrt(2 * (3 * np.log(2) + np.log(20)) / 4)))
    assert radius[0, 0, 1] == 2.0  # never observed: any distribution
    big = l1_transition_radius(np.full((2, 5), 1000.0), 0.1)
    assert np.allclose(big, np.sqrt(2 * (5 * np.log(2) + np.log(10)) / 5000))


def test_l1_transition_radius_covers_at_the_nominal_level():
    # Weissman et al.: Pr(||p_hat - p||_1 > radius) <= delta. With 20000 independent rows the
    # empirical frequency has std sqrt(delta (1 - delta) / 20000) = 0.0021 at delta = 0.1, so a
    # correct radius gives a frequency below delta + 5 sigma = 0.111.
    rng = np.random.default_rng(18)
    probabilities = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    n, delta, trials = 40, 0.1, 20_000
    counts = rng.multinomial(n, probabilities, size=trials).astype(float)
    radius = l1_transition_radius(counts, delta)
    deviation = np.abs(counts / n - probabilities).sum(axis=1)
    assert np.mean(deviation > radius) <= delta + 5 * np.sqrt(delta * (1 - delta) / trials)


def test_rectangular_with_estimated_transitions_uses_the_robust_step():
    mdp = lr_mdp_env.random_mdp(4, 2, 4, features="dense", n_features=3, seed=19)
    rng = np.random.default_rng(20)
    counts = rng.integers(0, 5, size=(mdp.horizon, 4, 2, 4)).astype(float)
    estimated = planning.empirical_mdp(mdp, counts)
    visits = counts.sum(axis=-1, keepdims=True)
    assert np.allclose(estimated.transitions, np.where(visits > 0, counts / np.maximum(visits, 1), 0.25))
    radius = l1_transition_radius(counts, 0.1)
    ellipsoid = random_ellipsoid(rng, 3, 2, 0.3)
    reference = expected_features(estimated, uniform_policy(estimated))
    solution = planning.rectangular(estimated, ellipsoid, reference, transition_radius=radius)
    penalised = mdp.reward(ellipsoid.theta_hat) - planning.rectangular_bonus(estimated, ellipsoid)
    expected_policy, _ = backward_induction(estimated, penalised, transition_radius=radius)
    assert np.array_equal(solution.policy, expected_policy)


# -- argument checks ------------------------------------------------------------------------------


@pytest.fixture
def small():
    mdp = lr_mdp_env.random_mdp(3, 2, 2, seed=21)
    ellipsoid = random_ellipsoid(np.random.default_rng(22), mdp.n_features, 2, 1.0)
    return mdp, ellipsoid, expected_features(mdp, uniform_policy(mdp))


def test_planner_arguments_are_checked(small):
    mdp, ellipsoid, reference = small
    with pytest.raises(ValueError, match="reference_features"):
        planning.robust_optimize(mdp, ellipsoid, reference[:-1])
    with pytest.raises(ValueError, match="tol"):
        planning.robust_optimize(mdp, ellipsoid, reference, tol=0.0)
    with pytest.raises(TypeError, match="confidence_set"):
        planning.robust_optimize(mdp, "set", reference)
    other = random_ellipsoid(np.random.default_rng(0), mdp.n_features + 1, 2, 1.0)
    with pytest.raises(ValueError, match="confidence_set.*dimension"):
        planning.robust_optimize(mdp, other, reference)
    with pytest.raises(ValueError, match="reference_policy"):
        planning.robust_optimize(mdp, ellipsoid, reference, reference_policy=np.ones((2, 3)))
    with pytest.raises(TypeError, match="mdp"):
        planning.rectangular(None, ellipsoid, reference)
    with pytest.raises(ValueError, match="sets.*empty"):
        planning.rectangular(mdp, [], reference)
    with pytest.raises(ValueError, match="transition_radius"):
        backward_induction(mdp, np.zeros((2, 3, 2)), transition_radius=-1.0)
    with pytest.raises(ValueError, match="transition_radius"):
        backward_induction(mdp, np.zeros((2, 3, 2)), transition_radius=np.ones((3, 2)))
    with pytest.raises(ValueError, match="delta"):
        l1_transition_radius(np.ones((2, 3)), 1.5)
    with pytest.raises(ValueError, match="counts"):
        planning.empirical_mdp(mdp, np.ones((2, 3, 2)))


def test_pessimistic_agents_safeguard_rectangular_planning_by_default():
    """On data concentrated on each user's optimal policy the rectangular policies of some users
    have ``L < 0``; with the default safeguard every user's ``L(pi) >= 0`` (``evaluate``'s
    ``lower_bound``), and those users get their behaviour policy."""
    import agents

    world = lr_mdp_env.envs.chain.chain_world(n_states=4, horizon=5, n_actions=3, n_users=4, distractor=0.5,
                                              model_seed=1)
    behaviour = lr_mdp_env.collection.epsilon_optimal_policies(world.mdp, world.rewards, epsilon=0.1)
    dataset = lr_mdp_env.collect_preferences(world.mdp, world.rewards, 60, behavior=behaviour, seed=3)
    reports = {}
    for safeguard in (False, True):
        agent = agents.make("independent", ridge=1.0, pessimism="rectangular", safeguard=safeguard)
        reports[safeguard] = agents.evaluate(agent.fit(dataset, world.mdp), world.mdp, world.rewards)
    unsafe = reports[False]["lower_bound"].to_numpy() < 0
    assert unsafe.any()  # the instance exercises the safeguard
    assert (reports[True]["lower_bound"] >= -1e-12).all()
    np.testing.assert_allclose(reports[True]["value"][unsafe], reports[True]["reference_value"][unsafe], rtol=1e-12)
    np.testing.assert_array_equal(reports[True]["value"][~unsafe], reports[False]["value"][~unsafe])
    with pytest.raises(TypeError, match="safeguard"):
        agents.make("independent", safeguard="yes")
