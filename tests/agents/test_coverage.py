"""Coverage curves of the estimators' confidence sets (docs/confidence_sets.md), slow.

For each estimator and each set kind (``confidence="wald"``, ``"likelihood"``, ``"finite"``) the
fraction of trials whose truth lies in the ``1 - delta`` set, at four sample sizes from about 1.5
pairs per coordinate up, with the ridge of the point estimate chosen by held-out likelihood (the
default). Users with their own pairs are independent trials; the pooled and the contextual
estimators have one set per dataset, so their trials are independent datasets. Reduced
estimators are checked on the truth's projection onto their span.

Assertions (``ALPHA`` two-sided Clopper-Pearson intervals, exact for a binomial count):

- every kind covers: the interval's upper end is at least ``1 - delta``;
- a valid set that is too wide also fails: the asymptotic kinds at the largest sample size must
  not cover significantly more than ``1 - delta`` (the interval's lower end at most
  ``1 - delta``), and the finite-sample set's width is at most 4 times the Wald set's at moderate
  ``n`` (median over users and directions).

With ``m`` cells each tested at ``ALPHA = 1e-3``, a correct set (coverage exactly ``1 - delta``)
fails a cell with probability at most ``ALPHA / 2`` per side, so the whole file with fewer than 80
one-sided tests fails by chance with probability below 4%, and far less for the valid sets that
cover more than ``1 - delta``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from agents import FullRankContextual, IndependentMLE, OracleSubspaceMLE, PooledMLE, PShareLoRA
from lr_mdp_env import collect_preferences, contextual_rewards, low_rank_rewards, random_mdp, theory

pytestmark = pytest.mark.slow

DELTA = 0.1
ALPHA = 1e-3
KINDS = ("wald", "likelihood", "finite")
#: Random directions along which set widths are compared.
N_DIRECTIONS = 4


def interval(covered: int, trials: int) -> tuple[float, float]:
    """Two-sided ``1 - ALPHA`` Clopper-Pearson interval of a binomial proportion."""
    result = stats.binomtest(covered, trials).proportion_ci(confidence_level=1 - ALPHA, method="exact")
    return result.low, result.high


def user_coverage(estimator, rewards):
    """Per user: whether the truth's projection onto the set's affine span is in the set."""
    hits = []
    for user in range(rewards.theta.shape[1]):
        region = estimator.confidence_set(user)
        projection = theory.affine_projection(rewards.theta[:, user], region.offset, region.basis)
        hits.append(bool(region.contains(projection)))
    return np.array(hits)


def per_user_world(seed, rank=2):
    """One-hot features of a 6-state, 3-action MDP (d = 18, 17 identifiable directions), 100 users
    of rank 2, uniform behaviour: the world of the measurements in docs/confidence_sets.md."""
    mdp = random_mdp(6, 3, 4, seed=seed)
    rewards = low_rank_rewards(mdp.n_features, 100, rank, mdp=mdp, seed=seed + 1)
    return mdp, rewards


def per_user_curve(name, make, sizes, seed):
    mdp, rewards = per_user_world(seed)
    directions = np.random.default_rng(seed + 2).normal(size=(N_DIRECTIONS, mdp.n_features))
    rows = []
    for n in sizes:
        dataset = collect_preferences(mdp, rewards, n, behavior="uniform", seed=seed + 3 + n)
        widths = {}
        for kind in KINDS:
            estimator = make(rewards, confidence=kind, delta=DELTA).fit(dataset, mdp)
            hits = user_coverage(estimator, rewards)
            rows.append((name, kind, n, int(hits.sum()), hits.size))
            if n == sizes[-2] and kind != "likelihood":
                widths[kind] = np.array([estimator.confidence_set(user).width(directions)
                                         for user in range(0, rewards.theta.shape[1], 5)])
        if widths:
            rows.append((name, "finite/wald width", n, float(np.median(widths["finite"] / widths["wald"])), None))
    return rows


def repeated_curve(name, fit_one, sizes, n_trials):
    """Coverage over ``n_trials`` independent datasets of an estimator with one set per dataset."""
    rows = []
    for n in sizes:
        for kind in KINDS:
            covered = sum(fit_one(kind, n, trial) for trial in range(n_trials))
            rows.append((name, kind, n, covered, n_trials))
    return rows


def check(rows, largest):
    """Print every cell as a MEASURED line, then assert (all lines are printed first)."""
    failures = []
    for name, kind, n, value, trials in rows:
        if trials is None:
            print(f"MEASURED width_ratio estimator={name} set=finite/wald n={n} median={value:.2f}")
            continue
        low, high = interval(value, trials)
        print(f"MEASURED coverage estimator={name} set={kind} n={n} covered={value}/{trials} "
              f"({100 * value / trials:.0f}%, Clopper-Pearson {100 * (1 - ALPHA):.1f}% [{low:.3f}, {high:.3f}])")
        if high < 1 - DELTA:
            failures.append(f"{name} {kind} n={n}: covers {value}/{trials}, significantly below {1 - DELTA}")
        if kind != "finite" and n == largest and low > 1 - DELTA:
            failures.append(f"{name} {kind} n={n}: covers {value}/{trials}, significantly above {1 - DELTA} "
                            "(wider than the asymptotic level needs)")
    return failures


PER_USER_SIZES = {"independent": (25, 50, 100, 400), "oracle-subspace": (3, 6, 12, 48),
                  "p-sharelora": (3, 6, 12, 48)}


@pytest.mark.parametrize("name", ["independent", "oracle-subspace", "p-sharelora"])
def test_per_user_sets_cover_at_every_sample_size(name):
    """Independent MLE: ``k = 17``, so 25 pairs per user is 1.5 pairs per coordinate (the issue's
    world, where the tuned-ridge sets covered 66-80%). Oracle subspace and P-ShareLoRA: ``k = 2``,
    from 3 pairs per user (P-ShareLoRA on the projection of the truth onto ``U_hat``'s span).
    The finite-sample set's width is compared with Wald's at the second-largest size."""
    make = {"independent": lambda rewards, **kw: IndependentMLE(**kw),
            "oracle-subspace": lambda rewards, **kw: OracleSubspaceMLE(rewards.subspace, **kw),
            # The set in U_hat's span alone: its default adds the subspace error, whose coverage of
            # the full truth tests/agents/test_subspace_error.py checks.
            "p-sharelora": lambda rewards, **kw: PShareLoRA(2, subspace_error="ignore", **kw)}[name]
    sizes = PER_USER_SIZES[name]
    rows = per_user_curve(name, make, sizes, seed=1)
    failures = check(rows, sizes[-1])
    moderate = [value for row_name, kind, n, value, trials in rows if trials is None and n == sizes[-2]]
    # Both sets scale like n^-1/2; the finite set pays log det(I + H / lambda_p) / 2 + log(P / delta)
    # against chi2_k(1 - delta) / 2, a ratio of levels of about 2-3 at these n: its width ratio
    # (the square root) is well under the bound of 4.
    if moderate[0] > 4:
        failures.append(f"{name}: finite/wald width ratio {moderate[0]:.2f} > 4 at n={sizes[-2]}")
    assert not failures, "\n".join(failures)


def test_pooled_sets_cover_where_all_users_are_equal():
    """All 4 users share one reward (the pooled model holds); one set per dataset, 60 datasets at
    each total size 24, 52, 100, 400 pairs (``k = 17``: from 1.4 pairs per coordinate)."""
    mdp = random_mdp(6, 3, 4, seed=5)
    shared = low_rank_rewards(mdp.n_features, 1, 1, mdp=mdp, seed=6).theta
    theta = np.repeat(shared, 4, axis=1)

    def fit_one(kind, n, trial):
        dataset = collect_preferences(mdp, theta, n // 4, behavior="uniform", seed=1000 * n + trial)
        region = PooledMLE(confidence=kind, delta=DELTA).fit(dataset, mdp).confidence_set(0)
        return bool(region.contains(theory.affine_projection(shared[:, 0], region.offset, region.basis)))

    sizes = (24, 52, 100, 400)
    failures = check(repeated_curve("pooled", fit_one, sizes, 60), sizes[-1])
    assert not failures, "\n".join(failures)


def test_full_rank_contextual_sets_cover():
    """Full-rank contextual MLE, ``d_x = 3`` contexts, ``d = 6`` dense features: ``k = 18``; 9
    users with 3, 6, 12, 48 pairs each (27 to 432 pairs, from 1.5 pairs per coordinate); one set
    per dataset, 60 datasets per size."""
    mdp = random_mdp(5, 3, 2, features="dense", n_features=6, seed=7)

    def fit_one(kind, n, trial):
        rewards = contextual_rewards(6, 3, 2, n_users=9, mdp=mdp, seed=10 * trial + 8)
        dataset = collect_preferences(mdp, rewards, n, seed=1000 * n + trial)
        return FullRankContextual(confidence=kind, delta=DELTA).fit(dataset, mdp).covers(rewards.theta_c)

    sizes = (3, 6, 12, 48)
    failures = check(repeated_curve("full-rank", fit_one, sizes, 60), sizes[-1])
    assert not failures, "\n".join(failures)
