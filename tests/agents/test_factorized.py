"""The factored (Burer-Monteiro) rank-r logistic MLE: derivatives, stationarity, balancedness."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from agents import ConvergenceWarning, fit_factored, spectral_start
from agents.factorized import _Bilinear


# -- an independent implementation of F(A, B) (agents/factorized.py module docstring) -------------

def sigmoid(eta):
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def factored_objective(left, right, contexts, features, labels, offsets, beta, ridge, balance):
    contexts, features = dense(contexts), dense(features)
    eta = offsets + beta * np.einsum("ja,ab,jb->j", contexts, left @ right.T, features)
    imbalance = left.T @ left - right.T @ right
    return (np.sum(np.logaddexp(0.0, eta) - labels * eta)
            + 0.5 * ridge * (np.sum(left**2) + np.sum(right**2)) + 0.25 * balance * np.sum(imbalance**2))


def factored_gradient(left, right, contexts, features, labels, offsets, beta, ridge, balance):
    """``(dF/dA, dF/dB)``: with ``G = beta sum_j (sigmoid(eta_j) - y_j) x_j z_j^T`` the gradient of
    the loss in ``M = A B^T``, ``dF/dA = G B + ridge A + balance A D`` and
    ``dF/dB = G^T A + ridge B - balance B D``, ``D = A^T A - B^T B``."""
    contexts, features = dense(contexts), dense(features)
    eta = offsets + beta * np.einsum("ja,ab,jb->j", contexts, left @ right.T, features)
    loss_gradient = beta * contexts.T @ ((sigmoid(eta) - labels)[:, None] * features)
    imbalance = left.T @ left - right.T @ right
    return (loss_gradient @ right + ridge * left + balance * left @ imbalance,
            loss_gradient.T @ left + ridge * right - balance * right @ imbalance)


def dense(matrix):
    return matrix.toarray() if scipy.sparse.issparse(matrix) else np.asarray(matrix)


def balanced_factors(matrix, rank):
    """``A = P sqrt(S)``, ``B = Q sqrt(S)`` from the top-``rank`` SVD ``P S Q^T`` of ``matrix``."""
    left, singular, right_t = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(singular[:rank])
    return left[:, :rank] * root, right_t[:rank].T * root


def flat_norm(pair):
    return float(np.sqrt(sum(np.sum(part**2) for part in pair)))


def bilinear_problem(seed, n=300, context_dim=5, n_features=7, rank=2, one_hot=False, sparse=False):
    """Bradley-Terry labels from a rank-``rank`` ``Theta_c``; one-hot contexts mimic P-ShareLoRA,
    and ``sparse`` features (small signed integers, a third non-zero) mimic visit-count
    differences. One-hot users come in random order, with unequal numbers of pairs unless
    ``one_hot="equal"``; with ``one_hot="gap"`` the first user has none."""
    rng = np.random.default_rng(seed)
    if one_hot:
        if one_hot == "equal":
            users = rng.permutation(np.arange(n) % context_dim)
        elif one_hot == "gap":  # the first user answered nothing
            users = rng.integers(1, context_dim, size=n)
        else:
            users = rng.integers(context_dim, size=n)
        contexts = scipy.sparse.csr_matrix((np.ones(n), (np.arange(n), users)), shape=(n, context_dim))
    else:
        contexts = rng.normal(size=(n, context_dim))
    if sparse:
        mask = rng.uniform(size=(n, n_features)) < 1 / 3
        features = scipy.sparse.csr_matrix(mask * rng.integers(-2, 3, size=(n, n_features)).astype(float))
    else:
        features = rng.normal(size=(n, n_features))
    truth = rng.normal(size=(context_dim, rank)) @ rng.normal(size=(rank, n_features)) / np.sqrt(rank)
    eta = np.einsum("ja,ab,jb->j", dense(contexts), truth, dense(features))
    labels = (rng.uniform(size=n) < sigmoid(eta)).astype(float)
    offsets = 0.3 * rng.normal(size=n)
    return contexts, features, labels, offsets


# -- derivatives ---------------------------------------------------------------------------------

# (one-hot contexts, sparse features): one-hot contexts take the user layout (sparse features
# lifted to n x (d N)), with per-user batched products when users are equal-sized.
LAYOUTS = [(False, False), (True, False), (False, True), (True, True), ("equal", True), ("gap", True)]


@pytest.fixture(params=["lifted", "plain"])
def user_layout(request, monkeypatch):
    """Sparse features of users go lifted (small d N) or plain (variable projection, large d N)."""
    import agents.factorized

    if request.param == "plain":
        monkeypatch.setattr(agents.factorized, "_LIFTED_MAX_ENTRIES", 0)
    return request.param


@pytest.mark.parametrize("one_hot, sparse", LAYOUTS)
@pytest.mark.parametrize("balance", [0.0, 0.7])
def test_gradient_and_hessian_vector_product_match_finite_differences(one_hot, sparse, balance, user_layout):
    contexts, features, labels, offsets = bilinear_problem(1, n=60, one_hot=one_hot, sparse=sparse)
    rank, beta, ridge = 3, 1.3, 0.4
    problem = _Bilinear(contexts, features, labels, offsets, beta, ridge, balance, rank)
    rng = np.random.default_rng(2)
    d_x, d = contexts.shape[1], features.shape[1]
    point = rng.normal(size=(d_x + d) * rank) * 0.5
    value, grad = problem.value_and_gradient(point)
    left, right = point[: d_x * rank].reshape(d_x, rank), point[d_x * rank:].reshape(d, rank)
    args = (contexts, features, labels, offsets, beta, ridge, balance)
    assert value == pytest.approx(factored_objective(left, right, *args), rel=1e-12)
    independent = np.concatenate([np.ravel(part) for part in factored_gradient(left, right, *args)])
    np.testing.assert_allclose(grad, independent, rtol=1e-10, atol=1e-12 * np.abs(independent).max())

    # Central differences: truncation error O(step^2 f''') and rounding O(eps |f| / step), so
    # step 1e-4 leaves errors near 1e-8 relative; 1e-6 is a safe margin.
    step = 1e-4
    numeric = np.array([(problem.value_and_gradient(point + step * e)[0]
                         - problem.value_and_gradient(point - step * e)[0]) / (2 * step)
                        for e in np.eye(point.size)])
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-6 * np.abs(grad).max())

    for _ in range(3):
        direction = rng.normal(size=point.size)
        product = problem.hessian_vector(point, direction)
        numeric = (problem.value_and_gradient(point + step * direction)[1]
                   - problem.value_and_gradient(point - step * direction)[1]) / (2 * step)
        np.testing.assert_allclose(product, numeric, rtol=0, atol=1e-6 * np.abs(numeric).max())


# -- the fitted point ----------------------------------------------------------------------------

CASES = [
    # (seed, one_hot contexts, sparse features, ridge, balance)
    (3, False, False, 0.1, 0.0),
    (4, False, False, 1.0, 0.0),
    (5, False, False, 3.0, 1.0),
    (6, True, False, 0.3, 0.0),
    (7, True, False, 1.0, 1.0),
    (13, True, True, 0.3, 0.0),
    (14, "equal", True, 1.0, 0.0),
    (15, True, True, 1.0, 1.0),
    (16, "gap", True, 0.3, 0.0),
]


def fitted(seed, one_hot, sparse, ridge, balance, rank=2):
    contexts, features, labels, offsets = bilinear_problem(seed, one_hot=one_hot, sparse=sparse,
                                                            context_dim=12 if one_hot else 5)
    start = spectral_start(contexts, features, labels, offsets, rank, 1.0)
    fit = fit_factored(contexts, features, labels, rank, initial=start, offsets=offsets, ridge=ridge,
                       balance=balance)
    return fit, start, (contexts, features, labels, offsets, 1.0, ridge, balance)


@pytest.mark.parametrize("seed, one_hot, sparse, ridge, balance", CASES)
def test_fit_is_a_stationary_point(seed, one_hot, sparse, ridge, balance, user_layout):
    fit, start, args = fitted(seed, one_hot, sparse, ridge, balance)
    assert fit.converged
    grad = factored_gradient(fit.left, fit.right, *args)
    start_grad = factored_gradient(*start, *args)
    assert flat_norm(grad) <= 1e-6 * flat_norm(start_grad)
    # Scale-free as well: at a stationary point the ridge term ridge * (A, B) balances the data
    # term, so this is the gradient relative to either of its two parts.
    assert flat_norm(grad) <= 1e-6 * ridge * flat_norm((fit.left, fit.right))
    # The reported certificate is the true one.
    assert fit.gradient_norm == pytest.approx(flat_norm(grad), rel=1e-6, abs=1e-12)
    assert fit.relative_gradient_norm == pytest.approx(flat_norm(grad) / flat_norm(start_grad), rel=1e-6,
                                                       abs=1e-12)
    assert fit.objective == pytest.approx(factored_objective(fit.left, fit.right, *args), rel=1e-12)
    assert fit.objective <= factored_objective(*start, *args)
    np.testing.assert_allclose(fit.matrix, fit.left @ fit.right.T)


@pytest.mark.parametrize("seed, one_hot, sparse, ridge, balance", CASES)
def test_stationary_points_are_balanced(seed, one_hot, sparse, ridge, balance, user_layout):
    """``A^T dF/dA - (dF/dB)^T B = ridge D + balance (A^T A D + D B^T B)`` with ``D = A^T A - B^T B``
    (the loss terms cancel), and this map of ``D`` is positive definite: at a stationary point
    ``D = 0``. Its size is bounded by ``(||A|| + ||B||) ||grad F|| / ridge``."""
    fit, _, args = fitted(seed, one_hot, sparse, ridge, balance)
    left_gram, right_gram = fit.left.T @ fit.left, fit.right.T @ fit.right
    assert np.linalg.norm(left_gram - right_gram) <= 1e-5 * np.linalg.norm(left_gram)


def test_one_hot_contexts_give_rank_r_and_match_dense_contexts():
    rank = 3
    contexts, features, labels, offsets = bilinear_problem(8, n=600, context_dim=15, n_features=9, rank=rank,
                                                            one_hot=True)
    start = spectral_start(contexts, features, labels, offsets, rank, 1.0)
    sparse_fit = fit_factored(contexts, features, labels, rank, initial=start, offsets=offsets, ridge=0.5)
    singular = np.linalg.svd(sparse_fit.matrix, compute_uv=False)
    assert singular[rank - 1] > 1e-3 * singular[0]  # exactly rank r: not collapsed ...
    assert singular[rank] <= 1e-12 * singular[0]  # ... and no more
    dense_start = spectral_start(contexts.toarray(), features, labels, offsets, rank, 1.0)
    np.testing.assert_allclose(dense_start[0], start[0], atol=1e-10)
    dense_fit = fit_factored(contexts.toarray(), features, labels, rank, initial=dense_start, offsets=offsets,
                             ridge=0.5)
    # Same objective, same start: same answer up to the stopping tolerance.
    np.testing.assert_allclose(dense_fit.matrix, sparse_fit.matrix, atol=1e-6 * np.abs(sparse_fit.matrix).max())


@pytest.mark.parametrize("one_hot", [True, "equal"])
def test_sparse_and_dense_features_give_the_same_fit(one_hot):
    """The passes over sparse and dense features differ: the same objective from the same start
    must give the same answer."""
    rank = 2
    contexts, features, labels, offsets = bilinear_problem(16, n=500, context_dim=10, n_features=9, rank=rank,
                                                            one_hot=one_hot, sparse=True)
    start = spectral_start(contexts, features.toarray(), labels, offsets, rank, 1.0)
    np.testing.assert_allclose(spectral_start(contexts, features, labels, offsets, rank, 1.0)[1], start[1],
                               atol=1e-10 * np.abs(start[1]).max())
    user_fit = fit_factored(contexts, features, labels, rank, initial=start, offsets=offsets, ridge=0.5, tol=1e-10)
    general_fit = fit_factored(contexts, features.toarray(), labels, rank, initial=start, offsets=offsets,
                               ridge=0.5, tol=1e-10)
    assert user_fit.converged and general_fit.converged
    assert user_fit.objective == pytest.approx(general_fit.objective, rel=1e-12)
    np.testing.assert_allclose(user_fit.matrix, general_fit.matrix, atol=1e-7 * np.abs(general_fit.matrix).max())


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("one_hot", ["equal", True, "gap"])
def test_quasi_newton_steps_reach_the_minimiser_of_newtons_method(monkeypatch, one_hot, projected):
    """With one-hot contexts (P-ShareLoRA) the fit starts with L-BFGS steps: joint ones on (A, B)
    down to 1e-3 of the start's gradient, or, for large sparse problems (forced here by the layout
    bound), steps on B with every user's factor solved exactly, down to the tolerance. On a problem
    with one minimum up to the symmetry of the factorisation, either gives the same ``A B^T`` as
    Newton's method alone from the same start (users with equal or unequal numbers of pairs, or
    none)."""
    import agents.factorized

    rank = 2
    contexts, features, labels, offsets = bilinear_problem(24, n=3000, context_dim=12, n_features=9, rank=rank,
                                                            one_hot=one_hot, sparse=True)
    start = spectral_start(contexts, features, labels, offsets, rank, 1.0)
    if projected:
        monkeypatch.setattr(agents.factorized, "_LIFTED_MAX_ENTRIES", 0)
    stepped = fit_factored(contexts, features, labels, rank, initial=start, offsets=offsets, ridge=0.5, tol=1e-10)
    monkeypatch.setattr(agents.factorized, "_LIFTED_MAX_ENTRIES", 2**20)
    monkeypatch.setattr(agents.factorized, "_QUASI_NEWTON_LEVEL", 2.0)  # the start already meets it
    newton = fit_factored(contexts, features, labels, rank, initial=start, offsets=offsets, ridge=0.5, tol=1e-10)
    assert stepped.converged and newton.converged
    assert stepped.quasi_newton_steps > 0 and newton.quasi_newton_steps == 0
    if projected:
        assert stepped.iterations == 0  # no Newton step was needed
    assert stepped.objective == pytest.approx(newton.objective, rel=1e-12)
    np.testing.assert_allclose(stepped.matrix, newton.matrix, atol=1e-7 * np.abs(newton.matrix).max())


def zero_sum_problem(seed):
    """Features whose rows sum to zero (like one-hot visit-count differences): the all-ones
    direction is never seen."""
    contexts, features, labels, offsets = bilinear_problem(seed, n=400, context_dim=8, n_features=6, one_hot=True,
                                                            sparse=True)
    dense_features = features.toarray()
    dense_features[:, -1] = -dense_features[:, :-1].sum(axis=1)
    hidden = np.ones((6, 1)) / np.sqrt(6)
    return contexts, scipy.sparse.csr_matrix(dense_features), labels, offsets, hidden


def test_hidden_directions_keep_the_minimiser_and_stay_at_zero():
    """Along a direction no ``z_j`` sees, ``F`` is the ridge alone: declaring it changes nothing
    but the path, and the answer has no component along it."""
    contexts, features, labels, offsets, hidden = zero_sum_problem(17)
    start = spectral_start(contexts, features, labels, offsets, 2, 1.0)
    assert np.abs(hidden.T @ start[1]).max() > 1e-3  # the start does lean on it
    plain = fit_factored(contexts, features, labels, 2, initial=start, offsets=offsets, ridge=0.7, tol=1e-10)
    restricted = fit_factored(contexts, features, labels, 2, initial=start, offsets=offsets, ridge=0.7,
                              hidden=hidden, tol=1e-10)
    assert plain.converged and restricted.converged
    assert np.abs(hidden.T @ restricted.right).max() <= 1e-12 * np.abs(restricted.right).max()
    # At plain's stationary point the ridge alone acts along N: ridge ||N^T B|| <= ||grad F||.
    assert np.abs(hidden.T @ plain.right).max() <= plain.gradient_norm / 0.7 + 1e-12
    assert restricted.objective == pytest.approx(plain.objective, rel=1e-12)
    np.testing.assert_allclose(restricted.matrix, plain.matrix, atol=1e-7 * np.abs(plain.matrix).max())


def test_hidden_directions_seen_by_the_data_are_refused():
    contexts, features, labels, offsets, hidden = zero_sum_problem(18)
    with pytest.raises(ValueError, match="hidden must be orthogonal to every feature difference"):
        fit_factored(contexts, features, labels, 2, offsets=offsets, hidden=np.eye(6)[:, :1])
    # The check is relative to each z_j: scaling the data does not let a seen direction through.
    with pytest.raises(ValueError, match="hidden must be orthogonal to every feature difference"):
        fit_factored(contexts, 1e-9 * features, labels, 2, offsets=offsets, beta=1e9, hidden=np.eye(6)[:, :1])
    with pytest.raises(ValueError, match="hidden must have orthonormal columns"):
        fit_factored(contexts, features, labels, 2, offsets=offsets, hidden=2 * hidden)
    with pytest.raises(ValueError, match=r"hidden must have shape \(6, m\)"):
        fit_factored(contexts, features, labels, 2, offsets=offsets, hidden=np.ones(6))


@pytest.mark.parametrize("sparse", [True, False])
def test_feature_norms_match_dense_norms(sparse):
    """Row norms from segment sums of the non-zeros, with empty rows (all-zero z_j) in between."""
    from agents.factorized import _Pairs

    contexts, features, _, _ = bilinear_problem(21, n=40, sparse=sparse)
    features = dense(features)
    features[[0, 7, 8, 39]] = 0.0  # empty rows first, consecutive and last
    if sparse:
        features = scipy.sparse.csr_matrix(features)
    norms = _Pairs(contexts, features, None).feature_norms()
    np.testing.assert_allclose(norms, np.linalg.norm(dense(features), axis=1), rtol=1e-14, atol=0)
    assert np.all(norms[[0, 7, 8, 39]] == 0)


def test_layout_follows_the_cost_of_a_pass(monkeypatch):
    """One-hot contexts are laid out user by user. With sparse features the lifted layout moves one
    number per non-zero but fills a d x N array per pass: it is taken when d N is below the r - 1
    numbers per non-zero it saves and within _LIFTED_MAX_ENTRIES; beyond that bound the problem is
    fitted by variable projection on the plain user layout."""
    import agents.factorized
    from agents.factorized import _Bilinear, _LiftedUserPairs, _UserPairs

    rank = 3
    tall = bilinear_problem(19, n=2000, context_dim=10, n_features=8, one_hot=True, sparse=True)
    wide = bilinear_problem(19, n=30, context_dim=40, n_features=8, one_hot=True, sparse=True)
    dense_features = bilinear_problem(19, n=200, context_dim=10, n_features=8, one_hot=True)
    for (contexts, features, labels, offsets), lifted in ((tall, True), (wide, False), (dense_features, False)):
        problem = _Bilinear(contexts, features, labels, offsets, 1.0, 1.0, 0.0, rank)
        assert isinstance(problem.pairs, _UserPairs) and isinstance(problem.pairs, _LiftedUserPairs) == lifted
        assert np.all(np.diff(problem.pairs.groups) >= 0) and not problem.projected
    monkeypatch.setattr(agents.factorized, "_LIFTED_MAX_ENTRIES", 79)  # d N = 80
    problem = _Bilinear(*tall, 1.0, 1.0, 0.0, rank)
    assert problem.projected and type(problem.pairs) is _UserPairs


@pytest.mark.parametrize("one_hot, sparse", LAYOUTS)
def test_reordering_the_pairs_by_user_keeps_the_objective(one_hot, sparse):
    from agents.factorized import _Bilinear

    contexts, features, labels, offsets = bilinear_problem(19, n=90, one_hot=one_hot, sparse=sparse)
    problem = _Bilinear(contexts, features, labels, offsets, 1.0, 1.0, 0.0, 2)
    rng = np.random.default_rng(3)
    left, right = rng.normal(size=(contexts.shape[1], 2)), rng.normal(size=(features.shape[1], 2))
    point = np.concatenate([np.ravel(left), np.ravel(right)])
    expected = factored_objective(left, right, contexts, features, labels, offsets, 1.0, 1.0, 0.0)
    assert problem.value_and_gradient(point)[0] == pytest.approx(expected, rel=1e-12)


def test_inputs_are_taken_as_arrays_and_rank_is_checked():
    contexts, features, labels, offsets = bilinear_problem(20, n=200, one_hot=True, sparse=True)
    from_lists = fit_factored(contexts, features, list(labels), 2, offsets=list(offsets), ridge=0.5)
    from_arrays = fit_factored(contexts, features, labels, 2, offsets=offsets, ridge=0.5)
    np.testing.assert_array_equal(from_lists.matrix, from_arrays.matrix)
    with pytest.raises(ValueError, match=r"rank must be between 1 and min\(d_x, d\) = 5, got 6"):
        fit_factored(contexts, features, labels, 6, offsets=offsets)


def test_spectral_start_is_balanced_rank_r():
    contexts, features, labels, offsets = bilinear_problem(9, n=200, context_dim=6, n_features=8, rank=2)
    left, right = spectral_start(contexts, features, labels, offsets, 2, 1.0)
    assert left.shape == (6, 2) and right.shape == (8, 2)
    np.testing.assert_allclose(left.T @ left, right.T @ right, atol=1e-12 * np.abs(left).max() ** 2)
    assert np.linalg.matrix_rank(left @ right.T) == 2


def test_convergence_warning_when_out_of_iterations():
    contexts, features, labels, offsets = bilinear_problem(10)
    start = spectral_start(contexts, features, labels, offsets, 2, 1.0)
    with pytest.warns(ConvergenceWarning):
        fit = fit_factored(contexts, features, labels, 2, initial=start, offsets=offsets, ridge=0.1, max_iter=1)
    assert not fit.converged
    assert fit.iterations <= 1


def test_no_iterations_return_the_start_for_one_hot_contexts_too():
    """``max_iter=0`` skips the L-BFGS warm-up of one-hot contexts as well as the Newton steps."""
    contexts, features, labels, offsets = bilinear_problem(11, one_hot=True, sparse=True)
    start = spectral_start(contexts, features, labels, offsets, 2, 1.0)
    with pytest.warns(ConvergenceWarning):
        fit = fit_factored(contexts, features, labels, 2, initial=start, offsets=offsets, ridge=0.1, max_iter=0)
    assert fit.iterations == 0 and fit.quasi_newton_steps == 0 and not fit.converged
    np.testing.assert_array_equal(fit.left, start[0])
    np.testing.assert_array_equal(fit.right, start[1])


# -- the Newton system: eliminated contexts' block and its Schur complement ----------------------

@pytest.mark.parametrize("one_hot, sparse", LAYOUTS)
@pytest.mark.parametrize("balance", [0.0, 0.7])
def test_schur_complement_matches_the_dense_hessian(one_hot, sparse, balance, user_layout):
    """The solver eliminates ``dA`` with an explicit ``H_AA`` (block diagonal for one-hot contexts)
    and multiplies by ``S = H_BB - H_BA H_AA^{-1} H_AB``; both must agree with the dense Hessian
    assembled from the (finite-difference-checked) Hessian-vector products. At a balanced point
    ``H_AA`` is positive definite (its balancing part ``mu A (dA^T A + A^T dA)`` is), so the solver's
    inverse is the exact one. Both sides are exact linear algebra: only rounding separates them."""
    from agents.factorized import _Curvature, _LiftedUserPairs

    contexts, features, labels, offsets = bilinear_problem(11, n=80, one_hot=one_hot, sparse=sparse)
    rank, beta, ridge = 2, 1.2, 0.3
    problem = _Bilinear(contexts, features, labels, offsets, beta, ridge, balance, rank)
    assert isinstance(problem.pairs, _LiftedUserPairs) == bool(one_hot and sparse and user_layout == "lifted")
    rng = np.random.default_rng(12)
    d_x, d = contexts.shape[1], features.shape[1]
    left, right = balanced_factors(rng.normal(size=(d_x, d)), rank)
    point = np.concatenate([np.ravel(left), np.ravel(right)])
    hessian = np.column_stack([problem.hessian_vector(point, e) for e in np.eye(point.size)])
    a = d_x * rank
    h_aa, h_ab, h_bb = hessian[:a, :a], hessian[:a, a:], hessian[a:, a:]
    curvature = _Curvature(problem, problem.state(left, right))

    vectors = rng.normal(size=(d_x, rank))
    np.testing.assert_allclose(curvature.solve_left(vectors).ravel(), np.linalg.solve(h_aa, vectors.ravel()),
                               rtol=1e-9, atol=1e-12)
    schur = h_bb - h_ab.T @ np.linalg.solve(h_aa, h_ab)
    direction = rng.normal(size=(d, rank))
    product, d_left = curvature.schur(direction)
    np.testing.assert_allclose(product.ravel(), schur @ direction.ravel(), rtol=1e-9,
                               atol=1e-10 * np.abs(schur).max())
    np.testing.assert_allclose(d_left.ravel(), -np.linalg.solve(h_aa, h_ab @ direction.ravel()), rtol=1e-9,
                               atol=1e-12)


def test_spectral_start_by_lanczos_equals_the_full_svd(monkeypatch):
    """Large moment matrices take the top-r SVD by Lanczos (forced here by its size bound): the same
    start, up to the rounding of the two algorithms, as the full decomposition."""
    import agents.factorized

    contexts, features, labels, offsets = bilinear_problem(25, n=3000, context_dim=40, n_features=30, rank=2,
                                                            one_hot="equal", sparse=True)
    full = spectral_start(contexts, features, labels, offsets, 2, 1.0)
    monkeypatch.setattr(agents.factorized, "_LANCZOS_MIN_SIDE", 0)
    calls = []
    original = scipy.sparse.linalg.svds
    monkeypatch.setattr(scipy.sparse.linalg, "svds", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    lanczos = spectral_start(contexts, features, labels, offsets, 2, 1.0)
    assert calls
    # Singular vectors are defined up to sign: compare the rank-2 products A B^T.
    np.testing.assert_allclose(lanczos[0] @ lanczos[1].T, full[0] @ full[1].T,
                               atol=1e-8 * np.abs(full[0] @ full[1].T).max())
