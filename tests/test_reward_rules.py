"""The reward rules every module shares: a structure's Theta, the base reward, the planted spectrum
and the largest tail (lr_mdp_env.rewards)."""

from __future__ import annotations

import numpy as np
import pytest

from lr_mdp_env import contextual_rewards, low_rank_rewards
from lr_mdp_env.rewards import base_matrix, geometric_spectrum, reward_matrix, tail_energy_limit, tail_profile


def test_geometric_spectrum_closed_form():
    np.testing.assert_allclose(geometric_spectrum(3, 4.0), [1.0, 0.5, 0.25], rtol=1e-15)
    np.testing.assert_array_equal(geometric_spectrum(1, 7.0), [1.0])
    spectrum = geometric_spectrum(5, 10.0)
    assert spectrum[0] / spectrum[-1] == pytest.approx(10.0, rel=1e-14)
    np.testing.assert_allclose(spectrum[1:] / spectrum[:-1], 10.0 ** -0.25, rtol=1e-14)  # constant ratio
    np.testing.assert_array_equal(tail_profile(3), [1.0, 1 / 2, 1 / 3])


@pytest.mark.parametrize("rank, condition_number", [(1, 1.0), (2, 3.0), (3, 10.0)])
def test_tail_energy_limit_is_where_the_planted_subspace_stops_being_the_top_one(rank, condition_number):
    d, n = 7, 6
    limit = tail_energy_limit(rank, min(d, n) - rank, condition_number)
    below = low_rank_rewards(d, n, rank, condition_number=condition_number, tail=0.999 * limit, seed=0)
    singular = np.linalg.svd(below.theta - below.base, compute_uv=False)
    # Just below the limit, the largest tail value sits just below sigma_r, by the factor 0.999.
    assert singular[rank] == pytest.approx(0.999 * singular[rank - 1], rel=1e-9)
    with pytest.raises(ValueError, match="is too large"):
        low_rank_rewards(d, n, rank, condition_number=condition_number, tail=1.001 * limit, seed=0)


def test_reward_matrix_of_structures_and_arrays():
    low_rank = low_rank_rewards(5, 4, 2, seed=0)
    np.testing.assert_array_equal(reward_matrix(low_rank, 5), low_rank.theta)
    contextual = contextual_rewards(5, 3, 1, n_users=4, seed=1)
    # Column i is theta(x_i) = Theta_c^T x_i for the users' contexts.
    np.testing.assert_allclose(reward_matrix(contextual, 5), (contextual.contexts @ contextual.theta_c).T, rtol=1e-14)
    raw = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(reward_matrix(raw, 5), raw)
    np.testing.assert_array_equal(reward_matrix(raw[:, 0], 5), raw[:, :1])
    with pytest.raises(ValueError, match=r"rewards have 5 features but the MDP has n_features=6"):
        reward_matrix(raw, 6)
    with pytest.raises(ValueError, match=r"rewards have 5 features but the MDP has n_features=4"):
        reward_matrix(low_rank, 4)
    with pytest.raises(ValueError, match=r"rewards must have 1 or 2 axes"):
        reward_matrix(np.zeros((5, 2, 1)), 5)


def test_base_matrix_broadcasts_copies_and_names_base():
    shared = base_matrix([1.0, 2.0], 2, 3)
    np.testing.assert_array_equal(shared, [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    shared[0, 0] = 5.0  # a writable copy: the next call is unaffected
    assert base_matrix([1.0, 2.0], 2, 3)[0, 0] == 1.0
    np.testing.assert_array_equal(base_matrix(None, 2, 3), np.zeros((2, 3)))
    per_user = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(base_matrix(per_user, 2, 3), per_user)
    with pytest.raises(ValueError, match=r"base must have shape \(2,\) or \(2, 3\), got \(2, 2\)"):
        base_matrix(np.zeros((2, 2)), 2, 3)
