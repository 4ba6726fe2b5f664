"""Per-context sets in the structure of the bilinear coordinates (agents.contextual_sets) against the
dense :class:`agents.Ellipsoid` with ``basis = basis_for(context)``: every operation equal to rounding
(the dense set is the oracle: it forms ``B_x`` and works through its thin SVD)."""

from __future__ import annotations

import numpy as np
import pytest

import agents.contextual as contextual
from agents import Ellipsoid, FullRankContextual, LoCoPRS, SubspaceErrorSet, planning, rtv_coordinates
from agents.contextual import BilinearCoordinates
from agents.contextual_sets import ContextualEllipsoid, ContextualSetParts
from lr_mdp_env import collect_preferences, contextual_rewards, random_mdp
from lr_mdp_env.identifiability import project_identifiable, unidentified_directions

# Relative agreement of the two computations: both are backward stable in k = O(20) coordinates
# with a matrix of condition number about e^3 (below), so rounding differences are ~1e-13.
RTOL = 1e-9


def orthonormal(rng, rows, columns):
    return np.linalg.qr(rng.normal(size=(rows, columns)))[0]


def random_parts(rng, coordinates, hidden):
    k = coordinates.dimension
    q = orthonormal(rng, k, k)
    matrix = (q * np.exp(rng.uniform(-1.5, 1.5, size=k))) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    parts = ContextualSetParts(coordinates, rng.normal(size=k), np.linalg.cholesky(matrix), 1.3, hidden=hidden,
                               matrix=matrix)
    return parts, matrix


def dense_set(parts, matrix, coordinates, context):
    basis = coordinates.basis_for(context)
    return Ellipsoid(offset=np.zeros(basis.shape[0]), basis=basis, center=parts.center, matrix=matrix,
                     radius=parts.radius)


def contexts_of(rng, context_subspace):
    """A generic context, one orthogonal to ``U`` (the span is ``range(V)`` only) and zero (a point)."""
    d_x = context_subspace.shape[0]
    generic = rng.normal(size=d_x)
    orthogonal = generic - context_subspace @ (context_subspace.T @ generic)
    return [generic, orthogonal, np.zeros(d_x)]


def coordinates_of(kind, rng, d_x, d, r):
    if kind == "rtv":
        left = orthonormal(rng, d_x, r)
        return rtv_coordinates(left, orthonormal(rng, d, r)), left
    if kind == "rtv full context rank":  # r = d_x: no (U_perp, V) block
        left = orthonormal(rng, d_x, d_x)
        return rtv_coordinates(left, orthonormal(rng, d, d_x)), left
    return BilinearCoordinates([(np.eye(d_x), np.eye(d))]), np.eye(d_x)  # full rank


@pytest.mark.parametrize("kind", ["rtv", "rtv full context rank", "full rank"])
def test_operations_equal_the_dense_ellipsoid(kind):
    rng = np.random.default_rng(["rtv", "rtv full context rank", "full rank"].index(kind))
    d_x, d, r = 4, 7, 2  # two directions in each RTV block
    coordinates, context_subspace = coordinates_of(kind, rng, d_x, d, r)
    parts, matrix = random_parts(rng, coordinates, None)
    vectors = rng.normal(size=(5, d))
    for context in contexts_of(rng, context_subspace):
        fast, dense = ContextualEllipsoid(parts, context), dense_set(parts, matrix, coordinates, context)
        np.testing.assert_allclose(fast.theta_hat, dense.theta_hat, rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(fast.coordinates(vectors), dense.coordinates(vectors), atol=1e-12)
        np.testing.assert_allclose(fast.lower(vectors), dense.lower(vectors), rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(fast.upper(vectors), dense.upper(vectors), rtol=RTOL, atol=1e-12)
        assert fast.lower(vectors[0]) == pytest.approx(dense.lower(vectors[0]), rel=RTOL, abs=1e-12)
        np.testing.assert_allclose(fast.minimizer(vectors), dense.minimizer(vectors), rtol=RTOL, atol=1e-12)
        # The seminorm: ||K v|| and K^T z equal the dense set's (its K up to an orthogonal map on
        # the left: both are L^{-1} B_x^T with the same L).
        (term,), (dense_term,) = fast.seminorms(), dense.seminorms()
        np.testing.assert_allclose(term.whiten(vectors), dense_term.whiten(vectors), rtol=RTOL, atol=1e-12)
        z = rng.normal(size=(2, coordinates.dimension))
        np.testing.assert_allclose(term.adjoint(z), dense_term.adjoint(z), rtol=RTOL, atol=1e-12)
        # The set in feature space: A A^T = B_x M^{-1} B_x^T.
        root = fast.feature_root()
        np.testing.assert_allclose(root @ root.T, dense.basis @ np.linalg.solve(matrix, dense.basis.T),
                                   rtol=1e-8, atol=1e-12)
        # Distance and membership: points on the span at several M-distances, and points off it.
        span = dense.range_factors.left
        assert fast.spans_everything == (span.shape[1] == d)
        for scale in (0.0, 0.3, 0.99, 1.01, 3.0):
            step = rng.normal(size=coordinates.dimension)
            step *= scale * parts.radius / max(np.sqrt(step @ matrix @ step), 1e-300)
            point = dense.theta_hat + dense.basis @ step  # distance at most scale * radius
            assert fast.distance(point) == pytest.approx(dense.distance(point), rel=RTOL, abs=1e-10)
            assert fast.contains(point) == dense.contains(point)
            if span.shape[1] < d:  # off the span: refused unless projected
                off = point + 0.5 * (np.eye(d) - span @ span.T) @ rng.normal(size=d)
                assert not fast.contains(off) and not dense.contains(off)
                assert fast.contains(off, project=True) == dense.contains(off, project=True)
                assert fast.distance(off) == pytest.approx(dense.distance(off), rel=RTOL, abs=1e-10)
        far = dense.theta_hat + span @ rng.normal(size=span.shape[1])
        assert fast.distance(far) == pytest.approx(dense.distance(far), rel=RTOL, abs=1e-10)


@pytest.mark.parametrize("features", ["one_hot", "dense", "one_hot_time"])
@pytest.mark.parametrize("kind", ["rtv", "full rank"])
def test_rectangular_bonus_equals_the_dense_one(features, kind):
    """Through planning.rectangular_bonus (the hook of _bonus_rows): one-hot (s, a) features have
    ``phi_id = I - Q Q^T`` with one unidentified direction (the low-rank path); dense and
    one-hot (h, s, a) features take the generic one. Also inside a SubspaceErrorSet."""
    rng = np.random.default_rng(11)
    mdp = random_mdp(4, 2, 3, features=features, n_features=6 if features == "dense" else None, seed=3)
    d, d_x, r = mdp.n_features, 4, 2
    hidden = unidentified_directions(mdp)
    coordinates, context_subspace = coordinates_of(kind, rng, d_x, d, r)
    parts, matrix = random_parts(rng, coordinates, hidden)
    contexts = contexts_of(rng, context_subspace)
    fast = [ContextualEllipsoid(parts, x) for x in contexts]
    dense = [dense_set(parts, matrix, coordinates, x) for x in contexts]
    expected = planning.rectangular_bonus(mdp, dense)
    np.testing.assert_allclose(planning.rectangular_bonus(mdp, fast), expected, rtol=RTOL, atol=1e-12)
    assert np.all(expected[0] > 0)  # a generic context moves every identifiable row
    # The bonus from the tensor is the dual norm of the identifiable rows.
    phi_id = project_identifiable(mdp, mdp.flat_features(), hidden)
    np.testing.assert_allclose(fast[0].rectangular_bonus(phi_id), parts.radius * fast[0].dual_norm(phi_id),
                               rtol=RTOL, atol=1e-12)
    subspace = np.hstack([orthonormal(rng, d, r)[:, :1], hidden])
    subspace = np.linalg.qr(subspace)[0]
    wrapped_fast = [SubspaceErrorSet(item, subspace, 0.4) for item in fast]
    wrapped_dense = [SubspaceErrorSet(item, subspace, 0.4) for item in dense]
    np.testing.assert_allclose(planning.rectangular_bonus(mdp, wrapped_fast),
                               planning.rectangular_bonus(mdp, wrapped_dense), rtol=RTOL, atol=1e-12)
    vectors = rng.normal(size=(3, d))
    np.testing.assert_allclose(wrapped_fast[0].lower(vectors), wrapped_dense[0].lower(vectors), rtol=RTOL)
    # Membership of the wrapper (its exact split), with and without projection onto the span.
    for one, other in zip(wrapped_fast[:2], wrapped_dense[:2]):
        for scale in (0.5, 3.0):
            theta = one.minimizer(rng.normal(size=d)) + scale * 0.2 * rng.normal(size=d)
            assert one.contains(theta) == other.contains(theta)
            assert one.contains(theta, project=True) == other.contains(theta, project=True)
            # A required epsilon of zero comes out as the square root of a rounding-level residual:
            # sqrt(eps) ~ 1.5e-8 times the problem's scale (O(1) here).
            needed = one.required_epsilon(theta)
            assert needed == pytest.approx(other.required_epsilon(theta), rel=1e-7, abs=1e-6)


def test_robust_optimize_optimum_equals_the_dense_one():
    rng = np.random.default_rng(5)
    mdp = random_mdp(4, 2, 3, seed=4)
    d, d_x, r = mdp.n_features, 3, 2
    coordinates, context_subspace = coordinates_of("rtv", rng, d_x, d, r)
    parts, matrix = random_parts(rng, coordinates, unidentified_directions(mdp))
    reference = rng.dirichlet(np.ones(d)) * mdp.horizon
    for context in contexts_of(rng, context_subspace)[:2]:
        fast = planning.robust_optimize(mdp, ContextualEllipsoid(parts, context), reference)
        dense = planning.robust_optimize(mdp, dense_set(parts, matrix, coordinates, context), reference)
        # Both certified to tol = 1e-8 (value <= optimum <= upper_bound).
        assert fast.value == pytest.approx(dense.value, abs=1e-6)
        assert fast.value <= dense.upper_bound + 1e-9 and dense.value <= fast.upper_bound + 1e-9
        wrapped_fast = planning.robust_optimize(mdp, SubspaceErrorSet(ContextualEllipsoid(parts, context),
                                                                      np.eye(d)[:, :1], 0.3), reference)
        wrapped_dense = planning.robust_optimize(mdp, SubspaceErrorSet(dense_set(parts, matrix, coordinates, context),
                                                                       np.eye(d)[:, :1], 0.3), reference)
        assert wrapped_fast.value == pytest.approx(wrapped_dense.value, abs=1e-6)


@pytest.fixture(scope="module")
def contextual_world():
    mdp = random_mdp(4, 2, 3, seed=0)  # one-hot (s, a): d = 8, one unidentified direction
    rewards = contextual_rewards(8, 3, 2, n_users=30, mdp=mdp, scale=2.0, seed=1)
    return mdp, rewards, collect_preferences(mdp, rewards, 20, seed=2)


@pytest.mark.parametrize("make", [lambda: LoCoPRS(2, ridge=0.5, subspace_error="ignore"),
                                  lambda: LoCoPRS(2, ridge=0.5, inference_ridge=1.0, confidence="theory",
                                                  subspace_error="ignore"),
                                  lambda: FullRankContextual(ridge=0.5)])
def test_estimators_hand_out_structured_sets_beyond_the_dense_size(contextual_world, make, monkeypatch):
    mdp, rewards, dataset = contextual_world
    estimator = make().fit(dataset, mdp)
    dense = [estimator.confidence_set(user) for user in (0, 3)]
    assert all(isinstance(item, Ellipsoid) for item in dense)  # small: the dense path
    monkeypatch.setattr(contextual, "_DENSE_BASIS_MAX_ENTRIES", 0)
    estimator._contextual_parts = None
    fast = [estimator.confidence_set(user) for user in (0, 3)]
    assert all(isinstance(item, ContextualEllipsoid) for item in fast)
    vectors = np.random.default_rng(0).normal(size=(4, mdp.n_features))
    for one, other, user in zip(fast, dense, (0, 3)):
        np.testing.assert_allclose(one.theta_hat, other.theta_hat, rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(one.lower(vectors), other.lower(vectors), rtol=RTOL, atol=1e-12)
        truth = rewards.contexts[user] @ rewards.theta_c
        assert one.distance(truth) == pytest.approx(other.distance(truth), rel=RTOL)
    np.testing.assert_allclose(planning.rectangular_bonus(mdp, fast), planning.rectangular_bonus(mdp, dense),
                               rtol=RTOL, atol=1e-12)


def test_fisher_cache_is_keyed_by_ridge_and_centre(contextual_world):
    """The tuned fit and the inference refit can share a ridge but not a centre: each Fisher matrix
    is its own (weights sigmoid'(eta) at its centre)."""
    mdp, _, dataset = contextual_world
    estimator = LoCoPRS(2, ridge=0.5, subspace_error="ignore").fit(dataset, mdp)
    at_fit = estimator._fisher(estimator.kappa_hat, 0.5)
    elsewhere = estimator._fisher(2.0 * estimator.kappa_hat, 0.5)
    assert not np.allclose(at_fit, elsewhere)
    np.testing.assert_array_equal(estimator._fisher(estimator.kappa_hat, 0.5), at_fit)
    features = estimator._dense_features()
    eta = estimator._data.offsets + estimator.beta * features @ (2.0 * estimator.kappa_hat)
    weights = estimator.beta**2 / (2.0 + 2.0 * np.cosh(eta))  # sigmoid'(eta)
    expected = (features.T * weights) @ features + 0.5 * np.eye(features.shape[1])
    np.testing.assert_allclose(elsewhere[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["rtv", "full rank"])
def test_weighted_gram_equals_the_product_of_the_design(kind):
    """The Fisher matrix block by block (sparse pair rows) equals ``F^T diag(w) F`` of the design."""
    rng = np.random.default_rng(21)
    mdp = random_mdp(5, 3, 4, seed=6)
    rewards = contextual_rewards(mdp.n_features, 4, 2, n_users=12, mdp=mdp, seed=7)
    dataset = collect_preferences(mdp, rewards, 10, seed=8)
    differences = dataset.feature_differences(mdp, sparse=True)
    coordinates, _ = coordinates_of(kind, rng, 4, mdp.n_features, 2)
    weights = rng.uniform(0.01, 0.25, size=dataset.contexts.shape[0])
    design = coordinates.features(dataset.contexts, differences)
    design = design.toarray() if hasattr(design, "toarray") else design
    expected = (design.T * weights) @ design
    assert hasattr(differences, "toarray")  # the sparse path, and the dense one below
    for rows in (differences, differences.toarray()):
        gram = coordinates.weighted_gram(dataset.contexts, rows, weights)
        np.testing.assert_allclose(gram, expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(gram, gram.T)


def test_batched_support_equals_one_set_at_a_time(monkeypatch):
    rng = np.random.default_rng(31)
    coordinates, context_subspace = coordinates_of("rtv", rng, 4, 7, 2)
    parts, _ = random_parts(rng, coordinates, None)
    other, _ = random_parts(rng, coordinates, None)  # a second fit: its own group
    sets = [ContextualEllipsoid(parts if i % 3 else other, rng.normal(size=4)) for i in range(7)]
    vectors = rng.normal(size=(7, 7))
    monkeypatch.setattr("agents.contextual_sets._BATCH_ENTRIES", 40)  # several blocks of two sets
    np.testing.assert_allclose(ContextualEllipsoid.batch_lower(sets, vectors),
                               [item.lower(v) for item, v in zip(sets, vectors)], rtol=RTOL)
    np.testing.assert_allclose(ContextualEllipsoid.batch_dual_norm(sets, vectors),
                               [item.dual_norm(v) for item, v in zip(sets, vectors)], rtol=RTOL)
    with pytest.raises(ValueError, match="vectors"):
        ContextualEllipsoid.batch_lower(sets, vectors[:3])
    with pytest.raises(TypeError, match="sets"):
        ContextualEllipsoid.batch_lower([object()], vectors[:1])


def test_bad_input_names_the_argument():
    rng = np.random.default_rng(41)
    coordinates, _ = coordinates_of("rtv", rng, 4, 7, 2)
    parts, _ = random_parts(rng, coordinates, None)
    with pytest.raises(TypeError, match="parts"):
        ContextualEllipsoid(object(), np.zeros(4))
    with pytest.raises(ValueError, match="context"):
        ContextualEllipsoid(parts, np.zeros(5))
    with pytest.raises(ValueError, match="context"):
        ContextualEllipsoid(parts, np.array([np.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="center"):
        ContextualSetParts(coordinates, np.zeros(3), parts.factor, 1.0)
    with pytest.raises(ValueError, match="radius"):
        ContextualSetParts(coordinates, parts.center, parts.factor, -1.0)
    with pytest.raises(ValueError, match="theta"):
        ContextualEllipsoid(parts, np.ones(4)).distance(np.zeros(3))


def test_inverse_root_norm_bounds_the_largest_eigenvalue_tightly():
    """Lanczos on the factor gives ``||M^{-1/2}||_2`` from above within its tolerance (the
    eigenvalues of M span e^{-1.5} .. e^{1.5}, with a cluster at the smallest)."""
    rng = np.random.default_rng(51)
    k = 300
    q = orthonormal(rng, k, k)
    values = np.exp(rng.uniform(-1.5, 1.5, size=k))
    values[:3] = np.exp(-1.5) * np.array([1.0, 1.0 + 1e-6, 1.001])
    matrix = (q * values) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    exact = 1.0 / np.sqrt(np.linalg.eigvalsh(matrix)[0])
    bound = contextual._inverse_root_norm(np.linalg.cholesky(matrix))
    assert exact <= bound <= exact * (1 + 1e-8)


def test_coordinate_spread_by_lanczos_equals_the_eigenvalue_one(contextual_world, monkeypatch):
    mdp, _, dataset = contextual_world
    estimator = LoCoPRS(2, ridge=0.5).fit(dataset, mdp)
    dense = estimator._coordinate_spread()
    monkeypatch.setattr(contextual, "_DENSE_SPREAD_MAX", 0)
    assert dense <= estimator._coordinate_spread() <= dense * (1 + 1e-8)


def test_wrapper_bonus_follows_its_own_subspace_for_the_same_rows():
    """The complement norms are remembered for the last rows and subspace: another subspace (or
    other rows) gets its own."""
    rng = np.random.default_rng(61)
    coordinates, _ = coordinates_of("rtv", rng, 4, 7, 2)
    parts, _ = random_parts(rng, coordinates, None)
    inner = ContextualEllipsoid(parts, rng.normal(size=4))
    rows = rng.normal(size=(5, 7))
    for subspace in (orthonormal(rng, 7, 2), orthonormal(rng, 7, 3), orthonormal(rng, 7, 2)):
        for phi in (rows, rows, rows.copy()):
            expected = inner.rectangular_bonus(phi) + 0.7 * np.linalg.norm(phi - phi @ subspace @ subspace.T, axis=1)
            np.testing.assert_allclose(SubspaceErrorSet(inner, subspace, 0.7).rectangular_bonus(phi), expected,
                                       rtol=1e-12)


@pytest.mark.parametrize("pessimism", ["rectangular", "exact"])
def test_evaluate_with_structured_sets_equals_the_dense_sets(contextual_world, pessimism, monkeypatch):
    """The whole evaluate table (policies, lower bounds, coverage terms, membership, bounds) is the
    same whether the contexts' sets are dense ellipsoids or structured ones, batched or not."""
    import agents

    mdp, rewards, dataset = contextual_world

    def table():
        agent = agents.make("loco-prs", rank=2, ridge=0.5, subspace_error="ignore", pessimism=pessimism)
        return agents.evaluate(agent.fit(dataset, mdp), mdp, rewards)

    dense = table()
    monkeypatch.setattr(contextual, "_DENSE_BASIS_MAX_ENTRIES", 0)
    structured = table()
    assert dense["coverage_term"].notna().all() and structured["coverage_term"].notna().all()
    assert list(structured["truth_in_set"]) == list(dense["truth_in_set"])
    for column in ("value", "lower_bound", "coverage_term", "misspecification", "bound"):
        np.testing.assert_allclose(structured[column], dense[column], rtol=1e-7, atol=1e-9, err_msg=column)
