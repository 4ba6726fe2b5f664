"""LoCo-RLHF's subspaces against a convex oracle: the nuclear-norm-penalised logistic MLE (cvxpy).

The factored objective ``sum_j loss_j(x_j^T A B^T z_j) + (lambda / 2)(||A||^2 + ||B||^2)`` (plus a
balancing term that vanishes at its stationary points) is the variational form of
``sum_j loss_j(x_j^T Theta z_j) + lambda ||Theta||_*`` restricted to rank ``r``. When the convex
problem's minimiser has rank at most ``r``, it is therefore the factored problem's minimiser, and
the estimator's subspaces must be its top-``r`` singular subspaces. cvxpy solves the convex
problem with a conic solver, sharing no code with the package's Newton / L-BFGS fit.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents import LoCoPRS, comparison_data
from lr_mdp_env import collect_preferences, contextual_rewards, principal_angle_distance, random_mdp

cp = pytest.importorskip("cvxpy")

RANK = 2
# Large enough that the convex minimiser has rank RANK on this world (checked below, not assumed).
PENALTY = 10.0


def test_loco_subspaces_are_the_top_singular_subspaces_of_the_convex_minimiser():
    mdp = random_mdp(5, 3, 2, features="dense", n_features=6, seed=0)
    rewards = contextual_rewards(6, 4, RANK, n_users=40, mdp=mdp, scale=2.0, seed=1)
    dataset = collect_preferences(mdp, rewards, 25, seed=2)
    data = comparison_data(dataset, mdp)
    contexts, differences, labels = data.contexts, data.dense_differences(), data.labels

    theta = cp.Variable((contexts.shape[1], differences.shape[1]))
    logits = cp.sum(cp.multiply(contexts @ theta, differences), axis=1)
    objective = cp.sum(cp.logistic(logits) - cp.multiply(labels, logits)) + PENALTY * cp.normNuc(theta)
    problem = cp.Problem(cp.Minimize(objective))
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal"
    left, singular, right_t = np.linalg.svd(theta.value)
    # The premise: the convex minimiser has rank RANK (the rest is solver noise).
    assert singular[RANK] <= 1e-6 * singular[0]

    estimator = LoCoPRS(RANK, ridge=PENALTY, balance=0.5).fit(dataset, mdp)
    # Tolerance: Clarabel stops at a relative duality gap of 1e-8; the objective grows at least
    # quadratically away from the minimiser, so Theta is accurate to about sqrt(1e-8) = 1e-4 of
    # its size, and by Wedin's theorem the singular subspaces to that error over the gap
    # sigma_r - sigma_{r+1}. The factored fit's own error (relative gradient 1e-7) is far below.
    tolerance = 1e-4 * singular[0] / (singular[RANK - 1] - singular[RANK])
    assert principal_angle_distance(left[:, :RANK], estimator.context_subspace) <= tolerance
    assert principal_angle_distance(right_t[:RANK].T, estimator.subspace) <= tolerance
