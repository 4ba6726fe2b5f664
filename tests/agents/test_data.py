"""comparison_data: the feature differences the estimators see, for every kind of features.

The expected differences are built here by brute force, from each pair's states and actions and a
feature table written in the test, not by the package's own feature code.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from agents import comparison_data
from lr_mdp_env import TabularMDP, collect_preferences, low_rank_rewards, random_mdp

S, A, H = 4, 2, 5


def feature_table(features: str) -> np.ndarray:
    """``phi[h, s, a]`` as an ``(H, S, A, d)`` table, written out independently of the package."""
    if features == "one_hot":
        return np.broadcast_to(np.eye(S * A).reshape(S, A, S * A), (H, S, A, S * A))
    if features == "one_hot_time":
        return np.eye(H * S * A).reshape(H, S, A, H * S * A)
    if features == "aggregated":
        # Indicators that merge cells: (s, a) -> s, so the differences are not the counts.
        return np.broadcast_to(np.repeat(np.eye(S)[:, None, :], A, axis=1), (H, S, A, S))
    return np.random.default_rng(0).standard_normal((S, A, 3))[None].repeat(H, axis=0)


def world(features):
    table = feature_table(features)
    spec = table[0] if features == "dense" else {"aggregated": table[0]}.get(features, features)
    mdp = TabularMDP(random_mdp(S, A, H, seed=1).transitions[0], np.full(S, 1 / S), horizon=H, features=spec)
    rewards = low_rank_rewards(mdp.n_features, 3, 1, seed=0)
    return mdp, table, collect_preferences(mdp, rewards, 40, seed=3)


def brute_force_differences(table, dataset):
    """``z_j = sum_h phi[h, s1_jh, a1_jh] - phi[h, s0_jh, a0_jh]``, one pair and one step at a time."""
    z = np.zeros((dataset.n_pairs, table.shape[-1]))
    for j in range(dataset.n_pairs):
        for h in range(table.shape[0]):
            z[j] += table[h, dataset.states1[j, h], dataset.actions1[j, h]]
            z[j] -= table[h, dataset.states0[j, h], dataset.actions0[j, h]]
    return z


@pytest.mark.parametrize("features", ["one_hot", "one_hot_time", "aggregated", "dense"])
def test_differences_are_the_brute_force_sums_and_sparse_for_indicators(features):
    mdp, table, dataset = world(features)
    assert dataset.n_pairs > 0 and np.array_equal(mdp.features, table)
    data = comparison_data(dataset, mdp)
    assert scipy.sparse.issparse(data.differences) == (features != "dense")
    expected = brute_force_differences(table, dataset)
    np.testing.assert_allclose(data.dense_differences(), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(data.users, dataset.users)
    np.testing.assert_array_equal(data.labels, dataset.labels)
    if features != "dense":
        # Canonical: sorted column indices, no stored zeros (cancelled visits are dropped).
        assert data.differences.has_canonical_format
        assert np.all(data.differences.data != 0)


@pytest.mark.parametrize("shared", [True, False])
def test_base_offsets_are_beta_times_the_base_reward_of_each_pair(shared):
    mdp, table, dataset = world("aggregated")
    rng = np.random.default_rng(5)
    base = rng.standard_normal(S) if shared else rng.standard_normal((S, dataset.n_users))
    data = comparison_data(dataset, mdp, beta=2.5, base=base)
    z = brute_force_differences(table, dataset)
    column = lambda user: base if shared else base[:, user]  # noqa: E731
    expected = [2.5 * z[j] @ column(dataset.users[j]) for j in range(dataset.n_pairs)]
    np.testing.assert_allclose(data.offsets, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"base must have shape \(4,\) or \(4, 3\), got \(4, 2\)"):
        comparison_data(dataset, mdp, base=np.zeros((S, 2)))
