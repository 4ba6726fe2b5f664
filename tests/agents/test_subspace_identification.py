"""P-ShareLoRA when the shared subspace is not identified: the early-stopped bootstrap, the
full-dimensional fallback set, and (slow) coverage of the full truth where the default set used to
under-cover (data concentrated on each user's optimal policy; many users with few pairs each).

The fallback set is checked against an independent construction: the full-dimensional Wald set
of :class:`agents.IndependentMLE` (its own feature-space fit, never the fallback's code), which it
must contain.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from scipy.linalg import orth
from scipy.sparse import csr_matrix
from scipy.stats import beta as beta_distribution

import agents
from agents import Ellipsoid, IndependentMLE, PShareLoRA, SubspaceErrorSet
from agents.subspace_error import (SubspaceNotIdentifiedWarning, bootstrap_refits, pair_span, sharelora_sine_bound,
                                   sine, split_half_sine, subspace_error_seed)
from lr_mdp_env import collect_preferences, random_mdp
from lr_mdp_env.collection import epsilon_optimal_policies
from lr_mdp_env.envs.random_low_rank import random_low_rank_world
from lr_mdp_env.identifiability import project_identifiable

DELTA = 0.1


# -- pieces ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
def test_pair_span_is_an_orthonormal_basis_of_the_rows(sparse):
    """Same span as scipy's SVD-based ``orth`` (projectors equal), orthonormal, and of the rows'
    rank, also with repeated and dependent rows."""
    rng = np.random.default_rng(0)
    rows = rng.integers(-1, 2, size=(7, 12)).astype(float)
    rows = np.vstack([rows, rows[0], rows[1] + rows[2], np.zeros(12)])  # dependent rows
    basis = pair_span(csr_matrix(rows) if sparse else rows)
    expected = orth(rows.T)
    assert basis.shape == expected.shape == (12, np.linalg.matrix_rank(rows))
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-12)
    np.testing.assert_allclose(basis @ basis.T, expected @ expected.T, atol=1e-10)
    assert pair_span(np.zeros((0, 5))).shape == (5, 0)
    assert pair_span(np.zeros((3, 5))).shape == (5, 0)


@pytest.fixture(scope="module")
def unidentified_world():
    """150 users with 6 pairs each in ``d = 60``: the rank-3 subspace is not identified (true
    sine of the largest angle 0.999 for this seed)."""
    world = random_low_rank_world(n_states=12, n_actions=5, horizon=5, n_users=150, rank=3, model_seed=0)
    dataset = collect_preferences(world.mdp, world.rewards, 6, seed=0)
    return world.mdp, world.rewards, dataset


def test_the_early_stopped_bootstrap_is_the_full_one_until_it_stops(identified_world):
    """Same seed, same label stream: the stopped run is a prefix of the full one; the bound with
    ``stop_at`` above the full bound is the full bound exactly, and with ``stop_at`` below it a
    value between the two."""
    mdp, _, dataset = identified_world
    estimator = PShareLoRA(2, ridge=1.0, seed=7).fit(dataset, mdp)
    fit, data = estimator.joint_fit, estimator._data
    arguments = dict(world=(fit.left, fit.right), start=(fit.left, fit.right), offsets=data.offsets,
                     ridge=estimator.ridge_, hidden=estimator._hidden, n_bootstrap=6,
                     statistic=lambda refit: sine(estimator.subspace, refit.right))
    full = bootstrap_refits(data.user_indicator(), data.differences, 2, seed=3, **arguments)
    stopped = bootstrap_refits(data.user_indicator(), data.differences, 2, seed=3,
                               stop=lambda samples: samples.shape[0] >= 2, **arguments)
    assert full.shape == (6,) and stopped.shape == (2,)
    np.testing.assert_array_equal(stopped, full[:2])
    seed = subspace_error_seed(7)
    bound = sharelora_sine_bound(estimator, n_bootstrap=19, level=0.95, seed=seed)
    assert sharelora_sine_bound(estimator, n_bootstrap=19, level=0.95, seed=seed, stop_at=bound + 1e-9) == bound
    early = sharelora_sine_bound(estimator, n_bootstrap=19, level=0.95, seed=seed, stop_at=0.5 * bound)
    assert 0.5 * bound <= early <= bound


def test_an_identified_subspace_keeps_the_reduced_set(identified_world):
    mdp, _, dataset = identified_world
    estimator = PShareLoRA(2, ridge=1.0, seed=7).fit(dataset, mdp)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SubspaceNotIdentifiedWarning)
        region = estimator.confidence_set(0)
    assert estimator.subspace_identified_ and estimator.sine_bound_ < estimator.max_sine
    assert isinstance(region, SubspaceErrorSet)
    np.testing.assert_array_equal(region.inner.basis, estimator.subspace)


def test_an_unidentified_subspace_falls_back_to_the_independent_wald_set(unidentified_world):
    """The fallback contains the full-dimensional Wald set of the independent fit at level
    ``delta / 2`` (same inference ridge): its support function is below that set's along every
    direction, and that set's minimisers are members. Containment is exact, so the tolerance is
    the two fits' stopping tolerance (relative gradient 1e-8) times the scale of the values."""
    mdp, rewards, dataset = unidentified_world
    estimator = PShareLoRA(3, ridge=10.0, seed=0, delta=DELTA).fit(dataset, mdp)
    with pytest.warns(SubspaceNotIdentifiedWarning, match="not identified"):
        region = estimator.confidence_set(0)
    assert not estimator.subspace_identified_ and estimator.sine_bound_ >= estimator.max_sine
    assert isinstance(region, SubspaceErrorSet) and isinstance(region.inner, Ellipsoid)
    independent = IndependentMLE(ridge=10.0, seed=0, delta=DELTA / 2).fit(dataset, mdp)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, mdp.n_features))
    for user in (0, 1, 100):
        fallback, full = estimator.confidence_set(user), independent.confidence_set(user)
        lower, expected = np.asarray(fallback.lower(vectors)), np.asarray(full.lower(vectors))
        assert np.all(lower <= expected + 1e-6 * np.maximum(1.0, np.abs(expected)))
        for member in full.minimizer(vectors[:5]):
            assert fallback.contains(member, atol=1e-6)
        np.testing.assert_allclose(fallback.theta_hat, full.theta_hat, atol=1e-5 * np.abs(full.theta_hat).max())
    # Nothing of U_hat is used: the ball's radius is the Wald radius over sqrt(inference ridge).
    assert region.epsilon == pytest.approx(region.inner.radius / np.sqrt(estimator.inference_ridge_))
    truth = project_identifiable(mdp, rewards.theta.T)
    assert all(estimator.confidence_set(user).contains(truth[user], project=True) for user in range(10))


def test_the_split_halves_disagree_only_where_the_subspace_is_not_identified(identified_world, unidentified_world):
    """Two fits on independent halves of the users: close where the subspace is identified, two
    unrelated noise fits (sine near 1) where it is not. The measured values are 0.2 and 0.99+."""
    fitted = []
    for mdp, _, dataset in (identified_world, unidentified_world):
        rank = 2 if dataset is identified_world[2] else 3
        fitted.append(split_half_sine(PShareLoRA(rank, ridge=1.0, seed=0).fit(dataset, mdp)))
    assert fitted[0] < 0.8 <= 0.9 < fitted[1] <= 1.0


def test_the_split_check_alone_triggers_the_fallback(identified_world, monkeypatch):
    """The decision: a bootstrap bound below max_sine with halves that disagree by at least
    ``min(1, 2 max_sine)`` falls back (the split value is replaced to isolate the rule)."""
    import agents.estimators

    mdp, _, dataset = identified_world
    monkeypatch.setattr(agents.estimators, "split_half_sine", lambda estimator: 0.85)
    estimator = PShareLoRA(2, ridge=1.0, seed=7).fit(dataset, mdp)
    with pytest.warns(SubspaceNotIdentifiedWarning, match="two halves"):
        region = estimator.confidence_set(0)
    assert estimator.sine_bound_ < estimator.max_sine and estimator.split_sine_ == 0.85
    assert not estimator.subspace_identified_
    assert region.epsilon == pytest.approx(region.inner.radius / np.sqrt(estimator.inference_ridge_))
    monkeypatch.setattr(agents.estimators, "split_half_sine", lambda estimator: 0.75)
    kept = PShareLoRA(2, ridge=1.0, seed=7).fit(dataset, mdp)
    kept.confidence_set(0)
    assert kept.subspace_identified_


def test_max_sine_is_checked_and_decides(unidentified_world):
    with pytest.raises(ValueError, match="max_sine"):
        PShareLoRA(2, max_sine=0.0)
    with pytest.raises(ValueError, match="max_sine"):
        PShareLoRA(2, max_sine=1.5)
    mdp, _, dataset = unidentified_world
    # The bound (0.998 here) is below 1: with max_sine = 1 the reduced set is kept (3 refits at
    # level 1 - delta/2 = 0.75: the 3rd smallest, ceil(0.75 * 4) = 3).
    lenient = PShareLoRA(3, ridge=10.0, seed=0, max_sine=1.0, delta=0.5, n_bootstrap=3).fit(dataset, mdp)
    assert isinstance(lenient.confidence_set(0).inner, Ellipsoid) and lenient.subspace_identified_
    np.testing.assert_array_equal(lenient.confidence_set(0).inner.basis, lenient.subspace)


# -- coverage of the full truth (slow) ------------------------------------------------------------------

def clopper_pearson_upper(covered, total, confidence=0.99):
    """Upper end of the two-sided Clopper-Pearson interval for a binomial proportion."""
    if covered == total:
        return 1.0
    return float(beta_distribution.ppf(1 - (1 - confidence) / 2, covered + 1, total - covered))


@pytest.mark.slow
@pytest.mark.parametrize("epsilon, pairs", [(0.05, 50), (0.05, 200), (0.3, 200), (0.6, 200), (1.0, 50), (1.0, 200)])
def test_sharelora_covers_with_concentrated_data(epsilon, pairs):
    """The world of ``lr-mdp reproduce pessimism`` (20 users of rank 2, one-hot ``d = 18``), each
    user's pairs from their own epsilon-optimal policy, 8 worlds (160 users): the fraction of users
    whose identifiable truth is in their default set must reach ``1 - delta`` within the 99%
    Clopper-Pearson interval (before the fallback: 73% / 66% at epsilon 0.05, 84-94% at 1).
    Users of one world share ``U_hat``, so their events are positively correlated and the binomial
    interval is a lower bound on the spread; 8 worlds give 8 draws of ``U_hat``."""
    covered, total, identified = 0, 0, 0
    for seed in range(8):
        world = random_low_rank_world(n_states=6, n_actions=3, horizon=4, n_users=20, rank=2, model_seed=seed)
        behaviour = epsilon_optimal_policies(world.mdp, world.rewards, epsilon)
        dataset = collect_preferences(world.mdp, world.rewards, pairs, behavior=behaviour, seed=100 + seed)
        estimator = PShareLoRA(2, delta=DELTA, seed=seed, progress=False).fit(dataset, world.mdp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SubspaceNotIdentifiedWarning)
            in_set = agents.coverage(estimator, world.rewards)
        covered, total = covered + int(in_set.sum()), total + in_set.size
        identified += estimator.subspace_identified_
    print(f"MEASURED subspace-identification concentrated epsilon={epsilon} pairs={pairs} covered={covered}/{total} "
          f"({covered / total:.3f}, nominal {1 - DELTA}) identified_worlds={identified}/8")
    assert clopper_pearson_upper(covered, total) >= 1 - DELTA


@pytest.mark.slow
def test_sharelora_covers_an_unidentified_world():
    """Many users, few pairs each (``n_i = 10 << d = 100``, 300 users, rank 3; the research-scale
    case of 1000 users with 50 pairs in ``d = 2000`` at a size that runs in seconds), two worlds:
    the check must find the subspace not identified, and the fallback set must cover at least
    ``1 - delta`` of the users within the 99% Clopper-Pearson interval (the reduced set with the
    bootstrap ball covered 6.6% at research scale)."""
    covered, total, seconds = 0, 0, []
    for seed in range(2):
        world = random_low_rank_world(n_states=20, n_actions=5, horizon=5, n_users=300, rank=3, model_seed=seed)
        dataset = collect_preferences(world.mdp, world.rewards, 10, seed=seed)
        estimator = PShareLoRA(3, delta=DELTA, seed=seed, progress=False).fit(dataset, world.mdp)
        start = time.perf_counter()
        with pytest.warns(SubspaceNotIdentifiedWarning):
            estimator.confidence_set(0)
        seconds.append(time.perf_counter() - start)
        assert not estimator.subspace_identified_
        in_set = agents.coverage(estimator, world.rewards)
        covered, total = covered + int(in_set.sum()), total + in_set.size
        truth = project_identifiable(world.mdp, world.rewards.theta.T)
        assert sine(np.linalg.svd(truth.T, full_matrices=False)[0][:, :3], estimator.subspace) > 0.9
    print(f"MEASURED subspace-identification unidentified n_i=10 d=100 covered={covered}/{total} "
          f"({covered / total:.3f}, nominal {1 - DELTA}) first_set_seconds={max(seconds):.2f}")
    assert clopper_pearson_upper(covered, total) >= 1 - DELTA


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [10, 100])
def test_loco_sets_cover_with_few_contexts(pairs):
    """LoCo-PRS with 12 contexts (users), six worlds (72 contexts): the dropped-block bound must
    cover at least ``1 - delta`` within the 99% Clopper-Pearson interval where the subspaces are
    barely identified (10 pairs) and where they are (100 pairs); the 120-context case is in
    tests/agents/test_subspace_error.py."""
    from agents import LoCoPRS
    from lr_mdp_env import contextual_rewards

    covered, total = 0, 0
    for seed in range(6):
        mdp = random_mdp(5, 3, 2, features="dense", n_features=6, seed=50 + seed)
        rewards = contextual_rewards(6, 4, 2, n_users=12, mdp=mdp, scale=2.0, seed=60 + seed)
        dataset = collect_preferences(mdp, rewards, pairs, seed=70 + seed)
        estimator = LoCoPRS(2, delta=DELTA, seed=seed, progress=False).fit(dataset, mdp)
        truth = project_identifiable(mdp, rewards.theta.T)
        in_set = [estimator.confidence_set(user).contains(truth[user]) for user in range(rewards.n_users)]
        covered, total = covered + int(np.sum(in_set)), total + len(in_set)
    print(f"MEASURED subspace-identification loco contexts=12 pairs={pairs} covered={covered}/{total} "
          f"({covered / total:.3f}, nominal {1 - DELTA})")
    assert clopper_pearson_upper(covered, total) >= 1 - DELTA
