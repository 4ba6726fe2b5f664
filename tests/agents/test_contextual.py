"""Contextual estimators: RTV coordinates (LoCo-RLHF), their geometry, fits and confidence sets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from scipy.stats import chi2

from agents import (
    BilinearCoordinates,
    FullRankContextual,
    LoCoPRS,
    comparison_data,
    fit_factored,
    spectral_start,
    rtv_coordinates,
    theory_radius,
)
from lr_mdp_env import collect_preferences, contextual_rewards, principal_angle_distance, random_mdp

RIDGE = 0.5


def orthonormal(rng, rows, columns):
    return np.linalg.qr(rng.normal(size=(rows, columns)))[0]


def complement(basis):
    return np.linalg.qr(basis, mode="complete")[0][:, basis.shape[1]:]


def sigmoid(eta):
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


@pytest.fixture(scope="module")
def world():
    mdp = random_mdp(5, 3, 2, features="dense", n_features=6, seed=0)  # d = 6, all identifiable
    rewards = contextual_rewards(6, 4, 2, n_users=40, mdp=mdp, scale=2.0, seed=1)  # d_x = 4, r = 2
    dataset = collect_preferences(mdp, rewards, 25, seed=2)
    return mdp, rewards, dataset


def differences(mdp, dataset):
    return (mdp.trajectory_features(dataset.states1, dataset.actions1)
            - mdp.trajectory_features(dataset.states0, dataset.actions0))


# -- RTV geometry --------------------------------------------------------------------------------

@pytest.mark.parametrize("context_dim, n_features, rank", [(4, 6, 1), (4, 6, 2), (3, 3, 3), (5, 2, 2),
                                                           (2, 7, 2), (6, 6, 1), (1, 4, 1)])
def test_rtv_dimension_and_isometry(context_dim, n_features, rank):
    rng = np.random.default_rng(context_dim * 100 + n_features * 10 + rank)
    coordinates = rtv_coordinates(orthonormal(rng, context_dim, rank), orthonormal(rng, n_features, rank))
    k = (context_dim + n_features) * rank - rank**2
    assert coordinates.dimension == k
    # kappa -> Theta_c is an isometry onto the kept blocks, and coordinates() inverts it there.
    kappa = rng.normal(size=k)
    theta_c = coordinates.matrix(kappa)
    assert theta_c.shape == (context_dim, n_features)
    assert np.linalg.norm(theta_c) == pytest.approx(np.linalg.norm(kappa), rel=1e-12)
    np.testing.assert_allclose(coordinates.coordinates(theta_c), kappa, atol=1e-12)


def test_exact_subspaces_reproduce_the_bilinear_reward():
    rng = np.random.default_rng(1)
    context_dim, n_features, rank = 5, 7, 2
    left, right = orthonormal(rng, context_dim, rank), orthonormal(rng, n_features, rank)
    theta_c = left @ rng.normal(size=(rank, rank)) @ right.T  # rank r, built from the subspaces
    coordinates = rtv_coordinates(left, right)
    kappa = coordinates.coordinates(theta_c)
    np.testing.assert_allclose(coordinates.matrix(kappa), theta_c, atol=1e-12)
    contexts, phis = rng.normal(size=(20, context_dim)), rng.normal(size=(20, n_features))
    rewards = np.einsum("ja,ab,jb->j", contexts, theta_c, phis)
    np.testing.assert_allclose(coordinates.features(contexts, phis) @ kappa, rewards, atol=1e-12)
    # The whole tangent space U A^T + B V^T is kept, not only the rank-r matrices.
    tangent = left @ rng.normal(size=(rank, n_features)) + rng.normal(size=(context_dim, rank)) @ right.T
    np.testing.assert_allclose(coordinates.matrix(coordinates.coordinates(tangent)), tangent, atol=1e-12)


def test_dropped_block_is_second_order_in_the_subspace_error():
    """Rotating both subspaces by an angle ``eps`` leaves ``U_perp^T Theta V_perp`` of size
    ``sin(eps)^2 ||S||``: the RTV truncation error is quadratic while the subspaces err linearly."""
    rng = np.random.default_rng(2)
    context_dim, n_features, rank = 6, 8, 2
    left, right = orthonormal(rng, context_dim, rank), orthonormal(rng, n_features, rank)
    theta_c = left @ np.diag([2.0, 1.0]) @ right.T
    left_turn = complement(left)[:, :rank]
    right_turn = complement(right)[:, :rank]
    angles = np.logspace(-4, -1, 7)
    dropped, subspace_errors = [], []
    for eps in angles:
        left_hat = left * np.cos(eps) + left_turn * np.sin(eps)
        right_hat = right * np.cos(eps) + right_turn * np.sin(eps)
        coordinates = rtv_coordinates(left_hat, right_hat)
        residual = theta_c - coordinates.matrix(coordinates.coordinates(theta_c))
        # The residual is exactly the dropped block, rotated back.
        block = complement(left_hat).T @ theta_c @ complement(right_hat)
        assert np.linalg.norm(residual) == pytest.approx(np.linalg.norm(block), rel=1e-8, abs=1e-15)
        dropped.append(np.linalg.norm(residual))
        subspace_errors.append(principal_angle_distance(left, left_hat))
    slope = np.polyfit(np.log(angles), np.log(dropped), 1)[0]
    assert 1.9 <= slope <= 2.1
    assert np.polyfit(np.log(angles), np.log(subspace_errors), 1)[0] == pytest.approx(1.0, abs=0.05)
    # Exactly: U_perp_hat^T U = -sin(eps) e, so the block is sin(eps)^2 times diag(2, 1).
    np.testing.assert_allclose(dropped, np.sin(angles) ** 2 * np.sqrt(5.0), rtol=1e-6)


@pytest.mark.parametrize("kind", ["rtv", "full"])
def test_basis_for_maps_coordinates_to_the_context_reward(kind):
    rng = np.random.default_rng(3)
    context_dim, n_features, rank = 4, 5, 2
    if kind == "rtv":
        coordinates = rtv_coordinates(orthonormal(rng, context_dim, rank), orthonormal(rng, n_features, rank))
    else:
        coordinates = BilinearCoordinates([(np.eye(context_dim), np.eye(n_features))])
    kappa = rng.normal(size=coordinates.dimension)
    theta_c = coordinates.matrix(kappa)
    for context in rng.normal(size=(5, context_dim)):
        basis = coordinates.basis_for(context)
        assert basis.shape == (n_features, coordinates.dimension)
        np.testing.assert_allclose(basis @ kappa, theta_c.T @ context, atol=1e-12)
        # G = B_x^T sends a feature vector to the features of (x, v).
        vector = rng.normal(size=n_features)
        np.testing.assert_allclose(basis.T @ vector, coordinates.features(context[None], vector[None])[0],
                                   atol=1e-12)


# -- fits ----------------------------------------------------------------------------------------

def loss_gradient(theta_c, contexts, z, labels, offsets, beta):
    """``G = beta sum_j (sigmoid(eta_j) - y_j) x_j z_j^T``, the gradient in ``Theta_c``."""
    eta = offsets + beta * np.einsum("ja,ab,jb->j", contexts, theta_c, z)
    return beta * contexts.T @ ((sigmoid(eta) - labels)[:, None] * z)


def test_loco_refit_is_stationary_in_its_coordinates(world):
    """The refit minimises ``loss(Theta(kappa)) + ridge/2 ||kappa||^2`` over the tangent space
    ``T = {U A^T + B V^T}``; ``kappa -> Theta`` is an isometry onto ``T``, so stationarity is
    ``P_T(G) + ridge Theta_hat = 0`` with ``P_T(G) = G - (I - UU^T) G (I - VV^T)``."""
    mdp, rewards, dataset = world
    estimator = LoCoPRS(2, ridge=RIDGE, beta=1.2).fit(dataset, mdp)
    d_x, d = rewards.context_dim, mdp.n_features
    k = (d_x + d) * 2 - 4
    assert estimator.kappa_hat.shape == (k,) and estimator.fisher_.shape == (1, k, k)
    left, right = estimator.context_subspace, estimator.subspace
    np.testing.assert_allclose(left.T @ left, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(right.T @ right, np.eye(2), atol=1e-12)
    outside_left, outside_right = np.eye(d_x) - left @ left.T, np.eye(d) - right @ right.T

    def tangent(matrix):
        return matrix - outside_left @ matrix @ outside_right

    theta_c = estimator.theta_c_hat
    np.testing.assert_allclose(tangent(theta_c), theta_c, atol=1e-12)
    z, contexts, zeros = differences(mdp, dataset), dataset.contexts, np.zeros(len(dataset))
    grad = tangent(loss_gradient(theta_c, contexts, z, dataset.labels, zeros, 1.2)) + RIDGE * theta_c
    at_zero = tangent(loss_gradient(0 * theta_c, contexts, z, dataset.labels, zeros, 1.2))
    assert np.linalg.norm(grad) <= 1e-6 * np.linalg.norm(at_zero)


def test_loco_subspaces_come_from_the_balanced_rank_r_fit(world):
    mdp, rewards, dataset = world
    estimator = LoCoPRS(2, ridge=RIDGE, balance=0.5).fit(dataset, mdp)
    data = comparison_data(dataset, mdp)
    start = spectral_start(data.contexts, data.differences, data.labels, data.offsets, 2, 1.0)
    joint = fit_factored(data.contexts, data.differences, data.labels, 2, initial=start, offsets=data.offsets,
                         ridge=RIDGE, balance=0.5, tol=1e-7)
    left, _, right_t = np.linalg.svd(joint.matrix)
    assert principal_angle_distance(left[:, :2], estimator.context_subspace) < 1e-6
    assert principal_angle_distance(right_t[:2].T, estimator.subspace) < 1e-6


def test_full_rank_equals_a_generic_optimiser(world):
    mdp, rewards, dataset = world
    estimator = FullRankContextual(ridge=RIDGE).fit(dataset, mdp)
    z, contexts, labels = differences(mdp, dataset), dataset.contexts, dataset.labels
    d_x, d = rewards.context_dim, mdp.n_features
    design = (contexts[:, :, None] * z[:, None, :]).reshape(len(dataset), -1)  # vec(x z^T)

    def objective(flat):
        eta = design @ flat
        return np.sum(np.logaddexp(0, eta) - labels * eta) + 0.5 * RIDGE * flat @ flat

    def gradient(flat):
        return design.T @ (sigmoid(design @ flat) - labels) + RIDGE * flat

    def hessian(flat):
        probability = sigmoid(design @ flat)
        return design.T @ ((probability * (1 - probability))[:, None] * design) + RIDGE * np.eye(flat.size)

    # A second-order reference (the problem is small and strongly convex): first-order methods
    # stall short of the 5e-7 gradient this comparison needs.
    result = scipy.optimize.minimize(objective, np.zeros(d_x * d), jac=gradient, hess=hessian, method="trust-exact",
                                     options={"gtol": 1e-11, "maxiter": 200})
    assert np.linalg.norm(gradient(result.x)) / RIDGE < 5e-7  # strong convexity: distance bound
    np.testing.assert_allclose(estimator.theta_c_hat, result.x.reshape(d_x, d), atol=1e-6)
    assert estimator.coordinates_.dimension == d_x * d


def test_oracle_subspaces_are_used_as_given(world):
    mdp, rewards, dataset = world
    skew = np.array([[1.0, 2.0], [0.0, 3.0]])
    estimator = LoCoPRS(2, ridge=RIDGE, subspaces=(rewards.context_subspace @ skew, rewards.subspace)).fit(
        dataset, mdp)
    assert principal_angle_distance(rewards.context_subspace, estimator.context_subspace) < 1e-12
    assert principal_angle_distance(rewards.subspace, estimator.subspace) < 1e-12
    assert "joint" not in estimator.diagnostics
    # The truth lies in the oracle's coordinates: its projection is itself.
    coordinates = estimator.coordinates_
    np.testing.assert_allclose(coordinates.matrix(coordinates.coordinates(rewards.theta_c)), rewards.theta_c,
                               atol=1e-12)


# -- predictions and confidence sets --------------------------------------------------------------

@pytest.mark.parametrize("estimator_type", ["loco", "full"])
def test_estimates_sets_and_logits_are_consistent(world, estimator_type):
    mdp, rewards, dataset = world
    estimator = (LoCoPRS(2, ridge=RIDGE, beta=0.7, subspace_error="ignore") if estimator_type == "loco"
                 else FullRankContextual(ridge=RIDGE, beta=0.7)).fit(dataset, mdp)
    np.testing.assert_allclose(estimator.theta_hat, rewards.contexts @ estimator.theta_c_hat, atol=1e-12)
    new_contexts = rewards.sample_contexts(3, seed=5, shifted=True)
    np.testing.assert_allclose(estimator.theta_for(new_contexts), new_contexts @ estimator.theta_c_hat)
    # The sets are centred at the inference refit kappa_0 (one for every context), each set's
    # theta_hat = B_x kappa_0 a member of it.
    kappa_0 = estimator.confidence_set(0).center
    for user in (0, 7):
        region = estimator.confidence_set(user)
        np.testing.assert_allclose(region.theta_hat, estimator.coordinates_.matrix(kappa_0).T @ rewards.contexts[user],
                                   atol=1e-12)
        assert region.contains(region.theta_hat)
    for context in new_contexts:
        region = estimator.confidence_set(context=context)
        np.testing.assert_allclose(region.theta_hat, estimator.coordinates_.matrix(kappa_0).T @ context, atol=1e-12)
        np.testing.assert_array_equal(region.center, kappa_0)
    data = comparison_data(dataset, mdp, beta=0.7)
    z = differences(mdp, dataset)
    np.testing.assert_allclose(estimator.pair_logits(data),
                               0.7 * np.einsum("ja,ab,jb->j", dataset.contexts, estimator.theta_c_hat, z),
                               atol=1e-10)


def test_covers_agrees_with_the_sets_of_contexts(world):
    """``covers(Theta)`` is ``||kappa(Theta) - kappa_0||_M <= radius``. Every context's set is
    the image of that ellipsoid under ``B_x``, so a covered ``Theta`` gives members
    ``Theta^T x`` of every context's set, within distance ``||kappa(Theta) - kappa_0||_M``."""
    mdp, rewards, dataset = world
    estimator = LoCoPRS(2, ridge=RIDGE, subspace_error="ignore").fit(dataset, mdp)
    rng = np.random.default_rng(6)
    coordinates = estimator.coordinates_
    contexts = rng.normal(size=(6, rewards.context_dim))
    some_set = estimator.confidence_set(context=contexts[0])
    matrix, radius, kappa_0 = some_set.matrix, some_set.radius, some_set.center
    for scale in (0.2, 0.7, 0.99, 1.01, 1.5, 4.0):
        direction = rng.normal(size=coordinates.dimension)
        direction *= scale * radius / np.sqrt(direction @ matrix @ direction)
        theta_c = coordinates.matrix(kappa_0 + direction)
        assert estimator.covers(theta_c) == (scale <= 1.0)
        for context in contexts:
            region = estimator.confidence_set(context=context)
            member = theta_c.T @ context
            assert region.distance(member) <= scale * radius * (1 + 1e-8)
            if scale <= 1.0:
                assert region.contains(member)
                vector = rng.normal(size=mdp.n_features)
                assert region.lower(vector) - 1e-9 <= member @ vector <= region.upper(vector) + 1e-9
    # A matrix off the kept blocks is judged by its projection onto them.
    dropped = complement(estimator.context_subspace) @ rng.normal(size=(rewards.context_dim - 2, mdp.n_features - 2)) \
        @ complement(estimator.subspace).T
    assert estimator.covers(coordinates.matrix(kappa_0) + 100 * dropped)


@pytest.mark.parametrize("confidence", ["wald", "theory"])
def test_contextual_set_matrix_and_radius(world, confidence):
    mdp, rewards, dataset = world
    estimator = LoCoPRS(2, ridge=RIDGE, confidence=confidence, delta=0.2, norm_bound=3.0,
                        inference_ridge=1e-3,
                        subspace_error="ignore").fit(dataset, mdp)
    features = estimator.coordinates_.features(dataset.contexts, differences(mdp, dataset))
    k = estimator.coordinates_.dimension
    region = estimator.confidence_set(0)
    if confidence == "wald":
        eta = features @ region.center
        fisher = (features.T * (sigmoid(eta) * sigmoid(-eta))) @ features + 1e-3 * np.eye(k)
        np.testing.assert_allclose(region.matrix, fisher, rtol=1e-9, atol=1e-12)
        assert region.radius == pytest.approx(np.sqrt(chi2.ppf(0.8, k)), rel=1e-12)
    else:
        np.testing.assert_array_equal(region.center, estimator.kappa_hat)
        gram = features.T @ features + RIDGE * np.eye(k)
        np.testing.assert_allclose(region.matrix, gram, rtol=1e-9, atol=1e-12)
        bound = np.max(np.linalg.norm(features, axis=1))
        assert region.radius == pytest.approx(theory_radius(gram, RIDGE, 0.2, bound, 3.0), rel=1e-10)


def test_contextual_errors(world):
    mdp, rewards, dataset = world
    with pytest.raises(ValueError, match="rank"):
        LoCoPRS(5, ridge=RIDGE).fit(dataset, mdp)  # d_x = 4
    estimator = FullRankContextual(ridge=RIDGE).fit(dataset, mdp)
    with pytest.raises(ValueError, match="exactly one"):
        estimator.confidence_set()
    with pytest.raises(ValueError, match="exactly one"):
        estimator.confidence_set(0, context=np.zeros(4))
    with pytest.raises(ValueError, match="context"):
        estimator.confidence_set(context=np.zeros(5))
    with pytest.raises(ValueError, match="user"):
        estimator.confidence_set(40)
    with pytest.raises(ValueError, match="subspaces"):
        LoCoPRS(2, subspaces=(np.zeros(4), np.eye(6)[:, :2]))


@pytest.mark.parametrize("confidence", ["wald", "likelihood", "finite", "theory"])
@pytest.mark.parametrize("estimator_type", ["loco", "full"])
def test_every_kind_of_contextual_set_contains_its_centre_and_agrees_with_covers(world, confidence,
                                                                                 estimator_type):
    """Each context's set contains its own centre ``B_x kappa_0``; ``covers(Theta)`` is membership of
    ``kappa(Theta)`` in the set of coordinates, so it agrees with the contexts' sets: a covered
    ``Theta`` gives a member ``Theta^T x`` of every context's set (checked through the support
    function, which every kind has)."""
    mdp, rewards, dataset = world
    # The set of the coordinates alone (LoCo's default adds the dropped block: tested with
    # agents.subspace_error).
    estimator = (LoCoPRS(2, confidence=confidence, subspace_error="ignore") if estimator_type == "loco"
                 else FullRankContextual(confidence=confidence)).fit(dataset, mdp)
    coordinates = estimator.coordinates_
    rng = np.random.default_rng(8)
    kappa_0 = estimator.confidence_set(0).center
    assert estimator.covers(coordinates.matrix(kappa_0))
    for user in (0, 5):
        region = estimator.confidence_set(user)
        assert region.contains(region.theta_hat)
    # A point along a random direction, inside or outside: covers decides, and members are members.
    direction = rng.normal(size=coordinates.dimension)
    region = estimator.confidence_set(0)
    if confidence in ("wald", "theory"):  # M-norm 2 radius: outside, however large the radius
        far = 2 * region.radius / np.sqrt(direction @ region.matrix @ direction)
    else:
        far = 1e3 / np.linalg.norm(direction)
    for step, inside in ((1e-3 / np.linalg.norm(direction), True), (far, False)):
        theta_c = coordinates.matrix(kappa_0 + step * direction)
        covered = estimator.covers(theta_c)
        assert covered == inside
        region = estimator.confidence_set(context=rewards.contexts[3])
        vector = rng.normal(size=mdp.n_features)
        if covered:
            assert region.lower(vector) - 1e-7 <= theta_c.T @ rewards.contexts[3] @ vector \
                <= region.upper(vector) + 1e-7
