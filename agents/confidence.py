"""Ellipsoidal confidence sets for reward parameters and their two radii.

The radii are formulas of the theory, implemented once in :mod:`lr_mdp_env.theory` and
re-exported here: :func:`wald_radius` (asymptotic, chi-square quantile) and :func:`theory_radius`
(finite-sample, self-normalised, with the ``1 / gamma`` curvature factor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lr_mdp_env._validation import as_real_array, check_real, frozen
from lr_mdp_env.theory import theory_radius, wald_radius

__all__ = ["Ellipsoid", "theory_radius", "wald_radius"]


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """The set ``C = {offset + basis @ w : ||w - center||_matrix <= radius}`` (DESIGN.md 2.1).

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

    def contains(self, theta: Any, *, project: bool = False, atol: float = 1e-9) -> bool:
        """Whether ``theta`` is in the set.

        With ``project=True``, whether its projection onto the affine span
        ``offset + range(basis)`` is (coverage of the truth's projection for reduced sets);
        otherwise ``theta`` must also lie on that span within ``atol`` relative.
        """
        residual, in_range = self._image_residual(theta)
        if not project and np.linalg.norm(residual - in_range) > atol * max(1.0, np.linalg.norm(theta)):
            return False
        return self.distance(theta) <= self.radius * (1 + 1e-12) + 1e-12
