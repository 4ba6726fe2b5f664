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
only improves conditioning. ``F`` is minimised from a spectral start by a trust-region Newton
method with exact Hessian-vector products (``scipy.optimize.minimize(method="trust-krylov")``),
which handles the indefinite Hessian of the factorisation and converges quadratically.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from .logistic import ConvergenceWarning, fit_logistic


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
        ``gradient_norm`` divided by ``||grad F||`` at the spectral start: the stationarity
        certificate.
    iterations : int
    converged : bool
    """

    left: np.ndarray
    right: np.ndarray
    objective: float
    gradient_norm: float
    relative_gradient_norm: float
    iterations: int
    converged: bool

    @property
    def matrix(self) -> np.ndarray:
        """``A B^T``, shape ``(d_x, d)``."""
        return self.left @ self.right.T


class _Bilinear:
    """Objective, gradient and Hessian-vector products of ``F`` on a flat parameter vector."""

    def __init__(self, contexts, features, labels, offsets, beta, ridge, balance, rank):
        self.contexts = contexts  # (n, d_x), dense or sparse
        self.features = features  # (n, d), dense or sparse
        self.contexts_t = contexts.T.tocsr() if scipy.sparse.issparse(contexts) else contexts.T
        self.features_t = features.T.tocsr() if scipy.sparse.issparse(features) else features.T
        self.labels, self.offsets = labels, offsets
        self.beta, self.ridge, self.balance, self.rank = beta, ridge, balance, rank
        self.left_size = contexts.shape[1] * rank
        self._cached_point: np.ndarray | None = None
        self._cached_state: tuple = ()

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left = flat[: self.left_size].reshape(-1, self.rank)
        return left, flat[self.left_size:].reshape(-1, self.rank)

    def _state(self, flat: np.ndarray):
        # The optimiser asks for the value, then several Hessian-vector products, at one point:
        # the projections through the data are computed once per point.
        if self._cached_point is not None and np.array_equal(flat, self._cached_point):
            return self._cached_state
        left, right = self.split(flat)
        projected_contexts = np.asarray(self.contexts @ left)
        projected_features = np.asarray(self.features @ right)
        eta = self.offsets + self.beta * np.sum(projected_contexts * projected_features, axis=1)
        self._cached_point = flat.copy()
        self._cached_state = (left, right, projected_contexts, projected_features, eta)
        return self._cached_state

    def value_and_gradient(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        left, right, pc, pf, eta = self._state(flat)
        imbalance = left.T @ left - right.T @ right
        value = (np.sum(-log_expit(eta) + (1 - self.labels) * eta)
                 + 0.5 * self.ridge * (np.sum(left**2) + np.sum(right**2))
                 + 0.25 * self.balance * np.sum(imbalance**2))
        residual = self.beta * (expit(eta) - self.labels)
        grad_left = self.contexts_t @ (residual[:, None] * pf) + self.ridge * left + self.balance * left @ imbalance
        grad_right = self.features_t @ (residual[:, None] * pc) + self.ridge * right - self.balance * right @ imbalance
        return float(value), np.concatenate([np.ravel(grad_left), np.ravel(grad_right)])

    def hessian_vector(self, flat: np.ndarray, direction: np.ndarray) -> np.ndarray:
        left, right, pc, pf, eta = self._state(flat)
        d_left, d_right = self.split(direction)
        d_pc = np.asarray(self.contexts @ d_left)
        d_pf = np.asarray(self.features @ d_right)
        d_eta = self.beta * np.sum(d_pc * pf + pc * d_pf, axis=1)
        curvature = self.beta * expit(eta) * expit(-eta) * d_eta
        residual = self.beta * (expit(eta) - self.labels)
        imbalance = left.T @ left - right.T @ right
        d_imbalance = d_left.T @ left + left.T @ d_left - d_right.T @ right - right.T @ d_right
        h_left = (self.contexts_t @ (curvature[:, None] * pf + residual[:, None] * d_pf)
                  + self.ridge * d_left + self.balance * (d_left @ imbalance + left @ d_imbalance))
        h_right = (self.features_t @ (curvature[:, None] * pc + residual[:, None] * d_pc)
                   + self.ridge * d_right - self.balance * (d_right @ imbalance + right @ d_imbalance))
        return np.concatenate([np.ravel(h_left), np.ravel(h_right)])


def fit_factored(
    contexts: Any,
    features: Any,
    labels: np.ndarray,
    rank: int,
    *,
    initial: tuple[np.ndarray, np.ndarray],
    offsets: np.ndarray | None = None,
    beta: float = 1.0,
    ridge: float = 1.0,
    balance: float = 0.0,
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
    initial : (ndarray (d_x, r), ndarray (d, r))
        Starting factors, e.g. from a spectral initialisation.
    offsets : ndarray, shape (n,), optional
    beta, ridge, balance : float
        ``beta``, ``lambda > 0`` and ``mu >= 0``.
    tol : float, default 1e-8
        Stop when ``||grad F|| <= tol * ||grad F(A_0, B_0)||``.
    max_iter : int, default 500

    Returns
    -------
    FactoredFit
    """
    n = labels.shape[0]
    offsets = np.zeros(n) if offsets is None else offsets
    problem = _Bilinear(contexts, features, labels, offsets, beta, ridge, balance, rank)
    start = np.concatenate([np.ravel(initial[0]), np.ravel(initial[1])]).astype(float)
    _, start_gradient = problem.value_and_gradient(start)
    scale = max(float(np.linalg.norm(start_gradient)), 1e-12)
    point, iterations = start, 0
    # trust-krylov stops when its model stops predicting progress, which can happen far from
    # the tolerance on hard (nearly separable) data; restarting resets its trust radius.
    for _ in range(5):
        result = minimize(
            problem.value_and_gradient,
            point,
            jac=True,
            hessp=problem.hessian_vector,
            method="trust-krylov",
            options={"gtol": tol * scale, "maxiter": max_iter - iterations},
        )
        point, iterations = result.x, iterations + int(result.nit)
        value, gradient = problem.value_and_gradient(point)
        gradient_norm = float(np.linalg.norm(gradient))
        if gradient_norm <= tol * scale * (1 + 1e-6) or iterations >= max_iter:
            break
    converged = gradient_norm <= tol * scale * (1 + 1e-6)
    if not converged:
        warnings.warn(
            f"factored logistic fit stopped after {iterations} iterations with relative gradient "
            f"norm {gradient_norm / scale:.3g} > tol={tol} ({result.message})",
            ConvergenceWarning,
            stacklevel=2,
        )
    left, right = problem.split(point)
    return FactoredFit(
        left=left.copy(),
        right=right.copy(),
        objective=value,
        gradient_norm=gradient_norm,
        relative_gradient_norm=gradient_norm / scale,
        iterations=iterations,
        converged=bool(converged),
    )


def spectral_start(contexts: Any, features: Any, labels: np.ndarray, offsets: np.ndarray, rank: int,
                   beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Spectral initialisation of ``(A, B)`` from the moment matrix ``sum_j (y_j - 1/2) x_j z_j^T``.

    The moments are scaled per feature by the diagonal of the average Hessian at zero
    (``sigmoid'(0) = 1/4``), truncated to rank ``r``, and the overall scale ``c`` of the truncation
    ``T`` is fitted by a one-dimensional logistic regression on ``x_j^T T z_j``; the start is the
    balanced factorisation of ``c T``.
    """
    weights = labels - 0.5
    weighted = contexts.multiply(weights[:, None]).tocsr() if scipy.sparse.issparse(contexts) \
        else contexts * weights[:, None]
    moments = weighted.T @ features
    moments = moments.toarray() if scipy.sparse.issparse(moments) else np.asarray(moments)
    energy = features.multiply(features).sum(axis=0) if scipy.sparse.issparse(features) else np.sum(features**2, axis=0)
    pairs_per_context = labels.shape[0] / contexts.shape[1]
    precondition = beta**2 * np.asarray(energy).ravel() / (4 * contexts.shape[1] * max(pairs_per_context, 1.0)) + 1.0
    left, singular, right_t = np.linalg.svd(moments / precondition, full_matrices=False)
    truncated = (left[:, :rank] * singular[:rank]) @ right_t[:rank]
    projected = np.asarray(contexts @ truncated)
    direction = np.asarray(features.multiply(projected).sum(axis=1)).ravel() if scipy.sparse.issparse(features) \
        else np.sum(features * projected, axis=1)
    scale = fit_logistic(direction[:, None], labels, offsets=offsets, beta=beta, ridge=1e-6, tol=1e-8).theta[0, 0]
    return balanced_factors(max(scale, 1e-3) * truncated, rank)


def balanced_factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectral start: ``A = P sqrt(S)``, ``B = Q sqrt(S)`` from the top-``r`` SVD ``P S Q^T``."""
    left, singular, right_t = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(singular[:rank])
    return left[:, :rank] * root, right_t[:rank].T * root
