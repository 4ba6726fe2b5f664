"""Vectorised sampling of categorical rows and of whole batches of trajectories.

Trajectories of every user are drawn at once: the only Python loop is over the ``H`` steps, and
each step draws the actions and next states of all trajectories with a few array operations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_generator, check_int
from .dynamic_programming import check_policy
from .mdp import TabularMDP


def closed_cdf(probabilities: np.ndarray) -> np.ndarray:
    """Cumulative rows ``(n_rows, K)`` closed at exactly 1 from each row's last positive entry.

    A uniform ``u`` in ``[0, 1)`` then maps to the first ``i`` with ``cdf[i] > u``: never past
    the row, never a zero-probability entry. Every sampler of the package (the vectorised one
    and the environments' per-step lookup) uses this table, so they draw the same outcomes.
    """
    n_outcomes = probabilities.shape[1]
    cdf = np.minimum(np.cumsum(probabilities, axis=1), 1.0)
    last_positive = n_outcomes - 1 - np.argmax(probabilities[:, ::-1] > 0, axis=1)
    cdf[np.arange(n_outcomes)[None, :] >= last_positive[:, None]] = 1.0
    return cdf


class CategoricalSampler:
    """Exact inverse-CDF sampling from many categorical distributions at once.

    Each row ``probabilities[j]`` gets a cumulative table and a guide table
    ``guide[j, k] <= min{i : cdf[j, i] > k / K}`` (Chen and Asau's method), so a draw starts at
    the guide entry of its uniform's bucket and walks forward a few entries on average: O(1)
    expected work per draw instead of a binary search. The walk stops at the first ``i`` with
    ``cdf[j, i] > u``, so the result is exactly the inverse CDF and never a zero-probability
    entry.

    Parameters
    ----------
    probabilities : ndarray, shape (n_rows, K)
        Validated probability rows.
    """

    def __init__(self, probabilities: np.ndarray) -> None:
        n_rows, n_outcomes = probabilities.shape
        # Two common tables need no search at all: every row uniform (the default behaviour
        # policy), where the inverse CDF is floor(u K), and every row a point mass (deterministic
        # policies), a lookup.
        self._uniform = bool(np.all(probabilities == 1.0 / n_outcomes))
        self._deterministic = None
        if not self._uniform and np.all((probabilities == 0) | (probabilities == 1)):
            self._deterministic = probabilities.argmax(axis=1)
        cdf = closed_cdf(probabilities)
        # bucket[j, i] = smallest k with cdf[j, i] <= k / K, nudged up so rounding can only make
        # the guide start earlier (never past the answer).
        bucket = np.minimum(np.ceil(cdf * n_outcomes + 1e-9).astype(np.int64), n_outcomes)
        flat_buckets = (np.arange(n_rows)[:, None] * (n_outcomes + 1) + bucket).ravel()
        counts = np.bincount(flat_buckets, minlength=n_rows * (n_outcomes + 1))
        counts = counts.reshape(n_rows, n_outcomes + 1)
        self._guide = np.cumsum(counts, axis=1)[:, :n_outcomes].ravel()
        self._cdf = cdf.ravel()
        self._n_outcomes = n_outcomes

    def sample(self, rows: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Outcome index for each ``rows[m]`` given uniforms ``u[m]`` in ``[0, 1)``."""
        n_outcomes = self._n_outcomes
        if self._uniform:
            return np.minimum((uniforms * n_outcomes).astype(np.int64), n_outcomes - 1)
        if self._deterministic is not None:
            return self._deterministic[rows]
        offsets = rows * n_outcomes
        buckets = (uniforms * n_outcomes).astype(np.int64)
        positions = offsets + self._guide[offsets + buckets]
        active = np.flatnonzero(self._cdf[positions] <= uniforms)
        while active.size:
            positions[active] += 1
            still = self._cdf[positions[active]] <= uniforms[active]
            active = active[still]
        return positions - offsets


def transition_sampler(mdp: TabularMDP) -> CategoricalSampler:
    """Sampler over rows ``(s, a)`` (stationary) or ``(h, s, a)`` of ``mdp.transitions``."""
    rows = mdp.transitions[0] if mdp.stationary_transitions else mdp.transitions
    return CategoricalSampler(rows.reshape(-1, mdp.n_states))


def sample_trajectories(
    mdp: TabularMDP,
    policy: Any,
    n_trajectories: int | None = None,
    *,
    policy_index: Any = None,
    seed: Any = None,
    transitions: CategoricalSampler | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw trajectories ``tau = (s_0, a_0, ..., s_{H-1}, a_{H-1})``, all at once.

    Parameters
    ----------
    mdp : TabularMDP
    policy : array_like, shape (H, S, A) or (M, H, S, A)
        One Markov policy, or a batch of ``M`` from which ``policy_index`` chooses.
    n_trajectories : int, optional
        Number of trajectories (needed for a single policy; defaults to ``len(policy_index)``).
    policy_index : array_like of int, shape (n,), optional
        For a batch of policies, which policy each trajectory follows.
    seed : int, SeedSequence or Generator, optional
    transitions : CategoricalSampler, optional
        A prebuilt :func:`transition_sampler` of ``mdp``, to reuse across calls.

    Returns
    -------
    states, actions : ndarray of int64, shape (n, H)
    """
    policy = check_policy(mdp, policy)
    rng = as_generator(seed)
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    if policy.ndim == 3:
        if policy_index is not None:
            raise ValueError("policy_index is only meaningful with a batch of policies (M, H, S, A)")
        n = check_int("n_trajectories", n_trajectories, minimum=0)
        index = np.zeros(n, dtype=np.int64)
        policies = policy[None]
    else:
        if policy_index is None:
            raise ValueError("policy_index is required with a batch of policies (M, H, S, A)")
        index = np.asarray(policy_index)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise TypeError(f"policy_index must be a 1-d integer array, got {index.dtype} {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= policy.shape[0]):
            raise ValueError(f"policy_index entries must lie in 0..{policy.shape[0] - 1}")
        if n_trajectories is not None and n_trajectories != index.size:
            raise ValueError(f"n_trajectories={n_trajectories} but policy_index has {index.size} entries")
        n = index.size
        policies = policy
    transitions = transition_sampler(mdp) if transitions is None else transitions
    actions_sampler = CategoricalSampler(policies.reshape(-1, n_actions))
    initial = CategoricalSampler(mdp.initial_distribution[None])

    # Step-major buffers keep every per-step write contiguous; the (n, H) results are their
    # transposed (Fortran-ordered) views.
    states = np.empty((horizon, n), dtype=np.int64)
    actions = np.empty((horizon, n), dtype=np.int64)
    uniforms = rng.random((2 * horizon + 1, n))
    current = initial.sample(np.zeros(n, dtype=np.int64), uniforms[0])
    policy_rows = index * (horizon * n_states)
    step_rows = 0 if mdp.stationary_transitions else n_states * n_actions
    for step in range(horizon):
        states[step] = current
        action = actions_sampler.sample(policy_rows + step * n_states + current, uniforms[2 * step + 1])
        actions[step] = action
        if step + 1 < horizon:
            current = transitions.sample(
                step * step_rows + current * n_actions + action, uniforms[2 * step + 2]
            )
    return states.T, actions.T
