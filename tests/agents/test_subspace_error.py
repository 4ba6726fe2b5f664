"""Sets that carry the error of an estimated subspace: exact operations against a conic solver, the
estimators' hooks, and (slow) coverage of the full truth.

The oracle of the exactness tests is cvxpy: it sees the set only through its definition
``{offset + B w + e : ||w - c||_M <= rho, U^T e = 0, ||e|| <= epsilon}``, never through the code
under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta as beta_distribution

import agents
from agents import ConfidenceSet, Ellipsoid, LoCoPRS, PShareLoRA, SubspaceErrorSet
from agents.subspace_error import order_statistic, sine
from lr_mdp_env import collect_preferences, contextual_rewards, low_rank_rewards, random_mdp
from lr_mdp_env.identifiability import project_identifiable

cp = pytest.importorskip("cvxpy")


def orthonormal(rng, rows, columns):
    return np.linalg.qr(rng.normal(size=(rows, columns)))[0]


def random_instance(rng, d, r, k, *, inside):
    """A subspace ``U`` (d, r) and an ellipsoid whose basis lies in ``range(U)`` (``inside``, the
    P-ShareLoRA case) or is generic (the LoCo case, moving along the complement too)."""
    subspace = orthonormal(rng, d, r)
    basis = subspace @ rng.normal(size=(r, k)) if inside else rng.normal(size=(d, k))
    q = orthonormal(rng, k, k)
    matrix = (q * np.exp(rng.uniform(-1.5, 1.5, size=k))) @ q.T
    inner = Ellipsoid(offset=rng.normal(size=d), basis=basis, center=rng.normal(size=k),
                      matrix=0.5 * (matrix + matrix.T), radius=float(rng.uniform(0.3, 2.0)))
    return SubspaceErrorSet(inner, subspace, float(rng.uniform(0.1, 1.5)))


def cvxpy_members(region):
    """cvxpy variables ``(theta, constraints)`` describing the set from its definition."""
    inner = region.inner
    d, k = inner.basis.shape
    w, e = cp.Variable(k), cp.Variable(d)
    root = np.linalg.cholesky(inner.matrix).T  # ||x||_M = ||L^T x||
    constraints = [cp.norm(root @ (w - inner.center)) <= inner.radius, region.subspace.T @ e == 0,
                   cp.norm(e) <= region.epsilon]
    return inner.offset + inner.basis @ w + e, constraints


def cvxpy_lower(region, vector):
    theta, constraints = cvxpy_members(region)
    problem = cp.Problem(cp.Minimize(vector @ theta), constraints)
    problem.solve(solver=cp.CLARABEL)
    return problem.value


def cvxpy_required_epsilon(region, theta):
    """``min ||e||`` over splits ``theta = t + e`` with ``t`` in the inner set and ``U^T e = 0``."""
    inner = region.inner
    d, k = inner.basis.shape
    w = cp.Variable(k)
    root = np.linalg.cholesky(inner.matrix).T
    error = theta - inner.offset - inner.basis @ w
    problem = cp.Problem(cp.Minimize(cp.norm(error)),
                         [cp.norm(root @ (w - inner.center)) <= inner.radius, region.subspace.T @ error == 0])
    problem.solve(solver=cp.CLARABEL)
    return np.inf if problem.status in ("infeasible", "infeasible_inaccurate") else problem.value


cases = [(seed, inside) for seed in range(6) for inside in (True, False)]


# -- exactness against cvxpy --------------------------------------------------------------------------

@pytest.mark.parametrize("seed, inside", cases)
def test_lower_upper_and_minimizer_match_a_conic_solver(seed, inside):
    rng = np.random.default_rng(seed)
    d, r = 5, 2
    region = random_instance(rng, d, r, r if inside else 3, inside=inside)
    vectors = rng.normal(size=(4, d))
    vectors[0] = region.subspace @ rng.normal(size=r)  # no complement part: the ball does not move it
    lower = region.lower(vectors)
    for vector, value in zip(vectors, lower):
        expected = cvxpy_lower(region, vector)
        # Clarabel's default tolerances are 1e-8 relative: 1e-6 leaves a wide margin above them.
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert region.upper(vector) == pytest.approx(-cvxpy_lower(region, -vector), rel=1e-6, abs=1e-6)
    minimizers = region.minimizer(vectors)
    assert minimizers.shape == vectors.shape
    for vector, member, value in zip(vectors, minimizers, lower):
        assert member @ vector == pytest.approx(value, rel=1e-12, abs=1e-12)
        assert region.contains(member, atol=1e-7)


@pytest.mark.parametrize("seed, inside", cases)
def test_membership_matches_a_conic_solver(seed, inside):
    rng = np.random.default_rng(100 + seed)
    d, r = 5, 2
    region = random_instance(rng, d, r, r if inside else 3, inside=inside)
    decided = 0
    for _ in range(8):
        # Points around the set: a member pushed out by a random amount along a random direction.
        theta = region.minimizer(rng.normal(size=d)) + rng.normal(size=d) * rng.uniform(0.0, 1.0)
        expected = cvxpy_required_epsilon(region, theta)
        needed = region.required_epsilon(theta)
        if np.isinf(expected):
            assert np.isinf(needed)
        else:
            assert needed == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # Membership is decided where the solver's answer is not within its own accuracy of the radius.
        if abs(expected - region.epsilon) > 1e-5:
            decided += 1
            assert region.contains(theta) == (expected < region.epsilon)
    assert decided >= 6


def test_seminorm_structure_gives_the_same_support_function():
    rng = np.random.default_rng(3)
    region = random_instance(rng, 6, 2, 3, inside=False)
    terms = region.seminorms()
    assert len(terms) == 2 and terms[-1].radius == region.epsilon
    vectors = rng.normal(size=(5, 6))
    structured = vectors @ region.theta_hat - sum(term.radius * term.norm(vectors) for term in terms)
    np.testing.assert_allclose(region.lower(vectors), structured, rtol=1e-12, atol=1e-12)


class _NoStructure(ConfidenceSet):
    """An ellipsoid seen only through the protocol (no seminorms, no basis): the generic path."""

    def __init__(self, ellipsoid):
        self.ellipsoid = ellipsoid

    @property
    def n_features(self):
        return self.ellipsoid.n_features

    @property
    def theta_hat(self):
        return self.ellipsoid.theta_hat

    def lower(self, vectors):
        return self.ellipsoid.lower(vectors)

    def minimizer(self, vectors):
        return self.ellipsoid.minimizer(vectors)

    def contains(self, theta, *, atol=1e-9):
        return self.ellipsoid.contains(theta, atol=atol)


def test_membership_through_the_support_function_alone():
    """Without structure, ``contains`` measures the distance to ``C`` by Frank-Wolfe with a
    certified gap; it agrees with cvxpy on points clearly inside or outside (relative margin 5%)."""
    rng = np.random.default_rng(4)
    full = random_instance(rng, 4, 2, 4, inside=False)
    region = SubspaceErrorSet(_NoStructure(full.inner), full.subspace, full.epsilon)
    checked = 0
    for _ in range(6):
        theta = full.minimizer(rng.normal(size=4)) + rng.normal(size=4) * rng.uniform(0.0, 0.6)
        needed = cvxpy_required_epsilon(full, theta)
        if abs(needed - full.epsilon) > 0.05 * full.epsilon:
            checked += 1
            assert region.contains(theta) == (needed < full.epsilon)
    assert checked >= 3
    assert region.contains(region.theta_hat)


def test_bad_arguments_are_named():
    rng = np.random.default_rng(5)
    region = random_instance(rng, 4, 2, 2, inside=True)
    with pytest.raises(TypeError, match="inner must be a ConfidenceSet"):
        SubspaceErrorSet(np.eye(2), region.subspace, 1.0)
    with pytest.raises(ValueError, match="subspace must have orthonormal columns"):
        SubspaceErrorSet(region.inner, 2 * region.subspace, 1.0)
    with pytest.raises(ValueError, match="subspace must have shape"):
        SubspaceErrorSet(region.inner, np.eye(3)[:, :2], 1.0)
    with pytest.raises(ValueError, match="epsilon must be at least 0"):
        SubspaceErrorSet(region.inner, region.subspace, -1.0)
    with pytest.raises(ValueError, match="epsilon must be finite"):
        SubspaceErrorSet(region.inner, region.subspace, np.nan)
    with pytest.raises(ValueError, match="theta must have shape"):
        region.contains(np.zeros(3))
    with pytest.raises(ValueError, match="subspace_error must be one of"):
        PShareLoRA(2, subspace_error="wedin")
    with pytest.raises(ValueError, match="n_bootstrap must be at least 1"):
        LoCoPRS(2, n_bootstrap=0)


def test_order_statistic_is_the_monte_carlo_rank():
    samples = np.arange(1.0, 20.0)[::-1]  # 19 samples: the 0.95 rank is ceil(0.95 * 20) = 19
    assert order_statistic(samples, 0.95) == 19.0
    assert order_statistic(samples, 0.9) == 18.0  # ceil(0.9 * 20) = 18
    assert np.isinf(order_statistic(samples[:18], 0.95))  # ceil(0.95 * 19) = 19 > 18 samples
    columns = np.stack([samples, 2 * samples], axis=1)
    np.testing.assert_array_equal(order_statistic(columns, 0.95), [19.0, 38.0])


def test_sine_is_the_largest_principal_angle():
    angle = 0.3
    subspace = np.eye(3)[:, :1]
    estimate = np.array([[np.cos(angle)], [np.sin(angle)], [0.0]])
    assert sine(subspace, 5.0 * estimate) == pytest.approx(np.sin(angle), rel=1e-12)


# -- the estimators' hooks ------------------------------------------------------------------------------

def test_the_default_set_contains_the_projection_only_set(identified_world):
    """Containment of convex sets is domination of support functions: the default set (inner set
    at level delta/2, plus the ball) has ``lower <= `` that of the ``"ignore"`` set (level delta)."""
    mdp, rewards, dataset = identified_world
    default = PShareLoRA(2, ridge=1.0, seed=7).fit(dataset, mdp)
    projection_only = PShareLoRA(2, ridge=1.0, seed=7, subspace_error="ignore").fit(dataset, mdp)
    np.testing.assert_allclose(default.theta_hat, projection_only.theta_hat)
    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(20, mdp.n_features))
    epsilons = []
    for user in range(5):
        region, narrow = default.confidence_set(user), projection_only.confidence_set(user)
        assert isinstance(region, SubspaceErrorSet) and isinstance(narrow, Ellipsoid)
        assert np.all(region.lower(vectors) <= narrow.lower(vectors) + 1e-12)
        for member in narrow.minimizer(vectors[:3]):
            assert region.contains(member)
        assert region.inner.radius > narrow.radius  # chi-square quantile at delta / 2 against delta
        epsilons.append(region.epsilon)
    assert np.all(np.isfinite(epsilons)) and np.all(np.asarray(epsilons) > 0)
    # The bootstrap is seeded from the estimator's seed: the same seed gives the same epsilon.
    again = PShareLoRA(2, ridge=1.0, seed=7).fit(dataset, mdp)
    assert again.confidence_set(0).epsilon == epsilons[0]


def test_coverage_and_evaluate_test_the_full_truth(identified_world):
    """``coverage`` and ``evaluate``'s ``truth_in_set`` agree with an independent test: the
    identifiable truth splits as ``t + e`` with ``t = offset + P theta*`` in the ellipsoid (its
    coordinates ``U^T (theta* - offset)`` within the radius in the M-norm) and ``||e|| <= epsilon``."""
    mdp, rewards, dataset = identified_world
    agent = agents.make("p-sharelora", rank=2, ridge=1.0, pessimism="rectangular").fit(dataset, mdp)
    estimator = agent.estimator
    covered = agents.coverage(estimator, rewards)
    truth = project_identifiable(mdp, rewards.theta.T)
    expected = []
    for user in range(rewards.n_users):
        region = estimator.confidence_set(user)
        inner = region.inner
        coordinates = estimator.subspace.T @ (truth[user] - inner.offset)
        deviation = coordinates - inner.center
        off = truth[user] - inner.offset - estimator.subspace @ coordinates
        expected.append(deviation @ inner.matrix @ deviation <= inner.radius**2 and
                        np.linalg.norm(off) <= region.epsilon)
    np.testing.assert_array_equal(covered, expected)
    assert 0 < np.mean(covered)
    report = agents.evaluate(agent, mdp, rewards)
    np.testing.assert_array_equal(report["truth_in_set"].to_numpy(dtype=bool), expected)
    # The pessimism lemma's bound of a general set is its width along d_pi* - d_ref.
    assert np.all(report["misspecification"] == 0) and np.all(report["bound"] > 0)


def test_too_few_refits_for_the_level_are_refused(identified_world):
    """The bound is the ceil((1 - delta / 2)(B + 1))-th of B replicates: B = 18 < 19 at delta = 0.1."""
    mdp, rewards, dataset = identified_world
    estimator = PShareLoRA(2, ridge=1.0, n_bootstrap=18).fit(dataset, mdp)
    with pytest.raises(ValueError, match="raise n_bootstrap to at least 19"):
        estimator.confidence_set(0)


def test_an_exact_subspace_has_no_error():
    """With ``rank = d`` the estimated subspace is all of ``R^d``: ``epsilon = 0``."""
    mdp = random_mdp(3, 2, 3, features="dense", n_features=4, seed=1)
    rewards = low_rank_rewards(4, 12, 4, mdp=mdp, scale=2.0, seed=2)
    dataset = collect_preferences(mdp, rewards, 30, seed=3)
    estimator = PShareLoRA(4, ridge=1.0).fit(dataset, mdp)
    assert estimator.confidence_set(0).epsilon == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def context_world():
    mdp = random_mdp(5, 3, 2, features="dense", n_features=6, seed=0)
    rewards = contextual_rewards(6, 4, 2, n_users=40, mdp=mdp, scale=2.0, seed=1)
    dataset = collect_preferences(mdp, rewards, 25, seed=2)
    return mdp, rewards, dataset


def test_loco_sets_carry_the_dropped_block(context_world):
    mdp, rewards, dataset = context_world
    estimator = LoCoPRS(2, ridge=1.0).fit(dataset, mdp)
    projection_only = LoCoPRS(2, ridge=1.0, subspace_error="ignore").fit(dataset, mdp)
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(10, mdp.n_features))
    for user in range(4):
        region = estimator.confidence_set(user)
        outside = np.linalg.norm(rewards.contexts[user] - estimator.context_subspace @
                                 (estimator.context_subspace.T @ rewards.contexts[user]))
        assert region.epsilon == pytest.approx(estimator.dropped_block_epsilon_ * outside, rel=1e-12)
        assert np.all(region.lower(vectors) <= projection_only.confidence_set(user).lower(vectors) + 1e-12)
    # covers(Theta*) certifies every context: the truth of each user is then in the user's set.
    if estimator.covers(rewards.theta_c):
        for user in range(rewards.n_users):
            assert estimator.confidence_set(user).contains(rewards.theta[:, user], atol=1e-7)
    # Known subspaces drop nothing they do not know: epsilon is 0.
    oracle = LoCoPRS(2, ridge=1.0, subspaces=(rewards.context_subspace, rewards.subspace)).fit(dataset, mdp)
    assert oracle.confidence_set(0).epsilon == 0.0


# -- coverage of the full truth (slow) ------------------------------------------------------------------

def clopper_pearson_upper(covered, total, confidence=0.99):
    """Upper end of the two-sided Clopper-Pearson interval for a binomial proportion."""
    if covered == total:
        return 1.0
    return float(beta_distribution.ppf(1 - (1 - confidence) / 2, covered + 1, total - covered))


DELTA = 0.1


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [25, 50, 200])
def test_sharelora_sets_cover_the_full_truth(pairs):
    """The fraction of users whose identifiable truth lies in their default set is at least
    ``1 - delta`` within binomial error: the two-sided 99% Clopper-Pearson interval of the count
    must reach ``1 - delta``. Users share one estimated subspace, so their events are positively
    correlated and the binomial interval is a lower bound on the spread; two independent datasets
    are pooled to give it more than one draw of ``U_hat``.

    The set must not be vacuous: ``epsilon_i`` against the true distance
    ``||(I - P) theta*_i||`` of the truth to ``U_hat``. ``epsilon_i = tan(a) rho_i`` with ``a``
    the bootstrap bound on the largest principal angle and ``rho_i <= ||theta*_i|| + radius_i /
    sqrt(lambda_min(M_i))`` the inner set's reach along ``U_hat``, while the true distance is
    ``sin(a_i) ||theta*_i||`` with ``a_i`` the angle along the user's own direction: with the
    bootstrap quantile within a factor 2 of the angle, ``a_i`` within ``sqrt(r)`` of ``a`` for the
    median user of a rank-2 model and the reach within twice the norm, the ratio's median is
    below ``2 * sqrt(2) * 2 < 6``; 10 leaves room for the quantile's own spread.
    """
    covered, total, ratios, projection_only = 0, 0, [], 0
    for replicate in range(2):
        mdp = random_mdp(10, 3, 4, seed=20 + replicate)
        rewards = low_rank_rewards(mdp.n_features, 150, 2, mdp=mdp, scale=2.0, seed=30 + replicate)
        dataset = collect_preferences(mdp, rewards, pairs, seed=40 + replicate)
        estimator = PShareLoRA(2, delta=DELTA, seed=replicate).fit(dataset, mdp)
        in_set = agents.coverage(estimator, rewards)
        assert estimator.subspace_identified_  # identified here: the ball, not the fallback
        covered, total = covered + int(in_set.sum()), total + in_set.size
        truth = project_identifiable(mdp, rewards.theta.T)
        distance = np.linalg.norm(truth - (truth @ estimator.subspace) @ estimator.subspace.T, axis=1)
        epsilon = np.array([estimator.confidence_set(user).epsilon for user in range(rewards.n_users)])
        ratios.append(epsilon / distance)
        # For comparison: the set in U_hat's span alone holds the full truth of almost nobody.
        projection_only += sum(estimator.confidence_set(user).inner.contains(truth[user], atol=1e-6)
                               for user in range(rewards.n_users))
    ratio = float(np.median(np.concatenate(ratios)))
    print(f"MEASURED subspace-error estimator=p-sharelora pairs={pairs} covered={covered}/{total} "
          f"({covered / total:.3f}, nominal {1 - DELTA}) median_epsilon_over_distance={ratio:.2f} "
          f"inner_set_alone_covered={projection_only}/{total}")
    assert clopper_pearson_upper(covered, total) >= 1 - DELTA
    assert ratio < 10


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [10, 25, 100])
def test_loco_sets_cover_the_full_truth(pairs):
    """LoCo-PRS with 120 users (contexts): the fraction of users whose true ``theta*(x_i)`` (its
    identifiable part) lies in their default set is at least ``1 - delta`` within the 99%
    Clopper-Pearson interval, pooled over two datasets. Not vacuous: the ball's radius
    ``epsilon ||U_perp^T x||`` against the true dropped part ``||V_perp V_perp^T Theta*^T U_perp
    U_perp^T x||``, median ratio below 10 (``epsilon`` is ``s / (1 - s)`` times a bound on
    ``sigma_1(Theta*)`` with ``s`` the bootstrap bound on the product of the two sines; the true
    dropped block is the product of the actual sines times at most ``sigma_1``)."""
    covered, total, ratios = 0, 0, []
    for replicate in range(2):
        mdp = random_mdp(5, 3, 2, features="dense", n_features=6, seed=50 + replicate)
        rewards = contextual_rewards(6, 4, 2, n_users=120, mdp=mdp, scale=2.0, seed=60 + replicate)
        dataset = collect_preferences(mdp, rewards, pairs, seed=70 + replicate)
        estimator = LoCoPRS(2, delta=DELTA, seed=replicate).fit(dataset, mdp)
        truth = project_identifiable(mdp, rewards.theta.T)
        in_set = np.array([estimator.confidence_set(user).contains(truth[user])
                           for user in range(rewards.n_users)])
        covered, total = covered + int(in_set.sum()), total + in_set.size
        left, right = estimator.context_subspace, estimator.subspace
        theta_c = rewards.theta_c
        dropped = theta_c - left @ (left.T @ theta_c)
        dropped = dropped - (dropped @ right) @ right.T
        contexts = rewards.contexts
        residual = np.linalg.norm(contexts @ dropped, axis=1)
        epsilon = np.array([estimator.confidence_set(user).epsilon for user in range(rewards.n_users)])
        ratios.append(epsilon[residual > 0] / residual[residual > 0])
    ratio = float(np.median(np.concatenate(ratios)))
    print(f"MEASURED subspace-error estimator=loco-prs pairs={pairs} covered={covered}/{total} "
          f"({covered / total:.3f}, nominal {1 - DELTA}) median_epsilon_over_dropped={ratio:.2f}")
    assert clopper_pearson_upper(covered, total) >= 1 - DELTA
    assert ratio < 10


@pytest.mark.parametrize("delta, expected", [(0.1, 19), (0.05, 39), (0.3, 19)])
def test_default_number_of_refits_gives_a_finite_bound_at_every_delta(delta, expected):
    """The order statistic ceil((1 - delta/2)(B + 1)) exists only for B >= ceil(2/delta) - 1."""
    from agents import LoCoPRS, PShareLoRA
    assert PShareLoRA(2, delta=delta).n_bootstrap == expected
    assert LoCoPRS(2, delta=delta).n_bootstrap == expected
    assert PShareLoRA(2, delta=delta, n_bootstrap=5).n_bootstrap == 5
