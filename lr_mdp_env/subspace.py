"""Distances between subspaces."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_real_array


def orthonormal_basis(matrix: np.ndarray, name: str = "matrix") -> np.ndarray:
    """Orthonormal basis of the column space of ``matrix`` (rank-revealing, via the SVD)."""
    left, singular, _ = np.linalg.svd(matrix, full_matrices=False)
    tolerance = max(matrix.shape) * np.finfo(float).eps * (singular[0] if singular.size else 0.0)
    rank = int(np.sum(singular > tolerance))
    if rank == 0:
        raise ValueError(f"{name} has no column space: it is zero")
    return left[:, :rank]


def principal_angle_distance(subspace: Any, estimate: Any) -> float:
    """``sin`` of the largest principal angle from ``span(subspace)`` to ``span(estimate)``.

    ``||(I - Q Q^T) Q_hat||_2`` with ``Q`` and ``Q_hat`` orthonormal bases of the two column
    spaces (docs/theory.md). It is 0 when ``span(estimate)`` lies in ``span(subspace)`` and 1 when
    some direction of the estimate is orthogonal to it; for spaces of equal dimension it is
    symmetric and equals ``||Q Q^T - Q_hat Q_hat^T||_2``. The columns need not be orthonormal.

    Parameters
    ----------
    subspace : array_like, shape (d, r)
        The reference (for instance the true ``U*``).
    estimate : array_like, shape (d, r_hat)

    Returns
    -------
    float in [0, 1]

    References
    ----------
    Golub and Van Loan, *Matrix Computations*, 4th ed., section 6.4.3.
    """
    subspace = as_real_array("subspace", subspace, (1, 2))
    estimate = as_real_array("estimate", estimate, (1, 2))
    subspace = subspace[:, None] if subspace.ndim == 1 else subspace
    estimate = estimate[:, None] if estimate.ndim == 1 else estimate
    if subspace.shape[0] != estimate.shape[0]:
        raise ValueError(
            f"subspace and estimate must live in the same space, got {subspace.shape[0]} and "
            f"{estimate.shape[0]} rows"
        )
    basis = orthonormal_basis(subspace, "subspace")
    estimate_basis = orthonormal_basis(estimate, "estimate")
    residual = estimate_basis - basis @ (basis.T @ estimate_basis)
    return float(min(1.0, np.linalg.norm(residual, 2)))
