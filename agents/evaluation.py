"""Exact evaluation of any agent under the true model (docs/theory.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lr_mdp_env import TabularMDP, backward_induction, expected_features, theory
from lr_mdp_env.dynamic_programming import check_policy
from lr_mdp_env.rewards import ContextualRewards, LowRankRewards

from .agent import Agent


def evaluate(agent: Any, mdp: TabularMDP, rewards: LowRankRewards | ContextualRewards | Any) -> pd.DataFrame:
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
    Missing quantities are ``NaN``.

    Parameters
    ----------
    agent : Agent
        Fitted; anything with ``policy(user)``.
    mdp : TabularMDP
        The true model.
    rewards : LowRankRewards, ContextualRewards or array_like of shape (d, N)
        The users' true parameters.

    Returns
    -------
    pandas.DataFrame
    """
    if not isinstance(agent, Agent):
        raise TypeError(f"agent must have fit(dataset, mdp) and policy(user), got {type(agent).__name__}")
    theta = np.asarray(rewards.theta if isinstance(rewards, (LowRankRewards, ContextualRewards)) else rewards, dtype=float)
    if theta.ndim != 2 or theta.shape[0] != mdp.n_features:
        raise ValueError(f"rewards must give Theta of shape (d={mdp.n_features}, N), got {theta.shape}")
    n_users = theta.shape[1]
    policies = agent.policies() if hasattr(agent, "policies") else np.stack([agent.policy(i) for i in range(n_users)])
    policies = check_policy(mdp, policies, "agent's policies")
    if policies.shape[0] != n_users:
        raise ValueError(f"the agent has policies for {policies.shape[0]} users but rewards have {n_users}")
    optimal_policies, _ = backward_induction(mdp, mdp.reward(theta.T))
    features = expected_features(mdp, policies)
    optimal_features = expected_features(mdp, optimal_policies)
    value = np.sum(features * theta.T, axis=1)
    optimal_value = np.sum(optimal_features * theta.T, axis=1)
    report = pd.DataFrame({"user": np.arange(n_users), "value": value, "optimal_value": optimal_value})
    reference = getattr(agent, "reference_features", None)
    if reference is not None:  # d_ref is (d,) or, for per-user behaviours, (N, d)
        reference = np.broadcast_to(np.asarray(reference, dtype=float), (n_users, mdp.n_features))
    report["reference_value"] = np.sum(theta.T * reference, axis=1) if reference is not None else np.nan
    report["suboptimality"] = optimal_value - value
    diagnostics = {name: np.full(n_users, np.nan) for name in
                   ("lower_bound", "coverage_term", "misspecification", "bound")}
    in_set = np.full(n_users, np.nan, dtype=object)
    if reference is not None and hasattr(agent, "confidence_set"):
        sets = [agent.confidence_set(user) for user in range(n_users)]
        residuals = np.empty((n_users, mdp.n_features))
        half_widths = np.empty(n_users)
        for user, confidence_set in enumerate(sets):
            diagnostics["lower_bound"][user] = confidence_set.lower(features[user] - reference[user])
            # 2 radius ||G g*||_{M^{-1}} for an ellipsoid; any set of the protocol: its width along g*.
            half_widths[user] = 0.5 * confidence_set.width(optimal_features[user] - reference[user])
            if hasattr(confidence_set, "dual_norm"):
                diagnostics["coverage_term"][user] = confidence_set.dual_norm(optimal_features[user] - reference[user])
            in_set[user] = bool(confidence_set.contains(theta[:, user], project=True))
            # Sets with a subspace error (agents.SubspaceErrorSet) test the truth itself: no residual.
            spanned = hasattr(confidence_set, "basis") and hasattr(confidence_set, "offset")
            residuals[user] = theta[:, user] - theory.affine_projection(
                theta[:, user], confidence_set.offset, confidence_set.basis) if spanned else 0.0
        # One batched pair of backward inductions for all users' misspecification terms.
        diagnostics["misspecification"] = theory.misspecification_term(mdp, residuals, reference)
        diagnostics["bound"] = theory.pessimism_bound(1.0, half_widths, diagnostics["misspecification"])
    for name in ("lower_bound", "coverage_term", "misspecification", "bound"):
        report[name] = diagnostics[name]
    report.insert(report.columns.get_loc("coverage_term"), "truth_in_set", in_set)
    return report
