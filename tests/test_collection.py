"""collect_preferences: trajectories, labels, behaviour policies, determinism and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lr_mdp_env import (
    Teacher,
    backward_induction,
    collect_preferences,
    contextual_rewards,
    epsilon_optimal_policies,
    low_rank_rewards,
    occupancy,
    random_mdp,
    uniform_policy,
    user_parameters,
)


@pytest.fixture(scope="module")
def world():
    mdp = random_mdp(4, 3, 3, stationary=False, concentration=0.5, seed=10)
    rewards = low_rank_rewards(mdp.n_features, 3, 2, condition_number=2.0, mdp=mdp, scale=2.0, seed=11)
    return mdp, rewards


def _returns(mdp, theta, users, states, actions):
    """``R_i(tau) = theta_i . psi(tau)`` with psi summed step by step."""
    psi = np.zeros((len(users), mdp.n_features))
    for h in range(mdp.horizon):
        psi += mdp.features[h, states[:, h], actions[:, h]]
    return np.einsum("nd,nd->n", psi, theta[:, users].T)


def test_pairs_probabilities_and_labels_follow_the_teacher(world):
    mdp, rewards = world
    teacher = Teacher(beta=1.5, mistake=0.1, myopia=1.0)
    data = collect_preferences(mdp, rewards, 4000, teacher=teacher, seed=0)
    np.testing.assert_array_equal(data.pairs_per_user(), [4000] * 3)
    np.testing.assert_array_equal(data.users, np.repeat(np.arange(3), 4000))
    return0 = _returns(mdp, rewards.theta, data.users, data.states0, data.actions0)
    return1 = _returns(mdp, rewards.theta, data.users, data.states1, data.actions1)
    sigmoid = 1 / (1 + np.exp(-1.5 * (return1 - return0)))
    expected = 0.9 * sigmoid + 0.1 * (1 - sigmoid)
    np.testing.assert_allclose(data.probabilities, expected, rtol=0, atol=1e-12)
    # Given the trajectories, labels are independent Bernoulli(p_j): the sum of (y_j - p_j) has
    # standard deviation sqrt(sum p_j (1 - p_j)); 5 of them bound it with probability ~1 - 6e-7.
    residual = np.sum(data.labels - data.probabilities)
    assert abs(residual) <= 5 * np.sqrt(np.sum(data.probabilities * (1 - data.probabilities)))
    # Calibration within halves of the probability range as well (two more tests, same bound).
    for half in (data.probabilities < 0.5, data.probabilities >= 0.5):
        p = data.probabilities[half]
        assert abs(np.sum(data.labels[half] - p)) <= 5 * np.sqrt(np.sum(p * (1 - p)))


def test_myopic_teacher_discounts_the_returns_it_compares(world):
    mdp, rewards = world
    teacher = Teacher(beta=1.0, myopia=0.6)
    data = collect_preferences(mdp, rewards, 300, teacher=teacher, seed=5)
    reward = rewards.reward_table(mdp)  # (N, H, S, A)
    steps = np.arange(mdp.horizon)

    def myopic_returns(states, actions):
        return teacher.returns(reward[data.users[:, None], steps, states, actions])

    expected = teacher.preference_probability(myopic_returns(data.states0, data.actions0),
                                              myopic_returns(data.states1, data.actions1))
    # The returns are accumulated step by step (Horner's rule) instead of by a dot product with
    # the discount weights: the two agree to a few ulps of returns of size O(1).
    np.testing.assert_allclose(data.probabilities, expected, rtol=0, atol=1e-12)
    undiscounted = Teacher(beta=1.0).preference_probability(
        _returns(mdp, rewards.theta, data.users, data.states0, data.actions0),
        _returns(mdp, rewards.theta, data.users, data.states1, data.actions1),
    )
    assert np.max(np.abs(data.probabilities - undiscounted)) > 1e-3


def test_deterministic_teacher_labels_the_better_trajectory(world):
    mdp, rewards = world
    data = collect_preferences(mdp, rewards, 300, teacher=Teacher(beta=np.inf), seed=1)
    return0 = _returns(mdp, rewards.theta, data.users, data.states0, data.actions0)
    return1 = _returns(mdp, rewards.theta, data.users, data.states1, data.actions1)
    strict = np.abs(return1 - return0) > 1e-9
    assert strict.mean() > 0.5
    np.testing.assert_array_equal(data.labels[strict], (return1 > return0)[strict].astype(float))
    assert data.metadata["teacher"]["beta"] == "inf"


def test_trajectories_inside_collection_match_each_users_occupancy(world, frequency_tolerance):
    mdp, rewards = world
    behaviour = epsilon_optimal_policies(mdp, rewards, 0.4)
    n = 6000
    data = collect_preferences(mdp, rewards, n, behavior=behaviour, seed=2)
    checks = 3 * 2  # users x {tau0, tau1}
    for user in range(3):
        exact = occupancy(mdp, behaviour[user])
        mine = data.users == user
        for states, actions in ((data.states0, data.actions0), (data.states1, data.actions1)):
            frequencies = np.zeros_like(exact)
            for h in range(mdp.horizon):
                np.add.at(frequencies[h], (states[mine, h], actions[mine, h]), 1.0 / n)
            # Bernstein per cell, union bound over cells (inside the helper) and over the six
            # (user, trajectory) groups: overall failure probability below 1e-6.
            tolerance = frequency_tolerance(exact, n, failure_probability=1e-6 / checks)
            assert np.all(np.abs(frequencies - exact) <= tolerance)
            np.testing.assert_array_equal(frequencies[exact == 0], 0.0)


def test_a_pair_of_behaviours_drives_each_side(world):
    mdp, rewards = world
    always = [np.eye(mdp.n_actions)[np.full((mdp.horizon, mdp.n_states), a)] for a in (2, 0)]
    data = collect_preferences(mdp, rewards, 50, behavior=(always[0], always[1]), seed=3)
    np.testing.assert_array_equal(data.actions0, 2)
    np.testing.assert_array_equal(data.actions1, 0)
    assert data.metadata["behavior"] == "given"
    per_user = np.stack([always[1]] * 3)
    mixed = collect_preferences(mdp, rewards, 50, behavior=(uniform_policy(mdp), per_user), seed=3)
    np.testing.assert_array_equal(mixed.actions1, 0)
    assert len(np.unique(mixed.actions0)) == mdp.n_actions
    assert mixed.metadata["behavior"] == "per_user"  # agents then take one d_ref per user


def test_skipped_pairs_are_exactly_those_with_small_returns(world):
    mdp, rewards = world
    everything = collect_preferences(mdp, rewards, 200, teacher=Teacher(beta=2.0), seed=4)
    threshold = 1.0
    skipping = collect_preferences(mdp, rewards, 200, teacher=Teacher(beta=2.0, skip=threshold), seed=4)
    return0 = _returns(mdp, rewards.theta, everything.users, everything.states0, everything.actions0)
    return1 = _returns(mdp, rewards.theta, everything.users, everything.states1, everything.actions1)
    kept = np.maximum(np.abs(return0), np.abs(return1)) >= threshold
    assert 0 < kept.sum() < len(everything)
    # The trajectory and label streams do not depend on the teacher, so the skipping dataset is
    # the full one restricted to the pairs with a large enough return.
    np.testing.assert_array_equal(skipping.states0, everything.states0[kept])
    np.testing.assert_array_equal(skipping.labels, everything.labels[kept])
    assert skipping.metadata["skipped"] == len(everything) - kept.sum()
    assert skipping.metadata["n_pairs_requested"] == 600


def test_contextual_rewards_give_each_pair_its_users_context(world):
    mdp, _ = world
    rewards = contextual_rewards(mdp.n_features, 3, 2, n_users=4, seed=0)
    data = collect_preferences(mdp, rewards, np.array([1, 0, 3, 2]), seed=0)
    np.testing.assert_array_equal(data.contexts, rewards.contexts[data.users])
    np.testing.assert_array_equal(data.pairs_per_user(), [1, 0, 3, 2])


def test_same_seed_same_dataset_and_different_seeds_differ(world):
    mdp, rewards = world
    teacher = Teacher(beta=1.0, mistake=0.05)
    first = collect_preferences(mdp, rewards, 30, teacher=teacher, seed=123)
    second = collect_preferences(mdp, rewards, 30, teacher=teacher, seed=123)
    for name in ("users", "states0", "actions0", "states1", "actions1", "labels", "probabilities"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.metadata == second.metadata and first.metadata["seed"] == 123
    other = collect_preferences(mdp, rewards, 30, teacher=teacher, seed=124)
    assert not np.array_equal(first.states0, other.states0)
    assert not np.array_equal(first.labels, other.labels)
    from_generator = collect_preferences(mdp, rewards, 30, teacher=teacher, seed=np.random.default_rng(123))
    assert len(from_generator) == 90
    json.dumps(first.metadata)


def test_epsilon_optimal_policies_interpolate(world):
    mdp, rewards = world
    optimal, _ = backward_induction(mdp, rewards.reward_table(mdp))
    np.testing.assert_array_equal(epsilon_optimal_policies(mdp, rewards, 0.0), optimal)
    np.testing.assert_allclose(epsilon_optimal_policies(mdp, rewards, 1.0), np.broadcast_to(uniform_policy(mdp), optimal.shape))
    mixed = epsilon_optimal_policies(mdp, rewards, 0.25)
    np.testing.assert_allclose(mixed, 0.75 * optimal + 0.25 / mdp.n_actions, atol=1e-15)


def test_user_parameters_accepts_structures_and_raw_matrices(world):
    mdp, rewards = world
    np.testing.assert_array_equal(user_parameters(rewards, mdp.n_features), rewards.theta.T)
    raw = np.arange(mdp.n_features * 2, dtype=float).reshape(mdp.n_features, 2)
    np.testing.assert_array_equal(user_parameters(raw, mdp.n_features), raw.T)
    np.testing.assert_array_equal(user_parameters(raw[:, 0], mdp.n_features), raw[:, :1].T)


def _bad_behaviour_row(mdp):
    policy = uniform_policy(mdp).copy()
    policy[1, 2] = [0.5, 0.5, 0.5]
    return policy


def _bad_per_user_row(mdp):
    policy = np.stack([uniform_policy(mdp)] * 3)
    policy[2, 0, 1] = [1.0, 0.0, 0.2]
    return policy


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_pairs_per_user=-1), ValueError, r"n_pairs_per_user must be at least 0, got -1"),
        (dict(n_pairs_per_user=2.5), TypeError, r"n_pairs_per_user must be an int or an integer array, got dtype float64"),
        (dict(n_pairs_per_user=True), TypeError, r"n_pairs_per_user must be an int or an integer array"),
        (dict(n_pairs_per_user=np.array([1, 2])), ValueError, r"n_pairs_per_user must be an int or an integer array of shape \(3,\), got int64 \(2,\)"),
        (dict(n_pairs_per_user=np.array([1.0, 2.0, 3.0])), TypeError, r"got dtype float64"),
        (dict(n_pairs_per_user=np.array([1, -2, 3])), ValueError, r"n_pairs_per_user must be non-negative, got -2 for user 1"),
        (dict(behavior=lambda mdp: np.full((3, 4, 2), 0.5)), ValueError, r"behavior must have shape \(H, S, A\) = \(3, 4, 3\)"),
        (dict(behavior=lambda mdp: np.full((2, 3, 4, 3), 1 / 3)), ValueError, r"behavior has 2 user policies but there are 3 users"),
        (dict(behavior=_bad_behaviour_row), ValueError, r"behavior\[h=1, s=2\] sums to 1\.5"),
        (dict(behavior=_bad_per_user_row), ValueError, r"behavior\[user=2, h=0, s=1\] sums to 1\.2"),
        (dict(behavior=lambda mdp: (uniform_policy(mdp), np.ones((3, 4)))), ValueError, r"behavior\[1\] must have 3 or 4 axes"),
        (dict(behavior=lambda mdp: (np.full((2, 3, 4, 3), 1 / 3), uniform_policy(mdp))), ValueError,
         r"behavior\[0\] has 2 user policies but there are 3 users"),
        (dict(behavior=lambda mdp: (uniform_policy(mdp),) * 3), ValueError, r"behavior as a tuple must be \(mu0, mu1\), got 3 entries"),
        (dict(behavior="greedy"), ValueError, r"behavior must be 'uniform', a policy array or a pair of them, got 'greedy'"),
        (dict(rewards=np.zeros((5, 3))), ValueError, r"rewards have 5 features but the MDP has n_features=12"),
        (dict(rewards=np.zeros((12, 3, 1))), ValueError, r"rewards must have 1 or 2 axes"),
        (dict(rewards=np.full((12, 3), np.nan)), ValueError, r"rewards must be finite"),
        (dict(rewards="theta"), TypeError, r"rewards must be an array of real numbers"),
        (dict(teacher="btl"), TypeError, r"teacher must be a Teacher, got str"),
        (dict(seed=-1), TypeError, r"seed must be a non-negative int"),
    ],
)
def test_invalid_collection_arguments_are_named(world, kwargs, error, match):
    mdp, rewards = world
    arguments = dict(rewards=rewards, n_pairs_per_user=2, seed=0)
    arguments.update(kwargs)
    if callable(arguments.get("behavior")):
        arguments["behavior"] = arguments["behavior"](mdp)
    with pytest.raises(error, match=match):
        collect_preferences(mdp, **arguments)


def test_invalid_epsilon_is_named(world):
    mdp, rewards = world
    with pytest.raises(ValueError, match=r"epsilon must be at most 1\.0, got 1\.5"):
        epsilon_optimal_policies(mdp, rewards, 1.5)
    with pytest.raises(ValueError, match=r"epsilon must be at least 0\.0"):
        epsilon_optimal_policies(mdp, rewards, -0.1)
