"""Rank-``r`` logistic MLE in factored (Burer-Monteiro) form, shared by P-ShareLoRA and LoCo-RLHF.

Both papers fit a bilinear Bradley-Terry model

    eta_j = offset_j + beta x_j^T A B^T z_j,

with ``A`` (``d_x x r``) and ``B`` (``d x r``): LoCo-RLHF's ``Theta_c = A B^T`` for contexts
``x_j``, and P-ShareLoRA's ``Theta^T = W U^T`` when ``x_j`` is the one-hot of the user who
answered (``A = W``, ``B = U``). The objective is

    F(A, B) = sum_j [softplus(eta_j) - y_j eta_j] + (lambda / 2)(||A||_F^2 + ||B||_F^2)
              + (mu / 4) ||A^T A - B^T B||_F^2.

The ridge on the factors is the variational form of a nuclear-norm penalty ``lambda ||A B^T||_*``;
the balancing term (LoCo-RLHF) vanishes at every stationary point (there ``A^T A = B^T B``) and
only improves conditioning.

``F`` is minimised from a spectral start by Newton's method with a line search. The Newton system
is solved by eliminating ``dA``: the block ``H_AA`` is small and formed explicitly (block
diagonal, one ``r x r`` block per user, for one-hot contexts), which leaves the Schur complement
``H_BB - H_BA H_AA^{-1} H_AB`` on ``dB`` (``d r`` unknowns), solved by preconditioned conjugate
gradients with a per-feature block-diagonal preconditioner. Every product with it is one pass
``x_j^T A dB^T z_j`` forward and one pass ``sum_j t_j z_j x_j^T A`` back over the features; the
residual terms of the Hessian go through the ``d x d_x`` matrix ``R = sum_j r_j z_j x_j^T``,
formed once per Newton step. Directions of feature space that no ``z_j`` touches (the all-ones
direction of one-hot features) can be declared; the solver keeps ``B`` orthogonal to them, where
``F`` is the ridge alone and its minimiser is zero. Between steps the factors are rebalanced
(``A B^T`` kept, ``A^T A = B^T B`` made exact), which lowers ``F`` (the balanced factorisation
has the smallest ridge and no imbalance) and removes the directions in which ``F`` is nearly flat.
Where the Newton direction is not a descent direction (far from a minimum the Hessian of the
factorisation is indefinite), conjugate gradients stop at the first direction of negative
curvature and, failing that, the step falls back to the block-preconditioned gradient.

For one-hot contexts without balancing (P-ShareLoRA) the pairs are grouped by user, and the
nonconvex region far from the answer, where Newton steps are short, is crossed by preconditioned
L-BFGS, each step one pass forward and one back over the features:

- while the ``d x N`` array of the lifted layout fits in cache (``_LIFTED_MAX_ENTRIES``), the
  features are laid out as the ``n x (d N)`` matrix with ``z_jk`` in column ``(k, i_j)``, so that
  ``x_j^T A B^T z_j`` is entry ``j`` of its product with ``B A^T`` and ``R`` is its transpose times
  the residuals (one number moved per non-zero instead of ``r``); joint L-BFGS steps on ``(A, B)``
  bring the gradient to ``1e-3`` of the start's and Newton's method finishes;
- beyond, the fit is a variable projection: for a given ``B`` the best ``A`` is ``N`` independent
  ``r``-dimensional logistic regressions, solved exactly by the batched solver of
  :mod:`agents.logistic` (at the unit steps by one Newton step of it from the previous ``A``, which
  follows ``B`` to second order), and L-BFGS minimises ``phi(B) = min_A F(A, B)`` down to the tolerance,
  each step a pass through ``Z`` (``n x d``, the ``r`` columns of ``B`` in cache) each way and no
  ``d x N`` array; Newton's method only if L-BFGS stops short. Eliminating ``A`` halves the steps
  where the factors are strongly coupled. Where users' rewards are barely identified (few pairs
  per user, a noise-dominated residual ``R`` whose top singular values exceed ``lambda``) the
  Hessian of ``phi`` has a continuum of small eigenvalues and the fit takes a few hundred steps;
  with informative data a few dozen.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy.special import expit

from .logistic import (ConvergenceWarning, _newton, _newton_direction, _PaddedProblems, bernoulli_losses,
                       bernoulli_losses_and_probabilities, fit_logistic, ridged_solve)

_MAX_CG = 20
# One-hot contexts with sparse features are laid out lifted (_LiftedUserPairs) up to this many
# entries d N (8 MB of doubles, within a shared cache), and fitted by variable projection beyond.
_LIFTED_MAX_ENTRIES = 2**20
# The joint quasi-Newton warm-up runs until the gradient norm is this fraction of the start's, then
# Newton's method finishes; variable projection runs to the tolerance (Newton's method only if it
# stops short).
_QUASI_NEWTON_LEVEL = 1e-3
_QUASI_NEWTON_MAX_STEPS = 500
_PROJECTED_MAX_STEPS = 3000
_QUASI_NEWTON_MEMORY = 10
_PROJECTED_MEMORY = 20
# The spectral start's top-r SVD goes through Lanczos when both sides of the matrix exceed this.
_LANCZOS_MIN_SIDE = 500
# Newton steps of the users' r-dimensional problems per trial point solved to accuracy (a warm start
# needs 1 to 3); the unit step of the variable projection takes a single one (see _variable_projection).
_INNER_MAX_STEPS = 50
# ... and each quasi-Newton method rebuilds its block-diagonal preconditioner each time the gradient
# norm has fallen tenfold.
_QUASI_NEWTON_REFRESH = 0.1

# Largest output of Z B (bytes) for which the column-oriented sparse product wins (see
# _Pairs.__init__): about a core's L2 cache.
_SCATTER_OUTPUT_BYTES = 2**20


@dataclass(frozen=True)
class FactoredFit:
    """Result of :func:`fit_factored`.

    Attributes
    ----------
    left, right : ndarray
        ``A`` (``d_x x r``) and ``B`` (``d x r``).
    objective : float
    gradient_norm : float
        ``||grad F||`` at the returned point.
    relative_gradient_norm : float
        ``gradient_norm`` divided by ``||grad F||`` at the start: the stationarity certificate.
    iterations : int
        Newton steps.
    converged : bool
    quasi_newton_steps : int
        L-BFGS steps of the warm-up before the Newton steps (one-hot contexts only).
    """

    left: np.ndarray
    right: np.ndarray
    objective: float
    gradient_norm: float
    relative_gradient_norm: float
    iterations: int
    converged: bool
    quasi_newton_steps: int = 0

    @property
    def matrix(self) -> np.ndarray:
        """``A B^T``, shape ``(d_x, d)``."""
        return self.left @ self.right.T


def _one_hot_groups(contexts: Any) -> np.ndarray | None:
    """Column of the single ``1`` in every row when the contexts are one-hot, else ``None``."""
    if scipy.sparse.issparse(contexts):
        csr = contexts.tocsr()
        csr.sum_duplicates()
        if np.all(np.diff(csr.indptr) == 1) and np.all(csr.data == 1):
            return csr.indices.astype(np.int64)
        return None
    if contexts.size and np.all((contexts == 0) | (contexts == 1)) and np.all(contexts.sum(axis=1) == 1):
        return np.argmax(contexts, axis=1)
    return None


# -- the data: passes over contexts and features ---------------------------------------------------

class _Pairs:
    """The passes over the data ``(x_j, z_j)`` the solver needs, for any contexts and features.

    One-hot contexts are kept as group indices (``A^T x_j`` is a row lookup, sums over contexts
    are sums per group, and ``H_AA`` is block diagonal).
    """

    def __init__(self, contexts: Any, features: Any, groups: np.ndarray | None) -> None:
        sparse = scipy.sparse.issparse(features)
        self.features = features.tocsr() if sparse else np.asarray(features, dtype=float)
        if sparse and not self.features.has_canonical_format:  # squares of split entries would be wrong
            self.features = self.features.copy()
            self.features.sum_duplicates()
        # Z^T X runs fastest as a column-oriented (scatter) product from the transposed view of the
        # row-major matrix. Z B too, from a column-major copy, while its (n, r) output stays in
        # cache; beyond that the row-oriented (gather) product is faster, as B is small
        # (measured: 9.1 against 5.7 ms at n = 50,000, d = 2000; 56 against 22 ms at n = 200,000).
        self._features_by_column = self.features.tocsc() if sparse else self.features
        self._features_transposed = self.features.T
        self.groups = groups
        n = self.features.shape[0]
        if groups is not None:  # one-hot contexts, dense or sparse: keep them sparse
            contexts = scipy.sparse.csr_matrix((np.ones(n), (np.arange(n), groups)), shape=contexts.shape)
        else:
            contexts = contexts.tocsr() if scipy.sparse.issparse(contexts) else np.asarray(contexts, dtype=float)
        self.contexts = contexts
        self.n_contexts, self.n_features = contexts.shape[1], self.features.shape[1]
        self._squared_features = None

    @property
    def squared_features(self):
        """Elementwise squares ``z_jk^2`` (for the preconditioner), computed once."""
        if self._squared_features is None:
            self._squared_features = self.features.multiply(self.features).tocsr() \
                if scipy.sparse.issparse(self.features) else self.features**2
        return self._squared_features

    def project_contexts(self, left: np.ndarray) -> np.ndarray:
        """``x_j^T A`` for every pair, ``(n, r)``."""
        return np.take(left, self.groups, axis=0) if self.groups is not None else np.asarray(self.contexts @ left)

    def project_features(self, right: np.ndarray) -> np.ndarray:
        """``z_j^T B`` for every pair, ``(n, r)``: one pass over the features."""
        if self.features.shape[0] * right.shape[-1] * 8 > _SCATTER_OUTPUT_BYTES:
            return np.asarray(self.features @ right)
        return np.asarray(self._features_by_column @ right)

    def sum_contexts(self, rows: np.ndarray) -> np.ndarray:
        """``sum_j x_j rows_j^T``, ``(d_x, m)``."""
        return np.asarray(self.contexts.T @ rows)

    def context_row_dot(self, left: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``(x_j^T left) . rows_j`` for every pair, ``(n,)``."""
        return _row_dot(self.project_contexts(left), rows)

    def sum_contexts_weighted(self, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``sum_j w_j x_j rows_j^T``, ``(d_x, m)``."""
        return self.sum_contexts(weights[:, None] * rows)

    def pair_products(self, left: np.ndarray, right: np.ndarray, context_part: np.ndarray | None = None) -> np.ndarray:
        """``(x_j^T left) . (z_j^T right)`` for every pair, ``(n,)``; ``context_part`` is
        ``x_j^T left`` when the caller has it."""
        context_part = self.project_contexts(left) if context_part is None else context_part
        return _row_dot(context_part, self.project_features(right))

    def weighted_sum(self, weights: np.ndarray, left: np.ndarray, context_part: np.ndarray | None = None) -> np.ndarray:
        """``sum_j w_j z_j x_j^T left``, ``(d, r)``."""
        context_part = self.project_contexts(left) if context_part is None else context_part
        return np.asarray(self._features_transposed @ (weights[:, None] * context_part))

    def data_matrix(self, weights: np.ndarray) -> np.ndarray:
        """``sum_j w_j z_j x_j^T``, ``(d, d_x)``."""
        weighted = self.contexts.multiply(weights[:, None]) if scipy.sparse.issparse(self.contexts) \
            else weights[:, None] * self.contexts
        summed = self._features_transposed @ (weighted.tocsc() if scipy.sparse.issparse(weighted) else weighted)
        return summed.toarray() if scipy.sparse.issparse(summed) else np.asarray(summed)

    def data_gradient(self, residual: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The data parts ``(R^T B, R A)`` of the gradient, ``R = sum_j r_j z_j x_j^T``, through ``R``
        (``d x d_x``: small for contexts of a few dimensions)."""
        residual_matrix = self.data_matrix(residual)
        return residual_matrix.T @ right, residual_matrix @ left

    def feature_norms(self) -> np.ndarray:
        """``||z_j||`` for every pair, ``(n,)``."""
        if not scipy.sparse.issparse(self.features):
            return np.linalg.norm(self.features, axis=1)
        csr, squares = self.features, np.zeros(self.features.shape[0])
        filled = np.diff(csr.indptr) > 0  # segment sums over the rows with entries
        if np.any(filled):
            squares[filled] = np.add.reduceat(csr.data**2, csr.indptr[:-1][filled])
        return np.sqrt(squares)

    def feature_energy(self) -> np.ndarray:
        """``sum_j z_jk^2`` for every feature, ``(d,)``."""
        if scipy.sparse.issparse(self.features):
            return np.bincount(self.features.indices, weights=self.features.data**2, minlength=self.n_features)
        return np.sum(self.features**2, axis=0)

    def context_blocks(self, slope: np.ndarray, feature_part: np.ndarray) -> np.ndarray:
        """``sum_j s_j (x_j x_j^T) kron (q_j q_j^T)``: ``(d_x, r, r)`` blocks for one-hot contexts,
        else the dense ``(d_x r, d_x r)`` matrix."""
        n, r = feature_part.shape
        if self.groups is not None:
            outer = (slope[:, None, None] * feature_part[:, :, None] * feature_part[:, None, :]).reshape(n, r * r)
            return self.sum_contexts(outer).reshape(-1, r, r)
        contexts = self.contexts.toarray() if scipy.sparse.issparse(self.contexts) else self.contexts
        lifted = (contexts[:, :, None] * feature_part[:, None, :]).reshape(n, -1)
        return lifted.T @ (slope[:, None] * lifted)

    def feature_blocks(self, slope: np.ndarray, left: np.ndarray, context_part: np.ndarray) -> np.ndarray:
        """Per-feature ``r x r`` diagonal blocks of the data part of ``H_BB``:
        ``sum_j s_j z_jk^2 c_j c_j^T`` with ``c_j = A^T x_j``, ``(d, r, r)``."""
        n, r = context_part.shape
        if self.groups is not None:
            # One-hot contexts: sum_g (sum_{j of g} s_j z_jk^2) a_g a_g^T, with the inner sums from
            # one sparse product (cheaper than a pass with r^2 columns).
            weighted = self.contexts.T.tocsr().multiply(slope[None, :]).tocsr() @ self.squared_features
            energy = weighted.toarray() if scipy.sparse.issparse(weighted) else np.asarray(weighted)
            return (energy.T @ (left[:, :, None] * left[:, None, :]).reshape(-1, r * r)).reshape(-1, r, r)
        outer = (slope[:, None, None] * context_part[:, :, None] * context_part[:, None, :]).reshape(n, r * r)
        return np.asarray(self.squared_features.T @ outer).reshape(-1, r, r)


class _UserPairs(_Pairs):
    """One-hot contexts (users), rows sorted by user.

    The passes over the features are those of :class:`_Pairs` (products of ``Z`` with ``d x r``
    and ``n x r`` blocks, whose ``r`` columns stay in cache); what depends on the users is a
    repetition or a segment sum over each user's consecutive rows, and with equally many pairs per
    user a batched product on ``(N, m, r)`` views.
    """

    def __init__(self, contexts: Any, features: Any, groups: np.ndarray) -> None:
        super().__init__(contexts, features, groups)
        n_users = self.n_contexts
        self._group_counts = np.bincount(groups, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(self._group_counts)[:-1]])
        self._present = np.flatnonzero(self._group_counts)
        self._present_starts = starts[self._present]
        # Every user with the same number of pairs (the usual design): per-user sums and lookups
        # are batched products on (N, m, r) views instead of gathers and segment sums.
        self._per_group = int(self._group_counts[0]) \
            if n_users and self._group_counts[0] > 0 and np.all(self._group_counts == self._group_counts[0]) else None

    def project_contexts(self, left: np.ndarray) -> np.ndarray:
        """``a_{i_j}`` for every pair: each user's row repeated over their (consecutive) pairs."""
        return np.repeat(left, self._group_counts, axis=0)

    def sum_contexts(self, rows: np.ndarray) -> np.ndarray:
        """Per-user sums of ``rows`` (segment sums over the consecutive pairs of each user)."""
        if self._per_group is not None:
            return self._by_group(rows).sum(axis=1)
        sums = np.zeros((self.n_contexts,) + rows.shape[1:])
        if self._present.size:
            sums[self._present] = np.add.reduceat(rows, self._present_starts, axis=0)
        return sums

    def _by_group(self, rows: np.ndarray) -> np.ndarray:
        """``(N, m, ...)`` view of per-pair ``rows`` when every user has ``m`` pairs."""
        return rows.reshape(self.n_contexts, self._per_group, *rows.shape[1:])

    def context_row_dot(self, left: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self._per_group is None:
            return super().context_row_dot(left, rows)
        return (self._by_group(rows) @ left[:, :, None]).ravel()

    def sum_contexts_weighted(self, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self._per_group is None:
            return super().sum_contexts_weighted(weights, rows)
        return (self._by_group(weights)[:, None, :] @ self._by_group(rows))[:, 0, :]

    def context_blocks(self, slope: np.ndarray, feature_part: np.ndarray) -> np.ndarray:
        if self._per_group is None:
            return super().context_blocks(slope, feature_part)
        grouped = self._by_group(feature_part)
        return (grouped * self._by_group(slope)[:, :, None]).transpose(0, 2, 1) @ grouped

    def data_gradient(self, residual: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(R^T B, R A)`` from one pass each way (``R`` is ``d x N``, never formed)."""
        return self.sum_contexts_weighted(residual, self.project_features(right)), \
            self.weighted_sum(residual, left, self.project_contexts(left))

    def feature_blocks(self, slope: np.ndarray, left: np.ndarray, context_part: np.ndarray) -> np.ndarray:
        """As :meth:`_Pairs.feature_blocks`, from one pass of the squared features with ``r^2``
        columns (no ``N x d`` intermediate)."""
        n, r = context_part.shape
        outer = (slope[:, None, None] * context_part[:, :, None] * context_part[:, None, :]).reshape(n, r * r)
        return np.asarray(self.squared_features.T @ outer).reshape(-1, r, r)


class _LiftedUserPairs(_UserPairs):
    """Users with sparse features, every pass a product with the ``n x (d N)`` matrix ``Z_hat``
    holding ``z_jk`` at column ``k N + i_j``: ``x_j^T A dB^T z_j = (Z_hat vec(dB A^T))_j`` and
    ``sum_j w_j z_j x_j^T = Z_hat^T w`` reshaped to ``(d, N)``. A pass moves one number per non-zero
    of ``Z`` where those of :class:`_UserPairs` move ``r``, but reads and writes a ``d x N`` array:
    the layout of choice while that array stays in cache (``_LIFTED_MAX_ENTRIES``). It gives the
    logits and ``R`` cheaply, not ``Z B``, hence the joint quasi-Newton steps that only need those.
    """

    def __init__(self, contexts: Any, features: Any, groups: np.ndarray) -> None:
        super().__init__(contexts, features, groups)
        csr = self.features
        n_users = self.n_contexts
        counts = np.diff(csr.indptr)
        columns = csr.indices.astype(np.int64) * n_users + np.repeat(groups, counts)
        shape = (csr.shape[0], self.n_features * n_users)
        self._lifted = scipy.sparse.csr_matrix((csr.data, columns, csr.indptr), shape=shape)
        # Transposed views (no copies) made once: each would otherwise be a new matrix per pass.
        self._lifted_transposed = self._lifted.T
        self._lifted_squares_transposed = scipy.sparse.csr_matrix((csr.data**2, columns, csr.indptr), shape=shape).T

    def pair_products(self, left: np.ndarray, right: np.ndarray, context_part: np.ndarray | None = None) -> np.ndarray:
        """``z_j . (right left^T)[:, i_j]``: one pass of ``Z_hat``."""
        return self._lifted @ np.ravel(right @ left.T)

    def data_matrix(self, weights: np.ndarray) -> np.ndarray:
        """``Z_hat^T w`` as the ``(d, N)`` matrix ``sum_j w_j z_j e_{i_j}^T``: one pass."""
        return (self._lifted_transposed @ weights).reshape(self.n_features, self.n_contexts)

    def data_gradient(self, residual: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _Pairs.data_gradient(self, residual, left, right)

    def weighted_sum(self, weights: np.ndarray, left: np.ndarray, context_part: np.ndarray | None = None) -> np.ndarray:
        return self.data_matrix(weights) @ left

    def feature_blocks(self, slope: np.ndarray, left: np.ndarray, context_part: np.ndarray) -> np.ndarray:
        r = left.shape[1]
        energy = (self._lifted_squares_transposed @ slope).reshape(self.n_features, self.n_contexts)
        return (energy @ (left[:, :, None] * left[:, None, :]).reshape(-1, r * r)).reshape(-1, r, r)


# -- objective, gradient and Hessian -----------------------------------------------------------------

class _Bilinear:
    """``F``, its gradient and the pieces of its Newton system at a point ``(A, B)``.

    Data enter only through the projections ``p_j = A^T x_j`` (contexts side) and
    ``q_j = B^T z_j`` (features side): ``eta_j = offset_j + beta p_j . q_j``. For one-hot contexts
    the pairs are reordered by user (the objective is a sum over pairs).
    """

    def __init__(self, contexts, features, labels, offsets, beta, ridge, balance, rank):
        groups = _one_hot_groups(contexts)
        sparse = scipy.sparse.issparse(features)
        # Large sparse problems (the lifted layout's d x N array out of cache) take the variable
        # projection of _variable_projection, all others the joint quasi-Newton warm-up.
        self.projected = groups is not None and sparse and contexts.shape[1] * features.shape[1] > _LIFTED_MAX_ENTRIES
        if groups is not None:  # users: their pairs made consecutive (the objective is a sum over pairs)
            order = np.argsort(groups, kind="stable")
            if np.any(order != np.arange(order.size)):
                features = features.tocsr()[order] if sparse else np.asarray(features)[order]
                labels, offsets, groups = labels[order], offsets[order], groups[order]
            lifted = sparse and not self.projected \
                and contexts.shape[1] * features.shape[1] <= features.nnz * (rank - 1)
            self.pairs: _Pairs = (_LiftedUserPairs if lifted else _UserPairs)(contexts, features, groups)
        else:
            self.pairs = _Pairs(contexts, features, groups)
        self.labels, self.offsets = labels, offsets
        self.beta, self.ridge, self.balance, self.rank = beta, ridge, balance, rank
        self.n_contexts, self.n_features = contexts.shape[1], features.shape[1]
        self.left_size = self.n_contexts * rank
        self.blockwise = groups is not None and balance == 0

    # -- flat-vector interface (objective, gradient, Hessian-vector products) ------------------

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left = flat[: self.left_size].reshape(-1, self.rank)
        return left, flat[self.left_size:].reshape(-1, self.rank)

    def state(self, left: np.ndarray, right: np.ndarray) -> _State:
        feature_part = self.pairs.project_features(right)
        return _State(left, right, self.pairs.project_contexts(left), feature_part,
                      self.offsets + self.beta * self.pairs.context_row_dot(left, feature_part))

    def value(self, state: _State) -> float:
        if state.data_term is None:
            state.data_term = float(np.sum(bernoulli_losses(state.eta, self.labels)))
        return state.data_term + self.penalty(state.left, state.right)

    def penalty(self, left: np.ndarray, right: np.ndarray) -> float:
        """The ridge and balancing terms of ``F``."""
        imbalance = left.T @ left - right.T @ right
        return 0.5 * self.ridge * (np.sum(left**2) + np.sum(right**2)) + 0.25 * self.balance * np.sum(imbalance**2)

    def gradient(self, left: np.ndarray, right: np.ndarray, data_left: np.ndarray,
                 data_right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dF/dA, dF/dB) = (R^T B + lambda A + mu A D, R A + lambda B - mu B D)`` with
        ``D = A^T A - B^T B``, given the data parts ``R^T B`` and ``R A``."""
        grad_left = data_left + self.ridge * left
        grad_right = data_right + self.ridge * right
        if self.balance:
            weighted_imbalance = self.balance * (left.T @ left - right.T @ right)
            grad_left += left @ weighted_imbalance
            grad_right -= right @ weighted_imbalance
        return grad_left, grad_right

    def gradient_from_passes(self, state: _State, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gradient at ``state`` given the residuals ``r_j``: ``R^T B = sum_j r_j x_j q_j^T``
        from the projections and ``R A = sum_j r_j z_j p_j^T`` from one pass back over the features,
        without forming ``R``."""
        pairs = self.pairs
        return self.gradient(state.left, state.right, pairs.sum_contexts_weighted(residual, state.feature_part),
                             pairs.weighted_sum(residual, state.left, state.context_part))

    def value_and_gradient(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        """``F`` and its gradient at ``flat = (A, B)`` from one pass each way over the data
        (``eta`` from ``A B^T``, the gradient's data parts from the residuals)."""
        left, right = self.split(flat)
        eta = self.offsets + self.beta * self.pairs.pair_products(left, right)
        losses, probabilities = bernoulli_losses_and_probabilities(eta, self.labels)
        grad_left, grad_right = self.gradient(left, right, *self.pairs.data_gradient(
            self.beta * (probabilities - self.labels), left, right))
        return float(np.sum(losses)) + self.penalty(left, right), np.concatenate([np.ravel(grad_left),
                                                                                  np.ravel(grad_right)])

    def hessian_vector(self, flat: np.ndarray, direction: np.ndarray) -> np.ndarray:
        state = self.state(*self.split(flat))
        d_left, d_right = self.split(direction)
        curvature = _Curvature(self, state)
        forward = self.pairs.pair_products(state.left, d_right, state.context_part)
        h_left = curvature.left_from_right(d_right, forward) + curvature.left_left(d_left)
        h_right = curvature.right(d_right, forward, d_left)
        return np.concatenate([np.ravel(h_left), np.ravel(h_right)])


@dataclass
class _State:
    left: np.ndarray
    right: np.ndarray
    context_part: np.ndarray  # x_j^T A, (n, r)
    feature_part: np.ndarray  # z_j^T B, (n, r)
    eta: np.ndarray
    data_term: float | None = None  # sum_j [softplus(eta_j) - y_j eta_j], once computed


class _Curvature:
    """Gradient and Hessian blocks of ``F`` at one point: ``H_AA`` explicitly (and its inverse),
    products with ``H_AB``, ``H_BA`` and ``H_BB`` through the data.

    With residuals ``r_j = beta (sigmoid(eta_j) - y_j)``, slopes ``s_j = beta^2 sigmoid'(eta_j)``
    and ``R = sum_j r_j z_j x_j^T``: ``dF/dA = R^T B + lambda A``, ``dF/dB = R A + lambda B`` and,
    writing ``e_j = x_j^T A dB^T z_j`` and ``g_j = x_j^T dA B^T z_j``,
    ``H_AB dB = sum_j s_j e_j x_j q_j^T + R^T dB``,
    ``H_BB dB + H_BA dA = sum_j s_j (e_j + g_j) z_j p_j^T + R dA + lambda dB``
    (balancing terms in closed form on top).
    """

    def __init__(self, problem: _Bilinear, state: _State) -> None:
        self.problem, self.state = problem, state
        beta = problem.beta
        probability = expit(state.eta)
        self.residual = beta * (probability - problem.labels)
        self.slope = beta**2 * probability * (1.0 - probability)
        left, right = state.left, state.right
        self.imbalance = left.T @ left - right.T @ right
        self._left_inverse = None

    @functools.cached_property
    def residual_matrix(self) -> np.ndarray:
        """``R``, ``(d, d_x)``: one pass over the data, made when first needed (a preconditioner
        alone does not need it)."""
        return self.problem.pairs.data_matrix(self.residual)

    def gradient(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dF/dA, dF/dB)``: through ``R`` where the Hessian products form it anyway, else from one
        pass back over the features (users with ``Z`` passes, whose ``R`` is ``d x N``)."""
        s = self.state
        if type(self.problem.pairs) is _UserPairs:
            return self.problem.gradient_from_passes(s, self.residual)
        residual_matrix = self.residual_matrix
        return self.problem.gradient(s.left, s.right, residual_matrix.T @ s.right, residual_matrix @ s.left)

    def left_left(self, d_left):
        """``H_AA dA``."""
        p, s = self.problem, self.state
        weights = self.slope * p.pairs.context_row_dot(d_left, s.feature_part)
        return p.pairs.sum_contexts_weighted(weights, s.feature_part) + p.ridge * d_left + p.balance * (
            d_left @ self.imbalance + s.left @ (d_left.T @ s.left + s.left.T @ d_left))

    def left_from_right(self, d_right, forward):
        """``H_AB dB`` given ``forward = e`` (the pairs' ``x_j^T A dB^T z_j``)."""
        p, s = self.problem, self.state
        product = p.pairs.sum_contexts_weighted(self.slope * forward, s.feature_part) + self.residual_matrix.T @ d_right
        if p.balance:
            product -= p.balance * s.left @ (d_right.T @ s.right + s.right.T @ d_right)
        return product

    def right(self, d_right, forward, d_left):
        """``H_BB dB + H_BA dA`` (one pass back over the features)."""
        p, s = self.problem, self.state
        d_eta = forward + p.pairs.context_row_dot(d_left, s.feature_part)
        product = p.pairs.weighted_sum(self.slope * d_eta, s.left, s.context_part) + self.residual_matrix @ d_left \
            + p.ridge * d_right
        if p.balance:
            product += p.balance * (-d_right @ self.imbalance + s.right @ (d_right.T @ s.right + s.right.T @ d_right)
                                    - s.right @ (d_left.T @ s.left + s.left.T @ d_left))
        return product

    def cross(self, d_left):
        """``H_BA dA``."""
        return self.right(np.zeros_like(self.state.right), np.zeros_like(self.residual), d_left)

    # The contexts' block, eliminated from the Newton system.

    def _left_inverse_blocks(self) -> np.ndarray:
        p, s = self.problem, self.state
        r, d_x = p.rank, p.n_contexts
        blocks = p.pairs.context_blocks(self.slope, s.feature_part)
        if p.blockwise:  # one-hot contexts without balancing: r x r blocks, positive definite
            blocks[:, np.arange(r), np.arange(r)] += p.ridge
            return ridged_solve(blocks, np.broadcast_to(np.eye(r), blocks.shape), p.ridge)
        if blocks.ndim == 3:
            dense = np.zeros((d_x * r, d_x * r))
            for group in range(d_x):
                dense[group * r:(group + 1) * r, group * r:(group + 1) * r] = blocks[group]
        else:
            dense = blocks
        dense[np.diag_indices(d_x * r)] += p.ridge
        if p.balance:
            left = s.left
            dense += p.balance * (np.kron(np.eye(d_x), self.imbalance) + np.kron(left @ left.T, np.eye(r))
                                  + np.einsum("al,bk->akbl", left, left).reshape(d_x * r, d_x * r))
        return _inverse(dense[None], p.ridge)

    def solve_left(self, vectors: np.ndarray) -> np.ndarray:
        """``H_AA^{-1} vectors`` for ``vectors`` of shape ``(d_x, r)``."""
        if self._left_inverse is None:
            self._left_inverse = self._left_inverse_blocks()
        if self.problem.blockwise:
            return (self._left_inverse @ vectors[:, :, None])[:, :, 0]
        return (self._left_inverse[0] @ np.ravel(vectors)).reshape(vectors.shape)

    def schur(self, d_right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``S dB`` for the Schur complement ``S = H_BB - H_BA H_AA^{-1} H_AB``, and the eliminated
        ``dA = -H_AA^{-1} H_AB dB`` (one pass forward and one back over the features)."""
        s = self.state
        forward = self.problem.pairs.pair_products(s.left, d_right, s.context_part)
        d_left = -self.solve_left(self.left_from_right(d_right, forward))
        return self.right(d_right, forward, d_left), d_left

    def preconditioner(self, hidden: np.ndarray | None):
        """``dB -> P^{-1} dB`` with ``P`` the per-feature ``r x r`` diagonal blocks of ``H_BB``
        (without the balancing term): ``sum_j s_j z_jk^2 p_j p_j^T + lambda I``; followed by the
        projection off the ``hidden`` directions."""
        p, s = self.problem, self.state
        r = p.rank
        blocks = p.pairs.feature_blocks(self.slope, s.left, s.context_part)
        blocks[:, np.arange(r), np.arange(r)] += p.ridge
        # positive definite: a sum of outer products plus the ridge
        inverse = ridged_solve(blocks, np.broadcast_to(np.eye(r), blocks.shape), p.ridge)
        if hidden is None:
            return lambda vectors: (inverse @ vectors[:, :, None])[:, :, 0]
        return lambda vectors: _project_off((inverse @ vectors[:, :, None])[:, :, 0], hidden)


def _project_off(vectors: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """``(I - N N^T) vectors`` for orthonormal ``N``."""
    return vectors - hidden @ (hidden.T @ vectors)


def _inverse(blocks: np.ndarray, ridge: float) -> np.ndarray:
    """Inverses of symmetric blocks; eigenvalues replaced by their absolute values (floored at a
    fraction of the ridge) where the balancing term makes a block indefinite."""
    values, vectors = np.linalg.eigh(blocks)
    values = np.maximum(np.abs(values), 1e-6 * ridge)
    return (vectors / values[:, None, :]) @ vectors.transpose(0, 2, 1)


def _schur_conjugate_gradients(curvature: _Curvature, rhs: np.ndarray, precondition, tolerance: float,
                               max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Preconditioned CG on ``S dB = rhs``; returns ``dB`` and the eliminated ``dA``.

    Stops when the residual is below ``tolerance ||rhs||`` or at negative curvature (then the
    first direction is returned if no step was taken)."""
    solution = np.zeros_like(rhs)
    solution_left = np.zeros_like(curvature.state.left)
    residual = rhs.copy()
    preconditioned = precondition(residual)
    direction = preconditioned
    inner = float(np.sum(residual * preconditioned))
    target = tolerance * float(np.linalg.norm(rhs))
    for step in range(max_steps):
        product, d_left = curvature.schur(direction)
        curvature_along = float(np.sum(direction * product))
        if curvature_along <= 0:
            if step == 0:
                return direction, d_left
            break
        alpha = inner / curvature_along
        solution += alpha * direction
        solution_left += alpha * d_left
        residual -= alpha * product
        if np.linalg.norm(residual) <= target:
            break
        preconditioned = precondition(residual)
        new_inner = float(np.sum(residual * preconditioned))
        direction = preconditioned + (new_inner / inner) * direction
        inner = new_inner
    return solution, solution_left


def fit_factored(
    contexts: Any,
    features: Any,
    labels: np.ndarray,
    rank: int,
    *,
    initial: tuple[np.ndarray, np.ndarray] | None = None,
    offsets: np.ndarray | None = None,
    beta: float = 1.0,
    ridge: float = 1.0,
    balance: float = 0.0,
    hidden: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iter: int = 500,
) -> FactoredFit:
    """Minimise ``F(A, B)`` (module docstring) from ``initial = (A_0, B_0)``.

    Parameters
    ----------
    contexts : ndarray or scipy sparse matrix, shape (n, d_x)
        ``x_j`` (one-hot user indicators for P-ShareLoRA).
    features : ndarray or scipy sparse matrix, shape (n, d)
        ``z_j``.
    labels : ndarray, shape (n,)
    rank : int
    initial : (ndarray (d_x, r), ndarray (d, r)), optional
        Starting factors; default the spectral start (:func:`spectral_start`).
    offsets : ndarray, shape (n,), optional
    beta, ridge, balance : float
        ``beta``, ``lambda > 0`` and ``mu >= 0``.
    hidden : ndarray, shape (d, m), optional
        Orthonormal directions ``N`` of feature space with ``z_j^T N = 0`` for every pair (e.g.
        :func:`lr_mdp_env.identifiability.unidentified_directions`). Along them ``F`` is the ridge
        alone, minimised at zero: the fit keeps ``N^T B = 0`` (projecting the start), which does
        not change the minimiser and removes ``m r`` flat directions from the Newton system.
    tol : float, default 1e-8
        Stop when ``||grad F|| <= tol * ||grad F(A_0, B_0)||``.
    max_iter : int, default 500
        Newton steps. The L-BFGS steps of one-hot contexts (module docstring) come on top: at most
        ``_QUASI_NEWTON_MAX_STEPS`` (500) joint ones or ``_PROJECTED_MAX_STEPS`` (3000) of the
        variable projection; ``max_iter=0`` returns the start.

    Returns
    -------
    FactoredFit

    Raises
    ------
    ValueError
        If ``rank`` is not in ``1..min(d_x, d)``, or ``hidden`` is not ``(d, m)`` with orthonormal
        columns, or some ``z_j`` has a component along it.
    """
    labels = np.asarray(labels, dtype=float)
    n = labels.shape[0]
    offsets = np.zeros(n) if offsets is None else np.asarray(offsets, dtype=float)
    if not 1 <= rank <= min(contexts.shape[1], features.shape[1]):
        raise ValueError(f"rank must be between 1 and min(d_x, d) = {min(contexts.shape[1], features.shape[1])}, "
                         f"got {rank}")
    problem = _Bilinear(contexts, features, labels, offsets, beta, ridge, balance, rank)
    if hidden is not None:
        hidden = _checked_hidden(problem, hidden)
    if initial is None:
        initial = _spectral_start(problem.pairs, problem.labels, problem.offsets, rank, beta)
    left, right = np.array(initial[0], dtype=float), np.array(initial[1], dtype=float)
    if hidden is not None:
        right = _project_off(right, hidden)
    state = problem.state(left, right)
    scale = max(_norm(*_Curvature(problem, state).gradient()), 1e-12)
    threshold = tol * scale * (1 + 1e-6)
    quasi_newton_steps = 0
    if problem.blockwise and max_iter > 0:
        if problem.projected:
            state, quasi_newton_steps = _variable_projection(problem, state, hidden, threshold)
        else:
            state, quasi_newton_steps = _quasi_newton_warm_up(problem, _Curvature(problem, state), hidden,
                                                              max(threshold, _QUASI_NEWTON_LEVEL * scale))
    iterations, fresh, message = 0, True, "maximum number of iterations reached"
    # A cap on the CG steps of one Newton step: where the Hessian is nearly singular or indefinite an
    # accurate solve is wasted (the next step corrects it), and near the answer few are needed.
    max_cg = min(rank * problem.n_features, _MAX_CG)
    while True:
        curvature = _Curvature(problem, state)
        grad_left, grad_right = curvature.gradient()
        gradient_norm = _norm(grad_left, grad_right)
        if gradient_norm <= threshold:
            if fresh:
                break
            # The projections were updated step by step: confirm on freshly computed ones.
            state, fresh = problem.state(state.left, state.right), True
            continue
        if iterations >= max_iter:
            break
        iterations += 1
        eliminated = -curvature.solve_left(grad_left)
        precondition = curvature.preconditioner(hidden)
        forcing = _forcing(gradient_norm, scale, threshold)
        d_right, d_left = _schur_conjugate_gradients(
            curvature, -(grad_right + curvature.cross(eliminated)), precondition, forcing, max_cg)
        d_left = d_left + eliminated
        slope = float(np.sum(grad_left * d_left) + np.sum(grad_right * d_right))
        if not slope < 0:
            d_left, d_right = eliminated, -precondition(grad_right)
            slope = float(np.sum(grad_left * d_left) + np.sum(grad_right * d_right))
        step = _line_search(problem, state, d_left, d_right, slope)
        if step is None:
            message = "the line search made no progress (limit of floating-point precision)"
            if not fresh:
                state, fresh = problem.state(state.left, state.right), True
                continue
            break
        state, fresh = _rebalanced(problem, step), False
    converged = gradient_norm <= threshold
    if not converged:
        warnings.warn(
            f"factored logistic fit stopped after {iterations} iterations with relative gradient "
            f"norm {gradient_norm / scale:.3g} > tol={tol} ({message})",
            ConvergenceWarning,
            stacklevel=2,
        )
    return FactoredFit(
        left=state.left.copy(),
        right=state.right.copy(),
        objective=problem.value(state),
        gradient_norm=gradient_norm,
        relative_gradient_norm=gradient_norm / scale,
        iterations=iterations,
        converged=bool(converged),
        quasi_newton_steps=quasi_newton_steps,
    )


def _quasi_newton_warm_up(problem: _Bilinear, curvature: _Curvature, hidden: np.ndarray | None,
                          target: float) -> tuple[_State, int]:
    """Preconditioned L-BFGS from ``curvature``'s point until ``||grad F|| <= target``; returns the
    point reached and the number of steps.

    Far from the answer a Newton step of the factorisation is indefinite, so its conjugate
    gradients stop early and the step is short; each L-BFGS step costs one pass forward and one
    back over the data (``eta`` from ``A B^T``, the gradient from ``R``) and reaches the region
    where Newton's method converges fast in a fraction of the passes. The initial inverse Hessian
    is the inverse of the block-diagonal part of the Hessian (the ``r x r`` blocks of ``H_AA`` per
    context and of ``H_BB`` per feature), at the start and again each time the gradient norm has
    fallen tenfold, scaled by ``s^T y / y^T P^{-1} y`` of the latest pair; pairs with
    ``s^T y <= 0`` are skipped, which keeps every direction a descent direction. Returns the last
    point (with fresh projections) when the target is met, a step fails to decrease ``F``, or
    after ``_QUASI_NEWTON_MAX_STEPS`` steps.
    """
    p, start = problem, curvature.state
    r = p.rank
    # The block-diagonal part of the Newton steps' system: H_AA's blocks (curvature.solve_left)
    # and H_BB's per-feature blocks (curvature.preconditioner, which also projects off hidden).
    solve_right = curvature.preconditioner(hidden)

    # Points and gradients as flat vectors (A then B), so that inner products are single dots.
    def precondition(flat: np.ndarray) -> np.ndarray:
        left, right = p.split(flat)
        return np.concatenate([np.ravel(curvature.solve_left(left)), np.ravel(solve_right(right))])

    def value_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = p.value_and_gradient(flat)
        if hidden is not None:  # B stays orthogonal to the hidden directions
            right_gradient = gradient[p.left_size:].reshape(-1, r)
            right_gradient[...] = _project_off(right_gradient, hidden)
        return value, gradient

    point = np.concatenate([np.ravel(start.left), np.ravel(start.right)])
    value, gradient = value_and_gradient(point)
    history: list[tuple[np.ndarray, np.ndarray, float]] = []
    scaling, steps = 1.0, 0
    refreshed_at = np.linalg.norm(gradient)
    while steps < _QUASI_NEWTON_MAX_STEPS and np.linalg.norm(gradient) > target:
        direction = _quasi_newton_direction(gradient, history, scaling, precondition)
        slope = float(gradient @ direction)
        length, accepted = 1.0, None
        for _ in range(30):  # Armijo backtracking; the unit step is accepted almost always
            trial_value, trial_gradient = value_and_gradient(point + length * direction)
            if trial_value <= value + 1e-4 * length * slope:
                accepted = trial_value, trial_gradient
                break
            length *= 0.5
        if accepted is None:
            break
        scaling = _remembered(history, length * direction, accepted[1] - gradient, precondition,
                              _QUASI_NEWTON_MEMORY, scaling)
        point, steps = point + length * direction, steps + 1
        value, gradient = accepted
        if np.linalg.norm(gradient) <= _QUASI_NEWTON_REFRESH * refreshed_at:
            # The iterate has moved far enough for the blocks at the start to be stale: rebuild them
            # here (the stored pairs stay; they describe the Hessian, not the preconditioner).
            curvature = _Curvature(p, p.state(*p.split(point)))
            solve_right = curvature.preconditioner(hidden)
            refreshed_at = np.linalg.norm(gradient)
    return p.state(*p.split(point)), steps


def _variable_projection(problem: _Bilinear, state: _State, hidden: np.ndarray | None,
                         target: float) -> tuple[_State, int]:
    """Preconditioned L-BFGS on ``phi(B) = min_A F(A, B)`` (one-hot contexts without balancing)
    from ``state`` until ``||grad F|| <= target``; returns the point reached and the number of steps.

    For one-hot contexts ``min_A`` is ``N`` independent ``r``-dimensional ridge logistic
    regressions on the features ``q_j = B^T z_j``, solved to high accuracy by the batched Newton
    solver of :func:`agents.logistic.fit_logistic`; then ``dF/dA = 0`` and ``dF/dB = grad phi(B)``,
    so the joint gradient norm is the stopping certificate, as for the Newton steps. Eliminating
    ``A`` exactly removes the coupling of the two factors from the quasi-Newton model, which then
    only has to learn ``phi``'s Hessian, the Schur complement ``H_BB - H_BA H_AA^{-1} H_AB`` of the
    Newton steps. Each step costs one pass forward over the features (``Z D`` for the direction
    ``D``: every trial point's ``Z B`` follows from it) and one back (the gradient); the users'
    problems cost ``O(n r^2)`` per Newton step. At the unit step ``A`` is moved by a single Newton
    step of every user's problem from the current ``A``, without line search or convergence check
    (measured at 1000 users of 50 pairs, d = 2000: 2.2 ms, a quarter of a pass, where solving them
    to accuracy took 6 to 17 ms): the new ``A`` is within ``O(||A - A*(B)||^2)`` of the minimiser,
    so ``dF/dB`` differs from ``grad phi`` by a second-order term (the step counts stay the same)
    and ``dF/dA`` vanishes as the steps shrink. The Armijo test is on ``F`` itself and the stopping
    certificate is the joint gradient norm, both exact; a shortened step solves the users' problems
    to accuracy. The initial inverse Hessian is the inverse of the
    per-feature ``r x r`` blocks of ``H_BB``, rebuilt each time the gradient norm has fallen tenfold
    and scaled by ``s^T y / y^T P^{-1} y`` of the latest pair; pairs with ``s^T y <= 0`` are skipped,
    which keeps every direction a descent direction. Stops when the target is met, a step fails to
    decrease ``F``, or after ``_PROJECTED_MAX_STEPS`` steps (Newton's method then continues).
    """
    p, pairs = problem, problem.pairs
    n_users = p.n_contexts
    layout = _PaddedProblems(state.feature_part, p.labels, pairs.groups, p.offsets, n_users)
    ridges = np.full(n_users, p.ridge)

    def users_fitted(left: np.ndarray, feature_part: np.ndarray, accuracy: float) -> np.ndarray:
        """``argmin_A F(A, B)`` from ``left`` given ``Z B``, each user's gradient to ``accuracy``."""
        left = left.copy()
        _newton(layout.with_features(feature_part), p.beta, ridges, left, np.full(n_users, accuracy),
                _INNER_MAX_STEPS)
        return left

    beta_squared_mask, everyone = p.beta**2 * layout.mask, np.arange(n_users)

    def users_stepped(left: np.ndarray, feature_part: np.ndarray) -> np.ndarray:
        """One (undamped) Newton step of every user's problem from ``left`` given ``Z B``."""
        users = layout.with_features(feature_part)
        eta = users.logits(p.beta, left)
        gradient = users.gradient(p.beta, ridges, left, eta)
        weights = expit(eta) * expit(-eta) * beta_squared_mask
        return left - _newton_direction(users, everyone, weights, ridges, gradient, None)

    def evaluated(left: np.ndarray, right: np.ndarray, feature_part: np.ndarray):
        """The state at ``(A, B)`` with ``Z B`` known, ``F`` there and the residuals."""
        context_part = pairs.project_contexts(left)
        eta = p.offsets + p.beta * pairs.context_row_dot(left, feature_part)
        losses, probabilities = bernoulli_losses_and_probabilities(eta, p.labels)
        point = _State(left, right, context_part, feature_part, eta, float(np.sum(losses)))
        return point, p.value(point), p.beta * (probabilities - p.labels)

    def accuracy(gradient_norm: float) -> float:
        # Per user, so that ||dF/dA|| stays a tenth of the B gradient (and of the target at the end).
        return 0.1 * max(gradient_norm, target) / np.sqrt(max(n_users, 1))

    def projected(gradient: np.ndarray) -> np.ndarray:
        return gradient if hidden is None else _project_off(gradient, hidden)

    left = users_fitted(state.left, state.feature_part, accuracy(target / 0.1))
    state, value, residual = evaluated(left, state.right, state.feature_part)
    grad_left, grad_right = p.gradient_from_passes(state, residual)
    grad_right = projected(grad_right)
    precondition = _Curvature(p, state).preconditioner(hidden)
    refreshed_at = np.linalg.norm(grad_right)
    history: list[tuple[np.ndarray, np.ndarray, float]] = []
    scaling, steps = 1.0, 0
    while steps < _PROJECTED_MAX_STEPS and _norm(grad_left, grad_right) > target:
        direction = _quasi_newton_direction(grad_right, history, scaling, precondition)
        slope = float(np.sum(grad_right * direction))
        feature_direction = pairs.project_features(direction)
        length, accepted = 1.0, None
        for _ in range(30):  # Armijo backtracking; the unit step is accepted almost always
            # (the unit step without the product: a copy of an n x r array less)
            trial_features = state.feature_part + (feature_direction if length == 1.0 else length * feature_direction)
            trial_left = users_stepped(state.left, trial_features) if length == 1.0 else \
                users_fitted(state.left, trial_features, accuracy(np.linalg.norm(grad_right)))
            trial, trial_value, trial_residual = evaluated(trial_left, state.right + length * direction,
                                                           trial_features)
            if trial_value <= value + 1e-4 * length * slope:
                accepted = trial, trial_value, trial_residual
                break
            length *= 0.5
        if accepted is None:
            break
        state, value, residual = accepted
        new_left, new_right = p.gradient_from_passes(state, residual)
        new_right = projected(new_right)
        scaling = _remembered(history, length * direction, new_right - grad_right, precondition,
                              _PROJECTED_MEMORY, scaling)
        grad_left, grad_right, steps = new_left, new_right, steps + 1
        if np.linalg.norm(grad_right) <= _QUASI_NEWTON_REFRESH * refreshed_at:
            # The iterate has moved far enough for the blocks to be stale: rebuild them here (the
            # stored pairs stay; they describe the Hessian, not the preconditioner).
            precondition = _Curvature(p, state).preconditioner(hidden)
            refreshed_at = np.linalg.norm(grad_right)
    return p.state(state.left, state.right), steps


def _quasi_newton_direction(gradient: np.ndarray, history: list, scaling: float, precondition) -> np.ndarray:
    """The L-BFGS direction ``-H gradient`` by the two-loop recursion over the stored pairs
    ``(s, y, 1 / s^T y)``, with ``scaling P^{-1}`` as the initial inverse Hessian."""
    direction, alphas = gradient.copy(), []
    for step_taken, change, rho in reversed(history):
        alpha = rho * float(np.vdot(step_taken, direction))
        direction -= alpha * change
        alphas.append(alpha)
    direction = scaling * precondition(direction)
    for (step_taken, change, rho), alpha in zip(history, reversed(alphas)):
        direction += (alpha - rho * float(np.vdot(change, direction))) * step_taken
    return -direction


def _remembered(history: list, step_taken: np.ndarray, change: np.ndarray, precondition, memory: int,
                scaling: float) -> float:
    """Store the pair ``(s, y)`` of the last step when ``s^T y > 0`` (which keeps every direction a
    descent direction), keeping the latest ``memory``; returns the initial scaling
    ``s^T y / y^T P^{-1} y`` (unchanged when the pair is skipped)."""
    curvature_along = float(np.vdot(step_taken, change))
    if curvature_along <= 1e-10 * np.linalg.norm(step_taken) * np.linalg.norm(change):
        return scaling
    history.append((step_taken, change, 1.0 / curvature_along))
    del history[:-memory]
    return curvature_along / float(np.vdot(change, precondition(change)))


def _forcing(gradient_norm: float, scale: float, threshold: float) -> float:
    """Relative tolerance of the Newton system's CG solve (inexact Newton): loose far from the
    answer, tight near it, but never tighter than needed to bring the gradient below the threshold
    in this step."""
    return max(min(0.5, np.sqrt(gradient_norm / scale)), 0.3 * threshold / gradient_norm)


def _checked_hidden(problem: _Bilinear, hidden: Any) -> np.ndarray | None:
    """``hidden`` as an array (``None`` when it has no columns), after checking that no pair sees it."""
    hidden = np.asarray(hidden, dtype=float)
    d = problem.n_features
    if hidden.ndim != 2 or hidden.shape[0] != d:
        raise ValueError(f"hidden must have shape ({d}, m), got {hidden.shape}")
    if hidden.shape[1] == 0:
        return None
    if not np.allclose(hidden.T @ hidden, np.eye(hidden.shape[1]), rtol=0, atol=1e-8):
        raise ValueError("hidden must have orthonormal columns")
    seen = np.linalg.norm(problem.pairs.project_features(hidden), axis=1)
    # Rounding leaves components of a few ulps of each z_j's size (a zero z_j sees exactly zero).
    sizes = problem.pairs.feature_norms()
    ratios = np.divide(seen, sizes, out=np.zeros_like(seen), where=sizes > 0)
    if ratios.size and ratios.max() > 1e-8:
        worst = int(np.argmax(ratios))
        raise ValueError(f"hidden must be orthogonal to every feature difference z_j; a pair has a component "
                         f"{seen[worst]:.3g} along it (|z_j| = {sizes[worst]:.3g})")
    return hidden


def _row_dot(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two ``(n, m)`` arrays."""
    return np.einsum("ij,ij->i", first, second)


def _norm(*parts: np.ndarray) -> float:
    return float(np.sqrt(sum(np.sum(part**2) for part in parts)))


def _line_search(problem: _Bilinear, state: _State, d_left, d_right, slope):
    """Armijo backtracking along ``(dA, dB)`` from step 1; ``None`` if nothing decreases ``F``.

    ``eta`` is quadratic in the step, so with ``Z dB`` (one pass) no trial needs a pass over the
    data."""
    pairs, c, q = problem.pairs, state.context_part, state.feature_part
    d_context, d_feature = pairs.project_contexts(d_left), pairs.project_features(d_right)
    constant = state.eta
    linear = problem.beta * (pairs.context_row_dot(d_left, q) + pairs.context_row_dot(state.left, d_feature))
    quadratic = problem.beta * pairs.context_row_dot(d_left, d_feature)
    current = problem.value(state)
    slack = 1e-13 * max(1.0, abs(current))
    step = 1.0
    for _ in range(60):
        trial = _State(state.left + step * d_left, state.right + step * d_right, c + step * d_context,
                       q + step * d_feature, constant + step * (linear + step * quadratic))
        if problem.value(trial) <= current + 1e-4 * step * slope + slack:
            return trial
        step *= 0.5
    return None


def _rebalanced(problem: _Bilinear, state: _State) -> _State:
    """The balanced factors of ``A B^T`` (``A' = P sqrt(S)``, ``B' = Q sqrt(S)`` from its SVD
    ``P S Q^T``): same data term, smallest ridge, no imbalance, so ``F`` does not increase."""
    r_left = np.linalg.qr(state.left, mode="r")
    r_right = np.linalg.qr(state.right, mode="r")
    if max(np.linalg.cond(r_left), np.linalg.cond(r_right)) > 1e8:
        return state  # rank-deficient factors: leave them as they are
    small_left, singular, small_right_t = np.linalg.svd(r_left @ r_right.T)
    root = np.sqrt(singular)
    to_left = np.linalg.solve(r_left, small_left * root)
    to_right = np.linalg.solve(r_right, small_right_t.T * root)
    left, right = state.left @ to_left, state.right @ to_right
    feature_part = state.feature_part @ to_right
    # A B^T, hence the data term, is unchanged.
    return _State(left, right, problem.pairs.project_contexts(left), feature_part,
                  problem.offsets + problem.beta * problem.pairs.context_row_dot(left, feature_part),
                  state.data_term)


def spectral_start(contexts: Any, features: Any, labels: np.ndarray, offsets: np.ndarray, rank: int,
                   beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Spectral initialisation of ``(A, B)`` from the moment matrix ``sum_j (y_j - 1/2) x_j z_j^T``.

    The moments are scaled per feature by the diagonal of the average Hessian at zero
    (``sigmoid'(0) = 1/4``), truncated to rank ``r``, and the overall scale ``c`` of the truncation
    ``T`` is fitted by a one-dimensional logistic regression on ``x_j^T T z_j``; the start is the
    balanced factorisation of ``c T``.

    Parameters
    ----------
    contexts, features, labels, offsets, rank, beta
        As :func:`fit_factored`.

    Returns
    -------
    (ndarray (d_x, r), ndarray (d, r))
    """
    return _spectral_start(_Pairs(contexts, features, _one_hot_groups(contexts)), labels, offsets, rank, beta)


def _top_singular_triplets(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P, S, Q)`` of the top-``rank`` SVD ``P diag(S) Q^T`` of a dense matrix.

    Matrices whose smaller side exceeds 500 (thousands of users by thousands of features) go
    through ARPACK's Lanczos bidiagonalisation, which costs a few dozen products with the matrix
    instead of the full decomposition (measured, one thread: 0.32 s instead of 1.2 s at
    1000 x 2000; the full SVD is as fast at 100 x 500 and faster at 10000 x 500); its start
    vector is fixed, so the result is reproducible (and, up to rounding, the top singular subspace
    whatever the start)."""
    if min(matrix.shape) <= _LANCZOS_MIN_SIDE or rank >= min(matrix.shape) - 1:  # ARPACK needs k < min - 1
        left, singular, right_t = np.linalg.svd(matrix, full_matrices=False)
        return left[:, :rank], singular[:rank], right_t[:rank].T
    start = np.random.default_rng(0).standard_normal(min(matrix.shape))
    left, singular, right_t = scipy.sparse.linalg.svds(matrix, k=rank, v0=start)
    order = np.argsort(singular)[::-1]
    return left[:, order], singular[order], right_t[order].T


def _spectral_start(pairs: _Pairs, labels: np.ndarray, offsets: np.ndarray, rank: int,
                    beta: float) -> tuple[np.ndarray, np.ndarray]:
    moments = pairs.data_matrix(labels - 0.5).T  # (d_x, d)
    n_contexts = pairs.n_contexts
    pairs_per_context = labels.shape[0] / n_contexts
    precondition = beta**2 * pairs.feature_energy() / (4 * n_contexts * max(pairs_per_context, 1.0)) + 1.0
    left, singular, right = _top_singular_triplets(moments / precondition, rank)
    direction = pairs.pair_products(left * singular, right)  # x_j^T T z_j
    # From the first Newton step at zero (sigmoid'(0) = 1/4): few steps remain.
    guess = np.sum((labels - 0.5) * direction) / max(0.25 * beta * np.sum(direction**2), 1e-300)
    # A rough scale is all a start needs.
    scale = fit_logistic(direction[:, None], labels, offsets=offsets, beta=beta, ridge=1e-6, tol=1e-4,
                         initial=[[guess]], fisher=False).theta[0, 0]
    root = np.sqrt(max(scale, 1e-3) * singular)
    return left * root, right * root
