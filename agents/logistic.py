"""The one logistic-regression solver: ridge Bradley-Terry MLE for many small problems at once.

Problem ``b`` minimises

    f_b(theta) = sum_{j in b} [softplus(eta_j) - y_j eta_j] + (lambda_b / 2) ||theta||^2,
    eta_j = offset_j + beta x_j . theta,

which for labels ``y in {0, 1}`` is ``-sum_j log sigmoid((2 y_j - 1) eta_j)`` (docs/algorithms.md, Estimators) and
for ``y = 0.5`` ("equal") the cross-entropy of a fair coin. Every problem is solved by damped
Newton steps, all problems advancing together: the data are laid out padded as
``(B, n_max, k)`` and each step is a batched matrix product and a batched solve. When problems
have fewer samples than dimensions the Newton system is solved in the ``n``-dimensional sample
space (Woodbury), so full-dimensional per-user fits cost ``O(n^2 k)`` instead of ``O(k^3)``.
Large problems with more samples than dimensions (the RTV refit of LoCo-RLHF, ``k`` in the
thousands) spend their time forming ``k x k`` Hessians: they keep the Cholesky factor of the
last one, summed in single precision, and take chord steps with it while each step shrinks the
gradient norm at least fourfold; the Fisher matrix they return is formed anew at the answer.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy.linalg import cho_factor, cho_solve, lu_factor, lu_solve
from scipy.linalg.blas import dsyrk, ssyrk
from scipy.special import expit

from lr_mdp_env._validation import as_real_array, check_int, check_real

# From this many coordinates on, Gram matrices are formed problem by problem with BLAS syrk, and
# primal Newton steps reuse the factor of an earlier Hessian while the gradient norm falls by at
# least this factor per step (a chord step converges linearly at rate ||I - H_old^{-1} H||, so a
# factor of 4 means the stored Hessian is still within 25% of the current one).
_SYMMETRIC_UPDATE_MIN_DIMENSION = 64
_CHORD_CONTRACTION = 0.25
# Inexact Newton (``implicit_hessian=True``): conjugate-gradient steps per Newton step at most,
# and the forcing term ``min(0.5, sqrt(||g|| / ||g_0||))`` of the relative CG residual, which
# makes the outer iteration superlinear (Eisenstat and Walker, 1996; Nocedal and Wright, 2006, 7.1).
_IMPLICIT_MAX_ITER = 500
_IMPLICIT_MAX_FORCING = 0.5


class ConvergenceWarning(UserWarning):
    """A logistic fit stopped at ``max_iter`` before reaching its gradient tolerance."""


@dataclass(frozen=True)
class LogisticFit:
    """Result of :func:`fit_logistic`.

    Attributes
    ----------
    theta : ndarray, shape (B, k)
        The minimisers.
    fisher : ndarray of shape (B, k, k), or None
        ``M_b = beta^2 sum_j sigmoid'(eta_j) x_j x_j^T + lambda_b I`` at ``theta`` (the Hessian of
        ``f_b``, i.e. the observed Fisher information plus the ridge).
    gradient_norm : ndarray, shape (B,)
        ``||grad f_b(theta)||_2`` at the returned point.
    relative_gradient_norm : ndarray, shape (B,)
        ``gradient_norm / max(||grad f_b(0)||, 1e-300)``: the stationarity certificate.
    objective : ndarray, shape (B,)
    iterations : int
        Steps taken: Newton steps, or for large problems Newton and chord steps (module docstring).
    converged : ndarray of bool, shape (B,)
    """

    theta: np.ndarray
    fisher: np.ndarray
    gradient_norm: np.ndarray
    relative_gradient_norm: np.ndarray
    objective: np.ndarray
    iterations: int
    converged: np.ndarray


class _PaddedProblems:
    """Samples of ``B`` problems, sorted by problem and zero-padded to ``(B, n_max, ...)``.

    The layout (labels, offsets, mask) is built once; :meth:`with_features` puts other features
    of the same samples into it, for callers that solve the same problems with changing features.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                 offsets: np.ndarray, n_problems: int) -> None:
        order = np.argsort(groups, kind="stable")
        counts = np.bincount(groups, minlength=n_problems)
        n_max = max(int(counts.max(initial=0)), 1)
        position = np.arange(groups.size) - np.repeat(np.cumsum(counts) - counts, counts)
        self._order, self._rows, self._cols = order, groups[order], position
        # Rows sorted by problem with equal counts (e.g. a single problem) are viewed, not copied.
        self._laid_out = groups.size == n_problems * n_max and bool(np.all(np.diff(groups) >= 0))
        self._shape = (n_problems, n_max)
        self.features = self._padded_features(features)
        self.labels = self._padded(labels)
        self.offsets = self._padded(offsets)
        self.mask = self._padded(np.ones(groups.size))
        self.counts = counts
        self._single_features: dict[int, np.ndarray] = {}  # single-precision designs of large problems

    def _padded(self, values: np.ndarray) -> np.ndarray:
        padded = np.zeros(self._shape)
        padded[self._rows, self._cols] = values[self._order]
        return padded

    def _padded_features(self, features: np.ndarray) -> np.ndarray:
        k = features.shape[1]
        if self._laid_out:  # a view, not a copy of what may be a large design
            return features.reshape(*self._shape, k)
        padded = np.zeros(self._shape + (k,))
        padded[self._rows, self._cols] = features[self._order]
        return padded

    def with_features(self, features: np.ndarray) -> _PaddedProblems:
        """The same samples (labels, offsets, problems) with other features ``(n, k')``."""
        problems = copy.copy(self)
        problems.features = self._padded_features(features)
        problems._single_features = {}
        return problems

    # -- what the Newton iterations need from a layout (``rows``: a sorted subset of the problems) --

    @property
    def n_max(self) -> int:
        return self._shape[1]

    def _design(self, rows: np.ndarray | None) -> np.ndarray:
        # All problems: no gathered copy of the design (hundreds of MB for one large problem).
        return self.features if rows is None or rows.size == self._shape[0] else self.features[rows]

    def apply(self, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``X_b v_b`` for the problems ``rows`` (all by default): ``(|rows|, n_max)``."""
        return _apply(self._design(rows), vectors)

    def apply_transposed(self, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``X_b^T u_b`` for the problems ``rows``: ``(|rows|, k)``."""
        return _apply_transposed(self._design(rows), vectors)

    def sample_gram(self) -> np.ndarray:
        """``X_b X_b^T`` for every problem, ``(B, n_max, n_max)`` (for the sample-space steps)."""
        return self.features @ self.features.transpose(0, 2, 1)

    def weighted_gram(self, weights: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``X_b^T diag(w_b) X_b`` for the problems ``rows``, ``(|rows|, k, k)``."""
        return _weighted_gram(self._design(rows), weights)

    def hessian_solver(self, problem: int, weights: np.ndarray, ridge: float) -> Callable[[np.ndarray], np.ndarray]:
        """``g -> H_b^{-1} g`` for one large primal problem (see :func:`_hessian_solver`)."""
        if problem not in self._single_features:
            self._single_features[problem] = self.features[problem].astype(np.float32)
        return _hessian_solver(self._single_features[problem], self.features[problem], weights, ridge)

    def logits(self, beta: float, theta: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        offsets = self.offsets if rows is None else self.offsets[rows]
        return offsets + beta * self.apply(theta, rows)

    def objective(self, beta: float, ridge: np.ndarray, theta: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``f_b`` of the problems ``rows`` (all by default) at ``theta`` (their points)."""
        labels, mask = (self.labels, self.mask) if rows is None else (self.labels[rows], self.mask[rows])
        ridge = ridge if rows is None else ridge[rows]
        losses = bernoulli_losses(self.logits(beta, theta, rows), labels) * mask
        return losses.sum(axis=1) + 0.5 * ridge * np.sum(theta**2, axis=1)

    def gradient(self, beta: float, ridge: np.ndarray, theta: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """``grad f_b(theta_b)`` for every problem, given the logits ``eta`` at ``theta``."""
        residual = (expit(eta) - self.labels) * self.mask
        return beta * self.apply_transposed(residual) + ridge[:, None] * theta

    def derivatives(self, beta: float, ridge: np.ndarray, theta: np.ndarray, rows: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``f_b``, ``grad f_b`` and the Hessian of ``f_b`` at ``theta`` for the problems ``rows``
        (for callers that run their own Newton iterations on these losses)."""
        labels, mask, ridge = self.labels[rows], self.mask[rows], ridge[rows]
        losses, probabilities = bernoulli_losses_and_probabilities(self.logits(beta, theta, rows), labels)
        loss = (losses * mask).sum(axis=1) + 0.5 * ridge * np.sum(theta**2, axis=1)
        gradient = beta * self.apply_transposed((probabilities - labels) * mask, rows) + ridge[:, None] * theta
        hessian = beta**2 * self.weighted_gram(probabilities * (1.0 - probabilities) * mask, rows)
        k = theta.shape[1]
        hessian[:, np.arange(k), np.arange(k)] += ridge[:, None]
        return loss, gradient, hessian


class _SparseProblems(_PaddedProblems):
    """The padded layout with sparse features (``k`` large, few non-zeros per sample, such as
    one-hot visit-count differences): no ``(B, n_max, k)`` array is formed.

    The samples are the rows of the ``(B n_max, B k)`` CSR matrix with ``x_j`` of problem ``b`` in
    columns ``b k .. b k + k - 1`` (padding rows empty), so that ``X_b v_b`` for every problem is
    one product with ``vec(V)``, ``X_b^T u_b`` one with its transpose, and the ``X_b X_b^T`` of all
    problems one sparse product that pairs samples of the same problem only.
    """

    def __init__(self, features: Any, labels: np.ndarray, groups: np.ndarray,
                 offsets: np.ndarray, n_problems: int) -> None:
        super().__init__(np.zeros((groups.size, 0)), labels, groups, offsets, n_problems)
        csr = features.tocsr()[self._order]
        csr.sum_duplicates()
        self.n_features = k = csr.shape[1]
        padded_rows = self._rows * self.n_max + self._cols
        counts = np.diff(csr.indptr)
        indptr = np.zeros(n_problems * self.n_max + 1, dtype=np.int64)
        np.add.at(indptr, padded_rows + 1, counts)  # empty padding rows in between
        indptr = np.cumsum(indptr)
        shape = (n_problems * self.n_max, n_problems * k)
        columns = csr.indices.astype(np.int64) + k * np.repeat(self._rows, counts)
        self.features = scipy.sparse.csr_matrix((csr.data, columns, indptr), shape=shape)
        self._transposed = self.features.T  # a view, made once
        self._rows_of = scipy.sparse.csr_matrix((csr.data, csr.indices, indptr), shape=(shape[0], k))
        # implicit_solve's design of a problem and its square (the Jacobi preconditioner's), made once.
        self._implicit_designs: dict[int, tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]] = {}

    def _full(self, vectors: np.ndarray, rows: np.ndarray | None, width: int) -> np.ndarray:
        if rows is None or rows.size == self._shape[0]:
            return vectors
        full = np.zeros((self._shape[0], width))
        full[rows] = vectors
        return full

    def apply(self, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        products = (self.features @ np.ravel(self._full(vectors, rows, self.n_features))).reshape(self._shape)
        return products if rows is None or rows.size == self._shape[0] else products[rows]

    def apply_transposed(self, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        products = (self._transposed @ np.ravel(self._full(vectors, rows, self.n_max))).reshape(-1, self.n_features)
        return products if rows is None or rows.size == self._shape[0] else products[rows]

    def sample_gram(self) -> np.ndarray:
        products = (self.features @ self._transposed).tocoo()
        gram = np.zeros((self._shape[0], self.n_max, self.n_max))
        gram[products.row // self.n_max, products.row % self.n_max, products.col % self.n_max] = products.data
        return gram

    def _problem_design(self, problem: int) -> scipy.sparse.csr_matrix:
        return self._rows_of[problem * self.n_max:(problem + 1) * self.n_max]

    def weighted_gram(self, weights: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self._shape[0]) if rows is None else rows
        grams = np.empty((rows.size, self.n_features, self.n_features))
        for position, problem in enumerate(rows):
            design = self._problem_design(problem)
            gram = design.T @ design.multiply(weights[position][:, None]).tocsr()
            grams[position] = gram.toarray() if scipy.sparse.issparse(gram) else gram
        return grams

    def hessian_solver(self, problem: int, weights: np.ndarray, ridge: float) -> Callable[[np.ndarray], np.ndarray]:
        hessian = self.weighted_gram(weights[None], np.array([problem]))[0]
        return _factored(hessian, ridge)

    def with_features(self, features: np.ndarray) -> _PaddedProblems:
        raise NotImplementedError("sparse layouts are built for one design")

    def implicit_solve(self, problem: int, weights: np.ndarray, ridge: float, grad: np.ndarray,
                       rtol: float) -> np.ndarray:
        """``(X^T W X + lambda I)^{-1} grad`` to relative residual ``rtol`` by conjugate gradients,
        from Hessian-vector products ``X^T (w * (X v)) + lambda v`` (``2 nnz(X)`` flops each) and
        the Jacobi preconditioner ``diag(X^T W X) + lambda``: no ``k x k`` matrix is formed."""
        if problem not in self._implicit_designs:  # the same design at every step: sliced and squared once
            # One problem: its rows are the whole design (a slice would copy it).
            design = self._rows_of if self._shape[0] == 1 else self._problem_design(problem)
            squared = scipy.sparse.csr_matrix((design.data**2, design.indices, design.indptr), shape=design.shape)
            self._implicit_designs[problem] = design, squared
        design, squared = self._implicit_designs[problem]
        diagonal = squared.T @ weights + ridge

        def product(vector: np.ndarray) -> np.ndarray:
            return design.T @ (weights * (design @ vector)) + ridge * vector

        k = self.n_features
        operator = scipy.sparse.linalg.LinearOperator((k, k), matvec=product, dtype=float)
        preconditioner = scipy.sparse.linalg.LinearOperator((k, k), matvec=lambda vector: vector / diagonal,
                                                            dtype=float)
        # A truncated direction is still a descent direction (CG from 0 on a positive definite
        # system), so the line search and the gradient test of the outer iteration stay valid.
        step, _ = scipy.sparse.linalg.cg(operator, grad, rtol=rtol, atol=0.0, maxiter=_IMPLICIT_MAX_ITER,
                                         M=preconditioner)
        return step



def check_groups(groups: Any, n_problems: int | None, n_pairs: int) -> tuple[np.ndarray, int]:
    """Validate the problem index of each pair: ``groups`` (default: all pairs in problem 0) as an
    ``int64`` array of shape ``(n_pairs,)`` with values below ``n_problems`` (default: the largest
    plus one).

    Raises
    ------
    TypeError
        If ``groups`` is not an integer array of that shape.
    ValueError
        If a group is negative or not below ``n_problems``.
    """
    n = n_pairs
    if groups is None:
        groups = np.zeros(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (n,) or (n and groups.dtype.kind not in "iu"):
        raise TypeError(f"groups must be an integer array of shape ({n},), got {groups.dtype} {groups.shape}")
    groups = groups.astype(np.int64, copy=False)
    if n and groups.min() < 0:
        raise ValueError("groups must be non-negative")
    if n_problems is None:
        n_problems = int(groups.max()) + 1 if n else 1
    n_problems = check_int("n_problems", n_problems, minimum=1)
    if n and groups.max() >= n_problems:
        raise ValueError(f"groups has problem {groups.max()} but n_problems={n_problems}")
    return groups, n_problems

def fit_logistic(
    features: Any,
    labels: Any,
    *,
    groups: Any = None,
    n_problems: int | None = None,
    offsets: Any = None,
    beta: float = 1.0,
    ridge: Any = 1.0,
    initial: Any = None,
    tol: float = 1e-10,
    max_iter: int = 100,
    fisher: bool = True,
    implicit_hessian: bool = False,
) -> LogisticFit:
    """Ridge logistic (Bradley-Terry) MLE of ``B`` independent problems in one batched solve.

    Parameters
    ----------
    features : array_like or scipy sparse matrix, shape (n, k)
        ``x_j``; for preferences ``z_j = psi(tau1_j) - psi(tau0_j)`` or a projection of it. Sparse
        features (one-hot visit counts) are never densified when ``k >= 64``: products, Gram and
        Hessian matrices come from the non-zeros.
    labels : array_like, shape (n,)
        ``y_j`` in ``[0, 1]`` (``1``: the second trajectory preferred).
    groups : array_like of int, shape (n,), optional
        Problem of each sample (default: one problem).
    n_problems : int, optional
        ``B`` (default ``max(groups) + 1``); problems without samples return ``theta = 0``.
    offsets : array_like, shape (n,), optional
        Known part of each logit, e.g. ``beta Theta_0[:, i] . z_j`` for a base reward.
    beta : float, default 1.0
        Rationality assumed by the model.
    ridge : float or array_like of shape (B,), default 1.0
        ``lambda > 0``: keeps separable data, duplicated rows and zero-information directions
        finite (the minimiser exists and is unique).
    initial : array_like, shape (B, k), optional
        Warm start.
    tol : float, default 1e-10
        Stop when ``||grad f_b|| <= tol * max(1, ||grad f_b(0)||)`` for every problem.
    max_iter : int, default 100
        Steps (Newton or chord).
    fisher : bool, default True
        Whether to return the ``(B, k, k)`` Fisher matrices (skip for large ``B k^2``).
    implicit_hessian : bool, default False
        With sparse features (``k >= 64``): inexact Newton steps by preconditioned conjugate
        gradients on Hessian-vector products, never a ``k x k`` Hessian (for ``k`` in the
        thousands, where one Hessian costs ``sum_j nnz(x_j)^2`` to form and ``k^3 / 3`` to
        factor). The minimiser is the same, to ``tol``.

    Returns
    -------
    LogisticFit

    Warns
    -----
    ConvergenceWarning
        If some problem has not reached ``tol`` after ``max_iter`` steps.

    References
    ----------
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise
    or K-wise Comparisons*, ICML 2023 (the MLE and its Fisher matrix).
    """
    sparse = scipy.sparse.issparse(features)
    if sparse:
        features = features.tocsr()
        if not np.all(np.isfinite(features.data)):
            raise ValueError("features must be finite")
        if features.shape[1] < _SYMMETRIC_UPDATE_MIN_DIMENSION:  # small k: the dense batched layout
            features, sparse = features.toarray(), False
    else:
        features = as_real_array("features", features, (2,))
    n, k = features.shape
    labels = as_real_array("labels", labels, (1,))
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match features, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 1):
        raise ValueError("labels must lie in [0, 1]")
    groups, n_problems = check_groups(groups, n_problems, n)
    offsets = np.zeros(n) if offsets is None else as_real_array("offsets", offsets, (1,))
    if offsets.shape != (n,):
        raise ValueError(f"offsets must have shape ({n},), got {offsets.shape}")
    beta = check_real("beta", beta, 0.0, strict_minimum=True)
    ridge = as_real_array("ridge", ridge, (0, 1))
    if ridge.ndim == 1 and ridge.shape != (n_problems,):
        raise ValueError(f"ridge must be a float or have shape ({n_problems},) (one per problem), got {ridge.shape}")
    ridge = np.broadcast_to(ridge, (n_problems,)).astype(float)
    if np.any(ridge <= 0):
        raise ValueError(f"ridge must be positive (it keeps separable data finite), got min {ridge.min()}")
    tol = check_real("tol", tol, 0.0, strict_minimum=True)
    max_iter = check_int("max_iter", max_iter, minimum=0)
    theta = np.zeros((n_problems, k)) if initial is None else as_real_array("initial", initial, (2,)).copy()
    if theta.shape != (n_problems, k):
        raise ValueError(f"initial must have shape ({n_problems}, {k}), got {theta.shape}")

    if not isinstance(implicit_hessian, (bool, np.bool_)):
        raise TypeError(f"implicit_hessian must be a bool, got {type(implicit_hessian).__name__}")
    problems = (_SparseProblems if sparse else _PaddedProblems)(features, labels, groups, offsets, n_problems)
    zero = np.zeros_like(theta)
    initial_gradient = np.linalg.norm(problems.gradient(beta, ridge, zero, problems.logits(beta, zero)), axis=1)
    threshold = tol * np.maximum(initial_gradient, 1.0)
    theta, grad_norm, iterations = _newton(problems, beta, ridge, theta, threshold, max_iter,
                                           implicit=implicit_hessian and sparse)

    converged = grad_norm <= threshold
    if not np.all(converged):
        worst = int(np.argmax(grad_norm / threshold))
        warnings.warn(
            f"logistic fit: {int((~converged).sum())} of {n_problems} problems did not reach "
            f"tol={tol} in max_iter={max_iter} steps (worst: problem {worst}, gradient "
            f"norm {grad_norm[worst]:.3g})",
            ConvergenceWarning,
            stacklevel=2,
        )
    information = None
    if fisher:
        eta = problems.logits(beta, theta)
        weights = expit(eta) * expit(-eta) * problems.mask * beta**2
        information = problems.weighted_gram(weights)
        information[:, np.arange(k), np.arange(k)] += ridge[:, None]
    return LogisticFit(
        theta=theta,
        fisher=information,
        gradient_norm=grad_norm,
        relative_gradient_norm=grad_norm / np.maximum(initial_gradient, 1e-300),
        objective=problems.objective(beta, ridge, theta),
        iterations=iterations,
        converged=converged,
    )


def _newton(problems: _PaddedProblems, beta: float, ridge: np.ndarray, theta: np.ndarray, threshold: np.ndarray,
            max_iter: int, implicit: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Damped Newton steps on every problem whose gradient norm is above its ``threshold``, until
    none is or after ``max_iter`` steps; returns ``(theta, gradient norms, steps)`` (``theta`` is
    updated in place). ``implicit`` (sparse layouts): inexact Newton steps by conjugate gradients."""
    k = theta.shape[1]
    if implicit:
        return _inexact_newton(problems, beta, ridge, theta, threshold, max_iter)
    dual = problems.n_max < k
    gram = problems.sample_gram() if dual else None
    objective = problems.objective(beta, ridge, theta)
    iterations = 0
    # Large primal problems keep the Cholesky factor of their last Hessian while the steps it gives
    # shrink the gradient fast (see _CHORD_CONTRACTION): forming a k x k Hessian from n samples
    # costs n k^2, a step with a stored factor n k + k^2.
    reuse_hessians = gram is None and k >= _SYMMETRIC_UPDATE_MIN_DIMENSION
    factors: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
    previous_norm = np.full(theta.shape[0], np.inf)
    while True:
        eta = problems.logits(beta, theta)
        grad = problems.gradient(beta, ridge, theta, eta)
        grad_norm = np.linalg.norm(grad, axis=1)
        active = np.flatnonzero(grad_norm > threshold)
        if active.size == 0 or iterations >= max_iter:
            return theta, grad_norm, iterations
        iterations += 1
        weights = expit(eta[active]) * expit(-eta[active]) * problems.mask[active] * beta**2
        if reuse_hessians:
            step = np.empty((active.size, k))
            for position, problem in enumerate(active):
                if problem not in factors or grad_norm[problem] > _CHORD_CONTRACTION * previous_norm[problem]:
                    factors[problem] = problems.hessian_solver(problem, weights[position], ridge[problem])
                step[position] = factors[problem](grad[problem])
            previous_norm[active] = grad_norm[active]
        else:
            step = _newton_direction(problems, active, weights, ridge[active], grad[active],
                                     None if gram is None else gram[active])
        theta[active], objective[active] = _backtrack(
            problems, beta, ridge, theta[active], objective[active], active, step, grad[active]
        )


def _inexact_newton(problems: _SparseProblems, beta: float, ridge: np.ndarray, theta: np.ndarray,
                    threshold: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`_newton` with each step from :meth:`_SparseProblems.implicit_solve` (same line search)."""
    objective = problems.objective(beta, ridge, theta)
    first_norm: np.ndarray | None = None
    iterations = 0
    while True:
        eta = problems.logits(beta, theta)
        grad = problems.gradient(beta, ridge, theta, eta)
        grad_norm = np.linalg.norm(grad, axis=1)
        first_norm = np.maximum(grad_norm, 1e-300) if first_norm is None else first_norm
        active = np.flatnonzero(grad_norm > threshold)
        if active.size == 0 or iterations >= max_iter:
            return theta, grad_norm, iterations
        iterations += 1
        weights = expit(eta[active]) * expit(-eta[active]) * problems.mask[active] * beta**2
        forcing = np.minimum(_IMPLICIT_MAX_FORCING, np.sqrt(grad_norm[active] / first_norm[active]))
        step = np.stack([problems.implicit_solve(problem, weights[position], ridge[problem], grad[problem],
                                                 float(forcing[position]))
                         for position, problem in enumerate(active)])
        theta[active], objective[active] = _backtrack(
            problems, beta, ridge, theta[active], objective[active], active, step, grad[active]
        )


def bernoulli_losses(eta: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``softplus(eta_j) - y_j eta_j`` elementwise: the terms of ``f_b`` (module docstring).

    Evaluated as ``log(1 + exp(-|eta|)) + (max(eta, 0) - y eta)``, which neither overflows nor loses
    the small losses of confident correct predictions, for any ``eta`` (and several times faster
    than ``scipy.special.log_expit``).
    """
    return _losses_from_decay(np.exp(-np.abs(eta)), eta, labels)


def bernoulli_losses_and_probabilities(eta: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bernoulli_losses` and ``sigmoid(eta)`` from one exponential ``exp(-|eta|)``."""
    decay = np.exp(-np.abs(eta))
    inverse = 1.0 / (1.0 + decay)
    return _losses_from_decay(decay, eta, labels), np.where(eta >= 0, inverse, decay * inverse)


def _losses_from_decay(decay: np.ndarray, eta: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``softplus(eta) - y eta`` given ``decay = exp(-|eta|)``."""
    return np.log1p(decay) + (np.maximum(eta, 0.0) - labels * eta)


def _hessian_solver(single_features: np.ndarray, features: np.ndarray, weights: np.ndarray,
                    ridge: float) -> Callable[[np.ndarray], np.ndarray]:
    """``g -> H^{-1} g`` for the Hessian ``X^T W X + lambda I`` of one large problem.

    A step only needs an approximate Hessian (chord steps use an old one), so it is summed in
    single precision, at half the cost, and factored by Cholesky. Where the ridge is below the
    single-precision rounding of a rank-deficient ``X^T W X`` that sum can come out indefinite:
    then it is summed in double precision, and solved by LU if it is still not numerically
    positive definite.
    """
    solver = _factored(_weighted_gram(single_features[None], weights[None])[0], ridge, fallback=False)
    return solver if solver is not None else _factored(_weighted_gram(features[None], weights[None])[0], ridge)


def _factored(hessian: np.ndarray, ridge: float, fallback: bool = True) -> Callable[[np.ndarray], np.ndarray] | None:
    """``g -> (hessian + ridge I)^{-1} g`` by Cholesky; if that fails, by LU (``fallback``) or ``None``."""
    hessian[np.diag_indices(hessian.shape[0])] += ridge
    try:
        factor = cho_factor(hessian, lower=True, overwrite_a=False)
        return lambda gradient: cho_solve(factor, gradient)
    except np.linalg.LinAlgError:
        if not fallback:
            return None
    factor = lu_factor(hessian, overwrite_a=True)
    return lambda gradient: lu_solve(factor, gradient)


def _apply(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``X_b v_b`` for every problem: ``(B, n, k) x (B, k) -> (B, n)`` (batched BLAS)."""
    return (features @ vectors[:, :, None])[:, :, 0]


def _apply_transposed(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``X_b^T u_b`` for every problem: ``(B, n, k) x (B, n) -> (B, k)``."""
    return (vectors[:, None, :] @ features)[:, 0, :]


def _weighted_gram(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``X_b^T diag(w_b) X_b`` for every problem: ``(B, k, k)`` in double precision; ``weights``
    non-negative. Single-precision ``features`` (large problems only) give a Gram matrix summed in
    single precision, twice as fast."""
    n_problems, _, k = features.shape
    if k < _SYMMETRIC_UPDATE_MIN_DIMENSION:  # many small problems: one batched product
        return features.transpose(0, 2, 1) @ (features * weights[:, :, None])
    # Large problems: the symmetric rank-n update (BLAS syrk) on W^(1/2) X does half the work of a
    # general product; it fills the upper triangle, mirrored here.
    grams = np.empty((n_problems, k, k))
    single = features.dtype == np.float32
    for problem in range(n_problems):
        root = np.sqrt(weights[problem])[:, None]
        scaled = features[problem] * (root.astype(np.float32) if single else root)
        # scaled.T is Fortran-ordered: no copy
        upper = (ssyrk if single else dsyrk)(1.0, scaled.T, trans=0, lower=0)
        diagonal = np.diag(upper).copy()
        np.add(upper, upper.T, out=grams[problem])  # the strict lower triangle of upper is zero
        grams[problem][np.diag_indices(k)] = diagonal
    return grams


def _newton_direction(problems: _PaddedProblems, rows: np.ndarray, weights: np.ndarray, ridge: np.ndarray,
                      grad: np.ndarray, gram: np.ndarray | None) -> np.ndarray:
    """Solve ``(X^T W X + lambda I) step = grad`` for the problems ``rows``.

    Primal ``k x k`` system, or with ``n < k`` the Woodbury identity
    ``(lambda I + X^T W X)^{-1} g = (g - X^T S (lambda I + S X X^T S)^{-1} S X g) / lambda``,
    ``S = W^(1/2)``, an ``n x n`` system built from the precomputed Gram matrix ``X X^T``.
    """
    if gram is None:
        hessian = problems.weighted_gram(weights, rows)
        k = hessian.shape[-1]
        hessian[:, np.arange(k), np.arange(k)] += ridge[:, None]
        return ridged_solve(hessian, grad[..., None], ridge)[..., 0]
    root = np.sqrt(weights)
    n = root.shape[1]
    inner = root[:, :, None] * gram * root[:, None, :]
    inner[:, np.arange(n), np.arange(n)] += ridge[:, None]
    projected = root * problems.apply(grad, rows)
    solved = ridged_solve(inner, projected[..., None], ridge)[..., 0]
    return (grad - problems.apply_transposed(root * solved, rows)) / ridge[:, None]


def ridged_solve(matrices: np.ndarray, vectors: np.ndarray, ridge: Any) -> np.ndarray:
    """``M_b^{-1} V_b`` for symmetric ``M_b = (positive semidefinite) + ridge_b I``, ``(B, m, m)`` and
    ``(B, m, c)``.

    A batched LU solve; where rounding has swallowed the ridge (features of 1e8, as at a trial point
    far out on a line search) and some ``M_b`` comes out singular, by eigendecomposition with the
    eigenvalues floored at ``ridge_b``, their exact lower bound.
    """
    try:
        return np.linalg.solve(matrices, vectors)
    except np.linalg.LinAlgError:
        values, bases = np.linalg.eigh(matrices)
        values = np.maximum(values, np.reshape(np.broadcast_to(ridge, matrices.shape[:1]), (-1, 1)))
        return bases @ ((bases.transpose(0, 2, 1) @ vectors) / values[:, :, None])


def _backtrack(problems: _PaddedProblems, beta: float, ridge: np.ndarray, theta: np.ndarray,
               objective: np.ndarray, rows: np.ndarray, step: np.ndarray,
               grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Armijo backtracking for problems ``rows`` at ``theta`` (their current points).

    Returns the accepted points and objectives: the full Newton step, halved until the objective
    decreases by ``1e-4`` of the predicted amount.
    """
    decrease = np.sum(grad * step, axis=1)
    scale = np.ones(rows.size)
    candidate = theta - step
    values = objective.copy()
    pending = np.arange(rows.size)
    for _ in range(60):
        trial = problems.objective(beta, ridge, candidate[pending], rows[pending])
        # The slack of a few ulps of the objective lets a Newton step near the optimum through
        # when the decrease it makes is below what floating point can resolve.
        slack = 1e-13 * np.maximum(1.0, np.abs(objective[pending]))
        ok = trial <= objective[pending] - 1e-4 * scale[pending] * decrease[pending] + slack
        values[pending[ok]] = trial[ok]
        pending = pending[~ok]
        if pending.size == 0:
            break
        scale[pending] *= 0.5
        candidate[pending] = theta[pending] - scale[pending, None] * step[pending]
    # Problems still pending are at the limit of floating-point progress: keep their point.
    candidate[pending] = theta[pending]
    return candidate, values
