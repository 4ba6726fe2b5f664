"""The finite-horizon tabular MDP: immutable arrays, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse

from ._validation import as_real_array, check_int, check_probability_rows, frozen


# Visits per block of rows in TabularMDP.visit_count_differences (a few hundred kB of temporaries).
_VISIT_BLOCK_ENTRIES = 2**16


@dataclass(frozen=True, init=False, eq=False)
class TabularMDP:
    """A finite-horizon tabular MDP with linear reward features.

    Transitions ``P[h, s, a, s']``, initial distribution ``rho[s]``, horizon ``H`` and features
    ``phi[h, s, a, :]`` in ``R^d`` (docs/model.md, MDP). Stationary transitions ``(S, A, S)`` and
    stationary features ``(S, A, d)`` are broadcast along a leading ``H`` axis without copying,
    so ``mdp.transitions[h]`` and ``mdp.features[h]`` work for every ``h`` either way.

    Parameters
    ----------
    transitions : array_like, shape (S, A, S) or (H, S, A, S)
        Every row ``transitions[..., s, a, :]`` must be a probability vector.
    initial_distribution : array_like, shape (S,)
        Distribution of ``s_0``.
    horizon : int, optional
        ``H``. Required for stationary transitions; must agree with the leading axis otherwise.
    features : array_like of shape (S, A, d) or (H, S, A, d), or {"one_hot", "one_hot_time"}, optional
        Reward features. Default: one-hot of ``(s, a)`` (``d = S A``, the tabular case);
        ``"one_hot_time"`` is the one-hot of ``(h, s, a)`` (``d = H S A``).

    Attributes
    ----------
    transitions : ndarray, shape (H, S, A, S), read-only
    initial_distribution : ndarray, shape (S,), read-only
    features : ndarray, shape (H, S, A, d), read-only
    n_states, n_actions, horizon, n_features : int
    stationary_transitions, stationary_features : bool
        Whether the arrays were given without the ``H`` axis (and so are views of one slice).

    Raises
    ------
    ValueError
        On a shape mismatch, a non-finite entry, a negative probability or a row that does not
        sum to 1 (the message names the row), or a non-positive horizon.
    """

    transitions: np.ndarray
    initial_distribution: np.ndarray
    horizon: int
    features: np.ndarray
    stationary_transitions: bool = field(repr=False)
    stationary_features: bool = field(repr=False)

    def __init__(
        self,
        transitions: Any,
        initial_distribution: Any,
        horizon: int | None = None,
        features: Any = None,
    ) -> None:
        # Copies: a caller who keeps the array must not be able to change a validated model.
        transitions = as_real_array("transitions", transitions, (3, 4)).copy()
        n_states = transitions.shape[-1]
        if transitions.shape[-3] != n_states:
            raise ValueError(
                "transitions must have shape (S, A, S) or (H, S, A, S) with the same S on the "
                f"state and next-state axes, got shape {transitions.shape}"
            )
        if n_states == 0 or transitions.shape[-2] == 0:
            raise ValueError(f"transitions must have at least one state and action, got {transitions.shape}")
        stationary_transitions = transitions.ndim == 3
        if stationary_transitions:
            if horizon is None:
                raise ValueError("horizon is required when transitions are stationary (S, A, S)")
            horizon = check_int("horizon", horizon, minimum=1)
            check_probability_rows("transitions", transitions, ("s", "a"))
        else:
            if horizon is None:
                horizon = transitions.shape[0]
            horizon = check_int("horizon", horizon, minimum=1)
            if transitions.shape[0] != horizon:
                raise ValueError(
                    f"transitions have {transitions.shape[0]} stages but horizon={horizon}"
                )
            check_probability_rows("transitions", transitions, ("h", "s", "a"))
        n_actions = transitions.shape[-2]

        initial_distribution = as_real_array("initial_distribution", initial_distribution, (1,)).copy()
        if initial_distribution.shape != (n_states,):
            raise ValueError(
                f"initial_distribution must have shape ({n_states},) to match transitions, "
                f"got {initial_distribution.shape}"
            )
        check_probability_rows("initial_distribution", initial_distribution, ())

        features, stationary_features = _resolve_features(features, horizon, n_states, n_actions)

        full = (horizon, n_states, n_actions)
        set_ = object.__setattr__
        set_(self, "transitions", frozen(np.broadcast_to(transitions, full + (n_states,))))
        set_(self, "initial_distribution", frozen(initial_distribution))
        set_(self, "horizon", horizon)
        set_(self, "features", frozen(np.broadcast_to(features, full + features.shape[-1:])))
        set_(self, "stationary_transitions", stationary_transitions)
        set_(self, "stationary_features", stationary_features)

    @property
    def n_states(self) -> int:
        return self.transitions.shape[1]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[2]

    @property
    def n_features(self) -> int:
        return self.features.shape[3]

    def __repr__(self) -> str:
        kind = "stationary" if self.stationary_transitions else "stage-dependent"
        return (
            f"TabularMDP(n_states={self.n_states}, n_actions={self.n_actions}, "
            f"horizon={self.horizon}, n_features={self.n_features}, {kind} transitions)"
        )

    def __getstate__(self) -> dict:
        # Broadcast views would pickle as full copies; store the compact arrays instead.
        return {
            "transitions": self.transitions[0] if self.stationary_transitions else self.transitions,
            "initial_distribution": self.initial_distribution,
            "horizon": self.horizon,
            "features": self.features[0] if self.stationary_features else self.features,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- features -------------------------------------------------------------------------

    def reward(self, theta: Any) -> np.ndarray:
        """Rewards ``r[h, s, a] = phi[h, s, a] . theta`` for one or many users.

        Parameters
        ----------
        theta : array_like, shape (d,) or (N, d)
            Reward parameters; the user axis comes first when batched.

        Returns
        -------
        ndarray, shape (H, S, A) or (N, H, S, A)
        """
        theta = as_real_array("theta", theta, (1, 2))
        if theta.shape[-1] != self.n_features:
            raise ValueError(
                f"theta must have {self.n_features} features on its last axis, got shape {theta.shape}"
            )
        # One 2-D product, users first: a stacked (S, A, d) x (d, N) product is not one BLAS call.
        cells = (self.n_states, self.n_actions)
        table = theta @ self.flat_features().T  # (.., S A) or (.., H S A)
        if self.stationary_features:
            table = table.reshape(theta.shape[:-1] + cells)
            return np.broadcast_to(table[..., None, :, :], theta.shape[:-1] + (self.horizon,) + cells).copy()
        return table.reshape(theta.shape[:-1] + (self.horizon,) + cells)

    def visit_counts(self, states: np.ndarray, actions: np.ndarray) -> scipy.sparse.csr_matrix:
        """Sparse ``(n, H S A)`` matrix counting each trajectory's visits to ``(h, s, a)``.

        With stationary features the step axis is dropped: ``(n, S A)``.
        """
        n_trajectories, horizon = states.shape
        cells, n_columns = self._visited_cells(states, actions)
        rows = np.repeat(np.arange(n_trajectories), horizon)
        data = np.ones(rows.size)
        return scipy.sparse.csr_matrix(
            (data, (rows, cells.ravel())), shape=(n_trajectories, n_columns)
        )

    def _visited_cells(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """Column of every visit in the visit-count matrices (``(h, s, a)``, or ``(s, a)`` with
        stationary features), and their number."""
        cells_per_step = self.n_states * self.n_actions
        cells = states * self.n_actions + actions
        if self.stationary_features:
            return cells, cells_per_step
        return cells + np.arange(states.shape[1]) * cells_per_step, cells_per_step * states.shape[1]

    def visit_count_differences(self, states1: np.ndarray, actions1: np.ndarray, states0: np.ndarray,
                                actions0: np.ndarray) -> scipy.sparse.csr_matrix:
        """``visit_counts(states1, actions1) - visit_counts(states0, actions0)`` in canonical form
        (sorted indices, no explicit zeros), built without a general sparse conversion.

        Each row's ``2 H`` signed visits are sorted within the row and equal cells summed, which
        costs a sort of ``n`` short rows instead of two conversions and a sparse subtraction. Rows
        are processed in blocks of about ``_VISIT_BLOCK_ENTRIES`` visits, whose temporaries stay in
        cache instead of being allocated (and paged in) at the size of the whole dataset.

        Parameters
        ----------
        states1, actions1, states0, actions0 : ndarray of int, shape (n, H)
            The two trajectories of every pair.

        Returns
        -------
        scipy.sparse.csr_matrix, shape (n, H S A), or (n, S A) with stationary features
        """
        n_trajectories, horizon = states1.shape
        n_columns = self._visited_cells(states1[:0], actions1[:0])[1]
        block = max(1, _VISIT_BLOCK_ENTRIES // (2 * max(horizon, 1)))
        values, columns, counts = [], [], []
        for begin in range(0, n_trajectories, block):
            rows = slice(begin, begin + block)
            block_values, block_columns, block_counts = self._count_difference_block(
                states1[rows], actions1[rows], states0[rows], actions0[rows])
            values.append(block_values)
            columns.append(block_columns)
            counts.append(block_counts)
        indptr = np.zeros(n_trajectories + 1, dtype=np.int64)
        if counts:
            np.cumsum(np.concatenate(counts), out=indptr[1:])
        return scipy.sparse.csr_matrix(
            (np.concatenate(values) if values else np.zeros(0), np.concatenate(columns) if columns else
             np.zeros(0, dtype=np.int64), indptr), shape=(n_trajectories, n_columns))

    def _count_difference_block(self, states1: np.ndarray, actions1: np.ndarray, states0: np.ndarray,
                                actions0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-zero values, their columns (sorted within rows) and the number per row of the count
        differences of a block of rows (see :meth:`visit_count_differences`)."""
        n_trajectories, horizon = states1.shape
        cells1, n_columns = self._visited_cells(states1, actions1)
        cells = np.concatenate([cells1, self._visited_cells(states0, actions0)[0]], axis=1)
        # Sort keys 2 cell + (1 for tau0), in the narrowest integer type that holds them: a value
        # sort of short rows, no argsort.
        key_type = np.int32 if 2 * n_columns < 2**31 else np.int64
        keys = 2 * cells.astype(key_type)
        keys[:, horizon:] += 1
        keys.sort(axis=1)
        keys = keys.ravel()
        cells, signs = keys >> 1, 1.0 - 2.0 * (keys & 1)
        # A run of equal cells starts where the cell changes or a new row (of 2 H entries) begins.
        starts = np.empty(cells.size, dtype=bool)
        starts[0] = True
        np.not_equal(cells[1:], cells[:-1], out=starts[1:])
        starts[:: 2 * horizon] = True
        first = np.flatnonzero(starts)
        values = np.add.reduceat(signs, first)
        keep = values != 0
        counts = np.bincount(first[keep] // (2 * horizon), minlength=n_trajectories)
        return values[keep], cells[first[keep]], counts

    def flat_features(self) -> np.ndarray:
        """Features as the ``(H S A, d)`` matrix, or ``(S A, d)`` when stationary."""
        if self.stationary_features:
            return self.features[0].reshape(-1, self.n_features)
        return self.features.reshape(-1, self.n_features)

    def trajectory_features(self, states: Any, actions: Any) -> np.ndarray:
        """Trajectory features ``psi(tau) = sum_h phi[h, s_h, a_h]``.

        Parameters
        ----------
        states, actions : array_like of int, shape (n, H)

        Returns
        -------
        ndarray, shape (n, d)
        """
        states, actions = self.check_trajectories(states, actions)
        return np.asarray(self.visit_counts(states, actions) @ self.flat_features())

    def check_trajectories(self, states: Any, actions: Any, name: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Validate integer ``(n, H)`` state and action arrays against this MDP."""
        checked = []
        for label, array, upper in (("states", states, self.n_states), ("actions", actions, self.n_actions)):
            label = f"{name}{label}"
            array = np.asarray(array)
            if array.dtype.kind not in "iu":
                raise TypeError(f"{label} must be an integer array, got dtype {array.dtype}")
            if array.ndim != 2 or array.shape[1] != self.horizon:
                raise ValueError(f"{label} must have shape (n, {self.horizon}), got {array.shape}")
            if array.size and (array.min() < 0 or array.max() >= upper):
                bad = np.argwhere((array < 0) | (array >= upper))[0]
                raise ValueError(
                    f"{label}[{bad[0]}, {bad[1]}] = {array[tuple(bad)]} is outside 0..{upper - 1}"
                )
            checked.append(array.astype(np.int64, copy=False))
        if checked[0].shape != checked[1].shape:
            raise ValueError(
                f"{name}states and {name}actions must have the same shape, "
                f"got {checked[0].shape} and {checked[1].shape}"
            )
        return checked[0], checked[1]


def one_hot_features(n_states: int, n_actions: int) -> np.ndarray:
    """One-hot features of ``(s, a)``: shape ``(S, A, S A)``, the tabular case."""
    n_states = check_int("n_states", n_states, minimum=1)
    n_actions = check_int("n_actions", n_actions, minimum=1)
    return np.eye(n_states * n_actions).reshape(n_states, n_actions, n_states * n_actions)


def one_hot_time_features(horizon: int, n_states: int, n_actions: int) -> np.ndarray:
    """One-hot features of ``(h, s, a)``: shape ``(H, S, A, H S A)``."""
    horizon = check_int("horizon", horizon, minimum=1)
    n_states = check_int("n_states", n_states, minimum=1)
    n_actions = check_int("n_actions", n_actions, minimum=1)
    size = horizon * n_states * n_actions
    return np.eye(size).reshape(horizon, n_states, n_actions, size)


def dense_features(
    n_states: int,
    n_actions: int,
    n_features: int,
    *,
    horizon: int | None = None,
    norm_bound: float = 1.0,
    seed: Any = None,
) -> np.ndarray:
    """Random dense features with ``||phi[h, s, a]||_2 <= norm_bound``.

    Each vector is Gaussian, rescaled to a norm drawn uniformly in ``[norm_bound / 2, norm_bound]``
    so that features differ in length as well as direction.

    Returns
    -------
    ndarray, shape (S, A, d), or (H, S, A, d) when ``horizon`` is given.
    """
    from ._validation import as_generator, check_real

    n_states = check_int("n_states", n_states, minimum=1)
    n_actions = check_int("n_actions", n_actions, minimum=1)
    n_features = check_int("n_features", n_features, minimum=1)
    norm_bound = check_real("norm_bound", norm_bound, 0.0, strict_minimum=True)
    rng = as_generator(seed)
    leading = (n_states, n_actions) if horizon is None else (check_int("horizon", horizon, minimum=1), n_states, n_actions)
    raw = rng.standard_normal(leading + (n_features,))
    lengths = rng.uniform(norm_bound / 2, norm_bound, size=leading + (1,))
    return raw / np.linalg.norm(raw, axis=-1, keepdims=True) * lengths


def _resolve_features(features: Any, horizon: int, n_states: int, n_actions: int) -> tuple[np.ndarray, bool]:
    if features is None or (isinstance(features, str) and features == "one_hot"):
        return one_hot_features(n_states, n_actions), True
    if isinstance(features, str):
        if features == "one_hot_time":
            return one_hot_time_features(horizon, n_states, n_actions), False
        raise ValueError(
            f"features must be an array, 'one_hot' or 'one_hot_time', got the string {features!r}"
        )
    features = as_real_array("features", features, (3, 4)).copy()
    expected = (n_states, n_actions)
    if features.shape[-3:-1] != expected:
        raise ValueError(
            f"features must have shape (S, A, d) or (H, S, A, d) with (S, A) = {expected}, "
            f"got {features.shape}"
        )
    if features.ndim == 4 and features.shape[0] != horizon:
        raise ValueError(f"features have {features.shape[0]} stages but horizon={horizon}")
    if features.shape[-1] == 0:
        raise ValueError("features must have at least one dimension d >= 1")
    return features, features.ndim == 3
