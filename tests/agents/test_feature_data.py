"""Estimators fitted on comparisons given as feature differences, without an MDP.

The oracle is the trajectory path: a dense-feature MDP has no unidentified direction, so fitting
its trajectory pairs with the MDP and fitting their differences ``z`` alone must give the same
estimates. The objective itself is checked against ``z`` rebuilt independently of the library.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from agents import IndependentMLE, LoCoPRS, OracleSubspaceMLE, PooledMLE, PShareLoRA, preference_accuracy
from lr_mdp_env import (
    FeaturePreferenceDataset,
    collect_preferences,
    contextual_rewards,
    low_rank_rewards,
    random_mdp,
)
from lr_mdp_env.identifiability import unidentified_directions

N_USERS, RANK = 8, 2


@pytest.fixture(scope="module")
def world():
    mdp = random_mdp(5, 3, 3, features="dense", n_features=6, seed=0)
    assert unidentified_directions(mdp).shape[1] == 0  # so the two paths fit the same problem
    rewards = low_rank_rewards(mdp.n_features, N_USERS, RANK, mdp=mdp, scale=2.0, seed=1)
    dataset = collect_preferences(mdp, rewards, 40, seed=2)
    z = (mdp.trajectory_features(dataset.states1, dataset.actions1)
         - mdp.trajectory_features(dataset.states0, dataset.actions0))
    features_only = FeaturePreferenceDataset(z, dataset.users, dataset.labels, probabilities=dataset.probabilities)
    return mdp, rewards, dataset, features_only


def _estimators(rewards):
    return {
        "pooled": lambda: PooledMLE(seed=3),
        "independent": lambda: IndependentMLE(seed=3),
        "oracle-subspace": lambda: OracleSubspaceMLE(rewards.subspace, seed=3),
        "p-sharelora": lambda: PShareLoRA(RANK, seed=3),
    }


@pytest.mark.parametrize("name", ["pooled", "independent", "oracle-subspace", "p-sharelora"])
def test_every_user_indexed_estimator_fits_feature_differences_without_an_mdp(world, name):
    mdp, rewards, dataset, features_only = world
    make = _estimators(rewards)[name]
    from_trajectories = make().fit(dataset, mdp)
    from_features = make().fit(features_only)
    # Same ridge chosen by the same held-out rule, same estimates and sets up to solver tolerance.
    assert from_features.ridge_ == from_trajectories.ridge_
    np.testing.assert_allclose(from_features.theta_hat, from_trajectories.theta_hat, rtol=1e-5, atol=1e-6)
    v = np.linspace(-1.0, 1.0, mdp.n_features)
    for user in (0, N_USERS - 1):
        assert from_features.confidence_set(user).lower(v) == pytest.approx(
            from_trajectories.confidence_set(user).lower(v), rel=1e-4, abs=1e-6)
    if name == "p-sharelora":
        assert from_features.subspace.shape == (mdp.n_features, RANK)


def test_the_fit_without_an_mdp_is_the_ridge_mle_of_the_differences(world):
    """``theta_i`` minimises ``sum_j softplus(eta_j) - y_j eta_j + (lambda/2)||theta_i||^2`` with
    ``eta_j = theta_i . z_j`` over all of ``R^d``: its gradient vanishes."""
    _, _, _, features_only = world
    estimator = IndependentMLE(ridge=0.7).fit(features_only)
    z, y, users = features_only.differences, features_only.labels, features_only.users
    for user in range(N_USERS):
        rows = users == user
        theta = estimator.theta_hat[user]
        gradient = z[rows].T @ (scipy.special.expit(z[rows] @ theta) - y[rows]) + 0.7 * theta
        assert np.linalg.norm(gradient) <= 1e-6 * max(1.0, np.linalg.norm(z[rows].T @ y[rows]))


def test_contextual_estimators_fit_feature_differences_with_contexts():
    mdp = random_mdp(4, 3, 2, features="dense", n_features=5, seed=4)
    rewards = contextual_rewards(mdp.n_features, 3, 1, n_users=30, mdp=mdp, seed=5)
    dataset = collect_preferences(mdp, rewards, 20, seed=6)
    z = dataset.feature_differences(mdp)
    features_only = FeaturePreferenceDataset(z, dataset.users, dataset.labels, contexts=dataset.contexts)
    with_mdp = LoCoPRS(1, ridge=1.0).fit(dataset, mdp)
    without = LoCoPRS(1, ridge=1.0).fit(features_only)
    np.testing.assert_allclose(without.theta_c_hat, with_mdp.theta_c_hat, rtol=1e-5, atol=1e-6)


def test_preference_accuracy_of_feature_data_and_without_probabilities(world):
    _, _, _, features_only = world
    estimator = IndependentMLE(ridge=1.0).fit(features_only)
    z, y = features_only.differences, features_only.labels
    predicted = np.sum(estimator.theta_hat[features_only.users] * z, axis=1) > 0
    decided = y != 0.5
    accuracy = preference_accuracy(estimator, features_only)
    assert accuracy["accuracy"] == pytest.approx(np.mean(predicted[decided] == (y[decided] == 1)), abs=1e-12)
    assert set(accuracy) == {"accuracy", "truth_accuracy", "bayes_accuracy"}
    human = FeaturePreferenceDataset(z, features_only.users, y)  # real data: no probabilities
    assert preference_accuracy(estimator, human) == {"accuracy": accuracy["accuracy"]}


def test_trajectory_data_without_an_mdp_and_mismatched_sizes_are_named(world):
    mdp, _, dataset, features_only = world
    with pytest.raises(TypeError, match=r"mdp is required for a PreferenceDataset: .* FeaturePreferenceDataset"):
        IndependentMLE().fit(dataset)
    with pytest.raises(ValueError, match=r"differences have d = 6 features but the MDP has 12"):
        IndependentMLE().fit(features_only, random_mdp(4, 3, 3, seed=0))
    with pytest.raises(TypeError, match=r"dataset must be a PreferenceDataset or a FeaturePreferenceDataset, got ndarray"):
        IndependentMLE().fit(features_only.differences)
