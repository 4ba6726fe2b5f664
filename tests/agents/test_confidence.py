"""Ellipsoidal confidence sets and their radii, against closed forms and a generic optimiser."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2, norm

from agents import Ellipsoid, theory_radius, wald_radius


def random_ellipsoid(rng, d, k, *, rank=None, radius=None):
    """Random instance; ``rank < min(d, k)`` makes a basis that is neither injective nor onto."""
    rank = min(d, k) if rank is None else rank
    basis = rng.normal(size=(d, rank)) @ rng.normal(size=(rank, k))
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    matrix = (q * np.exp(rng.uniform(-2, 2, size=k))) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    return Ellipsoid(offset=rng.normal(size=d), basis=basis, center=rng.normal(size=k), matrix=matrix,
                     radius=float(rng.uniform(0.1, 3.0)) if radius is None else radius)


def inverse_root(matrix):
    """``M^{-1/2}`` by the eigendecomposition ``M = Q diag(l) Q^T``."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors / np.sqrt(values)) @ vectors.T


def support_function(ellipsoid, vector):
    """``max_{theta in C} theta . v`` by the eigendecomposition: the maximiser over the ellipsoid
    ``||w - c||_M <= rho`` of ``g . w`` (``g = B^T v``) is ``c + rho M^{-1} g / ||M^{-1/2} g||``."""
    g = ellipsoid.basis.T @ vector
    spread = np.linalg.norm(inverse_root(ellipsoid.matrix) @ g)
    return vector @ (ellipsoid.offset + ellipsoid.basis @ ellipsoid.center) + ellipsoid.radius * spread


def independent_distance(ellipsoid, theta):
    """``min ||w - c||_M`` over ``w`` whose image is the projection of ``theta`` on the set's span.

    With ``w - c = M^{-1/2} e`` this is the least-norm ``e`` solving ``(B M^{-1/2}) e = P u``,
    ``u = theta - offset - B c`` and ``P`` the orthogonal projector on ``range(B)``.
    """
    u = theta - ellipsoid.offset - ellipsoid.basis @ ellipsoid.center
    left, singular, _ = np.linalg.svd(ellipsoid.basis, full_matrices=False)
    kept = left[:, singular > 1e-10 * singular.max()]
    projected = kept @ (kept.T @ u)
    whitened = ellipsoid.basis @ inverse_root(ellipsoid.matrix)
    return float(np.linalg.norm(np.linalg.pinv(whitened, rcond=1e-10) @ projected))


shapes = st.tuples(st.integers(1, 6), st.integers(1, 8))


@given(seed=st.integers(0, 2**32 - 1), shape=shapes)
def test_lower_upper_are_the_extremes_of_the_linear_objective(seed, shape):
    rng = np.random.default_rng(seed)
    d, k = shape
    ellipsoid = random_ellipsoid(rng, d, k)
    vectors = rng.normal(size=(4, d))
    upper = np.array([support_function(ellipsoid, v) for v in vectors])
    lower = np.array([-support_function(ellipsoid, -v) for v in vectors])
    scale = 1 + np.abs(upper).max() + np.abs(lower).max()
    np.testing.assert_allclose(ellipsoid.upper(vectors), upper, atol=1e-10 * scale)
    np.testing.assert_allclose(ellipsoid.lower(vectors), lower, atol=1e-10 * scale)
    # One vector at a time gives floats equal to the batched values.
    assert isinstance(ellipsoid.upper(vectors[0]), float)
    assert ellipsoid.upper(vectors[0]) == pytest.approx(upper[0], abs=1e-10 * scale)
    # The maximiser itself is a member and attains the value.
    g = ellipsoid.basis.T @ vectors[0]
    if np.linalg.norm(g) > 1e-8:
        direction = np.linalg.solve(ellipsoid.matrix, g)
        w = ellipsoid.center + ellipsoid.radius * direction / np.sqrt(g @ direction)
        theta = ellipsoid.offset + ellipsoid.basis @ w
        assert theta @ vectors[0] == pytest.approx(upper[0], abs=1e-9 * scale)
        assert ellipsoid.distance(theta) == pytest.approx(ellipsoid.radius, rel=1e-7)


@pytest.mark.parametrize("seed, d, k, rank", [(0, 4, 2, None), (1, 3, 3, None), (2, 2, 5, None),
                                              (3, 3, 6, 2), (4, 5, 4, 2)])
def test_upper_matches_a_constrained_optimiser(seed, d, k, rank):
    """SLSQP on ``max v . (offset + B w)`` subject to ``(w - c)^T M (w - c) <= radius^2``,
    including bases with more columns than rows (the RTV basis of a context)."""
    rng = np.random.default_rng(seed)
    ellipsoid = random_ellipsoid(rng, d, k, rank=rank)
    for vector in rng.normal(size=(3, d)):
        for sign in (1.0, -1.0):
            direction = sign * ellipsoid.basis.T @ vector

            def slack(w):
                u = w - ellipsoid.center
                return ellipsoid.radius**2 - u @ ellipsoid.matrix @ u

            result = scipy.optimize.minimize(
                lambda w: -direction @ w, ellipsoid.center, jac=lambda w: -direction, method="SLSQP",
                constraints=[{"type": "ineq", "fun": slack,
                              "jac": lambda w: -2 * ellipsoid.matrix @ (w - ellipsoid.center)}],
                options={"ftol": 1e-15, "maxiter": 1000},
            )
            # SLSQP may stop with "positive directional derivative" when it cannot improve the
            # last digits; what matters is that its point is feasible and its value optimal.
            # An infeasibility of eps radius^2 can raise the value by about eps / 2 times the
            # spread radius ||G v||_{M^{-1}}: 1e-6 keeps that within the tolerance below.
            assert slack(result.x) >= -1e-6 * ellipsoid.radius**2
            optimum = vector @ (ellipsoid.offset + ellipsoid.basis @ result.x)
            expected = ellipsoid.upper(vector) if sign > 0 else ellipsoid.lower(vector)
            assert expected == pytest.approx(optimum, abs=1e-6 * (1 + abs(optimum)))


@given(seed=st.integers(0, 2**32 - 1), shape=shapes, deficient=st.booleans())
def test_contains_agrees_with_distance_and_radius(seed, shape, deficient):
    rng = np.random.default_rng(seed)
    d, k = shape
    rank = max(1, min(d, k) - 1) if deficient else None
    ellipsoid = random_ellipsoid(rng, d, k, rank=rank)
    # The centre is always a member, at distance zero, whatever the radius.
    assert ellipsoid.contains(ellipsoid.theta_hat)
    assert ellipsoid.distance(ellipsoid.theta_hat) <= 1e-9 * (1 + np.linalg.norm(ellipsoid.theta_hat))
    # Rounding: the reference goes through the pseudo-inverse of B M^{-1/2}, whose relative error
    # is about eps cond(B)^2 cond(M) (cond(B) on the nonzero singular values); the set's own
    # route (thin SVD of B, a rho x rho system) is no worse.
    singular = np.linalg.svd(ellipsoid.basis, compute_uv=False)
    condition = singular[0] / singular[singular > 1e-10 * singular[0]].min()
    rounding = 1e-9 + 100 * np.finfo(float).eps * condition**2 * np.linalg.cond(ellipsoid.matrix)
    for scale in (0.3, 0.9, 1.1, 2.5):
        u = rng.normal(size=k)
        u *= scale * ellipsoid.radius / np.sqrt(u @ ellipsoid.matrix @ u)
        theta = ellipsoid.offset + ellipsoid.basis @ (ellipsoid.center + u)
        distance = ellipsoid.distance(theta)
        expected = independent_distance(ellipsoid, theta)
        assert distance == pytest.approx(expected, rel=rounding, abs=1e-9)
        assert distance <= scale * ellipsoid.radius * (1 + rounding)  # u itself is one preimage
        if abs(distance - ellipsoid.radius) > rounding * ellipsoid.radius:
            assert ellipsoid.contains(theta) == (distance <= ellipsoid.radius)
            assert ellipsoid.contains(theta, project=True) == (distance <= ellipsoid.radius)


def dxd_distance(ellipsoid, theta):
    """The feature-space formula ``sqrt(P u . (B M^{-1} B^T)^+ P u)`` with the ``d x d`` matrix
    ``B M^{-1} B^T`` (``u = theta - theta_hat``, ``P`` the projector onto ``range(B)``)."""
    u = theta - ellipsoid.theta_hat
    image = ellipsoid.basis @ np.linalg.solve(ellipsoid.matrix, ellipsoid.basis.T)
    projector = ellipsoid.basis @ np.linalg.pinv(ellipsoid.basis, rcond=1e-10)
    projected = projector @ u
    return float(np.sqrt(max(projected @ np.linalg.pinv(image, rcond=1e-10, hermitian=True) @ projected, 0.0)))


def rounding_scale(ellipsoid):
    """Relative rounding of both distance routes: about eps cond(B)^2 cond(M) (see above)."""
    singular = np.linalg.svd(ellipsoid.basis, compute_uv=False)
    condition = singular[0] / singular[singular > 1e-10 * singular[0]].min()
    return 1e-9 + 100 * np.finfo(float).eps * condition**2 * np.linalg.cond(ellipsoid.matrix)


@given(seed=st.integers(0, 2**32 - 1), shape=shapes, deficient=st.booleans())
def test_distance_in_coordinates_equals_the_feature_space_formula(seed, shape, deficient):
    """Injective (k <= d), onto (k > d) and rank-deficient bases; points on and off the span."""
    rng = np.random.default_rng(seed)
    d, k = shape
    rank = max(1, min(d, k) - 1) if deficient else None
    ellipsoid = random_ellipsoid(rng, d, k, rank=rank)
    rounding = rounding_scale(ellipsoid)
    for theta in (ellipsoid.theta_hat + rng.normal(size=d), ellipsoid.theta_hat + 5 * rng.normal(size=d)):
        assert ellipsoid.distance(theta) == pytest.approx(dxd_distance(ellipsoid, theta), rel=rounding, abs=1e-9)
        residual, in_range = ellipsoid._image_residual(theta)
        projector = ellipsoid.basis @ np.linalg.pinv(ellipsoid.basis, rcond=1e-10)
        np.testing.assert_allclose(in_range, projector @ residual, atol=1e-8 * (1 + np.linalg.norm(residual)))


@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 6), k=st.integers(1, 8), deficient=st.booleans())
def test_batched_distances_and_dual_norms_equal_each_sets_own(seed, d, k, deficient):
    """Sets sharing a basis (one estimator's users), one shared matrix (a pooled fit) and sets
    with their own bases, in one call."""
    rng = np.random.default_rng(seed)
    rank = max(1, min(d, k) - 1) if deficient else None
    first = random_ellipsoid(rng, d, k, rank=rank)
    shared_matrix = [Ellipsoid(offset=rng.normal(size=d), basis=first.basis, center=rng.normal(size=k),
                               matrix=first.matrix, radius=1.0, factor=first.factor) for _ in range(3)]
    own_matrix = []
    for _ in range(3):
        other = random_ellipsoid(rng, d, k, rank=rank)
        own_matrix.append(Ellipsoid(offset=other.offset, basis=first.basis, center=other.center,
                                    matrix=other.matrix, radius=other.radius))
    sets = [first, *shared_matrix, *own_matrix, random_ellipsoid(rng, d, k), random_ellipsoid(rng, d, k + 1)]
    thetas = np.stack([item.theta_hat for item in sets]) + rng.normal(size=(len(sets), d))
    distances, off_span = Ellipsoid.span_distances(sets, thetas)
    vectors = rng.normal(size=(len(sets), d))
    dual_norms = Ellipsoid.batch_dual_norm(sets, vectors)
    lowers = Ellipsoid.batch_lower(sets, vectors)
    for item, vector, lower in zip(sets, vectors, lowers):
        assert lower == pytest.approx(item.lower(vector), rel=1e-9, abs=1e-9)
    for item, theta, vector, distance, off, norm in zip(sets, thetas, vectors, distances, off_span, dual_norms):
        rounding = rounding_scale(item)
        assert distance == pytest.approx(dxd_distance(item, theta), rel=rounding, abs=1e-9)
        residual, in_range = item._image_residual(theta)
        np.testing.assert_allclose(off, residual - in_range, atol=1e-8 * (1 + np.linalg.norm(residual)))
        assert norm == pytest.approx(float(item.dual_norm(vector)), rel=1e-9, abs=1e-12)


def test_batched_operations_of_sets_with_many_coordinates():
    """Above the stacking threshold (k > 64) the sets are handled one at a time: same answers."""
    rng = np.random.default_rng(11)
    d, k = 90, 70
    basis = np.linalg.qr(rng.normal(size=(d, k)))[0]
    sets = []
    for _ in range(3):
        root = rng.normal(size=(k, k)) / np.sqrt(k)
        sets.append(Ellipsoid(offset=rng.normal(size=d), basis=basis, center=rng.normal(size=k),
                              matrix=root @ root.T + np.eye(k), radius=2.0))
    thetas = rng.normal(size=(3, d))
    distances, _ = Ellipsoid.span_distances(sets, thetas)
    np.testing.assert_allclose(distances, [dxd_distance(item, theta) for item, theta in zip(sets, thetas)], rtol=1e-8)
    vectors = rng.normal(size=(3, d))
    np.testing.assert_allclose(Ellipsoid.batch_dual_norm(sets, vectors),
                               [item.dual_norm(vector) for item, vector in zip(sets, vectors)], rtol=1e-10)
    # One matrix and factor shared by all sets (a pooled fit): one solve for all, same answers.
    pooled = [Ellipsoid(offset=item.offset, basis=basis, center=item.center, matrix=sets[0].matrix, radius=2.0,
                        factor=sets[0].factor) for item in sets]
    np.testing.assert_allclose(Ellipsoid.batch_lower(pooled, vectors),
                               [item.lower(vector) for item, vector in zip(pooled, vectors)], rtol=1e-10)
    np.testing.assert_allclose(Ellipsoid.span_distances(pooled, thetas)[0],
                               [dxd_distance(item, theta) for item, theta in zip(pooled, thetas)], rtol=1e-8)


def test_set_operations_never_form_a_feature_space_square():
    """d = 200,000 and k = 3: a d x d matrix would hold 320 GB; the set works in its 3 coordinates."""
    rng = np.random.default_rng(12)
    d = 200_000
    basis = np.linalg.qr(rng.normal(size=(d, 3)))[0]
    ellipsoid = Ellipsoid(offset=np.zeros(d), basis=basis, center=np.zeros(3), matrix=np.diag([1.0, 4.0, 9.0]),
                          radius=1.0)
    w = np.array([0.3, 0.2, 0.1])
    theta = basis @ w + 1e-3 * rng.normal(size=d)  # mostly on the span, a little off it
    # Orthonormal basis: the coordinates of the projection are B^T theta, at M-distance sqrt(w' M w).
    coordinates = basis.T @ theta
    assert ellipsoid.distance(theta) == pytest.approx(np.sqrt(coordinates @ ellipsoid.matrix @ coordinates), rel=1e-10)
    assert ellipsoid.contains(theta, project=True) and not ellipsoid.contains(theta)
    distances, off_span = Ellipsoid.span_distances([ellipsoid, ellipsoid], np.stack([theta, 2 * theta]))
    np.testing.assert_allclose(distances, [ellipsoid.distance(theta), ellipsoid.distance(2 * theta)], rtol=1e-10)
    np.testing.assert_allclose(off_span[0], theta - basis @ coordinates, atol=1e-12)


def test_batched_operations_reject_bad_input():
    rng = np.random.default_rng(13)
    ellipsoid = random_ellipsoid(rng, 3, 2)
    with pytest.raises(TypeError, match="sets"):
        Ellipsoid.span_distances([ellipsoid, "not a set"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="thetas"):
        Ellipsoid.span_distances([ellipsoid], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="vectors"):
        Ellipsoid.batch_dual_norm([ellipsoid], np.zeros((1, 4)))


def test_points_off_the_span_need_projection():
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0]
    ellipsoid = Ellipsoid(offset=np.zeros(5), basis=basis, center=np.array([0.5, -1.0]), matrix=np.eye(2),
                          radius=1.0)
    normal = rng.normal(size=5)
    normal -= basis @ (basis.T @ normal)
    theta = ellipsoid.theta_hat + normal / np.linalg.norm(normal)
    assert not ellipsoid.contains(theta)
    assert ellipsoid.contains(theta, project=True)
    assert ellipsoid.distance(theta) == pytest.approx(0.0, abs=1e-12)
    # A non-injective basis with k > d spans the whole space: every point is on the span.
    wide = Ellipsoid(offset=np.zeros(2), basis=rng.normal(size=(2, 4)), center=np.zeros(4), matrix=np.eye(4),
                     radius=1.0)
    assert wide.contains(np.array([0.1, -0.1]))
    assert not wide.contains(np.array([50.0, 50.0]))


def test_zero_radius_contains_only_the_centre():
    rng = np.random.default_rng(6)
    ellipsoid = random_ellipsoid(rng, 3, 3, radius=0.0)
    assert ellipsoid.contains(ellipsoid.theta_hat)
    assert not ellipsoid.contains(ellipsoid.theta_hat + 1e-3)
    v = rng.normal(size=3)
    assert ellipsoid.lower(v) == pytest.approx(ellipsoid.upper(v), abs=1e-12)


def test_attributes_are_frozen_and_dual_norm_shape():
    ellipsoid = random_ellipsoid(np.random.default_rng(7), 3, 2)
    with pytest.raises(ValueError):
        ellipsoid.center[0] = 1.0
    assert ellipsoid.dimension == 2
    vectors = np.random.default_rng(8).normal(size=(4, 5, 3))
    batched = ellipsoid.dual_norm(vectors)
    assert batched.shape == (4, 5)
    np.testing.assert_allclose(batched, [[ellipsoid.dual_norm(v) for v in row] for row in vectors], rtol=1e-12)
    np.testing.assert_allclose(ellipsoid.upper(vectors), [[ellipsoid.upper(v) for v in row] for row in vectors],
                               rtol=1e-12)


GOOD = {"offset": np.zeros(3), "basis": np.eye(3)[:, :2], "center": np.zeros(2), "matrix": np.eye(2),
        "radius": 1.0}


@pytest.mark.parametrize("change, name", [
    ({"matrix": np.diag([1.0, -1.0])}, "positive definite"),
    ({"matrix": np.zeros((2, 2))}, "positive definite"),
    ({"matrix": np.array([[1.0, 0.5], [0.0, 1.0]])}, "symmetric"),
    ({"matrix": np.eye(3)}, "matrix"),
    ({"matrix": np.array([[np.nan, 0.0], [0.0, 1.0]])}, "matrix"),
    ({"center": np.zeros(3)}, "center"),
    ({"offset": np.zeros(2)}, "offset"),
    ({"basis": np.ones(3)}, "basis"),
    ({"radius": -1.0}, "radius"),
    ({"radius": float("inf")}, "radius"),
])
def test_invalid_ellipsoid_names_the_problem(change, name):
    with pytest.raises(ValueError, match=name):
        Ellipsoid(**{**GOOD, **change})


def test_a_basis_checked_once_is_checked_again_when_it_can_still_change():
    """A read-only basis that passed the check is trusted afterwards only if nothing can write to
    it: a read-only view of a writable array is checked again, and a NaN written through the
    array it views is refused; a truly immutable basis is unaffected by the same writes."""
    writable = np.eye(3)[:, :2].copy()
    view = writable.view()
    view.flags.writeable = False
    Ellipsoid(**{**GOOD, "basis": view})
    writable[0, 0] = np.nan
    with pytest.raises(ValueError, match="basis"):
        Ellipsoid(**{**GOOD, "basis": view})
    owned = np.eye(3)[:, :2].copy()
    owned.flags.writeable = False
    first = Ellipsoid(**{**GOOD, "basis": owned})
    with pytest.raises(ValueError):
        owned[0, 0] = np.nan
    assert np.array_equal(Ellipsoid(**{**GOOD, "basis": owned}).basis, first.basis)


def test_invalid_points():
    ellipsoid = Ellipsoid(**GOOD)
    with pytest.raises(ValueError, match="theta"):
        ellipsoid.contains(np.zeros(2))
    with pytest.raises(ValueError, match="theta"):
        ellipsoid.distance(np.array([np.nan, 0.0, 0.0]))


# -- radii ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [0.5, 0.1, 0.01, 1e-6])
def test_wald_radius(delta):
    # Closed forms: chi^2_1 is the square of a standard normal, chi^2_2 is exponential of mean 2.
    assert wald_radius(1, delta) == pytest.approx(norm.ppf(1 - delta / 2), rel=1e-9)
    assert wald_radius(2, delta) == pytest.approx(np.sqrt(-2 * np.log(delta)), rel=1e-9)
    for k in (3, 7, 40):
        assert wald_radius(k, delta) == pytest.approx(np.sqrt(chi2.ppf(1 - delta, k)), rel=1e-12)


@pytest.mark.parametrize("dimension, delta, error, name", [
    (2, 0.0, ValueError, "delta"), (2, -0.1, ValueError, "delta"),
    (2, 1.5, ValueError, "delta"), (0, 0.1, ValueError, "dimension"), (2.5, 0.1, TypeError, "dimension"),
])
def test_wald_radius_rejects_bad_input(dimension, delta, error, name):
    with pytest.raises(error, match=name):
        wald_radius(dimension, delta)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), n=st.integers(0, 50),
       delta=st.floats(1e-6, 0.9), ridge=st.floats(1e-3, 10.0), norm_bound=st.floats(0.0, 5.0))
def test_theory_radius_is_its_documented_formula(seed, k, n, delta, ridge, norm_bound):
    """``(1/gamma) (0.5 sqrt(2 log(1/delta) + log det M - k log ridge) + sqrt(ridge) B)`` with
    ``gamma = sigmoid'(L B)``, recomputed through eigenvalues."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, k))
    gram = features.T @ features + ridge * np.eye(k)
    feature_bound = float(np.max(np.linalg.norm(features, axis=1), initial=0.0))
    slope = 1.0 / (1.0 + np.exp(feature_bound * norm_bound))
    gamma = slope * (1.0 - slope)  # sigmoid'(L B) = sigmoid(x) sigmoid(-x)
    log_det_ratio = np.sum(np.log(np.linalg.eigvalsh(gram) / ridge))
    expected = (0.5 * np.sqrt(2 * np.log(1 / delta) + log_det_ratio) + np.sqrt(ridge) * norm_bound) / gamma
    assert theory_radius(gram, ridge, delta, feature_bound, norm_bound) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("change, error, name", [
    ({"gram": -np.eye(2)}, ValueError, "gram"),
    ({"gram": np.ones((2, 3))}, ValueError, "gram"),
    ({"ridge": 0.0}, ValueError, "ridge"),
    ({"delta": 0.0}, ValueError, "delta"),
    ({"delta": 1.5}, ValueError, "delta"),
    ({"feature_bound": -1.0}, ValueError, "feature_bound"),
    ({"norm_bound": -1.0}, ValueError, "norm_bound"),
])
def test_theory_radius_rejects_bad_input(change, error, name):
    arguments = {"gram": np.eye(2), "ridge": 1.0, "delta": 0.1, "feature_bound": 1.0, "norm_bound": 1.0, **change}
    with pytest.raises(error, match=name):
        theory_radius(**arguments)


def test_a_precomputed_factor_gives_the_same_set_and_is_checked_for_shape():
    rng = np.random.default_rng(4)
    root = rng.standard_normal((3, 3))
    matrix = root @ root.T + np.eye(3)
    arguments = dict(offset=np.zeros(5), basis=rng.standard_normal((5, 3)), center=rng.standard_normal(3),
                     matrix=matrix, radius=1.3)
    plain = Ellipsoid(**arguments)
    shared = Ellipsoid(**arguments, factor=np.linalg.cholesky(matrix))
    vectors = rng.standard_normal((7, 5))
    np.testing.assert_allclose(shared.lower(vectors), plain.lower(vectors), rtol=1e-12)
    np.testing.assert_allclose(shared.dual_norm(vectors), plain.dual_norm(vectors), rtol=1e-12)
    with pytest.raises(ValueError, match="factor must have the shape of matrix"):
        Ellipsoid(**arguments, factor=np.eye(2))
