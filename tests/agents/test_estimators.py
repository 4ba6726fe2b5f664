"""User-indexed reward estimators: each fit is the optimum of its documented objective.

Every objective is rebuilt here from the raw dataset (trajectory features of both trajectories,
labels, users), never from the estimators' internal arrays.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.optimize
from scipy.stats import chi2
from hypothesis import given, settings
from hypothesis import strategies as st

import agents.estimators
import agents.tuning
from agents import (
    FullRankContextual,
    IndependentMLE,
    LoCoPRS,
    OracleSubspaceMLE,
    PooledMLE,
    PShareLoRA,
    comparison_data,
    spectral_start,
    theory_radius,
)
from agents.tuning import held_out_split
from lr_mdp_env import Teacher, collect_preferences, low_rank_rewards, principal_angle_distance, random_mdp

RIDGE = 0.5
N_USERS, RANK = 6, 2


# -- worlds --------------------------------------------------------------------------------------

def make_world(kind, seed=0, n_pairs=50, base=None, equal=0.0):
    if kind == "one_hot":
        mdp = random_mdp(4, 3, 3, seed=seed)  # d = 12, the all-ones direction is unidentified
    elif kind == "one_hot_time":
        mdp = random_mdp(3, 2, 3, features="one_hot_time", seed=seed)  # d = 18, one per step
    else:
        mdp = random_mdp(5, 3, 3, features="dense", n_features=6, seed=seed)
    rewards = low_rank_rewards(mdp.n_features, N_USERS, RANK, mdp=mdp, scale=2.0, base=base, seed=seed + 1)
    dataset = collect_preferences(mdp, rewards, n_pairs, teacher=Teacher(equal=equal), seed=seed + 2)
    return mdp, rewards, dataset


@pytest.fixture(scope="module", params=["one_hot", "one_hot_time", "dense"])
def world(request):
    return make_world(request.param, equal=0.05)


def differences(mdp, dataset):
    """``z_j = psi(tau1_j) - psi(tau0_j)`` from the trajectories, independently of the agents."""
    return (mdp.trajectory_features(dataset.states1, dataset.actions1)
            - mdp.trajectory_features(dataset.states0, dataset.actions0))


def unidentified(mdp):
    """Directions no comparison sees, from the feature kind (independent of the library): the
    normalised indicator of each step's block for one-hot features, none for dense ones."""
    features = np.asarray(mdp.features)
    d = mdp.n_features
    if d == mdp.n_states * mdp.n_actions and np.all(np.isin(features, (0.0, 1.0))):
        return np.ones((d, 1)) / np.sqrt(d)
    if d == mdp.horizon * mdp.n_states * mdp.n_actions and np.all(np.isin(features, (0.0, 1.0))):
        block = mdp.n_states * mdp.n_actions
        return np.kron(np.eye(mdp.horizon), np.ones((block, 1))) / np.sqrt(block)
    return np.zeros((d, 0))


def sigmoid(eta):
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def coordinate_gradient(w, basis, offset, z, labels, beta, ridge):
    """Gradient in ``w`` of ``sum_j softplus(eta_j) - y_j eta_j + ridge/2 ||w||^2`` with
    ``eta_j = beta (offset + basis w) . z_j`` (docs/algorithms.md, per-user refit)."""
    eta = beta * z @ (offset + basis @ w)
    return beta * basis.T @ (z.T @ (sigmoid(eta) - labels)) + ridge * w


def logistic_objective(theta, z, labels, offsets, beta, ridge):
    eta = offsets + beta * z @ theta
    return float(np.sum(np.logaddexp(0.0, eta) - labels * eta) + 0.5 * ridge * theta @ theta)


def logistic_gradient(theta, z, labels, offsets, beta, ridge):
    eta = offsets + beta * z @ theta
    return beta * z.T @ (sigmoid(eta) - labels) + ridge * theta


def logistic_hessian(theta, z, labels, offsets, beta, ridge):
    eta = offsets + beta * z @ theta
    return beta**2 * (z.T * (0.25 / np.cosh(0.5 * eta) ** 2)) @ z + ridge * np.eye(z.shape[1])


def generic_minimiser(z, labels, offsets, beta, ridge):
    """L-BFGS-B on the full-dimensional ridge logistic objective, polished by a root finder on
    ``grad f = 0`` when needed; returns the point and a bound ``||grad|| / ridge`` on its distance to the minimiser
    (strong convexity)."""
    args = (z, labels, offsets, beta, ridge)
    point = scipy.optimize.minimize(
        logistic_objective, np.zeros(z.shape[1]), args=args, jac=logistic_gradient, method="L-BFGS-B",
        options={"ftol": 0.0, "gtol": 1e-13, "maxiter": 20000, "maxcor": 30},
    ).x
    if np.linalg.norm(logistic_gradient(point, *args)) > 1e-8 * ridge:
        # Near the optimum objective values stop resolving progress (their changes fall below an
        # ulp), so polish by solving grad f = 0 with scipy's root finder instead.
        point = scipy.optimize.root(logistic_gradient, point, args=args, jac=logistic_hessian, method="hybr",
                                    tol=1e-15).x
    return point, np.linalg.norm(logistic_gradient(point, *args)) / ridge


ESTIMATORS = {
    "pooled": lambda rewards, **kw: PooledMLE(**kw),
    "independent": lambda rewards, **kw: IndependentMLE(**kw),
    "oracle": lambda rewards, **kw: OracleSubspaceMLE(rewards.subspace, **kw),
    # The Ellipsoid in U_hat's span; the default set adds the subspace error (tests/agents/test_subspace_error.py).
    "p-sharelora": lambda rewards, **kw: PShareLoRA(RANK, subspace_error="ignore", **kw),
}


# -- the final per-user fit is stationary ----------------------------------------------------------

@pytest.mark.parametrize("name", ESTIMATORS)
def test_final_coordinates_are_stationary(world, name):
    mdp, rewards, dataset = world
    estimator = ESTIMATORS[name](rewards, ridge=RIDGE, beta=1.3).fit(dataset, mdp)
    z, labels = differences(mdp, dataset), dataset.labels
    assert estimator.theta_hat.shape == (N_USERS, mdp.n_features)
    for user in range(N_USERS):
        region = estimator.confidence_set(user)
        rows = slice(None) if name == "pooled" else dataset.users == user
        # The point estimate is stationary with the tuned ridge, the set's centre (the inference
        # refit, a member of the set) with the inference ridge.
        tuned = region.basis.T @ (estimator.theta_hat[user] - region.offset)
        np.testing.assert_allclose(region.basis @ tuned + region.offset, estimator.theta_hat[user], atol=1e-12)
        assert region.contains(region.theta_hat)
        for center, ridge in ((tuned, RIDGE), (region.center, estimator.inference_ridge_)):
            grad = coordinate_gradient(center, region.basis, region.offset, z[rows], labels[rows], 1.3, ridge)
            at_zero = coordinate_gradient(np.zeros_like(center), region.basis, region.offset, z[rows],
                                          labels[rows], 1.3, ridge)
            assert np.linalg.norm(grad) <= 1e-6 * np.linalg.norm(at_zero)
    if name == "pooled":
        np.testing.assert_allclose(estimator.theta_hat, estimator.theta_hat[:1].repeat(N_USERS, 0), atol=1e-12)
    assert all(entry["converged"] for entry in estimator.diagnostics.values())


def test_independent_mle_equals_a_generic_optimiser_per_user(world):
    """Per user, the ridge MLE over all of R^d: the unidentified components carry no data, so the
    ridge sets them to zero and the minimiser is the estimator's (which fits identifiable
    coordinates only)."""
    mdp, rewards, dataset = world
    estimator = IndependentMLE(ridge=RIDGE).fit(dataset, mdp)
    z = differences(mdp, dataset)
    for user in range(N_USERS):
        rows = dataset.users == user
        reference, bound = generic_minimiser(z[rows], dataset.labels[rows], np.zeros(rows.sum()), 1.0, RIDGE)
        assert bound < 5e-7
        np.testing.assert_allclose(estimator.theta_hat[user], reference, rtol=0, atol=1e-6)
    pooled = PooledMLE(ridge=RIDGE).fit(dataset, mdp)
    reference, bound = generic_minimiser(z, dataset.labels, np.zeros(len(dataset)), 1.0, RIDGE)
    assert bound < 5e-7
    np.testing.assert_allclose(pooled.theta_hat[0], reference, rtol=0, atol=1e-6)


def test_theta_hat_lies_in_the_identifiable_span(world):
    mdp, rewards, dataset = world
    hidden = unidentified(mdp)
    for name in ("pooled", "independent", "p-sharelora"):
        estimator = ESTIMATORS[name](rewards, ridge=RIDGE).fit(dataset, mdp)
        scale = np.abs(estimator.theta_hat).max()
        np.testing.assert_allclose(estimator.theta_hat @ hidden, 0.0, atol=1e-9 * scale)
        basis = estimator.confidence_set(0).basis
        # The coordinates' basis is orthonormal and spans exactly the identifiable directions.
        np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
        np.testing.assert_allclose(hidden.T @ basis, 0.0, atol=1e-10)
        if name != "p-sharelora":
            assert basis.shape[1] == mdp.n_features - hidden.shape[1]


def test_oracle_subspace_fits_in_the_true_subspace():
    mdp, rewards, dataset = make_world("one_hot", seed=3)
    subspace = rewards.subspace
    estimator = OracleSubspaceMLE(subspace, ridge=RIDGE).fit(dataset, mdp)
    # The subspace is given up to a basis change: a skewed spanning set gives the same fit.
    skewed = OracleSubspaceMLE(subspace @ np.array([[2.0, 1.0], [0.0, -0.5]]), ridge=RIDGE).fit(dataset, mdp)
    np.testing.assert_allclose(skewed.theta_hat, estimator.theta_hat, atol=1e-9)
    assert principal_angle_distance(subspace, estimator.subspace) < 1e-12
    np.testing.assert_allclose(estimator.subspace.T @ estimator.subspace, np.eye(RANK), atol=1e-12)
    z = differences(mdp, dataset)
    for user in range(N_USERS):
        rows = dataset.users == user
        theta = estimator.theta_hat[user]
        np.testing.assert_allclose(theta, subspace @ (subspace.T @ theta), atol=1e-12)
        reference, bound = generic_minimiser(z[rows] @ subspace, dataset.labels[rows], np.zeros(rows.sum()), 1.0,
                                             RIDGE)
        assert bound < 5e-7
        np.testing.assert_allclose(subspace.T @ theta, reference, atol=1e-6)


# -- P-ShareLoRA --------------------------------------------------------------------------------

def joint_gradient(users_factor, subspace_factor, z, labels, users, offsets, beta, ridge):
    """Gradient of ``sum_j softplus(eta_j) - y_j eta_j + ridge/2 (||W||^2 + ||U||^2)`` with
    ``eta_j = offset_j + beta W[i_j] . U^T z_j`` (docs/algorithms.md, P-ShareLoRA step 1)."""
    projected = z @ subspace_factor
    eta = offsets + beta * np.sum(users_factor[users] * projected, axis=1)
    residual = beta * (sigmoid(eta) - labels)
    grad_users = np.zeros_like(users_factor)
    np.add.at(grad_users, users, residual[:, None] * projected)
    grad_subspace = z.T @ (residual[:, None] * users_factor[users])
    return grad_users + ridge * users_factor, grad_subspace + ridge * subspace_factor


@pytest.mark.parametrize("kind", ["one_hot", "dense"])
def test_p_sharelora_joint_fit_and_subspace(kind):
    base = None
    mdp, rewards, dataset = make_world(kind, seed=4, n_pairs=80)
    if kind == "dense":
        base = np.random.default_rng(0).normal(size=(mdp.n_features, N_USERS))
        mdp, rewards, dataset = make_world(kind, seed=4, n_pairs=80, base=base)
    estimator = PShareLoRA(RANK, ridge=RIDGE, base=base).fit(dataset, mdp)
    z, labels, users = differences(mdp, dataset), dataset.labels, dataset.users
    offsets = np.zeros(len(dataset)) if base is None else np.sum(base.T[users] * z, axis=1)
    joint = estimator.joint_fit
    assert joint.left.shape == (N_USERS, RANK) and joint.right.shape == (mdp.n_features, RANK)
    grad = joint_gradient(joint.left, joint.right, z, labels, users, offsets, 1.0, RIDGE)
    data = comparison_data(dataset, mdp, base=base)
    start = spectral_start(data.user_indicator(), data.differences, data.labels, data.offsets, RANK, 1.0)
    start_grad = joint_gradient(*start, z, labels, users, offsets, 1.0, RIDGE)
    norm = lambda pair: np.sqrt(sum(np.sum(part**2) for part in pair))  # noqa: E731
    assert norm(grad) <= 1e-6 * norm(start_grad)
    # U_hat: orthonormal columns spanning the top-r left singular space of the fitted U W^T.
    subspace = estimator.subspace
    assert subspace.shape == (mdp.n_features, RANK)
    np.testing.assert_allclose(subspace.T @ subspace, np.eye(RANK), atol=1e-12)
    left_singular, singular, _ = np.linalg.svd(joint.right @ joint.left.T)
    # The estimator drops from them what lies along directions no comparison sees (P_N; e.g. the
    # all-ones direction of one-hot features). There F is the ridge alone, so P_N grad_U = ridge P_N U
    # and ||P_N U|| <= ||grad|| / ridge; the left singular vectors are U W^T V S^{-1}, hence
    # sin(angle) <= ||P_N U|| ||W||_2 / sigma_r: zero at an exact stationary point, and as small as
    # the stopping tolerance leaves it.
    leftover = norm(grad) * np.linalg.norm(joint.left, 2) / (RIDGE * singular[RANK - 1])
    assert principal_angle_distance(left_singular[:, :RANK], subspace) <= leftover * (1 + 1e-6) + 1e-12
    # Every estimate is base + a vector of the subspace.
    personal = estimator.theta_hat - (0 if base is None else base.T)
    np.testing.assert_allclose(personal, personal @ subspace @ subspace.T, atol=1e-10 * np.abs(personal).max())


def test_rank_r_subspace_is_accurate_with_much_data():
    """With many pairs the estimated subspace approaches the truth's (a sanity check of the
    whole pipeline; the rate is in the slow statistical tests)."""
    mdp = random_mdp(4, 3, 3, seed=5)
    rewards = low_rank_rewards(mdp.n_features, 20, RANK, mdp=mdp, scale=3.0, seed=6)
    few = collect_preferences(mdp, rewards, 20, seed=7)
    many = collect_preferences(mdp, rewards, 400, seed=7)
    distances = [agents.subspace_distance(mdp, rewards.subspace, PShareLoRA(RANK, ridge=1.0).fit(ds, mdp).subspace)
                 for ds in (few, many)]
    assert distances[1] < 0.3 and distances[1] < distances[0]


# -- ridge selection -----------------------------------------------------------------------------

def held_out_log_likelihood(theta_hat, z, labels, users):
    eta = np.sum(theta_hat[users] * z, axis=1)
    return float(np.mean(labels * -np.logaddexp(0, -eta) + (1 - labels) * -np.logaddexp(0, eta)))


@pytest.mark.parametrize("name", ESTIMATORS)
def test_ridge_rule_picks_the_best_held_out_likelihood(name):
    mdp, rewards, dataset = make_world("one_hot", seed=8, n_pairs=30)
    grid = (10.0, 1.0, 0.1)
    estimator = ESTIMATORS[name](rewards, ridge_grid=grid, seed=3).fit(dataset, mdp)
    train, held = held_out_split(comparison_data(dataset, mdp), seed=3)
    # The split: disjoint, complete, round(20%) of every user's pairs held out.
    assert np.intersect1d(train, held).size == 0 and np.union1d(train, held).size == len(dataset)
    np.testing.assert_array_equal(np.bincount(dataset.users[held], minlength=N_USERS),
                                  np.round(0.2 * dataset.pairs_per_user()).astype(int))
    z = differences(mdp, dataset)
    scores = {}
    for ridge in grid:
        refit = ESTIMATORS[name](rewards, ridge=ridge).fit(dataset.subset(train), mdp)
        scores[ridge] = held_out_log_likelihood(refit.theta_hat, z[held], dataset.labels[held], dataset.users[held])
    # The scan goes from the largest ridge down and stops at the first score below the best so far.
    scanned = []
    for ridge in sorted(grid, reverse=True):
        scanned.append(ridge)
        if len(scanned) > 1 and scores[ridge] < max(scores[previous] for previous in scanned[:-1]):
            break
    assert list(estimator.ridge_scores_) == scanned
    for ridge in scanned:
        assert estimator.ridge_scores_[ridge] == pytest.approx(scores[ridge], abs=1e-6)
    assert estimator.ridge_ == max(scanned, key=lambda ridge: (scores[ridge], ridge))
    # The final fit uses the chosen ridge on all the data.
    fixed = ESTIMATORS[name](rewards, ridge=estimator.ridge_).fit(dataset, mdp)
    np.testing.assert_allclose(estimator.theta_hat, fixed.theta_hat, atol=1e-7)


def test_ridge_scan_stops_at_the_first_downturn_unless_asked_not_to():
    """A scripted estimator whose held-out scores rise, fall, then rise again: the scan stops at the
    fall (the later, better candidate is not fitted); with ``stop_at_downturn=False`` every
    candidate is fitted and the best one wins."""
    from agents.tuning import select_ridge

    mdp, rewards, dataset = make_world("one_hot", seed=8, n_pairs=30)
    data = comparison_data(dataset, mdp)
    logits = {100.0: 0.0, 10.0: 0.5, 1.0: -0.5, 0.1: 1.0}  # scores follow the (signed) logit size

    class Scripted:
        fitted: list = []

        def _fit(self, data, ridge):
            self.fitted.append(ridge)
            self.ridge = ridge

        def pair_logits(self, held_out):
            return logits[self.ridge] * (2 * held_out.labels - 1)

    scripted = Scripted()
    best, scores = select_ridge(scripted, data, tuple(logits), seed=0)
    assert scripted.fitted == [100.0, 10.0, 1.0] and list(scores) == [100.0, 10.0, 1.0] and best == 10.0
    scripted.fitted = []
    best, scores = select_ridge(scripted, data, tuple(logits), seed=0, stop_at_downturn=False)
    assert scripted.fitted == [100.0, 10.0, 1.0, 0.1] and best == 0.1


def test_fixed_ridge_skips_selection(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("select_ridge must not run with a fixed ridge")

    monkeypatch.setattr(agents.estimators, "select_ridge", forbidden)
    mdp, rewards, dataset = make_world("one_hot", seed=9)
    for name in ESTIMATORS:
        estimator = ESTIMATORS[name](rewards, ridge=0.3).fit(dataset, mdp)
        assert estimator.ridge_ == 0.3 and estimator.ridge_scores_ == {}
    with pytest.raises(AssertionError, match="select_ridge"):
        IndependentMLE().fit(dataset, mdp)


# -- base reward ---------------------------------------------------------------------------------

def test_base_offsets_are_known_not_estimated():
    base = 3.0 * np.random.default_rng(10).normal(size=(12, N_USERS))  # one-hot world: d = 12
    mdp, rewards, dataset = make_world("one_hot", seed=10, n_pairs=60, base=base)
    np.testing.assert_allclose(rewards.base, base)
    estimator = IndependentMLE(ridge=RIDGE, base=base).fit(dataset, mdp)
    z = differences(mdp, dataset)
    for user in range(N_USERS):
        rows = dataset.users == user
        offsets = z[rows] @ base[:, user]
        reference, bound = generic_minimiser(z[rows], dataset.labels[rows], offsets, 1.0, RIDGE)
        assert bound < 5e-7
        # theta_hat - base is the ridge MLE of the personal part with the base's logit as offset.
        np.testing.assert_allclose(estimator.theta_hat[user] - base[:, user], reference, atol=1e-6)
        region = estimator.confidence_set(user)
        np.testing.assert_array_equal(region.offset, base[:, user])
    # A shared base (d,) is the same as that column repeated.
    shared = base[:, 0]
    one = IndependentMLE(ridge=RIDGE, base=shared).fit(dataset, mdp)
    repeated = IndependentMLE(ridge=RIDGE, base=np.repeat(shared[:, None], N_USERS, axis=1)).fit(dataset, mdp)
    np.testing.assert_allclose(one.theta_hat, repeated.theta_hat, atol=1e-12)
    # Knowing the base helps: the personal part is estimated, not the large base.
    truth = rewards.theta.T
    with_base = agents.reward_errors(mdp, estimator.theta_hat, truth.T)
    without = agents.reward_errors(mdp, IndependentMLE(ridge=RIDGE).fit(dataset, mdp).theta_hat, truth.T)
    assert with_base.mean() < without.mean()


# -- confidence sets -----------------------------------------------------------------------------

@pytest.mark.parametrize("confidence", ["wald", "theory"])
@pytest.mark.parametrize("name", ["independent", "p-sharelora", "pooled"])
def test_confidence_set_matrix_and_radius(name, confidence):
    """Wald: the Fisher matrix at the set's centre with the inference ridge and the chi-square
    radius; theory: the Gram matrix with the tuned ridge around the tuned estimate."""
    mdp, rewards, dataset = make_world("dense", seed=11)
    estimator = ESTIMATORS[name](rewards, ridge=RIDGE, confidence=confidence, delta=0.05, norm_bound=4.0,
                                 beta=0.8, inference_ridge=1e-3).fit(dataset, mdp)
    assert estimator.inference_ridge_ == 1e-3
    z = differences(mdp, dataset)
    for user in range(N_USERS):
        region = estimator.confidence_set(user)
        rows = slice(None) if name == "pooled" else dataset.users == user
        coordinates = 0.8 * z[rows] @ region.basis  # beta B^T z
        k = region.dimension
        if confidence == "wald":
            slope = sigmoid(coordinates @ region.center) * sigmoid(-coordinates @ region.center)
            fisher = (coordinates.T * slope) @ coordinates + 1e-3 * np.eye(k)
            np.testing.assert_allclose(region.matrix, fisher, rtol=1e-10, atol=1e-12)
            assert region.radius == pytest.approx(np.sqrt(chi2.ppf(0.95, k)), rel=1e-12)
        else:
            np.testing.assert_allclose(region.theta_hat, estimator.theta_hat[user], atol=1e-12)
            gram = coordinates.T @ coordinates + RIDGE * np.eye(k)
            np.testing.assert_allclose(region.matrix, gram, rtol=1e-10, atol=1e-12)
            bound = np.max(np.linalg.norm(coordinates, axis=1))
            assert region.radius == pytest.approx(theory_radius(gram, RIDGE, 0.05, bound, 4.0), rel=1e-10)


# -- errors --------------------------------------------------------------------------------------

def test_invalid_configurations_name_the_argument():
    mdp, rewards, dataset = make_world("one_hot", seed=12, n_pairs=10)
    with pytest.raises(ValueError, match="rank"):
        PShareLoRA(N_USERS + 1, ridge=1.0).fit(dataset, mdp)
    with pytest.raises(ValueError, match="rank"):
        PShareLoRA(0)
    with pytest.raises(ValueError, match="contexts"):
        FullRankContextual(ridge=1.0).fit(dataset, mdp)
    with pytest.raises(ValueError, match="contexts"):
        LoCoPRS(1, ridge=1.0).fit(dataset, mdp)
    with pytest.raises(ValueError, match="confidence.*'wald', 'likelihood', 'finite', 'theory'.*'bayes'"):
        IndependentMLE(confidence="bayes")
    with pytest.raises(TypeError, match="confidence"):
        IndependentMLE(confidence=0.9)
    with pytest.raises(TypeError, match="radius"):  # the option's former name
        IndependentMLE(radius="wald")
    for inference_ridge in (0.0, -1e-3):
        with pytest.raises(ValueError, match="inference_ridge"):
            IndependentMLE(inference_ridge=inference_ridge)
    for delta in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="delta"):
            IndependentMLE(delta=delta)
    for ridge in (0.0, -1.0):
        with pytest.raises(ValueError, match="ridge"):
            IndependentMLE(ridge=ridge)
    with pytest.raises(ValueError, match="ridge_grid"):
        IndependentMLE(ridge_grid=())
    with pytest.raises(ValueError, match="ridge_grid"):
        IndependentMLE(ridge_grid=(1.0, -1.0))
    with pytest.raises(ValueError, match="beta"):
        IndependentMLE(beta=0.0)
    with pytest.raises(ValueError, match="subspace"):
        OracleSubspaceMLE(np.eye(mdp.n_features + 1)[:, :2], ridge=1.0).fit(dataset, mdp)
    with pytest.raises(ValueError, match="base"):
        IndependentMLE(ridge=1.0, base=np.zeros(mdp.n_features + 1)).fit(dataset, mdp)
    estimator = IndependentMLE(ridge=1.0).fit(dataset, mdp)
    with pytest.raises(ValueError, match="user"):
        estimator.confidence_set(N_USERS)
    with pytest.raises(TypeError, match="user"):
        estimator.confidence_set(0.5)


@pytest.mark.parametrize("estimator", ["p-sharelora", "loco"])
def test_a_loose_tolerance_still_fits_the_joint_rank_r_model(estimator):
    """The joint fit uses min(100 tol, 1e-4): a loose ``tol`` must not return the spectral start."""
    if estimator == "p-sharelora":
        mdp, _, dataset = make_world("one_hot", seed=8, n_pairs=60)
        fitted = PShareLoRA(RANK, ridge=RIDGE, tol=1e-2).fit(dataset, mdp)
    else:
        from lr_mdp_env import contextual_rewards

        mdp = random_mdp(4, 3, 3, seed=8)
        rewards = contextual_rewards(mdp.n_features, 3, RANK, n_users=N_USERS, mdp=mdp, seed=9)
        fitted = LoCoPRS(RANK, ridge=RIDGE, tol=1e-2).fit(collect_preferences(mdp, rewards, 60, seed=10), mdp)
    joint = fitted.diagnostics["joint"]
    assert joint["iterations"] + joint.get("quasi_newton_steps", 0) > 0
    assert joint["relative_gradient_norm"] <= 1e-4


def test_ridge_selection_names_each_candidates_convergence_warning_and_records_every_candidate(monkeypatch):
    """Candidates below lambda = 1 get one Newton step (a genuine, unconverged solve); their
    ConvergenceWarnings must name them, and the diagnostics must show which candidates stopped
    short, not only the final fit."""
    real = agents.estimators.fit_logistic

    def one_step_for_small_ridges(*args, ridge, **kwargs):
        return real(*args, ridge=ridge, max_iter=1 if ridge < 1 else 100, **kwargs)

    monkeypatch.setattr(agents.estimators, "fit_logistic", one_step_for_small_ridges)
    # Score every candidate (no stop at the held-out downturn), so all of them are recorded.
    monkeypatch.setattr(agents.estimators, "select_ridge",
                        functools.partial(agents.tuning.select_ridge, stop_at_downturn=False))
    mdp, _, dataset = make_world("dense", seed=4, n_pairs=60)
    with pytest.warns(agents.ConvergenceWarning) as caught:
        estimator = IndependentMLE(seed=0).fit(dataset, mdp)
    messages = [str(warning.message) for warning in caught if warning.category is agents.ConvergenceWarning]
    labelled = {message.split(":")[0] for message in messages}
    expected = {"ridge selection, candidate lambda=0.1", "ridge selection, candidate lambda=0.01"}
    if estimator.ridge_ < 1:
        expected.add(f"fit with the selected ridge lambda={estimator.ridge_:g}")
    assert labelled == expected
    candidates = estimator.diagnostics["ridge_selection"]
    assert sorted(candidates) == sorted(agents.DEFAULT_RIDGE_GRID)
    for ridge, record in candidates.items():
        assert record["coordinates"]["converged"] is (ridge >= 1), ridge
        assert record["coordinates"]["iterations"] <= (1 if ridge < 1 else 100)
        assert record["held_out_log_likelihood"] == estimator.ridge_scores_[ridge]
    assert estimator.diagnostics["coordinates"]["converged"] is (estimator.ridge_ >= 1)


# -- full-dimensional fits from sparse features ----------------------------------------------------

@pytest.mark.parametrize("features", ["one_hot", "one_hot_time"])
@pytest.mark.parametrize("estimator_class", [IndependentMLE, PooledMLE])
@pytest.mark.parametrize("confidence", ["wald", "theory"])
def test_full_dimensional_fits_in_feature_space_equal_the_coordinate_fits(monkeypatch, features, estimator_class,
                                                                          confidence):
    """With more than 64 identifiable directions, independent and pooled MLE fit theta = B w from
    the sparse z_j instead of the dense coordinates B^T z_j. The loss only sees B B^T theta and the
    ridge keeps the rest at zero, so the estimates, their certificates and the confidence sets
    (built from coordinates formed on demand) must equal those of the coordinate fit, up to the
    solver's tolerance (1e-8 relative gradient, ridge 0.5: a distance of at most 1e-8 |g_0| / 0.5)."""
    import agents.estimators

    mdp = random_mdp(25, 3, 3, features=features, seed=4)  # d = 75 or 225
    rewards = low_rank_rewards(mdp.n_features, N_USERS, RANK, mdp=mdp, scale=2.0, seed=5)
    dataset = collect_preferences(mdp, rewards, 40, seed=6)
    sparse = estimator_class(ridge=0.5, confidence=confidence).fit(dataset, mdp)
    assert isinstance(sparse._coordinate_features, agents.estimators._Coordinates)
    monkeypatch.setattr(agents.estimators, "_DENSE_COORDINATES_MAX", 10**6)
    dense = estimator_class(ridge=0.5, confidence=confidence).fit(dataset, mdp)
    assert isinstance(dense._coordinate_features, np.ndarray)
    np.testing.assert_allclose(sparse.theta_hat, dense.theta_hat, rtol=0, atol=1e-7)
    # Both in the identifiable span.
    np.testing.assert_allclose(sparse.theta_hat @ unidentified(mdp), 0.0, atol=1e-12)
    assert sparse.diagnostics["coordinates"]["relative_gradient_norm"] <= 1e-8
    for user in (0, N_USERS - 1):
        first, second = sparse.confidence_set(user), dense.confidence_set(user)
        np.testing.assert_allclose(first.center, second.center, rtol=0, atol=1e-7)
        np.testing.assert_allclose(first.matrix, second.matrix, rtol=1e-6, atol=1e-9)
        assert first.radius == pytest.approx(second.radius, rel=1e-6)


# -- ridge selection converges where users have fewer pairs than features ---------------------------

@st.composite
def sparse_data_worlds(draw):
    """RandomLowRank worlds (one-hot features) with fewer comparisons per user than features, the
    regime in which the smallest ridges make the joint fit ill-conditioned."""
    from lr_mdp_env.envs import random_low_rank_world

    n_states, n_actions = draw(st.integers(3, 6)), draw(st.integers(2, 3))
    n_users, rank = draw(st.integers(3, 8)), draw(st.integers(1, 3))
    mdp, rewards = random_low_rank_world(
        n_states=n_states, n_actions=n_actions, horizon=draw(st.integers(2, 5)), n_users=n_users,
        rank=min(rank, n_users, n_states * n_actions), scale=draw(st.sampled_from([1.0, 3.0])),
        model_seed=draw(st.integers(0, 2**16)))
    # At least 3 pairs, so that the 20% split holds one out of every user.
    pairs = draw(st.integers(3, n_states * n_actions - 1))
    return mdp, rewards, collect_preferences(mdp, rewards, pairs, seed=draw(st.integers(0, 2**16)))


@pytest.mark.parametrize("projected", [False, True])
@settings(max_examples=max(8, settings().max_examples // 3))  # 8 in CI, 100 with the thorough profile
@given(case=sparse_data_worlds())
def test_ridge_selection_converges_with_fewer_pairs_than_features(projected, case):
    """Every candidate of the default grid (scored all the way down, no early stop) reaches its
    tolerance without a ConvergenceWarning, by the joint quasi-Newton path and by variable projection
    (forced by the layout bound), and the chosen ridge's fit meets the documented tolerances: the
    joint fit a relative gradient norm of min(100 tol, 1e-4) = 1e-6, the per-user refit a gradient
    norm of tol = 1e-8 times max(1, its norm at zero) (:func:`agents.fit_logistic`)."""
    import functools
    import warnings

    import agents.estimators
    import agents.factorized
    from agents import ConvergenceWarning

    mdp, rewards, dataset = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agents.estimators, "select_ridge",
                      functools.partial(agents.tuning.select_ridge, stop_at_downturn=False))
        if projected:
            patch.setattr(agents.factorized, "_LIFTED_MAX_ENTRIES", 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            estimator = PShareLoRA(rewards.rank).fit(dataset, mdp)
    assert len(estimator.ridge_scores_) == len(agents.tuning.DEFAULT_RIDGE_GRID)
    joint, coordinates = estimator.diagnostics["joint"], estimator.diagnostics["coordinates"]
    assert joint["converged"] and joint["relative_gradient_norm"] <= 1e-6
    assert coordinates["converged"]


# -- sets built for inference ----------------------------------------------------------------------

def untied_world(seed=21, n_pairs=40):
    """A dense world without ties (the likelihood-ratio sets need labels in {0, 1})."""
    return make_world("dense", seed=seed, n_pairs=n_pairs)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_set_centre_is_an_independent_small_ridge_fit(name):
    """The Wald set's centre is the minimiser of the user's coordinate loss with the inference
    ridge (here 1e-2), found by scipy's trust-region Newton from zero on the raw pairs; the point
    estimate keeps the tuned ridge. Strong convexity (modulus >= 1e-2) turns the reference's
    gradient norm into a distance bound."""
    mdp, rewards, dataset = untied_world()
    estimator = ESTIMATORS[name](rewards, ridge=RIDGE, inference_ridge=1e-2).fit(dataset, mdp)
    z, labels = differences(mdp, dataset), dataset.labels
    for user in range(N_USERS):
        region = estimator.confidence_set(user)
        rows = slice(None) if name == "pooled" else dataset.users == user
        coordinates = z[rows] @ region.basis
        offsets = np.zeros(coordinates.shape[0])
        args = (coordinates, labels[rows], offsets, 1.0, 1e-2)
        result = scipy.optimize.minimize(logistic_objective, np.zeros(region.dimension), args=args,
                                         jac=logistic_gradient, hess=logistic_hessian, method="trust-exact",
                                         options={"gtol": 1e-12})
        distance_bound = np.linalg.norm(logistic_gradient(result.x, *args)) / 1e-2
        np.testing.assert_allclose(region.center, result.x, rtol=0, atol=1e-6 + distance_bound)
        assert not np.allclose(region.theta_hat, estimator.theta_hat[user], atol=1e-3)  # not the tuned estimate
    assert estimator.diagnostics["inference"]["converged"]


@pytest.mark.parametrize("confidence", ["wald", "likelihood", "finite", "theory"])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_kind_of_set_contains_its_own_centre(name, confidence):
    mdp, rewards, dataset = untied_world()
    estimator = ESTIMATORS[name](rewards, confidence=confidence).fit(dataset, mdp)
    expected = agents.Ellipsoid if confidence in ("wald", "theory") else agents.LikelihoodRatioSet
    for user in range(N_USERS):
        region = estimator.confidence_set(user)
        assert isinstance(region, expected)
        assert region.contains(region.theta_hat)
        assert estimator.confidence_set(user) is region  # built once


def test_likelihood_set_levels_and_finite_thresholds():
    """``"likelihood"``: the set's level is at least Wilks' (the bootstrap only raises it) and is
    reproducible from the seed. ``"finite"``: the threshold on the unpenalised loss is the
    finite-sample threshold of the user's pairs (or the centre's loss when that is larger)."""
    from agents.likelihood_set import finite_sample_likelihood_threshold
    from lr_mdp_env.theory import wilks_level

    mdp, rewards, dataset = untied_world()
    z, labels = differences(mdp, dataset), dataset.labels
    first = IndependentMLE(confidence="likelihood", seed=3).fit(dataset, mdp)
    second = IndependentMLE(confidence="likelihood", seed=3).fit(dataset, mdp)
    finite = IndependentMLE(confidence="finite", delta=0.2).fit(dataset, mdp)
    for user in range(N_USERS):
        region = first.confidence_set(user)
        assert region.level >= wilks_level(region.dimension, 0.1) - 1e-12
        assert second.confidence_set(user).level == region.level
        assert region.ridge == first.inference_ridge_
        finite_set = finite.confidence_set(user)
        rows = dataset.users == user
        coordinates = z[rows] @ finite_set.basis
        threshold = finite_sample_likelihood_threshold(coordinates, labels[rows], np.zeros(rows.sum()), 1.0, 0.2)
        centre_loss = logistic_objective(finite_set.center, coordinates, labels[rows], np.zeros(rows.sum()), 1.0, 0.0)
        assert finite_set.ridge == 0.0
        assert finite_set.threshold == pytest.approx(max(threshold, centre_loss), rel=1e-9)


def test_bootstrap_levels_match_a_direct_computation():
    """:func:`bootstrap_likelihood_levels` against a loop over problems and replicates with the same
    label draws, each replicate minimised by scipy: ``max(chi2_k, quantile of 2 (f_b(truth) - min
    f_b)) / 2``."""
    from agents.estimators import bootstrap_likelihood_levels

    rng = np.random.default_rng(4)
    n_problems, per_problem, k, replicates, ridge, delta = 3, 12, 2, 7, 0.05, 0.2
    features = rng.normal(size=(n_problems * per_problem, k))
    offsets = rng.normal(size=n_problems * per_problem) * 0.3
    groups = np.repeat(np.arange(n_problems), per_problem)
    truth = rng.normal(size=(n_problems, k))
    levels = bootstrap_likelihood_levels(features, offsets, groups, n_problems, truth, truth, 1.5, ridge, delta,
                                         replicates, np.random.default_rng(9))
    draws = np.random.default_rng(9).random((replicates, features.shape[0]))  # one chunk: the same draws
    probabilities = sigmoid(offsets + 1.5 * np.sum(features * truth[groups], axis=1))
    expected = []
    for problem in range(n_problems):
        rows = groups == problem
        statistics = []
        for replicate in range(replicates):
            labels = (draws[replicate, rows] < probabilities[rows]).astype(float)
            args = (features[rows], labels, offsets[rows], 1.5, ridge)
            result = scipy.optimize.minimize(logistic_objective, truth[problem], args=args, jac=logistic_gradient,
                                             hess=logistic_hessian, method="trust-exact", options={"gtol": 1e-12})
            statistics.append(2 * (logistic_objective(truth[problem], *args) - result.fun))
        quantile = np.quantile(np.maximum(statistics, 0), 1 - delta, method="higher")
        expected.append(0.5 * max(chi2.ppf(1 - delta, k), quantile))
    np.testing.assert_allclose(levels, expected, rtol=1e-7, atol=1e-9)


def test_likelihood_sets_refuse_ties_and_the_option_is_named():
    mdp, rewards, dataset = make_world("dense", seed=22, equal=0.3)
    for confidence in ("likelihood", "finite"):
        estimator = IndependentMLE(ridge=1.0, confidence=confidence).fit(dataset, mdp)
        with pytest.raises(ValueError, match=f"confidence='{confidence}' needs labels in"):
            estimator.confidence_set(0)
    with pytest.raises(ValueError, match="confidence must be one of .*'bayes'"):
        agents.make("independent", confidence="bayes")
    with pytest.raises(TypeError, match="no option 'radius'"):
        agents.make("independent", radius="wald")
    assert agents.registry.options("p-sharelora")["confidence"] == "wald"


def test_a_fixed_ridge_below_the_inference_ridge_is_the_refit():
    """With ``ridge`` below ``inference_ridge`` the tuned fit already suits inference: no refit, the
    set is centred at the point estimate."""
    mdp, rewards, dataset = untied_world()
    estimator = IndependentMLE(ridge=1e-5).fit(dataset, mdp)
    assert estimator.inference_ridge_ == 1e-5
    for user in range(N_USERS):
        np.testing.assert_allclose(estimator.confidence_set(user).theta_hat, estimator.theta_hat[user], atol=1e-12)
    assert "inference" not in estimator.diagnostics
