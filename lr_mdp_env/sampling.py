"""Vectorised sampling of categorical rows and of whole batches of trajectories.

Trajectories of every user are drawn at once: the only Python loop is over the ``H`` steps, and
each step draws the actions and next states of all trajectories with a few array operations.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
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


#: Buckets per outcome of a sampler's guide table (rounded up to a power of two), and the most
#: buckets one sampler may hold: more buckets leave fewer draws to the walk, fewer keep the table
#: in cache (one byte per bucket for up to 127 outcomes).
_BUCKETS_PER_OUTCOME = 16
_MAX_BUCKETS = 1 << 22


def _bucket_count(n_rows: int, n_outcomes: int) -> int:
    """Buckets per row ``M``: a power of two, ``_BUCKETS_PER_OUTCOME K`` or the most that fit the cap."""
    wanted = 1 << (_BUCKETS_PER_OUTCOME * n_outcomes - 1).bit_length()
    allowed = 1 << (max(1, _MAX_BUCKETS // max(n_rows, 1)).bit_length() - 1)
    return min(wanted, allowed)


class CategoricalSampler:
    """Exact inverse-CDF sampling from many categorical distributions at once.

    A draw is the first outcome ``i`` with ``cdf[j, i] > u`` (:func:`closed_cdf`), so never a
    zero-probability outcome. Each row's ``[0, 1)`` is cut into ``M`` buckets, ``M`` a power of
    two, so that the bucket ``k = floor(u M)`` of a uniform is computed exactly, and a guide
    table keeps the outcome ``lo`` at the left end of every bucket (Chen and Asau 1974). When
    the bucket holds at most one breakpoint, the draw is ``lo + (u >= cdf[j, lo])``: two
    gathers (a byte from the guide table, a double from the cumulative rows, both small enough
    to stay in cache), a comparison and an addition, with no search. The few buckets holding two
    or more breakpoints (very small probabilities) are marked in the table, and their draws
    walk the cumulative row forward from ``lo``. Either way the result is exactly the inverse
    CDF.

    Parameters
    ----------
    probabilities : ndarray, shape (n_rows, K)
        Validated probability rows.

    References
    ----------
    Chen and Asau, *On generating random variates from an empirical distribution*, AIIE
    Transactions 6(2), 1974. Devroye, *Non-Uniform Random Variate Generation*, Springer, 1986,
    section III.2.4.
    """

    def __init__(self, probabilities: np.ndarray) -> None:
        n_rows, n_outcomes = probabilities.shape
        # Two common tables need no search at all: every row uniform (the default behaviour
        # policy), where the inverse CDF is floor(u K), and every row a point mass (deterministic
        # policies), a lookup. Their guide table is only built if draw() asks for it.
        self.uniform = bool(np.all(probabilities == 1.0 / n_outcomes))
        self.deterministic = None
        if not self.uniform and np.all((probabilities == 0) | (probabilities == 1)):
            self.deterministic = probabilities.argmax(axis=1)
        self.n_outcomes = n_outcomes
        self.n_buckets = _bucket_count(n_rows, n_outcomes)
        self.bucket_bits = self.n_buckets.bit_length() - 1
        self._cdf: np.ndarray | None = None
        self._guide: np.ndarray | None = None
        self._probabilities = probabilities
        if self.uniform or self.deterministic is not None:
            self._probabilities = probabilities.copy()  # kept for a later draw(), unchanged
        else:
            self._build()

    def _build(self) -> None:
        cdf = closed_cdf(self._probabilities)
        self._cdf = cdf.ravel()
        self._guide = _guide_table(cdf, self.n_buckets)
        self._probabilities = None

    def sample(self, rows: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Outcome index for each ``rows[m]`` given uniforms ``u[m]`` in ``[0, 1)``."""
        n_outcomes = self.n_outcomes
        if self.uniform:
            return np.minimum((uniforms * n_outcomes).astype(np.int64), n_outcomes - 1)
        if self.deterministic is not None:
            return self.deterministic[rows]
        buckets = (uniforms * self.n_buckets).astype(np.int64)
        return self.draw(rows * self.n_buckets + buckets, uniforms)

    def draw(
        self, cells: np.ndarray, uniforms: np.ndarray, out: np.ndarray | None = None, first_row: int = 0
    ) -> np.ndarray:
        """Draws from guide-table cells ``row M + floor(u M)``, rows counted from ``first_row``.

        The loop-free core of :meth:`sample`: callers that know ``row M + floor(u M)`` directly
        (a block of rows, e.g. one step of stage-dependent transitions, via ``first_row``) skip
        its arithmetic. ``out`` (int64) receives the outcomes.
        """
        if self._guide is None:
            self._build()
        first_cell = first_row * self.n_buckets
        guide = self._guide[first_cell:] if first_cell else self._guide
        low = np.take(guide, cells, mode="wrap")  # cells are in range: "wrap" skips the checks
        marked = np.flatnonzero(low < 0) if low.size and low.min() < 0 else None
        positions = np.right_shift(cells, self.bucket_bits)
        if first_row:
            positions += first_row
        positions *= self.n_outcomes
        positions += low  # a marked entry -1 - lo still points inside the table; walked below
        above = np.greater_equal(uniforms, np.take(self._cdf, positions, mode="wrap"))
        # lo + 1 still fits the guide's small type: add there, widen once.
        np.add(low, above, out=low, dtype=low.dtype)
        if out is None:
            out = np.empty(low.shape, dtype=np.int64)
        np.copyto(out, low)
        if marked is not None:
            self._walk(out, marked, cells, uniforms, first_row)
        return out

    def _walk(
        self, out: np.ndarray, marked: np.ndarray, cells: np.ndarray, uniforms: np.ndarray, first_row: int
    ) -> None:
        """Redraw the marked buckets' draws by walking their cumulative rows forward from ``lo``."""
        cells = cells[marked]
        row_starts = ((cells >> self.bucket_bits) + first_row) * self.n_outcomes
        uniforms = uniforms[marked]
        positions = row_starts - 1 - self._guide[cells + first_row * self.n_buckets]
        while True:
            # closed_cdf ends every row at exactly 1 > u, so each walk stops inside its row.
            behind = self._cdf[positions] <= uniforms
            if not behind.any():
                break
            positions += behind
        out[marked] = positions - row_starts


def _guide_table(cdf: np.ndarray, n_buckets: int) -> np.ndarray:
    """Guide table ``(n_rows M,)``: ``lo`` of every bucket, or ``-1 - lo`` if the bucket is marked.

    A breakpoint ``c = cdf[j, i]`` has level ``q = ceil(c M)``, exact because ``M`` is a power of
    two: ``(q - 1) / M < c <= q / M``. The inverse CDF at the left end ``k / M`` of a bucket is the
    first outcome of level above ``k``, so outcome ``i`` is ``lo`` of the ``q_i - q_(i-1)``
    buckets ``q_(i-1) .. q_i - 1``: the table is each row's outcomes repeated that many times.
    The draw ``lo + (u >= cdf[j, lo])`` is exact unless ``cdf[j, lo + 1]`` also lies strictly
    inside the bucket; then ``lo`` and ``lo + 1`` share a level ``q`` with
    ``cdf[j, lo + 1] < q / M``, and the bucket ``q - 1`` is marked for the walk. (Above
    ``cdf[j, lo]``, ``lo + 1`` is otherwise the answer: its cumulative value is larger, so its
    probability is positive.) The smallest signed integer type that holds ``-1 - lo`` keeps the
    table small.
    """
    n_rows, n_outcomes = cdf.shape
    scaled = cdf * n_buckets
    levels = np.ceil(scaled).astype(np.int64)  # in 0..M, and M at the end of every row
    widths = np.diff(levels, axis=1, prepend=0)
    dtype = np.int8 if n_outcomes <= 127 else np.int16 if n_outcomes <= 32767 else np.int32
    outcomes = np.broadcast_to(np.arange(n_outcomes, dtype=dtype), (n_rows, n_outcomes))
    guide = np.repeat(outcomes.ravel(), widths.ravel())
    shared = (levels[:, 1:] == levels[:, :-1]) & (scaled[:, 1:] < levels[:, 1:]) & (levels[:, 1:] > 0)
    rows, outcomes_ = np.nonzero(shared)
    marked = rows * n_buckets + levels[rows, outcomes_ + 1] - 1
    guide[marked] = -1 - guide[marked]
    return guide


#: Transition samplers already built, one per live MDP: an MDP's arrays are read-only, so its
#: sampler never goes stale, and repeated collections on one MDP skip rebuilding the table.
_TRANSITION_SAMPLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def transition_sampler(mdp: TabularMDP) -> CategoricalSampler:
    """Sampler over rows ``(s, a)`` (stationary) or ``(h, s, a)`` of ``mdp.transitions``.

    Built once per MDP and then shared (the MDP's arrays are read-only).
    """
    sampler = _TRANSITION_SAMPLERS.get(mdp)
    if sampler is None:
        rows = mdp.transitions[0] if mdp.stationary_transitions else mdp.transitions
        sampler = CategoricalSampler(rows.reshape(-1, mdp.n_states))
        _TRANSITION_SAMPLERS[mdp] = sampler
    return sampler


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
        policies = policy
    states, actions = step_major_trajectories(mdp, policies, index, rng, transitions)
    return states.T, actions.T


def step_major_trajectories(
    mdp: TabularMDP,
    policies: np.ndarray,
    index: np.ndarray,
    rng: np.random.Generator,
    transitions: CategoricalSampler | None = None,
    visit: Callable[[int, np.ndarray], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The loop of :func:`sample_trajectories` on validated input: ``(H, n)`` states and actions.

    Step-major buffers keep every per-step write contiguous (the public ``(n, H)`` arrays are
    their transposed views). Each step is a handful of passes over ``n`` entries, all in cache:
    the uniforms are drawn step by step into one buffer, then the action, the transition table's
    cell ``(s A + a) M + floor(u M)``, two gathers and a comparison (:class:`CategoricalSampler`).

    Uniforms, in this order: one per trajectory for ``s_0``, then per step one for the action and
    one for the next state. A uniform policy needs only one per step: ``a = floor(u A)``, and the
    fraction ``u A - a``, uniform on ``[0, 1)`` and independent of ``a`` (up to the 2^-50 spacing
    of doubles below ``A``, the resolution of ``u`` itself), draws the next state.

    Parameters
    ----------
    mdp : TabularMDP
    policies : ndarray, shape (M, H, S, A)
        Validated policies.
    index : ndarray of int, shape (n,)
        The policy of each trajectory.
    rng : numpy.random.Generator
    transitions : CategoricalSampler, optional
        :func:`transition_sampler` of ``mdp`` (the default).
    visit : callable, optional
        ``visit(h, rows)`` is called once per step with each trajectory's state-action index
        ``rows = s_h A + a_h`` (to read rewards along the way, say); ``rows`` is scratch space.

    Returns
    -------
    states, actions : ndarray of int64, shape (H, n)
    """
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    n = index.size
    transitions = transition_sampler(mdp) if transitions is None else transitions
    policy = CategoricalSampler(policies.reshape(-1, n_actions))
    initial = CategoricalSampler(mdp.initial_distribution[None])
    n_buckets = transitions.n_buckets
    stage_rows = 0 if mdp.stationary_transitions else n_states * n_actions
    # Row of pi_i[h, s] in the policy table: policy_rows + h S + s.
    policy_rows = 0 if policies.shape[0] == 1 else index * (horizon * n_states)

    # One block for both outputs: fresh memory is paid for page by page, and a single large block
    # is mostly backed by huge pages.
    states, actions = np.empty((2, horizon, n), dtype=np.int64)
    uniform = rng.random(n)
    states[0] = initial.sample(np.zeros(n, dtype=np.int64), uniform)
    state_cells = states[0] * (n_actions * n_buckets)
    cells = np.empty(n, dtype=np.int64)
    scaled = np.empty(n)
    next_uniform = np.empty(n)
    rows = np.empty(n, dtype=np.int64) if visit is not None else None
    for step in range(horizon):
        action = actions[step]
        rng.random(out=uniform)
        if policy.uniform:
            # floor(u A M) = a M + floor((u A - a) M) exactly, M being a power of two: one
            # product gives the action (its high bits) and the next state's bucket.
            np.multiply(uniform, n_actions * n_buckets, out=cells, casting="unsafe")
            np.right_shift(cells, transitions.bucket_bits, out=action)
            cells += state_cells
            if visit is not None:
                visit(step, np.right_shift(cells, transitions.bucket_bits, out=rows))
            if step + 1 == horizon:
                break
            np.multiply(uniform, n_actions, out=scaled)
            np.subtract(scaled, np.floor(scaled, out=next_uniform), out=next_uniform)
        else:
            action[:] = policy.sample(policy_rows + step * n_states + states[step], uniform)
            if visit is not None:
                visit(step, np.add(np.multiply(states[step], n_actions, out=rows), action, out=rows))
            if step + 1 == horizon:
                break
            rng.random(out=next_uniform)
            np.multiply(next_uniform, n_buckets, out=cells, casting="unsafe")
            cells += action * n_buckets
            cells += state_cells
        transitions.draw(cells, next_uniform, out=states[step + 1], first_row=step * stage_rows)
        np.multiply(states[step + 1], n_actions * n_buckets, out=state_cells)
    return states, actions
