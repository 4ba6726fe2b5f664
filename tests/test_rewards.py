"""Low-rank and contextual reward structures: exact spectra, subspaces and scale."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lr_mdp_env import (
    TabularMDP,
    contextual_rewards,
    low_rank_rewards,
    principal_angle_distance,
    random_mdp,
)


def _uniform_return_variances(mdp, theta):
    """``Var(R_i(tau))`` under the uniform policy, by enumerating every trajectory.

    ``theta`` is ``(d, N)``; returns ``(N,)``. Independent of the library's moment recursion.
    """
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    transitions, rho, features = np.asarray(mdp.transitions), mdp.initial_distribution, np.asarray(mdp.features)
    probabilities, psis = [], []
    for path in itertools.product(range(n_states), range(n_actions), repeat=horizon):
        states, actions = path[0::2], path[1::2]
        probability = rho[states[0]] / n_actions**horizon
        for h in range(horizon - 1):
            probability *= transitions[h, states[h], actions[h], states[h + 1]]
        probabilities.append(probability)
        psis.append(sum(features[h, states[h], actions[h]] for h in range(horizon)))
    probabilities, returns = np.array(probabilities), np.array(psis) @ theta  # (m,), (m, N)
    mean = probabilities @ returns
    return probabilities @ (returns - mean) ** 2


def _expected_spectrum(n_features, n_users, rank, condition_number, tail, scale):
    """The spectrum the generator promises, built from its definition alone.

    Geometric ``nu^(-k/(r-1))``, a tail proportional to ``1/k`` with ``||t|| = tail ||sigma||``,
    zeros elsewhere, and one factor making ``sqrt(mean_i ||theta_i||^2) = ||spectrum|| / sqrt(N)``
    equal to ``scale``.
    """
    sigma = condition_number ** (-np.arange(rank) / max(rank - 1, 1)) if rank > 1 else np.ones(1)
    n_tail = min(n_features, n_users) - rank
    profile = 1.0 / np.arange(1, n_tail + 1)
    tail_values = tail * np.linalg.norm(sigma) * profile / np.linalg.norm(profile) if tail > 0 else np.zeros(n_tail)
    spectrum = np.concatenate([sigma, tail_values])
    spectrum *= scale * np.sqrt(n_users) / np.linalg.norm(spectrum)
    return spectrum


CASES = [
    # (d, N, r, condition number, tail energy, scale)
    (8, 6, 3, 4.0, 0.0, 1.0),
    (8, 6, 3, 4.0, 0.1, 1.0),
    (10, 12, 4, 2.5, 0.2, 3.0),
    (5, 5, 1, 1.0, 0.3, 0.5),
    (6, 4, 4, 10.0, 0.0, 1.0),
    (3, 20, 2, 1.0, 0.05, 2.0),
]


@pytest.mark.parametrize("n_features, n_users, rank, condition_number, tail, scale", CASES)
def test_spectrum_is_exactly_as_requested(n_features, n_users, rank, condition_number, tail, scale):
    rewards = low_rank_rewards(
        n_features, n_users, rank, condition_number=condition_number, tail=tail, scale=scale, seed=7
    )
    theta = rewards.theta
    assert theta.shape == (n_features, n_users)
    singular = np.linalg.svd(theta - rewards.base, compute_uv=False)
    expected = _expected_spectrum(n_features, n_users, rank, condition_number, tail, scale)
    np.testing.assert_allclose(singular, expected, rtol=0, atol=1e-10)

    top = singular[:rank]
    assert abs(top[0] / top[-1] - condition_number) < 1e-10 * condition_number
    if rank > 2:
        ratios = top[1:] / top[:-1]
        np.testing.assert_allclose(ratios, condition_number ** (-1 / (rank - 1)), rtol=1e-10)
    if tail == 0:
        assert np.all(singular[rank:] < 1e-10)  # exactly rank r
    else:
        tail_values = singular[rank:]
        assert abs(np.linalg.norm(tail_values) / np.linalg.norm(top) - tail) < 1e-10
    assert abs(np.sqrt(np.mean(np.sum((theta - rewards.base) ** 2, axis=0))) - scale) < 1e-10

    # the reported attributes say the same
    np.testing.assert_allclose(rewards.singular_values, top, rtol=1e-10)
    np.testing.assert_allclose(np.sort(rewards.tail_singular_values)[::-1], singular[rank : rank + rewards.tail_singular_values.size], atol=1e-10)
    assert (rewards.n_features, rewards.n_users, rewards.rank) == (n_features, n_users, rank)
    assert abs(rewards.condition_number - condition_number) < 1e-10 * condition_number
    assert abs(rewards.tail_energy - tail) < 1e-10


@pytest.mark.parametrize("n_features, n_users, rank, condition_number, tail, scale", CASES)
def test_subspace_is_orthonormal_and_the_top_singular_space(n_features, n_users, rank, condition_number, tail, scale):
    rewards = low_rank_rewards(
        n_features, n_users, rank, condition_number=condition_number, tail=tail, scale=scale, seed=3
    )
    u, w = rewards.subspace, rewards.user_factors
    np.testing.assert_allclose(u.T @ u, np.eye(rank), atol=1e-12)
    np.testing.assert_allclose(w.T @ w, np.eye(rank), atol=1e-12)
    left, _, _ = np.linalg.svd(rewards.theta - rewards.base)
    assert principal_angle_distance(u, left[:, :rank]) < 1e-8
    assert principal_angle_distance(left[:, :rank], u) < 1e-8
    # The tail lives in the orthogonal complements of both factors.
    np.testing.assert_allclose(u.T @ rewards.tail, 0.0, atol=1e-12)
    np.testing.assert_allclose(rewards.tail @ w, 0.0, atol=1e-12)
    np.testing.assert_allclose(
        rewards.theta - rewards.base, (u * rewards.singular_values) @ w.T + rewards.tail, atol=1e-12
    )


@pytest.mark.parametrize("stationary, tail", [(True, 0.1), (False, 0.1), (True, 0.0), (False, 0.0)])
def test_scale_with_an_mdp_is_the_uniform_return_difference(stationary, tail):
    mdp = random_mdp(2, 2, 3, stationary=stationary, features="dense", n_features=4, seed=5)
    rewards = low_rank_rewards(4, 3, 2, condition_number=2.0, tail=tail, mdp=mdp, scale=1.7, seed=2)
    variances = _uniform_return_variances(mdp, rewards.theta)
    # sqrt(mean_i 2 Var(R_i)) is the root-mean-square standard deviation of R_i(tau1) - R_i(tau0)
    # for two independent uniform trajectories.
    assert abs(np.sqrt(np.mean(2 * variances)) - 1.7) < 1e-10
    # Scaling with the MDP changes only the overall factor: the spectrum's shape is unchanged.
    unscaled = low_rank_rewards(4, 3, 2, condition_number=2.0, tail=tail, seed=2)
    ratio = rewards.singular_values / unscaled.singular_values
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)


@pytest.mark.parametrize("given_subspace", [False, True])
def test_a_tail_free_draw_is_the_leading_part_of_a_draw_with_a_tail(given_subspace):
    # Without a tail only the first r columns of the bases are orthonormalised; they must be those
    # of the full bases that a draw with a tail computes from the same generator stream.
    spanning = np.random.default_rng(0).standard_normal((9, 2)) if given_subspace else None
    plain = low_rank_rewards(9, 6, 2, subspace=spanning, seed=4)
    tailed = low_rank_rewards(9, 6, 2, tail=1e-3, subspace=spanning, seed=4)
    np.testing.assert_allclose(plain.subspace, tailed.subspace, atol=1e-12)
    np.testing.assert_allclose(plain.user_factors, tailed.user_factors, atol=1e-12)
    np.testing.assert_array_equal(plain.tail, 0.0)


def test_base_is_added_unscaled():
    base = np.random.default_rng(0).standard_normal((6, 4)) * 100
    plain = low_rank_rewards(6, 4, 2, condition_number=3.0, seed=9)
    with_base = low_rank_rewards(6, 4, 2, condition_number=3.0, base=base, seed=9)
    np.testing.assert_array_equal(with_base.base, base)
    np.testing.assert_allclose(with_base.theta - base, plain.theta, atol=1e-12)
    column = base[:, 0]
    shared = low_rank_rewards(6, 4, 2, condition_number=3.0, base=column, seed=9)
    np.testing.assert_array_equal(shared.base, np.repeat(column[:, None], 4, axis=1))
    np.testing.assert_allclose(shared.theta - column[:, None], plain.theta, atol=1e-12)


def test_given_subspace_is_respected():
    rng = np.random.default_rng(4)
    spanning = rng.standard_normal((7, 3)) @ np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 0.0], [0.0, 3.0, 1.0]])
    rewards = low_rank_rewards(7, 5, 3, condition_number=2.0, tail=0.1, subspace=spanning, seed=1)
    np.testing.assert_allclose(rewards.subspace.T @ rewards.subspace, np.eye(3), atol=1e-12)
    assert principal_angle_distance(spanning, rewards.subspace) < 1e-10
    np.testing.assert_allclose(spanning.T @ rewards.tail, 0.0, atol=1e-10)
    left, _, _ = np.linalg.svd(rewards.theta)
    assert principal_angle_distance(spanning, left[:, :3]) < 1e-8


def test_low_rank_rewards_are_reproducible():
    first = low_rank_rewards(6, 4, 2, tail=0.1, seed=11)
    np.testing.assert_array_equal(first.theta, low_rank_rewards(6, 4, 2, tail=0.1, seed=11).theta)
    assert not np.allclose(first.theta, low_rank_rewards(6, 4, 2, tail=0.1, seed=12).theta)
    with pytest.raises(ValueError):
        first.subspace[0, 0] = 1.0  # read-only ground truth
    mdp = random_mdp(2, 3, 2, seed=0)
    np.testing.assert_array_equal(
        low_rank_rewards(6, 4, 2, seed=1).reward_table(mdp), mdp.reward(low_rank_rewards(6, 4, 2, seed=1).theta.T)
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rank=0), ValueError, r"rank must be at least 1, got 0"),
        (dict(rank=5), ValueError, r"rank must be at most 4, got 5"),
        (dict(n_users=0), ValueError, r"n_users must be at least 1"),
        (dict(n_features=0), ValueError, r"n_features must be at least 1"),
        (dict(rank=2.0), TypeError, r"rank must be an integer"),
        (dict(condition_number=0.5), ValueError, r"condition_number must be at least 1\.0, got 0\.5"),
        (dict(condition_number=np.inf), ValueError, r"condition_number must be finite"),
        (dict(tail=-0.1), ValueError, r"tail must be at least 0\.0, got -0\.1"),
        (dict(tail=0.1, rank=4), ValueError, r"tail=0\.1 needs room outside the rank: rank=4 already equals min\(d, N\)"),
        (dict(tail=5.0), ValueError, r"tail=5\.0 is too large: its largest singular value"),
        (dict(tail=0.4, condition_number=10.0), ValueError, r"tail=0\.4 is too large"),
        (dict(base=np.zeros(5)), ValueError, r"base must have shape \(6,\) or \(6, 4\), got \(5, 1\)"),
        (dict(base=np.zeros((6, 3))), ValueError, r"base must have shape \(6,\) or \(6, 4\), got \(6, 3\)"),
        (dict(base=np.zeros((6, 4, 1))), ValueError, r"base must have 1 or 2 axes"),
        (dict(base=np.full(6, np.nan)), ValueError, r"base must be finite"),
        (dict(subspace=np.eye(6)[:, :3]), ValueError, r"subspace must have shape \(6, 2\), got \(6, 3\)"),
        (dict(subspace=np.ones(6)), ValueError, r"subspace must have 2 axes"),
        (dict(subspace=np.ones((6, 2))), ValueError, r"subspace columns must be linearly independent \(rank 2\)"),
        (dict(subspace=np.full((6, 2), np.inf)), ValueError, r"subspace must be finite"),
        (dict(scale=0.0), ValueError, r"scale must be greater than 0"),
        (dict(scale=-1.0), ValueError, r"scale must be greater than 0"),
        (dict(seed="seed"), TypeError, r"seed must be a non-negative int"),
        (dict(mdp=random_mdp(2, 2, 2, seed=0)), ValueError, r"mdp has 4 features but the rewards have n_features=6"),
        (dict(mdp=TabularMDP(np.ones((1, 1, 1)), [1.0], horizon=3, features=np.ones((1, 1, 6)))), ValueError,
         r"cannot be scaled to scale=1\.0: every trajectory of mdp has the same return"),
    ],
)
def test_invalid_low_rank_arguments_are_named(kwargs, error, match):
    arguments = dict(n_features=6, n_users=4, rank=2, seed=0)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        low_rank_rewards(**arguments)


# -- contextual rewards -------------------------------------------------------------------------


def test_contextual_rewards_have_rank_r_and_consistent_theta():
    rewards = contextual_rewards(7, 5, 3, n_users=9, condition_number=4.0, shift=1.5, scale=2.0, seed=3)
    theta_c = rewards.theta_c
    assert theta_c.shape == (5, 7) and rewards.contexts.shape == (9, 5)
    singular = np.linalg.svd(theta_c, compute_uv=False)
    assert np.sum(singular > 1e-10 * singular[0]) == 3
    np.testing.assert_allclose(singular[:3], rewards.singular_values, rtol=1e-10)
    assert abs(rewards.condition_number - 4.0) < 1e-10
    np.testing.assert_allclose(singular[1] / singular[0], 4.0**-0.5, rtol=1e-10)
    # theta_for agrees with the aggregated matrix, for a batch and for a single context
    np.testing.assert_allclose(rewards.theta_for(rewards.contexts), rewards.theta.T, atol=1e-12)
    np.testing.assert_allclose(rewards.theta_for(rewards.contexts[4]), rewards.theta[:, 4], atol=1e-12)
    for i in range(9):
        np.testing.assert_allclose(rewards.theta[:, i], theta_c.T @ rewards.contexts[i], atol=1e-12)
    # every user's parameter lies in the feature subspace V*, the row space of Theta_c
    assert principal_angle_distance(rewards.subspace, rewards.theta) < 1e-10
    assert principal_angle_distance(theta_c.T, rewards.subspace) < 1e-10
    np.testing.assert_allclose(rewards.subspace.T @ rewards.subspace, np.eye(3), atol=1e-12)
    assert np.linalg.matrix_rank(rewards.theta) == 3
    assert abs(np.sqrt(np.mean(np.sum(rewards.theta**2, axis=0))) - 2.0) < 1e-10
    assert abs(np.linalg.norm(rewards.shift_direction) - 1.0) < 1e-12


@pytest.mark.parametrize("n_users", [5, 1])  # 1 < rank: fewer users than directions
def test_contextual_scale_with_an_mdp(n_users):
    mdp = random_mdp(2, 2, 2, features="dense", n_features=3, seed=8)
    rewards = contextual_rewards(3, 4, 2, n_users=n_users, mdp=mdp, scale=0.8, seed=1)
    variances = _uniform_return_variances(mdp, rewards.theta)
    assert abs(np.sqrt(np.mean(2 * variances)) - 0.8) < 1e-10


def test_shifted_contexts_have_the_shifted_mean():
    context_dim, n = 4, 40_000
    rewards = contextual_rewards(6, context_dim, 2, n_users=3, shift=1.5, seed=2)
    shifted = rewards.sample_contexts(n, seed=0, shifted=True)
    plain = rewards.sample_contexts(n, seed=1)
    # Each coordinate is N(mean, 1/d_x): its sample mean has standard error 1/sqrt(d_x n); 5 of
    # them, with a union bound over the 2 d_x coordinates, fail with probability < 8 * 6e-7.
    standard_error = 1 / np.sqrt(context_dim * n)
    assert np.all(np.abs(shifted.mean(axis=0) - 1.5 * rewards.shift_direction) <= 5 * standard_error)
    assert np.all(np.abs(plain.mean(axis=0)) <= 5 * standard_error)
    # The sample variance of N(., s^2) has standard error sqrt(2) s^2 / sqrt(n).
    variance_error = np.sqrt(2) / context_dim / np.sqrt(n)
    assert np.all(np.abs(shifted.var(axis=0) - 1 / context_dim) <= 5 * variance_error)
    np.testing.assert_array_equal(shifted, rewards.sample_contexts(n, seed=0, shifted=True))
    assert rewards.sample_contexts(0, seed=0).shape == (0, context_dim)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rank=5), ValueError, r"rank must be at most 4, got 5"),
        (dict(rank=0), ValueError, r"rank must be at least 1"),
        (dict(context_dim=0), ValueError, r"context_dim must be at least 1"),
        (dict(n_features=0), ValueError, r"n_features must be at least 1"),
        (dict(n_users=0), ValueError, r"n_users must be at least 1"),
        (dict(condition_number=0.9), ValueError, r"condition_number must be at least 1\.0"),
        (dict(shift=-1.0), ValueError, r"shift must be at least 0\.0"),
        (dict(scale=0.0), ValueError, r"scale must be greater than 0"),
        (dict(mdp=random_mdp(2, 2, 2, seed=0)), ValueError, r"mdp has 4 features but the rewards have n_features=6"),
    ],
)
def test_invalid_contextual_arguments_are_named(kwargs, error, match):
    arguments = dict(n_features=6, context_dim=4, rank=2, n_users=3, seed=0)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        contextual_rewards(**arguments)


def test_contextual_methods_validate_their_arguments():
    rewards = contextual_rewards(6, 4, 2, n_users=3, seed=0)
    with pytest.raises(ValueError, match=r"contexts must have 4 columns \(d_x\), got shape \(2, 3\)"):
        rewards.theta_for(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"contexts must be finite"):
        rewards.theta_for(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match=r"n must be at least 0"):
        rewards.sample_contexts(-1)
    with pytest.raises(TypeError, match=r"n_users"):
        contextual_rewards(6, 4, 2)  # n_users is required
