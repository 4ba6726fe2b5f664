"""principal_angle_distance against scipy's principal angles and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from lr_mdp_env import principal_angle_distance


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_subspace_angles(seed):
    rng = np.random.default_rng(seed)
    d = 9
    rank = int(rng.integers(1, 5))
    rank_estimate = int(rng.integers(1, rank + 1))  # at most rank: then both count the same angles
    subspace = rng.standard_normal((d, rank))
    # an estimate near the subspace, so the angles are neither 0 nor 90 degrees
    estimate = subspace @ rng.standard_normal((rank, rank_estimate)) + 0.3 * rng.standard_normal((d, rank_estimate))
    largest_angle = scipy.linalg.subspace_angles(subspace, estimate).max()
    assert abs(principal_angle_distance(subspace, estimate) - np.sin(largest_angle)) < 1e-10
    if rank_estimate == rank:
        assert abs(principal_angle_distance(estimate, subspace) - np.sin(largest_angle)) < 1e-10


def test_invariant_to_column_scaling_and_rotation():
    rng = np.random.default_rng(1)
    subspace, estimate = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    reference = principal_angle_distance(subspace, estimate)
    assert 0.05 < reference < 0.999
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    mixing = rotation @ np.diag([1e-3, 1.0, 50.0])
    assert abs(principal_angle_distance(subspace @ mixing, estimate) - reference) < 1e-10
    assert abs(principal_angle_distance(subspace, estimate @ mixing.T) - reference) < 1e-10
    assert abs(principal_angle_distance(-4.0 * subspace, estimate[:, ::-1]) - reference) < 1e-10


def test_zero_for_equal_spaces_and_one_for_orthogonal_ones():
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    first, second = basis[:, :2], basis[:, 2:4]
    assert principal_angle_distance(first, first @ rng.standard_normal((2, 2))) < 1e-12
    assert abs(principal_angle_distance(first, second) - 1.0) < 1e-12
    # A smaller estimate inside the subspace is at distance 0; a larger one sticks out of it.
    assert principal_angle_distance(basis[:, :3], first) < 1e-12
    assert abs(principal_angle_distance(first, basis[:, :3]) - 1.0) < 1e-12
    # one direction shared, one orthogonal: still the largest angle, 90 degrees
    assert abs(principal_angle_distance(first, basis[:, [0, 3]]) - 1.0) < 1e-12


def test_a_known_angle_and_vectors():
    angle = 0.3
    subspace = np.array([1.0, 0.0, 0.0])
    estimate = np.array([np.cos(angle), np.sin(angle), 0.0])
    assert abs(principal_angle_distance(subspace, estimate) - np.sin(angle)) < 1e-14
    # rank-deficient input: span{u, 2u} is the line of u
    assert principal_angle_distance(np.stack([subspace, 2 * subspace], axis=1), subspace) < 1e-14


@pytest.mark.parametrize(
    "subspace, estimate, match",
    [
        (np.ones((4, 2)), np.ones((5, 2)), r"subspace and estimate must live in the same space, got 4 and 5 rows"),
        (np.zeros((4, 2)), np.ones((4, 1)), r"subspace has no column space: it is zero"),
        (np.ones((4, 2)), np.zeros((4, 1)), r"estimate has no column space: it is zero"),
        (np.full((4, 2), np.nan), np.ones((4, 1)), r"subspace must be finite"),
        (np.ones((4, 2, 1)), np.ones((4, 1)), r"subspace must have 1 or 2 axes"),
        (np.ones((4, 2)), np.array([1.0, np.inf, 0.0, 0.0]), r"estimate must be finite"),
    ],
)
def test_invalid_inputs_are_named(subspace, estimate, match):
    with pytest.raises(ValueError, match=match):
        principal_angle_distance(subspace, estimate)
