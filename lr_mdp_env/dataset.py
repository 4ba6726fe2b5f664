"""Offline trajectory-preference datasets: columnar numpy, saved as ``.npz`` without pickle."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse

from ._validation import as_generator, as_real_array, check_int, check_real, frozen
from .mdp import TabularMDP

FORMAT = "lr-mdp-env/preference-dataset/1"
_TRAJECTORY_ARRAYS = ("states0", "actions0", "states1", "actions1")


@dataclass(frozen=True, eq=False)
class PreferenceDataset:
    """Pairs of trajectories with one user's label each (docs/model.md, Preference data).

    Pair ``j`` was answered by user ``users[j]``: ``labels[j] = 1`` means the trajectory
    ``(states1[j], actions1[j])`` was preferred to ``(states0[j], actions0[j])``, ``0`` the
    opposite, ``0.5`` that the teacher found them equal. Arrays are read-only; the dataset is
    validated on construction, so a loaded file is as trustworthy as a freshly collected one.

    Attributes
    ----------
    users : ndarray of int64, shape (n,)
    states0, actions0, states1, actions1 : ndarray of int64, shape (n, H)
    labels : ndarray of float64, shape (n,)
    probabilities : ndarray of float64, shape (n,)
        The teacher's ``Pr(y = 1)`` for each pair (ground truth, for Bayes accuracy).
    n_users, n_states, n_actions, horizon : int
        Sizes of the world the data came from.
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
    probabilities: np.ndarray
    n_users: int
    n_states: int
    n_actions: int
    horizon: int
    contexts: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("n_users", "n_states", "n_actions", "horizon"):
            set_(self, name, check_int(name, getattr(self, name), minimum=1))
        users = _integer_array("users", self.users, 1)
        n = users.shape[0]
        _check_range("users", users, self.n_users)
        set_(self, "users", frozen(users))
        for name in _TRAJECTORY_ARRAYS:
            array = _integer_array(name, getattr(self, name), 2)
            if array.shape != (n, self.horizon):
                raise ValueError(f"{name} must have shape ({n}, {self.horizon}), got {array.shape}")
            _check_range(name, array, self.n_states if name.startswith("states") else self.n_actions)
            set_(self, name, frozen(array))
        labels = as_real_array("labels", self.labels, (1,))
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        bad = np.flatnonzero((labels != 0) & (labels != 0.5) & (labels != 1))
        if bad.size:
            raise ValueError(f"labels must be 0, 0.5 or 1, but labels[{bad[0]}] = {labels[bad[0]]}")
        set_(self, "labels", frozen(labels))
        probabilities = as_real_array("probabilities", self.probabilities, (1,))
        if probabilities.shape != (n,):
            raise ValueError(f"probabilities must have shape ({n},), got {probabilities.shape}")
        bad = np.flatnonzero((probabilities < 0) | (probabilities > 1))
        if bad.size:
            raise ValueError(
                f"probabilities must lie in [0, 1], but probabilities[{bad[0]}] = {probabilities[bad[0]]}"
            )
        set_(self, "probabilities", frozen(probabilities))
        if self.contexts is not None:
            contexts = as_real_array("contexts", self.contexts, (2,))
            if contexts.shape[0] != n:
                raise ValueError(f"contexts must have {n} rows (one per pair), got {contexts.shape}")
            set_(self, "contexts", frozen(contexts))
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata)
        except TypeError as error:
            raise TypeError(f"metadata must be JSON-serialisable: {error}") from None

    # -- views ------------------------------------------------------------------------------

    @property
    def n_pairs(self) -> int:
        return self.users.shape[0]

    def __len__(self) -> int:
        return self.n_pairs

    def pairs_per_user(self) -> np.ndarray:
        """Number of pairs of each user, shape ``(n_users,)``."""
        return np.bincount(self.users, minlength=self.n_users)

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
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if indices.shape != (self.n_pairs,):
                raise ValueError(f"a boolean mask must have shape ({self.n_pairs},), got {indices.shape}")
        elif indices.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers or a boolean mask, got dtype {indices.dtype}")
        pick = lambda array: None if array is None else array[indices]  # noqa: E731
        return replace(
            self,
            users=pick(self.users),
            states0=pick(self.states0),
            actions0=pick(self.actions0),
            states1=pick(self.states1),
            actions1=pick(self.actions1),
            labels=pick(self.labels),
            probabilities=pick(self.probabilities),
            contexts=pick(self.contexts),
        )

    def split(self, fraction: float, *, seed: Any = None) -> tuple[PreferenceDataset, PreferenceDataset]:
        """Random split into ``(train, held_out)`` with ``fraction`` of each user's pairs held out."""
        fraction = check_real("fraction", fraction, 0.0, 1.0)
        held = held_out_mask(self.users, self.n_users, fraction, seed=seed)
        return self.subset(~held), self.subset(held)

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
        """One row per pair: ``user``, ``label``, ``probability``, the four trajectory arrays as
        tuples, and ``context_0..`` columns for contextual data."""
        import pandas as pd

        columns: dict[str, Any] = {"user": self.users, "label": self.labels, "probability": self.probabilities}
        for name in _TRAJECTORY_ARRAYS:
            columns[name] = [tuple(row) for row in getattr(self, name).tolist()]
        if self.contexts is not None:
            for k in range(self.contexts.shape[1]):
                columns[f"context_{k}"] = self.contexts[:, k]
        frame = pd.DataFrame(columns)
        frame.attrs["metadata"] = dict(self.metadata)
        return frame

    # -- files ------------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "users": self.users,
            **{name: getattr(self, name) for name in _TRAJECTORY_ARRAYS},
            "labels": self.labels,
            "probabilities": self.probabilities,
            "sizes": np.array([self.n_users, self.n_states, self.n_actions, self.horizon], dtype=np.int64),
        }
        if self.contexts is not None:
            arrays["contexts"] = self.contexts
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` with a checksum, readable without pickle.

        The suffix ``.npz`` is added when missing (as numpy would); the path written is returned.
        The checksum covers every array and the metadata.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = self._arrays()
        header = json.dumps({"format": FORMAT, "metadata": self.metadata,
                             "checksum": _checksum(arrays, self.metadata)})
        np.savez_compressed(path, header=np.array(header), **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreferenceDataset:
        """Read a file written by :meth:`save` (``allow_pickle=False``) and validate it.

        Raises
        ------
        ValueError
            If the file is truncated or not an ``.npz``, lacks an array, was modified after
            saving (checksum mismatch) or holds invalid data.
        """
        path = Path(path)
        if not path.exists() and path.suffix != ".npz" and path.with_name(path.name + ".npz").exists():
            path = path.with_name(path.name + ".npz")
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                # A plain .npy file loads as one array, which has no named arrays to read.
                raise ValueError("it holds a single .npy array, not an .npz archive")
            with archive:
                contents = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
            raise ValueError(
                f"{os.fspath(path)!r} is not a readable preference dataset (truncated or corrupt "
                f".npz): {error}"
            ) from None
        missing = [name for name in ("header", "users", *_TRAJECTORY_ARRAYS, "labels", "probabilities", "sizes")
                   if name not in contents]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} is not a preference dataset: missing array(s) {missing}")
        unknown = sorted(set(contents) - {"header", "users", *_TRAJECTORY_ARRAYS, "labels", "probabilities",
                                          "sizes", "contexts"})
        if unknown:
            raise ValueError(f"{os.fspath(path)!r} is not a preference dataset: unknown array(s) {unknown}")
        try:
            header = json.loads(str(contents.pop("header")))
            assert header["format"] == FORMAT
        except (ValueError, KeyError, TypeError, AssertionError):
            raise ValueError(f"{os.fspath(path)!r} has no valid header of format {FORMAT!r}") from None
        if _checksum(contents, header.get("metadata")) != header.get("checksum"):
            raise ValueError(
                f"{os.fspath(path)!r} failed its checksum: the arrays or metadata were modified after saving"
            )
        n_users, n_states, n_actions, horizon = (int(v) for v in contents.pop("sizes"))
        return cls(
            n_users=n_users, n_states=n_states, n_actions=n_actions, horizon=horizon,
            metadata=header.get("metadata", {}), **contents,
        )


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


def _checksum(arrays: dict[str, np.ndarray], metadata: Any) -> str:
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


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
