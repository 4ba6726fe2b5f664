"""Confidence sets of reward parameters: the set protocol, ellipsoids and their radii (likelihood-ratio
sets, :class:`agents.LikelihoodRatioSet`, are in :mod:`agents.likelihood_set`).

Every set an agent plans against implements one small protocol, :class:`ConfidenceSet`: the
support function ``lower(v) = min_{theta in C} theta . v`` (and ``upper``, ``width``), the
minimiser of ``theta . v`` over the set, membership, and a member ``theta_hat``. The planners of
:mod:`agents.planning` and the checks of :func:`agents.check_agent` use nothing else, so a
user's own convex set plugs in by subclassing :class:`ConfidenceSet`. Sets whose support
function is a centre minus a sum of scaled seminorms also describe that structure
(:meth:`ConfidenceSet.seminorms`), which the exact planner exploits.

Ellipsoids come in two representations with the same operations: :class:`Ellipsoid` holds its
``k x k`` matrix and Cholesky factor; :class:`LowRankEllipsoid` holds a matrix ``A^T A + ridge I``
as the ``n x k`` factor ``A`` (the Fisher matrix of a user with fewer pairs than coordinates) and
works through the ``n x n`` system. The batched operations (:meth:`Ellipsoid.span_distances`,
:meth:`Ellipsoid.batch_lower`, :meth:`Ellipsoid.batch_dual_norm`) take both.

The radii are formulas of the theory, implemented once in :mod:`lr_mdp_env.theory` and
re-exported here: :func:`wald_radius` (asymptotic, chi-square quantile) and :func:`theory_radius`
(finite-sample, self-normalised, with the ``1 / gamma`` curvature factor).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, Sequence

import numpy as np
import scipy.linalg

from lr_mdp_env._validation import as_real_array, check_real, frozen, is_immutable
from lr_mdp_env.theory import theory_radius, wald_radius

__all__ = [
    "ComplementSeminorm",
    "ConfidenceSet",
    "Ellipsoid",
    "LinearSeminorm",
    "LowRankEllipsoid",
    "Seminorm",
    "theory_radius",
    "wald_radius",
]


def _as_value(value: np.ndarray) -> np.ndarray | float:
    """A float for one vector, the array for a batch."""
    return float(value) if np.ndim(value) == 0 else value


class Seminorm(ABC):
    """``radius ||K v||`` for a linear map ``K`` from feature space to some coordinates.

    A set ``C = {theta_hat + sum_j K_j^T z_j : ||z_j|| <= radius_j}`` has the support function
    ``lower(v) = theta_hat . v - sum_j radius_j ||K_j v||`` and the minimiser
    ``theta_hat - sum_j radius_j K_j^T K_j v / ||K_j v||``. The exact planner works in the
    whitened coordinates ``K_j v`` of such sets.

    Attributes
    ----------
    radius : float
        ``radius_j >= 0``.
    """

    radius: float

    @abstractmethod
    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        """``K v`` for ``v`` of shape ``(..., d)``: shape ``(..., m)``."""

    @abstractmethod
    def adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        """``K^T z`` for ``z`` of shape ``(..., m)``: shape ``(..., d)``."""

    def norm(self, vectors: np.ndarray) -> np.ndarray:
        """``||K v||`` for ``v`` of shape ``(..., d)``: shape ``(...)``."""
        return np.linalg.norm(self.whiten(vectors), axis=-1)

    def feature_adjoint(self, n_features: int) -> np.ndarray:
        """A ``d x m'`` matrix ``A`` with ``A A^T = K^T K``: the term's ball is
        ``{A z : ||z|| <= radius}``. ``K^T`` itself here; a term with more coordinates than
        features (a context's set of a contextual estimator) returns one with at most ``d``
        columns instead."""
        return np.asarray(self.whiten(np.eye(n_features)), dtype=float)  # row i is K e_i


@dataclass(frozen=True, eq=False)
class LinearSeminorm(Seminorm):
    """``radius ||K v||`` with an explicit matrix ``K`` of shape ``(m, d)``."""

    radius: float
    matrix: np.ndarray

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=float) @ self.matrix.T

    def adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        return np.asarray(coordinates, dtype=float) @ self.matrix

    def feature_adjoint(self, n_features: int) -> np.ndarray:
        return np.asarray(self.matrix, dtype=float).T


@dataclass(frozen=True, eq=False)
class ComplementSeminorm(Seminorm):
    """``radius ||(I - U U^T) v||``: a ball of that radius in the orthogonal complement of the
    orthonormal columns ``U`` (``(d, r)``), e.g. the error of an estimated subspace.
    ``K = K^T = I - U U^T``, applied without forming it."""

    radius: float
    basis: np.ndarray

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=float)
        return vectors - (vectors @ self.basis) @ self.basis.T

    def adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        return self.whiten(coordinates)


class ConfidenceSet(ABC):
    """The set protocol: a closed convex set ``C`` of reward parameters ``theta`` in ``R^d``.

    Subclasses implement :attr:`n_features`, :attr:`theta_hat`, :meth:`lower`,
    :meth:`minimizer` and :meth:`contains`; :meth:`upper` and :meth:`width` follow from
    :meth:`lower`. Every method taking vectors accepts one vector ``(d,)`` (and returns a float
    or a ``(d,)`` array) or a batch ``(..., d)``.

    The pessimistic objective of a policy is ``L(pi) = lower(d_pi - d_ref)``; when the truth is in
    ``C``, exact pessimism loses at most ``width(d_pi* - d_ref)`` against the optimal policy (the
    pessimism lemma; see ``docs/theory.md``).
    """

    @property
    @abstractmethod
    def n_features(self) -> int:
        """``d``, the dimension of the parameters."""

    @property
    @abstractmethod
    def theta_hat(self) -> np.ndarray:
        """A member of the set, its centre: what greedy planning on the set would use, ``(d,)``."""

    @abstractmethod
    def lower(self, vectors: Any) -> np.ndarray | float:
        """``min_{theta in C} theta . v`` (the support function of ``-v``, negated)."""

    def upper(self, vectors: Any) -> np.ndarray | float:
        """``max_{theta in C} theta . v = -lower(-v)``."""
        value = -np.asarray(self.lower(-np.asarray(vectors, dtype=float)), dtype=float)
        return _as_value(value)

    def width(self, vectors: Any) -> np.ndarray | float:
        """``upper(v) - lower(v)``: how much the set leaves ``theta . v`` undetermined."""
        return _as_value(np.asarray(self.upper(vectors), dtype=float) - np.asarray(self.lower(vectors), dtype=float))

    @abstractmethod
    def minimizer(self, vectors: Any) -> np.ndarray:
        """A member ``theta`` attaining ``lower(v)``: shape ``(d,)`` or ``(..., d)``; a
        ``ValueError`` where the set is unbounded along ``-v`` (``lower(v) = -inf``, no member
        attains it), which exact pessimism takes as that fact."""

    @abstractmethod
    def contains(self, theta: Any, *, atol: float = 1e-9) -> bool:
        """Whether ``theta`` lies in the set (up to a relative tolerance ``atol``)."""

    def seminorms(self) -> tuple[Seminorm, ...] | None:
        """The structure ``C = {theta_hat + sum_j K_j^T z_j : ||z_j|| <= radius_j}``, when the set
        has it (ellipsoids, sums of ellipsoids and balls), else ``None``."""
        return None


class _CentredInBasis(ConfidenceSet):
    """A set written as ``offset + basis @ w`` around ``w = center``: what the two ellipsoids share."""

    offset: np.ndarray
    basis: np.ndarray
    center: np.ndarray
    radius: float

    @abstractmethod
    def dual_norm(self, vectors: Any) -> np.ndarray:
        """``||G v||_{M^{-1}}`` for ``v`` of shape ``(d,)`` or ``(..., d)``: each ellipsoid's own."""

    @property
    def dimension(self) -> int:
        """``k``, the number of free coordinates."""
        return self.basis.shape[1]

    @property
    def n_features(self) -> int:
        return self.basis.shape[0]

    @property
    def theta_hat(self) -> np.ndarray:
        """The centre in feature space, ``offset + basis @ center``."""
        return self.offset + self.basis @ self.center

    @cached_property
    def range_factors(self) -> RangeFactors:
        """Thin SVD of ``basis`` cut at its numerical rank ``rho``: ``basis = U_r diag(s) V_r^T``.

        A factorisation of size ``min(d, k)``: ``O(d k min(d, k))`` once per set, never a
        ``d x d`` matrix when ``d >> k``. Singular values below ``max(d, k) eps s_max`` (the
        least-squares cut-off of LAPACK) count as zero. A basis with orthonormal columns (every
        built-in estimator's, up to ``1e-10``) is its own factor: ``U_r = basis``, ``s = 1``,
        ``V_r = I``, after one ``k x k`` Gram product.
        """
        return _range_factors(self.basis)

    def coordinates(self, vectors: Any) -> np.ndarray:
        """``G v = basis^T v`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        return np.asarray(vectors, dtype=float) @ self.basis

    def lower(self, vectors: Any) -> np.ndarray | float:
        """``min_{theta in C} theta . v`` in closed form: ``theta_hat . v - radius ||G v||_{M^{-1}}``."""
        value = np.asarray(vectors, dtype=float) @ self.theta_hat - self.radius * self.dual_norm(vectors)
        return _as_value(value)

    def upper(self, vectors: Any) -> np.ndarray | float:
        """``max_{theta in C} theta . v = theta_hat . v + radius ||G v||_{M^{-1}}``."""
        value = np.asarray(vectors, dtype=float) @ self.theta_hat + self.radius * self.dual_norm(vectors)
        return _as_value(value)

    def _span_coordinates(self, theta: Any) -> tuple[np.ndarray, np.ndarray]:
        """``u = theta - theta_hat`` in the set's frame: ``(U_r^T u, u - U_r U_r^T u)``, the
        coordinates of its projection onto ``range(basis)`` and the part off the span."""
        theta = as_real_array("theta", theta, (1,))
        if theta.shape != self.offset.shape:
            raise ValueError(f"theta must have shape {self.offset.shape}, got {theta.shape}")
        residual = theta - self.theta_hat
        left = self.range_factors.left
        along = residual @ left
        return along, residual - left @ along


@dataclass(frozen=True, eq=False)
class Ellipsoid(_CentredInBasis):
    """The set ``C = {offset + basis @ w : ||w - center||_matrix <= radius}`` (docs/algorithms.md, Estimators).

    ``||u||_M = sqrt(u^T M u)``. The map ``G = basis^T`` takes a feature-space vector ``v`` to the
    set's coordinates, since ``theta . v = offset . v + w . (G v)``; so over the set
    ``theta . v`` ranges over ``offset . v + center . G v +- radius ||G v||_{M^{-1}}``.

    Attributes
    ----------
    offset : ndarray, shape (d,)
        Known part of every member (e.g. the base reward ``Theta_0[:, i]``).
    basis : ndarray, shape (d, k)
        Columns spanning the directions the set can move in (``U_hat`` for P-ShareLoRA, the
        identity for a full-dimensional set, the RTV basis of a context for LoCo-RLHF).
    center : ndarray, shape (k,)
    matrix : ndarray, shape (k, k)
        Symmetric positive definite ``M``.
    radius : float
    factor : ndarray, shape (k, k), optional
        The lower Cholesky factor of ``matrix``, when the caller has it (a matrix shared by many
        sets is factored once): the caller has checked both, and only their shapes are checked
        here. Otherwise ``matrix`` is checked and factored here.
    """

    offset: np.ndarray
    basis: np.ndarray
    center: np.ndarray
    matrix: np.ndarray
    radius: float
    factor: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        offset = as_real_array("offset", self.offset, (1,))
        basis = _real_matrix("basis", self.basis)
        center = as_real_array("center", self.center, (1,))
        # A given factor is its owner's word for the matrix too (see below): shapes only.
        matrix = _real_matrix("matrix", self.matrix) if self.factor is None else np.asarray(self.matrix, dtype=float)
        d, k = basis.shape
        if offset.shape != (d,):
            raise ValueError(f"offset must have shape ({d},) to match basis {basis.shape}, got {offset.shape}")
        if center.shape != (k,) or matrix.shape != (k, k):
            raise ValueError(
                f"center must have shape ({k},) and matrix ({k}, {k}) to match basis {basis.shape}, "
                f"got {center.shape} and {matrix.shape}"
            )
        if self.factor is not None:
            # Many sets share one matrix (every context of a contextual estimator, every user of
            # a pooled fit): its owner checks and factors it once and vouches for both.
            cholesky = np.asarray(self.factor, dtype=float)
            if cholesky.ndim != 2:
                raise ValueError(f"factor must have 2 axes, got shape {cholesky.shape}")
            if cholesky.shape != matrix.shape:
                raise ValueError(f"factor must have the shape of matrix {matrix.shape}, got {cholesky.shape}")
        else:
            cholesky = self.checked_factor(matrix)
        radius = check_real("radius", self.radius, 0.0)
        set_ = object.__setattr__
        set_(self, "offset", frozen(offset))
        set_(self, "basis", frozen(basis))
        set_(self, "center", frozen(center))
        set_(self, "matrix", frozen(matrix))
        set_(self, "radius", radius)
        set_(self, "factor", frozen(cholesky))

    @staticmethod
    def checked_factor(matrix: np.ndarray, *, symmetric: bool = False) -> np.ndarray:
        """The lower Cholesky factor of ``matrix``, after checking that it is symmetric positive
        definite (the check every set without a given ``factor`` makes).

        Parameters
        ----------
        matrix : ndarray, shape (k, k)
        symmetric : bool, default False
            The caller built ``matrix`` symmetric (a Fisher matrix ``X^T W X + ridge I``): skip
            the ``k^2`` symmetry scan, which costs as much as the factor's memory traffic at
            ``k = 10,000``, and read only the lower triangle.

        Raises
        ------
        ValueError
            If ``matrix`` is not symmetric or not positive definite.
        """
        if not symmetric and not np.allclose(matrix, matrix.T, rtol=1e-10,
                                             atol=1e-12 * max(1.0, np.abs(matrix).max(initial=0.0))):
            raise ValueError("matrix must be symmetric")
        try:
            return scipy.linalg.cholesky(matrix, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise ValueError("matrix must be positive definite") from None

    @cached_property
    def whitening(self) -> np.ndarray:
        """``K = L^{-1} B^T`` with ``M = L L^T``, shape ``(k, d)``: ``||G v||_{M^{-1}} = ||K v||``."""
        if self.dimension == 0:
            return np.zeros((0, self.n_features))
        return scipy.linalg.solve_triangular(self.factor, self.basis.T, lower=True)

    def seminorms(self) -> tuple[Seminorm, ...]:
        """One term: ``C = {theta_hat + K^T z : ||z|| <= radius}``."""
        return (LinearSeminorm(self.radius, self.whitening),)

    def minimizer(self, vectors: Any) -> np.ndarray:
        """``theta_hat - radius K^T K v / ||K v||`` (``theta_hat`` where ``K v = 0``)."""
        vectors = np.asarray(vectors, dtype=float)
        whitened = vectors @ self.whitening.T
        norms = np.linalg.norm(whitened, axis=-1, keepdims=True)
        direction = np.divide(whitened, norms, out=np.zeros_like(whitened), where=norms > 0)
        return self.theta_hat - self.radius * (direction @ self.whitening)

    def dual_norm(self, vectors: Any) -> np.ndarray:
        """``||G v||_{M^{-1}}`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        coordinates = self.coordinates(vectors)
        if self.dimension == 0:  # a single point: no direction to move in
            return np.zeros(coordinates.shape[:-1])
        columns = np.reshape(coordinates, (-1, coordinates.shape[-1])).T  # (k, m), any leading axes
        whitened = scipy.linalg.solve_triangular(self.factor, columns, lower=True)
        return np.sqrt(np.sum(whitened**2, axis=0)).reshape(coordinates.shape[:-1])

    def _image_residual(self, theta: Any) -> tuple[np.ndarray, np.ndarray]:
        """``u = theta - theta_hat`` and its orthogonal projection onto ``range(basis)``."""
        _, off_span = self._span_coordinates(theta)
        residual = np.asarray(theta, dtype=float) - self.theta_hat
        return residual, residual - off_span

    def distance(self, theta: Any) -> float:
        """Smallest ``||w - center||_M`` over coordinates ``w`` that map to ``theta``'s projection
        onto the affine span ``offset + range(basis)``.

        This is the quantity compared with the radius; it equals ``sqrt(u^T (B M^{-1} B^T)^+ u)``
        (``u = theta - theta_hat``) but is computed in the set's ``k`` coordinates from the thin SVD
        ``B = U_r diag(s) V_r^T`` (:attr:`range_factors`): the coordinates ``w - center`` reaching
        the projection are those with ``V_r^T (w - center) = b = diag(s)^{-1} U_r^T u``. For an
        injective basis (``rho = k``) they are unique, ``w - center = V_r b`` (the least-squares
        coordinates), and the distance is ``||V_r b||_M``; otherwise (the RTV basis of a context
        has more columns than rows) the smallest ``M``-norm among them is
        ``sqrt(b^T (V_r^T M^{-1} V_r)^{-1} b)``, from a ``rho x rho`` system.
        """
        along, _ = self._span_coordinates(theta)
        return float(_coordinate_distances(self.range_factors, along[None], self.matrix[None],
                                           self.factor[None])[0])

    def contains(self, theta: Any, *, atol: float = 1e-9, project: bool = False) -> bool:
        """Whether ``theta`` is in the set.

        With ``project=True``, whether its projection onto the affine span
        ``offset + range(basis)`` is (coverage of the truth's projection for reduced sets);
        otherwise ``theta`` must also lie on that span within ``atol`` relative.
        """
        along, off_span = self._span_coordinates(theta)
        if not project and np.linalg.norm(off_span) > atol * max(1.0, np.linalg.norm(theta)):
            return False
        distance = _coordinate_distances(self.range_factors, along[None], self.matrix[None], self.factor[None])[0]
        return bool(_within(distance, self.radius))

    @staticmethod
    def batch_contains(sets: Sequence[Ellipsoid], thetas: Any, *, atol: float = 1e-9, project: bool = False
                       ) -> np.ndarray:
        """:meth:`contains` of ``thetas[i]`` in ``sets[i]`` for many sets at once (see
        :meth:`span_distances`).

        Parameters
        ----------
        sets : sequence of Ellipsoid or LowRankEllipsoid
        thetas : array_like, shape (len(sets), d)
        atol : float, default 1e-9
        project : bool, default False

        Returns
        -------
        ndarray of bool, shape (len(sets),)
        """
        distances, off_span = Ellipsoid.span_distances(sets, thetas)
        inside = _within(distances, np.array([item.radius for item in sets]))
        if not project:
            scale = np.maximum(1.0, np.linalg.norm(np.asarray(thetas, dtype=float), axis=1))
            inside &= np.linalg.norm(off_span, axis=1) <= atol * scale
        return inside

    @staticmethod
    def span_distances(sets: Sequence[Ellipsoid], thetas: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`distance` of ``thetas[i]`` to ``sets[i]`` for many sets at once, and the part
        of each ``thetas[i] - theta_hat_i`` off the set's span.

        Sets that share one ``basis`` array (every user's set of a user-indexed estimator) share
        one thin SVD of it, and their distances are computed together in their ``k``
        coordinates; no ``d x d`` matrix is formed and no per-set factorisation of size ``d``.

        Parameters
        ----------
        sets : sequence of Ellipsoid or LowRankEllipsoid
        thetas : array_like, shape (len(sets), d)

        Returns
        -------
        distances : ndarray, shape (len(sets),)
            The distance of each point's projection onto its set's affine span, as
            :meth:`distance`; ``theta`` is in the set's projection-coverage sense
            (``contains(theta, project=True)``) when it is at most the radius.
        off_span : ndarray, shape (len(sets), d)
            ``theta - offset - P (theta - offset)`` with ``P`` the orthogonal projector onto
            ``range(basis)``: ``theta`` minus its projection onto the affine span (zero for a
            full-dimensional set).
        """
        sets = list(sets)
        if not all(isinstance(item, ELLIPSOIDS) for item in sets):
            raise TypeError("sets must be a sequence of Ellipsoid or LowRankEllipsoid")
        thetas = as_real_array("thetas", thetas, (2,))
        if not sets:
            return np.zeros(0), np.zeros((0, thetas.shape[-1]))
        d = sets[0].n_features
        if thetas.shape != (len(sets), d) or any(item.n_features != d for item in sets):
            raise ValueError(f"thetas must have shape ({len(sets)}, d) matching the sets' d, got {thetas.shape}")
        distances = np.empty(len(sets))
        off_span = np.empty(thetas.shape)
        for members, factors in _groups_by_basis(sets):
            left = factors.left
            centres = np.stack([sets[i].center for i in members])
            offsets = np.stack([sets[i].offset for i in members])
            residual = thetas[members] - offsets - centres @ sets[members[0]].basis.T
            along = residual @ left
            off_span[members] = residual - along @ left.T
            if isinstance(sets[members[0]], LowRankEllipsoid):
                distances[members] = _low_rank_distances([sets[i] for i in members], factors, along)
                continue
            shared = all(_same_array(sets[i].matrix, sets[members[0]].matrix) for i in members[1:])
            for block in [range(len(members))] if shared else _blocks(len(members), sets[members[0]].dimension):
                chosen = [members[i] for i in block]
                matrices = _stacked([sets[i].matrix for i in chosen])
                cholesky = _stacked([sets[i].factor for i in chosen])
                distances[chosen] = _coordinate_distances(factors, along[block], matrices, cholesky)
        return distances, off_span

    @staticmethod
    def batch_dual_norm(sets: Sequence[Ellipsoid], vectors: Any) -> np.ndarray:
        """:meth:`dual_norm` of ``vectors[i]`` for ``sets[i]``, many sets at once.

        Sets sharing one ``basis`` array map their vectors to coordinates in one product; the
        triangular solves with each set's factor are batched (``O(k^2)`` per set), and sets
        sharing one factor (a pooled fit) take one solve for all.

        Parameters
        ----------
        sets : sequence of Ellipsoid or LowRankEllipsoid
        vectors : array_like, shape (len(sets), d)

        Returns
        -------
        ndarray, shape (len(sets),)
        """
        return Ellipsoid._batch_support(sets, vectors)[1]

    @staticmethod
    def batch_lower(sets: Sequence[Ellipsoid], vectors: Any) -> np.ndarray:
        """:meth:`lower` of ``vectors[i]`` for ``sets[i]``, many sets at once:
        ``offset . v + center . G v - radius ||G v||_{M^{-1}}``, from the coordinates ``G v`` of
        :meth:`batch_dual_norm` (no ``theta_hat`` in feature space per set).

        Parameters
        ----------
        sets : sequence of Ellipsoid or LowRankEllipsoid
        vectors : array_like, shape (len(sets), d)

        Returns
        -------
        ndarray, shape (len(sets),)
        """
        centre_values, dual_norms = Ellipsoid._batch_support(sets, vectors)
        return centre_values - np.array([item.radius for item in sets]) * dual_norms

    @staticmethod
    def _batch_support(sets: Sequence[Ellipsoid], vectors: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(theta_hat_i . v_i, ||G_i v_i||_{M_i^{-1}})`` for every set (see :meth:`batch_lower`)."""
        sets = list(sets)
        if not all(isinstance(item, ELLIPSOIDS) for item in sets):
            raise TypeError("sets must be a sequence of Ellipsoid or LowRankEllipsoid")
        vectors = as_real_array("vectors", vectors, (2,))
        if not sets:
            return np.zeros(0), np.zeros(0)
        if vectors.shape != (len(sets), sets[0].n_features):
            raise ValueError(f"vectors must have shape ({len(sets)}, d={sets[0].n_features}), got {vectors.shape}")
        centre_values = np.einsum("nd,nd->n", vectors, np.stack([item.offset for item in sets]))
        norms = np.zeros(len(sets))
        for members, _ in _groups_by_basis(sets, factor=False):
            basis = sets[members[0]].basis
            if basis.shape[1] == 0:
                continue
            coordinates = vectors[members] @ basis
            centre_values[members] += np.einsum("nk,nk->n", coordinates, np.stack([sets[i].center for i in members]))
            if isinstance(sets[members[0]], LowRankEllipsoid):  # through each set's n x n system
                group = [sets[i] for i in members]
                for block in _blocks_of_rows(group):
                    whitened = _low_rank_apply(*_stacked_rows([group[i] for i in block]), coordinates[block], root=True)
                    norms[[members[i] for i in block]] = np.linalg.norm(whitened, axis=-1)
                continue
            shared = all(_same_array(sets[i].factor, sets[members[0]].factor) for i in members[1:])
            for block in [range(len(members))] if shared else _blocks(len(members), basis.shape[1]):
                chosen = [members[i] for i in block]
                cholesky = _stacked([sets[i].factor for i in chosen])
                whitened = _lower_solve(cholesky, coordinates[block][..., None])
                norms[chosen] = np.linalg.norm(whitened[..., 0], axis=-1)
        return centre_values, norms


@dataclass(frozen=True, eq=False)
class LowRankEllipsoid(_CentredInBasis):
    """An ellipsoid whose matrix is low rank plus a ridge: ``C = {offset + basis @ w :
    ||w - center||_M <= radius}`` with ``M = A^T A + ridge I``, ``A`` of shape ``(n, k)``.

    The Fisher matrix of ``n`` comparisons in ``k`` coordinates plus the inference ridge has this
    form, and with fewer pairs than coordinates (``n < k``: a full-dimensional set of a user with
    a few dozen pairs) the ``k x k`` matrix, its Cholesky factor and their ``O(k^3)`` cost are
    avoided: every operation goes through the ``n x n`` system (Woodbury). The rows are stored
    as an equivalent factor ``P = Q^T A`` with orthogonal rows (``A A^T = Q diag(s2) Q^T``, so
    ``P^T P = A^T A`` and ``P P^T = diag(s2)``), from which

    - ``M^{-1} g = (g - P^T diag(1 / (s2 + ridge)) P g) / ridge``,
    - ``M^{-1/2} g = (g - P^T diag(c) P g) / sqrt(ridge)``, ``c = 1 / (s2 + ridge + sqrt(ridge (s2 + ridge)))``
      (the symmetric root: along a row direction it scales by ``1 / sqrt(s2 + ridge)``, elsewhere by
      ``1 / sqrt(ridge)``),

    in ``O(n k)`` per vector. The dual norm ``||G v||_{M^{-1}} = ||M^{-1/2} G v||`` is taken as the
    norm of the root, whose rounding error is relative ``eps sqrt(s2_max / ridge)`` (the root's
    condition number), not ``eps s2_max / ridge`` as a difference of quadratic forms would be.
    Otherwise the set is :class:`Ellipsoid` with ``matrix = A^T A + ridge I``, to rounding.

    Attributes
    ----------
    offset : ndarray, shape (d,)
    basis : ndarray, shape (d, k)
    center : ndarray, shape (k,)
    rows : ndarray, shape (n, k)
        ``A``, e.g. ``sqrt(beta^2 sigmoid'(eta_j)) B^T z_j`` for the pairs of a user; stored as ``P``.
    ridge : float
        ``> 0``.
    radius : float
    squared : ndarray, shape (n,)
        The squared norms ``s2`` of the stored rows (the eigenvalues of ``A A^T``).

    References
    ----------
    Woodbury, *Inverting modified matrices*, Memorandum Report 42, Princeton, 1950. Higham,
    *Functions of Matrices*, SIAM 2008, ch. 6 (square roots).
    """

    offset: np.ndarray
    basis: np.ndarray
    center: np.ndarray
    rows: np.ndarray
    ridge: float
    radius: float

    def __post_init__(self) -> None:
        offset = as_real_array("offset", self.offset, (1,))
        basis = _real_matrix("basis", self.basis)
        center = as_real_array("center", self.center, (1,))
        rows = _real_matrix("rows", self.rows)
        d, k = basis.shape
        if offset.shape != (d,):
            raise ValueError(f"offset must have shape ({d},) to match basis {basis.shape}, got {offset.shape}")
        if center.shape != (k,) or rows.shape[1] != k:
            raise ValueError(f"center must have shape ({k},) and rows (n, {k}) to match basis {basis.shape}, "
                             f"got {center.shape} and {rows.shape}")
        ridge = check_real("ridge", self.ridge, 0.0, strict_minimum=True)
        radius = check_real("radius", self.radius, 0.0)
        squared, directions = np.linalg.eigh(rows @ rows.T)  # A A^T = Q diag(s2) Q^T, n x n
        set_ = object.__setattr__
        set_(self, "offset", frozen(offset))
        set_(self, "basis", frozen(basis))
        set_(self, "center", frozen(center))
        set_(self, "rows", frozen(directions.T @ rows))
        set_(self, "ridge", ridge)
        set_(self, "radius", radius)
        # Rounding can leave an eigenvalue of the Gram matrix slightly negative; it is 0.
        set_(self, "squared", frozen(np.maximum(squared, 0.0)))

    @property
    def matrix(self) -> np.ndarray:
        """``M = A^T A + ridge I``, ``(k, k)``: formed on each access (for checks and small sets)."""
        return _symmetric_matrix(self.rows.T @ self.rows + self.ridge * np.eye(self.dimension))

    def inverse_root(self, coordinates: np.ndarray) -> np.ndarray:
        """``M^{-1/2} g`` for ``g`` of shape ``(..., k)`` (symmetric: also its adjoint)."""
        return _low_rank_apply(self.rows[None], self.squared[None], np.array([self.ridge]), coordinates, root=True)

    def inverse(self, coordinates: np.ndarray) -> np.ndarray:
        """``M^{-1} g`` for ``g`` of shape ``(..., k)``."""
        return _low_rank_apply(self.rows[None], self.squared[None], np.array([self.ridge]), coordinates, root=False)

    def dual_norm(self, vectors: Any) -> np.ndarray:
        """``||G v||_{M^{-1}}`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        return np.linalg.norm(self.inverse_root(self.coordinates(vectors)), axis=-1)


    def minimizer(self, vectors: Any) -> np.ndarray:
        """``theta_hat - radius B M^{-1} G v / ||G v||_{M^{-1}}`` (``theta_hat`` where ``G v = 0``)."""
        coordinates = self.coordinates(vectors)
        steps = self.inverse(coordinates)
        norms = np.sqrt(np.maximum(np.sum(coordinates * steps, axis=-1, keepdims=True), 0.0))
        direction = np.divide(steps, norms, out=np.zeros_like(steps), where=norms > 0)
        return self.theta_hat - self.radius * (direction @ self.basis.T)

    def seminorms(self) -> tuple[Seminorm, ...]:
        """One term, ``K = M^{-1/2} G`` applied through the ``n x n`` system (never ``k x k``)."""
        return (_InverseRootSeminorm(self.radius, self),)

    def distance(self, theta: Any) -> float:
        """As :meth:`Ellipsoid.distance`: for an injective basis ``||x||_M`` of the coordinates
        ``x`` of the projection, ``sqrt(||A x||^2 + ridge ||x||^2)``; otherwise
        ``sqrt(b^T (V_r^T M^{-1} V_r)^{-1} b)`` with ``M^{-1} V_r`` through the ``n x n`` system."""
        along, _ = self._span_coordinates(theta)
        return float(_low_rank_distances([self], self.range_factors, along[None])[0])

    def contains(self, theta: Any, *, atol: float = 1e-9, project: bool = False) -> bool:
        """As :meth:`Ellipsoid.contains`."""
        along, off_span = self._span_coordinates(theta)
        if not project and np.linalg.norm(off_span) > atol * max(1.0, np.linalg.norm(theta)):
            return False
        distance = _low_rank_distances([self], self.range_factors, along[None])[0]
        return bool(_within(distance, self.radius))


@dataclass(frozen=True, eq=False)
class _InverseRootSeminorm(Seminorm):
    """``radius ||M^{-1/2} G v||`` of a :class:`LowRankEllipsoid` (``K = M^{-1/2} B^T``, ``k`` coordinates)."""

    radius: float
    owner: LowRankEllipsoid

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        return self.owner.inverse_root(self.owner.coordinates(vectors))

    def adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        return self.owner.inverse_root(np.asarray(coordinates, dtype=float)) @ self.owner.basis.T


#: The ellipsoid kinds whose set operations are batched in their own coordinates
#: (:meth:`Ellipsoid.span_distances`, :meth:`Ellipsoid.batch_dual_norm`, :meth:`Ellipsoid.batch_lower`).
ELLIPSOIDS = (Ellipsoid, LowRankEllipsoid)


def _symmetric_matrix(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)


def _low_rank_apply(rows: np.ndarray, squared: np.ndarray, ridges: np.ndarray, coordinates: np.ndarray,
                    root: bool) -> np.ndarray:
    """``M_i^{-1/2} g_i`` (``root``) or ``M_i^{-1} g_i`` for ``M_i = P_i^T P_i + ridge_i I`` with
    stacked orthogonal-row factors ``P`` ``(m or 1, n, k)``, their squared norms ``(m or 1, n)``
    and ridges ``(m or 1,)``; ``g`` of shape ``(m, k)`` (or, with one set, ``(..., k)``)."""
    coordinates = np.asarray(coordinates, dtype=float)
    total = squared + ridges[:, None]
    if root:
        weights = 1.0 / (total + np.sqrt(ridges[:, None] * total))
        scale = 1.0 / np.sqrt(ridges)
    else:
        weights = 1.0 / total
        scale = 1.0 / ridges
    if rows.shape[0] == 1:  # one set, any leading axes
        projected = (coordinates @ rows[0].T) * weights[0]
        return (coordinates - projected @ rows[0]) * scale[0]
    projected = np.einsum("mk,mnk->mn", coordinates, rows) * weights
    return (coordinates - np.einsum("mn,mnk->mk", projected, rows)) * scale[:, None]


def _low_rank_distances(sets: Sequence[LowRankEllipsoid], factors: RangeFactors, along: np.ndarray) -> np.ndarray:
    """:meth:`LowRankEllipsoid.distance` of ``m`` sets sharing one basis (its thin SVD ``factors``)
    from the span coordinates ``U_r^T u`` ``(m, rho)``."""
    k = sets[0].dimension
    rank = factors.singular.shape[0]
    if rank == 0:
        return np.zeros(along.shape[0])
    target = along / factors.singular  # V_r^T (w - center)
    distances = np.empty(along.shape[0])
    for block in _blocks_of_rows(sets):
        rows, squared, ridges = _stacked_rows([sets[i] for i in block])
        if rank == k:  # injective: ||x||_M^2 = ||P x||^2 + ridge ||x||^2 with x = V_r b
            steps = target[block] if factors.right is None else target[block] @ factors.right.T
            projected = np.einsum("mk,mnk->mn", steps, rows)
            squared_norms = np.sum(projected**2, axis=1) + ridges * np.sum(steps**2, axis=1)
        else:  # min ||x||_M subject to V_r^T x = b: b^T (V_r^T M^{-1} V_r)^{-1} b, a rho x rho system per set
            squared_norms = np.empty(len(block))
            for row, index in enumerate(block):
                inverse = sets[index].inverse(factors.right.T).T  # M^{-1} V_r, (k, rho)
                gram = factors.right.T @ inverse
                squared_norms[row] = target[index] @ np.linalg.solve(gram, target[index])
        distances[block] = np.sqrt(np.maximum(squared_norms, 0.0))
    return distances


def _blocks_of_rows(sets: Sequence[LowRankEllipsoid]) -> list[list[int]]:
    """Consecutive index blocks whose stacked factors ``(m, n_max, k)`` fit in :data:`_BLOCK_ENTRIES`."""
    per_set = max(1, max(item.rows.size for item in sets))
    size = max(1, _BLOCK_ENTRIES // per_set)
    return [list(range(start, min(start + size, len(sets)))) for start in range(0, len(sets), size)]


def _stacked_rows(sets: Sequence[LowRankEllipsoid]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The factors ``(m, n_max, k)``, squared row norms ``(m, n_max)`` and ridges ``(m,)`` of sets
    sharing ``k``, padded with zero rows (which change no ``M``)."""
    n_max = max(item.rows.shape[0] for item in sets)
    k = sets[0].dimension
    rows = np.zeros((len(sets), n_max, k))
    squared = np.zeros((len(sets), n_max))
    for index, item in enumerate(sets):
        rows[index, :item.rows.shape[0]] = item.rows
        squared[index, :item.rows.shape[0]] = item.squared
    return rows, squared, np.array([item.ridge for item in sets])


def _real_matrix(name: str, value: Any) -> np.ndarray:
    """:func:`~lr_mdp_env._validation.as_real_array` for a matrix, with a one-pass test first:
    every user's set of an estimator shares its basis (and a pooled fit its matrix), ``d x k``
    entries checked again for each set. A float64 matrix whose sum is finite has only finite
    entries; anything else gets the full check and its message. A read-only matrix that passed
    once (an estimator's basis, frozen when fitted, handed to each of its users' sets) is not
    scanned again: with a thousand users at ``d = 2000`` the scans alone took seconds. Read-only
    means immutable (:func:`~lr_mdp_env._validation.is_immutable`): a read-only view of a writable
    array can still change, and is scanned every time."""
    if isinstance(value, np.ndarray) and _VETTED.get(id(value)) is value and is_immutable(value):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim == 2 and np.isfinite(value.sum()):
        if is_immutable(value):
            _VETTED[id(value)] = value
        return value
    return as_real_array(name, value, (2,))


# Immutable matrices that passed :func:`_real_matrix`, by identity (dropped with the array).
_VETTED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def _within(distance: Any, radius: Any) -> Any:
    """Membership rule: ``distance <= radius`` up to rounding of the distance."""
    return distance <= radius * (1 + 1e-12) + 1e-12


class RangeFactors(NamedTuple):
    """``basis = left diag(singular) right^T`` cut at the numerical rank (see
    :attr:`Ellipsoid.range_factors`); ``right`` is ``None`` for the identity (orthonormal columns)."""

    left: np.ndarray
    singular: np.ndarray
    right: np.ndarray | None


# Columns whose Gram matrix is the identity within this are treated as exactly orthonormal.
_ORTHONORMAL_TOL = 1e-10


def _range_factors(basis: np.ndarray) -> RangeFactors:
    """See :attr:`Ellipsoid.range_factors`."""
    d, k = basis.shape
    if k == 0 or d == 0:
        return RangeFactors(np.zeros((d, 0)), np.zeros(0), np.zeros((k, 0)))
    if k <= d:
        gram = basis.T @ basis
        gram[np.diag_indices(k)] -= 1.0
        if np.max(np.abs(gram)) <= _ORTHONORMAL_TOL:
            return RangeFactors(basis, np.ones(k), None)
    left, singular, right_t = np.linalg.svd(basis, full_matrices=False)
    rank = int(np.count_nonzero(singular > max(d, k) * np.finfo(float).eps * singular[0]))
    return RangeFactors(left[:, :rank], singular[:rank], right_t[:rank].T)


def _coordinate_distances(factors: RangeFactors, along: np.ndarray, matrices: np.ndarray, cholesky: np.ndarray
                          ) -> np.ndarray:
    """Distances of :meth:`Ellipsoid.distance` from the span coordinates ``U_r^T u`` of ``m``
    residuals ``(m, rho)``, with the sets' matrices and Cholesky factors ``(m or 1, k, k)``."""
    k = matrices.shape[-1]
    rank = factors.singular.shape[0]
    if rank == 0:  # a point, or a zero basis: the projection is the centre itself
        return np.zeros(along.shape[0])
    target = along / factors.singular  # V_r^T (w - center)
    if rank == k:  # injective: w - center = V_r b, its M-norm directly
        steps = target if factors.right is None else target @ factors.right.T
        if matrices.shape[0] == 1:  # one matrix for all (a pooled fit): one product
            squared = np.sum((steps @ matrices[0]) * steps, axis=-1)
        else:
            squared = np.sum((steps[:, None, :] @ matrices)[:, 0] * steps, axis=-1)
    else:  # min ||x||_M subject to V_r^T x = b: b^T (V_r^T M^{-1} V_r)^{-1} b
        whitened = _lower_solve(cholesky, factors.right[None])  # L^{-1} V_r, (m, k, rho)
        gram = np.swapaxes(whitened, -1, -2) @ whitened  # V_r^T M^{-1} V_r, (m, rho, rho)
        gram = np.broadcast_to(gram, (target.shape[0], rank, rank))
        squared = np.einsum("mi,mi->m", target, np.linalg.solve(gram, target[..., None])[..., 0])
    return np.sqrt(np.maximum(squared, 0.0))


def _lower_solve(cholesky: np.ndarray, right_hand: np.ndarray) -> np.ndarray:
    """``L_i^{-1} X_i`` for stacked lower factors ``(m, k, k)`` (or one, ``(1, k, k)``) and
    right-hand sides ``(m, k, j)`` (or one shared, ``(1, k, j)``): shape ``(m, k, j)``."""
    if cholesky.shape[0] == 1:  # one factor: one triangular solve for every right-hand side
        m, k, j = right_hand.shape
        columns = np.moveaxis(right_hand, 0, 1).reshape(k, m * j)
        solved = scipy.linalg.solve_triangular(cholesky[0], columns, lower=True, check_finite=False)
        return np.moveaxis(solved.reshape(k, m, j), 1, 0)
    return np.linalg.solve(cholesky, np.broadcast_to(right_hand, (cholesky.shape[0],) + right_hand.shape[1:]))


# Sets of up to this many coordinates are stacked into batched numpy calls; larger ones one by one.
_BATCHED_K_MAX = 64
# Stacked blocks hold at most this many matrix entries (a few tens of MB).
_BLOCK_ENTRIES = 2**22


def _blocks(n: int, k: int) -> list[range]:
    """Consecutive index blocks whose stacked ``k x k`` matrices fit in :data:`_BLOCK_ENTRIES`."""
    size = n if k <= _BATCHED_K_MAX else 1
    size = max(1, min(size, _BLOCK_ENTRIES // max(1, k * k)))
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """``(m, k, k)`` from the sets' matrices, ``(1, k, k)`` when all are one array (a pooled fit)."""
    first = arrays[0]
    if all(_same_array(item, first) for item in arrays[1:]):
        return first[None]
    return np.stack(arrays)


def _same_array(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two arrays are views of the same memory with the same layout."""
    return (first.shape == second.shape and first.strides == second.strides
            and first.__array_interface__["data"][0] == second.__array_interface__["data"][0])


def _groups_by_basis(sets: list[Ellipsoid], factor: bool = True
                     ) -> list[tuple[list[int], tuple[np.ndarray, np.ndarray, np.ndarray] | None]]:
    """Indices of the sets sharing one basis array, with that basis's thin SVD (once per group)."""
    groups: dict[tuple, list[int]] = {}
    for index, item in enumerate(sets):
        basis = item.basis
        key = (type(item), basis.__array_interface__["data"][0], basis.shape, basis.strides)
        groups.setdefault(key, []).append(index)
    result = []
    for members in groups.values():
        first = sets[members[0]]
        factors = None
        if factor:
            # One SVD per shared basis, kept on the first set so that later calls reuse it.
            factors = first.range_factors
            for index in members[1:]:
                sets[index].__dict__.setdefault("range_factors", factors)
        result.append((members, factors))
    return result
