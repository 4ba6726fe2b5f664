"""Contextual reward estimators: LoCo-RLHF's pessimism in reduced subspace (PRS) and full rank.

The reward of a user with context ``x`` is ``x^T Theta_c phi`` (docs/model.md, Users), so a comparison
observes ``eta_j = beta x_j^T Theta_c z_j = beta <Theta_c, x_j z_j^T>``. Both estimators write
``Theta_c`` in blocks ``Theta_c = sum_k L_k K_k R_k^T`` for fixed orthonormal bases ``L_k``
(context side) and ``R_k`` (feature side) and fit the vectorised blocks ``kappa`` by the ridge
logistic MLE, whose features are ``vec((L_k^T x)(R_k^T z)^T)``:

- full rank: one block ``(I_{d_x}, I_d)``, ``k = d_x d`` coordinates;
- LoCo-RLHF (rotation-truncation-vectorisation, RTV): from the rank-``r`` fit ``U_hat V_hat^T``,
  the blocks ``(U, V)``, ``(U, V_perp)`` and ``(U_perp, V)`` of the rotated matrix
  ``[U U_perp]^T Theta_c [V V_perp]``, dropping ``(U_perp, V_perp)``:
  ``k = r^2 + r (d - r) + (d_x - r) r = (d_x + d) r - r^2``; stored as the equivalent blocks
  ``(U, I_d)`` and ``(U_perp, V)`` (:func:`rtv_coordinates`), whose pair features stay sparse.

For a context ``x`` the set of rewards is ``{theta(x) = B_x kappa}`` for ``kappa`` in one set of
coordinates shared by all contexts, with ``B_x = [kron(L_k^T x, R_k)]_k``: an
:class:`~agents.confidence.Ellipsoid` by default (``confidence``; built around the inference refit
of ``kappa``, :class:`agents.estimators.RewardEstimator`), whose map ``G = B_x^T`` sends a feature
vector ``v`` to the RTV features of ``(x, v)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from scipy.special import expit

from lr_mdp_env import TabularMDP
from lr_mdp_env._validation import as_real_array, check_int

from .confidence import ConfidenceSet, Ellipsoid, wald_radius
from .contextual_sets import ContextualEllipsoid, ContextualSetParts
from .data import ComparisonData
from .estimators import (
    _BOOTSTRAP_TOL,
    _DENSE_COORDINATES_MAX,
    LIKELIHOOD_BOOTSTRAP_REPLICATES,
    RewardEstimator,
    _binary_labels,
    _ellipsoid_parts,
    _likelihood_parts,
    _theory_set_matrix,
    bootstrap_likelihood_levels,
)
from .factorized import fit_factored
from .likelihood_set import LikelihoodRatioSet
from .logistic import fit_logistic
from .subspace_error import (SubspaceErrorSet, check_subspace_error, epsilon_from_product, loco_dropped_block_bound,
                             subspace_error_seed)
from .tuning import convergence_warnings_labelled

#: Largest per-context basis ``B_x`` (``d x k`` entries) of a dense :class:`~agents.confidence.Ellipsoid`;
#: beyond it the ellipsoid sets of contexts are :class:`~agents.contextual_sets.ContextualEllipsoid`.
_DENSE_BASIS_MAX_ENTRIES = 2**20
#: Beyond this many coordinates ``||M^{-1/2}||_2`` comes from Lanczos on the factor, not all eigenvalues of ``M``.
_DENSE_SPREAD_MAX = 2000


def _complete(basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the orthogonal complement of ``basis``'s columns."""
    complete, _ = np.linalg.qr(basis, mode="complete")
    return complete[:, basis.shape[1]:]


class BilinearCoordinates:
    """Blocks ``(L_k, R_k)`` of ``Theta_c = sum_k L_k K_k R_k^T`` and the maps in and out of them.

    Parameters
    ----------
    blocks : list of (ndarray (d_x, a_k), ndarray (d, b_k))
    """

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.blocks = blocks
        self.sizes = [left.shape[1] * right.shape[1] for left, right in blocks]
        self._identity_right = [right.shape[0] == right.shape[1] and np.array_equal(right, np.eye(right.shape[0]))
                                for _, right in blocks]

    @property
    def dimension(self) -> int:
        return sum(self.sizes)

    def features(self, contexts: np.ndarray, vectors: Any) -> np.ndarray | scipy.sparse.csr_matrix:
        """``vec((L_k^T x_j)(R_k^T v_j)^T)`` for paired rows ``x_j``, ``v_j``: ``(n, k)``.

        Sparse ``vectors`` (feature differences of tabular trajectories, at most ``2 H`` non-zeros)
        and a block with ``R_k = I`` give a sparse CSR design: that block's row is the Kronecker
        product of ``L_k^T x_j`` with the sparse ``v_j`` (``a_k nnz(v_j)`` non-zeros), and the
        other blocks are stored as they are. No ``(n, k)`` dense array is formed."""
        if scipy.sparse.issparse(vectors) and any(self._identity_right):
            return self._sparse_features(contexts, scipy.sparse.csr_matrix(vectors))
        n = contexts.shape[0]
        features = np.empty((n, self.dimension))
        ends = np.cumsum(self.sizes)
        for (left, right), start, end in zip(self.blocks, ends - self.sizes, ends):
            # Written in place: with k in the thousands the design is hundreds of MB.
            np.multiply((contexts @ left)[:, :, None], np.asarray(vectors @ right)[:, None, :],
                        out=features[:, start:end].reshape(n, left.shape[1], right.shape[1]))
        return features

    def _sparse_features(self, contexts: np.ndarray, vectors: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
        # Built in CSR order directly (no COO triplets and no stacking copies: the design has
        # hundreds of millions of entries at research scale). Row j holds each block's entries in
        # turn; an identity block takes, for each non-zero p of v_j in turn, the a_k entries
        # (a, p) -> column a width + p.
        n = contexts.shape[0]
        nonzeros = np.diff(vectors.indptr)
        row_of = np.repeat(np.arange(n), nonzeros)  # the row of each non-zero of v
        counts = [left.shape[1] * (nonzeros if identity else right.shape[1])
                  for (left, right), identity in zip(self.blocks, self._identity_right)]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.sum(np.broadcast_arrays(*counts, np.zeros(n, dtype=np.int64)), axis=0), out=indptr[1:])
        index_type = np.int32 if self.dimension < 2**31 else np.int64
        values = np.empty(indptr[-1])
        columns = np.empty(indptr[-1], dtype=index_type)
        before = indptr[:-1].copy()  # where each row's entries of the current block start
        for (left, right), identity, start, count in zip(self.blocks, self._identity_right,
                                                         np.cumsum(self.sizes) - self.sizes, counts):
            weights = contexts @ left  # (n, a_k)
            width = right.shape[1]
            count = np.broadcast_to(count, (n,))
            # Position of each entry: its row's start plus its rank within the row's block.
            positions = np.repeat(before - np.concatenate([[0], np.cumsum(count)[:-1]]), count) \
                + np.arange(int(count.sum()))
            if identity:
                values[positions] = (vectors.data[:, None] * weights[row_of]).ravel()
                columns[positions] = (vectors.indices.astype(index_type)[:, None]
                                      + (start + width * np.arange(weights.shape[1], dtype=index_type))).ravel()
            else:
                values[positions] = (weights[:, :, None] * np.asarray(vectors @ right)[:, None, :]).ravel()
                columns[positions] = np.tile(np.arange(start, start + weights.shape[1] * width, dtype=index_type), n)
            before += count
        return scipy.sparse.csr_matrix((values, columns, indptr), shape=(n, self.dimension))

    def weighted_gram(self, contexts: np.ndarray, vectors: Any, weights: np.ndarray) -> np.ndarray:
        """``sum_j w_j f_j f_j^T`` for the features ``f_j`` of :meth:`features`: ``(k, k)``, dense.

        Block by pair of context directions ``i = (k, alpha)``, ``i' = (k', alpha')``: the entries
        are ``R_k^T (Z^T diag(w y_i y_i') Z) R_k'`` with ``y_i = (L_k^T x_j)_alpha`` and ``Z`` the
        rows ``v_j``. With sparse ``v_j`` and identity right sides these are products of the
        sparse ``(n, d)`` rows with ``d x d`` output (at most ``nnz(v_j)^2`` terms per row): a few
        seconds at ``d = 2000`` and 50,000 pairs where the product of the ``(n, k)`` design with
        itself (``k^2`` output entries, ``((d_x + d) r)^2`` terms per pair's row) takes tens.
        Other right sides go through the dense ``Z R_k`` ``(n, b_k)``.
        """
        sparse = scipy.sparse.issparse(vectors)
        rows = scipy.sparse.csr_matrix(vectors) if sparse else np.asarray(vectors, dtype=float)
        transposed = rows.T.tocsr() if sparse else rows.T
        directions = []  # (coordinate range, y_i, Z R_k or None for the identity)
        start = 0
        for (left, right), identity in zip(self.blocks, self._identity_right):
            mapped = None if identity else np.asarray(rows @ right)
            y = contexts @ left
            for alpha in range(left.shape[1]):
                directions.append((slice(start + alpha * right.shape[1], start + (alpha + 1) * right.shape[1]),
                                   y[:, alpha], mapped))
            start += left.shape[1] * right.shape[1]
        gram = np.empty((self.dimension, self.dimension))
        for i, (range_i, y_i, mapped_i) in enumerate(directions):
            for range_j, y_j, mapped_j in directions[i:]:
                scale = weights * y_i * y_j
                if mapped_j is None:
                    right_side = rows.multiply(scale[:, None]).tocsr() if sparse else rows * scale[:, None]
                else:
                    right_side = mapped_j * scale[:, None]
                block = (transposed @ right_side) if mapped_i is None else mapped_i.T @ right_side
                block = block.toarray() if scipy.sparse.issparse(block) else np.asarray(block)
                if range_j == range_i:  # exactly symmetric whatever the order of the sums
                    block = 0.5 * (block + block.T)
                gram[range_i, range_j] = block
                gram[range_j, range_i] = block.T
        return gram

    def matrix(self, kappa: np.ndarray) -> np.ndarray:
        """``Theta_c = sum_k L_k K_k R_k^T`` for the vectorised blocks ``kappa``."""
        total = 0.0
        for (left, right), block in zip(self.blocks, np.split(kappa, np.cumsum(self.sizes)[:-1])):
            total = total + left @ block.reshape(left.shape[1], right.shape[1]) @ right.T
        return total

    def coordinates(self, theta_c: np.ndarray) -> np.ndarray:
        """The blocks ``K_k = L_k^T Theta_c R_k`` of a matrix (its projection onto the coordinates)."""
        return np.concatenate([np.ravel(left.T @ theta_c @ right) for left, right in self.blocks])

    def basis_for(self, context: np.ndarray) -> np.ndarray:
        """``B_x`` with ``theta(x) = Theta_c^T x = B_x kappa``: shape ``(d, k)``."""
        columns = []
        for left, right in self.blocks:
            weights = left.T @ context
            columns.append((right[:, None, :] * weights[None, :, None]).reshape(right.shape[0], -1))
        return np.hstack(columns)


class _ContextualEstimator(RewardEstimator):
    """Shared fitting of ``kappa`` and the per-context confidence sets."""

    def _prepare(self, data: ComparisonData, mdp: TabularMDP) -> None:
        if data.contexts is None:
            raise ValueError("the dataset has no contexts: contextual estimators need contextual data "
                             "(collect_preferences with ContextualRewards)")

    def _coordinates(self, data: ComparisonData, ridge: float) -> tuple[BilinearCoordinates, np.ndarray | None]:
        """The coordinates, and a ``Theta_c`` in their span to start the ridge MLE from (or ``None``)."""
        raise NotImplementedError

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        coordinates, start = self._coordinates(data, ridge)
        features = coordinates.features(data.contexts, data.differences)
        # Every Newton step of the k-dimensional MLE forms a k x k Hessian from n pairs: starting
        # from the rank-r fit, which lies in the coordinates' span, saves several of them.
        initial = None if start is None else coordinates.coordinates(start)[None]
        # With a sparse design the Newton steps are conjugate-gradient solves on Hessian-vector
        # products: k is (d_x + d) r - r^2, in the thousands, and a k x k Hessian costs far more
        # than the fit itself. The Fisher matrix is formed only when a set needs it (fisher_).
        fit = fit_logistic(features, data.labels, offsets=data.offsets, beta=self.beta, ridge=ridge, tol=self.tol,
                           initial=initial, fisher=False, implicit_hessian=scipy.sparse.issparse(features))
        self._record("coordinates", fit)
        self.coordinates_ = coordinates
        self.kappa_hat = fit.theta[0]
        self._fisher_cache: dict[tuple[float, bytes], np.ndarray] = {}
        self._features = features
        self._design_rows = (data.contexts, data.differences)  # what the features are built from
        self.theta_c_hat = coordinates.matrix(self.kappa_hat)
        first_rows = np.unique(data.users, return_index=True)[1]
        user_contexts = np.zeros((data.n_users, data.contexts.shape[1]))
        user_contexts[data.users[first_rows]] = data.contexts[first_rows]
        self.user_contexts = user_contexts
        self.theta_hat = user_contexts @ self.theta_c_hat

    @property
    def fisher_(self) -> np.ndarray:
        """``M = beta^2 sum_j sigmoid'(eta_j) x_j x_j^T + lambda I`` at ``kappa_hat``, ``(1, k, k)``
        (formed on first use: ``k^2`` floats)."""
        return self._fisher(self.kappa_hat, self.ridge_)

    def _fisher(self, center: np.ndarray, ridge: float) -> np.ndarray:
        """The Fisher matrix plus ``ridge I`` at ``center``, ``(1, k, k)``, once per ``(ridge, center)``
        (what determines it: the tuned fit and the inference refit differ in both)."""
        key = (float(ridge), np.ascontiguousarray(center, dtype=float).tobytes())
        if key not in self._fisher_cache:
            features = self._features
            eta = self._data.offsets + self.beta * (features @ center)
            weights = self.beta**2 * expit(eta) * expit(-eta)
            if scipy.sparse.issparse(features):  # block by block from the sparse pair rows
                gram = self.coordinates_.weighted_gram(*self._design_rows, weights)
            else:
                gram = (features.T * weights) @ features
                gram = 0.5 * (gram + gram.T)
            gram[np.diag_indices_from(gram)] += ridge
            self._fisher_cache[key] = gram[None]
        return self._fisher_cache[key]

    def _dense_features(self) -> np.ndarray:
        """The design as a dense ``(n, k)`` array (for the sets that need its rows: theory, likelihood)."""
        return self._features.toarray() if scipy.sparse.issparse(self._features) else self._features

    def pair_logits(self, data: ComparisonData) -> np.ndarray:
        return data.offsets + self.beta * data.row_dot(data.contexts @ self.theta_c_hat)

    def theta_for(self, contexts: Any) -> np.ndarray:
        """``theta_hat(x) = Theta_c_hat^T x`` for contexts ``(n, d_x)`` or ``(d_x,)``."""
        return as_real_array("contexts", contexts, (1, 2)) @ self.theta_c_hat

    def _inference_fit(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The inference refit of ``kappa`` (ridge ``inference_ridge_``, warm-started from
        ``kappa_hat``), once: its coordinates ``(1, k)`` and Fisher matrix ``(1, k, k)``."""
        if self._inference is None:
            if self.inference_ridge_ == self.ridge_:
                self._inference = self.kappa_hat[None], self.fisher_
            else:
                with convergence_warnings_labelled(f"inference refit with ridge {self.inference_ridge_:g}"):
                    fit = fit_logistic(self._features, self._data.labels, offsets=self._data.offsets, beta=self.beta,
                                       ridge=self.inference_ridge_, tol=self.tol, initial=self.kappa_hat[None],
                                       fisher=False, implicit_hessian=scipy.sparse.issparse(self._features))
                self._record("inference", fit)
                self._inference = fit.theta, self._fisher(fit.theta[0], self.inference_ridge_)
        return self._inference

    def _shared_set_parts(self) -> dict[str, Any]:
        """What the sets of all contexts share (the keyword arguments of the set besides
        ``offset`` and ``basis``), computed once: the centre, and the factored matrix and radius
        of an ellipsoid or the pairs and level of a likelihood-ratio set."""
        if self._contextual_parts is None:
            k = self.coordinates_.dimension
            if self.confidence == "theory":
                norm_bound = self.norm_bound if self.norm_bound is not None else \
                    2.0 * float(np.linalg.norm(self.kappa_hat)) or 1.0
                matrix, center, radius = _theory_set_matrix(self._dense_features(), self.kappa_hat, self.beta,
                                                            self.ridge_, self._set_delta, norm_bound)
                parts = _ellipsoid_parts(matrix, center, radius)
            else:
                solutions, fishers = self._inference_fit()
                if self.confidence == "wald" and self._structured_sets():
                    # The Fisher matrix is symmetric by construction (_fisher): factored without the
                    # symmetrising copy and the entrywise check, each seconds at k = 10,000.
                    parts = {"center": solutions[0], "matrix": fishers[0], "radius": wald_radius(k, self._set_delta),
                             "factor": Ellipsoid.checked_factor(fishers[0], symmetric=True)}
                elif self.confidence == "wald":
                    parts = _ellipsoid_parts(fishers[0], solutions[0], wald_radius(k, self._set_delta))
                else:
                    level = None  # Wilks' level beyond 64 coordinates: the bootstrap refits k x k problems
                    if self.confidence == "likelihood" and k <= _DENSE_COORDINATES_MAX:
                        _binary_labels(self._data.labels, self.confidence)  # refuse ties before the bootstrap
                        level = bootstrap_likelihood_levels(
                            self._dense_features(), self._data.offsets, np.zeros(self._data.n_pairs, dtype=np.int64), 1,
                            self._bootstrap_worlds(), None, self.beta, self.inference_ridge_, self._set_delta,
                            LIKELIHOOD_BOOTSTRAP_REPLICATES, self._bootstrap_generator(),
                            max(self.tol, _BOOTSTRAP_TOL))[0]
                    parts = _likelihood_parts(self.confidence, self._dense_features(), self._data.labels,
                                              self._data.offsets, solutions[0], self.beta, self.inference_ridge_,
                                              self._set_delta, level)
            self._contextual_parts = parts
        return self._contextual_parts

    def _tuned_world(self) -> np.ndarray:
        return self.kappa_hat[None]

    def _world_at_ridge(self, ridge: float, initial: np.ndarray | None) -> np.ndarray:
        """The ridge MLE of the coordinates ``kappa`` at ``ridge``, ``(1, k)`` (the bootstrap path of
        :meth:`agents.estimators.RewardEstimator._bootstrap_worlds`)."""
        return fit_logistic(self._features, self._data.labels, offsets=self._data.offsets, beta=self.beta,
                            ridge=ridge, tol=self.tol, initial=initial, fisher=False).theta

    def _structured_sets(self) -> bool:
        """Whether the ellipsoids of contexts are :class:`~agents.contextual_sets.ContextualEllipsoid`
        (no ``d x k`` basis per context) rather than dense :class:`~agents.confidence.Ellipsoid`:
        when ``B_x`` would exceed :data:`_DENSE_BASIS_MAX_ENTRIES` entries."""
        return self.confidence in ("wald", "theory") and \
            self.theta_c_hat.shape[1] * self.coordinates_.dimension > _DENSE_BASIS_MAX_ENTRIES

    def _structured_parts(self) -> ContextualSetParts:
        """The shared parts of the structured sets, once per fit."""
        if self._contextual_structured is None:
            parts = self._shared_set_parts()
            self._contextual_structured = ContextualSetParts(
                self.coordinates_, parts["center"], parts["factor"], parts["radius"], hidden=self._hidden,
                matrix=parts["matrix"])
        return self._contextual_structured

    def _reduced_set(self, context: np.ndarray) -> ConfidenceSet:
        """The set of ``theta(x) = B_x kappa`` for one context, in the span of ``B_x`` (for
        LoCo-RLHF, the RTV coordinates: the truth's ``(U_perp, V_perp)`` block is not in it)."""
        if self._structured_sets():
            return ContextualEllipsoid(self._structured_parts(), context)
        basis = self.coordinates_.basis_for(context)
        offset = np.zeros(basis.shape[0])
        if self.confidence in ("wald", "theory"):
            return Ellipsoid(offset=offset, basis=basis, **self._shared_set_parts())
        return LikelihoodRatioSet(offset=offset, basis=basis, **self._shared_set_parts())

    def confidence_set(self, user: int | None = None, *, context: Any = None) -> ConfidenceSet:
        """``1 - delta`` set of ``theta(x)`` for a context ``x`` (or the context of ``user``), of
        the kind of the ``confidence`` option (:class:`agents.estimators.RewardEstimator`): built
        around the inference refit of ``kappa`` (``"wald"``, ``"likelihood"``, ``"finite"``) or
        the tuned ``kappa_hat`` (``"theory"``)."""
        if (user is None) == (context is None):
            raise ValueError("give exactly one of user and context")
        if context is None:
            user = check_int("user", user, minimum=0, maximum=self.user_contexts.shape[0] - 1)
            context = self.user_contexts[user]
        context = as_real_array("context", context, (1,))
        if context.shape != (self.theta_c_hat.shape[0],):
            raise ValueError(f"context must have shape ({self.theta_c_hat.shape[0]},), got {context.shape}")
        return self._reduced_set(context)

    def covers(self, theta_c: Any) -> bool:
        """Whether the projection of a true ``Theta_c*`` onto the coordinates lies in the set of
        ``kappa``: with ``kappa*`` its blocks, ``||kappa* - kappa_0||_M <= radius`` for the
        ellipsoids, ``f(kappa*) <= threshold`` for the likelihood-ratio sets (RTV drops the
        ``(U_perp, V_perp)`` block: coverage of the truth's projection)."""
        theta_c = as_real_array("theta_c", theta_c, (2,))
        parts = self._shared_set_parts()
        kappa = self.coordinates_.coordinates(theta_c)
        k = kappa.shape[0]
        if self.confidence in ("wald", "theory"):
            deviation = kappa - parts["center"]
            return bool(deviation @ parts["matrix"] @ deviation <= parts["radius"] ** 2 * (1 + 1e-12))
        coordinate_set = LikelihoodRatioSet(offset=np.zeros(k), basis=np.eye(k), **parts)
        return bool(coordinate_set.contains(kappa))

    def fit(self, dataset: Any, mdp: TabularMDP | None = None) -> _ContextualEstimator:
        super().fit(dataset, mdp)
        self._contextual_parts: dict[str, Any] | None = None
        self._contextual_structured: ContextualSetParts | None = None
        return self


class FullRankContextual(_ContextualEstimator):
    """Full-rank contextual MLE: ``Theta_c`` unrestricted, ``k = d_x d`` (docs/algorithms.md, baselines)."""

    def _coordinates(self, data: ComparisonData, ridge: float) -> tuple[BilinearCoordinates, None]:
        self.subspace = None
        return BilinearCoordinates([(np.eye(data.contexts.shape[1]), np.eye(data.n_features))]), None


class LoCoPRS(_ContextualEstimator):
    """LoCo-RLHF: rank-``r`` fit, then the RTV coordinates around its subspaces (docs/algorithms.md, Estimators).

    1. Rank-``r`` MLE ``Theta_c = U V^T`` by Burer-Monteiro with the balancing penalty
       ``(mu / 4) ||U^T U - V^T V||_F^2`` (:func:`agents.factorized.fit_factored`).
    2. ``U_hat, V_hat`` from its SVD, completed to ``[U_hat U_perp]``, ``[V_hat V_perp]``.
    3. RTV to ``k = (d_x + d) r - r^2`` coordinates (module docstring).
    4. Ridge MLE in them, and a set around their inference refit (``confidence``).
    5. With ``subspace_error="bootstrap"`` (default), plus the dropped block: RTV leaves out
       ``D = U_perp^T Theta_c* V_perp``, which moves ``theta*(x)`` by
       ``V_perp D^T U_perp^T x``, a vector orthogonal to ``V_hat`` of norm at most
       ``||D||_2 ||U_perp^T x||``. The set of a context ``x`` is the
       :class:`~agents.subspace_error.SubspaceErrorSet` of that set (built at level
       ``1 - delta / 2``) and the ball of radius ``epsilon ||U_perp^T x||`` orthogonal to
       ``V_hat`` (and to the unidentified directions), where
       ``||D||_2 <= s sigma_1(Theta_c*) <= s / (1 - s) (sigma_1(Theta_c_hat) + radius ||M^{-1/2}||_2)
       = epsilon``, ``s`` bounding ``sin angle(U*, U_hat) sin angle(V*, V_hat)`` at level
       ``1 - delta / 2`` by a parametric bootstrap of step 1
       (:func:`~agents.subspace_error.loco_dropped_block_bound`); the second inequality holds when
       the blocks of the truth are in the ellipsoid (``||Pi Theta_c*||_2 <= ||kappa*||``). With
       known ``subspaces`` nothing is dropped and ``epsilon = 0``.

    Parameters
    ----------
    rank : int
    balance : float, default 1.0
        ``mu``.
    subspaces : (ndarray, ndarray), optional
        Known ``(U*, V*)``: skips step 1 (the oracle-subspace contextual baseline).
    subspace_error : {"bootstrap", "ignore"}, default "bootstrap"
        ``"ignore"``: the ellipsoid alone at level ``1 - delta``, which covers only the truth's
        projection onto the RTV coordinates.
    n_bootstrap : int, optional
        Refits of the bootstrap. Default ``max(19, ceil(2 / delta) - 1)``: at least
        ``ceil(2 / delta) - 1`` are needed for a finite ``epsilon`` at level ``1 - delta / 2``.
    **kwargs
        As :class:`agents.estimators.RewardEstimator`.

    References
    ----------
    Lee, Sun and Liu, *Low-Rank Contextual Reinforcement Learning from Heterogeneous Human
    Feedback*, arXiv:2412.19436.
    """

    def __init__(self, rank: int, *, balance: float = 1.0, subspaces: Any = None, subspace_error: str = "bootstrap",
                 n_bootstrap: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = check_int("rank", rank, minimum=1)
        self.subspace_error = check_subspace_error(subspace_error)
        self.n_bootstrap = max(19, math.ceil(2 / self.delta) - 1) if n_bootstrap is None else \
            check_int("n_bootstrap", n_bootstrap, minimum=1)
        self.balance = float(balance)
        self.subspaces = None
        if subspaces is not None:
            left, right = (np.linalg.qr(as_real_array(name, value, (2,)))[0]
                           for name, value in zip(("subspaces[0]", "subspaces[1]"), subspaces))
            self.subspaces = (left, right)

    def _prepare(self, data: ComparisonData, mdp: TabularMDP) -> None:
        super()._prepare(data, mdp)
        if self.rank > min(data.contexts.shape[1], data.n_features):
            raise ValueError(f"rank={self.rank} exceeds min(d_x, d) = {min(data.contexts.shape[1], data.n_features)}")

    def _low_rank_subspaces(self, data: ComparisonData, ridge: float
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(U_hat, V_hat)`` and the rank-``r`` fit ``U V^T`` they come from (``None`` when given)."""
        if self.subspaces is not None:
            return (*self.subspaces, None)
        # Every fit starts from the spectral start of its own data (no warm start along the ridge
        # grid): a large ridge collapses the factors to the saddle at zero, a poor start.
        factored = fit_factored(data.contexts, data.differences, data.labels, self.rank, offsets=data.offsets,
                                beta=self.beta, ridge=ridge, balance=self.balance, hidden=self._hidden,
                                tol=self._joint_tol)
        self._record("joint", factored)
        self.joint_fit = factored
        q_left, r_left = np.linalg.qr(factored.left)
        q_right, r_right = np.linalg.qr(factored.right)
        small_left, _, small_right_t = np.linalg.svd(r_left @ r_right.T)
        return q_left @ small_left[:, : self.rank], q_right @ small_right_t[: self.rank].T, factored.matrix

    def _coordinates(self, data: ComparisonData, ridge: float) -> tuple[BilinearCoordinates, np.ndarray | None]:
        self.__dict__.pop("dropped_block_epsilon_", None)  # calibrated again for the new fit
        context_subspace, feature_subspace, rank_r_fit = self._low_rank_subspaces(data, ridge)
        self.context_subspace, self.subspace = context_subspace, feature_subspace
        return rtv_coordinates(context_subspace, feature_subspace), rank_r_fit

    # -- the dropped block (agents.subspace_error): a wrapper around the per-context ellipsoid ----------

    @property
    def _set_delta(self) -> float:
        return self.delta if self.subspace_error == "ignore" else self.delta / 2

    def _dropped_block_epsilon(self) -> float:
        """``epsilon`` bounding ``||U_perp^T Theta_c* V_perp||_2`` (class docstring, step 5), computed once."""
        if "dropped_block_epsilon_" not in self.__dict__:
            if self.subspaces is not None:
                self.dropped_block_epsilon_ = 0.0
            else:
                self.sine_bound_ = loco_dropped_block_bound(
                    self, n_bootstrap=self.n_bootstrap, level=1 - self.delta / 2, seed=subspace_error_seed(self.seed))
                spread = self._coordinate_spread()
                norm_bound = float(np.linalg.norm(self.theta_c_hat, ord=2)) + spread
                self.dropped_block_epsilon_ = epsilon_from_product(self.sine_bound_, norm_bound)
                if not np.isfinite(self.dropped_block_epsilon_):
                    raise ValueError(
                        f"the bootstrap bound on the product of the subspace sines is {self.sine_bound_:.3g}: the "
                        f"subspaces are not identified at level delta/2 = {self.delta / 2:g} (raise n_bootstrap to at "
                        f"least {math.ceil(2 / self.delta) - 1}, or collect more pairs)")
        return self.dropped_block_epsilon_

    def _coordinate_spread(self) -> float:
        """An upper bound on ``||kappa - kappa_0||_2`` over the set of ``kappa`` (centre ``kappa_0``):
        ``radius ||M^{-1/2}||_2`` for an ellipsoid; for another set, the half-diagonal of its
        bounding box (the support function along every coordinate axis)."""
        parts = self._shared_set_parts()
        k = self.coordinates_.dimension
        if self.confidence in ("wald", "theory") and k > _DENSE_SPREAD_MAX:
            return parts["radius"] * _inverse_root_norm(parts["factor"])
        if self.confidence in ("wald", "theory"):
            return parts["radius"] / float(np.sqrt(np.linalg.eigvalsh(parts["matrix"])[0]))
        coordinate_set = LikelihoodRatioSet(offset=np.zeros(k), basis=np.eye(k), **parts)
        axes = np.eye(k)
        reach = np.maximum(np.asarray(coordinate_set.upper(axes)) - parts["center"],
                           parts["center"] - np.asarray(coordinate_set.lower(axes)))
        return float(np.linalg.norm(reach))

    def confidence_set(self, user: int | None = None, *, context: Any = None) -> ConfidenceSet:
        inner = super().confidence_set(user, context=context)
        if self.subspace_error == "ignore":
            return inner
        context = self.user_contexts[user] if context is None else as_real_array("context", context, (1,))
        outside = context - self.context_subspace @ (self.context_subspace.T @ context)  # U_perp U_perp^T x
        epsilon = self._dropped_block_epsilon() * float(np.linalg.norm(outside))
        return SubspaceErrorSet(inner, np.hstack([self.subspace, self._hidden]), epsilon)

    def covers(self, theta_c: Any) -> bool:
        """Whether the truth ``Theta_c*`` (its identifiable part) is covered: its RTV blocks are in the
        ellipsoid and its dropped block ``U_perp^T Theta_c* V_perp`` has spectral norm at most
        ``epsilon``; then ``theta*(x)`` is in the set of every context ``x``. With
        ``subspace_error="ignore"``, the blocks alone (coverage of the projection)."""
        covered = super().covers(theta_c)
        if self.subspace_error == "ignore":
            return covered
        theta_c = as_real_array("theta_c", theta_c, (2,))
        theta_c = theta_c - (theta_c @ self._hidden) @ self._hidden.T
        outside = theta_c - self.context_subspace @ (self.context_subspace.T @ theta_c)
        dropped = outside - (outside @ self.subspace) @ self.subspace.T
        return bool(covered and np.linalg.norm(dropped, ord=2) <= self._dropped_block_epsilon() * (1 + 1e-12))


def _inverse_root_norm(factor: np.ndarray, tol: float = 1e-10) -> float:
    """An upper bound on ``||M^{-1/2}||_2 = sqrt(lambda_max(M^{-1}))`` from the Cholesky factor of
    ``M``, by Lanczos (ARPACK) on ``v -> L^{-T} L^{-1} v``: two triangular solves per step instead
    of the ``O(k^3)`` eigenvalues of ``M`` (minutes at ``k = 10,000``). The Ritz value ``t`` is
    returned with ARPACK's residual bound ``tol t`` added: the residual places an eigenvalue
    within ``tol t`` of ``t`` (Parlett, *The Symmetric Eigenvalue Problem*, 1998, Theorem 4.5.1),
    and that eigenvalue is the largest unless the start vector (all ones) has too small a
    component along the top eigenvectors for the Krylov space to reach them before the
    residual test passes: then this bound falls below ``lambda_max``, rarely but not never. The
    matrix-free alternative that cannot fail, ``1 / ridge``, is looser whenever the data inform
    every direction."""
    k = factor.shape[0]

    def inverse(vector: np.ndarray) -> np.ndarray:
        half = scipy.linalg.solve_triangular(factor, vector, lower=True, check_finite=False)
        return scipy.linalg.solve_triangular(factor, half, lower=True, trans="T", check_finite=False)

    operator = scipy.sparse.linalg.LinearOperator((k, k), matvec=inverse, dtype=float)
    largest = scipy.sparse.linalg.eigsh(operator, k=1, which="LA", tol=tol, return_eigenvectors=False,
                                        v0=np.ones(k))[0]
    return float(np.sqrt(largest * (1.0 + tol)))


def rtv_coordinates(context_subspace: np.ndarray, feature_subspace: np.ndarray) -> BilinearCoordinates:
    """Rotation-truncation-vectorisation: the blocks ``(U, V), (U, V_perp), (U_perp, V)`` of
    ``[U U_perp]^T Theta_c [V V_perp]``, stored as the blocks ``(U, I_d)`` and ``(U_perp, V)``.

    The first two RTV blocks together are ``U^T Theta_c [V V_perp]``, the block ``U^T Theta_c``
    rotated by the orthogonal ``[V V_perp]``: the coordinates ``(U, I_d)`` span the same matrices
    and the map between the two is an isometry of ``kappa``. The ridge MLE (the ridge is
    ``||kappa||^2``), its Fisher ellipsoid and every set of ``Theta_c`` are therefore the same,
    while a pair's features ``vec((U^T x) z^T)`` keep the sparsity of the feature difference
    ``z`` (``r nnz(z)`` non-zeros instead of ``r d``) and ``V_perp`` (``d x (d - r)``) is never formed.

    ``k = r d + (d_x - r) r = (d_x + d) r - r^2``.

    References
    ----------
    Lee, Sun and Liu, *Low-Rank Contextual Reinforcement Learning from Heterogeneous Human
    Feedback*, arXiv:2412.19436 (RTV).
    """
    blocks = [(context_subspace, np.eye(feature_subspace.shape[0]))]
    context_complement = _complete(context_subspace)
    if context_complement.shape[1]:
        blocks.append((context_complement, feature_subspace))
    return BilinearCoordinates(blocks)
