"""The bootstrap level of the ``"likelihood"`` sets: worlds along a regularisation path, the largest
quantile over them.

Oracles: scipy's trust-region Newton for each world's ridge fit (no code shared with
``fit_logistic``), and one-world calls of :func:`bootstrap_likelihood_levels` (whose own
per-replicate correctness ``tests/agents/test_estimators.py`` checks against scipy) for the
maximum over worlds.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from scipy.special import expit
from scipy.stats import chi2

from agents import IndependentMLE, PooledMLE
from agents.estimators import (_BOOTSTRAP_TOL, LIKELIHOOD_BOOTSTRAP_REPLICATES, LIKELIHOOD_WORLD_RIDGES,
                               bootstrap_likelihood_levels)
from lr_mdp_env import collect_preferences, low_rank_rewards, random_mdp


def objective(w, features, labels, ridge):
    logits = features @ w
    return float(np.sum(np.logaddexp(0.0, logits) - labels * logits) + 0.5 * ridge * w @ w)


def gradient(w, features, labels, ridge):
    return features.T @ (expit(features @ w) - labels) + ridge * w


def hessian(w, features, labels, ridge):
    p = expit(features @ w)
    return (features.T * (p * (1 - p))) @ features + ridge * np.eye(w.size)


def scipy_fit(features, labels, ridge):
    args = (features, labels, ridge)
    return scipy.optimize.minimize(objective, np.zeros(features.shape[1]), args=args, jac=gradient, hess=hessian,
                                   method="trust-exact", options={"gtol": 1e-11}).x


def test_levels_over_worlds_are_the_largest_one_world_level():
    """Worlds stacked ``(n_worlds, n_problems, k)``: the level of each problem is the maximum of the
    one-world levels, each world drawing its labels from the generator in turn."""
    rng = np.random.default_rng(3)
    n_problems, per_problem, k, replicates, ridge, delta = 3, 10, 2, 9, 0.05, 0.2
    features = rng.normal(size=(n_problems * per_problem, k))
    offsets = 0.3 * rng.normal(size=n_problems * per_problem)
    groups = np.repeat(np.arange(n_problems), per_problem)
    worlds = rng.normal(size=(4, n_problems, k)) * np.array([0.0, 0.5, 1.5, 4.0])[:, None, None]
    start = None  # each world warm-starts its own refits
    levels = bootstrap_likelihood_levels(features, offsets, groups, n_problems, worlds, start, 1.2, ridge, delta,
                                         replicates, np.random.default_rng(8))
    stream = np.random.default_rng(8)
    single = [bootstrap_likelihood_levels(features, offsets, groups, n_problems, world, start, 1.2, ridge, delta,
                                          replicates, stream) for world in worlds]
    np.testing.assert_array_equal(levels, np.max(single, axis=0))
    assert np.all(levels >= chi2.ppf(1 - delta, k) / 2)
    # The worlds differ: their levels are not all equal (the maximum picks among them).
    assert np.ptp(np.array(single), axis=0).max() > 0


@pytest.mark.parametrize("ridge", [None, 0.01, 30.0])
def test_worlds_are_the_ridge_path_whatever_the_tuned_ridge(ridge):
    """The bootstrap worlds are the ridge MLEs at every ridge of the fixed path and at the tuned
    ridge, largest first, checked against scipy: the path does not start at the tuned ridge (a
    small tuned ridge on nearly separable data would leave only over-fitted worlds)."""
    mdp = random_mdp(4, 2, 3, seed=2)
    rewards = low_rank_rewards(mdp.n_features, 3, 1, mdp=mdp, seed=3)
    dataset = collect_preferences(mdp, rewards, 12, behavior="uniform", seed=4)
    estimator = IndependentMLE(confidence="likelihood", ridge=ridge).fit(dataset, mdp)
    worlds = estimator._bootstrap_worlds()
    ridges = sorted({*LIKELIHOOD_WORLD_RIDGES, estimator.ridge_}, reverse=True)
    assert worlds.shape == (len(ridges), 3, estimator._basis.shape[1])
    features = np.asarray(estimator._coordinate_features)
    for user in range(3):
        rows = estimator._groups == user
        for world, value in zip(worlds, ridges):
            expected = scipy_fit(features[rows], estimator._data.labels[rows], value)
            np.testing.assert_allclose(world[user], expected, atol=1e-6)
    # The largest ridge's world is the most shrunk.
    norms = np.linalg.norm(worlds, axis=2)
    assert np.all(np.diff(norms, axis=0) >= -1e-9)


def test_set_level_is_the_bootstrap_over_the_worlds():
    """The level of each user's set is :func:`bootstrap_likelihood_levels` over the worlds with the
    estimator's seeded stream (reproducible), at least Wilks' level."""
    mdp = random_mdp(4, 2, 3, seed=5)
    rewards = low_rank_rewards(mdp.n_features, 4, 1, mdp=mdp, seed=6)
    dataset = collect_preferences(mdp, rewards, 15, behavior="uniform", seed=7)
    estimator = IndependentMLE(confidence="likelihood", seed=11).fit(dataset, mdp)
    levels = [estimator.confidence_set(user).level for user in range(4)]
    expected = bootstrap_likelihood_levels(
        np.asarray(estimator._coordinate_features), estimator._data.offsets, estimator._groups, 4,
        estimator._bootstrap_worlds(), None, estimator.beta, estimator.inference_ridge_, estimator.delta,
        LIKELIHOOD_BOOTSTRAP_REPLICATES, estimator._bootstrap_generator(), max(estimator.tol, _BOOTSTRAP_TOL))
    np.testing.assert_allclose(levels, expected, rtol=1e-9)
    k = estimator._basis.shape[1]
    assert min(levels) >= chi2.ppf(0.9, k) / 2 - 1e-12


def test_pooled_worlds_include_a_shrunk_world_when_a_small_ridge_is_tuned():
    """Pooled, few pairs, a small fixed ridge: the first world is the ridge-100 fit, much closer
    to zero than the tuned estimate."""
    mdp = random_mdp(4, 2, 3, seed=8)
    rewards = low_rank_rewards(mdp.n_features, 1, 1, mdp=mdp, seed=9)
    dataset = collect_preferences(mdp, np.repeat(rewards.theta, 2, axis=1), 4, behavior="uniform", seed=10)
    estimator = PooledMLE(confidence="likelihood", ridge=0.01).fit(dataset, mdp)
    worlds = estimator._bootstrap_worlds()
    assert worlds.shape[1] == 1
    assert np.linalg.norm(worlds[0]) < 0.2 * np.linalg.norm(estimator._solution)
