"""Which reward directions trajectory comparisons can see (docs/algorithms.md, Identifiability).

A comparison observes ``theta . z`` with ``z = psi(tau1) - psi(tau0) = sum_h (phi[h, s_h, a_h] -
phi[h, s'_h, a'_h])``: differences of features *within one step*. Directions orthogonal to every
such difference are never identified; shifting a step's reward by a constant (the all-ones
direction of one-hot features) changes no ranking. Per-``(s, a)`` quantities (bonuses, reward
errors, coverage) are therefore computed on the identifiable part.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from .mdp import TabularMDP


def unidentified_directions(mdp: TabularMDP) -> np.ndarray:
    """Orthonormal basis ``N`` of the directions no comparison in ``mdp`` can identify.

    The identifiable space is the span of ``phi[h, s, a] - phi[h, s', a']`` over all steps and
    pairs (reachability ignored); ``N`` spans its orthogonal complement, ``(d, m)``. For indicator
    features (every ``phi`` a standard basis vector, as with one-hot ``(s, a)`` or ``(h, s, a)``)
    it is computed combinatorially: coordinates that occur in a common step form connected
    groups, and each group's normalised indicator (plus each never-used coordinate) is one
    direction. Otherwise it is the null space of the step-centred features, by an SVD.

    Parameters
    ----------
    mdp : TabularMDP

    Returns
    -------
    ndarray, shape (d, m)
        ``m = 1`` for one-hot ``(s, a)``, ``m = H`` for one-hot ``(h, s, a)``, usually ``m = 0``
        for dense features with ``d < S A``.

    References
    ----------
    Zhu, Jordan and Jiao, ICML 2023, section 3 (the constraint ``<1, theta> = 0``).
    """
    steps = mdp.features[:1] if mdp.stationary_features else mdp.features
    flat = steps.reshape(steps.shape[0], -1, mdp.n_features)  # (H', S A, d)
    d = mdp.n_features
    is_indicator = np.all((flat == 0) | (flat == 1)) and np.all(flat.sum(axis=-1) == 1)
    if is_indicator:
        columns = flat.argmax(axis=-1)  # (H', S A): the coordinate each (h, s, a) switches on
        # Link all coordinates used at one step into one group through the step's first one.
        first = np.repeat(columns[:, :1], columns.shape[1], axis=1)
        links = scipy.sparse.coo_matrix((np.ones(columns.size), (first.ravel(), columns.ravel())), shape=(d, d))
        _, group = scipy.sparse.csgraph.connected_components(links, directed=False)
        used = np.zeros(d, dtype=bool)
        used[columns.ravel()] = True
        # Unused coordinates are singleton groups of their own: each is one direction.
        directions = np.zeros((d, group.max() + 1))
        directions[np.arange(d), group] = 1.0
        return directions / np.linalg.norm(directions, axis=0)
    centred = flat - flat.mean(axis=1, keepdims=True)
    _, singular, right = np.linalg.svd(centred.reshape(-1, d), full_matrices=True)
    tolerance = max(centred.shape[1:]) * np.finfo(float).eps * (singular[0] if singular.size else 1.0)
    rank = int(np.sum(singular > tolerance))
    return right[rank:].T


def identifiable_basis(mdp: TabularMDP, hidden: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal basis ``(d, d - m)`` of the identifiable directions (complement of
    :func:`unidentified_directions`, which the caller may pass as ``hidden`` when it has them)."""
    hidden = unidentified_directions(mdp) if hidden is None else hidden
    if hidden.shape[1] == 0:
        return np.eye(mdp.n_features)
    complete, _ = np.linalg.qr(hidden, mode="complete")
    return complete[:, hidden.shape[1]:]


def project_identifiable(mdp: TabularMDP, vectors: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
    """Remove the unidentified components of ``vectors`` ``(..., d)``: ``v - N N^T v``."""
    hidden = unidentified_directions(mdp) if hidden is None else hidden
    vectors = np.asarray(vectors, dtype=float)
    return vectors - (vectors @ hidden) @ hidden.T
