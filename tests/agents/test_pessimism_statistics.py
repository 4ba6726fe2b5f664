"""Slow statistical checks of pessimism (DESIGN.md 3), run with ``pytest -m slow``.

Each check replicates a user many times inside one dataset (``N`` users with the same true
parameter answer independent comparisons), so one fit gives ``N`` independent replicates of the
same experiment and the standard errors below are those of means over ``N`` users.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

import agents
import lr_mdp_env

pytestmark = pytest.mark.slow

REPLICATES = 300


def _bandit():
    """One state, three actions, ``H = 1``: ``theta* = (1, 0.5, 0)`` (DESIGN.md 3, ZJJ Thm 3.9)."""
    mdp = lr_mdp_env.TabularMDP(np.ones((1, 3, 1)), np.ones(1), horizon=1)
    theta = np.tile(np.array([1.0, 0.5, 0.0])[:, None], (1, REPLICATES))
    return mdp, theta


def _rarely_compared_data(mdp, theta, n, seed):
    """``tau0`` is always the best action; ``tau1`` is the runner-up, except that with probability
    ``2 / n`` it is the worst action: about two comparisons of the worst action, whatever ``n``."""
    rare = 2.0 / n
    first = np.array([[[1.0, 0.0, 0.0]]])
    second = np.array([[[0.0, 1.0 - rare, rare]]])
    return lr_mdp_env.collect_preferences(mdp, theta, n, behavior=(first, second), seed=seed)


def test_greedy_stays_suboptimal_while_exact_pessimism_converges_on_a_rarely_compared_action():
    """Zhu, Jordan and Jiao (2023), Theorem 3.9.

    Greedy: the worst action is compared K ~ Binomial(n, 2/n) ~ Poisson(2) times, always against
    the best one, and wins each comparison with probability sigmoid(-1) = 0.269. When K = 1 and it
    wins, the ridge MLE ranks it first, so greedy loses 1 with probability at least
    P(K = 1) * 0.269 = 2 e^-2 * 0.269 = 0.073, for every n. Over 300 replicates the standard error
    of the mean loss is at most sqrt(0.25 / 300) = 0.029, so the mean stays above
    0.073 - 3 * 0.029 > 0 ... we assert the sharper derived floor 0.073 - 3 sqrt(0.073 * 0.927 / 300)
    = 0.028 at every n.

    Exact pessimism only picks the worst action if its lower confidence bound beats the others',
    which two comparisons never allow; its loss must fall below the greedy floor and keep falling.
    """
    mdp, theta = _bandit()
    floor = 0.073 - 3 * np.sqrt(0.073 * 0.927 / REPLICATES)
    assert abs(2 * np.exp(-2) * expit(-1.0) - 0.073) < 1e-3
    greedy_losses, pessimistic_losses = [], []
    for n in (50, 200, 800, 3200):
        dataset = _rarely_compared_data(mdp, theta, n, seed=n)
        for pessimism, losses in (("none", greedy_losses), ("exact", pessimistic_losses)):
            agent = agents.make("independent", ridge=0.05, pessimism=pessimism).fit(dataset, mdp)
            losses.append(agents.evaluate(agent, mdp, theta)["suboptimality"].mean())
    assert min(greedy_losses) > floor, greedy_losses
    # Pessimism: below the greedy floor from n = 200 on, decreasing, and near zero at the end.
    assert all(loss < floor for loss in pessimistic_losses[1:]), pessimistic_losses
    assert pessimistic_losses[-1] < pessimistic_losses[0]
    assert pessimistic_losses[-1] < 0.01, pessimistic_losses


def test_pessimism_lemma_bound_shrinks_like_root_n_and_the_loss_at_least_as_fast():
    """The pessimism lemma's bound 2 radius ||G (d* - d_ref)||_{M^-1} scales like n^(-1/2): the
    Fisher matrix grows linearly in n while the Wald radius is fixed, so its fitted log-log slope
    must be -1/2 up to the curvature of sigmoid' along the path (we allow [-0.6, -0.4]). The loss
    is below the bound and, being zero unless the estimate crosses a decision boundary, may fall
    faster: we require a slope of at most -0.4 (at least the theory's rate, minus 0.1 for the
    noise of a 4-point regression whose points have relative standard errors under 10%)."""
    mdp = lr_mdp_env.random_mdp(4, 3, 3, seed=5)
    single = lr_mdp_env.low_rank_rewards(mdp.n_features, 1, 1, mdp=mdp, scale=1.0, seed=3)
    replicates = 100
    theta = np.tile(single.theta, (1, replicates))
    sizes = np.array([200, 800, 3200, 12800])
    losses, bounds = [], []
    for n in sizes:
        dataset = lr_mdp_env.collect_preferences(mdp, theta, int(n), seed=int(n))
        agent = agents.make("independent", ridge=1.0, pessimism="exact").fit(dataset, mdp)
        report = agents.evaluate(agent, mdp, theta)
        covered = report["truth_in_set"].astype(bool)
        assert (report["suboptimality"][covered] <= report["bound"][covered] + 1e-7).all()
        losses.append(report["suboptimality"].mean())
        bounds.append(report["bound"].mean())
    bound_slope = np.polyfit(np.log(sizes), np.log(bounds), 1)[0]
    loss_slope = np.polyfit(np.log(sizes), np.log(losses), 1)[0]
    assert -0.6 <= bound_slope <= -0.4, (bound_slope, bounds)
    assert loss_slope <= -0.4, (loss_slope, losses)
