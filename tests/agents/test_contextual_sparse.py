"""The sparse contextual design and its implicit-Hessian fit against the dense RTV path.

With one-hot features the pair differences are sparse, the design ``vec((U^T x) z^T)`` of
:func:`agents.rtv_coordinates` stays sparse and the ridge MLE runs by inexact Newton steps
(conjugate gradients on Hessian-vector products). The oracle here is the paper's RTV layout built
by hand: the three blocks ``(U, V), (U, V_perp), (U_perp, V)``, a dense design and the direct
Newton solver with its ``k x k`` Fisher matrix. The two layouts differ by an isometry of
``kappa``, so the fitted ``Theta_c``, and the Wald set of every context, must agree to the
solvers' tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from agents import BilinearCoordinates, Ellipsoid, FullRankContextual, LoCoPRS, comparison_data, fit_logistic, \
    rtv_coordinates
from agents.confidence import wald_radius
from lr_mdp_env import collect_preferences, contextual_rewards, random_mdp

RIDGE = 0.5


def complement(basis):
    return np.linalg.qr(basis, mode="complete")[0][:, basis.shape[1]:]


@pytest.fixture(scope="module")
def world():
    mdp = random_mdp(12, 3, 3, seed=0)  # one-hot: d = 36, k = (4 + 36) 2 - 4 = 76 >= 64 (the sparse solver)
    rewards = contextual_rewards(mdp.n_features, 4, 2, n_users=60, mdp=mdp, scale=2.0, seed=1)
    dataset = collect_preferences(mdp, rewards, 20, seed=2)
    return mdp, rewards, dataset


def test_sparse_features_equal_the_dense_ones():
    rng = np.random.default_rng(0)
    left, right = np.linalg.qr(rng.normal(size=(4, 2)))[0], np.linalg.qr(rng.normal(size=(9, 2)))[0]
    contexts = rng.normal(size=(15, 4))
    vectors = scipy.sparse.random(15, 9, density=0.3, random_state=1, format="csr")
    for coordinates in (rtv_coordinates(left, right), BilinearCoordinates([(np.eye(4), np.eye(9))])):
        sparse = coordinates.features(contexts, vectors)
        assert scipy.sparse.issparse(sparse)
        np.testing.assert_allclose(sparse.toarray(), coordinates.features(contexts, vectors.toarray()), atol=1e-15)


def test_loco_fit_and_wald_sets_equal_the_dense_rtv_path(world):
    mdp, rewards, dataset = world
    estimator = LoCoPRS(2, ridge=RIDGE, subspace_error="ignore", tol=1e-12).fit(dataset, mdp)
    assert scipy.sparse.issparse(estimator._features)  # premise: the sparse, implicit path ran
    assert estimator.diagnostics["coordinates"]["converged"]
    data = comparison_data(dataset, mdp)
    left, right = estimator.context_subspace, estimator.subspace
    paper = BilinearCoordinates([(left, right), (left, complement(right)), (complement(left), right)])
    dense = paper.features(data.contexts, data.differences.toarray())
    assert paper.dimension == estimator.coordinates_.dimension == 76
    fit = fit_logistic(dense, data.labels, offsets=data.offsets, beta=estimator.beta, ridge=RIDGE, tol=1e-12)
    # Both minimisers meet a gradient tolerance of 1e-12 relative; the loss is strongly convex with
    # modulus RIDGE, so each is within ||grad|| / RIDGE of the optimum: 1e-9 is ample.
    np.testing.assert_allclose(estimator.theta_c_hat, paper.matrix(fit.theta[0]), atol=1e-9)
    inference = fit_logistic(dense, data.labels, offsets=data.offsets, beta=estimator.beta,
                             ridge=estimator.inference_ridge_, tol=1e-12, initial=fit.theta)
    radius = wald_radius(paper.dimension, estimator.delta)
    directions = np.random.default_rng(3).normal(size=(5, mdp.n_features))
    for user in (0, 7, 33):
        context = estimator.user_contexts[user]
        oracle = Ellipsoid(offset=np.zeros(mdp.n_features), basis=paper.basis_for(context),
                           center=inference.theta[0], matrix=inference.fisher[0], radius=radius)
        region = estimator.confidence_set(user)
        # The inference ridge is 1e-4: the centres are within ||grad|| / 1e-4 (gradients of relative
        # size 1e-12), which moves lower() by about 1e-8 on widths of ~1e2; the widths depend on the
        # Fisher matrices alone, equal up to the congruence by the isometry (rounding).
        widths = oracle.width(directions)
        np.testing.assert_allclose(region.lower(directions), oracle.lower(directions), rtol=0, atol=1e-9 * widths.max())
        np.testing.assert_allclose(region.width(directions), widths, rtol=1e-10)


def test_full_rank_contextual_sparse_fit_equals_the_dense_fit(world):
    mdp, _, dataset = world
    estimator = FullRankContextual(ridge=RIDGE, tol=1e-12).fit(dataset, mdp)
    assert scipy.sparse.issparse(estimator._features)
    data = comparison_data(dataset, mdp)
    dense = estimator.coordinates_.features(data.contexts, data.differences.toarray())
    fit = fit_logistic(dense, data.labels, offsets=data.offsets, beta=estimator.beta, ridge=RIDGE, tol=1e-12)
    np.testing.assert_allclose(estimator.kappa_hat, fit.theta[0], atol=1e-9)
    np.testing.assert_allclose(estimator.fisher_[0], fit.fisher[0], rtol=1e-10, atol=1e-10)


def test_implicit_hessian_newton_equals_the_direct_solver():
    rng = np.random.default_rng(4)
    features = scipy.sparse.random(400, 120, density=0.05, random_state=5, format="csr")
    labels = (rng.random(400) < 0.5).astype(float)
    offsets = 0.1 * rng.normal(size=400)
    direct = fit_logistic(features, labels, offsets=offsets, ridge=0.3, tol=1e-12)
    implicit = fit_logistic(features, labels, offsets=offsets, ridge=0.3, tol=1e-12, implicit_hessian=True,
                            fisher=False)
    assert implicit.converged.all() and implicit.fisher is None
    # Strong convexity (modulus 0.3): each point is within ||grad|| / 0.3 of the minimiser.
    bound = (direct.gradient_norm[0] + implicit.gradient_norm[0]) / 0.3
    assert np.linalg.norm(implicit.theta - direct.theta) <= bound + 1e-14
    with pytest.raises(TypeError, match="implicit_hessian"):
        fit_logistic(features, labels, implicit_hessian="yes")
