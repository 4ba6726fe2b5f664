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
``Z dB`` and one pass ``Z^T (.)`` over the features; the line search reuses ``Z dB`` and needs no
pass. Between steps the factors are rebalanced (``A B^T`` kept, ``A^T A = B^T B`` made exact),
which lowers ``F`` (the balanced factorisation has the smallest ridge and no imbalance) and removes
the directions in which ``F`` is nearly flat. Where the Newton direction is not a descent
direction (far from a minimum the Hessian of the factorisation is indefinite), conjugate gradients
stop at the first direction of negative curvature and, failing that, the step falls back to the
block-preconditioned gradient.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
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
        Newton steps.
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


class _Bilinear:
    """``F``, its gradient and the pieces of its Newton system at a point ``(A, B)``.

    Data enter only through the projections ``p_j = A^T x_j`` (contexts side) and
    ``q_j = B^T z_j`` (features side): ``eta_j = offset_j + beta p_j . q_j``. One-hot contexts
    (P-ShareLoRA's users) are stored as group indices, so that ``A^T x_j`` is a row lookup and the
    contexts' block of the Hessian is block diagonal (one ``r x r`` block per context).
    """

    def __init__(self, contexts, features, labels, offsets, beta, ridge, balance, rank):
        self.contexts = contexts.tocsr() if scipy.sparse.issparse(contexts) else np.asarray(contexts, dtype=float)
        self.features = features.tocsr() if scipy.sparse.issparse(features) else np.asarray(features, dtype=float)
        # Both passes, Z B and Z^T X, run fastest as column-oriented (scatter) products: from a
        # column-major copy for the first, from the transposed view of the row-major one for the
        # second.
        self._features_by_column = features.tocsc() if scipy.sparse.issparse(features) else self.features
        self._features_transposed = self.features.T
        self.groups = _one_hot_groups(self.contexts)
        if self.groups is not None:  # one-hot contexts, dense or sparse: keep them sparse
            n = self.groups.shape[0]
            self.contexts = scipy.sparse.csr_matrix((np.ones(n), (np.arange(n), self.groups)), shape=contexts.shape)
        self.labels, self.offsets = labels, offsets
        self.beta, self.ridge, self.balance, self.rank = beta, ridge, balance, rank
        self.n_contexts, self.n_features = contexts.shape[1], features.shape[1]
        self.left_size = self.n_contexts * rank
        self._squared_features = None

    @property
    def squared_features(self):
        """Elementwise squares ``z_jk^2`` (for the preconditioner), computed once."""
        if self._squared_features is None:
            self._squared_features = self.features.multiply(self.features).tocsr() \
                if scipy.sparse.issparse(self.features) else self.features**2
        return self._squared_features

    # -- data passes ---------------------------------------------------------------------------

    def project_contexts(self, left: np.ndarray) -> np.ndarray:
        """``x_j^T A`` for every pair, ``(n, r)``."""
        return np.take(left, self.groups, axis=0) if self.groups is not None else np.asarray(self.contexts @ left)

    def project_features(self, right: np.ndarray) -> np.ndarray:
        """``z_j^T B`` for every pair, ``(n, r)``: one pass over the features."""
        return np.asarray(self._features_by_column @ right)

    def sum_contexts(self, rows: np.ndarray) -> np.ndarray:
        """``sum_j x_j rows_j^T``, ``(d_x, m)``."""
        return np.asarray(self.contexts.T @ rows)

    def sum_features(self, rows: np.ndarray) -> np.ndarray:
        """``sum_j z_j rows_j^T``, ``(d, m)``: one pass over the features."""
        return np.asarray(self._features_transposed @ rows)

    # -- flat-vector interface (objective, gradient, Hessian-vector products) ------------------

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left = flat[: self.left_size].reshape(-1, self.rank)
        return left, flat[self.left_size:].reshape(-1, self.rank)

    def state(self, left: np.ndarray, right: np.ndarray) -> _State:
        context_part, feature_part = self.project_contexts(left), self.project_features(right)
        return _State(left, right, context_part, feature_part,
                      self.offsets + self.beta * _row_dot(context_part, feature_part))

    def value(self, state: _State) -> float:
        eta, left, right = state.eta, state.left, state.right
        imbalance = left.T @ left - right.T @ right
        return float(np.sum(-log_expit(eta) + (1 - self.labels) * eta)
                     + 0.5 * self.ridge * (np.sum(left**2) + np.sum(right**2))
                     + 0.25 * self.balance * np.sum(imbalance**2))

    def value_and_gradient(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        state = self.state(*self.split(flat))
        grad_left, grad_right = self.gradient(state)
        return self.value(state), np.concatenate([np.ravel(grad_left), np.ravel(grad_right)])

    def gradient(self, state: _State) -> tuple[np.ndarray, np.ndarray]:
        """``(dF/dA, dF/dB)`` at ``state``."""
        curvature = _Curvature(self, state)
        return curvature.gradient_left(), curvature.gradient_right_and_cross()[0]

    def hessian_vector(self, flat: np.ndarray, direction: np.ndarray) -> np.ndarray:
        state = self.state(*self.split(flat))
        d_left, d_right = self.split(direction)
        curvature = _Curvature(self, state)
        d_feature = self.project_features(d_right)
        d_context = self.project_contexts(d_left)
        h_left = curvature.left_from_right(d_right, d_feature) + curvature.left_left(d_left, d_context)
        h_right = curvature.right(d_right, d_feature, d_left, d_context)
        return np.concatenate([np.ravel(h_left), np.ravel(h_right)])


@dataclass
class _State:
    left: np.ndarray
    right: np.ndarray
    context_part: np.ndarray  # x_j^T A, (n, r)
    feature_part: np.ndarray  # z_j^T B, (n, r)
    eta: np.ndarray


class _Curvature:
    """Blocks of the Hessian of ``F`` at one point: ``H_AA`` explicitly (and its inverse), products
    with ``H_AB``, ``H_BA`` and ``H_BB`` through the data."""

    def __init__(self, problem: _Bilinear, state: _State) -> None:
        self.problem, self.state = problem, state
        beta = problem.beta
        self.residual = beta * (expit(state.eta) - problem.labels)
        self.slope = beta**2 * expit(state.eta) * expit(-state.eta)
        left, right = state.left, state.right
        self.imbalance = left.T @ left - right.T @ right
        self._left_inverse = None
        self._blockwise = problem.groups is not None and problem.balance == 0

    def gradient_left(self) -> np.ndarray:
        """``dF/dA``."""
        p, s = self.problem, self.state
        return p.sum_contexts(self.residual[:, None] * s.feature_part) + p.ridge * s.left \
            + p.balance * s.left @ self.imbalance

    def gradient_right_and_cross(self, d_left=None, d_context=None):
        """``dF/dB`` and ``H_BA dA`` (zero without ``dA``) from one pass over the features."""
        p, s = self.problem, self.state
        r = p.rank
        rows = self.residual[:, None] * s.context_part
        if d_left is not None:
            cross = (self.slope * _row_dot(d_context, s.feature_part))[:, None] * s.context_part \
                + self.residual[:, None] * d_context
            rows = np.hstack([rows, cross])
        summed = p.sum_features(rows)
        grad_right = summed[:, :r] + p.ridge * s.right - p.balance * s.right @ self.imbalance
        if d_left is None:
            return grad_right, np.zeros_like(grad_right)
        return grad_right, summed[:, r:] - p.balance * s.right @ (d_left.T @ s.left + s.left.T @ d_left)

    # Hessian blocks applied to directions (balancing terms in closed form).

    def left_left(self, d_left, d_context):
        """``H_AA dA``."""
        p, s = self.problem, self.state
        rows = (self.slope * _row_dot(d_context, s.feature_part))[:, None] * s.feature_part
        return p.sum_contexts(rows) + p.ridge * d_left + p.balance * (
            d_left @ self.imbalance + s.left @ (d_left.T @ s.left + s.left.T @ d_left))

    def left_from_right(self, d_right, d_feature):
        """``H_AB dB`` given ``d_feature = Z dB``."""
        p, s = self.problem, self.state
        rows = (self.slope * _row_dot(s.context_part, d_feature))[:, None] * s.feature_part \
            + self.residual[:, None] * d_feature
        return p.sum_contexts(rows) - p.balance * s.left @ (d_right.T @ s.right + s.right.T @ d_right)

    def right(self, d_right, d_feature, d_left, d_context):
        """``H_BB dB + H_BA dA`` (one pass over the features)."""
        p, s = self.problem, self.state
        d_eta = _row_dot(s.context_part, d_feature) + _row_dot(d_context, s.feature_part)
        rows = (self.slope * d_eta)[:, None] * s.context_part + self.residual[:, None] * d_context
        return p.sum_features(rows) + p.ridge * d_right + p.balance * (
            -d_right @ self.imbalance + s.right @ (d_right.T @ s.right + s.right.T @ d_right)
            - s.right @ (d_left.T @ s.left + s.left.T @ d_left))

    # The contexts' block, eliminated from the Newton system.

    def _left_inverse_blocks(self) -> np.ndarray:
        p, s = self.problem, self.state
        n, r, d_x = s.eta.shape[0], p.rank, p.n_contexts
        q = s.feature_part
        if p.groups is not None:
            outer = (self.slope[:, None, None] * q[:, :, None] * q[:, None, :]).reshape(n, r * r)
            blocks = p.sum_contexts(outer).reshape(d_x, r, r)
            blocks[:, np.arange(r), np.arange(r)] += p.ridge
            if p.balance == 0:
                return _inverse(blocks, p.ridge)
            dense = np.zeros((d_x * r, d_x * r))
            for group in range(d_x):
                dense[group * r:(group + 1) * r, group * r:(group + 1) * r] = blocks[group]
        else:
            lifted = (np.asarray(p.contexts)[:, :, None] * q[:, None, :]).reshape(n, d_x * r)
            dense = lifted.T @ (self.slope[:, None] * lifted)
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
        if self._blockwise:
            return np.einsum("gij,gj->gi", self._left_inverse, vectors)
        return (self._left_inverse[0] @ np.ravel(vectors)).reshape(vectors.shape)

    def schur(self, d_right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``S dB`` for the Schur complement ``S = H_BB - H_BA H_AA^{-1} H_AB``, with ``Z dB`` and
        the eliminated ``dA = -H_AA^{-1} H_AB dB`` (two passes over the features)."""
        d_feature = self.problem.project_features(d_right)
        d_left = -self.solve_left(self.left_from_right(d_right, d_feature))
        product = self.right(d_right, d_feature, d_left, self.problem.project_contexts(d_left))
        return product, d_feature, d_left

    def preconditioner(self):
        """``dB -> P^{-1} dB`` with ``P`` the per-feature ``r x r`` diagonal blocks of ``H_BB``
        (without the balancing term): ``sum_j s_j z_jk^2 p_j p_j^T + lambda I``."""
        p, s = self.problem, self.state
        n, r = s.eta.shape[0], p.rank
        if p.groups is not None:
            # One-hot contexts: sum_g (sum_{j of g} s_j z_jk^2) a_g a_g^T, with the inner sums from
            # one sparse product (cheaper than a pass with r^2 columns).
            weighted = p.contexts.T.tocsr().multiply(self.slope[None, :]).tocsr() @ p.squared_features
            energy = weighted.toarray() if scipy.sparse.issparse(weighted) else np.asarray(weighted)
            left = s.left
            blocks = (energy.T @ (left[:, :, None] * left[:, None, :]).reshape(-1, r * r)).reshape(-1, r, r)
        else:
            c = s.context_part
            outer = (self.slope[:, None, None] * c[:, :, None] * c[:, None, :]).reshape(n, r * r)
            blocks = np.asarray(p.squared_features.T @ outer).reshape(-1, r, r)
        blocks[:, np.arange(r), np.arange(r)] += p.ridge
        inverse = _inverse(blocks, p.ridge)
        return lambda vectors: np.einsum("kij,kj->ki", inverse, vectors)


def _inverse(blocks: np.ndarray, ridge: float) -> np.ndarray:
    """Inverses of symmetric blocks; eigenvalues replaced by their absolute values (floored at a
    fraction of the ridge) where the balancing term makes a block indefinite."""
    values, vectors = np.linalg.eigh(blocks)
    values = np.maximum(np.abs(values), 1e-6 * ridge)
    return (vectors / values[:, None, :]) @ vectors.transpose(0, 2, 1)


def _schur_conjugate_gradients(curvature: _Curvature, rhs: np.ndarray, tolerance: float, max_steps: int):
    """Preconditioned CG on ``S dB = rhs``; returns ``dB``, ``Z dB`` and the eliminated ``dA``.

    Stops when the residual is below ``tolerance ||rhs||`` or at negative curvature (then the
    first direction is returned if no step was taken)."""
    precondition = curvature.preconditioner()
    solution = np.zeros_like(rhs)
    solution_feature = np.zeros_like(curvature.state.feature_part)
    solution_left = np.zeros_like(curvature.state.left)
    residual = rhs.copy()
    preconditioned = precondition(residual)
    direction = preconditioned
    inner = float(np.sum(residual * preconditioned))
    target = tolerance * float(np.linalg.norm(rhs))
    for step in range(max_steps):
        product, d_feature, d_left = curvature.schur(direction)
        curvature_along = float(np.sum(direction * product))
        if curvature_along <= 0:
            if step == 0:
                return direction, d_feature, d_left
            break
        alpha = inner / curvature_along
        solution += alpha * direction
        solution_feature += alpha * d_feature
        solution_left += alpha * d_left
        residual -= alpha * product
        if np.linalg.norm(residual) <= target:
            break
        preconditioned = precondition(residual)
        new_inner = float(np.sum(residual * preconditioned))
        direction = preconditioned + (new_inner / inner) * direction
        inner = new_inner
    return solution, solution_feature, solution_left


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
        Newton steps.

    Returns
    -------
    FactoredFit
    """
    n = labels.shape[0]
    offsets = np.zeros(n) if offsets is None else offsets
    problem = _Bilinear(contexts, features, labels, offsets, beta, ridge, balance, rank)
    state = problem.state(np.array(initial[0], dtype=float), np.array(initial[1], dtype=float))
    scale = max(_norm(*problem.gradient(state)), 1e-12)
    threshold = tol * scale * (1 + 1e-6)
    iterations, fresh, message = 0, True, "maximum number of iterations reached"
    # A cap on the CG steps of one Newton step: where the Hessian is nearly singular or indefinite an
    # accurate solve is wasted (the next step corrects it), and near the answer few are needed.
    max_cg = min(rank * problem.n_features, 40)
    while True:
        curvature = _Curvature(problem, state)
        grad_left = curvature.gradient_left()
        eliminated = -curvature.solve_left(grad_left)
        eliminated_context = problem.project_contexts(eliminated)
        grad_right, cross = curvature.gradient_right_and_cross(eliminated, eliminated_context)
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
        # Inexact Newton: solve loosely far from the answer, tightly near it, but never more
        # tightly than needed to bring the gradient below the threshold in this step.
        forcing = max(min(0.5, np.sqrt(gradient_norm / scale)), 0.3 * threshold / gradient_norm)
        d_right, d_feature, d_left = _schur_conjugate_gradients(curvature, -(grad_right + cross), forcing, max_cg)
        d_left = d_left + eliminated
        slope = float(np.sum(grad_left * d_left) + np.sum(grad_right * d_right))
        if not slope < 0:
            d_left, d_right = eliminated, -curvature.preconditioner()(grad_right)
            d_feature = problem.project_features(d_right)
            slope = float(np.sum(grad_left * d_left) + np.sum(grad_right * d_right))
        step = _line_search(problem, state, d_left, d_right, problem.project_contexts(d_left), d_feature, slope)
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
    )


def _row_dot(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two ``(n, m)`` arrays."""
    return np.einsum("ij,ij->i", first, second)


def _norm(*parts: np.ndarray) -> float:
    return float(np.sqrt(sum(np.sum(part**2) for part in parts)))


def _line_search(problem: _Bilinear, state: _State, d_left, d_right, d_context, d_feature, slope):
    """Armijo backtracking along ``(dA, dB)`` from step 1; ``None`` if nothing decreases ``F``.

    ``eta`` is quadratic in the step, so with ``Z dB`` known no trial needs a pass over the data."""
    c, q = state.context_part, state.feature_part
    constant = state.eta
    linear = problem.beta * (_row_dot(d_context, q) + _row_dot(c, d_feature))
    quadratic = problem.beta * _row_dot(d_context, d_feature)
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
    context_part, feature_part = problem.project_contexts(left), state.feature_part @ to_right
    return _State(left, right, context_part, feature_part,
                  problem.offsets + problem.beta * _row_dot(context_part, feature_part))


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
