"""How good is a reward estimate: subspace distance, reward error, preference accuracy, coverage.

All quantities are computed on what comparisons can identify (docs/algorithms.md, Planning): components of
``theta`` along :func:`lr_mdp_env.identifiability.unidentified_directions` are removed from both
the truth and the estimate first.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from lr_mdp_env import PreferenceDataset, TabularMDP, principal_angle_distance
from lr_mdp_env.identifiability import project_identifiable, unidentified_directions
from lr_mdp_env.rewards import ContextualRewards, LowRankRewards

from .confidence import ELLIPSOIDS, Ellipsoid
from .data import comparison_data


def subspace_distance(mdp: TabularMDP, true_subspace: Any, estimate: Any) -> float:
    """``sin`` of the largest principal angle between the identifiable parts of ``span(estimate)``
    and of the true subspace, ``||(I - P P^T) Q||_2`` with ``P`` and ``Q`` bases of
    ``(I - N N^T) U*`` and ``(I - N N^T) U_hat`` (docs/theory.md).

    Both sides are projected: comparisons cannot tell ``U*`` from ``U*`` plus unidentified
    directions, so neither the truth's nor the estimate's components along them count (the
    oracle's ``U*`` itself is at distance 0).
    """
    hidden = unidentified_directions(mdp)
    truth = project_identifiable(mdp, np.asarray(true_subspace, dtype=float).T, hidden).T
    estimate = project_identifiable(mdp, np.asarray(estimate, dtype=float).T, hidden).T
    return principal_angle_distance(truth, estimate)


def reward_errors(mdp: TabularMDP, theta_hat: Any, theta_true: Any) -> np.ndarray:
    """Per-user ``||(I - N N^T)(theta_hat_i - theta*_i)||_2`` on the identifiable directions.

    Parameters
    ----------
    theta_hat : array_like, shape (N, d)
        Estimates, user axis first (as agents expose them).
    theta_true : array_like, shape (d, N)
        The truth as :class:`~lr_mdp_env.LowRankRewards` stores it (``Theta*``).
    """
    difference = np.asarray(theta_hat, dtype=float) - np.asarray(theta_true, dtype=float).T
    return np.linalg.norm(project_identifiable(mdp, difference), axis=1)


def preference_accuracy(estimator: Any, dataset: Any, mdp: TabularMDP | None = None) -> dict[str, float]:
    """Held-out accuracy of the estimator's predicted preferences, beside the truth's.

    Pairs labelled "equal" (0.5) are left out. ``accuracy`` counts pairs where the estimate's
    preferred trajectory is the labelled one. When the dataset knows each pair's true
    ``Pr(y = 1) = p_j`` (simulated data), ``truth_accuracy`` does the same for the true reward
    (``p_j > 1/2``) and ``bayes_accuracy`` is its expectation ``mean_j max(p_j, 1 - p_j)``, the
    best any predictor can do on these pairs; human data has no ``p_j``, and these two are left out.

    Parameters
    ----------
    estimator : fitted estimator
    dataset : PreferenceDataset or FeaturePreferenceDataset
    mdp : TabularMDP, optional
        Needed for trajectory data (its features give ``z``); not for feature differences.

    Returns
    -------
    dict
        ``accuracy``, and ``truth_accuracy`` and ``bayes_accuracy`` when probabilities are known.
    """
    data = comparison_data(dataset, mdp, beta=estimator.beta, base=getattr(estimator, "base", None))
    decided = data.labels != 0.5
    predicted = estimator.pair_logits(data) > 0
    labels = data.labels == 1.0
    accuracy = {"accuracy": float(np.mean(predicted[decided] == labels[decided]))}
    if dataset.probabilities is None:
        return accuracy
    probabilities = np.asarray(dataset.probabilities)
    return {
        **accuracy,
        "truth_accuracy": float(np.mean((probabilities[decided] > 0.5) == labels[decided])),
        "bayes_accuracy": float(np.mean(np.maximum(probabilities, 1 - probabilities)[decided])),
    }


def coverage(estimator: Any, rewards: LowRankRewards | ContextualRewards) -> np.ndarray:
    """For every user, whether the truth lies in the user's confidence set.

    For user-indexed estimators the set of user ``i`` is checked against ``Theta*[:, i]``,
    projected onto the set's affine span: for sets that carry the subspace error (the default
    of P-ShareLoRA, :class:`~agents.subspace_error.SubspaceErrorSet`) that span leaves out only
    the unidentified directions, so the truth itself is tested; for a reduced set without it
    (``subspace_error="ignore"``), only the truth's projection onto ``offset + range(U_hat)``.
    For contextual estimators, ``estimator.covers(Theta_c*)`` (LoCo-PRS by default: the RTV
    blocks and the dropped block of the truth).
    """
    if isinstance(rewards, ContextualRewards) and hasattr(estimator, "covers"):
        return np.array([estimator.covers(rewards.theta_c)])
    from .evaluation import _sets_in_blocks

    theta = rewards.theta
    inside = np.zeros(theta.shape[1], dtype=bool)
    # Users in blocks whose sets fit in evaluate's SETS_BYTES (full-dimensional sets of many users).
    for users, sets in _sets_in_blocks(estimator.confidence_set, 0, theta.shape[1]):
        inside[users] = set_membership(sets, theta.T[users])
    return inside


def set_membership(sets: Sequence[Any], thetas: Any) -> np.ndarray:
    """``sets[i].contains(thetas[i], project=True)`` for every ``i``: ellipsoids (dense or
    :class:`~agents.confidence.LowRankEllipsoid`) all at once in their own coordinates
    (:meth:`agents.Ellipsoid.batch_contains`), other sets one by one.

    Parameters
    ----------
    sets : sequence of ConfidenceSet
    thetas : array_like, shape (len(sets), d)

    Returns
    -------
    ndarray of bool, shape (len(sets),)
    """
    thetas = np.asarray(thetas, dtype=float)
    inside = np.zeros(len(sets), dtype=bool)
    ellipsoids = [index for index, item in enumerate(sets) if isinstance(item, ELLIPSOIDS)]
    if ellipsoids:
        inside[ellipsoids] = Ellipsoid.batch_contains([sets[i] for i in ellipsoids], thetas[ellipsoids], project=True)
    for index in sorted(set(range(len(sets))) - set(ellipsoids)):
        inside[index] = bool(sets[index].contains(thetas[index], project=True))
    return inside


def estimation_report(estimator: Any, mdp: TabularMDP, rewards: LowRankRewards | ContextualRewards,
                      held_out: PreferenceDataset | None = None) -> pd.DataFrame:
    """One row per user: reward error, coverage, and (with held-out data) preference accuracy."""
    report = pd.DataFrame({
        "user": np.arange(rewards.n_users),
        "reward_error": reward_errors(mdp, estimator.theta_hat, rewards.theta),
    })
    if not isinstance(rewards, ContextualRewards):
        report["truth_in_set"] = coverage(estimator, rewards)
    if getattr(estimator, "subspace", None) is not None:
        report["subspace_distance"] = subspace_distance(mdp, rewards.subspace, estimator.subspace)
    if held_out is not None:
        for name, value in preference_accuracy(estimator, held_out, mdp).items():
            report[name] = value
    report.attrs["unidentified_directions"] = int(unidentified_directions(mdp).shape[1])
    return report
