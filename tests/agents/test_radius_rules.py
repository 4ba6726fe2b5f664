"""agents.radius_rules: the radius choice, checked against its definition and the estimators' sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

import agents
from agents import comparison_data
from agents.radius_rules import norm_bound_or_default, set_matrix_and_radius
from lr_mdp_env import collect_preferences, contextual_rewards, low_rank_rewards, random_mdp
from lr_mdp_env.theory import theory_radius

DELTA, RIDGE, BOUND = 0.1, 1.0, 5.0


def _fisher(features, offsets, center, beta=1.0):
    """The ridge Fisher information at ``center``, from its definition."""
    eta = offsets + beta * features @ center
    slope = expit(eta) * expit(-eta)
    return beta**2 * (features.T * slope) @ features + RIDGE * np.eye(features.shape[1])


@pytest.mark.parametrize("rule", ["wald", "theory"])
def test_the_rule_gives_each_users_set_of_the_independent_estimator(rule):
    mdp = random_mdp(4, 2, 3, seed=0)
    rewards = low_rank_rewards(mdp.n_features, 3, 1, mdp=mdp, seed=1)
    dataset = collect_preferences(mdp, rewards, 60, seed=2)
    estimator = agents.IndependentMLE(ridge=RIDGE, radius=rule, delta=DELTA, norm_bound=BOUND).fit(dataset, mdp)
    data = comparison_data(dataset, mdp)
    differences = data.dense_differences()
    for user in range(3):
        ellipsoid = estimator.confidence_set(user)
        features = differences[data.users == user] @ ellipsoid.basis
        fisher = _fisher(features, data.offsets[data.users == user], ellipsoid.center)
        matrix, radius = set_matrix_and_radius(rule, delta=DELTA, fisher=fisher, features=features, beta=1.0,
                                               ridge=RIDGE, norm_bound=BOUND, estimate_norm=np.nan)
        np.testing.assert_allclose(matrix, ellipsoid.matrix, rtol=1e-6, atol=1e-9)
        assert radius == pytest.approx(ellipsoid.radius, rel=1e-12)
        k = features.shape[1]
        if rule == "wald":
            assert radius == pytest.approx(np.sqrt(stats.chi2.ppf(1 - DELTA, k)), rel=1e-12)
        else:
            gram = features.T @ features + RIDGE * np.eye(k)
            bound = float(np.max(np.linalg.norm(features, axis=1)))
            assert radius == pytest.approx(theory_radius(gram, RIDGE, DELTA, bound, BOUND), rel=1e-12)


@pytest.mark.parametrize("rule", ["wald", "theory"])
def test_the_rule_gives_the_loco_set(rule):
    mdp = random_mdp(3, 2, 3, features="dense", n_features=4, seed=0)
    rewards = contextual_rewards(mdp.n_features, 3, 1, n_users=6, mdp=mdp, seed=1)
    dataset = collect_preferences(mdp, rewards, 40, seed=2)
    estimator = agents.LoCoPRS(rank=1, ridge=RIDGE, radius=rule, delta=DELTA, norm_bound=BOUND).fit(dataset, mdp)
    data = comparison_data(dataset, mdp)
    features = estimator.coordinates_.features(data.contexts, data.dense_differences())
    fisher = _fisher(features, data.offsets, estimator.kappa_hat)
    matrix, radius = set_matrix_and_radius(rule, delta=DELTA, fisher=fisher, features=features, beta=1.0,
                                           ridge=RIDGE, norm_bound=BOUND, estimate_norm=np.nan)
    ellipsoid = estimator.confidence_set(0)
    np.testing.assert_allclose(matrix, ellipsoid.matrix, rtol=1e-6, atol=1e-9)
    assert radius == pytest.approx(ellipsoid.radius, rel=1e-12)


def test_only_the_needed_matrix_is_computed_and_empty_sets_are_points():
    def unused():
        raise AssertionError("called although the rule does not need it")

    features = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    matrix, radius = set_matrix_and_radius("theory", delta=0.1, fisher=unused, features=lambda: features, beta=2.0,
                                           ridge=0.5, norm_bound=None, estimate_norm=0.0)
    np.testing.assert_allclose(matrix, 4.0 * features.T @ features + 0.5 * np.eye(2))
    # L = beta max_j ||f_j|| = 2 * 2; without a norm bound and with a zero estimate, B = 1.
    assert radius == pytest.approx(theory_radius(matrix, 0.5, 0.1, 2.0 * 2.0, 1.0), rel=1e-12)
    matrix, radius = set_matrix_and_radius("wald", delta=0.1, fisher=lambda: np.eye(3), features=unused, beta=1.0,
                                           ridge=0.5, norm_bound=None, estimate_norm=0.0)
    assert radius == pytest.approx(np.sqrt(stats.chi2.ppf(0.9, 3)), rel=1e-12)
    for rule in ("wald", "theory"):
        matrix, radius = set_matrix_and_radius(rule, delta=0.1, fisher=np.zeros((0, 0)), features=np.zeros((4, 0)),
                                               beta=1.0, ridge=0.5, norm_bound=None, estimate_norm=0.0)
        assert matrix.shape == (0, 0) and radius == 0.0
    assert norm_bound_or_default(None, 1.5) == 3.0 and norm_bound_or_default(0.25, 1.5) == 0.25


@pytest.mark.parametrize("rule, delta, match", [("exact", 0.1, r"radius must be one of \('wald', 'theory'\)"),
                                                ("wald", 0.0, r"delta must be greater than 0")])
def test_bad_arguments_are_named(rule, delta, match):
    with pytest.raises(ValueError, match=match):
        set_matrix_and_radius(rule, delta=delta, fisher=np.eye(1), features=np.ones((1, 1)), beta=1.0, ridge=1.0,
                              norm_bound=None, estimate_norm=1.0)
