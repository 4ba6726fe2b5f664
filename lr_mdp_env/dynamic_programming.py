"""Exact dynamic programming on a :class:`TabularMDP`, batched over users.

One implementation of each idea: backward induction (optimal policies and values), the forward
occupancy recursion (from which policy values and expected features follow), and the backward
recursion of return moments. Every function takes a single array ``(H, S, A)`` or a batch
``(N, H, S, A)`` with the user axis first, and loops only over the ``H`` steps: each step is one
matrix product for all users at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_real_array, check_probability_rows
from .mdp import TabularMDP


def check_reward(mdp: TabularMDP, reward: Any, name: str = "reward", *, finite: bool = True) -> np.ndarray:
    """Validate a reward table of shape ``(H, S, A)`` or ``(N, H, S, A)``.

    ``finite=False`` replaces the element-wise finiteness scan by one sum, which is non-finite
    whenever an entry is; only then (or on overflow) does the full scan run to name the entry.
    The output of a recursion cannot stand in for this test: ``-inf`` on a dominated action never
    reaches the optimal values, and ``inf`` times a zero transition probability raises warnings
    inside the matrix products.
    """
    if not finite and isinstance(reward, np.ndarray) and reward.dtype == np.float64:
        if reward.ndim in (3, 4) and reward.shape[-3:] == (mdp.horizon, mdp.n_states, mdp.n_actions):
            with np.errstate(over="ignore", invalid="ignore"):
                total = reward.sum()
            if np.isfinite(total):
                return reward
    reward = as_real_array(name, reward, (3, 4))
    expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
    if reward.shape[-3:] != expected:
        raise ValueError(
            f"{name} must have shape (H, S, A) = {expected} or (N, H, S, A), got {reward.shape}"
        )
    return reward


def check_policy(mdp: TabularMDP, policy: Any, name: str = "policy") -> np.ndarray:
    """Validate a Markov policy ``pi[h, s, a]`` or a batch ``pi[i, h, s, a]``.

    Every row ``pi[..., h, s, :]`` must be a probability vector; the message names the row.
    """
    policy = as_real_array(name, policy, (3, 4))
    expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
    if policy.shape[-3:] != expected:
        raise ValueError(
            f"{name} must have shape (H, S, A) = {expected} or (N, H, S, A), got {policy.shape}"
        )
    axes = ("h", "s") if policy.ndim == 3 else ("user", "h", "s")
    check_probability_rows(name, policy, axes)
    return policy


def _expected_next(mdp: TabularMDP, step: int, next_values: np.ndarray) -> np.ndarray:
    """``sum_s' P[h, s, a, s'] V[..., s']`` for a batch of value vectors ``(..., S)``."""
    n_states, n_actions = mdp.n_states, mdp.n_actions
    matrix = mdp.transitions[step].reshape(n_states * n_actions, n_states)
    flat = next_values.reshape(-1, n_states) @ matrix.T
    return flat.reshape(next_values.shape[:-1] + (n_states, n_actions))


def _max_over_actions(q_values: np.ndarray) -> np.ndarray:
    """``max_a q[..., a]`` by pairwise maxima of the action slices.

    A reduction over a short last axis runs numpy's per-row inner loop once per state; the
    ``A - 1`` element-wise maxima below stream through the array instead and are several times
    faster for the action counts of tabular MDPs.
    """
    best = q_values[..., 0].copy()
    for action in range(1, q_values.shape[-1]):
        np.maximum(best, q_values[..., action], out=best)
    return best


def _keep_lowest_action(step_policy: np.ndarray, greedy: np.ndarray) -> None:
    """Break exact ties of a greedy step in place: keep the lowest maximising action."""
    tied = greedy.sum(axis=-1) > 1
    step_policy[tied] = 0.0
    first = greedy[tied].argmax(axis=-1)
    step_policy[tied, first] = 1.0


def backward_induction(mdp: TabularMDP, reward: Any) -> tuple[np.ndarray, np.ndarray]:
    """Optimal deterministic policy and values by backward induction.

    ``Q_h(s, a) = r[h, s, a] + sum_s' P[h, s, a, s'] V_{h+1}(s')``, ``V_h(s) = max_a Q_h(s, a)``,
    ``V_H = 0``. Ties go to the lowest action index.

    Parameters
    ----------
    mdp : TabularMDP
    reward : array_like, shape (H, S, A) or (N, H, S, A)
        One reward table, or one per user (all users go through one pass: each step is a single
        ``(N, S) x (S, S A)`` matrix product).

    Returns
    -------
    policy : ndarray, shape (H, S, A) or (N, H, S, A)
        One-hot rows of the greedy action.
    values : ndarray, shape (H, S) or (N, H, S)
        ``V_h(s)`` of that policy, which is the optimal value.

    References
    ----------
    Puterman, *Markov Decision Processes*, 1994, section 4.5.
    """
    reward = check_reward(mdp, reward, finite=False)
    batched = reward.ndim == 4
    rewards = reward if batched else reward[None]
    n_users = rewards.shape[0]
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    values = np.empty((n_users, horizon, n_states))
    policy = np.empty((n_users, horizon, n_states, n_actions))
    next_values = np.zeros((n_users, n_states))
    for step in range(horizon - 1, -1, -1):
        q_values = _expected_next(mdp, step, next_values)
        q_values += rewards[:, step]
        next_values = _max_over_actions(q_values)
        values[:, step] = next_values
        greedy = q_values == next_values[..., None]
        policy[:, step] = greedy
        if np.count_nonzero(greedy) > greedy.size // n_actions:
            _keep_lowest_action(policy[:, step], greedy)
    if not np.all(np.isfinite(values)):
        check_reward(mdp, reward)  # a non-finite value comes from a non-finite reward: name it
    if not batched:
        return policy[0], values[0]
    return policy, values


def occupancy(mdp: TabularMDP, policy: Any) -> np.ndarray:
    """State-action occupancy ``q_pi[h, s, a] = Pr(s_h = s, a_h = a)``.

    Forward recursion ``q_h(s, a) = d_h(s) pi_h(a | s)``, ``d_0 = rho``,
    ``d_{h+1}(s') = sum_{s, a} q_h(s, a) P[h, s, a, s']``.

    Parameters
    ----------
    mdp : TabularMDP
    policy : array_like, shape (H, S, A) or (N, H, S, A)

    Returns
    -------
    ndarray, same shape as ``policy``; each step sums to 1.
    """
    policy = check_policy(mdp, policy)
    batched = policy.ndim == 4
    policies = policy if batched else policy[None]
    n_states, n_actions = mdp.n_states, mdp.n_actions
    result = np.empty(policies.shape)
    state_distribution = np.broadcast_to(mdp.initial_distribution, (policies.shape[0], n_states))
    for step in range(mdp.horizon):
        result[:, step] = state_distribution[:, :, None] * policies[:, step]
        if step + 1 < mdp.horizon:
            matrix = mdp.transitions[step].reshape(n_states * n_actions, n_states)
            state_distribution = result[:, step].reshape(-1, n_states * n_actions) @ matrix
    return result if batched else result[0]


def expected_features(mdp: TabularMDP, policy: Any) -> np.ndarray:
    """Expected trajectory feature ``d_pi = sum_{h,s,a} q_pi[h,s,a] phi[h,s,a]``.

    Parameters
    ----------
    mdp : TabularMDP
    policy : array_like, shape (H, S, A) or (N, H, S, A)

    Returns
    -------
    ndarray, shape (d,) or (N, d)
    """
    return occupancy_features(mdp, occupancy(mdp, policy))


def occupancy_features(mdp: TabularMDP, occupancy_measure: np.ndarray) -> np.ndarray:
    """``sum_{h,s,a} q[h,s,a] phi[h,s,a]`` for an occupancy (or any measure) ``(..., H, S, A)``."""
    leading = occupancy_measure.shape[:-3]
    if mdp.stationary_features:
        flat = occupancy_measure.sum(axis=-3).reshape(leading + (-1,))
    else:
        flat = occupancy_measure.reshape(leading + (-1,))
    return flat @ mdp.flat_features()


def evaluate_policy(mdp: TabularMDP, policy: Any, reward: Any) -> np.ndarray | float:
    """Exact value ``J(pi) = sum_{h,s,a} q_pi[h,s,a] r[h,s,a]`` (no Monte Carlo).

    Parameters
    ----------
    mdp : TabularMDP
    policy : array_like, shape (H, S, A) or (N, H, S, A)
    reward : array_like, shape (H, S, A) or (N, H, S, A)
        Batched arguments must share ``N``; a single policy is evaluated under every user's
        reward and a single reward under every policy.

    Returns
    -------
    float, or ndarray of shape (N,) when either argument is batched.
    """
    reward = check_reward(mdp, reward)
    occupancy_measure = occupancy(mdp, policy)
    if occupancy_measure.ndim == 4 and reward.ndim == 4 and occupancy_measure.shape[0] != reward.shape[0]:
        raise ValueError(
            f"policy and reward batch different numbers of users: "
            f"{occupancy_measure.shape[0]} and {reward.shape[0]}"
        )
    values = (occupancy_measure * reward).sum(axis=(-3, -2, -1))
    return float(values) if values.ndim == 0 else values


def return_moments(mdp: TabularMDP, policy: Any, reward: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the return ``R(tau) = sum_h r[h, s_h, a_h]`` under ``policy``.

    Backward recursion on the first two moments ``G_h = E[R_{h:} | s_h]`` and
    ``M_h = E[R_{h:}^2 | s_h]``: ``M_h(s) = sum_a pi(a|s) (r^2 + 2 r P G_{h+1} + P M_{h+1})``.

    Returns
    -------
    mean, variance : float arrays of shape () or (N,)
    """
    reward = check_reward(mdp, reward)
    policy = check_policy(mdp, policy)
    if policy.ndim == 4 and reward.ndim == 4 and policy.shape[0] != reward.shape[0]:
        raise ValueError(
            f"policy and reward batch different numbers of users: {policy.shape[0]} and {reward.shape[0]}"
        )
    shape = np.broadcast_shapes(policy.shape, reward.shape)
    first = np.zeros(shape[:-3] + (mdp.n_states,))
    second = np.zeros_like(first)
    for step in range(mdp.horizon - 1, -1, -1):
        step_reward = reward[..., step, :, :]
        next_first = _expected_next(mdp, step, first)
        next_second = _expected_next(mdp, step, second)
        step_policy = policy[..., step, :, :]
        first = (step_policy * (step_reward + next_first)).sum(axis=-1)
        second = (step_policy * (step_reward**2 + 2 * step_reward * next_first + next_second)).sum(axis=-1)
    mean = first @ mdp.initial_distribution
    variance = np.maximum(second @ mdp.initial_distribution - mean**2, 0.0)
    return mean, variance


def uniform_policy(mdp: TabularMDP) -> np.ndarray:
    """The uniform Markov policy ``pi[h, s, a] = 1 / A``, shape ``(H, S, A)``."""
    return np.full((mdp.horizon, mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
