"""Low-rank-plus-ridge ellipsoids (``M = A^T A + ridge I``) against the dense ellipsoid of the
same matrix, and the estimators' sets built that way.

:class:`agents.confidence.LowRankEllipsoid` works through the ``n x n`` system; every operation
must equal :class:`agents.Ellipsoid`'s with ``matrix = A^T A + ridge I`` to rounding, for
orthonormal, general injective and non-injective bases (more columns than rows, as LoCo's RTV
basis), and for factors with fewer or more rows than coordinates.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

import agents.estimators
from agents import Ellipsoid, IndependentMLE, PooledMLE
from agents.confidence import LowRankEllipsoid
from agents.metrics import set_membership
from agents.planning import rectangular_bonus, robust_optimize
from lr_mdp_env import collect_preferences, expected_features, low_rank_rewards, random_mdp, uniform_policy
from lr_mdp_env.identifiability import identifiable_basis, unidentified_directions

# Tolerances: the two sets compute the same quantities through different factorisations of M;
# with ridge 1e-2 and ||A||^2 of order n k the condition number of M is about 1e5, so relative
# differences of 1e-16 * 1e5 (times a few for accumulation) are rounding.
RTOL = 1e-9


def pair_of_sets(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    d, k = {"orthonormal": (30, 20), "injective": (30, 20), "non-injective": (12, 30), "deficient": (30, 20)}[kind]
    if kind == "orthonormal":
        basis = np.linalg.qr(rng.normal(size=(d, k)))[0]
    else:
        basis = rng.normal(size=(d, k))
    if kind == "deficient":  # rank 17 < k = 20 with d > k: a non-injective basis of a tall shape
        basis[:, -3:] = basis[:, :3] @ rng.normal(size=(3, 3))
    rows = rng.normal(size=(n, k))
    if n > 2:
        rows[-1] = rows[0] + rows[1]  # a rank-deficient factor
    offset, center, ridge, radius = rng.normal(size=d), rng.normal(size=k), 1e-2, 2.5
    dense = Ellipsoid(offset=offset, basis=basis, center=center, matrix=rows.T @ rows + ridge * np.eye(k),
                      radius=radius)
    low = LowRankEllipsoid(offset=offset, basis=basis, center=center, rows=rows, ridge=ridge, radius=radius)
    return dense, low, rng


KINDS = ["orthonormal", "injective", "non-injective", "deficient"]


@pytest.mark.parametrize("n", [1, 5, 25])
@pytest.mark.parametrize("kind", KINDS)
def test_every_operation_equals_the_dense_ellipsoid(kind, n):
    dense, low, rng = pair_of_sets(kind, n)
    d = dense.n_features
    vectors = rng.normal(size=(6, d))
    np.testing.assert_allclose(low.matrix, dense.matrix, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(low.theta_hat, dense.theta_hat, rtol=1e-12, atol=1e-12)
    for method in ("lower", "upper", "width", "dual_norm"):
        np.testing.assert_allclose(getattr(low, method)(vectors), getattr(dense, method)(vectors), rtol=RTOL)
        assert getattr(low, method)(vectors[0]) == pytest.approx(getattr(dense, method)(vectors[0]), rel=RTOL)
    np.testing.assert_allclose(low.minimizer(vectors), dense.minimizer(vectors), rtol=RTOL, atol=1e-9)
    # The minimiser is a member attaining lower(v).
    minimizer = low.minimizer(vectors[0])
    assert minimizer @ vectors[0] == pytest.approx(low.lower(vectors[0]), rel=RTOL)
    assert low.contains(minimizer, atol=1e-7)
    # A different whitening (the symmetric root, not L^{-1}) with the same K^T K = B M^{-1} B^T.
    low_term, dense_term = low.seminorms()[0], dense.seminorms()[0]
    np.testing.assert_allclose(low_term.norm(vectors), dense_term.norm(vectors), rtol=RTOL)
    np.testing.assert_allclose(low_term.adjoint(low_term.whiten(vectors)),
                               dense_term.adjoint(dense_term.whiten(vectors)), rtol=1e-7, atol=1e-7)
    # Points on the affine span (inside and outside) and off it.
    on_span = [dense.theta_hat + dense.basis @ (scale * rng.normal(size=dense.dimension)) for scale in (1e-3, 1.0)]
    # The d x d formula of the distance: sqrt(u^T (B M^{-1} B^T)^+ u) for u on the span.
    shape = dense.basis @ np.linalg.solve(dense.matrix, dense.basis.T)
    for theta in on_span:
        residual = theta - dense.theta_hat
        expected = np.sqrt(residual @ np.linalg.pinv(shape, rcond=1e-10, hermitian=True) @ residual)
        assert low.distance(theta) == pytest.approx(expected, rel=1e-6)
    for theta in on_span + [rng.normal(size=d)]:
        assert low.distance(theta) == pytest.approx(dense.distance(theta), rel=1e-8, abs=1e-10)
        for project in (False, True):
            assert low.contains(theta, project=project) == dense.contains(theta, project=project)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_operations_equal_the_dense_ellipsoids(kind):
    """Sets of different sizes n sharing one basis (every user's set of an estimator), mixed
    with dense sets: batch_lower, batch_dual_norm, span_distances and membership."""
    pairs = [pair_of_sets(kind, n, seed=0) for n in (1, 4, 9)]
    rng = np.random.default_rng(1)
    basis = pairs[0][0].basis
    dense_sets, low_sets = [], []
    for n, (dense, low, _) in zip((1, 4, 9), pairs):
        rows = rng.normal(size=(n, dense.dimension))
        dense_sets.append(Ellipsoid(offset=dense.offset, basis=basis, center=dense.center,
                                    matrix=rows.T @ rows + 0.3 * np.eye(dense.dimension), radius=dense.radius))
        low_sets.append(LowRankEllipsoid(offset=dense.offset, basis=basis, center=dense.center, rows=rows,
                                         ridge=0.3, radius=dense.radius))
    mixed = low_sets + [dense_sets[0]]
    reference = dense_sets + [dense_sets[0]]
    vectors = rng.normal(size=(len(mixed), basis.shape[0]))
    thetas = np.stack([item.theta_hat + basis @ rng.normal(size=item.dimension) for item in reference])
    thetas[-1] = rng.normal(size=basis.shape[0])  # off the span
    np.testing.assert_allclose(Ellipsoid.batch_lower(mixed, vectors), Ellipsoid.batch_lower(reference, vectors),
                               rtol=RTOL)
    np.testing.assert_allclose(Ellipsoid.batch_dual_norm(mixed, vectors),
                               Ellipsoid.batch_dual_norm(reference, vectors), rtol=RTOL)
    distances, off_span = Ellipsoid.span_distances(mixed, thetas)
    expected, expected_off = Ellipsoid.span_distances(reference, thetas)
    np.testing.assert_allclose(distances, expected, rtol=1e-8)
    np.testing.assert_allclose(off_span, expected_off, atol=1e-10)
    np.testing.assert_allclose(distances[:-1], [item.distance(t) for item, t in zip(low_sets, thetas)], rtol=1e-8)
    radii_scaled = [LowRankEllipsoid(offset=item.offset, basis=item.basis, center=item.center, rows=item.rows,
                                     ridge=item.ridge, radius=float(distance) * factor)
                    for item, distance, factor in zip(low_sets, distances, (0.99, 1.01, 0.5))]
    np.testing.assert_array_equal(set_membership(radii_scaled, thetas[:-1]), [False, True, False])


def test_invalid_arguments_are_named():
    dense, low, _ = pair_of_sets("orthonormal", 3)
    common = dict(offset=low.offset, basis=low.basis, center=low.center, radius=1.0)
    with pytest.raises(ValueError, match="ridge"):
        LowRankEllipsoid(**common, rows=low.rows, ridge=0.0)
    with pytest.raises(ValueError, match="rows"):
        LowRankEllipsoid(**common, rows=np.ones((2, 3)), ridge=1.0)
    with pytest.raises(ValueError, match="rows"):
        LowRankEllipsoid(**common, rows=np.full((2, low.dimension), np.nan), ridge=1.0)


def test_planners_give_the_dense_ellipsoids_answers():
    """The rectangular bonus (through seminorms) and exact pessimism (interior point and column
    generation, through whiten/adjoint) see the same set."""
    mdp = random_mdp(4, 3, 3, seed=2)
    d = mdp.n_features
    rng = np.random.default_rng(3)
    basis = identifiable_basis(mdp)
    k = basis.shape[1]
    dense_sets, low_sets = [], []
    for n in (3, 7):
        rows = rng.normal(size=(n, k))
        center = rng.normal(size=k)
        dense_sets.append(Ellipsoid(offset=np.zeros(d), basis=basis, center=center,
                                    matrix=rows.T @ rows + 0.5 * np.eye(k), radius=1.5))
        low_sets.append(LowRankEllipsoid(offset=np.zeros(d), basis=basis, center=center, rows=rows, ridge=0.5,
                                         radius=1.5))
    np.testing.assert_allclose(rectangular_bonus(mdp, low_sets), rectangular_bonus(mdp, dense_sets), rtol=1e-9,
                               atol=1e-12)
    reference = expected_features(mdp, uniform_policy(mdp))
    for method in ("interior-point", "column-generation"):
        low = robust_optimize(mdp, low_sets, reference, 1e-8, method=method)
        dense = robust_optimize(mdp, dense_sets, reference, 1e-8, method=method)
        np.testing.assert_allclose([item.value for item in low], [item.value for item in dense], rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("features", ["one_hot", "one_hot_time"])
def test_independent_sets_are_low_rank_and_equal_the_dense_fisher_sets(features):
    """With more than 64 coordinates and fewer pairs than coordinates, each user's Wald set keeps
    the n_i x k factor of its Fisher matrix, not the k x k matrix; its matrix is the one the
    definition gives (recomputed here from the trajectories' features), and the pooled set's
    Fisher matrix, formed from the sparse differences, too."""
    mdp = random_mdp(25, 3, 3, features=features, seed=4)  # d = 75 or 225
    rewards = low_rank_rewards(mdp.n_features, 4, 2, mdp=mdp, scale=2.0, seed=5)
    dataset = collect_preferences(mdp, rewards, 30, seed=6)
    z = (mdp.trajectory_features(dataset.states1, dataset.actions1)
         - mdp.trajectory_features(dataset.states0, dataset.actions0))
    for estimator in (IndependentMLE(ridge=0.5, beta=0.7, progress=False),
                      PooledMLE(ridge=0.5, beta=0.7, progress=False)):
        estimator.fit(dataset, mdp)
        for user in (0, 3):
            region = estimator.confidence_set(user)
            pooled = isinstance(estimator, PooledMLE)
            assert isinstance(region, Ellipsoid if pooled else LowRankEllipsoid)
            if not pooled:
                assert region.rows.shape == (30, region.dimension)
            coordinates = 0.7 * z[slice(None) if pooled else dataset.users == user] @ region.basis
            slope = 1 / (1 + np.exp(-coordinates @ region.center)) / (1 + np.exp(coordinates @ region.center))
            fisher = (coordinates.T * slope) @ coordinates + estimator.inference_ridge_ * np.eye(region.dimension)
            np.testing.assert_allclose(region.matrix, fisher, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("features", ["one_hot", "one_hot_time"])
def test_coordinates_through_householder_reflectors_equal_the_product_with_the_basis(features):
    mdp = random_mdp(30, 4, 5, features=features, seed=7)
    rewards = low_rank_rewards(mdp.n_features, 3, 2, mdp=mdp, seed=8)
    dataset = collect_preferences(mdp, rewards, 20, seed=9)
    differences = scipy.sparse.csr_matrix(dataset.feature_differences(mdp, sparse=True))
    hidden = unidentified_directions(mdp)
    basis = identifiable_basis(mdp, hidden)
    coordinates = agents.estimators._Coordinates(differences, basis, hidden)
    assert coordinates._reflectors is not None
    rows = np.array([0, 5, 17, 59])
    np.testing.assert_allclose(coordinates[rows], differences[rows] @ basis, rtol=0, atol=1e-12)
    # Another basis of the same span is not the reflectors' complement: the plain product.
    rotated = basis @ np.linalg.qr(np.random.default_rng(0).normal(size=(basis.shape[1],) * 2))[0]
    other = agents.estimators._Coordinates(differences, rotated, hidden)
    assert other._reflectors is None
    np.testing.assert_allclose(other[rows], differences[rows] @ rotated, rtol=0, atol=1e-12)
