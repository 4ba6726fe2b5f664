"""Slow: a predicted rate of :mod:`lr_mdp_env.theory` against a measured curve, in shape.

Run with ``python -m pytest -m slow tests/theory``. The measured root-mean-square reward error
of the independent MLE over a grid of dimensions ``d`` and sample sizes ``n`` is regressed, on a
log-log scale, on :func:`~lr_mdp_env.theory.independent_mle_rate` ``sqrt(d / n)``: a slope of 1
means the measured curve is the predicted one up to a constant (which
:func:`~lr_mdp_env.theory.rate_constant` estimates).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from agents import IndependentMLE, reward_errors
from lr_mdp_env import TabularMDP, collect_preferences, theory

pytestmark = pytest.mark.slow

USERS = 100
ACTIONS = 64
DIMENSIONS = (2, 4, 8, 16)
SIZES = (1000, 4000, 16000)


def whitened_bandit(d, seed):
    """One state, ``H = 1``, 64 arms whose features are centred and whitened (``(1/A) Phi^T Phi =
    I``), so that under the uniform behaviour ``E[z z^T] = 2 I`` exactly: the design is equally
    informative in every direction and ``d`` is the number of parameters the MLE must learn
    (the rate's assumption of a well-conditioned design). Users' ``theta`` are random unit
    vectors, so the logits ``theta . z`` have the same spread for every ``d``."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(ACTIONS, d))
    basis, _ = np.linalg.qr(raw - raw.mean(axis=0))
    features = basis * np.sqrt(ACTIONS)
    mdp = TabularMDP(np.ones((1, ACTIONS, 1)), np.ones(1), horizon=1, features=features[None])
    theta = rng.normal(size=(d, USERS))
    return mdp, theta / np.linalg.norm(theta, axis=0)


def test_independent_mle_error_follows_root_d_over_n():
    """Tolerance 0.2 on the slope, the sum of three budgets.

    * Noise: per cell, the squared error of a user is about a scaled chi-square with ``d``
      degrees of freedom (coefficient of variation ``sqrt(2 / d)``, worst at ``d = 2``: 1), so
      the RMS over 100 independent users has relative standard error at most
      ``1 / (2 sqrt(100)) = 0.05``. The regressor ``x = log sqrt(d / n)`` over the 12 cells has
      ``sum (x - mean)^2 = 5.6``, so the slope's standard error is at most
      ``0.05 / sqrt(5.6) = 0.021``; four of them: 0.085.
    * Anisotropy of the Fisher matrix: ``F = E[sigmoid'(theta . z) z z^T]`` is smaller along
      ``theta`` (confident comparisons) than across it, so ``tr F^{-1}`` is ``(d - 1 + a/b) / a``
      instead of ``d / a``, with ``a = E sigmoid'(x)`` and ``b = E[sigmoid'(x) x^2] / E[x^2]``;
      for logits ``x ~ N(0, 2)`` (unit ``theta``, ``E[z z^T] = 2 I``) ``a / b = 1.81``. The
      relative excess ``(a/b - 1) / d`` lifts the log RMS error by ``0.5 log(1.40) = 0.17`` at
      ``d = 2`` and 0.02 at ``d = 16``: 0.14 across a d-range of ``x`` of 1.04, a slope change of
      ``0.14 / 1.04 * (var of the d-part of x / total var = 0.15 / 0.47) = 0.045``: 0.05.
    * Finite ``n``: the MLE's higher-order error is ``O(d / n)`` relative, largest in the corner
      ``d = 16, n = 1000`` (``n / d = 62``; an excess of about 9% there). One cell's excess
      ``e`` moves the slope by ``e (x_i - mean x) / 5.6``, ``0.09 * 1.2 / 5.6 = 0.02`` for that
      corner; 0.05 covers it and the smaller excesses of its neighbours.

    A wrong shape is far outside: an error growing like ``d / sqrt(n)`` (``k = d^2``) would give a
    slope of 1.32 on this grid, one not depending on ``d`` a slope of 0.68.
    """
    predicted, measured = [], []
    for d in DIMENSIONS:
        mdp, theta = whitened_bandit(d, seed=d)
        for n in SIZES:
            dataset = collect_preferences(mdp, theta, n, seed=1000 * d + n)
            # A fixed, small ridge: its bias lambda ||theta|| / (2 a n) is below 0.2% of the error.
            estimator = IndependentMLE(ridge=1e-2).fit(dataset, mdp)
            errors = reward_errors(mdp, estimator.theta_hat, theta)
            measured.append(np.sqrt(np.mean(errors**2)))
            predicted.append(theory.independent_mle_rate(n, d))
    slope = theory.log_log_slope(predicted, measured)
    constant = theory.rate_constant(predicted, measured)
    # Reported interval: the regression's own standard error (scatter of the 12 cells about the line)
    # with the Student quantile on 10 degrees of freedom.
    fit = stats.linregress(np.log(predicted), np.log(measured))
    half = stats.t.ppf(0.975, len(measured) - 2) * fit.stderr
    print(f"MEASURED independent_mle_rate: slope of log RMS error on log sqrt(d / n) {slope:.3f} "
          f"(95% [{slope - half:.3f}, {slope + half:.3f}], {len(measured)} cells); constant {constant:.3f}; "
          f"asserted |slope - 1| <= 0.2")
    assert abs(slope - 1.0) <= 0.2


def test_prs_beats_full_rank_pessimistic_planning_at_low_rank_and_both_reach_the_lemma_rate():
    """What docs/theory.md claims for LoCo-RLHF, on the planning side: with rank-2 contextual
    rewards (``d_x = 8``, ``d = 12`` dense features, 100 users, 5 to 40 pairs each) the
    sub-optimality of exact pessimism on LoCo-PRS's reduced sets is below that of exact
    pessimism on the full-rank MLE's sets, and both fall at least at the pessimism lemma's rate.

    Replicates are worlds (six seeds): users share one estimate of ``Theta_c`` and are not
    independent. Per seed we take the mean over users of the log sub-optimality ratio PRS /
    full-rank (averaged over the sample sizes) and the log-log slope of each agent's mean
    sub-optimality against the number of pairs. With six replicates the one-sided 0.999
    Student quantile on 5 degrees of freedom is 5.89:

    * PRS better: ``mean log ratio + 5.89 SE < 0``;
    * rate: the lemma bounds the sub-optimality by ``2 radius ||G (d* - d_ref)||_{M^-1}``, of
      order ``n^-1/2`` at a fixed radius, so each agent's mean slope must be at most
      ``-1/2 + 5.89 SE`` (a policy may converge faster than its bound, never slower).
    """
    from scipy import stats

    import agents
    from lr_mdp_env import contextual_rewards, random_mdp

    pairs, n_users, seeds = np.array([5, 10, 20, 40]), 100, range(6)
    quantile = stats.t.ppf(0.999, len(seeds) - 1)
    assert abs(quantile - 5.89) < 0.01
    log_ratios, slopes = [], {"loco-prs": [], "full-rank": []}
    for seed in seeds:
        mdp = random_mdp(6, 4, 3, features="dense", n_features=12, seed=seed)
        rewards = contextual_rewards(12, 8, 2, n_users=n_users, mdp=mdp, scale=2.0, seed=seed + 100)
        losses = {"loco-prs": [], "full-rank": []}
        for n in pairs:
            dataset = collect_preferences(mdp, rewards, int(n), seed=seed * 1000 + int(n))
            for name in losses:
                options = {"rank": 2} if name == "loco-prs" else {}
                agent = agents.make(name, pessimism="exact", seed=seed, **options).fit(dataset, mdp)
                losses[name].append(agents.evaluate(agent, mdp, rewards)["suboptimality"].to_numpy())
        prs, full = np.array(losses["loco-prs"]), np.array(losses["full-rank"])  # (sizes, users)
        log_ratios.append(np.mean(np.log(prs.mean(axis=1) / full.mean(axis=1))))
        for name, rows in (("loco-prs", prs), ("full-rank", full)):
            slopes[name].append(theory.log_log_slope(pairs.astype(float), rows.mean(axis=1)))
        print(f"MEASURED prs_vs_full_rank_pessimism[seed={seed}]: mean sub-optimality by n={pairs.tolist()}: "
              f"PRS {np.round(prs.mean(axis=1), 4).tolist()}, full-rank {np.round(full.mean(axis=1), 4).tolist()}")
    log_ratios = np.array(log_ratios)
    ratio_error = log_ratios.std(ddof=1) / np.sqrt(log_ratios.size)
    print(f"MEASURED prs_vs_full_rank_pessimism: geometric-mean ratio PRS / full-rank {np.exp(log_ratios.mean()):.3f} "
          f"(log {log_ratios.mean():.3f} +- {ratio_error:.3f}); slopes "
          + ", ".join(f"{name} {np.mean(v):.3f} +- {np.std(v, ddof=1) / np.sqrt(len(v)):.3f}" for name, v in slopes.items()))
    assert log_ratios.mean() + quantile * ratio_error < 0
    for name, values in slopes.items():
        values = np.array(values)
        assert values.mean() <= -0.5 + quantile * values.std(ddof=1) / np.sqrt(values.size), (name, values)
