"""Per-context confidence sets of the contextual estimators, in the structure of their coordinates.

A contextual estimator (:mod:`agents.contextual`) has one ellipsoid of coordinates
``{kappa : ||kappa - kappa_0||_M <= radius}`` shared by all contexts, and the set of a context
``x`` is its image ``{theta(x) = B_x kappa}``. With bilinear blocks ``(L_k, R_k)`` the map is
``B_x^T v = [ (L_k^T x) (x) (R_k^T v) ]_k``: writing ``y = [L_k^T x]_k`` (``d_x`` numbers for RTV
and for the full-rank blocks) and ``T_i`` for the fixed map of context direction ``i``
(``T_i v = e_alpha (x) R_k^T v`` in block ``k``), ``B_x^T = sum_i y_i T_i``. So nothing of size
``d x k`` is needed for a context: ``B_x^T v`` and ``B_x kappa`` cost ``O(k)`` each, a dual norm
``||B_x^T v||_{M^{-1}}`` one triangular solve with the shared Cholesky factor of ``M``, and the
squared rectangular bonus of a feature row ``phi_p`` is the quadratic form ``y^T R_p y`` with
``(R_p)_{ij} = (T_i phi_p)^T M^{-1} (T_j phi_p)``: ``d_x x d_x`` numbers per row, computed once per
fit from the ``(i, j)`` blocks of ``M^{-1}`` (:meth:`ContextualSetParts.bonus_tensor`), and
``O(m d_x^2)`` per context for ``m`` rows. For the identifiable features of one-hot ``(s, a)``
features, ``phi_id = I - Q Q^T`` with few unidentified directions ``Q``, the tensor needs only the
diagonals of the ``d x d`` blocks of ``M^{-1}`` and their products with ``Q``.

:class:`ContextualEllipsoid` implements the :class:`~agents.confidence.ConfidenceSet` protocol on
these: it equals :class:`~agents.confidence.Ellipsoid` with ``basis = B_x``
(``basis_for(context)``) to rounding. Membership and distance need the ``d x d`` matrix
``S_x = B_x M^{-1} B_x^T`` (the set's own matrix in feature space: for RTV with ``U^T x != 0``
the set spans all of ``R^d``, ``k > d``), formed from the blocks of ``M^{-1}`` in ``O(d_x^2 d^2)``
and factored once per set.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg

from lr_mdp_env._validation import as_real_array, check_real, frozen

from .confidence import ConfidenceSet, Seminorm
from .confidence import _within as within_radius

__all__ = ["ContextualEllipsoid", "ContextualSetParts"]

# Right-hand sides of one batched solve hold about this many coordinates (a few tens of MB).
_BATCH_ENTRIES = 2**22


def _as_value(value: np.ndarray) -> np.ndarray | float:
    return float(value) if np.ndim(value) == 0 else value


class ContextualSetParts:
    """What the sets of all contexts of one fit share: the coordinates' blocks, the centre
    ``kappa_0``, the Cholesky factor of ``M``, the radius, and (formed on first use) ``M^{-1}``
    and the rectangular-bonus tensor.

    Parameters
    ----------
    coordinates : BilinearCoordinates
        The blocks ``(L_k, R_k)``; each ``R_k`` has orthonormal columns (the identity or ``V_hat``).
    center : ndarray, shape (k,)
    factor : ndarray, shape (k, k)
        Lower Cholesky factor of ``M`` (its owner has checked ``M``).
    radius : float
    hidden : ndarray, shape (d, q), optional
        Orthonormal unidentified directions: ``phi_id = I - Q Q^T`` is recognised and its bonus
        tensor computed from ``Q`` instead of a dense ``d x d`` product.
    matrix : ndarray, shape (k, k), optional
        ``M`` itself, kept only for callers that read ``matrix``.
    """

    def __init__(self, coordinates: Any, center: np.ndarray, factor: np.ndarray, radius: float,
                 hidden: np.ndarray | None = None, matrix: np.ndarray | None = None) -> None:
        self.coordinates = coordinates
        self.blocks = [(np.asarray(left, dtype=float), np.asarray(right, dtype=float))
                       for left, right in coordinates.blocks]
        self.identity_right = list(coordinates._identity_right)
        self.n_features = self.blocks[0][1].shape[0]
        self.dimension = int(coordinates.dimension)
        center = as_real_array("center", center, (1,))
        factor = np.asarray(factor, dtype=float)
        if center.shape != (self.dimension,) or factor.shape != (self.dimension, self.dimension):
            raise ValueError(f"center must have shape ({self.dimension},) and factor ({self.dimension}, "
                             f"{self.dimension}), got {center.shape} and {factor.shape}")
        self.center = frozen(center)
        self.factor = frozen(factor)
        self.radius = check_real("radius", radius, 0.0)
        self.hidden = np.zeros((self.n_features, 0)) if hidden is None else np.asarray(hidden, dtype=float)
        self.matrix = matrix
        # One entry per context direction i = (block, alpha): its range of coordinates, the width
        # b_k of the block's right side and R_k (None for the identity).
        self.directions: list[tuple[int, slice, np.ndarray | None]] = []
        start = 0
        for index, ((left, right), identity) in enumerate(zip(self.blocks, self.identity_right)):
            width = right.shape[1]
            for alpha in range(left.shape[1]):
                self.directions.append((index, slice(start + alpha * width, start + (alpha + 1) * width),
                                        None if identity else right))
            start += left.shape[1] * width
        self._bonus: tuple[np.ndarray, np.ndarray] | None = None

    # -- the maps B_x^T and B_x -----------------------------------------------------------------------

    def context_weights(self, context: np.ndarray) -> np.ndarray:
        """``y = [L_k^T x]_k``, one weight per context direction."""
        return np.concatenate([left.T @ context for left, _ in self.blocks])

    def adjoint(self, weights: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """``B_x^T v`` for ``v`` of shape ``(..., d)``: shape ``(..., k)``."""
        parts, first = [], 0
        for (left, right), identity in zip(self.blocks, self.identity_right):
            a = left.shape[1]
            mapped = vectors if identity else vectors @ right
            product = weights[first:first + a, None] * mapped[..., None, :]
            parts.append(product.reshape(vectors.shape[:-1] + (a * mapped.shape[-1],)))
            first += a
        return np.concatenate(parts, axis=-1)

    def image(self, weights: np.ndarray, kappa: np.ndarray) -> np.ndarray:
        """``B_x kappa`` for ``kappa`` of shape ``(..., k)``: shape ``(..., d)``."""
        total = np.zeros(kappa.shape[:-1] + (self.n_features,))
        first, start = 0, 0
        for (left, right), identity in zip(self.blocks, self.identity_right):
            a, b = left.shape[1], right.shape[1]
            block = kappa[..., start:start + a * b].reshape(kappa.shape[:-1] + (a, b))
            combined = np.einsum("a,...ab->...b", weights[first:first + a], block)
            total += combined if identity else combined @ right.T
            first, start = first + a, start + a * b
        return total

    def whiten(self, coordinates: np.ndarray) -> np.ndarray:
        """``L^{-1} g`` for ``g`` of shape ``(..., k)``."""
        columns = np.reshape(coordinates, (-1, self.dimension)).T
        solved = scipy.linalg.solve_triangular(self.factor, columns, lower=True, check_finite=False)
        return solved.T.reshape(coordinates.shape)

    def unwhiten_adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        """``L^{-T} z`` for ``z`` of shape ``(..., k)``."""
        columns = np.reshape(coordinates, (-1, self.dimension)).T
        solved = scipy.linalg.solve_triangular(self.factor, columns, lower=True, trans="T", check_finite=False)
        return solved.T.reshape(coordinates.shape)

    # -- blocks of M^{-1} --------------------------------------------------------------------------------

    @cached_property
    def _upper_inverse(self) -> np.ndarray:
        """``M^{-1}`` from the factor (LAPACK ``potri``), valid in its upper triangle and C-ordered
        (the transpose of LAPACK's lower-valid column-major result, so that blocks of rows are
        read contiguously): ``O(k^3)`` once per fit, ``k^2`` floats."""
        if self.dimension == 0:
            return np.zeros((0, 0))
        inverse, info = scipy.linalg.lapack.dpotri(self.factor, lower=1)
        if info != 0:
            raise ValueError(f"the factor of the set's matrix is singular (potri info {info})")
        return inverse.T

    def inverse_block(self, rows: slice, columns: slice) -> np.ndarray:
        """The block of ``M^{-1}`` at two ranges of context directions (equal or disjoint)."""
        inverse = self._upper_inverse
        if rows.stop <= columns.start:
            return inverse[rows, columns]
        if columns.stop <= rows.start:
            return inverse[columns, rows].T
        block = inverse[rows, columns]
        return np.triu(block) + np.triu(block, 1).T

    def span_matrix(self, weights: np.ndarray) -> np.ndarray:
        """``S_x = B_x M^{-1} B_x^T = sum_ij y_i y_j R_i (M^{-1})_ij R_j^T``, ``(d, d)``.

        Pairs of identity directions add their ``d x d`` blocks of ``M^{-1}`` read from its upper
        triangle (one pass over each block, rows contiguous); the pairs involving a block ``R_k``
        (``d x b_k``) are summed in that block's ``b_k`` columns first and mapped by ``R_k`` once."""
        d = self.n_features
        inverse = self._upper_inverse
        upper = np.zeros((d, d))  # sum over pairs i < j of identity directions of y_i y_j (M^{-1})_ij
        diagonal = np.zeros((d, d))  # sum over i of y_i^2 (M^{-1})_ii, valid in its upper triangle
        scaled = np.empty((d, d))  # one scratch block (no temporary per pair)
        mapped: dict[int, np.ndarray] = {}  # block k -> sum y_i y_j (M^{-1})_ij over identity i, (d, b_k)
        pairs: dict[tuple[int, int], np.ndarray] = {}  # blocks (k, k') -> sum y_j y_j' (M^{-1})_jj'
        for i, (block_i, rows_i, right_i) in enumerate(self.directions):
            if weights[i] == 0.0:
                continue
            for j in range(i, len(self.directions)):
                block_j, rows_j, right_j = self.directions[j]
                weight = weights[i] * weights[j]
                if weight == 0.0:
                    continue
                if right_i is None and right_j is None:
                    # rows_i before rows_j: (M^{-1})_ij is in the upper triangle; a diagonal block
                    # is valid in its own upper triangle, all that is read of the sum below.
                    np.multiply(inverse[rows_i, rows_j], weight, out=scaled)
                    np.add(diagonal if j == i else upper, scaled, out=diagonal if j == i else upper)
                elif right_i is None:
                    term = weight * inverse[rows_i, rows_j]
                    mapped[block_j] = mapped[block_j] + term if block_j in mapped else term
                else:
                    term = weight * self.inverse_block(rows_i, rows_j)
                    if block_j == block_i and j != i:  # both orders of the pair, in one block's columns
                        term = term + term.T
                    key = (block_i, block_j)
                    pairs[key] = pairs[key] + term if key in pairs else term
        diagonal = np.triu(diagonal)
        total = diagonal + diagonal.T
        total[np.diag_indices(d)] -= np.diagonal(diagonal)
        total += upper
        total += upper.T
        for block, term in mapped.items():
            image = term @ self.blocks[block][1].T  # sum y_i y_j (M^{-1})_ij R_k^T: (d, d) of rank b_k
            total += image
            total += image.T
        for (block_i, block_j), term in pairs.items():
            image = self.blocks[block_i][1] @ term @ self.blocks[block_j][1].T
            total += image
            if block_i != block_j:
                total += image.T
        return 0.5 * (total + total.T)

    # -- the rectangular bonus ------------------------------------------------------------------------------

    def bonus_tensor(self, phi_id: np.ndarray) -> np.ndarray:
        """``R`` of shape ``(m, n, n)`` with ``R[p, i, j] = (T_i phi_p)^T M^{-1} (T_j phi_p)`` for the
        ``m`` rows of ``phi_id`` and the ``n`` context directions, once per fit (and rows).

        Each direction's rows ``T_i phi_p`` live in one block of coordinates, as the rows of
        ``X_i = phi_id R_i``; ``R[:, i, j] = diag(X_i (M^{-1})_ij X_j^T)``. When ``phi_id`` is
        ``I - Q Q^T`` (``Q = hidden``), ``X_i = R_i - Q (Q^T R_i)`` and the diagonal is taken
        term by term, ``O(d^2 q)`` per pair of directions instead of ``O(m d^2)``."""
        cached = self._bonus
        if cached is not None and (cached[0] is phi_id or (cached[0].shape == phi_id.shape
                                                           and np.array_equal(cached[0], phi_id))):
            return cached[1]
        m, d = phi_id.shape
        low_rank = m == d and self._is_identity_minus_hidden(phi_id)
        # Per direction: (A_i, C_i) with X_i = A_i - Q C_i; A_i None stands for the identity.
        mapped = []
        for _, _, right in self.directions:
            if low_rank:
                mapped.append((right, self.hidden.T if right is None else self.hidden.T @ right))
            else:
                mapped.append((phi_id if right is None else phi_id @ right, None))
        hidden = self.hidden if low_rank else None
        n = len(self.directions)
        tensor = np.empty((m, n, n))
        for i, (_, rows, _) in enumerate(self.directions):
            for j in range(i, n):
                block = self.inverse_block(rows, self.directions[j][1])
                tensor[:, i, j] = tensor[:, j, i] = _diagonal(mapped[i], block, mapped[j], hidden)
        self._bonus = (phi_id, tensor)
        return tensor

    def _is_identity_minus_hidden(self, phi_id: np.ndarray) -> bool:
        deviation = phi_id + self.hidden @ self.hidden.T
        deviation[np.diag_indices_from(deviation)] -= 1.0
        return bool(np.max(np.abs(deviation), initial=0.0) <= 1e-12)


def _diagonal(left: tuple, block: np.ndarray, right: tuple, hidden: np.ndarray | None) -> np.ndarray:
    """``diag(X P Y^T)`` for ``X = A_x - Q C_x``, ``Y = A_y - Q C_y`` (``A`` None: the identity;
    without ``hidden``, ``X = A_x``), ``P`` the block."""
    a_x, c_x = left
    a_y, c_y = right
    if a_x is None and a_y is None:
        value = np.diagonal(block).copy()
    elif a_x is None:
        value = np.einsum("pb,pb->p", block, a_y)
    elif a_y is None:
        value = np.einsum("pb,bp->p", a_x, block)
    else:
        value = np.einsum("pb,pb->p", a_x @ block, a_y)
    if hidden is not None and hidden.shape[1]:
        c_block = c_x @ block  # (q, b_y)
        left_terms = c_block if a_y is None else c_block @ a_y.T  # (q, m): C_x P A_y^T
        value -= np.einsum("pl,lp->p", hidden, left_terms)
        block_c = block @ c_y.T  # (b_x, q)
        right_terms = block_c if a_x is None else a_x @ block_c  # (m, q): A_x P C_y^T
        value -= np.einsum("pl,pl->p", right_terms, hidden)
        value += np.einsum("pl,pl->p", hidden @ (c_block @ c_y.T), hidden)
    return value


class ContextualEllipsoid(ConfidenceSet):
    """The set ``{B_x kappa : ||kappa - kappa_0||_M <= radius}`` of one context ``x``, without ``B_x``.

    The same set as :class:`~agents.confidence.Ellipsoid` with ``offset = 0`` and
    ``basis = basis_for(x)`` (``d x k``), with every operation in the structure of the blocks
    (module docstring): ``lower``, ``upper`` and ``minimizer`` by solves with the shared factor
    (``O(k^2)`` per vector), :meth:`rectangular_bonus` from the shared tensor (``O(m d_x^2)``),
    :meth:`distance` and :meth:`contains` from ``S_x = B_x M^{-1} B_x^T`` (``O(d_x^2 d^2 + d^3)``
    once per set).

    Parameters
    ----------
    parts : ContextualSetParts
    context : ndarray, shape (d_x,)

    References
    ----------
    Lee, Sun and Liu, *Low-Rank Contextual Reinforcement Learning from Heterogeneous Human
    Feedback*, arXiv:2412.19436 (the RTV coordinates and the sets of contexts).
    """

    def __init__(self, parts: ContextualSetParts, context: Any) -> None:
        if not isinstance(parts, ContextualSetParts):
            raise TypeError(f"parts must be ContextualSetParts, got {type(parts).__name__}")
        context = as_real_array("context", context, (1,))
        if context.shape != (parts.blocks[0][0].shape[0],):
            raise ValueError(f"context must have shape ({parts.blocks[0][0].shape[0]},), got {context.shape}")
        self.parts = parts
        self.context = frozen(context)
        self.weights = frozen(parts.context_weights(context))

    # -- the protocol -----------------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return self.parts.n_features

    @property
    def dimension(self) -> int:
        """``k``, the number of coordinates."""
        return self.parts.dimension

    @property
    def center(self) -> np.ndarray:
        return self.parts.center

    @property
    def radius(self) -> float:
        return self.parts.radius

    @property
    def matrix(self) -> np.ndarray:
        """``M`` (when the owner kept it)."""
        if self.parts.matrix is None:
            raise AttributeError("the owner of this set did not keep its matrix")
        return self.parts.matrix

    @property
    def factor(self) -> np.ndarray:
        return self.parts.factor

    @cached_property
    def theta_hat(self) -> np.ndarray:
        """``B_x kappa_0``."""
        return frozen(self.parts.image(self.weights, np.asarray(self.parts.center)))

    def coordinates(self, vectors: Any) -> np.ndarray:
        """``B_x^T v`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        return self.parts.adjoint(self.weights, np.asarray(vectors, dtype=float))

    def image(self, coordinates: Any) -> np.ndarray:
        """``B_x w`` for ``w`` of shape ``(k,)`` or ``(..., k)``."""
        return self.parts.image(self.weights, np.asarray(coordinates, dtype=float))

    def dual_norm(self, vectors: Any) -> np.ndarray:
        """``||B_x^T v||_{M^{-1}}``."""
        return np.linalg.norm(self.parts.whiten(self.coordinates(vectors)), axis=-1)

    def lower(self, vectors: Any) -> np.ndarray | float:
        """``theta_hat . v - radius ||B_x^T v||_{M^{-1}}``."""
        vectors = np.asarray(vectors, dtype=float)
        return _as_value(vectors @ self.theta_hat - self.radius * self.dual_norm(vectors))

    def upper(self, vectors: Any) -> np.ndarray | float:
        """``theta_hat . v + radius ||B_x^T v||_{M^{-1}}``."""
        vectors = np.asarray(vectors, dtype=float)
        return _as_value(vectors @ self.theta_hat + self.radius * self.dual_norm(vectors))

    def minimizer(self, vectors: Any) -> np.ndarray:
        """``theta_hat - radius B_x L^{-T} z / ||z||`` with ``z = L^{-1} B_x^T v`` (``theta_hat``
        where ``z = 0``)."""
        whitened = self.parts.whiten(self.coordinates(vectors))
        norms = np.linalg.norm(whitened, axis=-1, keepdims=True)
        direction = np.divide(whitened, norms, out=np.zeros_like(whitened), where=norms > 0)
        return self.theta_hat - self.radius * self.image(self.parts.unwhiten_adjoint(direction))

    def seminorms(self) -> tuple[Seminorm, ...]:
        """One term, ``K = L^{-1} B_x^T`` applied in the blocks' structure."""
        return (_ContextSeminorm(self.radius, self),)

    def rectangular_bonus(self, phi_id: np.ndarray) -> np.ndarray:
        """``radius ||B_x^T phi_id[p]||_{M^{-1}}`` for every row ``p`` of ``phi_id`` ``(m, d)``:
        ``radius sqrt(y^T R_p y)`` from the shared tensor (:meth:`ContextualSetParts.bonus_tensor`)."""
        if self.dimension == 0:
            return np.zeros(phi_id.shape[0])
        tensor = self.parts.bonus_tensor(np.asarray(phi_id, dtype=float))
        y = np.asarray(self.weights)
        squared = tensor.reshape(tensor.shape[0], -1) @ np.outer(y, y).ravel()
        return self.radius * np.sqrt(np.maximum(squared, 0.0))

    # -- many contexts at once ------------------------------------------------------------------------------

    @staticmethod
    def batch_dual_norm(sets: Any, vectors: Any) -> np.ndarray:
        """:meth:`dual_norm` of ``vectors[i]`` for ``sets[i]``: the sets sharing one
        :class:`ContextualSetParts` (every context of a fit) take one triangular solve with many
        right-hand sides (``O(k^2)`` per set at matrix-matrix speed, where one solve per set is
        bound by reading the ``k x k`` factor each time).

        Parameters
        ----------
        sets : sequence of ContextualEllipsoid
        vectors : array_like, shape (len(sets), d)

        Returns
        -------
        ndarray, shape (len(sets),)
        """
        return ContextualEllipsoid._batch_support(sets, vectors)[1]

    @staticmethod
    def batch_lower(sets: Any, vectors: Any) -> np.ndarray:
        """:meth:`lower` of ``vectors[i]`` for ``sets[i]`` (see :meth:`batch_dual_norm`).

        Parameters
        ----------
        sets : sequence of ContextualEllipsoid
        vectors : array_like, shape (len(sets), d)

        Returns
        -------
        ndarray, shape (len(sets),)
        """
        sets = list(sets)
        centre_values, norms = ContextualEllipsoid._batch_support(sets, vectors)
        return centre_values - np.array([item.radius for item in sets]) * norms

    @staticmethod
    def _batch_support(sets: Any, vectors: Any) -> tuple[np.ndarray, np.ndarray]:
        sets = list(sets)
        if not all(isinstance(item, ContextualEllipsoid) for item in sets):
            raise TypeError("sets must be a sequence of ContextualEllipsoid")
        vectors = as_real_array("vectors", vectors, (2,))
        if not sets:
            return np.zeros(0), np.zeros(0)
        if vectors.shape != (len(sets), sets[0].n_features):
            raise ValueError(f"vectors must have shape ({len(sets)}, d={sets[0].n_features}), got {vectors.shape}")
        centre_values = np.einsum("nd,nd->n", vectors, np.stack([item.theta_hat for item in sets]))
        norms = np.empty(len(sets))
        groups: dict[int, list[int]] = {}
        for index, item in enumerate(sets):
            groups.setdefault(id(item.parts), []).append(index)
        for members in groups.values():
            parts = sets[members[0]].parts
            # Blocks of right-hand sides of about _BATCH_ENTRIES coordinates.
            size = max(1, _BATCH_ENTRIES // max(1, parts.dimension))
            for first in range(0, len(members), size):
                chosen = members[first:first + size]
                coordinates = np.stack([sets[i].coordinates(vectors[i]) for i in chosen])
                norms[chosen] = np.linalg.norm(parts.whiten(coordinates), axis=-1)
        return centre_values, norms

    # -- span, distance and membership ----------------------------------------------------------------------

    @cached_property
    def _span(self) -> np.ndarray | None:
        """Orthonormal basis of ``range(B_x)``, or ``None`` when it is all of ``R^d``: the union of
        the ranges of the blocks ``R_k`` whose weights ``L_k^T x`` are not zero, with the
        least-squares cut-off of the dense set (``max(d, k) eps`` of the largest singular value)."""
        d = self.n_features
        cutoff = max(d, self.dimension) * np.finfo(float).eps * float(np.linalg.norm(self.weights))
        active, first = [], 0
        for (left, right), identity in zip(self.parts.blocks, self.parts.identity_right):
            a = left.shape[1]
            if a and np.linalg.norm(self.weights[first:first + a]) > cutoff:
                if identity:
                    return None
                active.append(right)
            first += a
        if not active:
            return np.zeros((d, 0))
        left, singular, _ = np.linalg.svd(np.hstack(active), full_matrices=False)
        rank = int(np.count_nonzero(singular > max(left.shape) * np.finfo(float).eps * singular[0]))
        return left[:, :rank]

    @property
    def spans_everything(self) -> bool:
        """Whether ``range(B_x)`` is all of ``R^d`` (RTV with ``U^T x != 0``, full rank with ``x != 0``)."""
        return self._span is None

    @property
    def offset(self) -> np.ndarray:
        """``0``: with :attr:`basis`, the set's affine span (only when it is not all of ``R^d``)."""
        if self._span is None:
            raise AttributeError("the set spans all of R^d")
        return np.zeros(self.n_features)

    @property
    def basis(self) -> np.ndarray:
        """An orthonormal basis of ``range(B_x)`` (not ``B_x`` itself), only when that range is not
        all of ``R^d``: what callers projecting onto the set's affine span need."""
        if self._span is None:
            raise AttributeError("the set spans all of R^d")
        return self._span

    def _span_matrix_and_factor(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``S_x`` restricted to the span (``S_x`` itself, or ``E^T S_x E`` for the span's basis
        ``E``) and its Cholesky factor, ``None`` where rounding makes it singular. Not kept:
        ``d x d`` per set, and a caller going through many contexts (agents.evaluate) holds many
        sets at once."""
        matrix = self.parts.span_matrix(np.asarray(self.weights))
        if self._span is not None:
            matrix = self._span.T @ matrix @ self._span
        if matrix.shape[0] == 0:
            return matrix, matrix
        try:
            return matrix, scipy.linalg.cholesky(matrix, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return matrix, None

    def _span_factor(self) -> tuple[np.ndarray, bool]:
        """The Cholesky factor of ``S_x`` restricted to the span, or its pseudo-inverse root when
        rounding makes it singular (flag ``False``)."""
        matrix, factor = self._span_matrix_and_factor()
        if factor is not None:
            return factor, True
        values, vectors = np.linalg.eigh(matrix)
        keep = values > matrix.shape[0] * np.finfo(float).eps * max(values[-1], 0.0)
        return vectors[:, keep] / np.sqrt(values[keep]), False

    def feature_root(self) -> np.ndarray:
        """A ``d x rho`` matrix ``A`` with ``A A^T = S_x = B_x M^{-1} B_x^T`` (``rho`` the rank of the
        span): the set is ``{theta_hat + A z : ||z|| <= radius}``, the same as
        ``{theta_hat + K^T z}`` of its seminorm with ``k`` coordinates, in ``d`` or fewer."""
        matrix, root = self._span_matrix_and_factor()
        if root is None:
            values, vectors = np.linalg.eigh(matrix)
            root = vectors * np.sqrt(np.maximum(values, 0.0))
        return root if self._span is None else self._span @ root

    def _span_parts(self, theta: Any) -> tuple[np.ndarray, np.ndarray]:
        """``theta - theta_hat`` in the span's coordinates, and its part off the span."""
        theta = as_real_array("theta", theta, (1,))
        if theta.shape != (self.n_features,):
            raise ValueError(f"theta must have shape ({self.n_features},), got {theta.shape}")
        residual = theta - self.theta_hat
        if self._span is None:
            return residual, np.zeros_like(residual)
        along = residual @ self._span
        return along, residual - self._span @ along

    def distance(self, theta: Any) -> float:
        """``sqrt(u^T S_x^+ u)`` for ``u`` the projection of ``theta - theta_hat`` onto the span: the
        smallest ``||w - kappa_0||_M`` over coordinates ``w`` with ``B_x w`` that projection (as
        :meth:`agents.Ellipsoid.distance`)."""
        along, _ = self._span_parts(theta)
        if along.shape[0] == 0:
            return 0.0
        factor, triangular = self._span_factor()
        if triangular:
            return float(np.linalg.norm(scipy.linalg.solve_triangular(factor, along, lower=True, check_finite=False)))
        return float(np.linalg.norm(along @ factor))

    def contains(self, theta: Any, *, atol: float = 1e-9, project: bool = False) -> bool:
        """As :meth:`agents.Ellipsoid.contains`: ``theta`` must lie on the span within ``atol``
        relative, unless ``project``."""
        _, off_span = self._span_parts(theta)
        if not project and np.linalg.norm(off_span) > atol * max(1.0, float(np.linalg.norm(theta))):
            return False
        return bool(within_radius(self.distance(theta), self.radius))


class _ContextSeminorm(Seminorm):
    """``radius ||L^{-1} B_x^T v||`` of a :class:`ContextualEllipsoid` (``k`` coordinates)."""

    def __init__(self, radius: float, owner: ContextualEllipsoid) -> None:
        self.radius = radius
        self.owner = owner

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        return self.owner.parts.whiten(self.owner.coordinates(vectors))

    def adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        return self.owner.image(self.owner.parts.unwhiten_adjoint(np.asarray(coordinates, dtype=float)))

    def feature_root(self) -> np.ndarray:
        """``A`` with ``A A^T = K^T K`` in at most ``d`` columns (:meth:`ContextualEllipsoid.feature_root`)."""
        return self.owner.feature_root()
