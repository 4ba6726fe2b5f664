"""Likelihood-ratio confidence sets against cvxpy, scalar root finding and closed forms; their levels
against simulation (slow tests).

Oracles: cvxpy's exponential-cone formulation of ``min g . w s.t. f(w) <= c`` (a generic conic
solver sharing no code with the set's Newton path), ``scipy.optimize.brentq`` on the loss along a
ray for membership, and one-dimensional closed forms for unbounded sets.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats
from scipy.special import expit

import agents
from agents import LikelihoodRatioSet, finite_sample_likelihood_threshold, fit_logistic
from lr_mdp_env import theory

BETA = 1.3


def direct_loss(features, labels, offsets, beta, ridge, w):
    """``f(w)`` written from its definition with ``logaddexp`` (not the library's loss terms)."""
    signs = 2 * labels - 1
    return float(np.sum(np.logaddexp(0.0, -signs * (offsets + beta * features @ w))) + 0.5 * ridge * w @ w)


def random_problem(seed, k, m, ridge, *, d=None, level=None):
    """A well-specified logistic sample with nonzero offsets, and its set centred at the ridge fit."""
    rng = np.random.default_rng(seed)
    d = k + 2 if d is None else d
    features = rng.normal(size=(m, k))
    offsets = 0.5 * rng.normal(size=m)
    truth = rng.normal(size=k)
    labels = (rng.random(m) < expit(offsets + BETA * features @ truth)).astype(float)
    center = fit_logistic(features, labels, offsets=offsets, beta=BETA, ridge=max(ridge, 1e-6)).theta[0]
    level = theory.wilks_level(k, 0.1) if level is None else level
    region = LikelihoodRatioSet(offset=rng.normal(size=d), basis=rng.normal(size=(d, k)), features=features,
                                labels=labels, offsets=offsets, beta=BETA, ridge=ridge, center=center, level=level)
    return region, rng


def conic_lower(region, vector, box=None):
    """``min theta . v`` over the set by cvxpy (exponential cone); ``box`` bounds ``|w|_inf``."""
    w = cp.Variable(region.dimension)
    signs = 2 * region.labels - 1
    logits = region.offsets + region.beta * region.features @ w
    loss = cp.sum(cp.logistic(-cp.multiply(signs, logits))) + 0.5 * region.ridge * cp.sum_squares(w)
    constraints = [loss <= region.threshold]
    if box is not None:
        constraints.append(cp.norm(w, "inf") <= box)
    problem = cp.Problem(cp.Minimize((region.basis.T @ vector) @ w), constraints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return problem.value + vector @ region.offset


CASES = [(seed, k, m, ridge) for seed, (k, m) in enumerate([(1, 5), (2, 12), (3, 20), (4, 30), (5, 40), (6, 40)])
         for ridge in (0.0, 0.4)]
# Few pairs and no ridge: data separable along some directions, sets unbounded along some vectors only.
CASES += [(21, 3, 7, 0.0), (22, 4, 8, 0.0)]


@pytest.mark.parametrize("seed, k, m, ridge", CASES)
def test_lower_upper_and_minimizer_match_a_conic_solver(seed, k, m, ridge):
    region, rng = random_problem(seed, k, m, ridge)
    vectors = rng.normal(size=(3, region.n_features))
    lower, upper = region.lower(vectors), region.upper(vectors)
    for vector, low, high in zip(vectors, lower, upper):
        if np.isfinite(low):
            # cvxpy (CLARABEL) reaches about 1e-8 of the width on these problems: 1e-6 is its margin.
            scale = max(1.0, high - low if np.isfinite(high) else abs(low))
            assert low == pytest.approx(conic_lower(region, vector), abs=1e-6 * scale)
            minimizer = region.minimizer(vector)
            assert region.contains(minimizer)
            assert minimizer @ vector == pytest.approx(low, rel=1e-9, abs=1e-9 * scale)
        else:
            # Unbounded along -v: the boxed minimum keeps falling as the box grows (a bounded set
            # would give the same value once the box contains its minimiser).
            assert conic_lower(region, vector, box=1e4) < conic_lower(region, vector, box=1e2) - 1.0
        if np.isfinite(high):
            assert -high == pytest.approx(conic_lower(region, -vector), abs=1e-6 * max(1.0, high - low, abs(high)))
    # The set is convex and its centre a member: lower <= theta_hat . v <= upper.
    assert np.all(lower <= vectors @ region.theta_hat + 1e-9) and np.all(vectors @ region.theta_hat <= upper + 1e-9)


@pytest.mark.parametrize("seed, k, m, ridge", CASES[::3])
def test_membership_along_rays_matches_the_loss_crossing(seed, k, m, ridge):
    region, rng = random_problem(seed, k, m, ridge)
    data = (region.features, region.labels, region.offsets, region.beta, region.ridge)
    for _ in range(4):
        direction = rng.normal(size=k)

        def excess(step):
            return direct_loss(*data, region.center + step * direction) - region.threshold

        if excess(1e6) < 0:  # unbounded along this ray (separable data without ridge)
            assert region.contains(region.offset + region.basis @ (region.center + 1e6 * direction))
            continue
        crossing = scipy.optimize.brentq(excess, 0.0, 1e6, xtol=1e-14, rtol=1e-14)
        inside = region.offset + region.basis @ (region.center + (1 - 1e-5) * crossing * direction)
        outside = region.offset + region.basis @ (region.center + (1 + 1e-5) * crossing * direction)
        assert region.contains(inside)
        assert not region.contains(outside)


def test_membership_requires_the_affine_span():
    region, rng = random_problem(3, 3, 20, 0.4, d=6)
    member = region.theta_hat
    normal = np.linalg.svd(region.basis, full_matrices=True)[0][:, -1]  # orthogonal to range(B)
    assert region.contains(member)
    assert not region.contains(member + 1e-4 * normal)


def test_a_basis_with_a_kernel_admits_every_preimage():
    """With ``B = [b, b]`` the point ``offset + B w`` is a member if some ``w'`` with ``B w' = B w``
    is: the smallest loss over the preimage decides (brute force over the kernel line)."""
    rng = np.random.default_rng(7)
    column = rng.normal(size=(3, 1))
    basis = np.hstack([column, column])
    features = rng.normal(size=(15, 2))
    labels = (rng.random(15) < 0.5).astype(float)
    offsets = np.zeros(15)
    region = LikelihoodRatioSet(offset=np.zeros(3), basis=basis, features=features, labels=labels, offsets=offsets,
                                beta=1.0, ridge=0.2, center=np.zeros(2), level=1.0)
    for scale in np.linspace(-3, 3, 13):
        theta = column[:, 0] * scale
        line = np.linspace(-20, 20, 40001)  # w = (scale/2 + a, scale/2 - a)
        losses = [direct_loss(features, labels, offsets, 1.0, 0.2, np.array([scale / 2 + a, scale / 2 - a]))
                  for a in line[::100]]
        fine = scipy.optimize.minimize_scalar(
            lambda a: direct_loss(features, labels, offsets, 1.0, 0.2, np.array([scale / 2 + a, scale / 2 - a])),
            bracket=(line[::100][int(np.argmin(losses))] - 0.1, line[::100][int(np.argmin(losses))] + 0.1))
        expected = fine.fun <= region.threshold
        if abs(fine.fun - region.threshold) > 1e-6:  # skip points on the boundary itself
            assert region.contains(theta) == expected


def test_batched_support_equals_one_vector_at_a_time():
    region, rng = random_problem(11, 4, 30, 0.0)
    vectors = rng.normal(size=(2, 3, region.n_features))
    lower = region.lower(vectors)
    minimizers = region.minimizer(vectors)
    assert lower.shape == (2, 3) and minimizers.shape == vectors.shape
    for index in np.ndindex(2, 3):
        assert lower[index] == pytest.approx(region.lower(vectors[index]), rel=1e-10, abs=1e-10)
        assert minimizers[index] == pytest.approx(region.minimizer(vectors[index]), rel=1e-6, abs=1e-8)
    assert isinstance(region.lower(vectors[0, 0]), float)


def test_wilks_set_of_a_quadratic_like_sample_is_close_to_the_wald_ellipsoid():
    """At large ``n`` the loss is nearly quadratic around the MLE, so the likelihood-ratio set with
    level ``r^2 / 2`` and the Wald ellipsoid of radius ``r`` nearly coincide: the support functions
    differ by the cubic term, ``O(r / sqrt(n))`` relative to the half-width."""
    rng = np.random.default_rng(5)
    k, n = 3, 20000
    features = rng.normal(size=(n, k))
    truth = np.array([0.5, -0.3, 0.2])
    labels = (rng.random(n) < expit(features @ truth)).astype(float)
    fit = fit_logistic(features, labels, beta=1.0, ridge=1e-6)
    level = theory.wilks_level(k, 0.1)
    region = LikelihoodRatioSet(offset=np.zeros(k), basis=np.eye(k), features=features, labels=labels,
                                offsets=np.zeros(n), beta=1.0, ridge=1e-6, center=fit.theta[0], level=level)
    ellipsoid = agents.Ellipsoid(offset=np.zeros(k), basis=np.eye(k), center=fit.theta[0], matrix=fit.fisher[0],
                                 radius=theory.wald_radius(k, 0.1))
    vectors = rng.normal(size=(5, k))
    half_width = ellipsoid.upper(vectors) - ellipsoid.theta_hat @ vectors.T
    bound = 10 * theory.wald_radius(k, 0.1) / np.sqrt(n)  # the cubic term's order, with a factor 10
    assert np.all(np.abs(region.lower(vectors) - ellipsoid.lower(vectors)) <= bound * half_width)


def separable_line():
    """``k = 1``, all labels 1 with positive features: ``f`` decreases to 0 as ``w -> inf``."""
    features = np.array([[0.5], [1.0], [2.0]])
    labels = np.ones(3)
    offsets = np.array([0.1, -0.2, 0.0])
    return LikelihoodRatioSet(offset=np.array([1.0]), basis=np.array([[2.0]]), features=features, labels=labels,
                              offsets=offsets, beta=1.0, ridge=0.0, center=np.array([0.5]), level=0.7)


def test_separable_data_without_ridge_give_a_half_line():
    region = separable_line()
    data = (region.features, region.labels, region.offsets, 1.0, 0.0)
    assert not region.bounded
    # The set is {offset + 2 w : w >= w_c} with f(w_c) = c: brentq on the decreasing loss.
    edge = scipy.optimize.brentq(lambda w: direct_loss(*data, np.array([w])) - region.threshold, -50, 0.5,
                                 xtol=1e-14)
    assert region.lower(np.array([1.0])) == pytest.approx(1.0 + 2.0 * edge, rel=1e-9)
    assert region.lower(np.array([-1.0])) == -np.inf
    assert region.upper(np.array([1.0])) == np.inf
    assert region.contains(np.array([1.0 + 2.0 * 1e6]))
    with pytest.raises(ValueError, match="unbounded"):
        region.minimizer(np.array([-1.0]))


def test_directions_the_data_do_not_see_are_unbounded_without_ridge():
    rng = np.random.default_rng(2)
    features = np.outer(rng.normal(size=20), [1.0, 1.0])  # only w_1 + w_2 is seen
    labels = (rng.random(20) < 0.5).astype(float)
    region = LikelihoodRatioSet(offset=np.zeros(2), basis=np.eye(2), features=features, labels=labels,
                                offsets=np.zeros(20), beta=1.0, ridge=0.0, center=np.zeros(2), level=1.0)
    assert region.lower(np.array([1.0, -1.0])) == -np.inf
    assert region.lower(np.array([1.0, 0.0])) == -np.inf
    seen = region.lower(np.array([1.0, 1.0]))
    # Along (1, 1) the problem is one-dimensional in s = w_1 + w_2: brentq on the loss of s.
    data = (features[:, :1], labels, np.zeros(20), 1.0, 0.0)
    minimum = scipy.optimize.minimize_scalar(lambda s: direct_loss(*data, np.array([s]))).x
    edge = scipy.optimize.brentq(lambda s: direct_loss(*data, np.array([s])) - region.threshold, minimum - 50, minimum,
                                 xtol=1e-14)
    assert seen == pytest.approx(edge, rel=1e-9, abs=1e-9)
    # With a ridge every direction is bounded.
    ridged = LikelihoodRatioSet(offset=np.zeros(2), basis=np.eye(2), features=features, labels=labels,
                                offsets=np.zeros(20), beta=1.0, ridge=0.1, center=np.zeros(2), level=1.0)
    assert np.isfinite(ridged.lower(np.array([1.0, -1.0])))


def test_data_that_see_nothing_leave_the_whole_span():
    region = LikelihoodRatioSet(offset=np.ones(3), basis=np.eye(3)[:, :2], features=np.zeros((4, 2)),
                                labels=np.array([0, 1, 1, 0.0]), offsets=np.zeros(4), beta=1.0, ridge=0.0,
                                center=np.zeros(2), level=1.0)
    assert region.lower(np.array([0.0, 1.0, 5.0])) == -np.inf
    assert region.lower(np.array([0.0, 0.0, 5.0])) == pytest.approx(5.0)  # the offset's direction only
    assert region.contains(np.array([1e6, -1e6, 1.0])) and not region.contains(np.array([0.0, 0.0, 2.0]))


def test_level_zero_at_the_minimiser_is_a_point():
    region, rng = random_problem(4, 3, 30, 0.5, level=0.0)
    vectors = rng.normal(size=(4, region.n_features))
    assert region.lower(vectors) == pytest.approx(vectors @ region.theta_hat, abs=1e-6)


def test_loss_is_the_negative_log_likelihood_and_batches():
    region, rng = random_problem(1, 3, 25, 0.3)
    points = rng.normal(size=(2, 4, 3))
    data = (region.features, region.labels, region.offsets, region.beta, region.ridge)
    values = region.loss(points)
    assert values.shape == (2, 4)
    for index in np.ndindex(2, 4):
        assert values[index] == pytest.approx(direct_loss(*data, points[index]), rel=1e-12)
    assert region.threshold == pytest.approx(direct_loss(*data, region.center) + region.level, rel=1e-12)
    assert region.seminorms() is None and region.dimension == 3 and region.n_features == 5


def arguments(**changes):
    base = dict(offset=np.zeros(3), basis=np.eye(3)[:, :2], features=np.ones((4, 2)), labels=np.array([0, 1, 1, 0.0]),
                offsets=np.zeros(4), beta=1.0, ridge=0.1, center=np.zeros(2), level=1.0)
    base.update(changes)
    return base


@pytest.mark.parametrize("changes, error, name", [
    (dict(offset=np.zeros(2)), ValueError, "offset"),
    (dict(basis=np.ones(3)), ValueError, "basis"),
    (dict(features=np.ones((4, 3))), ValueError, "features"),
    (dict(labels=np.array([0, 1, 0.5, 0])), ValueError, "labels"),
    (dict(labels=np.zeros(3)), ValueError, "labels"),
    (dict(offsets=np.zeros(5)), ValueError, "offsets"),
    (dict(offsets=np.array([0, np.nan, 0, 0])), ValueError, "offsets"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(ridge=-1.0), ValueError, "ridge"),
    (dict(center=np.zeros(3)), ValueError, "center"),
    (dict(level=-0.1), ValueError, "level"),
    (dict(level="1"), TypeError, "level"),
])
def test_bad_arguments_are_named(changes, error, name):
    with pytest.raises(error, match=name):
        LikelihoodRatioSet(**arguments(**changes))


def test_bad_vectors_and_points_are_named():
    region = LikelihoodRatioSet(**arguments())
    with pytest.raises(ValueError, match="vectors"):
        region.lower(np.zeros(2))
    with pytest.raises(ValueError, match="theta"):
        region.contains(np.zeros(2))
    with pytest.raises(ValueError, match="coordinates"):
        region.loss(np.zeros(3))


# -- the finite-sample threshold ------------------------------------------------------------------


def ridge_minimum(features, labels, offsets, beta, precision):
    """``min_w f0(w) + precision / 2 ||w||^2`` by cvxpy (not by fit_logistic)."""
    w = cp.Variable(features.shape[1])
    signs = 2 * labels - 1
    loss = cp.sum(cp.logistic(-cp.multiply(signs, offsets + beta * features @ w)))
    objective = loss + 0.5 * precision * cp.sum_squares(w)
    problem = cp.Problem(cp.Minimize(objective))
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return problem.value


def test_finite_sample_threshold_is_its_published_formula():
    """``min_p [F_p + 1/2 log det(I + beta^2 G / (4 lambda_p))] + log(P / delta)`` recomputed with
    cvxpy's ridge minima and ``slogdet``."""
    rng = np.random.default_rng(3)
    features, offsets = rng.normal(size=(30, 3)), 0.3 * rng.normal(size=30)
    labels = (rng.random(30) < 0.6).astype(float)
    precisions = (0.1, 1.0, 10.0)
    expected = min(
        ridge_minimum(features, labels, offsets, BETA, p)
        + 0.5 * np.linalg.slogdet(np.eye(3) + BETA**2 * features.T @ features / (4 * p))[1]
        for p in precisions
    ) + np.log(3 / 0.05)
    got = finite_sample_likelihood_threshold(features, labels, offsets, BETA, 0.05, prior_precisions=precisions)
    assert got == pytest.approx(expected, rel=1e-7)


def test_finite_sample_threshold_batches_over_users():
    rng = np.random.default_rng(4)
    features, offsets = rng.normal(size=(40, 2)), np.zeros(40)
    labels = (rng.random(40) < 0.5).astype(float)
    groups = rng.integers(0, 3, size=40)
    batched = finite_sample_likelihood_threshold(features, labels, offsets, 1.0, 0.1, groups=groups, n_problems=4)
    assert batched.shape == (4,)
    for user in range(3):
        rows = groups == user
        assert batched[user] == pytest.approx(
            finite_sample_likelihood_threshold(features[rows], labels[rows], offsets[rows], 1.0, 0.1), rel=1e-9)
    # No data: F_p = 0 and G = 0, so c = log(P / delta).
    assert batched[3] == pytest.approx(np.log(len(agents.likelihood_set.DEFAULT_PRIOR_PRECISIONS) / 0.1), rel=1e-12)


def test_the_gaussian_integral_bound_of_the_derivation_holds():
    """The derivation's analytic step, ``-log int exp(-f0) dQ <= F(w_Q) + 1/2 log det(I + H_max /
    lambda)``, against numerical quadrature in one dimension."""
    rng = np.random.default_rng(8)
    for _ in range(5):
        features = rng.normal(size=(25, 1))
        labels = (rng.random(25) < 0.7).astype(float)
        offsets = 0.2 * rng.normal(size=25)
        precision = float(10 ** rng.uniform(-1, 1))

        def integrand(w):
            prior = np.sqrt(precision / (2 * np.pi)) * np.exp(-0.5 * precision * w * w)
            return np.exp(-direct_loss(features, labels, offsets, BETA, 0.0, np.array([w]))) * prior

        mixture = -np.log(scipy.integrate.quad(integrand, -60, 60, points=[0.0], limit=500)[0])
        bound = theory.likelihood_mixture_threshold(
            [ridge_minimum(features, labels, offsets, BETA, precision)], features.T @ features, [precision], BETA, 1.0
            - 1e-15) - np.log(1 / (1 - 1e-15))
        assert mixture <= bound + 1e-9


@pytest.mark.parametrize("call, error, name", [
    (lambda: finite_sample_likelihood_threshold(np.ones((3, 2)), np.array([0, 1, 0.5]), np.zeros(3), 1.0, 0.1),
     ValueError, "labels"),
    (lambda: finite_sample_likelihood_threshold(np.ones((3, 2)), np.ones(3), np.zeros(3), 1.0, 1.0), ValueError,
     "delta"),
    (lambda: finite_sample_likelihood_threshold(np.ones((3, 2)), np.ones(3), np.zeros(3), 1.0, 0.1,
                                                prior_precisions=(1.0, 0.0)), ValueError, "prior_precisions"),
    (lambda: finite_sample_likelihood_threshold(np.ones((3, 2)), np.ones(3), np.zeros(2), 1.0, 0.1), ValueError,
     "offsets"),
    (lambda: finite_sample_likelihood_threshold(np.ones((3, 2)), np.ones(3), np.zeros(3), -1.0, 0.1), ValueError,
     "beta"),
    (lambda: finite_sample_likelihood_threshold(np.ones((3, 2)), np.ones(3), np.zeros(3), 1.0, 0.1,
                                                groups=np.array([0.0, 1, 1])), TypeError, "groups"),
])
def test_threshold_rejects_bad_input(call, error, name):
    with pytest.raises(error, match=name):
        call()


# -- levels against simulation (slow) -------------------------------------------------------------

DELTA = 0.1
TRUTH_NORM = 1.5


def simulated_users(k, n, n_users, seed, *, truths=None):
    """``n_users`` independent users of a well-specified Bradley-Terry model (``beta = 1``): truths of
    norm 1.5 (logits of standard deviation 1.5), Gaussian pair coordinates, known offsets."""
    rng = np.random.default_rng(seed)
    if truths is None:
        truths = rng.normal(size=(n_users, k))
        truths *= TRUTH_NORM / np.linalg.norm(truths, axis=1, keepdims=True)
    features = rng.normal(size=(n_users, n, k))
    offsets = 0.3 * rng.normal(size=(n_users, n))
    labels = (rng.random((n_users, n)) < expit(offsets + np.einsum("unk,uk->un", features, truths))).astype(float)
    return truths, features, labels, offsets


def likelihood_sets(features, labels, offsets, *, finite_thresholds=None, wilks=True):
    """Each user's Wilks set (unpenalised loss, centred at the MLE; unless ``wilks=False``) and,
    given thresholds, the finite-sample set ``{f0 <= c}`` with the same centre."""
    n_users, n, k = features.shape
    groups = np.repeat(np.arange(n_users), n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # separable users' fits stop at the tiny ridge's bound
        fit = fit_logistic(features.reshape(-1, k), labels.ravel(), groups=groups, offsets=offsets.ravel(),
                           ridge=1e-9, fisher=False, max_iter=200)
    centre_losses = truth_losses(fit.theta, features, labels, offsets)
    wilks_sets, finite = [], []
    for user in range(n_users):
        common = dict(offset=np.zeros(k), basis=np.eye(k), features=features[user], labels=labels[user],
                      offsets=offsets[user], beta=1.0, ridge=0.0, center=fit.theta[user])
        if wilks:
            wilks_sets.append(LikelihoodRatioSet(level=theory.wilks_level(k, DELTA), **common))
        if finite_thresholds is not None:
            finite.append(LikelihoodRatioSet(level=max(finite_thresholds[user] - centre_losses[user], 0.0), **common))
    return wilks_sets, finite


def thresholds_for(features, labels, offsets):
    n_users, n, k = features.shape
    return finite_sample_likelihood_threshold(features.reshape(-1, k), labels.ravel(), offsets.ravel(), 1.0, DELTA,
                                              groups=np.repeat(np.arange(n_users), n), n_problems=n_users)


def truth_losses(truths, features, labels, offsets):
    signs = 2 * labels - 1
    return np.sum(np.logaddexp(0.0, -signs * (offsets + np.einsum("unk,uk->un", features, truths))), axis=1)


def clopper_pearson(covered, trials, confidence):
    result = scipy.stats.binomtest(int(covered), int(trials))
    interval = result.proportion_ci(confidence_level=confidence, method="exact")
    return interval.low, interval.high

COVERAGE_USERS = 1000


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 4])
def test_wilks_sets_cover_at_the_nominal_level_at_moderate_n(k):
    """50 pairs per coordinate, 1000 independent users. Wilks' approximation errs by ``O(1/n)`` in
    coverage (Bartlett), under 0.01 here against a binomial standard error of 0.0095, so the
    coverage is tested as exactly ``1 - delta``: ``1 - delta`` must lie in the two-sided 99.9%
    Clopper-Pearson interval of the observed count (a false alarm has probability <= 0.001)."""
    truths, features, labels, offsets = simulated_users(k, 50 * k, COVERAGE_USERS, seed=100 + k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_logistic(features.reshape(-1, k), labels.ravel(), groups=np.repeat(np.arange(COVERAGE_USERS), 50 * k),
                           offsets=offsets.ravel(), ridge=1e-9, fisher=False, max_iter=200)
    # Coverage is f0(w*) <= f0(w_hat) + level for every user; the sets' own membership test agrees
    # on a subsample.
    covered_by_loss = (truth_losses(truths, features, labels, offsets)
                       <= truth_losses(fit.theta, features, labels, offsets) + theory.wilks_level(k, DELTA))
    wilks, _ = likelihood_sets(features[:50], labels[:50], offsets[:50])
    assert [region.contains(truth) for region, truth in zip(wilks, truths[:50])] == list(covered_by_loss[:50])
    covered = int(covered_by_loss.sum())
    low, high = clopper_pearson(covered, COVERAGE_USERS, 0.999)
    print(f"MEASURED wilks_coverage[k={k}, n={50 * k}]: {covered / COVERAGE_USERS:.3f} "
          f"(99.9% CP [{low:.3f}, {high:.3f}]), nominal {1 - DELTA}")
    assert low <= 1 - DELTA <= high


@pytest.mark.slow
@pytest.mark.parametrize("k, pairs_per_coordinate", [(2, 2), (4, 2), (2, 50), (4, 50)])
def test_finite_sample_sets_cover_at_least_the_nominal_level(k, pairs_per_coordinate):
    """The mixture-martingale threshold is valid at every ``n``: the coverage must not be
    significantly below ``1 - delta``, i.e. the one-sided 99.9% Clopper-Pearson upper bound of the
    observed count must reach ``1 - delta`` (a false alarm has probability <= 0.001 when the
    coverage is exactly ``1 - delta``, less when it is higher)."""
    n = pairs_per_coordinate * k
    truths, features, labels, offsets = simulated_users(k, n, COVERAGE_USERS, seed=200 + n)
    thresholds = thresholds_for(features, labels, offsets)
    covered_by_loss = truth_losses(truths, features, labels, offsets) <= thresholds
    # Membership through the set's own test on a subsample (the loss comparison is the definition).
    _, finite = likelihood_sets(features[:50], labels[:50], offsets[:50], finite_thresholds=thresholds[:50],
                                wilks=False)
    assert [region.contains(truth) for region, truth in zip(finite, truths[:50])] == list(covered_by_loss[:50])
    covered = int(covered_by_loss.sum())
    _, high = clopper_pearson(covered, COVERAGE_USERS, 0.998)  # two-sided 99.8% = one-sided 99.9%
    print(f"MEASURED finite_sample_coverage[k={k}, n={n}]: {covered / COVERAGE_USERS:.3f} "
          f"(one-sided 99.9% CP upper {high:.3f}), nominal >= {1 - DELTA}")
    assert high >= 1 - DELTA


WIDTH_USERS = 100


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_finite_sample_sets_are_within_four_times_the_wilks_width_at_moderate_n(k):
    """At ``n = 50 k`` the finite-sample set must not be vacuous: its width along random directions
    at most 4 times the asymptotic set's (median over 100 users and 4 directions each). Both are
    sets of the same loss and centre, so the ratio is the level's effect alone
    (about ``sqrt(level_finite / level_wilks)`` for a nearly quadratic loss)."""
    truths, features, labels, offsets = simulated_users(k, 50 * k, WIDTH_USERS, seed=300 + k)
    thresholds = thresholds_for(features, labels, offsets)
    wilks, finite = likelihood_sets(features, labels, offsets, finite_thresholds=thresholds)
    rng = np.random.default_rng(400 + k)
    ratios = np.concatenate([f.width(v) / w.width(v) for w, f, v in
                             zip(wilks, finite, rng.normal(size=(WIDTH_USERS, 4, k)))])
    print(f"MEASURED finite_over_wilks_width[k={k}, n={50 * k}]: median {np.median(ratios):.2f}, "
          f"90% quantile {np.quantile(ratios, 0.9):.2f}")
    assert np.median(ratios) <= 4.0


@pytest.mark.slow
def test_finite_sample_width_shrinks_like_root_n_up_to_the_log_of_its_level():
    """Width of the finite-sample set against ``n`` (same 100 users and directions, fresh data).

    For a nearly quadratic loss the width along ``v`` is ``2 sqrt(2 level_n g^T H_n^{-1} g)`` with
    ``H_n ~ n I_1``, so ``log width = const - 1/2 log n + 1/2 log level_n``. The level grows at most
    by ``(k / 2) log(n2 / n1)`` between sizes (each ``log det(I + beta^2 G_n / (4 lambda))`` does,
    ``G_n`` scaling with ``n``) and is at least ``log(P / delta)`` (``P = 9`` priors), so its log grows
    at a rate at most ``(k / 2) / log(P / delta)`` per unit ``log n``: the slope lies in
    ``[-1/2, -1/2 + k / (4 log(P / delta))]`` = ``[-0.5, -0.389]`` for ``k = 2`` (the other part of the
    level, ``F_p - f0(w_hat) -> lambda_p ||w*||^2 / 2``, moves by ``O(n^(-1/2))`` only). Margins: the
    non-quadratic part of the width is of relative order ``level / n`` (odd terms cancel in
    ``upper - lower``) and the users' mean has a relative error below 1%; over the ``log 16``
    range of ``n`` these move the slope by less than ``(0.03 + 0.02) / log 16 = 0.018``: 0.02 each side.
    """
    k, sizes = 2, np.array([200, 800, 3200])
    rng = np.random.default_rng(500)
    truths = rng.normal(size=(WIDTH_USERS, k))
    truths *= TRUTH_NORM / np.linalg.norm(truths, axis=1, keepdims=True)
    directions = rng.normal(size=(WIDTH_USERS, k))
    widths = []
    for n in sizes:
        _, features, labels, offsets = simulated_users(k, n, WIDTH_USERS, seed=600 + n, truths=truths)
        thresholds = thresholds_for(features, labels, offsets)
        _, finite = likelihood_sets(features, labels, offsets, finite_thresholds=thresholds, wilks=False)
        widths.append(np.mean([region.width(v) for region, v in zip(finite, directions)]))
    slope = np.polyfit(np.log(sizes), np.log(widths), 1)[0]
    upper = -0.5 + k / (4 * np.log(len(agents.likelihood_set.DEFAULT_PRIOR_PRECISIONS) / DELTA))
    print(f"MEASURED finite_sample_width_slope[k={k}, n={sizes.tolist()}]: {slope:.3f} "
          f"(window [{-0.5 - 0.02:.3f}, {upper + 0.02:.3f}]), widths {np.round(widths, 4).tolist()}")
    assert -0.5 - 0.02 <= slope <= upper + 0.02


def test_finite_sample_sets_of_nearly_separable_data_match_a_conic_solver():
    """Two pairs per coordinate, no ridge, centred at a near-MLE of separable data (far out, every
    logit saturated): the support function starts from a ridge path point inside the set and still
    agrees with cvxpy where it is finite."""
    k, n, users = 4, 8, 6
    truths, features, labels, offsets = simulated_users(k, n, users, seed=402)
    thresholds = thresholds_for(features, labels, offsets)
    _, finite = likelihood_sets(features, labels, offsets, finite_thresholds=thresholds)
    rng = np.random.default_rng(3)
    compared = 0
    for region in finite:
        assert np.linalg.norm(region.center) > 0  # centres of separable data are far out
        vectors = rng.normal(size=(4, k))
        lower = region.lower(vectors)
        for vector, value in zip(vectors, lower):
            if np.isfinite(value):
                scale = max(1.0, abs(value - vector @ region.theta_hat))
                assert value == pytest.approx(conic_lower(region, vector, box=1e4), abs=1e-6 * scale)
                compared += 1
    assert compared >= 4
