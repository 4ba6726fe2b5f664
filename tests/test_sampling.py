"""Exact categorical sampling and vectorised trajectories, against exact occupancies and values."""

from __future__ import annotations

import numpy as np
import pytest

from lr_mdp_env import (
    TabularMDP,
    chain_mdp,
    evaluate_policy,
    expected_features,
    occupancy,
    random_mdp,
    return_moments,
    sample_trajectories,
    uniform_policy,
)
from lr_mdp_env.sampling import CategoricalSampler, transition_sampler


def _naive_inverse_cdf(row, uniform):
    """Textbook inverse CDF: the first outcome whose running total exceeds ``u``.

    When rounding leaves the total of the row just below 1 and ``u`` above it, the draw belongs
    to the last outcome of positive probability.
    """
    total = 0.0
    for outcome, probability in enumerate(row):
        total += probability
        if uniform < total:
            return outcome
    return int(np.flatnonzero(row > 0)[-1])


def _assert_draws_are_the_inverse_cdf(sampler, rows, row_index, uniforms):
    """The sampler's draws for ``(row_index, uniforms)`` are exactly the naive inverse CDF's and
    never a zero-probability outcome."""
    drawn = sampler.sample(row_index, uniforms)
    expected = np.array([_naive_inverse_cdf(rows[j], u) for j, u in zip(row_index, uniforms)])
    np.testing.assert_array_equal(drawn, expected)
    assert np.all(rows[row_index, drawn] > 0), "a zero-probability outcome was drawn"


def _awkward_rows(rng, n_outcomes):
    rows = [np.eye(n_outcomes)[k] for k in range(n_outcomes)]  # a single 1 anywhere
    rows.append(np.full(n_outcomes, 1.0 / n_outcomes))
    for _ in range(60):
        row = rng.dirichlet(np.full(n_outcomes, 0.7))
        row[rng.random(n_outcomes) < 0.4] = 0.0  # zero-probability entries, also at the ends
        if row.sum() == 0:
            row[rng.integers(n_outcomes)] = 1.0
        rows.append(row / row.sum())
    rows.append(np.r_[np.zeros(n_outcomes - 1), 1.0])
    thirds = np.zeros(n_outcomes)
    thirds[: min(3, n_outcomes)] = 1.0
    rows.append(thirds / thirds.sum())  # 1/3 does not add up to exactly 1 in floating point
    return np.array(rows)


@pytest.mark.parametrize("n_outcomes", [1, 2, 3, 7, 20])
def test_categorical_sampler_is_exactly_the_inverse_cdf(n_outcomes):
    rng = np.random.default_rng(n_outcomes)
    rows = _awkward_rows(rng, n_outcomes)
    sampler = CategoricalSampler(rows)
    row_index, uniforms = [], []
    for j, row in enumerate(rows):
        cdf = np.cumsum(row)
        # Random uniforms, and the places where an off-by-one would show: exactly on each
        # cumulative value, one ulp either side of it, 0, and the largest double below 1.
        edges = np.concatenate([cdf, np.nextafter(cdf, 0), np.nextafter(cdf, 2), [0.0, np.nextafter(1.0, 0)]])
        candidates = np.concatenate([rng.random(40), edges])
        candidates = candidates[(candidates >= 0) & (candidates < 1)]
        row_index.append(np.full(candidates.size, j))
        uniforms.append(candidates)
    _assert_draws_are_the_inverse_cdf(sampler, rows, np.concatenate(row_index), np.concatenate(uniforms))


def test_categorical_sampler_on_rows_summing_just_below_one():
    # 0.1 added ten times is 0.9999999999999999: a uniform above it must still land on the last
    # positive entry, never past the end of the row.
    row = np.full(10, 0.1)
    assert np.cumsum(row)[-1] < 1.0
    sampler = CategoricalSampler(row[None])
    uniforms = np.array([np.cumsum(row)[-1], np.nextafter(1.0, 0)])
    np.testing.assert_array_equal(sampler.sample(np.zeros(2, dtype=np.int64), uniforms), [9, 9])


@pytest.mark.parametrize("n_outcomes", [5, 200])
def test_buckets_holding_several_breakpoints_are_walked_exactly(n_outcomes):
    # Tiny probabilities put several cumulative values inside one guide bucket (the first, a
    # middle one, the last), where one comparison cannot decide the draw and the sampler walks
    # the row; 200 outcomes need a wider guide type than 5. Uniforms on and around every
    # cumulative value must still give exactly the inverse CDF, in every row of the batch.
    rng = np.random.default_rng(n_outcomes)
    tiny = np.zeros(n_outcomes)
    tiny[:3] = [1e-12, 2e-12, 3e-12]
    tiny[n_outcomes // 2 : n_outcomes // 2 + 3] = 1e-9
    tiny[-3:-1] = 1e-10
    tiny[-1] = 0.0  # a zero-probability entry right after the last tiny ones
    tiny[3] = 1.0 - tiny.sum()
    rows = np.stack([tiny, rng.permutation(tiny), rng.dirichlet(np.full(n_outcomes, 0.05))])
    rows /= rows.sum(axis=1, keepdims=True)
    sampler = CategoricalSampler(rows)
    row_index, uniforms = [], []
    for j, row in enumerate(rows):
        cdf = np.cumsum(row)
        edges = np.concatenate([cdf, np.nextafter(cdf, 0), np.nextafter(cdf, 2), cdf / 2, rng.random(200)])
        edges = edges[(edges >= 0) & (edges < 1)]
        row_index.append(np.full(edges.size, j))
        uniforms.append(edges)
    _assert_draws_are_the_inverse_cdf(sampler, rows, np.concatenate(row_index), np.concatenate(uniforms))


def test_transition_sampler_is_built_once_per_mdp():
    mdp = random_mdp(3, 2, 4, seed=0)
    assert transition_sampler(mdp) is transition_sampler(mdp)
    assert transition_sampler(random_mdp(3, 2, 4, seed=0)) is not transition_sampler(mdp)


# -- trajectories against exact quantities -----------------------------------------------------


def _world(seed):
    """A stage-dependent MDP with zero transition entries and a policy with zero entries."""
    rng = np.random.default_rng(seed)
    n_states, n_actions, horizon = 4, 3, 4
    weights = rng.random((horizon, n_states, n_actions, n_states))
    weights[rng.random(weights.shape) < 0.4] = 0.0
    weights[weights.sum(axis=-1) == 0, 0] = 1.0
    mdp = TabularMDP(weights / weights.sum(axis=-1, keepdims=True), [0.7, 0.0, 0.3, 0.0],
                     features=rng.standard_normal((horizon, n_states, n_actions, 3)))
    policy = rng.random((horizon, n_states, n_actions))
    policy[rng.random(policy.shape) < 0.3] = 0.0
    policy[policy.sum(axis=-1) == 0, 2] = 1.0
    return mdp, policy / policy.sum(axis=-1, keepdims=True)


def _empirical_occupancy(states, actions, shape):
    horizon = states.shape[1]
    counts = np.zeros(shape)
    for h in range(horizon):
        np.add.at(counts[h], (states[:, h], actions[:, h]), 1.0)
    return counts / states.shape[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_state_action_frequencies_match_occupancy(seed, frequency_tolerance):
    mdp, policy = _world(seed)
    n = 20_000
    states, actions = sample_trajectories(mdp, policy, n, seed=seed)
    assert states.dtype == np.int64 and actions.dtype == np.int64 and states.shape == (n, mdp.horizon)
    exact = occupancy(mdp, policy)
    frequencies = _empirical_occupancy(states, actions, exact.shape)
    # Each cell's count is Binomial(n, q[h, s, a]); conftest's Bernstein half-width, with a union
    # bound over all H S A cells, fails with probability below 1e-6 for a correct sampler.
    tolerance = frequency_tolerance(exact, n)
    assert np.all(np.abs(frequencies - exact) <= tolerance)
    # Cells of probability zero are never visited, not merely rarely.
    np.testing.assert_array_equal(frequencies[exact == 0], 0.0)
    assert np.any(exact == 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_policy_transitions_match_the_kernel(seed, frequency_tolerance):
    # A uniform policy draws the action and the next state from one uniform (its integer and
    # fractional parts of u A): the triple (s_h, a_h, s_h+1) must still have exactly the law
    # q_h(s, a) P_h(s, a, s') of independent draws.
    mdp, _ = _world(seed)
    policy = uniform_policy(mdp)
    n = 30_000
    states, actions = sample_trajectories(mdp, policy, n, seed=seed + 10)
    exact_occupancy = occupancy(mdp, policy)
    exact = exact_occupancy[:-1, :, :, None] * mdp.transitions[:-1]  # (H - 1, S, A, S)
    counts = np.zeros(exact.shape)
    for h in range(mdp.horizon - 1):
        np.add.at(counts[h], (states[:, h], actions[:, h], states[:, h + 1]), 1.0)
    # Each cell's count is Binomial(n, exact); Bernstein with a union bound over all cells (and
    # over the occupancy cells below: half the failure budget each) fails with probability 1e-6.
    tolerance = frequency_tolerance(exact, n, failure_probability=0.5e-6)
    assert np.all(np.abs(counts / n - exact) <= tolerance)
    np.testing.assert_array_equal(counts[exact == 0], 0.0)
    frequencies = _empirical_occupancy(states, actions, exact_occupancy.shape)
    assert np.all(np.abs(frequencies - exact_occupancy) <= frequency_tolerance(exact_occupancy, n, failure_probability=0.5e-6))


def test_each_trajectory_follows_its_own_policy_in_a_batch(frequency_tolerance):
    mdp, policy = _world(3)
    policies = np.stack([policy, uniform_policy(mdp), np.eye(mdp.n_actions)[np.zeros((mdp.horizon, mdp.n_states), int)]])
    index = np.random.default_rng(0).integers(0, 3, size=30_000)
    states, actions = sample_trajectories(mdp, policies, policy_index=index, seed=4)
    np.testing.assert_array_equal(actions[index == 2], 0)  # the deterministic policy
    for k in range(2):
        group = index == k
        exact = occupancy(mdp, policies[k])
        frequencies = _empirical_occupancy(states[group], actions[group], exact.shape)
        # Union bound over the two groups as well as the cells: failure probability 1e-6 / 2 each.
        tolerance = frequency_tolerance(exact, int(group.sum()), failure_probability=0.5e-6)
        assert np.all(np.abs(frequencies - exact) <= tolerance)


@pytest.mark.parametrize("seed", [0, 5])
def test_policy_value_equals_expected_features_and_monte_carlo_mean(seed):
    mdp, policy = _world(seed)
    theta = np.random.default_rng(seed).standard_normal(mdp.n_features)
    reward = mdp.reward(theta)
    value = evaluate_policy(mdp, policy, reward)
    assert abs(value - expected_features(mdp, policy) @ theta) < 1e-12

    n = 20_000
    states, actions = sample_trajectories(mdp, policy, n, seed=seed + 100)
    returns = reward[np.arange(mdp.horizon), states, actions].sum(axis=1)
    mean, variance = return_moments(mdp, policy, reward)
    assert abs(mean - value) < 1e-12
    # The sample mean of n i.i.d. returns has standard error sqrt(Var / n) with the exact Var from
    # return_moments; by the CLT a deviation beyond 5 standard errors has probability ~6e-7.
    standard_error = np.sqrt(variance / n)
    assert variance > 0
    assert abs(returns.mean() - value) <= 5 * standard_error
    # The sample variance concentrates too: its standard error is about sqrt((m4 - Var^2) / n);
    # with returns bounded by R the fourth central moment is at most (2R)^2 Var, so 5 standard
    # errors are at most 5 * 2R sqrt(Var / n).
    bound = np.abs(reward).max(axis=(1, 2)).sum()
    assert abs(returns.var() - variance) <= 5 * 2 * bound * np.sqrt(variance / n)


def test_deterministic_world_gives_identical_trajectories():
    mdp = chain_mdp(4, 5, seed=0)
    policy = np.eye(2)[np.ones((5, 4), dtype=int)]
    states, actions = sample_trajectories(mdp, policy, 50, seed=1)
    assert np.all(states == states[0]) and np.all(actions == 1)
    # the chain is deterministic, so the path can be read off the transition table
    s = 0
    for h in range(5):
        assert states[0, h] == s
        s = int(mdp.transitions[h, s, 1].argmax())


def test_sampling_is_reproducible_and_seeds_matter():
    mdp = random_mdp(3, 2, 4, seed=0)
    policy = uniform_policy(mdp)
    first = sample_trajectories(mdp, policy, 100, seed=7)
    second = sample_trajectories(mdp, policy, 100, seed=7, transitions=transition_sampler(mdp))
    third = sample_trajectories(mdp, policy, 100, seed=8)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], third[0]) or not np.array_equal(first[1], third[1])
    generator_draw = sample_trajectories(mdp, policy, 100, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], generator_draw[0])
    empty_states, empty_actions = sample_trajectories(mdp, policy, 0, seed=1)
    assert empty_states.shape == (0, 4) and empty_actions.shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_trajectories=None), TypeError, r"n_trajectories must be an integer, got None"),
        (dict(n_trajectories=-1), ValueError, r"n_trajectories must be at least 0, got -1"),
        (dict(n_trajectories=2.0), TypeError, r"n_trajectories must be an integer"),
        (dict(policy_index=np.zeros(3, int)), ValueError, r"policy_index is only meaningful with a batch of policies"),
        (dict(policy="batch", n_trajectories=None), ValueError, r"policy_index is required with a batch of policies"),
        (dict(policy="batch", policy_index=np.zeros(3)), TypeError, r"policy_index must be a 1-d integer array"),
        (dict(policy="batch", policy_index=np.zeros((3, 1), int)), TypeError, r"policy_index must be a 1-d integer array"),
        (dict(policy="batch", policy_index=np.array([0, 2])), ValueError, r"policy_index entries must lie in 0\.\.1"),
        (dict(policy="batch", policy_index=np.array([0, -1])), ValueError, r"policy_index entries must lie in 0\.\.1"),
        (dict(policy="batch", policy_index=np.array([0, 1]), n_trajectories=3), ValueError, r"n_trajectories=3 but policy_index has 2 entries"),
        (dict(policy=np.full((2, 3, 2), 0.5)), ValueError, r"policy must have shape \(H, S, A\) = \(3, 3, 2\)"),
        (dict(policy=np.full((3, 3, 2), 0.6)), ValueError, r"policy\[h=0, s=0\] sums to 1\.2"),
        (dict(seed=-3), TypeError, r"seed must be a non-negative int"),
    ],
)
def test_invalid_sampling_arguments_are_named(kwargs, error, match):
    mdp = random_mdp(3, 2, 3, seed=0)
    arguments = dict(policy=uniform_policy(mdp), n_trajectories=5, seed=0)
    arguments.update(kwargs)
    if isinstance(arguments["policy"], str):
        arguments["policy"] = np.stack([uniform_policy(mdp)] * 2)
    with pytest.raises(error, match=match):
        sample_trajectories(mdp, **arguments)
