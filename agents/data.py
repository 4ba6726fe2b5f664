"""Comparison data as the estimators see it: feature differences, labels, users, contexts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse

from lr_mdp_env import FeaturePreferenceDataset, PreferenceDataset, TabularMDP
from lr_mdp_env.rewards import base_matrix


@dataclass(frozen=True, eq=False)
class ComparisonData:
    """The columns of a dataset needed for estimation (:func:`comparison_data` builds it).

    Attributes
    ----------
    differences : ndarray or scipy.sparse.csr_matrix, shape (n, d)
        ``z_j = psi(tau1_j) - psi(tau0_j)`` (:meth:`~lr_mdp_env.PreferenceDataset.feature_differences`);
        sparse for features with at most one feature per cell (one-hot), whose differences have
        at most ``2 H`` non-zeros.
    labels : ndarray, shape (n,)
    users : ndarray of int, shape (n,)
    n_users : int
    contexts : ndarray, shape (n, d_x), or None
    offsets : ndarray, shape (n,)
        ``beta Theta_0[:, i_j] . z_j``, the logit of the known base reward (zeros without one).
    """

    differences: Any
    labels: np.ndarray
    users: np.ndarray
    n_users: int
    contexts: np.ndarray | None
    offsets: np.ndarray

    @property
    def n_pairs(self) -> int:
        return self.labels.shape[0]

    @property
    def n_features(self) -> int:
        return self.differences.shape[1]

    def subset(self, rows: np.ndarray) -> ComparisonData:
        return ComparisonData(
            differences=self.differences[rows],
            labels=self.labels[rows],
            users=self.users[rows],
            n_users=self.n_users,
            contexts=None if self.contexts is None else self.contexts[rows],
            offsets=self.offsets[rows],
        )

    def dense_differences(self) -> np.ndarray:
        if scipy.sparse.issparse(self.differences):
            return self.differences.toarray()
        return self.differences

    def row_dot(self, rows: np.ndarray) -> np.ndarray:
        """``z_j . rows[j]`` for an ``(n, d)`` array of per-pair vectors."""
        if scipy.sparse.issparse(self.differences):
            return np.asarray(self.differences.multiply(rows).sum(axis=1)).ravel()
        return np.sum(self.differences * rows, axis=1)

    def user_indicator(self) -> scipy.sparse.csr_matrix:
        """Sparse ``(n, N)`` one-hot of the answering user (the contexts of P-ShareLoRA)."""
        n = self.n_pairs
        return scipy.sparse.csr_matrix((np.ones(n), (np.arange(n), self.users)), shape=(n, self.n_users))


def comparison_data(dataset: PreferenceDataset | FeaturePreferenceDataset, mdp: TabularMDP | None = None, *,
                    beta: float = 1.0, base: Any = None) -> ComparisonData:
    """Build :class:`ComparisonData` from a dataset (and, for trajectories, the MDP that generated it).

    Parameters
    ----------
    dataset : PreferenceDataset or FeaturePreferenceDataset
        Trajectory pairs, whose differences ``z`` come from the MDP's features, or comparisons
        given directly as feature differences.
    mdp : TabularMDP, optional
        Required for a :class:`~lr_mdp_env.PreferenceDataset` (must match its sizes); optional
        for a :class:`~lr_mdp_env.FeaturePreferenceDataset` (then its ``d`` must match).
    beta : float, default 1.0
        Rationality assumed by the estimator (scales the base reward's logit).
    base : array_like of shape (d,) or (d, N), optional
        Known base reward ``Theta_0`` (checked by :func:`lr_mdp_env.rewards.base_matrix`).

    Raises
    ------
    TypeError
        For another kind of dataset, or trajectory data without an MDP.
    """
    if isinstance(dataset, FeaturePreferenceDataset):
        differences = dataset.feature_differences(mdp)
    elif isinstance(dataset, PreferenceDataset):
        if mdp is None:
            raise TypeError("mdp is required for a PreferenceDataset: the features of its trajectories come from "
                            "the MDP (comparisons given as feature differences go in a FeaturePreferenceDataset)")
        differences = dataset.feature_differences(mdp, sparse=True)
    else:
        raise TypeError(f"dataset must be a PreferenceDataset or a FeaturePreferenceDataset, got "
                        f"{type(dataset).__name__}")
    data = ComparisonData(
        differences=differences,
        labels=np.asarray(dataset.labels, dtype=float),
        users=np.asarray(dataset.users),
        n_users=dataset.n_users,
        contexts=None if dataset.contexts is None else np.asarray(dataset.contexts),
        offsets=np.zeros(dataset.n_pairs),
    )
    if base is None:
        return data
    base = base_matrix(base, data.n_features, dataset.n_users)
    return replace(data, offsets=beta * data.row_dot(base.T[data.users]))

