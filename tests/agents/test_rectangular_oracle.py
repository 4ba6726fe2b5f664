"""Rectangular pessimism with estimated transitions against a brute-force robust value iteration.

Every piece is rebuilt here from its definition, one ``(h, s, a)`` at a time: the bonus is the
width of the reward set along ``phi[h, s, a]`` (closed form of a linear function's minimum over an
ellipsoid), and the robust Bellman step's inner minimisation over the L1 ball around each
estimated row is a linear program solved by scipy's HiGHS, sharing no code with the package's
sorting-based step.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

import lr_mdp_env
from agents import Ellipsoid, planning
from lr_mdp_env.dynamic_programming import backward_induction, l1_transition_radius
from lr_mdp_env.identifiability import unidentified_directions


def worst_expectation(row: np.ndarray, values: np.ndarray, radius: float) -> float:
    """``min p . v`` over distributions ``p`` with ``||p - row||_1 <= radius``: a linear program in
    ``(p, e)`` with ``-e <= p - row <= e`` and ``sum e <= radius``."""
    n = row.size
    cost = np.concatenate([values, np.zeros(n)])
    identity = np.eye(n)
    inequalities = np.block([[identity, -identity], [-identity, -identity], [np.zeros((1, n)), np.ones((1, n))]])
    bounds = np.concatenate([row, -row, [min(radius, 2.0)]])  # a ball of radius 2 is the whole simplex
    total = np.concatenate([np.ones(n), np.zeros(n)])[None]
    result = scipy.optimize.linprog(cost, A_ub=inequalities, b_ub=bounds, A_eq=total, b_eq=[1.0], bounds=(0, None),
                                    method="highs", options={"primal_feasibility_tolerance": 1e-10,
                                                             "dual_feasibility_tolerance": 1e-10})
    assert result.status == 0
    return float(result.fun)


def lowest(ellipsoid: Ellipsoid, direction: np.ndarray) -> float:
    """``min theta . v`` over ``{offset + B w : ||w - c||_M <= radius}``:
    ``offset . v + c . B^T v - radius sqrt(v^T B M^{-1} B^T v)``."""
    projected = ellipsoid.basis.T @ direction
    width = np.sqrt(projected @ np.linalg.inv(ellipsoid.matrix) @ projected)
    return float(ellipsoid.offset @ direction + ellipsoid.center @ projected - ellipsoid.radius * width)


@pytest.fixture(scope="module")
def problem():
    mdp = lr_mdp_env.random_mdp(4, 2, 4, features="dense", n_features=3, seed=19)
    rng = np.random.default_rng(20)
    counts = rng.integers(0, 5, size=(mdp.horizon, 4, 2, 4)).astype(float)
    estimated = planning.empirical_mdp(mdp, counts)
    radius = l1_transition_radius(counts, 0.1)
    q, _ = np.linalg.qr(rng.normal(size=(2, 2)))
    ellipsoid = Ellipsoid(offset=0.3 * rng.normal(size=3), basis=rng.normal(size=(3, 2)), center=rng.normal(size=2),
                          matrix=(q * np.exp(rng.uniform(-1, 1, size=2))) @ q.T, radius=0.3)
    reference = rng.dirichlet(np.ones(3)) * mdp.horizon  # any d_ref: it only shifts the reported value
    return estimated, counts, radius, ellipsoid, reference


def test_rectangular_policy_is_greedy_for_the_brute_force_robust_values(problem):
    estimated, counts, radius, ellipsoid, reference = problem
    H, S, A = estimated.horizon, estimated.n_states, estimated.n_actions
    phi = estimated.features
    # Premise: every direction is identifiable here, so the bonus uses phi itself.
    assert unidentified_directions(estimated).shape[1] == 0
    # Premise: estimated rows are the empirical frequencies (uniform where unvisited).
    visits = counts.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(estimated.transitions, np.where(visits > 0, counts / np.maximum(visits, 1), 1 / S))

    solution = planning.rectangular(estimated, ellipsoid, reference, transition_radius=radius)
    theta_hat = ellipsoid.offset + ellipsoid.basis @ ellipsoid.center
    values = np.zeros(S)
    q_robust = np.zeros((H, S, A))
    for h in range(H - 1, -1, -1):
        for s in range(S):
            for a in range(A):
                penalised = lowest(ellipsoid, phi[h, s, a])  # theta_hat . phi - bonus
                assert solution.bonus[h, s, a] == pytest.approx(theta_hat @ phi[h, s, a] - penalised, abs=1e-10)
                q_robust[h, s, a] = penalised + worst_expectation(estimated.transitions[h, s, a], values,
                                                                  radius[h, s, a])
        values = q_robust[h].max(axis=1)

    chosen = np.argmax(solution.policy, axis=-1)
    assert np.all(solution.policy.max(axis=-1) == 1.0)  # deterministic
    np.testing.assert_allclose(np.take_along_axis(q_robust, chosen[..., None], axis=-1)[..., 0],
                               q_robust.max(axis=-1), atol=1e-9)
    # The robust step matters here: the nominal step's greedy policy takes, somewhere, an action
    # that is not robustly greedy, so a planner that ignored transition_radius would fail above.
    nominal_policy, _ = backward_induction(estimated, np.einsum("hsad,d->hsa", phi, theta_hat) - solution.bonus)
    nominal_chosen = np.argmax(nominal_policy, axis=-1)
    nominal_q = np.take_along_axis(q_robust, nominal_chosen[..., None], axis=-1)[..., 0]
    assert np.max(q_robust.max(axis=-1) - nominal_q) > 1e-6


def test_reported_value_is_the_set_minimum_at_the_policys_feature_expectations(problem):
    estimated, _, radius, ellipsoid, reference = problem
    solution = planning.rectangular(estimated, ellipsoid, reference, transition_radius=radius)
    # Feature expectations of the policy in the estimated MDP by a forward pass over the states.
    distribution = estimated.initial_distribution.copy()
    features = np.zeros(estimated.n_features)
    for h in range(estimated.horizon):
        occupancy = distribution[:, None] * solution.policy[h]
        features += np.einsum("sa,sad->d", occupancy, estimated.features[h])
        distribution = np.einsum("sa,sat->t", occupancy, estimated.transitions[h])
    assert solution.value == pytest.approx(lowest(ellipsoid, features - reference), abs=1e-10)
