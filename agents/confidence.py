"""Confidence sets of reward parameters: the set protocol, ellipsoids and their radii (likelihood-ratio
sets, :class:`agents.LikelihoodRatioSet`, are in :mod:`agents.likelihood_set`).

Every set an agent plans against implements one small protocol, :class:`ConfidenceSet`: the
support function ``lower(v) = min_{theta in C} theta . v`` (and ``upper``, ``width``), the
minimiser of ``theta . v`` over the set, membership, and a member ``theta_hat``. The planners of
:mod:`agents.planning` and the checks of :func:`agents.check_agent` use nothing else, so a
user's own convex set plugs in by subclassing :class:`ConfidenceSet`. Sets whose support
function is a centre minus a sum of scaled seminorms also describe that structure
(:meth:`ConfidenceSet.seminorms`), which the exact planner exploits.

The radii are formulas of the theory, implemented once in :mod:`lr_mdp_env.theory` and
re-exported here: :func:`wald_radius` (asymptotic, chi-square quantile) and :func:`theory_radius`
(finite-sample, self-normalised, with the ``1 / gamma`` curvature factor).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg

from lr_mdp_env._validation import as_real_array, check_real, frozen
from lr_mdp_env.theory import theory_radius, wald_radius

__all__ = [
    "ComplementSeminorm",
    "ConfidenceSet",
    "Ellipsoid",
    "LinearSeminorm",
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


@dataclass(frozen=True, eq=False)
class LinearSeminorm(Seminorm):
    """``radius ||K v||`` with an explicit matrix ``K`` of shape ``(m, d)``."""

    radius: float
    matrix: np.ndarray

    def whiten(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=float) @ self.matrix.T

    def adjoint(self, coordinates: np.ndarray) -> np.ndarray:
        return np.asarray(coordinates, dtype=float) @ self.matrix


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
        """A member ``theta`` attaining ``lower(v)``: shape ``(d,)`` or ``(..., d)``."""

    @abstractmethod
    def contains(self, theta: Any, *, atol: float = 1e-9) -> bool:
        """Whether ``theta`` lies in the set (up to a relative tolerance ``atol``)."""

    def seminorms(self) -> tuple[Seminorm, ...] | None:
        """The structure ``C = {theta_hat + sum_j K_j^T z_j : ||z_j|| <= radius_j}``, when the set
        has it (ellipsoids, sums of ellipsoids and balls), else ``None``."""
        return None


@dataclass(frozen=True, eq=False)
class Ellipsoid(ConfidenceSet):
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
        sets is factored once); otherwise ``matrix`` is checked and factored here.
    """

    offset: np.ndarray
    basis: np.ndarray
    center: np.ndarray
    matrix: np.ndarray
    radius: float
    factor: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        offset = as_real_array("offset", self.offset, (1,))
        basis = as_real_array("basis", self.basis, (2,))
        center = as_real_array("center", self.center, (1,))
        matrix = as_real_array("matrix", self.matrix, (2,))
        d, k = basis.shape
        if offset.shape != (d,):
            raise ValueError(f"offset must have shape ({d},) to match basis {basis.shape}, got {offset.shape}")
        if center.shape != (k,) or matrix.shape != (k, k):
            raise ValueError(
                f"center must have shape ({k},) and matrix ({k}, {k}) to match basis {basis.shape}, "
                f"got {center.shape} and {matrix.shape}"
            )
        if self.factor is not None:
            # Many sets share one matrix (every context of a contextual estimator): its owner
            # factors it once and vouches for it.
            cholesky = as_real_array("factor", self.factor, (2,))
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
    def checked_factor(matrix: np.ndarray) -> np.ndarray:
        """The lower Cholesky factor of ``matrix``, after checking that it is symmetric positive
        definite (the check every set without a given ``factor`` makes).

        Raises
        ------
        ValueError
            If ``matrix`` is not symmetric or not positive definite.
        """
        if not np.allclose(matrix, matrix.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(matrix).max(initial=0.0))):
            raise ValueError("matrix must be symmetric")
        try:
            return np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise ValueError("matrix must be positive definite") from None

    @property
    def dimension(self) -> int:
        """``k``, the number of free coordinates."""
        return self.basis.shape[1]

    @property
    def n_features(self) -> int:
        return self.basis.shape[0]

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

    @property
    def theta_hat(self) -> np.ndarray:
        """The centre in feature space, ``offset + basis @ center``."""
        return self.offset + self.basis @ self.center

    def coordinates(self, vectors: Any) -> np.ndarray:
        """``G v = basis^T v`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        return np.asarray(vectors, dtype=float) @ self.basis

    def dual_norm(self, vectors: Any) -> np.ndarray:
        """``||G v||_{M^{-1}}`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        coordinates = self.coordinates(vectors)
        if self.dimension == 0:  # a single point: no direction to move in
            return np.zeros(coordinates.shape[:-1])
        # Columns (k, m) for any number of leading axes: solve treats a 3-D right-hand side as a batch.
        columns = np.reshape(coordinates, (-1, coordinates.shape[-1])).T
        whitened = np.linalg.solve(self.factor, columns)
        return np.sqrt(np.sum(whitened**2, axis=0)).reshape(coordinates.shape[:-1])

    def lower(self, vectors: Any) -> np.ndarray | float:
        """``min_{theta in C} theta . v`` in closed form: ``theta_hat . v - radius ||G v||_{M^{-1}}``."""
        value = np.asarray(vectors, dtype=float) @ self.theta_hat - self.radius * self.dual_norm(vectors)
        return float(value) if np.ndim(value) == 0 else value

    def upper(self, vectors: Any) -> np.ndarray | float:
        """``max_{theta in C} theta . v = theta_hat . v + radius ||G v||_{M^{-1}}``."""
        value = np.asarray(vectors, dtype=float) @ self.theta_hat + self.radius * self.dual_norm(vectors)
        return float(value) if np.ndim(value) == 0 else value

    def _image_residual(self, theta: Any) -> tuple[np.ndarray, np.ndarray]:
        """``u = theta - theta_hat`` and its least-squares part in ``range(basis)``."""
        theta = as_real_array("theta", theta, (1,))
        if theta.shape != self.offset.shape:
            raise ValueError(f"theta must have shape {self.offset.shape}, got {theta.shape}")
        residual = theta - self.theta_hat
        if self.dimension == 0:
            return residual, np.zeros_like(residual)
        in_range = self.basis @ np.linalg.lstsq(self.basis, residual, rcond=None)[0]
        return residual, in_range

    def distance(self, theta: Any) -> float:
        """Smallest ``||w - center||_M`` over coordinates ``w`` that map to ``theta``'s projection
        onto the affine span ``offset + range(basis)``: ``sqrt(u^T (B M^{-1} B^T)^+ u)``.

        This is the quantity compared with the radius; it is correct also when ``basis`` is not
        injective (the RTV basis of a context has more columns than rows).
        """
        _, in_range = self._image_residual(theta)
        if self.dimension == 0:  # the projection onto a point is the point itself
            return 0.0
        whitened_basis = np.linalg.solve(self.factor, self.basis.T)  # L^{-1} B^T, M = L L^T
        image = whitened_basis.T @ whitened_basis  # B M^{-1} B^T
        return float(np.sqrt(max(in_range @ np.linalg.pinv(image, hermitian=True) @ in_range, 0.0)))

    def contains(self, theta: Any, *, atol: float = 1e-9, project: bool = False) -> bool:
        """Whether ``theta`` is in the set.

        With ``project=True``, whether its projection onto the affine span
        ``offset + range(basis)`` is (coverage of the truth's projection for reduced sets);
        otherwise ``theta`` must also lie on that span within ``atol`` relative.
        """
        residual, in_range = self._image_residual(theta)
        if not project and np.linalg.norm(residual - in_range) > atol * max(1.0, np.linalg.norm(theta)):
            return False
        return self.distance(theta) <= self.radius * (1 + 1e-12) + 1e-12
