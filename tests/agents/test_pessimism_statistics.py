"""Slow statistical checks of pessimism (docs/theory.md), run with ``pytest -m slow``.

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
from lr_mdp_env.envs.registration import advancing_actions

pytestmark = pytest.mark.slow

REPLICATES = 300


def mean_and_error(losses):
    """Mean of independent replicates' losses and its standard error, formatted for the report."""
    losses = np.asarray(losses)
    return f"{losses.mean():.4f} +- {losses.std(ddof=1) / np.sqrt(losses.size):.4f}"


def bootstrap_slope_interval(sizes, per_replicate, draws=2000, seed=0):
    """95% percentile interval of the log-log slope of the mean of ``per_replicate`` (sizes x
    replicates) on ``sizes``, resampling replicates jointly across sizes (they are i.i.d. triples
    whether the sizes share data or not). It measures the Monte Carlo noise of the fitted slope
    only; it is reported, never asserted."""
    rows = np.asarray(per_replicate)
    picks = np.random.default_rng(seed).integers(rows.shape[1], size=(draws, rows.shape[1]))
    means = rows[:, picks].mean(axis=2)  # (sizes, draws)
    means = means[:, (means > 0).all(axis=0)]  # a resample without any loss has no log-log slope
    slopes = np.polyfit(np.log(sizes), np.log(means), 1)[0]
    return np.percentile(slopes, [2.5, 97.5])


def bootstrap_slope_error(sizes, per_replicate, draws=2000, seed=0):
    """Standard error of the log-log slope of the mean of ``per_replicate`` (sizes x replicates),
    from the same resampling of replicates as :func:`bootstrap_slope_interval`."""
    rows = np.asarray(per_replicate)
    picks = np.random.default_rng(seed).integers(rows.shape[1], size=(draws, rows.shape[1]))
    means = rows[:, picks].mean(axis=2)
    means = means[:, (means > 0).all(axis=0)]
    return float(np.std(np.polyfit(np.log(sizes), np.log(means), 1)[0], ddof=1))


def print_slopes(name, sizes, bound_slope, bound_rows, loss_slope, loss_rows):
    """Report the fitted slopes of the mean bound and mean loss with their bootstrap intervals."""
    bound_low, bound_high = bootstrap_slope_interval(sizes, bound_rows)
    loss_low, loss_high = bootstrap_slope_interval(sizes, loss_rows)
    print(f"MEASURED {name}: n={[int(n) for n in sizes]}; bound slope {bound_slope:.3f} "
          f"(95% bootstrap [{bound_low:.3f}, {bound_high:.3f}]), loss slope {loss_slope:.3f} [{loss_low:.3f}, {loss_high:.3f}]; mean loss "
          f"{np.round(np.mean(loss_rows, axis=1), 5).tolist()}")


def _bandit():
    """One state, three actions, ``H = 1``: ``theta* = (1, 0.5, 0)`` (docs/theory.md, ZJJ Thm 3.9)."""
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
    which two comparisons never allow; its loss must fall below the greedy floor and keep falling:
    the drop from n = 50 to n = 3200 must exceed three standard errors of the difference of two
    means over independent replicates (the datasets of different n are drawn independently).
    """
    mdp, theta = _bandit()
    floor = 0.073 - 3 * np.sqrt(0.073 * 0.927 / REPLICATES)
    assert abs(2 * np.exp(-2) * expit(-1.0) - 0.073) < 1e-3
    greedy_losses, pessimistic_losses, pessimistic_rows = [], [], []
    for n in (50, 200, 800, 3200):
        dataset = _rarely_compared_data(mdp, theta, n, seed=n)
        for pessimism, losses in (("none", greedy_losses), ("exact", pessimistic_losses)):
            agent = agents.make("independent", ridge=0.05, pessimism=pessimism).fit(dataset, mdp)
            per_user = agents.evaluate(agent, mdp, theta)["suboptimality"].to_numpy()
            losses.append(per_user.mean())
            if pessimism == "exact":
                pessimistic_rows.append(per_user)
            print(f"MEASURED bandit_greedy_vs_pessimism[n={n}]: {pessimism} loss {mean_and_error(per_user)}")
    first, last = pessimistic_rows[0], pessimistic_rows[-1]
    drop_error = np.sqrt(first.var(ddof=1) / first.size + last.var(ddof=1) / last.size)
    print(f"MEASURED bandit_greedy_vs_pessimism: asserted greedy > {floor:.3f} at every n; exact < {floor:.3f} "
          f"from n = 200; exact's drop n=50 -> 3200 {first.mean() - last.mean():.4f} > 3 x {drop_error:.4f}")
    assert min(greedy_losses) > floor, greedy_losses
    # Pessimism: below the greedy floor from n = 200 on, decreasing, and near zero at the end.
    assert all(loss < floor for loss in pessimistic_losses[1:]), pessimistic_losses
    assert first.mean() - last.mean() > 3 * drop_error, pessimistic_losses


def test_pessimism_lemma_bound_shrinks_like_root_n_and_the_loss_at_least_as_fast():
    """The pessimism lemma's bound ``2 radius ||G (d* - d_ref)||_{M^-1}`` scales like n^(-1/2):
    the Fisher matrix ``M = sum_j sigmoid'(theta_hat . z_j) z_j z_j^T + lambda I`` grows linearly
    in n while the Wald radius is fixed.

    Tolerance of the bound's slope: three bootstrap standard errors (computed here, over the
    replicates) plus two finite-n effects, bounded independently of the measurement.
    (i) ``sigmoid'`` is evaluated at ``theta_hat``, not ``theta*``: ``|sigmoid''/sigmoid'| <= 1``,
    so each weight moves by a relative ``|(theta_hat - theta*) . z_j|``, of order the reward
    error ``sqrt(k / n)`` times ``||z||``; averaged over the pairs its first-order part cancels
    (``theta_hat`` is unbiased to first order), leaving a second-order relative change of about
    ``k / n = 0.06`` at n = 200 (``k = 12 - 1`` identifiable coordinates) and 0.001 at 12800:
    ``0.5 * 0.06`` in ``log`` bound across ``log(64) = 4.16``, a slope change of at most 0.008.
    (ii) The ridge ``lambda = 1``: with uniform behaviour each of the 12 ``(s, a)`` is visited
    ``2 H / 12 = 0.5`` times per pair with weight ``sigmoid' >= 0.1`` for these logits, so
    ``n f >= 0.05 n = 10`` at n = 200; ``lambda / (n f) <= 0.1`` changes ``log`` bound by at most
    0.05 at n = 200 and 0.001 at 12800, a slope change of at most ``0.05 / 4.16 = 0.012``.
    Together 0.02.

    The loss is below the bound (the lemma, for every covered replicate) and, being zero unless
    the estimate crosses a decision boundary, may fall faster: the theory guarantees at least the
    bound's rate, so the loss slope must be at most ``-1/2`` plus three bootstrap standard errors.
    """
    mdp = lr_mdp_env.random_mdp(4, 3, 3, seed=5)
    single = lr_mdp_env.low_rank_rewards(mdp.n_features, 1, 1, mdp=mdp, scale=1.0, seed=3)
    replicates = 100
    theta = np.tile(single.theta, (1, replicates))
    sizes = np.array([200, 800, 3200, 12800])
    losses, bounds, loss_rows, bound_rows = [], [], [], []
    for n in sizes:
        dataset = lr_mdp_env.collect_preferences(mdp, theta, int(n), seed=int(n))
        agent = agents.make("independent", ridge=1.0, pessimism="exact").fit(dataset, mdp)
        report = agents.evaluate(agent, mdp, theta)
        covered = report["truth_in_set"].astype(bool)
        assert (report["suboptimality"][covered] <= report["bound"][covered] + 1e-7).all()
        losses.append(report["suboptimality"].mean())
        bounds.append(report["bound"].mean())
        loss_rows.append(report["suboptimality"].to_numpy())
        bound_rows.append(report["bound"].to_numpy())
    bound_slope = np.polyfit(np.log(sizes), np.log(bounds), 1)[0]
    loss_slope = np.polyfit(np.log(sizes), np.log(losses), 1)[0]
    print_slopes("lemma_bound_rate", sizes, bound_slope, bound_rows, loss_slope, loss_rows)
    bound_error = bootstrap_slope_error(sizes, bound_rows)
    loss_error = bootstrap_slope_error(sizes, loss_rows)
    print(f"MEASURED lemma_bound_rate: asserted |bound slope + 0.5| <= 0.02 + 3 x {bound_error:.4f}; "
          f"loss slope <= -0.5 + 3 x {loss_error:.4f}")
    assert abs(bound_slope + 0.5) <= 0.02 + 3 * bound_error, (bound_slope, bounds)
    assert loss_slope <= -0.5 + 3 * loss_error, (loss_slope, losses)


# -- the chain: a rarely reached good end and a rarely tried idle action that can look good ------

CHAIN_REPLICATES = 300
CHAIN_SIZES = (800, 3200, 12800)
END_REWARD = 1.0


def _chain():
    """``chain_mdp(4, 6)`` with two actions: advance, or fall back to state 0 (idle, in state 0).

    Every replicate's reward is ``END_REWARD`` for staying in the end state, zero elsewhere, so
    the optimal policy advances three times and then stays: ``J* = 3``. The behaviour wanders:
    it always advances from state 0 and advances (or stays, at the end) with probability 1/2
    elsewhere. Only 1/32 of its trajectories follow the optimal path and its value is 0.28:
    the data rarely reach the optimal path. It never idles in state 0, the trap.
    """
    mdp = lr_mdp_env.chain_mdp(4, 6, seed=0)
    advancing = advancing_actions(mdp)
    idle = 1 - advancing[0]
    theta = np.zeros(mdp.n_features)
    theta[(mdp.n_states - 1) * mdp.n_actions + advancing[-1]] = END_REWARD
    wander = np.full((mdp.horizon, mdp.n_states, mdp.n_actions), 0.5)
    wander[:, 0, advancing[0]], wander[:, 0, idle] = 1.0, 0.0
    return mdp, np.tile(theta[:, None], (1, CHAIN_REPLICATES)), wander, idle


@pytest.fixture(scope="module")
def chain_runs():
    """Greedy, exact and rectangular pessimism on nested chain datasets, one fit per size.

    One collection of ``n_max`` pairs per replicate: the first trajectory wanders, the second
    idles at step 0 with probability ``2 / n_max`` and then wanders, so the idle action appears
    in ``K ~ Binomial(n_max, 2 / n_max)``, about Poisson(2), pairs (the bandit test's rare
    comparison, now a whole trajectory). The dataset of size ``n`` keeps those ``K`` pairs and the
    first ``n`` others: its law is that of ``n`` wandering pairs plus about two trap comparisons
    whatever ``n``, and the same trap comparisons appear at every size (common random numbers),
    so the change across sizes is not masked by the draws of the trap's comparisons.
    """
    mdp, theta, wander, idle = _chain()
    n_max = CHAIN_SIZES[-1] + 32  # K <= 32 except with probability below 1e-25
    rare = wander.copy()
    rare[0, 0] = 1.0 - 2.0 / n_max
    rare[0, 0, idle] = 2.0 / n_max
    full = lr_mdp_env.collect_preferences(mdp, theta, n_max, behavior=(wander, rare), seed=2024)
    is_trap = full.actions1[:, 0] == idle
    trap_pairs = np.bincount(full.users[is_trap], minlength=CHAIN_REPLICATES)
    assert trap_pairs.max() <= 32
    # Rank of each non-trap pair among its user's non-trap pairs (users are contiguous).
    others = np.cumsum(~is_trap)
    first = np.searchsorted(full.users, full.users)
    rank = others - others[first] + (~is_trap[first]) - 1
    runs = {"mdp": mdp, "theta": theta, "wander": wander, "trap_pairs": trap_pairs}
    for n in CHAIN_SIZES:
        dataset = full.subset(np.flatnonzero(is_trap | (rank < n)))
        for pessimism in ("none", "exact", "rectangular"):
            agent = agents.make("independent", ridge=0.05, pessimism=pessimism).fit(dataset, mdp)
            runs[pessimism, n] = agents.evaluate(agent, mdp, theta)
    return runs


def test_pessimism_beats_greedy_on_a_chain_whose_optimal_path_the_data_rarely_follow(chain_runs):
    """The chain version of Zhu, Jordan and Jiao (2023), Theorem 3.9.

    Greedy: when the idle action is compared once (K = 1, probability
    ``2 (1 - 2/n_max)^(n_max - 1) ~ 2 e^-2``), both trajectories of that pair collect no end
    reward and the idling one wins (probability 1/2 under Bradley-Terry with beta = 1), the
    ridge MLE (lambda = 0.05; a fixed small ridge, as the theorem is about the MLE) of the idle
    reward is the root of ``0.05 t = sigmoid(-t)``, about 2.1, so idling for six steps (about 12)
    beats the end's three steps of about 1: greedy idles and loses ``J* = 3``. A wandering
    trajectory collects no end reward with probability at least ``1 - J(wander) / END_REWARD``
    (Markov's inequality), and the idling one is a wandering one delayed by a step, so this
    happens with probability ``p >= 2 e^-2 * 1/2 * (1 - J(wander))^2 = 0.070`` for every n. Over
    300 replicates the mean greedy loss therefore exceeds ``3 (p - 3 sqrt(p (1 - p) / 300))``
    (three standard errors of the frequency), the floor below.

    Pessimism: the idle action's two-or-so comparisons give it a lower confidence bound far
    below the end's, so pessimism never idles for long and must beat the floor at every n.
    Its advantage over greedy is asserted against the standard error of the paired differences.
    """
    mdp, theta, wander = chain_runs["mdp"], chain_runs["theta"], chain_runs["wander"]
    n_max = CHAIN_SIZES[-1] + 32
    behaviour_value = float(lr_mdp_env.expected_features(mdp, wander) @ theta[:, 0])
    assert abs(behaviour_value - 0.28125) < 1e-12
    p = 2 * (1 - 2 / n_max) ** (n_max - 1) * 0.5 * (1 - behaviour_value / END_REWARD) ** 2
    floor = 3 * END_REWARD * (p - 3 * np.sqrt(p * (1 - p) / CHAIN_REPLICATES))
    assert floor > 0.07, floor
    for n in CHAIN_SIZES:
        print(f"MEASURED chain_greedy_vs_pessimism[n={n}]: loss (J* = 3) "
              + "; ".join(f"{pessimism} {mean_and_error(chain_runs[pessimism, n]['suboptimality'])}"
                          for pessimism in ("none", "exact", "rectangular"))
              + f"; asserted greedy > {floor:.3f} > pessimistic")
    for n in CHAIN_SIZES:
        greedy = chain_runs["none", n]["suboptimality"].to_numpy()
        assert greedy.mean() > floor, (n, greedy.mean(), floor)
        for pessimism in ("exact", "rectangular"):
            loss = chain_runs[pessimism, n]["suboptimality"].to_numpy()
            advantage = greedy - loss
            standard_error = advantage.std(ddof=1) / np.sqrt(CHAIN_REPLICATES)
            assert loss.mean() < floor, (pessimism, n, loss.mean(), floor)
            assert advantage.mean() > 5 * standard_error, (pessimism, n, advantage.mean(), standard_error)


def test_exact_pessimism_on_the_chain_converges_at_rate_root_n(chain_runs):
    """Exact pessimism hedges: its optimal mixed policy idles with a small weight ``w`` whenever
    the idle action looks good. Along the mixture, ``L`` gains ``w`` times the estimated advantage
    of idling, a constant, but its penalty ``radius ||G (g* + w (g_idle - g*))||_{M^-1}`` grows
    only quadratically in ``w``: the idle coordinate is nearly orthogonal to the well-covered
    ones, whose part of the norm is ``a = ||G g*||_{M^-1} ~ n^-1/2``. The optimum is
    ``w = a h`` with ``h`` a function of the trap's comparisons alone, whose law does not depend
    on n; the loss is ``3 w``, so its mean falls exactly like ``n^-1/2`` asymptotically (and the
    pessimism lemma's bound ``2 radius a`` too). Rectangular pessimism, deterministic, does not
    hedge.

    What is asserted, and why. The bound: ``M`` grows linearly in n at a fixed radius; only
    ``sigmoid'`` at the converging estimate and the ridge move its slope, each by less than 0.01
    on these sizes (the computation of the lemma test above, with ``k = 7`` identifiable
    coordinates, ``n >= 800`` and the smaller ridge 0.05), so it must be within 0.02 plus three bootstrap standard errors
    of -1/2. The loss: the pessimism lemma guarantees at least the bound's rate, so its slope must
    be at most ``-1/2`` plus three bootstrap standard errors; the hedge says it is not faster by a
    power of n (``w = a h`` is of the order of ``a``, not ``a^2``), so its slope must be above
    ``-1`` minus three standard errors: a rate of ``n^-1`` (a hedge that vanished
    quadratically) or no convergence at all fails. Next-order terms of relative size
    ``O(n^-1/2)`` (the estimate of the path's rewards, the part of the penalty off the trap) make
    the slope at these sizes steeper than -1/2, which the window allows without being built from
    the measured value.
    """
    sizes = np.array(CHAIN_SIZES)
    losses, bounds = [], []
    for n in CHAIN_SIZES:
        report = chain_runs["exact", n]
        covered = report["truth_in_set"].astype(bool)
        assert (report["suboptimality"][covered] <= report["bound"][covered] + 1e-7).all()
        losses.append(report["suboptimality"].mean())
        bounds.append(report["bound"].mean())
    bound_slope = np.polyfit(np.log(sizes), np.log(bounds), 1)[0]
    loss_slope = np.polyfit(np.log(sizes), np.log(losses), 1)[0]
    print_slopes("chain_exact_rate", sizes, bound_slope, [chain_runs["exact", n]["bound"] for n in CHAIN_SIZES],
                 loss_slope, [chain_runs["exact", n]["suboptimality"] for n in CHAIN_SIZES])
    bound_error = bootstrap_slope_error(sizes, [chain_runs["exact", n]["bound"] for n in CHAIN_SIZES])
    loss_error = bootstrap_slope_error(sizes, [chain_runs["exact", n]["suboptimality"] for n in CHAIN_SIZES])
    print(f"MEASURED chain_exact_rate: asserted |bound slope + 0.5| <= 0.02 + 3 x {bound_error:.4f}; "
          f"-1 - 3 x {loss_error:.4f} <= loss slope <= -0.5 + 3 x {loss_error:.4f}")
    assert abs(bound_slope + 0.5) <= 0.02 + 3 * bound_error, (bound_slope, bounds)
    assert -1.0 - 3 * loss_error <= loss_slope <= -0.5 + 3 * loss_error, (loss_slope, losses)


# -- concentrated data: pessimism keeps its promise --------------------------------------------

CONCENTRATED_COPIES = 25  # replicates of each of the chain world's 8 users: 200 users


@pytest.mark.parametrize("pessimism", ["exact", "rectangular"])
def test_pessimistic_agents_are_not_worse_than_the_behaviour_policy_on_concentrated_data(pessimism):
    """The lower-bound fact on the chain of issue 12: ``chain_world(n_states=5, horizon=6,
    n_actions=3, n_users=8, distractor=0.5, model_seed=0)``, each user's comparisons drawn from
    their own ``epsilon_optimal_policies(..., epsilon=0.1)``, every user replicated 25 times
    (200 users whose data are independent), default ``1 - delta`` sets and the agents' defaults
    (the safeguard for rectangular pessimism).

    Deterministic part: for every user whose truth is in the set, ``J(pi) - J(ref) >= L(pi)`` and
    ``L(pi) >= 0`` (exact pessimism maximises ``L`` over all policies, the reference's
    ``L = 0`` among them, to a relative gap ``tol``; the safeguard gives it to rectangular
    pessimism), so ``J(pi) >= J(ref)``.

    Statistical part: a user can be worse off than under the behaviour policy only if the truth
    is outside their set, which for valid ``1 - delta`` sets happens to a ``Binomial(200, p)``
    number of users with ``p <= delta = 0.1`` (the users' fits are independent but for the shared
    choice of the ridge). We assert that the count of users with ``J(pi) < J(ref)`` is at most the
    0.999 quantile of ``Binomial(200, 0.1)`` (34): a false alarm has probability below 0.001.
    The mean gain ``J(pi) - J(ref)`` over users must be above minus three standard errors.
    """
    from scipy import stats

    from lr_mdp_env.collection import epsilon_optimal_policies
    from lr_mdp_env.envs.chain import chain_world

    world = chain_world(n_states=5, horizon=6, n_actions=3, n_users=8, distractor=0.5, model_seed=0)
    mdp = world.mdp
    theta = np.tile(world.rewards.theta, (1, CONCENTRATED_COPIES))
    behaviour = epsilon_optimal_policies(mdp, theta, epsilon=0.1)
    delta, n_users = 0.1, theta.shape[1]
    allowed = int(stats.binom.ppf(0.999, n_users, delta))
    assert allowed == 34
    for n in (30, 300):
        dataset = lr_mdp_env.collect_preferences(mdp, theta, n, behavior=behaviour, seed=7000 + n)
        agent = agents.make("independent", pessimism=pessimism, delta=delta).fit(dataset, mdp)
        report = agents.evaluate(agent, mdp, theta)
        gain = (report["value"] - report["reference_value"]).to_numpy()
        lower = report["lower_bound"].to_numpy()
        covered = report["truth_in_set"].to_numpy().astype(bool)
        rounding = 1e-9 * (1 + np.abs(report["value"]) + np.abs(report["reference_value"])).to_numpy()
        gap = agent.tol * np.maximum(1.0, np.abs(lower)) if pessimism == "exact" else 0.0
        worse = gain < -rounding
        standard_error = gain.std(ddof=1) / np.sqrt(n_users)
        print(f"MEASURED concentrated_not_worse[{pessimism}, n={n}]: truth in set {covered.sum()}/{n_users}; "
              f"worse than behaviour {worse.sum()}/{n_users} (allowed {allowed}); mean gain {gain.mean():.3f} "
              f"+- {standard_error:.3f}; min gain {gain.min():.3f}")
        assert np.all(gain[covered] >= lower[covered] - rounding[covered])
        assert np.all(lower >= -gap - rounding)
        assert worse.sum() <= allowed, (n, worse.sum())
        assert gain.mean() >= -3 * standard_error, (n, gain.mean(), standard_error)
