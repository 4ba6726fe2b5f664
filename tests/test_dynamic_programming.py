"""Exact dynamic programming against brute force on tiny MDPs.

The oracles here never call the library's recursions: optimal values come from enumerating every
deterministic Markov policy and pushing the state distribution forward step by step; occupancies,
expected features and return moments come from enumerating every trajectory with its probability.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lr_mdp_env import (
    TabularMDP,
    backward_induction,
    evaluate_policy,
    expected_features,
    occupancy,
    return_moments,
    uniform_policy,
)
from lr_mdp_env.dynamic_programming import check_policy, check_reward

# (n_states, n_actions, horizon) with S <= 3, A <= 2, H <= 3: at most 2^9 = 512 deterministic
# Markov policies, so enumerating them all is cheap.
TINY_SHAPES = [(1, 1, 1), (1, 2, 3), (2, 1, 3), (2, 2, 1), (2, 2, 3), (3, 2, 2), (3, 2, 3)]


def _raw_world(n_states, n_actions, horizon, stationary, seed, *, zeros=True):
    """Raw arrays ``(P (H,S,A,S), rho, stationary-or-not P as given)`` with some zero entries."""
    rng = np.random.default_rng(seed)
    shape = (n_states, n_actions) if stationary else (horizon, n_states, n_actions)
    weights = rng.random(shape + (n_states,))
    if zeros and n_states > 1:
        weights[rng.random(weights.shape) < 0.3] = 0.0
        empty = weights.sum(axis=-1) == 0
        weights[empty, 0] = 1.0
    given = weights / weights.sum(axis=-1, keepdims=True)
    full = np.broadcast_to(given, (horizon, n_states, n_actions, n_states)) if stationary else given
    rho = rng.random(n_states)
    rho /= rho.sum()
    return np.array(full), rho, given


def _all_deterministic_policies(n_states, n_actions, horizon):
    """Every map (h, s) -> a, as an integer array (n_policies, H, S)."""
    choices = itertools.product(range(n_actions), repeat=horizon * n_states)
    return np.array(list(choices), dtype=np.int64).reshape(-1, horizon, n_states)


def _forward_values(transitions, reward, actions):
    """``V^pi_h(s)`` of every deterministic policy, by forward propagation from each ``(h, s)``.

    For a start step ``h0`` and state ``s0`` the distribution starts as the point mass at ``s0``
    and is pushed forward ``d_{h+1}(s') = sum_s d_h(s) P[h, s, pi_h(s), s']`` while the expected
    rewards ``sum_s d_h(s) r[h, s, pi_h(s)]`` are added up. Returns ``(n_policies, H, S)``.
    """
    n_policies, horizon, n_states = actions.shape
    steps = np.arange(horizon)[None, :, None]
    states = np.arange(n_states)[None, None, :]
    taken_reward = reward[steps, states, actions]  # (n_policies, H, S)
    taken_transition = transitions[steps, states, actions]  # (n_policies, H, S, S)
    values = np.zeros((n_policies, horizon, n_states))
    for start in range(horizon):
        distribution = np.broadcast_to(np.eye(n_states), (n_policies, n_states, n_states)).copy()
        total = np.zeros((n_policies, n_states))
        for step in range(start, horizon):
            total += np.einsum("pks,ps->pk", distribution, taken_reward[:, step])
            distribution = np.einsum("pks,pst->pkt", distribution, taken_transition[:, step])
        values[:, start] = total
    return values


def _enumerate_trajectories(transitions, rho, policy):
    """All trajectories with positive probability: ``(states (m,H), actions (m,H), prob (m,))``."""
    horizon, n_states, n_actions, _ = transitions.shape
    states, actions, probabilities = [], [], []
    for path in itertools.product(range(n_states), range(n_actions), repeat=horizon):
        s, a = np.array(path[0::2]), np.array(path[1::2])
        probability = rho[s[0]]
        for h in range(horizon):
            probability *= policy[h, s[h], a[h]]
            if h + 1 < horizon:
                probability *= transitions[h, s[h], a[h], s[h + 1]]
        if probability > 0:
            states.append(s)
            actions.append(a)
            probabilities.append(probability)
    return np.array(states), np.array(actions), np.array(probabilities)


def _returns(reward, states, actions):
    horizon = states.shape[1]
    return reward[np.arange(horizon), states, actions].sum(axis=1)


# -- acceptance: backward induction equals brute force over all deterministic policies ---------


@pytest.mark.parametrize("shape", TINY_SHAPES)
@pytest.mark.parametrize("stationary", [True, False])
@pytest.mark.parametrize("n_users", [None, 3])
def test_backward_induction_matches_brute_force(shape, stationary, n_users):
    n_states, n_actions, horizon = shape
    seed = 1000 * n_states + 100 * n_actions + 10 * horizon + 2 * stationary + (n_users or 0)
    transitions, rho, given = _raw_world(n_states, n_actions, horizon, stationary, seed)
    mdp = TabularMDP(given, rho, horizon=horizon)
    rng = np.random.default_rng(seed + 1)
    reward_shape = (horizon, n_states, n_actions) if n_users is None else (n_users, horizon, n_states, n_actions)
    reward = rng.standard_normal(reward_shape)

    policy, values = backward_induction(mdp, reward)

    candidates = _all_deterministic_policies(n_states, n_actions, horizon)
    rewards = reward[None] if n_users is None else reward
    policies = policy[None] if n_users is None else policy
    values_by_user = values[None] if n_users is None else values
    assert policies.shape == rewards.shape
    for user in range(rewards.shape[0]):
        brute = _forward_values(transitions, rewards[user], candidates)  # (n_policies, H, S)
        np.testing.assert_allclose(values_by_user[user], brute.max(axis=0), rtol=0, atol=1e-10)
        # The returned policy is deterministic, and its own value (computed by the same forward
        # oracle) is the optimum of J = rho . V_0 over all deterministic Markov policies.
        chosen = policies[user]
        assert set(np.unique(chosen)) <= {0.0, 1.0}
        np.testing.assert_array_equal(chosen.sum(axis=-1), 1.0)
        chosen_value = _forward_values(transitions, rewards[user], chosen.argmax(axis=-1)[None])[0]
        best_return = (brute[:, 0] @ rho).max()
        assert abs(chosen_value[0] @ rho - best_return) <= 1e-10
        assert abs(values_by_user[user, 0] @ rho - best_return) <= 1e-10
        np.testing.assert_allclose(chosen_value, values_by_user[user], rtol=0, atol=1e-10)
        assert abs(evaluate_policy(mdp, chosen, rewards[user]) - best_return) <= 1e-10


def test_backward_induction_breaks_exact_ties_towards_the_lowest_action():
    # Dyadic transitions and integer rewards make every Q value exact, so ties are genuine.
    rng = np.random.default_rng(7)
    n_states, n_actions, horizon = 3, 3, 3
    weights = rng.integers(0, 3, size=(horizon, n_states, n_actions, n_states)).astype(float)
    weights[..., 0] += weights.sum(axis=-1) == 0
    transitions = np.zeros_like(weights)
    # Each row becomes a distribution with probabilities in {0, 1/4, 1/2, 3/4, 1}.
    top = weights.argmax(axis=-1)
    second = (top + 1) % n_states
    np.put_along_axis(transitions, top[..., None], 0.75, axis=-1)
    np.put_along_axis(transitions, second[..., None], 0.25, axis=-1)
    rho = np.array([0.5, 0.25, 0.25])
    mdp = TabularMDP(transitions, rho)
    reward = rng.integers(0, 2, size=(2, horizon, n_states, n_actions)).astype(float)
    reward[1] = 0.0  # every action ties everywhere

    policy, values = backward_induction(mdp, reward)

    candidates = _all_deterministic_policies(n_states, n_actions, horizon)
    for user in range(2):
        optimal = _forward_values(transitions, reward[user], candidates).max(axis=0)
        next_optimal = np.vstack([optimal[1:], np.zeros((1, n_states))])
        q_values = reward[user] + np.einsum("hsat,ht->hsa", transitions, next_optimal)
        is_max = q_values == q_values.max(axis=-1, keepdims=True)
        expected = is_max.argmax(axis=-1)  # first maximiser
        np.testing.assert_array_equal(policy[user].argmax(axis=-1), expected)
        np.testing.assert_array_equal(values[user], optimal)
        if user == 0:
            # the draw must exercise both rules: some exact ties, and some strict maxima
            ties = is_max.sum(axis=-1) > 1
            assert ties.any() and not ties.all()
    np.testing.assert_array_equal(policy[1][..., 0], 1.0)


def test_backward_induction_tie_rule_with_partial_ties_in_a_batch():
    # User 0 has ties in some states only, user 1 none: the tie-breaking must not leak across users.
    transitions = np.full((2, 2, 2), 0.5)
    mdp = TabularMDP(transitions, [0.5, 0.5], horizon=1)
    reward = np.array([[[[1.0, 1.0], [0.0, 2.0]]], [[[3.0, 1.0], [0.0, 2.0]]]])
    policy, values = backward_induction(mdp, reward)
    np.testing.assert_array_equal(policy[0, 0], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(policy[1, 0], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(values[:, 0], [[1.0, 2.0], [3.0, 2.0]])


# -- occupancy, expected features, evaluation and moments against trajectory enumeration -------


def _tiny_world_with_features(stationary, feature_kind, seed):
    n_states, n_actions, horizon = 3, 2, 3
    transitions, rho, given = _raw_world(n_states, n_actions, horizon, stationary, seed)
    rng = np.random.default_rng(seed)
    if feature_kind == "dense_stage":
        features = rng.standard_normal((horizon, n_states, n_actions, 4))
        full_features = features
    elif feature_kind == "dense":
        features = rng.standard_normal((n_states, n_actions, 4))
        full_features = np.broadcast_to(features, (horizon,) + features.shape)
    else:
        features = None
        full_features = np.broadcast_to(
            np.eye(n_states * n_actions).reshape(n_states, n_actions, -1), (horizon, n_states, n_actions, n_states * n_actions)
        )
    mdp = TabularMDP(given, rho, horizon=horizon, features=features)
    policy = rng.random((horizon, n_states, n_actions))
    policy[rng.random(policy.shape) < 0.25] = 0.0
    policy[policy.sum(axis=-1) == 0, 1] = 1.0
    policy /= policy.sum(axis=-1, keepdims=True)
    return mdp, transitions, rho, np.asarray(full_features), policy


@pytest.mark.parametrize("stationary", [True, False])
@pytest.mark.parametrize("feature_kind", ["one_hot", "dense", "dense_stage"])
def test_occupancy_features_and_value_match_trajectory_enumeration(stationary, feature_kind):
    mdp, transitions, rho, features, policy = _tiny_world_with_features(stationary, feature_kind, seed=3)
    states, actions, probabilities = _enumerate_trajectories(transitions, rho, policy)
    assert abs(probabilities.sum() - 1.0) < 1e-12
    horizon = mdp.horizon

    expected_occupancy = np.zeros((horizon, mdp.n_states, mdp.n_actions))
    for h in range(horizon):
        np.add.at(expected_occupancy[h], (states[:, h], actions[:, h]), probabilities)
    np.testing.assert_allclose(occupancy(mdp, policy), expected_occupancy, rtol=0, atol=1e-12)

    psi = features[np.arange(horizon), states, actions].sum(axis=1)  # (m, d)
    np.testing.assert_allclose(expected_features(mdp, policy), probabilities @ psi, rtol=0, atol=1e-12)
    # A checked policy, batched, skipping the check: the same features.
    np.testing.assert_allclose(expected_features(mdp, np.stack([policy, policy]), check=False),
                               np.stack([probabilities @ psi] * 2), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="check=False"):
        expected_features(mdp, policy[1:], check=False)

    theta = np.random.default_rng(0).standard_normal(mdp.n_features)
    reward = mdp.reward(theta)
    value = probabilities @ (psi @ theta)
    assert abs(evaluate_policy(mdp, policy, reward) - value) < 1e-12
    assert abs(expected_features(mdp, policy) @ theta - value) < 1e-12


@pytest.mark.parametrize("stationary", [True, False])
def test_return_moments_match_trajectory_enumeration(stationary):
    mdp, transitions, rho, _, policy = _tiny_world_with_features(stationary, "one_hot", seed=11)
    states, actions, probabilities = _enumerate_trajectories(transitions, rho, policy)
    rng = np.random.default_rng(5)
    rewards = rng.standard_normal((4, mdp.horizon, mdp.n_states, mdp.n_actions))
    means, variances = [], []
    for reward in rewards:
        returns = _returns(reward, states, actions)
        mean = probabilities @ returns
        means.append(mean)
        variances.append(probabilities @ (returns - mean) ** 2)

    mean, variance = return_moments(mdp, policy, rewards[0])
    assert np.ndim(mean) == 0 and np.ndim(variance) == 0
    assert abs(mean - means[0]) < 1e-12 and abs(variance - variances[0]) < 1e-12

    batch_mean, batch_variance = return_moments(mdp, policy, rewards)
    np.testing.assert_allclose(batch_mean, means, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batch_variance, variances, rtol=0, atol=1e-12)

    # A batch of policies under one reward: each policy against its own enumeration.
    other = uniform_policy(mdp)
    s2, a2, p2 = _enumerate_trajectories(transitions, rho, other)
    r2 = _returns(rewards[1], s2, a2)
    both_mean, both_variance = return_moments(mdp, np.stack([policy, other]), rewards[1])
    r1 = _returns(rewards[1], states, actions)
    np.testing.assert_allclose(both_mean, [probabilities @ r1, p2 @ r2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        both_variance, [probabilities @ (r1 - probabilities @ r1) ** 2, p2 @ (r2 - p2 @ r2) ** 2], rtol=0, atol=1e-12
    )


def test_batched_evaluation_pairs_policies_with_rewards():
    mdp, _, _, _, policy = _tiny_world_with_features(True, "one_hot", seed=2)
    rng = np.random.default_rng(1)
    rewards = rng.standard_normal((3, mdp.horizon, mdp.n_states, mdp.n_actions))
    policies = np.stack([policy, uniform_policy(mdp), policy[::-1].copy()])
    paired = evaluate_policy(mdp, policies, rewards)
    one_by_one = [evaluate_policy(mdp, policies[i], rewards[i]) for i in range(3)]
    np.testing.assert_allclose(paired, one_by_one, rtol=0, atol=1e-12)
    # one policy, many rewards; many policies, one reward
    np.testing.assert_allclose(
        evaluate_policy(mdp, policy, rewards), [evaluate_policy(mdp, policy, r) for r in rewards], atol=1e-12
    )
    np.testing.assert_allclose(
        evaluate_policy(mdp, policies, rewards[0]), [evaluate_policy(mdp, p, rewards[0]) for p in policies], atol=1e-12
    )


def test_occupancy_of_each_step_is_a_distribution_and_zero_rows_stay_zero():
    # From state 0 the chain only moves right, so state 2 is unreachable at step 1.
    transitions = np.zeros((3, 2, 3))
    transitions[0, :, 1] = 1.0
    transitions[1, :, 2] = 1.0
    transitions[2, :, 2] = 1.0
    mdp = TabularMDP(transitions, [1.0, 0.0, 0.0], horizon=3)
    q = occupancy(mdp, uniform_policy(mdp))
    np.testing.assert_allclose(q.sum(axis=(1, 2)), 1.0, atol=1e-15)
    np.testing.assert_array_equal(q[0, 1:], 0.0)
    np.testing.assert_array_equal(q[1, [0, 2]], 0.0)
    np.testing.assert_array_equal(q[2, 2], [0.5, 0.5])


# -- invalid inputs ----------------------------------------------------------------------------


@pytest.fixture
def small_mdp():
    transitions, rho, given = _raw_world(2, 2, 3, True, 0)
    return TabularMDP(given, rho, horizon=3)


def _bad_policy_row():
    policy = np.full((3, 2, 2), 0.5)
    policy[1, 0] = [0.7, 0.7]
    return policy


def _bad_batched_policy_row():
    policy = np.full((2, 3, 2, 2), 0.5)
    policy[1, 2, 1] = [0.2, 0.2]
    return policy


def _negative_policy():
    policy = np.full((3, 2, 2), 0.5)
    policy[2, 1] = [1.5, -0.5]
    return policy


@pytest.mark.parametrize(
    "policy, error, match",
    [
        (np.full((3, 2, 3), 1 / 3), ValueError, r"policy must have shape \(H, S, A\) = \(3, 2, 2\)"),
        (np.full((3, 2), 0.5), ValueError, r"policy must have 3 or 4 axes"),
        (_bad_policy_row(), ValueError, r"policy\[h=1, s=0\] sums to 1\.4"),
        (_bad_batched_policy_row(), ValueError, r"policy\[user=1, h=2, s=1\] sums to 0\.4"),
        (_negative_policy(), ValueError, r"policy must be non-negative, but policy\[h=2, s=1\] has entry -0\.5"),
        (np.full((3, 2, 2), np.nan), ValueError, r"policy must be finite"),
        ("uniform", TypeError, r"policy must be an array of real numbers"),
    ],
)
def test_invalid_policies_are_named(small_mdp, policy, error, match):
    with pytest.raises(error, match=match):
        occupancy(small_mdp, policy)
    with pytest.raises(error, match=match):
        check_policy(small_mdp, policy)


def _reward_with(value):
    reward = np.zeros((3, 2, 2))
    reward[2, 1, 0] = value
    return reward


@pytest.mark.parametrize(
    "reward, match",
    [
        (np.zeros((3, 2, 3)), r"reward must have shape \(H, S, A\) = \(3, 2, 2\)"),
        (np.zeros((2, 2, 2)), r"reward must have shape"),
        (np.zeros((3, 2)), r"reward must have 3 or 4 axes"),
        (_reward_with(np.nan), r"reward must be finite, but reward\[2, 1, 0\] = nan"),
        (_reward_with(np.inf), r"reward must be finite, but reward\[2, 1, 0\] = inf"),
        (_reward_with(-np.inf), r"reward must be finite, but reward\[2, 1, 0\] = -inf"),
        (np.stack([np.zeros((3, 2, 2)), _reward_with(np.nan)]), r"reward must be finite, but reward\[1, 2, 1, 0\]"),
        # A dominated -inf at the first step, reached last by the backward recursion.
        (np.stack([np.zeros((3, 2, 2)), np.where(np.arange(12).reshape(3, 2, 2) == 1, -np.inf, 0.0)]),
         r"reward must be finite, but reward\[1, 0, 0, 1\] = -inf"),
    ],
)
def test_invalid_rewards_are_named(small_mdp, reward, match):
    with pytest.raises(ValueError, match=match):
        backward_induction(small_mdp, reward)
    with pytest.raises(ValueError, match=match):
        evaluate_policy(small_mdp, uniform_policy(small_mdp), reward)
    with pytest.raises(ValueError, match=match):
        return_moments(small_mdp, uniform_policy(small_mdp), reward)
    with pytest.raises(ValueError, match=match):
        check_reward(small_mdp, reward)


def test_batch_sizes_of_policy_and_reward_must_agree(small_mdp):
    policies = np.full((2, 3, 2, 2), 0.5)
    rewards = np.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match=r"policy and reward batch different numbers of users: 2 and 3"):
        evaluate_policy(small_mdp, policies, rewards)
