"""Exact evaluation of any agent under the true model (docs/theory.md)."""

from __future__ import annotations

import inspect
from typing import Any, Iterator

import numpy as np
import pandas as pd

from lr_mdp_env import TabularMDP, backward_induction, theory
from lr_mdp_env._progress import progress_bar
from lr_mdp_env.dynamic_programming import check_policy, expected_features
from lr_mdp_env.identifiability import project_identifiable
from lr_mdp_env.rewards import ContextualRewards, LowRankRewards, reward_matrix

from .agent import Agent
from .confidence import ELLIPSOIDS, Ellipsoid
from .contextual_sets import ContextualEllipsoid
from .confidence import _within as within_radius


def evaluate(agent: Any, mdp: TabularMDP, rewards: LowRankRewards | ContextualRewards | Any, *,
             progress: bool = True) -> pd.DataFrame:
    """One row per user: exact values of the agent's policy and, when it has them, the
    pessimism diagnostics of its confidence set.

    Columns: ``user``, ``value`` ``J_i(pi_hat_i)``, ``optimal_value`` ``J_i(pi*_i)``,
    ``reference_value`` ``J_i(ref)``, ``suboptimality``; and for agents exposing
    ``confidence_set`` and ``reference_features``: ``lower_bound`` ``L(pi_hat_i)``,
    ``truth_in_set`` (of the truth's projection for reduced sets with ``subspace_error="ignore"``,
    of the truth itself otherwise), ``coverage_term``
    ``||G (d_pi*_i - d_ref)||_{M^{-1}}``, ``misspecification``
    ``2 max_pi |(theta*_i - theta*_proj) . (d_pi - d_ref)|`` and ``bound``
    ``2 radius coverage_term + misspecification`` (for sets other than ellipsoids, the set's width
    along ``d_pi*_i - d_ref`` plus misspecification; the pessimism lemma: when ``truth_in_set``,
    ``suboptimality <= bound`` for exact pessimism), computed by :mod:`lr_mdp_env.theory`
    (:func:`~lr_mdp_env.theory.misspecification_term`, :func:`~lr_mdp_env.theory.pessimism_bound`).
    For sets other than ellipsoids the bound is the lemma's general form
    ``width(d_pi*_i - d_ref) + misspecification`` and ``coverage_term`` is ``NaN``.
    Missing quantities are ``NaN``.

    All users go through batched dynamic programming, in blocks whose ``(H, S, A)`` tables fit in
    :data:`DP_BYTES` (memory stays bounded whatever ``N``); each policy goes through the forward
    recursion once, accumulating its expected features without storing its occupancy. The
    sets' operations are batched in their own coordinates (:meth:`agents.Ellipsoid.span_distances`,
    :meth:`agents.Ellipsoid.batch_dual_norm`, for dense and low-rank-plus-ridge ellipsoids).

    Parameters
    ----------
    agent : Agent
        Fitted; anything with ``policy(user)``.
    mdp : TabularMDP
        The true model.
    rewards : LowRankRewards, ContextualRewards or array_like of shape (d, N)
        The users' true parameters.
    progress : bool, default True
        A bar over the steps (planning, then each block of users' optimal policies and
        diagnostics) on a terminal once the call runs a couple of seconds; ``False``: none.
        Nothing is printed otherwise.

    Returns
    -------
    pandas.DataFrame

    References
    ----------
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023 (the pessimism lemma). Liu et al., arXiv:2503.19201, and
    Lee, Sun and Liu, arXiv:2412.19436 (reduced sets and their misspecification).
    """
    if not isinstance(agent, Agent):
        raise TypeError(f"agent must have fit(dataset, mdp) and policy(user), got {type(agent).__name__}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {type(progress).__name__}")
    theta = reward_matrix(rewards, mdp.n_features)
    n_users = theta.shape[1]
    reference = getattr(agent, "reference_features", None)
    with_sets = reference is not None and hasattr(agent, "confidence_set")
    # Users go through the dynamic programming in blocks whose (H, S, A) tables fit in DP_BYTES:
    # a reward table and a one-hot policy per user for the optimal policies, two of each for the
    # misspecification term (at 10,000 users of d = 500, H = 20 these are 800 MB per table kind).
    block = max(1, DP_BYTES // (32 * mdp.horizon * mdp.n_states * mdp.n_actions))
    blocks = [slice(start, min(n_users, start + block)) for start in range(0, n_users, block)]  # views, not copies
    with progress_bar(2 + len(blocks) * (2 if with_sets else 1), "evaluate", progress, unit="step") as bar:
        bar.set_postfix_str("planning", refresh=False)
        policies = agent.policies() if hasattr(agent, "policies") else np.stack([agent.policy(i) for i in range(n_users)])
        policies = check_policy(mdp, policies, "agent's policies")
        if policies.shape[0] != n_users:
            raise ValueError(f"the agent has policies for {policies.shape[0]} users but rewards have {n_users}")
        bar.update()
        bar.set_postfix_str("optimal policies and expected features", refresh=False)
        features = np.empty((n_users, mdp.n_features))
        optimal_features = np.empty((n_users, mdp.n_features))
        for users in blocks:  # the policies are checked: each goes through the recursion once
            features[users] = expected_features(mdp, policies[users], check=False)
            # The block's optimal policies are not kept past their features (up to DP_BYTES each).
            optimal_features[users] = expected_features(
                mdp, backward_induction(mdp, mdp.reward(theta.T[users]))[0], check=False)
            bar.update()
        value = np.sum(features * theta.T, axis=1)
        optimal_value = np.sum(optimal_features * theta.T, axis=1)
        report = pd.DataFrame({"user": np.arange(n_users), "value": value, "optimal_value": optimal_value})
        if reference is not None:  # d_ref is (d,) or, for per-user behaviours, (N, d)
            reference = np.broadcast_to(np.asarray(reference, dtype=float), (n_users, mdp.n_features))
        report["reference_value"] = np.sum(theta.T * reference, axis=1) if reference is not None else np.nan
        report["suboptimality"] = optimal_value - value
        diagnostics = {name: np.full(n_users, np.nan) for name in
                       ("lower_bound", "coverage_term", "misspecification", "bound")}
        in_set = np.full(n_users, np.nan, dtype=object)
        if with_sets:
            bar.set_postfix_str("pessimism diagnostics", refresh=False)
            for dp_users in blocks:
                for users, sets in _sets_in_blocks(agent.confidence_set, dp_users.start, dp_users.stop):
                    block_diagnostics = {name: values[users] for name, values in diagnostics.items()}
                    in_set[users] = _diagnostics(mdp, sets, theta.T[users], features[users] - reference[users],
                                                 optimal_features[users] - reference[users], reference[users],
                                                 block_diagnostics)
                    for name, values in block_diagnostics.items():
                        diagnostics[name][users] = values
                bar.update()
        bar.update(bar.total - bar.n)
    for name in ("lower_bound", "coverage_term", "misspecification", "bound"):
        report[name] = diagnostics[name]
    report.insert(report.columns.get_loc("coverage_term"), "truth_in_set", in_set)
    return report


#: Memory the dynamic-programming tables of one block of users may take in :func:`evaluate` (bytes).
DP_BYTES = 256 * 2**20
#: Memory the confidence sets of one block of users may take in :func:`evaluate` (bytes).
SETS_BYTES = 256 * 2**20


def _set_bytes(confidence_set: Any, neighbour: Any = None) -> int:
    """The memory of a set's own arrays (at least 1): what a block of such sets costs. The basis
    is left out (an estimator hands one basis array to all its users' sets), and so is any array
    that ``neighbour`` (another user's set) holds too: a pooled fit's matrix and its factor."""
    def arrays(item: Any) -> dict[str, np.ndarray]:
        return {name: value for name, value in vars(item).items() if isinstance(value, np.ndarray)} \
            if hasattr(item, "__dict__") else {}

    shared = {name: value.__array_interface__["data"][0] for name, value in arrays(neighbour).items()}
    return max(1, sum(value.nbytes for name, value in arrays(confidence_set).items()
                      if name != "basis" and shared.get(name) != value.__array_interface__["data"][0]))


def _sets_in_blocks(confidence_set: Any, start: int, stop: int) -> Iterator[tuple[np.ndarray, list]]:
    """The sets of users ``start, ..., stop - 1`` (``confidence_set(user)``), in consecutive
    blocks whose own arrays fit in :data:`SETS_BYTES`: full-dimensional sets of many users at
    large ``d`` hold a ``k x k`` matrix (or an ``n_i x k`` factor) each, too many to keep at once.
    Yields ``(users, sets)``."""
    while start < stop:
        sets = [confidence_set(start)] + ([confidence_set(start + 1)] if start + 1 < stop else [])
        size = SETS_BYTES // _set_bytes(sets[-1], sets[0] if len(sets) > 1 else None)
        users = np.arange(start, min(stop, start + max(len(sets), size)))
        sets += [confidence_set(user) for user in users[len(sets):]]
        yield users, sets
        start = int(users[-1]) + 1


def _diagnostics(mdp: TabularMDP, sets: list, thetas: np.ndarray, gaps: np.ndarray, optimal_gaps: np.ndarray,
                 reference: np.ndarray, diagnostics: dict[str, np.ndarray]) -> np.ndarray:
    """Fill ``diagnostics`` for every user's set; returns ``truth_in_set``. ``gaps`` are
    ``d_pi_hat - d_ref`` and ``optimal_gaps`` ``d_pi* - d_ref``, ``(N, d)``."""
    n_users = len(sets)
    ellipsoids = np.array([isinstance(item, ELLIPSOIDS) for item in sets], dtype=bool)
    chosen = [sets[i] for i in np.flatnonzero(ellipsoids)]
    in_set = np.zeros(n_users, dtype=bool)
    residuals = np.zeros(thetas.shape)  # theta*_i minus its projection onto the set's affine span
    widths = np.full(n_users, np.nan)
    if chosen:
        radii = np.array([item.radius for item in chosen])
        diagnostics["lower_bound"][ellipsoids] = Ellipsoid.batch_lower(chosen, gaps[ellipsoids])
        diagnostics["coverage_term"][ellipsoids] = Ellipsoid.batch_dual_norm(chosen, optimal_gaps[ellipsoids])
        distances, residuals[ellipsoids] = Ellipsoid.span_distances(chosen, thetas[ellipsoids])
        in_set[ellipsoids] = within_radius(distances, radii)  # contains(theta, project=True)
    # The sets of a contextual fit's contexts: support values in one batch per fit; membership
    # (a d x d factorisation per context, where the set spans all of R^d) one at a time.
    contextual = np.array([isinstance(item, ContextualEllipsoid) for item in sets], dtype=bool)
    if np.any(contextual):
        members = [sets[i] for i in np.flatnonzero(contextual)]
        diagnostics["lower_bound"][contextual] = ContextualEllipsoid.batch_lower(members, gaps[contextual])
        diagnostics["coverage_term"][contextual] = ContextualEllipsoid.batch_dual_norm(members, optimal_gaps[contextual])
        widths[contextual] = 2 * np.array([item.radius for item in members]) * diagnostics["coverage_term"][contextual]
        for user in np.flatnonzero(contextual):
            item = sets[user]
            in_set[user] = item.contains(thetas[user], project=True)
            if not item.spans_everything:
                residuals[user] = thetas[user] - theory.affine_projection(thetas[user], item.offset, item.basis)
    for user in np.flatnonzero(~ellipsoids & ~contextual):
        item = sets[user]
        diagnostics["lower_bound"][user] = item.lower(gaps[user])
        widths[user] = item.width(optimal_gaps[user])
        in_set[user] = bool(item.contains(thetas[user], project=True)) if _takes_project(item) \
            else bool(item.contains(thetas[user]))
        if hasattr(item, "offset") and hasattr(item, "basis"):
            residuals[user] = thetas[user] - theory.affine_projection(thetas[user], item.offset, item.basis)
    # Residuals along directions comparisons never see change no policy's value (e . d_pi is the
    # same for every policy): only users with an identifiable residual, beyond rounding, need the
    # two backward inductions of the exact term (full-dimensional sets have none).
    identifiable = project_identifiable(mdp, residuals)
    scale = np.maximum(1.0, np.linalg.norm(thetas, axis=1))
    needed = np.linalg.norm(identifiable, axis=1) > 1e-12 * scale
    diagnostics["misspecification"][:] = 0.0
    if np.any(needed):
        diagnostics["misspecification"][needed] = theory.misspecification_term(
            mdp, residuals[needed], reference[needed])
    if chosen:
        diagnostics["bound"][ellipsoids] = theory.pessimism_bound(
            [item.radius for item in chosen], diagnostics["coverage_term"][ellipsoids],
            diagnostics["misspecification"][ellipsoids])
    diagnostics["bound"][~ellipsoids] = widths[~ellipsoids] + diagnostics["misspecification"][~ellipsoids]
    return in_set


def _takes_project(confidence_set: Any) -> bool:
    """Whether the set's ``contains`` has the ``project`` option (sets in a reduced span)."""
    try:
        return "project" in inspect.signature(confidence_set.contains).parameters
    except (TypeError, ValueError):
        return False
