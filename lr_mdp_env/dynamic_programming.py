"""Exact dynamic programming on a :class:`TabularMDP`, batched over users.

One implementation of each idea: backward induction (optimal policies and values), the forward
occupancy recursion (from which policy values and expected features follow), and the backward
recursion of return moments. Every function takes a single array ``(H, S, A)`` or a batch
``(N, H, S, A)`` with the user axis first, and loops only over the ``H`` steps: each step is one
matrix product for all users at once.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ._validation import as_real_array, check_probability_rows, check_real
from .mdp import TabularMDP

#: Largest temporary of the robust step, in array elements (about 32 MB of float64): the users
#: are processed in blocks so that the per-user sorted copies of the transition rows fit in it.
_ROBUST_BLOCK_ELEMENTS = 1 << 22


def check_reward(mdp: TabularMDP, reward: Any, name: str = "reward", *, finite: bool = True) -> np.ndarray:
    """Validate a reward table of shape ``(H, S, A)`` or ``(N, H, S, A)``.

    ``finite=False`` skips the element-wise finiteness scan of a float64 array of the right
    shape: the caller then owns that test, as :func:`backward_induction` does with one sum per
    step while the step's values are in cache, and calls this function again (with the scan) to
    name the entry when a sum is not finite. The recursion's values alone cannot stand in for
    the test: ``-inf`` on a dominated action never reaches them, and ``inf`` times a zero
    transition probability raises warnings inside the next matrix product.
    """
    expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
    if (
        not finite and isinstance(reward, np.ndarray) and reward.dtype == np.float64
        and reward.ndim in (3, 4) and reward.shape[-3:] == expected
    ):
        return reward
    reward = as_real_array(name, reward, (3, 4))
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


def _max_over_actions(q_values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``max_a q[s, a, i]`` of a state-major ``(S, A, N)`` array, into ``out (S, N)``.

    A reduction over the short action axis runs numpy's inner loop once per state; the
    ``A - 1`` element-wise maxima of contiguous action slices below stream through the array
    instead and are several times faster for the action counts of tabular MDPs.
    """
    np.copyto(out, q_values[:, 0])
    for action in range(1, q_values.shape[1]):
        np.maximum(out, q_values[:, action], out=out)
    return out


def _lowest_greedy_action(greedy: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Lowest ``a`` with ``greedy[s, a, i]`` for a state-major mask ``(S, A, N)``, into ``out (S, N)``.

    With a single maximiser (the rule, for continuous rewards) the index is ``sum_a a greedy``:
    a few branch-free passes, where a running "replace if strictly better" with masked writes
    is several times slower. States with exact ties are then corrected one by one.
    """
    out.fill(0)
    for action in range(1, greedy.shape[1]):
        out += greedy[:, action] * np.array(action, dtype=out.dtype)
    if np.count_nonzero(greedy) > out.size:
        states, users = np.nonzero(greedy.sum(axis=1) > 1)
        out[states, users] = greedy[states, :, users].argmax(axis=-1)
    return out


def backward_induction(
    mdp: TabularMDP, reward: Any, *, transition_radius: Any = None, policy: bool = True
) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """Optimal deterministic policy and values by backward induction.

    ``Q_h(s, a) = r[h, s, a] + sum_s' P[h, s, a, s'] V_{h+1}(s')``, ``V_h(s) = max_a Q_h(s, a)``,
    ``V_H = 0``. Ties go to the lowest action index.

    With ``transition_radius`` the expectation is replaced by its worst case over an L1 ball
    around each transition row (robust dynamic programming with ``(s, a)``-rectangular
    uncertainty): ``min { p . V_{h+1} : p in simplex, ||p - P[h, s, a]||_1 <= radius[h, s, a] }``,
    solved exactly by :func:`l1_robust_expectation`'s sorting rule, for every user, state and
    action at once. The result is the optimal policy and value against the adversarial
    transitions, a lower bound on the value under any kernel in the balls. Its cost is
    ``O(N H S^2 A)`` element operations outside BLAS (every row is gathered in each user's value
    order): about ten times the plain step for one user, thirty times for a batch.

    Parameters
    ----------
    mdp : TabularMDP
        With estimated transitions, typically the empirical ones (see
        :func:`l1_transition_radius`).
    reward : array_like, shape (H, S, A) or (N, H, S, A)
        One reward table, or one per user (all users go through one pass: each step is a single
        ``(S A, S) x (S, N)`` matrix product, and the last step none).
    transition_radius : float or array_like of shape (H, S, A), optional
        L1 radius of each transition row's uncertainty set, ``>= 0``; ``inf`` (or anything
        ``>= 2``) lets the adversary choose any distribution. Default: the transitions are
        exact. A radius of 0 gives exactly the plain recursion.
    policy : bool, default True
        Whether to build the greedy policy; ``False`` returns the values alone (the ties and the
        one-hot table of every user are skipped, which is most of the work beyond the products).

    Returns
    -------
    policy : ndarray, shape (H, S, A) or (N, H, S, A)
        One-hot rows of the greedy action (only with ``policy=True``).
    values : ndarray, shape (H, S) or (N, H, S)
        ``V_h(s)`` of that policy, which is the optimal (robust) value.

    References
    ----------
    Puterman, *Markov Decision Processes*, 1994, section 4.5.
    Iyengar, *Robust dynamic programming*, Mathematics of Operations Research 30(2), 2005.
    Nilim and El Ghaoui, *Robust control of Markov decision processes with uncertain transition
    matrices*, Operations Research 53(5), 2005.
    """
    reward = check_reward(mdp, reward, finite=False)
    if not isinstance(policy, (bool, np.bool_)):
        raise TypeError(f"policy must be a bool, got {type(policy).__name__}")
    half_radius = None if transition_radius is None else 0.5 * check_transition_radius(mdp, transition_radius)
    batched = reward.ndim == 4
    rewards = reward if batched else reward[None]
    n_users = rewards.shape[0]
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    values = np.empty((n_users, horizon, n_states))
    greedy_actions = np.empty((n_users, horizon, n_states), dtype=np.int8 if n_actions <= 127 else np.intp)
    # State-major layout Q[s, a, i]: each step is one product P_h (S A, S) x V (S, N) written
    # straight into q_values, the maximum over actions is A - 1 maxima of contiguous (S, N)
    # slices, and V (S, N) feeds the next product as it is. V_H = 0: the last step needs no
    # product. The one-hot policy is written once at the end from the greedy action indices.
    q_values = np.empty((n_states, n_actions, n_users))
    q_flat = q_values.reshape(n_states * n_actions, n_users)
    next_values = np.empty((n_states, n_users))
    greedy = np.empty(q_values.shape, dtype=bool)
    best = np.empty((n_states, n_users), dtype=greedy_actions.dtype)
    for step in range(horizon - 1, -1, -1):
        step_reward = rewards[:, step].reshape(n_users, n_states * n_actions).T
        if step == horizon - 1:
            np.copyto(q_flat, step_reward)
        else:
            matrix = mdp.transitions[step].reshape(n_states * n_actions, n_states)
            np.matmul(matrix, next_values, out=q_flat)
            if half_radius is not None:
                step_half_radius = half_radius if half_radius.ndim == 0 else half_radius[step].reshape(-1)
                q_flat -= _l1_penalty(matrix, next_values.T, step_half_radius).T
            q_flat += step_reward
        with np.errstate(over="ignore", invalid="ignore"):
            total = q_flat.sum()
        if not np.isfinite(total):
            check_reward(mdp, reward)  # names a non-finite reward (or passes: an overflow)
        _max_over_actions(q_values, next_values)
        values[:, step] = next_values.T
        if policy:
            np.equal(q_values, next_values[:, None, :], out=greedy)
            greedy_actions[:, step] = _lowest_greedy_action(greedy, best).T
    if not policy:
        return values if batched else values[0]
    policies = np.take(np.eye(n_actions), greedy_actions, axis=0)
    if not batched:
        return policies[0], values[0]
    return policies, values


def check_transition_radius(mdp: TabularMDP, radius: Any, name: str = "transition_radius") -> np.ndarray:
    """Validate an L1 radius: a scalar or an array ``(H, S, A)``, non-negative, ``inf`` allowed."""
    if isinstance(radius, (str, bytes)) or radius is None:
        raise TypeError(f"{name} must be a real number or an array of them, got {type(radius).__name__}")
    try:
        array = np.asarray(radius, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real number or an array of them ({error})") from None
    expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
    if array.ndim != 0 and array.shape != expected:
        raise ValueError(f"{name} must be a scalar or have shape (H, S, A) = {expected}, got {array.shape}")
    bad = np.isnan(array) | (array < 0)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(np.atleast_1d(bad))[0]) if array.ndim else ()
        value = array[index] if array.ndim else array
        raise ValueError(f"{name} must be non-negative (inf allowed), but {name}{list(index)} = {float(value)}")
    return array


def _l1_penalty(rows: np.ndarray, values: np.ndarray, half_radius: np.ndarray) -> np.ndarray:
    """``p . v - min { p' . v : p' in simplex, ||p' - p||_1 <= 2 half_radius }`` for every pair.

    Parameters: ``rows`` ``(R, S)`` probability vectors, ``values`` ``(n, S)``, ``half_radius``
    scalar or ``(R,)``. Returns ``(n, R)``.

    Sort each value vector in decreasing order, ``v_(0) >= ... >= v_(S-1) = min v``. The
    adversary moves mass ``min(radius / 2, 1 - p[argmin])`` from the top of the order onto the
    lowest state; by summation by parts the loss is
    ``sum_j min(c_j, radius / 2) (v_(j) - v_(j+1))`` with ``c_j`` the mass of the ``j + 1`` highest
    states (the cap ``1 - p[argmin]`` is ``c_(S-2)``, never smaller than the earlier ``c_j``).
    Sorting depends only on the values, so it is done once per user; the rows are gathered in
    that order for a block of users at a time.
    """
    n_users, n_states = values.shape
    n_rows = rows.shape[0]
    penalty = np.zeros((n_users, n_rows))
    if n_states < 2:
        return penalty
    order = np.argsort(-values, axis=-1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=-1)
    gaps = (sorted_values[:, :-1] - sorted_values[:, 1:])[:, None, :]  # (n, 1, S-1), >= 0
    by_next_state = np.ascontiguousarray(rows.T)  # (S, R): a gather along the first axis is contiguous
    block = max(1, _ROBUST_BLOCK_ELEMENTS // (n_rows * n_states))
    for start in range(0, n_users, block):
        users = slice(start, start + block)
        mass = by_next_state[order[users, :-1]]  # (b, S-1, R): each row in the user's value order
        np.cumsum(mass, axis=1, out=mass)
        np.minimum(mass, half_radius, out=mass)
        penalty[users] = (gaps[users] @ mass)[:, 0, :]
    return penalty


def l1_robust_expectation(rows: Any, values: Any, radius: Any) -> np.ndarray:
    """Worst-case expectation over an L1 ball of distributions, exactly.

    ``min { p . v : p >= 0, sum(p) = 1, ||p - p_0||_1 <= radius }``: the minimiser moves up to
    ``radius / 2`` of mass from the highest-value outcomes (highest first) onto one
    lowest-value outcome. Sorting gives it in ``O(S log S)`` per row.

    Parameters
    ----------
    rows : array_like, shape (..., S)
        Nominal distributions ``p_0`` (every row a probability vector).
    values : array_like, shape (..., S)
        Values ``v``; broadcast against ``rows``.
    radius : float or array_like
        Non-negative radius (``inf`` allowed), broadcast against the leading shape.

    Returns
    -------
    ndarray, the broadcast leading shape
        The minimum for each row.

    References
    ----------
    Iyengar, *Robust dynamic programming*, Mathematics of Operations Research 30(2), 2005,
    section 4 (L1 and other uncertainty sets with closed-form inner problems).
    """
    rows = as_real_array("rows", rows, tuple(range(1, 33)))
    values = as_real_array("values", values, tuple(range(1, 33)))
    check_probability_rows("rows", rows, tuple(f"axis{i}" for i in range(rows.ndim - 1)))
    try:
        radius = np.asarray(radius, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"radius must be real ({error})") from None
    if np.any(np.isnan(radius) | (radius < 0)):
        raise ValueError("radius must be non-negative (inf allowed)")
    if rows.shape[-1] != values.shape[-1]:
        raise ValueError(f"rows and values must have the same last axis, got {rows.shape} and {values.shape}")
    leading = np.broadcast_shapes(rows.shape[:-1], values.shape[:-1], radius.shape)
    n_outcomes = rows.shape[-1]
    rows = np.broadcast_to(rows, leading + (n_outcomes,)).reshape(-1, n_outcomes)
    values = np.broadcast_to(values, leading + (n_outcomes,)).reshape(-1, n_outcomes)
    half_radius = np.broadcast_to(0.5 * radius, leading).reshape(-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=-1)
    cumulative = np.cumsum(np.take_along_axis(rows, order, axis=-1)[:, :-1], axis=-1)
    gaps = sorted_values[:, :-1] - sorted_values[:, 1:]
    penalty = np.sum(np.minimum(cumulative, half_radius[:, None]) * gaps, axis=-1)
    return (np.sum(rows * values, axis=-1) - penalty).reshape(leading)


def l1_transition_radius(counts: Any, delta: float) -> np.ndarray:
    """L1 radius around empirical transition rows from their counts (Weissman et al. 2003).

    For ``n`` independent draws from a distribution ``p`` on ``S`` outcomes, the empirical
    distribution satisfies ``Pr(||p_hat - p||_1 >= eps) <= (2^S - 2) exp(-n eps^2 / 2)``; so with
    probability at least ``1 - delta``

    ``||p_hat - p||_1 <= sqrt(2 (S log 2 + log(1 / delta)) / n)``.

    The radius is capped at 2 (the diameter of the simplex), which is also the radius of a row
    that was never observed (``n = 0``): any distribution is then possible. The guarantee is per
    row; for all ``H S A`` rows at once pass ``delta / (H S A)`` (union bound).

    Parameters
    ----------
    counts : array_like, shape (..., S)
        Observed next-state counts of each row, e.g.
        :meth:`~lr_mdp_env.PreferenceDataset.transition_counts` ``(H, S, A, S)``.
    delta : float in (0, 1)

    Returns
    -------
    ndarray, shape (...)
        The radius of each row, in ``(0, 2]``; ``(H, S, A)`` for counts ``(H, S, A, S)``, ready
        for ``backward_induction(..., transition_radius=...)``.

    References
    ----------
    Weissman, Ordentlich, Seroussi, Verdu and Weinberger, *Inequalities for the L1 deviation of
    the empirical distribution*, HP Labs technical report HPL-2003-97, 2003.
    """
    counts = as_real_array("counts", counts, tuple(range(1, 33)))
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative")
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    if delta >= 1:
        raise ValueError(f"delta must be below 1, got {delta}")
    n_outcomes = counts.shape[-1]
    visits = counts.sum(axis=-1)
    squared = 2.0 * (n_outcomes * np.log(2.0) + np.log(1.0 / delta))
    with np.errstate(divide="ignore"):
        radius = np.sqrt(squared / visits)
    return np.minimum(radius, 2.0)


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
    result = np.empty(policies.shape)
    for step, step_occupancy in _forward(mdp, policies):
        result[:, step] = step_occupancy
    return result if batched else result[0]


def _forward(mdp: TabularMDP, policies: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The forward recursion of :func:`occupancy` for checked policies ``(N, H, S, A)``: yields
    ``(h, q_h)`` with ``q_h`` of shape ``(N, S, A)``, one step at a time (each step one
    ``(N, S A) x (S A, S)`` product), so that callers needing only a sum over steps never hold
    the ``(N, H, S, A)`` occupancy."""
    n_states, n_actions = mdp.n_states, mdp.n_actions
    state_distribution = np.broadcast_to(mdp.initial_distribution, (policies.shape[0], n_states))
    for step in range(mdp.horizon):
        step_occupancy = state_distribution[:, :, None] * policies[:, step]
        yield step, step_occupancy
        if step + 1 < mdp.horizon:
            matrix = mdp.transitions[step].reshape(n_states * n_actions, n_states)
            state_distribution = step_occupancy.reshape(-1, n_states * n_actions) @ matrix


def expected_features(mdp: TabularMDP, policy: Any, *, check: bool = True) -> np.ndarray:
    """Expected trajectory feature ``d_pi = sum_{h,s,a} q_pi[h,s,a] phi[h,s,a]``.

    The occupancy is accumulated step by step (:func:`occupancy`'s recursion), never stored for
    all steps: for a thousand users of a 200-state MDP with horizon 20 that array alone is 320 MB.

    Parameters
    ----------
    mdp : TabularMDP
    policy : array_like, shape (H, S, A) or (N, H, S, A)
    check : bool, default True
        Validate ``policy`` (:func:`check_policy`). ``False`` when the caller already has: a
        float64 array of the right shape that it checked, or a policy of
        :func:`backward_induction`; saves a pass over its ``N H S A`` entries.

    Returns
    -------
    ndarray, shape (d,) or (N, d)
    """
    if check:
        policy = check_policy(mdp, policy)
    elif not (isinstance(policy, np.ndarray) and policy.dtype == np.float64 and policy.ndim in (3, 4)
              and policy.shape[-3:] == (mdp.horizon, mdp.n_states, mdp.n_actions)):
        raise ValueError("check=False needs a float64 policy of shape (H, S, A) or (N, H, S, A)")
    batched = policy.ndim == 4
    policies = policy if batched else policy[None]
    n_users, cells = policies.shape[0], mdp.n_states * mdp.n_actions
    flat = mdp.flat_features()
    if mdp.stationary_features:
        total = np.zeros((n_users, cells))
        for _, step_occupancy in _forward(mdp, policies):
            total += step_occupancy.reshape(n_users, cells)
        result = total @ flat
    else:
        result = np.zeros((n_users, mdp.n_features))
        for step, step_occupancy in _forward(mdp, policies):
            result += step_occupancy.reshape(n_users, cells) @ flat[step * cells:(step + 1) * cells]
    return result if batched else result[0]


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
