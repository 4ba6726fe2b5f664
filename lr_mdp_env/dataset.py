"""Offline preference datasets: columnar numpy, saved as ``.npz`` without pickle.

Two kinds of data (docs/model.md, Preference data):

- :class:`PreferenceDataset`: pairs of trajectories of a tabular MDP, each answered by one user;
  the features ``z = psi(tau1) - psi(tau0)`` come from the MDP.
- :class:`FeaturePreferenceDataset`: comparisons given directly as feature differences ``z``
  (e.g. embeddings of two real responses), with no MDP behind them.

Both are validated on construction, carry the true preference probabilities only when they are
known (simulated data), convert to and from pandas (and so CSV), and save to a checksummed
``.npz`` that loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from ._validation import as_generator, as_real_array, check_int, check_real, frozen
from .mdp import TabularMDP

FORMAT = "lr-mdp-env/preference-dataset/1"
FEATURE_FORMAT = "lr-mdp-env/feature-preference-dataset/1"
_TRAJECTORY_ARRAYS = ("states0", "actions0", "states1", "actions1")
_SIZES = ("n_users", "n_states", "n_actions", "horizon")


class _Pairs:
    """What both kinds of dataset share: counts and splits of their pairs (each has ``users``,
    ``n_users`` and ``subset``)."""

    users: np.ndarray
    n_users: int

    @property
    def n_pairs(self) -> int:
        return self.users.shape[0]

    def __len__(self) -> int:
        return self.n_pairs

    def pairs_per_user(self) -> np.ndarray:
        """Number of pairs of each user, shape ``(n_users,)``."""
        return np.bincount(self.users, minlength=self.n_users)

    def split(self, fraction: float, *, seed: Any = None) -> tuple[Any, Any]:
        """Random split into ``(train, held_out)`` with ``fraction`` of each user's pairs held out."""
        fraction = check_real("fraction", fraction, 0.0, 1.0)
        held = held_out_mask(self.users, self.n_users, fraction, seed=seed)
        return self.subset(~held), self.subset(held)


@dataclass(frozen=True, eq=False)
class PreferenceDataset(_Pairs):
    """Pairs of trajectories with one user's label each (docs/model.md, Preference data).

    Pair ``j`` was answered by user ``users[j]``: ``labels[j] = 1`` means the trajectory
    ``(states1[j], actions1[j])`` was preferred to ``(states0[j], actions0[j])``, ``0`` the
    opposite, ``0.5`` that the teacher found them equal. Arrays are read-only; the dataset is
    validated on construction, so a loaded file is as trustworthy as a freshly collected one.
    Build one from your own arrays with :meth:`from_arrays` or from a table with
    :meth:`from_pandas` (both infer the sizes they are not given).

    Attributes
    ----------
    users : ndarray of int64, shape (n,)
    states0, actions0, states1, actions1 : ndarray of int64, shape (n, H)
    labels : ndarray of float64, shape (n,)
    n_users, n_states, n_actions, horizon : int
        Sizes of the world the data came from.
    probabilities : ndarray of float64, shape (n,), or None
        The teacher's ``Pr(y = 1)`` for each pair: ground truth for Bayes accuracy, known for
        simulated data (:func:`~lr_mdp_env.collect_preferences`) and ``None`` for human data.
    contexts : ndarray, shape (n, d_x), or None
        Each pair's user context, for contextual (LoCo-RLHF) data.
    metadata : dict
        JSON-serialisable generating parameters (teacher, behaviour, seed, ...).
    """

    users: np.ndarray
    states0: np.ndarray
    actions0: np.ndarray
    states1: np.ndarray
    actions1: np.ndarray
    labels: np.ndarray
    n_users: int
    n_states: int
    n_actions: int
    horizon: int
    probabilities: np.ndarray | None = None
    contexts: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in _SIZES:
            set_(self, name, check_int(name, getattr(self, name), minimum=1))
        n = _validate_answers(self)
        for name in _TRAJECTORY_ARRAYS:
            array = _integer_array(name, getattr(self, name), 2)
            if array.shape != (n, self.horizon):
                raise ValueError(f"{name} must have shape ({n}, {self.horizon}), got {array.shape}")
            _check_range(name, array, self.n_states if name.startswith("states") else self.n_actions)
            set_(self, name, frozen(array))

    # -- building from your own data ----------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        users: Any,
        states0: Any,
        actions0: Any,
        states1: Any,
        actions1: Any,
        labels: Any,
        *,
        probabilities: Any = None,
        contexts: Any = None,
        n_users: int | None = None,
        n_states: int | None = None,
        n_actions: int | None = None,
        mdp: TabularMDP | None = None,
        metadata: dict | None = None,
    ) -> PreferenceDataset:
        """A dataset from plain arrays (lists work too), validated like the constructor.

        Parameters
        ----------
        users : array_like of int, shape (n,)
        states0, actions0, states1, actions1 : array_like of int, shape (n, H)
        labels : array_like, shape (n,)
            1 when the second trajectory was preferred, 0 when the first was, 0.5 for "equal".
        probabilities : array_like, shape (n,), optional
            True ``Pr(y = 1)`` when known (simulated data); human data has none.
        contexts : array_like, shape (n, d_x), optional
        n_users, n_states, n_actions : int, optional
            Sizes of the world. Default: those of ``mdp`` when given, otherwise one more than
            the largest value seen (give them when the data may miss the last state, action
            or user, or the dataset will not match the MDP it is fitted with).
        mdp : TabularMDP, optional
            Supplies ``n_states``, ``n_actions`` and checks the horizon.
        metadata : dict, optional

        Returns
        -------
        PreferenceDataset

        Raises
        ------
        ValueError, TypeError
            Naming the array and the entry that is wrong.
        """
        states0, states1 = np.asarray(states0), np.asarray(states1)
        actions0, actions1 = np.asarray(actions0), np.asarray(actions1)
        users = np.asarray(users)
        sizes = _world_sizes(mdp, n_states=n_states, n_actions=n_actions,
                             horizon=states0.shape[1] if states0.ndim == 2 else 1)
        sizes.setdefault("n_states", _inferred_size(states0, states1))
        sizes.setdefault("n_actions", _inferred_size(actions0, actions1))
        return cls(
            users=users, states0=states0, actions0=actions0, states1=states1, actions1=actions1,
            labels=labels, probabilities=probabilities, contexts=contexts,
            n_users=_inferred_size(users) if n_users is None else n_users,
            metadata={} if metadata is None else metadata, **sizes,
        )

    @classmethod
    def from_pandas(
        cls,
        frame: Any,
        *,
        n_users: int | None = None,
        n_states: int | None = None,
        n_actions: int | None = None,
        mdp: TabularMDP | None = None,
        metadata: dict | None = None,
    ) -> PreferenceDataset:
        """A dataset from a table laid out as :meth:`to_pandas` writes it (e.g. read from CSV).

        Columns: ``user``, ``label``, optionally ``probability``, the trajectories as
        ``states0_0 .. states0_{H-1}``, ``actions0_*``, ``states1_*``, ``actions1_*``, and for
        contextual data ``context_0 ..``. Other columns are refused (select what you need first),
        so a misspelt column cannot be silently dropped. A ``probability`` column that is empty
        (all missing) means no probabilities.

        Parameters
        ----------
        frame : pandas.DataFrame
        n_users, n_states, n_actions, mdp, metadata
            As in :meth:`from_arrays`. Sizes not given are taken from ``frame.attrs["sizes"]``
            (written by :meth:`to_pandas`, kept in memory but not by CSV), else inferred.

        Returns
        -------
        PreferenceDataset
        """
        columns = _FrameColumns(frame, groups=(*_TRAJECTORY_ARRAYS, "context"))
        horizons = {name: len(columns.group(name)) for name in _TRAJECTORY_ARRAYS}
        if len(set(horizons.values())) != 1 or not horizons["states0"]:
            raise ValueError("the trajectory columns states0_h, actions0_h, states1_h, actions1_h must be given "
                             f"for the same steps h = 0..H-1, got {horizons} columns")
        trajectories = {name: columns.integers(columns.group(name), name) for name in _TRAJECTORY_ARRAYS}
        attrs = getattr(frame, "attrs", {})
        stored = dict(attrs.get("sizes", {}))
        # Precedence: explicit sizes, then the MDP's (from_arrays takes them), then the table's own.
        if mdp is None:
            n_states = stored.get("n_states") if n_states is None else n_states
            n_actions = stored.get("n_actions") if n_actions is None else n_actions
        return cls.from_arrays(
            columns.integers(["user"], "user")[:, 0], **trajectories, labels=columns.reals("label"),
            probabilities=columns.optional_reals("probability"), contexts=columns.group_reals("context"),
            n_users=stored.get("n_users") if n_users is None else n_users, n_states=n_states, n_actions=n_actions,
            mdp=mdp, metadata=dict(attrs.get("metadata", {})) if metadata is None else metadata,
        )

    # -- views ------------------------------------------------------------------------------

    def check_compatible(self, mdp: TabularMDP) -> None:
        """Raise ``ValueError`` unless the dataset's sizes match ``mdp``."""
        dataset = (self.n_states, self.n_actions, self.horizon)
        world = (mdp.n_states, mdp.n_actions, mdp.horizon)
        if dataset != world:
            raise ValueError(
                f"dataset has (n_states, n_actions, horizon) = {dataset} but the MDP has {world}"
            )

    def feature_differences(self, mdp: TabularMDP, *, sparse: bool = False) -> Any:
        """``z_j = psi(tau1_j) - psi(tau0_j)``, shape ``(n, d)``.

        Computed as sparse visit counts times the features, without materialising the
        ``(n, H, d)`` per-step features. When every cell has at most one feature (one-hot
        features) the product only moves columns and is done sparse, in time proportional to the
        visits instead of visits times ``d``.

        Parameters
        ----------
        mdp : TabularMDP
            The MDP the trajectories come from.
        sparse : bool, default False
            Return the differences of features with at most one feature per cell as a canonical
            ``scipy.sparse.csr_matrix`` (sorted indices, no stored zeros; at most ``2 H``
            non-zeros per row). Other features give a dense array either way.

        Returns
        -------
        ndarray or scipy.sparse.csr_matrix, shape (n, d)
        """
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP (the trajectories' features come from it), "
                            f"got {type(mdp).__name__}")
        self.check_compatible(mdp)
        counts = mdp.visit_count_differences(self.states1, self.actions1, self.states0, self.actions0)
        features = mdp.flat_features()
        if np.any(np.count_nonzero(features, axis=1) > 1):
            return np.asarray(counts @ features)
        if features.shape[0] == features.shape[1] and np.all(np.diagonal(features) == 1):
            # One feature per cell (and no other non-zero), in cell order: the counts are the differences.
            differences = counts
        else:
            differences = (counts @ scipy.sparse.csr_matrix(features)).tocsr()
            differences.eliminate_zeros()
            differences.sum_duplicates()  # canonical (sorted indices), like the counts
        return differences if sparse else differences.toarray()

    def subset(self, indices: Any) -> PreferenceDataset:
        """The pairs selected by an integer index array or a boolean mask, as a new dataset."""
        return replace(self, **_pick(self, ("users", *_TRAJECTORY_ARRAYS, "labels", "probabilities", "contexts"),
                                     indices))

    def transition_counts(self) -> np.ndarray:
        """Observed transitions ``counts[h, s, a, s']`` from both trajectories of every pair.

        Steps ``h = 0..H-2`` are observed; the last step's transitions never affect a
        finite-horizon value, so ``counts[H-1]`` is zero.
        """
        counts = np.zeros((self.horizon, self.n_states, self.n_actions, self.n_states))
        if self.horizon > 1:
            states = np.concatenate([self.states0, self.states1])
            actions = np.concatenate([self.actions0, self.actions1])
            steps = np.broadcast_to(np.arange(self.horizon - 1), (states.shape[0], self.horizon - 1))
            flat = np.ravel_multi_index(
                (steps, states[:, :-1], actions[:, :-1], states[:, 1:]), counts.shape
            ).ravel()
            counts = np.bincount(flat, minlength=counts.size).reshape(counts.shape).astype(float)
        return counts

    def to_pandas(self):
        """One row per pair, plain columns only (so ``to_csv`` and :meth:`from_pandas` round-trip).

        Columns: ``user``, ``label``, ``probability`` (when known), each trajectory array as one
        column per step (``states0_0 .. states0_{H-1}``, then ``actions0_*``, ``states1_*``,
        ``actions1_*``) and ``context_0 ..`` for contextual data. ``frame.attrs`` holds the
        ``metadata`` and the world's ``sizes``.
        """
        columns = _answer_columns(self)
        for name in _TRAJECTORY_ARRAYS:
            columns.update(_numbered(name, getattr(self, name)))
        return _frame(self, columns, {name: getattr(self, name) for name in _SIZES})

    # -- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` with a checksum, readable without pickle.

        The suffix ``.npz`` is added when missing (as numpy would); the path written is returned.
        The checksum covers every array and the metadata.
        """
        arrays = {name: getattr(self, name) for name in ("users", *_TRAJECTORY_ARRAYS, "labels")}
        arrays["sizes"] = np.array([getattr(self, name) for name in _SIZES], dtype=np.int64)
        return _write_archive(path, FORMAT, _with_optional(self, arrays), self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreferenceDataset:
        """Read a file written by :meth:`save` (``allow_pickle=False``) and validate it.

        Raises
        ------
        ValueError
            Naming the file, whatever is wrong with it: truncated, corrupt or not an ``.npz``,
            an array missing, modified after saving (checksum mismatch) or invalid data.
        FileNotFoundError, PermissionError
            When the file cannot be opened at all.
        """
        contents, metadata, name = _read_archive(
            path, "preference dataset", FORMAT,
            required=("users", *_TRAJECTORY_ARRAYS, "labels", "sizes"), optional=("probabilities", "contexts"))
        sizes = contents.pop("sizes")
        if sizes.shape != (len(_SIZES),):
            raise ValueError(f"{name} is not a preference dataset: sizes has shape {sizes.shape}")
        return _validated(name, cls, metadata=metadata, **dict(zip(_SIZES, (int(v) for v in sizes))), **contents)


@dataclass(frozen=True, eq=False)
class FeaturePreferenceDataset(_Pairs):
    """Comparisons given directly as feature differences, with no MDP behind them.

    Pair ``j`` compares two items (responses, trajectories, ...) whose features differ by
    ``z_j = phi(item1_j) - phi(item0_j)``; user ``users[j]`` preferred the second when
    ``labels[j] = 1``. Every user-indexed estimator of :mod:`agents` fits it with ``fit(dataset)``
    (no MDP): the Bradley-Terry model ``Pr(y = 1) = sigmoid(beta theta_i . z)`` needs only ``z``.
    Build it from embeddings of real data, or from a table with :meth:`from_pandas`.

    Attributes
    ----------
    differences : ndarray of float64, shape (n, d)
    users : ndarray of int64, shape (n,)
    labels : ndarray of float64, shape (n,)
        0, 0.5 ("equal") or 1.
    n_users : int
        Default: one more than the largest user id.
    probabilities : ndarray, shape (n,), or None
        True ``Pr(y = 1)`` when known.
    contexts : ndarray, shape (n, d_x), or None
        Each pair's user context, for contextual estimators.
    metadata : dict
    """

    differences: np.ndarray
    users: np.ndarray
    labels: np.ndarray
    n_users: int | None = None
    probabilities: np.ndarray | None = None
    contexts: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_users is None:
            object.__setattr__(self, "n_users", _inferred_size(np.asarray(self.users)))
        object.__setattr__(self, "n_users", check_int("n_users", self.n_users, minimum=1))
        differences = self.differences
        if scipy.sparse.issparse(differences):
            differences = differences.toarray()
        differences = as_real_array("differences", differences, (2,))
        n = _validate_answers(self)
        if differences.shape[0] != n:
            raise ValueError(f"differences must have {n} rows (one per pair), got shape {differences.shape}")
        if differences.shape[1] == 0:
            raise ValueError("differences must have at least one feature column, got shape "
                             f"{differences.shape}")
        object.__setattr__(self, "differences", frozen(differences))

    @property
    def n_features(self) -> int:
        return self.differences.shape[1]

    def feature_differences(self, mdp: Any = None, *, sparse: bool = False) -> np.ndarray:
        """``z``, shape ``(n, d)`` (the same call as :meth:`PreferenceDataset.feature_differences`).

        ``mdp`` is optional; when given, its number of features must be ``d``. ``sparse`` is
        accepted for symmetry and ignored: the differences are dense.
        """
        if mdp is not None and getattr(mdp, "n_features", self.n_features) != self.n_features:
            raise ValueError(f"the dataset's differences have d = {self.n_features} features but the MDP has "
                             f"{mdp.n_features}")
        return self.differences

    def subset(self, indices: Any) -> FeaturePreferenceDataset:
        """The pairs selected by an integer index array or a boolean mask, as a new dataset."""
        return replace(self, **_pick(self, ("differences", "users", "labels", "probabilities", "contexts"), indices))

    def to_pandas(self):
        """One row per pair: ``user``, ``label``, ``probability`` (when known), ``z_0 .. z_{d-1}``
        and ``context_0 ..`` for contextual data; :meth:`from_pandas` reads it back."""
        columns = _answer_columns(self)
        columns.update(_numbered("z", self.differences))
        return _frame(self, columns, {"n_users": self.n_users})

    @classmethod
    def from_pandas(cls, frame: Any, *, n_users: int | None = None,
                    metadata: dict | None = None) -> FeaturePreferenceDataset:
        """A dataset from a table with columns ``user``, ``label``, ``z_0 .. z_{d-1}``, optionally
        ``probability`` and ``context_0 ..`` (other columns are refused)."""
        columns = _FrameColumns(frame, groups=("z", "context"))
        if not columns.group("z"):
            raise ValueError("the table has no feature-difference columns z_0 .. z_{d-1}")
        attrs = getattr(frame, "attrs", {})
        return cls(
            differences=columns.group_reals("z"), users=columns.integers(["user"], "user")[:, 0],
            labels=columns.reals("label"), probabilities=columns.optional_reals("probability"),
            contexts=columns.group_reals("context"),
            n_users=attrs.get("sizes", {}).get("n_users") if n_users is None else n_users,
            metadata=dict(attrs.get("metadata", {})) if metadata is None else metadata,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed, checksummed ``.npz`` (as :meth:`PreferenceDataset.save`)."""
        arrays = {"differences": self.differences, "users": self.users, "labels": self.labels,
                  "sizes": np.array([self.n_users], dtype=np.int64)}
        return _write_archive(path, FEATURE_FORMAT, _with_optional(self, arrays), self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeaturePreferenceDataset:
        """Read a file written by :meth:`save`; any corruption raises ``ValueError`` naming the file."""
        contents, metadata, name = _read_archive(
            path, "feature preference dataset", FEATURE_FORMAT,
            required=("differences", "users", "labels", "sizes"), optional=("probabilities", "contexts"))
        sizes = contents.pop("sizes")
        if sizes.shape != (1,):
            raise ValueError(f"{name} is not a feature preference dataset: sizes has shape {sizes.shape}")
        return _validated(name, cls, n_users=int(sizes[0]), metadata=metadata, **contents)


def held_out_mask(users: np.ndarray, n_users: int, fraction: float, *, seed: Any = None) -> np.ndarray:
    """Boolean mask holding out ``round(fraction n_i)`` randomly chosen pairs of each user ``i``."""
    rng = as_generator(seed)
    n_pairs = users.shape[0]
    order = rng.permutation(n_pairs)
    by_user = order[np.argsort(users[order], kind="stable")]
    counts = np.bincount(users, minlength=n_users)
    rank_within_user = np.arange(n_pairs) - np.repeat(np.cumsum(counts) - counts, counts)
    held = np.zeros(n_pairs, dtype=bool)
    held[by_user] = rank_within_user < np.repeat(np.round(fraction * counts).astype(int), counts)
    return held


# -- validation shared by both kinds --------------------------------------------------------------


def _validate_answers(dataset: Any) -> int:
    """Check and freeze ``users``, ``labels``, ``probabilities``, ``contexts`` and ``metadata``;
    return the number of pairs."""
    set_ = object.__setattr__
    users = _integer_array("users", dataset.users, 1)
    n = users.shape[0]
    _check_range("users", users, dataset.n_users)
    set_(dataset, "users", frozen(users))
    labels = as_real_array("labels", dataset.labels, (1,))
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    bad = np.flatnonzero((labels != 0) & (labels != 0.5) & (labels != 1))
    if bad.size:
        raise ValueError(f"labels must be 0, 0.5 or 1, but labels[{bad[0]}] = {labels[bad[0]]}")
    set_(dataset, "labels", frozen(labels))
    if dataset.probabilities is not None:
        probabilities = as_real_array("probabilities", dataset.probabilities, (1,))
        if probabilities.shape != (n,):
            raise ValueError(f"probabilities must have shape ({n},), got {probabilities.shape}")
        bad = np.flatnonzero((probabilities < 0) | (probabilities > 1))
        if bad.size:
            raise ValueError(
                f"probabilities must lie in [0, 1], but probabilities[{bad[0]}] = {probabilities[bad[0]]}"
            )
        set_(dataset, "probabilities", frozen(probabilities))
    if dataset.contexts is not None:
        contexts = as_real_array("contexts", dataset.contexts, (2,))
        if contexts.shape[0] != n:
            raise ValueError(f"contexts must have {n} rows (one per pair), got {contexts.shape}")
        set_(dataset, "contexts", frozen(contexts))
    if not isinstance(dataset.metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(dataset.metadata).__name__}")
    try:
        json.dumps(dataset.metadata)
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from None
    return n


def _integer_array(name: str, value: Any, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {array.shape}")
    return array.astype(np.int64, copy=False)


def _check_range(name: str, array: np.ndarray, upper: int) -> None:
    if array.size == 0 or (array.min() >= 0 and array.max() < upper):
        return
    bad = np.argwhere((array < 0) | (array >= upper))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name}{list(index)} = {array[index]} is outside 0..{upper - 1}")


def _inferred_size(*arrays: np.ndarray) -> int:
    """One more than the largest integer in ``arrays`` (at least 1); non-integer arrays are left
    to the constructor, which names what is wrong with them."""
    largest = -1
    for array in arrays:
        if array.dtype.kind in "iu" and array.size:
            largest = max(largest, int(array.max()))
    return max(largest + 1, 1)


def _world_sizes(mdp: TabularMDP | None, *, horizon: int, **given: int | None) -> dict[str, int]:
    """Sizes given explicitly, else the MDP's; the horizon of the arrays must be the MDP's."""
    sizes = {name: value for name, value in given.items() if value is not None}
    sizes["horizon"] = horizon
    if mdp is not None:
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
        if horizon != mdp.horizon:
            raise ValueError(f"the trajectories have {horizon} steps but the MDP has horizon {mdp.horizon}")
        sizes.setdefault("n_states", mdp.n_states)
        sizes.setdefault("n_actions", mdp.n_actions)
    return sizes


def _pick(dataset: Any, names: tuple[str, ...], indices: Any) -> dict[str, Any]:
    """The per-pair arrays ``names`` of ``dataset`` restricted to ``indices`` (a mask or integers)."""
    indices = np.asarray(indices)
    if indices.dtype == bool:
        if indices.shape != (dataset.n_pairs,):
            raise ValueError(f"a boolean mask must have shape ({dataset.n_pairs},), got {indices.shape}")
    elif indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers or a boolean mask, got dtype {indices.dtype}")
    return {name: None if getattr(dataset, name) is None else getattr(dataset, name)[indices] for name in names}


# -- pandas -------------------------------------------------------------------------------------------


def _numbered(prefix: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """Columns ``prefix_0 .. prefix_{k-1}`` of a 2-D array."""
    return {f"{prefix}_{k}": array[:, k] for k in range(array.shape[1])}


def _answer_columns(dataset: Any) -> dict[str, Any]:
    columns: dict[str, Any] = {"user": dataset.users, "label": dataset.labels}
    if dataset.probabilities is not None:
        columns["probability"] = dataset.probabilities
    return columns


def _frame(dataset: Any, columns: dict[str, Any], sizes: dict[str, int]):
    import pandas as pd

    if dataset.contexts is not None:
        columns.update(_numbered("context", dataset.contexts))
    frame = pd.DataFrame({name: np.asarray(values) for name, values in columns.items()})
    frame.attrs["metadata"] = dict(dataset.metadata)
    frame.attrs["sizes"] = dict(sizes)
    return frame


class _FrameColumns:
    """The columns of a table read as a dataset: grouped ``prefix_k`` columns, typed values."""

    def __init__(self, frame: Any, groups: tuple[str, ...]) -> None:
        if not hasattr(frame, "columns") or not hasattr(frame, "to_numpy"):
            raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        self.frame = frame
        self.groups: dict[str, list[str]] = {group: [] for group in groups}
        numbered: dict[str, dict[int, str]] = {group: {} for group in groups}
        unknown = []
        for column in frame.columns:
            name = str(column)
            prefix, _, number = name.rpartition("_")
            if prefix in numbered and number.isdigit() and str(int(number)) == number:
                numbered[prefix][int(number)] = column
            elif name not in ("user", "label", "probability"):
                unknown.append(name)
        if unknown:
            expected = ", ".join(["user", "label", "probability", *(f"{group}_0.." for group in groups)])
            raise ValueError(f"unknown column(s) {unknown}; the columns are {expected} (select them first)")
        for column in ("user", "label"):
            if column not in frame.columns:
                raise ValueError(f"the table has no {column!r} column")
        for group, found in numbered.items():
            if sorted(found) != list(range(len(found))):
                missing = sorted(set(range(max(found) + 1)) - set(found))
                raise ValueError(f"columns {group}_0 .. {group}_{max(found)} must all be present; missing "
                                 f"{[f'{group}_{k}' for k in missing]}")
            self.groups[group] = [found[k] for k in range(len(found))]

    def group(self, name: str) -> list[str]:
        return self.groups[name]

    def integers(self, columns: list[str], name: str) -> np.ndarray:
        """Integer values of ``columns`` (floats with integral values, as CSV may give, are accepted)."""
        values = self.frame[columns].to_numpy()
        if values.dtype.kind in "iu":
            return values
        if values.dtype.kind != "f":
            raise TypeError(f"column(s) {name} must hold integers, got dtype {values.dtype}")
        bad = np.argwhere(~np.isfinite(values) | (values != np.round(values)))
        if bad.size:
            row, column = bad[0]
            raise ValueError(f"column {columns[column]!r} must hold integers, but row {row} is {values[row, column]}")
        return values.astype(np.int64)

    def reals(self, column: str) -> np.ndarray:
        values = self.frame[column].to_numpy()
        if values.dtype.kind not in "iuf":
            raise TypeError(f"column {column!r} must hold numbers, got dtype {values.dtype}")
        return values.astype(float)

    def optional_reals(self, column: str) -> np.ndarray | None:
        """A column that may be absent or wholly missing (``None``), but not partly missing."""
        if column not in self.frame.columns:
            return None
        values = self.reals(column)
        missing = np.isnan(values)
        if missing.all():
            return None
        if missing.any():
            raise ValueError(f"column {column!r} is missing in row(s) {np.flatnonzero(missing)[:5].tolist()}: "
                             "give it for every pair or for none")
        return values

    def group_reals(self, name: str) -> np.ndarray | None:
        columns = self.groups[name]
        if not columns:
            return None
        values = self.frame[columns].to_numpy()
        if values.dtype.kind not in "iuf":
            raise TypeError(f"columns {name}_* must hold numbers, got dtype {values.dtype}")
        return values.astype(float)


# -- files ----------------------------------------------------------------------------------------


def _with_optional(dataset: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name in ("probabilities", "contexts"):
        if getattr(dataset, name) is not None:
            arrays[name] = getattr(dataset, name)
    return arrays


def _write_archive(path: str | os.PathLike, format: str, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    header = json.dumps({"format": format, "metadata": metadata, "checksum": _checksum(arrays, metadata)})
    np.savez_compressed(path, header=np.array(header), **arrays)
    return path


def _read_archive(path: str | os.PathLike, kind: str, format: str, *, required: tuple[str, ...],
                  optional: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict, str]:
    """The checksum-verified arrays and metadata of a file written by :func:`_write_archive`,
    and the file's name as messages quote it."""
    path = Path(path)
    if not path.exists() and path.suffix != ".npz" and path.with_name(path.name + ".npz").exists():
        path = path.with_name(path.name + ".npz")
    name = repr(os.fspath(path))
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            # A plain .npy file loads as one array, which has no named arrays to read.
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with archive:
            contents = {entry: archive[entry] for entry in archive.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001 - whatever the bytes make the parsers raise, the file is corrupt
        # zipfile, zlib and numpy's .npy header parser raise many kinds of errors on damaged
        # bytes (BadZipFile, zlib.error, NotImplementedError, tokenize.TokenError, ...).
        raise ValueError(f"{name} is not a readable {kind} (truncated or corrupt .npz): "
                         f"{error or type(error).__name__}") from None
    missing = [entry for entry in ("header", *required) if entry not in contents]
    if missing:
        raise ValueError(f"{name} is not a {kind}: missing array(s) {missing}")
    unknown = sorted(set(contents) - {"header", *required, *optional})
    if unknown:
        raise ValueError(f"{name} is not a {kind}: unknown array(s) {unknown}")
    try:
        header = json.loads(str(contents.pop("header")))
        if header["format"] != format:
            raise ValueError
        checksum, metadata = header["checksum"], header.get("metadata", {})
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{name} has no valid header of format {format!r}") from None
    if _checksum(contents, metadata) != checksum:
        raise ValueError(f"{name} failed its checksum: the arrays or metadata were modified after saving")
    return contents, metadata, name


def _validated(name: str, cls: type, **arguments: Any) -> Any:
    """``cls(**arguments)``, with a validation failure reported against the file ``name``."""
    try:
        return cls(**arguments)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} holds invalid data: {error}") from None


def _checksum(arrays: dict[str, np.ndarray], metadata: Any) -> str:
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
