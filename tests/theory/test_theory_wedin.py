"""Wedin's subspace bound ``min(1, 2 ||E||_2 / sigma_r(A))`` on drawn and adversarial matrices.

For ``A`` of rank ``r`` with known singular values and ``A_hat = A + E``, the top-``r`` left
singular subspace of ``A_hat`` (numpy's SVD) is compared with ``A``'s by
:func:`lr_mdp_env.principal_angle_distance`, and must lie within
:func:`lr_mdp_env.theory.wedin_bound`.

Rounding: a backward-stable SVD returns the exact SVD of ``A_hat + F`` with
``||F||_2 <= c eps ||A_hat||_2`` (Golub and Van Loan 8.6; ``c`` a modest multiple of the
dimension). The computed subspace therefore obeys Wedin's bound for the perturbation
``E + F``: we check ``distance <= wedin_bound(||E|| + 10 max(d, N) eps ||A_hat||, sigma_r)``,
which matters only for the nearly singular draws (``sigma_r / sigma_1`` down to ``1e-8``),
plus ``1e-12`` for the rounding of the distance itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lr_mdp_env import principal_angle_distance, theory

EPS = np.finfo(float).eps


def orthonormal(rng, rows, columns):
    q, _ = np.linalg.qr(rng.normal(size=(rows, columns)))
    return q[:, :columns]


@st.composite
def low_rank_matrices(draw):
    """``(A, U, V, sigma)``: ``A = U diag(sigma) V^T`` with ``d, N <= 8``, ``r <= min(d, N) - 1``
    (so that the orthogonal complements used by the adversarial perturbations exist) and a
    condition number up to ``1e8``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d, n_users = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    rank = draw(st.integers(1, min(d, n_users) - 1))
    condition_number = 10.0 ** draw(st.floats(0.0, 8.0))
    sigma = np.sort(np.exp(rng.uniform(0, np.log(condition_number), size=rank)))[::-1]
    sigma[0], sigma[-1] = condition_number, 1.0
    left, right = orthonormal(rng, d, d), orthonormal(rng, n_users, n_users)
    return (left[:, :rank] * sigma) @ right[:, :rank].T, left, right, sigma


def top_left_subspace(matrix, rank):
    return np.linalg.svd(matrix)[0][:, :rank]


def check_wedin(matrix, perturbation, subspace, sigma_r):
    perturbed = matrix + perturbation
    rank = subspace.shape[1]
    distance = principal_angle_distance(subspace, top_left_subspace(perturbed, rank))
    rounding = 10 * max(matrix.shape) * EPS * np.linalg.norm(perturbed, 2)
    bound = theory.wedin_bound(np.linalg.norm(perturbation, 2) + rounding, sigma_r)
    assert distance <= bound + 1e-12
    return distance


@given(world=low_rank_matrices(), seed=st.integers(0, 2**32 - 1), scale=st.floats(-10.0, 1.5))
def test_random_perturbations(world, seed, scale):
    """Gaussian ``E`` with ``||E|| / sigma_r`` from ``1e-10`` to about 30."""
    matrix, left, _, sigma = world
    rank = sigma.size
    noise = np.random.default_rng(seed).normal(size=matrix.shape)
    perturbation = 10.0**scale * sigma[-1] * noise / np.linalg.norm(noise, 2)
    check_wedin(matrix, perturbation, left[:, :rank], sigma[-1])


@given(world=low_rank_matrices(), size=st.floats(1e-9, 1e3))
def test_a_rotation_of_the_weakest_direction_attains_half_the_bound(world, size):
    """``E = eps u_perp v_r^T`` turns the ``r``-th left singular vector by ``atan(eps / sigma_r)``
    and leaves the others: the distance is exactly ``eps / sqrt(sigma_r^2 + eps^2)``, so the bound
    is never off by more than its factor 2 in this direction (for small ``eps``)."""
    matrix, left, right, sigma = world
    rank = sigma.size
    eps = size * sigma[-1]
    perturbation = eps * np.outer(left[:, rank], right[:, rank - 1])
    distance = check_wedin(matrix, perturbation, left[:, :rank], sigma[-1])
    # The distance's rounding: about eps_machine * sigma_1 / sigma_r from the SVD of A_hat.
    exact = eps / np.hypot(sigma[-1], eps)
    assert distance == pytest.approx(exact, rel=1e-6, abs=100 * max(matrix.shape) * EPS * sigma[0] / sigma[-1])


@given(world=low_rank_matrices(), margin=st.floats(0.0, 1.0))
def test_swapping_the_weakest_direction_for_a_new_one_reaches_distance_one(world, margin):
    """``E = -sigma_r u_r v_r^T + (sigma_r + m) u_perp v_perp^T`` replaces ``u_r`` by an orthogonal
    direction of larger weight: the distance is 1, and ``||E|| = sigma_r + m >= sigma_r / 2``
    makes the bound 1 too (no bound below 1 can survive a perturbation of half ``sigma_r``)."""
    matrix, left, right, sigma = world
    rank = sigma.size
    s = sigma[-1]
    perturbation = -s * np.outer(left[:, rank - 1], right[:, rank - 1]) + (s + margin * s) * np.outer(
        left[:, rank], right[:, rank])
    if margin > 0:  # with margin 0 the top-r subspace of A_hat is not unique (a tie)
        assert check_wedin(matrix, perturbation, left[:, :rank], s) == pytest.approx(1.0, abs=1e-9)
    assert theory.wedin_bound(np.linalg.norm(perturbation, 2), s) == 1.0


@given(world=low_rank_matrices(), seed=st.integers(0, 2**32 - 1), scale=st.floats(-6.0, 0.0))
def test_nearly_degenerate_spectrum_with_perturbation_inside_the_subspace(world, seed, scale):
    """A perturbation that lives in ``span(U) x span(V)`` never moves the top-``r`` subspace while
    ``A_hat`` keeps rank ``r`` (``||E|| < sigma_r``): distance 0, within any bound."""
    matrix, left, right, sigma = world
    rank = sigma.size
    core = np.random.default_rng(seed).normal(size=(rank, rank))
    core *= 10.0**scale * 0.5 * sigma[-1] / np.linalg.norm(core, 2)
    perturbation = left[:, :rank] @ core @ right[:, :rank].T
    distance = check_wedin(matrix, perturbation, left[:, :rank], sigma[-1])
    assert distance <= 100 * max(matrix.shape) * EPS * sigma[0] / sigma[-1] + 1e-12


@given(world=low_rank_matrices(), seed=st.integers(0, 2**32 - 1))
def test_wedin_bound_for_reads_the_norm_and_singular_value_from_the_matrices(world, seed):
    matrix, _, _, sigma = world
    perturbation = 0.1 * sigma[-1] * np.random.default_rng(seed).normal(size=matrix.shape)
    expected = theory.wedin_bound(np.linalg.norm(perturbation, 2), sigma[-1])
    # sigma_r from an SVD of A: relative rounding about eps sigma_1 / sigma_r.
    computed = theory.wedin_bound_for(matrix, matrix + perturbation, sigma.size)
    assert computed == pytest.approx(expected, rel=1e-6)


@given(norm=st.floats(0.0, 1e6), sigma=st.floats(0.0, 1e6))
def test_wedin_bound_closed_form(norm, sigma):
    expected = 1.0 if sigma == 0 else min(1.0, 2 * norm / sigma)
    assert theory.wedin_bound(norm, sigma) == expected
    np.testing.assert_array_equal(theory.wedin_bound([norm, 0.0], sigma), [expected, 0.0 if sigma > 0 else 1.0])


@pytest.mark.parametrize("call, error, name", [
    (lambda: theory.wedin_bound(-1.0, 1.0), ValueError, "perturbation_norm"),
    (lambda: theory.wedin_bound(1.0, np.inf), ValueError, "smallest_singular_value"),
    (lambda: theory.wedin_bound_for(np.eye(3), np.eye(2), 1), ValueError, "perturbed"),
    (lambda: theory.wedin_bound_for(np.eye(3), np.eye(3), 4), ValueError, "rank"),
    (lambda: theory.wedin_bound_for(np.eye(3), np.eye(3), 1.0), TypeError, "rank"),
])
def test_bad_arguments_are_named(call, error, name):
    with pytest.raises(error, match=name):
        call()
