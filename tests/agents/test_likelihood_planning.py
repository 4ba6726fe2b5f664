"""Exact pessimism on likelihood-ratio sets against a conic solver.

Oracle: cvxpy (Clarabel) on the convex program ``min_{theta in C} max_pi theta . (d_pi - d_ref)``,
the inner maximum written as the linear program of the MDP in its values ``V`` and the set's
logistic constraint through exponential cones (``cp.logistic``): a generic solver sharing no code
with the planner. The planner's answer must be certified (``value`` is the set's own ``lower`` of
the returned policy, ``upper_bound`` one backward induction at the member ``certificate``) and the
conic optimum must lie between the two.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from scipy.special import expit

import lr_mdp_env
from agents import ConvergenceWarning, IndependentMLE, LikelihoodRatioSet, fit_logistic, planning
from lr_mdp_env import backward_induction, expected_features, uniform_policy
from lr_mdp_env.dynamic_programming import check_policy

cp = pytest.importorskip("cvxpy")


def conic_optimum(mdp, region, reference):
    """``min_{w, V} rho . V_0 - theta(w) . d_ref`` s.t. the Bellman inequalities of ``theta(w)``
    and ``f(w) <= threshold``, by cvxpy."""
    H, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    w = cp.Variable(region.dimension)
    V = cp.Variable((H + 1, S))
    theta = region.offset + region.basis @ w
    features = np.asarray(mdp.features).reshape(H, S * A, -1)
    constraints = [V[H] == 0]
    repeat = np.kron(np.eye(S), np.ones((A, 1)))  # (S A, S): V_h(s) on every row (s, a)
    for h in range(H):
        rewards = features[h] @ theta  # (S A,)
        continuation = mdp.transitions[h].reshape(S * A, S) @ V[h + 1]
        constraints.append(repeat @ V[h] >= rewards + continuation)
    signs = 2 * region.labels - 1
    logits = region.offsets + region.beta * region.features @ w
    loss = cp.sum(cp.logistic(-cp.multiply(signs, logits))) + 0.5 * region.ridge * cp.sum_squares(w)
    constraints.append(loss <= region.threshold)
    problem = cp.Problem(cp.Minimize(mdp.initial_distribution @ V[0] - theta @ reference), constraints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem.solve(solver="CLARABEL")
    assert problem.status == "optimal", problem.status
    return problem.value


def best_response_value(mdp, theta, reference):
    _, values = backward_induction(mdp, mdp.reward(theta[None]))
    return float(values[0, 0] @ mdp.initial_distribution - theta @ reference)


def random_region(seed, mdp, k, m, ridge):
    """A likelihood-ratio set in a random ``k``-dimensional affine subspace of the MDP's features."""
    rng = np.random.default_rng(seed)
    d = mdp.n_features
    features = rng.normal(size=(m, k))
    offsets = 0.3 * rng.normal(size=m)
    labels = (rng.random(m) < expit(offsets + features @ rng.normal(size=k))).astype(float)
    center = fit_logistic(features, labels, offsets=offsets, ridge=max(ridge, 1e-6)).theta[0]
    return LikelihoodRatioSet(offset=0.5 * rng.normal(size=d), basis=rng.normal(size=(d, k)) / np.sqrt(d),
                              features=features, labels=labels, offsets=offsets, beta=1.0, ridge=ridge,
                              center=center, level=float(rng.choice([0.5, 3.0])))


CASES = [  # seed, (S, A, H), features, k, pairs, ridge
    (0, (3, 2, 3), "one_hot", 2, 30, 0.4),
    (1, (3, 3, 2), "one_hot", 5, 40, 0.0),
    (2, (4, 2, 3), "dense", 6, 60, 0.0),
    (3, (2, 3, 4), "one_hot", 1, 10, 0.4),
    (4, (4, 3, 3), "one_hot", 11, 80, 0.1),
    (5, (3, 2, 2), "dense", 6, 25, 0.4),
]


@pytest.mark.parametrize("seed, shape, features, k, m, ridge", CASES)
@pytest.mark.parametrize("with_reference", [False, True])
def test_likelihood_sets_are_planned_to_the_conic_optimum(seed, shape, features, k, m, ridge, with_reference):
    extra = {"n_features": 6} if features == "dense" else {}
    mdp = lr_mdp_env.random_mdp(*shape, features=features, seed=seed, **extra)
    k = min(k, mdp.n_features)
    region = random_region(seed, mdp, k, m, ridge)
    assert region.bounded
    rng = np.random.default_rng(seed + 100)
    reference_policy = planning.greedy(mdp, rng.normal(size=mdp.n_features)) if with_reference else None
    reference = expected_features(mdp, reference_policy if with_reference else uniform_policy(mdp))
    solution = planning.robust_optimize(mdp, region, reference, tol=1e-7, reference_policy=reference_policy)
    assert solution.method == "barrier"
    assert solution.converged and solution.gap <= 1e-7 * max(1.0, abs(solution.value))
    # The certificate: value is lower() of the policy's exact features, upper_bound one backward
    # induction at a member of the set.
    check_policy(mdp, solution.policy)
    g = expected_features(mdp, solution.policy) - reference
    assert solution.value == pytest.approx(region.lower(g), abs=1e-12)
    assert region.contains(solution.certificate)
    assert best_response_value(mdp, solution.certificate, reference) == pytest.approx(solution.upper_bound, abs=1e-10)
    # Clarabel reaches about 1e-8 of the objective's scale; 1e-6 is its margin.
    optimum = conic_optimum(mdp, region, reference)
    scale = max(1.0, abs(optimum))
    assert solution.value <= optimum + 1e-6 * scale
    assert solution.upper_bound >= optimum - 1e-6 * scale
    assert solution.value == pytest.approx(optimum, abs=1e-6 * scale)


def test_seventeen_dimensional_sets_of_the_independent_mle_converge_in_few_stages():
    """The size where Kelley's cutting planes stalled (random_mdp(6, 3, 4), independent MLE,
    ``k = 17``, 40 pairs per user: 1e-3 after 200 cuts, two of four users open after 40-120 s):
    every user to ``tol = 1e-6`` in at most 15 barrier stages (the gap of a centred point is
    ``(H S A + 1) mu``, so about ``log10(scale (H S A + 1) / tol)`` stages), and for the first user
    the conic optimum."""
    mdp = lr_mdp_env.random_mdp(6, 3, 4, seed=1)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, 4, 2, mdp=mdp, seed=2)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 40, behavior="uniform", seed=3)
    estimator = IndependentMLE(confidence="likelihood").fit(dataset, mdp)
    sets = [estimator.confidence_set(user) for user in range(4)]
    assert all(region.dimension == 17 for region in sets)
    behaviour = uniform_policy(mdp)
    reference = expected_features(mdp, behaviour)
    start = time.perf_counter()
    solutions = planning.robust_optimize(mdp, sets, np.tile(reference, (4, 1)), tol=1e-6)
    elapsed = time.perf_counter() - start
    print(f"MEASURED likelihood-set pessimism, random_mdp(6, 3, 4), k=17, 4 users: {elapsed:.2f} s, "
          f"stages {[s.iterations for s in solutions]}, gaps {[f'{s.gap:.1e}' for s in solutions]}")
    for solution in solutions:
        assert solution.converged and solution.iterations <= 15
    optimum = conic_optimum(mdp, sets[0], reference)
    scale = max(1.0, abs(optimum))
    assert solutions[0].value <= optimum + 1e-6 * scale
    assert optimum <= solutions[0].upper_bound + 1e-6 * scale


def test_unbounded_likelihood_sets_keep_the_primal_cutting_planes():
    """A set without an interior (``level = 0``) is not for the barrier: Kelley's method plans it,
    certified."""
    mdp = lr_mdp_env.random_mdp(3, 2, 2, seed=4)
    region = random_region(4, mdp, 2, 20, 0.4)
    point = LikelihoodRatioSet(offset=region.offset, basis=region.basis, features=region.features,
                               labels=region.labels, offsets=region.offsets, beta=1.0, ridge=0.4,
                               center=region.center, level=0.0)
    reference = expected_features(mdp, uniform_policy(mdp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        solution = planning.robust_optimize(mdp, point, reference, tol=1e-6, max_iterations=50)
    assert solution.method == "cutting-plane"
    assert solution.value <= solution.upper_bound + 1e-12


def test_a_budget_returns_a_certified_answer_with_a_warning():
    mdp = lr_mdp_env.random_mdp(4, 3, 3, seed=6)
    region = random_region(6, mdp, 8, 60, 0.1)
    reference = expected_features(mdp, uniform_policy(mdp))
    with pytest.warns(ConvergenceWarning, match="gap"):
        solution = planning.robust_optimize(mdp, region, reference, tol=1e-12, max_iterations=2)
    assert not solution.converged and solution.iterations == 2
    assert solution.gap == pytest.approx(solution.upper_bound - solution.value, abs=1e-15) and solution.gap >= 0
    assert best_response_value(mdp, solution.certificate, reference) == pytest.approx(solution.upper_bound, abs=1e-10)


def test_loss_derivatives_are_those_of_the_loss():
    """``loss_derivatives`` against ``loss`` and central differences (step 1e-5: errors of order
    1e-10 in the gradient, 1e-9 in the Hessian for a loss with bounded third derivatives)."""
    mdp = lr_mdp_env.random_mdp(3, 2, 2, seed=9)
    region = random_region(9, mdp, 4, 30, 0.3)
    points = np.random.default_rng(10).normal(size=(3, 4))
    values, gradients, hessians = region.loss_derivatives(points)
    np.testing.assert_allclose(values, region.loss(points), rtol=1e-12)
    step = 1e-5
    for point, gradient, hessian in zip(points, gradients, hessians):
        for i, unit in enumerate(np.eye(4)):
            numeric = (region.loss(point + step * unit) - region.loss(point - step * unit)) / (2 * step)
            assert gradient[i] == pytest.approx(numeric, abs=1e-6)
            _, plus, _ = region.loss_derivatives((point + step * unit)[None])
            _, minus, _ = region.loss_derivatives((point - step * unit)[None])
            np.testing.assert_allclose(hessian[i], (plus[0] - minus[0]) / (2 * step), atol=1e-6)
    with pytest.raises(ValueError, match="coordinates"):
        region.loss_derivatives(np.zeros((2, 3)))


def test_the_batched_call_equals_the_single_calls():
    """Sets of two dimensions (blocks by dimension) and references per user: one call equals the
    calls one set at a time, to rounding (the stacked products may sum in another order)."""
    mdp = lr_mdp_env.random_mdp(3, 3, 3, seed=12)
    sets = [random_region(20 + i, mdp, k, m, ridge)
            for i, (k, m, ridge) in enumerate([(3, 20, 0.4), (5, 35, 0.0), (3, 12, 0.1), (5, 50, 0.4), (3, 40, 0.0)])]
    rng = np.random.default_rng(13)
    references = np.stack([expected_features(mdp, planning.greedy(mdp, rng.normal(size=mdp.n_features)))
                           for _ in sets])
    batch = planning.robust_optimize(mdp, sets, references, tol=1e-8)
    for solution, region, reference in zip(batch, sets, references):
        single = planning.robust_optimize(mdp, region, reference, tol=1e-8)
        assert solution.method == single.method == "barrier"
        assert solution.converged and single.converged
        # Each value is within tol of the optimum (from below), so they differ by at most tol (x2 margin).
        assert solution.value == pytest.approx(single.value, abs=2e-8 * max(1.0, abs(single.value)))
        assert solution.upper_bound == pytest.approx(single.upper_bound, abs=2e-8 * max(1.0, abs(single.value)))


def test_separable_data_give_unbounded_sets_that_exact_pessimism_plans_without_failing():
    """With ``confidence="finite"`` (no ridge) and 40 pairs per user on 17 coordinates some users'
    data are separable, so their sets are unbounded. The reference policy's own ``d_pi - d_ref`` is
    rounding (1e-16), which must not read as ``L = -inf``; Kelley's master takes recession
    directions as cuts ``u . (d_pi - d_ref) >= 0`` where ``minimizer`` has no answer. Each answer is
    certified, and no worse than the reference policy (``L = 0``), which is a candidate."""
    mdp = lr_mdp_env.random_mdp(6, 3, 4, seed=1)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, n_users=20, rank=2, mdp=mdp, seed=2)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, n_pairs_per_user=40, seed=3)
    estimator = IndependentMLE(confidence="finite", progress=False).fit(dataset, mdp)
    reference_policy = uniform_policy(mdp)
    reference = expected_features(mdp, reference_policy)
    unbounded = [user for user in range(20) if not estimator.confidence_set(user).bounded]
    assert len(unbounded) >= 2  # the instance must exercise the unbounded case
    for user in unbounded[:3]:
        region = estimator.confidence_set(user)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            solution = planning.robust_optimize(mdp, region, reference, tol=1e-6, max_iterations=40,
                                                reference_policy=reference_policy)
        assert solution.value >= -1e-9
        assert solution.value <= solution.upper_bound + 1e-9
        assert best_response_value(mdp, solution.certificate, reference) == pytest.approx(solution.upper_bound, abs=1e-8)
        # A recession direction of an unbounded direction v: v . u < 0 and theta_hat + t u stays in the set.
        for vector in np.eye(mdp.n_features)[:6]:
            if np.isneginf(region.lower(vector)):
                u = region.recession_direction(vector)
                assert vector @ u < 0
                assert region.contains(region.theta_hat + 10.0 * u / np.linalg.norm(u))
            else:
                assert not np.any(region.recession_direction(vector))
