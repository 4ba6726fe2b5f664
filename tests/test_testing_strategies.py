"""The public hypothesis strategies, and properties of the library checked with them."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from lr_mdp_env import (
    LowRankRewards,
    PreferenceDataset,
    TabularMDP,
    Teacher,
    backward_induction,
    evaluate_policy,
    expected_features,
    occupancy,
    principal_angle_distance,
    return_moments,
    sample_trajectories,
)
from lr_mdp_env.testing import (
    CollectedPreferences,
    contextual_reward_structures,
    low_rank_reward_structures,
    mdps,
    policies,
    preference_datasets,
    probability_arrays,
    reward_tables,
    teachers,
)

# Quick searches for examples with a given feature: the strategies must be able to produce them.
FIND = settings(max_examples=500, database=None, derandomize=True)


# -- the strategies produce what they promise --------------------------------------------------


@given(
    st.data(),
    st.integers(1, 3), st.integers(0, 2),
    st.integers(1, 2), st.integers(0, 2),
    st.integers(1, 3), st.integers(0, 2),
    st.sampled_from([None, True, False]),
    st.sampled_from(["one_hot", "one_hot_time", "dense", ("one_hot", "dense")]),
)
def test_mdps_respect_their_bounds(data, min_s, extra_s, min_a, extra_a, min_h, extra_h, stationary, features):
    mdp = data.draw(mdps(
        min_states=min_s, max_states=min_s + extra_s, min_actions=min_a, max_actions=min_a + extra_a,
        min_horizon=min_h, max_horizon=min_h + extra_h, stationary=stationary, features=features, max_features=3,
    ))
    assert isinstance(mdp, TabularMDP)
    assert min_s <= mdp.n_states <= min_s + extra_s
    assert min_a <= mdp.n_actions <= min_a + extra_a
    assert min_h <= mdp.horizon <= min_h + extra_h
    if stationary is not None:
        assert mdp.stationary_transitions == stationary
    np.testing.assert_allclose(mdp.transitions.sum(axis=-1), 1.0, atol=1e-12)
    assert abs(mdp.initial_distribution.sum() - 1) < 1e-12
    kinds = {features} if isinstance(features, str) else set(features)
    if mdp.n_features == mdp.n_states * mdp.n_actions and mdp.stationary_features and "one_hot" in kinds:
        pass  # one-hot, or dense features that happen to have d = S A
    elif mdp.n_features == mdp.horizon * mdp.n_states * mdp.n_actions and "one_hot_time" in kinds:
        pass
    else:
        assert "dense" in kinds and mdp.n_features <= 3
        assert np.all(np.abs(mdp.features) <= 1.0)


def test_mdps_include_the_awkward_cases():
    # zero transition entries, deterministic rows, stage-dependent worlds and dense features
    assert find(mdps(min_states=2), lambda m: np.any(m.transitions == 0), settings=FIND)
    assert find(mdps(min_states=2), lambda m: np.any(m.transitions.max(axis=-1) == 1), settings=FIND)
    assert find(mdps(min_states=2), lambda m: np.all(m.transitions > 0), settings=FIND)
    found = find(mdps(stationary=False, min_horizon=2, min_states=2), lambda m: not np.array_equal(m.transitions[0], m.transitions[1]), settings=FIND)
    assert not found.stationary_transitions
    assert find(mdps(features="dense"), lambda m: not m.stationary_features, settings=FIND)


@given(st.data())
def test_policies_are_valid_and_honour_deterministic(data):
    mdp = data.draw(mdps(max_states=3))
    deterministic = data.draw(st.sampled_from([None, True, False]))
    n_policies = data.draw(st.sampled_from([None, 2]))
    policy = data.draw(policies(mdp, deterministic=deterministic, n_policies=n_policies))
    expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
    assert policy.shape == expected if n_policies is None else policy.shape == (2,) + expected
    np.testing.assert_allclose(policy.sum(axis=-1), 1.0, atol=1e-12)
    assert np.all(policy >= 0)
    if deterministic:
        assert set(np.unique(policy)) <= {0.0, 1.0}


@given(probability_arrays((3, 5)), probability_arrays((4,), allow_zeros=False))
def test_probability_arrays(rows, positive):
    np.testing.assert_allclose(rows.sum(axis=-1), 1.0, atol=1e-12)
    assert rows.shape == (3, 5) and np.all(rows >= 0)
    assert np.all(positive > 0) and abs(positive.sum() - 1) < 1e-12


@given(st.data())
def test_low_rank_structures_have_the_drawn_shape(data):
    n_features = data.draw(st.integers(1, 6))
    rewards = data.draw(low_rank_reward_structures(n_features, max_users=6, max_rank=3, max_condition_number=5.0, with_base=True))
    assert isinstance(rewards, LowRankRewards)
    assert rewards.theta.shape == (n_features, rewards.n_users)
    assert 1 <= rewards.rank <= min(3, n_features, rewards.n_users)
    assert 1.0 <= rewards.condition_number <= 5.0 + 1e-9
    singular = np.linalg.svd(rewards.theta - rewards.base, compute_uv=False)
    np.testing.assert_allclose(singular[: rewards.rank], rewards.singular_values, rtol=1e-9)
    if rewards.tail_singular_values.size:
        assert rewards.tail_singular_values[0] < rewards.singular_values[-1]
    assert principal_angle_distance(rewards.subspace, np.linalg.svd(rewards.theta - rewards.base)[0][:, : rewards.rank]) < 1e-6


@given(st.data())
def test_normalised_structures_have_the_requested_scale(data):
    mdp = data.draw(mdps(min_actions=2, max_states=3, max_horizon=3))
    rewards = data.draw(low_rank_reward_structures(mdp, normalize=True, scale=2.0))
    _, variance = return_moments(mdp, np.full((mdp.horizon, mdp.n_states, mdp.n_actions), 1 / mdp.n_actions), rewards.reward_table(mdp))
    assert abs(np.sqrt(np.mean(2 * variance)) - 2.0) < 1e-6


@given(st.data())
def test_contextual_structures(data):
    rewards = data.draw(contextual_reward_structures(5, max_users=4, max_context_dim=3, max_shift=1.0))
    assert rewards.theta_c.shape == (rewards.context_dim, 5) and rewards.context_dim <= 3
    assert 0.0 <= rewards.shift <= 1.0 and rewards.n_users <= 4
    assert np.linalg.matrix_rank(rewards.theta_c) == rewards.rank


@given(teachers(allow_infinite_beta=False, noise=False), teachers())
def test_teachers(pure, noisy):
    assert isinstance(pure, Teacher) and np.isfinite(pure.beta)
    assert (pure.mistake, pure.myopia, pure.skip, pure.equal) == (0.0, 1.0, 0.0, 0.0)
    assert 0 <= noisy.mistake <= 0.5 and 0.5 <= noisy.myopia <= 1 and noisy.skip <= 1 and noisy.equal <= 1


@given(preference_datasets(max_users=3, max_pairs_per_user=4, contextual=None))
def test_preference_datasets_fit_their_world(case):
    assert isinstance(case, CollectedPreferences)
    mdp, rewards, dataset = case
    dataset.check_compatible(mdp)
    assert dataset.n_users == rewards.n_users <= 3
    assert np.all(dataset.pairs_per_user() <= 4)
    assert set(np.unique(dataset.labels)) <= {0.0, 0.5, 1.0}
    assert (dataset.contexts is not None) == hasattr(rewards, "theta_c")
    # every recorded probability is the teacher's, recomputed from the metadata and the returns
    parameters = dict(dataset.metadata["teacher"])
    parameters["beta"] = float(parameters["beta"])
    teacher = Teacher(**parameters)
    theta = rewards.theta[:, dataset.users].T
    z = dataset.feature_differences(mdp)
    assert z.shape == (len(dataset), mdp.n_features)
    if teacher.myopia == 1.0 and len(dataset):
        expected = teacher.preference_probability(0.0, np.einsum("nd,nd->n", z, theta))
        if np.isinf(teacher.beta):
            # returns equal up to rounding make the deterministic teacher's answer arbitrary
            decided = np.abs(np.einsum("nd,nd->n", z, theta)) > 1e-9
            np.testing.assert_array_equal(dataset.probabilities[decided], expected[decided])
        else:
            np.testing.assert_allclose(dataset.probabilities, expected, atol=1e-9)


@settings(max_examples=10)
@given(preference_datasets(max_users=2, max_pairs_per_user=3, contextual=None))
def test_drawn_datasets_survive_a_file_round_trip(case):
    _, _, dataset = case
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "data.npz")
        dataset.save(path)
        loaded = PreferenceDataset.load(path)
    for name in ("users", "states0", "actions0", "states1", "actions1", "labels", "probabilities"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(dataset, name))
    assert loaded.metadata == dataset.metadata


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: mdps(max_states=0), ValueError, r"max_states must be at least 1, got 0"),
        (lambda: mdps(min_states=3, max_states=2), ValueError, r"max_states must be at least 3, got 2"),
        (lambda: mdps(min_actions=0), ValueError, r"min_actions must be at least 1"),
        (lambda: mdps(features="tabular"), ValueError, r"features must be one or more of"),
        (lambda: mdps(features=()), ValueError, r"features must be one or more of"),
        (lambda: mdps(stationary="yes"), TypeError, r"stationary must be True, False or None"),
        (lambda: mdps(max_features=0), ValueError, r"max_features must be at least 1"),
        (lambda: policies("mdp"), TypeError, r"mdp must be a TabularMDP, got str"),
        (lambda: probability_arrays((3, 0)), ValueError, r"shape must have a last axis of length at least 1"),
        (lambda: low_rank_reward_structures(0), ValueError, r"n_features must be at least 1"),
        (lambda: low_rank_reward_structures(4, max_condition_number=0.5), ValueError, r"max_condition_number must be at least 1"),
        (lambda: low_rank_reward_structures(4, normalize=True), ValueError, r"normalize=True needs a TabularMDP"),
        (lambda: contextual_reward_structures(4, max_context_dim=0), ValueError, r"max_context_dim must be at least 1"),
        (lambda: preference_datasets(mdp="world"), TypeError, r"mdp must be a TabularMDP or a strategy"),
        (lambda: preference_datasets(teacher=1.0), TypeError, r"teacher must be a Teacher or a strategy"),
        (lambda: preference_datasets(max_users=0), ValueError, r"max_users must be at least 1"),
    ],
)
def test_invalid_strategy_arguments_are_named_eagerly(make, error, match):
    with pytest.raises(error, match=match):
        make()


# -- properties of the library -----------------------------------------------------------------


@given(st.data())
def test_occupancy_is_a_distribution_at_every_step(data):
    mdp = data.draw(mdps())
    policy = data.draw(policies(mdp, deterministic=None, n_policies=data.draw(st.sampled_from([None, 3]))))
    q = occupancy(mdp, policy)
    assert q.shape == policy.shape and np.all(q >= 0)
    np.testing.assert_allclose(q.sum(axis=(-2, -1)), 1.0, atol=1e-12)
    # the state marginal at step 0 is the initial distribution
    np.testing.assert_allclose(q[..., 0, :, :].sum(axis=-1), np.broadcast_to(mdp.initial_distribution, q[..., 0, :, 0].shape), atol=1e-12)


@given(st.data())
def test_backward_induction_dominates_every_policy(data):
    mdp = data.draw(mdps())
    n_users = data.draw(st.sampled_from([None, 2]))
    reward = data.draw(reward_tables(mdp, n_users=n_users))
    policy, values = backward_induction(mdp, reward)
    optimal = evaluate_policy(mdp, policy, reward)
    np.testing.assert_allclose(optimal, values[..., 0, :] @ mdp.initial_distribution, atol=1e-9)
    for _ in range(3):
        other = data.draw(policies(mdp, deterministic=None))
        assert np.all(optimal >= evaluate_policy(mdp, other, reward) - 1e-9)


@given(st.data())
def test_evaluate_policy_is_linear_in_the_reward(data):
    mdp = data.draw(mdps())
    policy = data.draw(policies(mdp))
    first, second = data.draw(reward_tables(mdp)), data.draw(reward_tables(mdp))
    a, b = data.draw(st.floats(-3, 3)), data.draw(st.floats(-3, 3))
    combined = evaluate_policy(mdp, policy, a * first + b * second)
    separate = a * evaluate_policy(mdp, policy, first) + b * evaluate_policy(mdp, policy, second)
    assert abs(combined - separate) <= 1e-9 * (1 + abs(a) + abs(b)) * mdp.horizon


@given(st.data())
def test_values_of_linear_rewards_are_expected_features(data):
    mdp = data.draw(mdps())
    policy = data.draw(policies(mdp, deterministic=None))
    theta = data.draw(st.lists(st.floats(-2, 2), min_size=mdp.n_features, max_size=mdp.n_features))
    reward = mdp.reward(np.array(theta))
    assert abs(evaluate_policy(mdp, policy, reward) - expected_features(mdp, policy) @ theta) <= 1e-9 * (1 + mdp.horizon)
    mean, variance = return_moments(mdp, policy, reward)
    assert abs(mean - evaluate_policy(mdp, policy, reward)) <= 1e-9 * (1 + mdp.horizon)
    assert variance >= 0


@given(st.data())
def test_sampled_trajectories_stay_in_the_support(data):
    mdp = data.draw(mdps())
    policy = data.draw(policies(mdp, deterministic=None))
    states, actions = sample_trajectories(mdp, policy, 50, seed=data.draw(st.integers(0, 2**32 - 1)))
    q = occupancy(mdp, policy)
    steps = np.arange(mdp.horizon)
    assert np.all(q[steps, states, actions] > 0), "a trajectory visited a cell of probability zero"


@given(st.data())
def test_batched_backward_induction_equals_user_by_user(data):
    mdp = data.draw(mdps())
    rewards = data.draw(reward_tables(mdp, n_users=3))
    policy, values = backward_induction(mdp, rewards)
    for user in range(3):
        single_policy, single_values = backward_induction(mdp, rewards[user])
        np.testing.assert_allclose(values[user], single_values, atol=1e-12)
        # near-ties may be broken differently by rounding, but never at a cost in value
        assert abs(evaluate_policy(mdp, policy[user], rewards[user]) - evaluate_policy(mdp, single_policy, rewards[user])) <= 1e-9
