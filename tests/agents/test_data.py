"""comparison_data: the feature differences the estimators see, for every kind of features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from agents import comparison_data
from lr_mdp_env import TabularMDP, collect_preferences, low_rank_rewards, random_mdp


def world(features):
    rng = np.random.default_rng(0)
    spec = {
        "dense": rng.standard_normal((4, 2, 3)),
        # Indicators that merge cells: (s, a) -> s, so the differences are not the counts.
        "aggregated": np.repeat(np.eye(4)[:, None, :], 2, axis=1),
    }.get(features, features)
    mdp = TabularMDP(random_mdp(4, 2, 5, seed=1).transitions[0], np.full(4, 1 / 4), horizon=5, features=spec)
    rewards = low_rank_rewards(mdp.n_features, 3, 1, seed=0)
    return mdp, collect_preferences(mdp, rewards, 40, seed=3)


@pytest.mark.parametrize("features", ["one_hot", "one_hot_time", "aggregated", "dense"])
def test_differences_match_the_datasets_and_are_sparse_for_indicators(features):
    mdp, dataset = world(features)
    data = comparison_data(dataset, mdp)
    expected = dataset.feature_differences(mdp)
    assert scipy.sparse.issparse(data.differences) == (features != "dense")
    differences = data.dense_differences()
    np.testing.assert_allclose(differences, expected, rtol=0, atol=1e-12)
    if features != "dense":
        # Canonical: sorted column indices, no stored zeros (cancelled visits are dropped).
        assert data.differences.has_canonical_format
        assert np.all(data.differences.data != 0)
