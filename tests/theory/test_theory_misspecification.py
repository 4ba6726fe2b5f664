"""The misspecification term ``2 max_pi |e . (d_pi - d_ref)|`` against brute force.

:func:`lr_mdp_env.theory.misspecification_term` uses two backward inductions. The oracle
enumerates every deterministic Markov policy of a tiny MDP (``A^(H S)`` of them, at most 729
here) and computes their expected features by the forward occupancy recursion: a linear
function of the occupancy measure is maximised at a vertex of the occupancy polytope, and the
vertices are the deterministic policies' occupancies, so the maximum over this list is the
maximum over all policies. Exact up to rounding: 1e-9 relative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lr_mdp_env import expected_features, random_mdp, theory, uniform_policy
from lr_mdp_env.testing import mdps, policies

TINY = st.one_of(mdps(max_states=2, max_actions=3, max_horizon=3),
                 mdps(max_states=3, max_actions=2, max_horizon=3))


def all_deterministic_policies(mdp):
    """Every one-hot policy ``(A^(H S), H, S, A)``."""
    eye = np.eye(mdp.n_actions)
    choices = itertools.product(range(mdp.n_actions), repeat=mdp.horizon * mdp.n_states)
    actions = np.array(list(choices)).reshape(-1, mdp.horizon, mdp.n_states)
    return eye[actions]


def brute_force(mdp, direction, reference):
    gains = expected_features(mdp, all_deterministic_policies(mdp)) @ direction - direction @ reference
    return 2 * np.max(np.abs(gains))


@given(mdp=TINY, data=st.data())
def test_matches_enumeration_of_deterministic_policies(mdp, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    direction = rng.normal(size=mdp.n_features) * data.draw(st.sampled_from([1e-3, 1.0, 100.0]))
    reference = expected_features(mdp, data.draw(policies(mdp, deterministic=None)))
    expected = brute_force(mdp, direction, reference)
    assert theory.misspecification_term(mdp, direction, reference) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(mdp=TINY, data=st.data())
def test_bounds_every_stochastic_policy_and_batches_users(mdp, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    directions = rng.normal(size=(3, mdp.n_features))
    references = expected_features(mdp, data.draw(policies(mdp, n_policies=3)))
    batch = theory.misspecification_term(mdp, directions, references)
    assert batch.shape == (3,)
    for user in range(3):
        single = theory.misspecification_term(mdp, directions[user], references[user])
        assert batch[user] == pytest.approx(single, rel=1e-12, abs=1e-15)
        # Any policy, stochastic included, is dominated (the maximum is over all policies).
        policy = data.draw(policies(mdp))
        gain = directions[user] @ (expected_features(mdp, policy) - references[user])
        assert 2 * abs(gain) <= batch[user] * (1 + 1e-12) + 1e-12
    # One reference for all users broadcasts.
    shared = theory.misspecification_term(mdp, directions, references[0])
    assert shared[0] == pytest.approx(batch[0], rel=1e-12, abs=1e-15)


@given(mdp=mdps(max_states=3, max_horizon=3, features="one_hot"), data=st.data())
def test_vanishes_on_directions_no_policy_difference_sees(mdp, data):
    """With one-hot ``(s, a)`` features every ``d_pi`` sums to ``H``, so the all-ones direction gives
    ``e . (d_pi - d_ref) = 0`` for every policy: a set that misses the truth only there (an
    unidentified direction) pays nothing. A zero direction pays nothing either."""
    reference = expected_features(mdp, data.draw(policies(mdp)))
    ones = np.full(mdp.n_features, data.draw(st.floats(-10, 10)))
    assert theory.misspecification_term(mdp, ones, reference) <= 1e-12 * (1 + np.abs(ones).max() * mdp.horizon)
    assert theory.misspecification_term(mdp, np.zeros(mdp.n_features), reference) == 0.0


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), m=st.integers(1, 3))
def test_affine_projection_is_the_least_squares_point_of_the_span(seed, k, m):
    rng = np.random.default_rng(seed)
    d = k + 2
    offset, basis, points = rng.normal(size=d), rng.normal(size=(d, k)), rng.normal(size=(m, d))
    projected = theory.affine_projection(points, offset, basis)
    # The residual is orthogonal to the span, the projection lies on it, and projecting is idempotent.
    np.testing.assert_allclose((points - projected) @ basis, 0.0, atol=1e-10)
    coefficients = np.linalg.solve(basis.T @ basis, basis.T @ (projected - offset).T)
    np.testing.assert_allclose(offset + (basis @ coefficients).T, projected, atol=1e-10)
    np.testing.assert_allclose(theory.affine_projection(projected, offset, basis), projected, atol=1e-10)
    np.testing.assert_allclose(theory.affine_projection(points[0], offset, basis), projected[0], atol=1e-12)


def test_bad_arguments_are_named():
    mdp = random_mdp(2, 2, 2, seed=0)
    reference = expected_features(mdp, uniform_policy(mdp))
    with pytest.raises(TypeError, match="mdp"):
        theory.misspecification_term(None, np.zeros(4), reference)
    with pytest.raises(ValueError, match="direction"):
        theory.misspecification_term(mdp, np.zeros(3), reference)
    with pytest.raises(ValueError, match="direction"):
        theory.misspecification_term(mdp, np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="reference_features"):
        theory.misspecification_term(mdp, np.zeros(4), np.full(4, np.nan))
    with pytest.raises(ValueError, match="basis"):
        theory.affine_projection(np.zeros(3), np.zeros(3), np.zeros((4, 1)))
