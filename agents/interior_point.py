"""Batched primal-dual interior-point method for exact pessimism against seminorm sets.

The problem of :func:`agents.planning.robust_optimize` for a set
``C = {theta_hat + sum_j radius_j K_j^T z_j : ||z_j|| <= 1}`` is, by linear programming duality
on the occupancy polytope, the conic program in the values ``V[h, s]`` and the stacked ball
coordinates ``z = (z_1, ..., z_J)``::

    minimise   rho . V_0 - theta(z) . d_ref
    subject to s[h, s, a] = V_h(s) - P[h, s, a] . V_{h+1} - theta(z) . phi[h, s, a] >= 0,
               (1, z_j) in the second-order cone Q_j,           theta(z) = theta_hat + Psi z,

whose multipliers of the linear constraints are the occupancy measure ``q[h, s, a] >= 0`` of
the primal problem (the flow constraints are the stationarity conditions in ``V``). Mehrotra's
predictor-corrector method with Nesterov-Todd scaling of the cones follows the central path of
this pair from a centred start; every iterate keeps ``(V, z)`` strictly feasible, so ``theta(z)``
is always a member of the set, and ``q > 0`` always defines a policy ``q / sum_a q``: the caller
certifies both after every iteration.

Each iteration solves one Newton system ``G^T W^{-2} G dx = r`` in ``(V, z)``: the value block is
block tridiagonal in the step ``h`` (``S x S`` blocks, ``A_V^T D A_V``), eliminated by a block
Cholesky factorisation, and the Schur complement on ``z`` is a dense ``k x k`` matrix
(``k = sum_j m_j``). Its cost, ``O(H S^2 (S A) + k^2 (S A + H S) + H S^2 A k)`` per user, does not
depend on the number of iterations of a first-order or cutting-plane method, which grows with
``k``; all users of a block are one set of batched array operations.

For one-hot features and a single ball of nearly full dimension (``k`` close to ``S A``, the sets
of an independent estimator) the system is solved in the feature coordinates ``y = Psi z``
instead (:class:`FeatureCoordinates`): the coupling of ``V`` and ``y`` is the flow operator
itself and the cone's block a fixed matrix over ``eta^2`` plus a rank-one term, so the two
``k x (S A)`` products of ``Psi`` with the weighted operators disappear and the Schur complement
is ``diag(sum_h D_h) - F^T F + ...`` with ``F = L^{-1} A_V^T D``, a symmetric rank update. There
each user's value block, its block Cholesky factor and ``F`` are formed in one sweep over the
steps (the user's arrays stay in cache, and ``F`` goes into the rank update without being
stored: the solves apply the coupling as the flow operator), and the right-hand sides need no
product with ``Psi`` (``Psi^{+T} Psi^T = I - N N^T``). While a user's relative duality gap is above
``1e-3`` the rank update and the factorisation are in single precision: far from the optimum the
systems are well conditioned, an inexact direction only changes the next iterate, and every
iterate is recomputed from ``(V, z)`` and certified exactly by the caller; near the optimum,
where the weights ``q / s`` spread over many orders of magnitude, double precision.

References
----------
Mehrotra, *On the implementation of a primal-dual interior point method*, SIAM Journal on
Optimization 2(4), 1992. Nesterov and Todd, *Primal-dual interior-point methods for
self-scaled cones*, SIAM Journal on Optimization 8(2), 1998. Vandenberghe, *The CVXOPT linear
and quadratic cone program solvers*, 2010 (scaling of second-order cones, sections 4-5).
Puterman, *Markov Decision Processes*, 1994, section 6.9 (the linear program of an MDP). Higham
and Mary, *Mixed precision algorithms in numerical linear algebra*, Acta Numerica 31, 2022
(single-precision factorisations where their rounding is harmless).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.linalg.lapack

__all__ = ["ConicProblem", "FeatureCoordinates", "feature_coordinates", "feature_coordinates_pay", "interior_point"]


@dataclass
class ConicProblem:
    """The data of a block of ``n`` users' problems, in the MDP's flattened layout.

    Attributes
    ----------
    transitions : ndarray, shape (H, S A, S)
    initial_distribution : ndarray, shape (S,)
    reward : ndarray, shape (n, H, S A)
        ``phi . theta_hat`` of every user.
    features : ndarray, shape (n, H or 1, S A, k)
        ``Psi = phi K^T`` with the radii folded in: ``theta(z) . phi = reward + Psi z`` (one step
        for stationary features).
    reference : ndarray, shape (n, k)
        ``Psi_ref = (radius_j K_j d_ref)_j``.
    blocks : tuple of int
        Sizes ``m_j`` of the balls, summing to ``k``.
    constant : ndarray, shape (n,)
        ``theta_hat . d_ref``, so that ``rho . V_0 - constant - reference . z`` is the dual objective.
    start : ndarray, shape (n, H, S, A)
        An occupancy whose mean product with the starting slacks sets the starting barrier
        level (the start is centred: ``q o s`` equal to it everywhere).
    coordinates : FeatureCoordinates, optional
        Set for one-hot features and one ball whose map has full column rank: the Newton systems
        are then solved in ``y = Psi z``.
    rows : ndarray of int, optional
        With ``coordinates``: row ``i`` of the other arrays is user ``rows[i]`` of ``features`` and
        ``coordinates`` (the method narrows a block to its running users without copying those
        ``(S A) x k`` matrices; their products are taken one user at a time).
    """

    transitions: np.ndarray
    initial_distribution: np.ndarray
    reward: np.ndarray
    features: np.ndarray
    reference: np.ndarray
    blocks: tuple[int, ...]
    start: np.ndarray
    constant: np.ndarray
    coordinates: FeatureCoordinates | None = None
    rows: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(n, H, S, A)``."""
        return self.start.shape


@dataclass
class FeatureCoordinates:
    """The map of a single ball to one-hot features, for Newton systems in ``y = Psi z``.

    For one-hot ``(s, a)`` features, ``theta(z) . phi[h, s, a] = reward + (Psi z)[s, a]`` with
    ``Psi = radius K^T`` ``(S A, k)``. When ``Psi`` has full column rank, ``z = Psi^+ y`` is a
    bijection between ``z`` and ``y`` in the range of ``Psi``, and the Newton system in ``(V, y)``
    needs no product with ``Psi``: the value-feature coupling is the flow operator itself, the
    feature block is ``diag(sum_h D_h)``, and the cone's block ``Psi^{+T} W^{-2} Psi^+`` is the fixed
    matrix ``Psi^{+T} Psi^+`` over ``eta^2`` plus a rank-one term. The range constraint
    ``N^T y = 0`` (``N`` an orthonormal basis of the complement) borders the system.

    Attributes
    ----------
    pseudo_inverse : ndarray, shape (n, k, S A)
        ``Psi^+``.
    metric : ndarray, shape (n, S A, S A)
        ``Psi^{+T} Psi^+``.
    normal : ndarray, shape (n, S A, S A - k)
        ``N``.
    """

    pseudo_inverse: np.ndarray
    metric: np.ndarray
    normal: np.ndarray


def feature_coordinates(adjoint: np.ndarray, *, condition: float = 1e8) -> FeatureCoordinates | None:
    """The :class:`FeatureCoordinates` of maps ``Psi`` ``(n, S A, k)``, or None when one of them is
    not of full column rank (a duplicated or dependent column: ``z`` is not a function of ``y``)
    or the bound ``||Psi||_F ||Psi^+||_F`` on its condition number exceeds ``condition``.

    From the complete QR factorisation ``Psi = [Q_1 Q_2] [R; 0]``: ``Psi^+ = R^{-1} Q_1^T`` and
    ``N = Q_2``. One user at a time (LAPACK on each matrix, into preallocated arrays: numpy's
    stacked QR and inverse make several full-size temporaries).
    """
    n, d, k = adjoint.shape
    if k > d or k == 0:
        return None
    pseudo_inverse, metric, normal = np.empty((n, k, d)), np.empty((n, d, d)), np.empty((n, d, d - k))
    for user in range(n):
        orthogonal, triangular = scipy.linalg.qr(adjoint[user], mode="full", check_finite=False)
        if not np.all(np.abs(np.diagonal(triangular[:k])) > 0):
            return None
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            pseudo_inverse[user] = scipy.linalg.solve_triangular(triangular[:k], orthogonal[:, :k].T,
                                                                 check_finite=False)
        if not np.isfinite(pseudo_inverse[user]).all():
            return None
        inverse_norm = np.sqrt(np.einsum("kd,kd->", pseudo_inverse[user], pseudo_inverse[user]))
        if not inverse_norm * np.sqrt(np.einsum("dk,dk->", adjoint[user], adjoint[user])) <= condition:
            return None
        normal[user] = orthogonal[:, k:]
        np.matmul(pseudo_inverse[user].T, pseudo_inverse[user], out=metric[user])
    return FeatureCoordinates(pseudo_inverse, metric, normal)


def feature_coordinates_pay(horizon: int, n_states: int, n_actions: int, k: int) -> bool:
    """Whether the Newton system in feature coordinates costs fewer operations than in ``z``."""
    pairs = n_states * n_actions
    in_z = 2 * pairs * k**2 + 2 * horizon * n_states * pairs * k + horizon * n_states * k**2 + k**3 / 3
    in_y = 2 * horizon * n_states**2 * pairs + horizon * n_states * pairs**2 + pairs**3 / 3 + 2 * pairs**2 * (pairs - k)
    return in_y < in_z


# -- second-order cones: Nesterov-Todd scaling and the Jordan algebra, one block for n users --


def _cone_norm(u: np.ndarray) -> np.ndarray:
    """``sqrt(u_0^2 - ||u_1||^2)`` for interior points ``u`` ``(n, m + 1)``."""
    return np.sqrt(np.maximum(u[:, 0] ** 2 - np.einsum("ij,ij->i", u[:, 1:], u[:, 1:]), np.finfo(float).tiny))


class _Scaling:
    """Nesterov-Todd scaling ``W = eta [[w_0, w_1^T], [w_1, I + w_1 w_1^T / (1 + w_0)]]`` of one cone,
    with ``W^{-1} s = W y = lambda`` (Vandenberghe 2010, section 4.2)."""

    def __init__(self, s: np.ndarray, y: np.ndarray) -> None:
        norm_s, norm_y = _cone_norm(s), _cone_norm(y)
        s_bar, y_bar = s / norm_s[:, None], y / norm_y[:, None]
        gamma = np.sqrt(0.5 * (1.0 + np.einsum("ij,ij->i", s_bar, y_bar)))
        y_bar[:, 1:] *= -1.0
        self.w = (s_bar + y_bar) / (2.0 * gamma[:, None])
        self.eta = np.sqrt(norm_s / norm_y)
        self.scaled = self.apply(y)  # lambda

    def apply(self, u: np.ndarray, inverse: bool = False) -> np.ndarray:
        """``W u`` or ``W^{-1} u``."""
        w0, w1 = self.w[:, 0], self.w[:, 1:]
        sign = -1.0 if inverse else 1.0
        dot = np.einsum("ij,ij->i", w1, u[:, 1:])
        out = np.empty_like(u)
        out[:, 0] = w0 * u[:, 0] + sign * dot
        out[:, 1:] = u[:, 1:] + (sign * u[:, 0] + dot / (1.0 + w0))[:, None] * w1
        factor = 1.0 / self.eta if inverse else self.eta
        return out * factor[:, None]

    def inverse_square_tail(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``(1:, 1:)`` block of ``W^{-2}``, ``(I + c w_1 w_1^T) / eta^2 = I / eta^2 + v v^T``, as
        ``(1 / eta^2 (n,), v (n, m))``."""
        w0, w1 = self.w[:, 0], self.w[:, 1:]
        inverse = 1.0 / (1.0 + w0)
        coefficient = 1.0 + 2.0 * inverse + inverse**2 * np.einsum("ij,ij->i", w1, w1)
        return 1.0 / self.eta**2, w1 * (np.sqrt(coefficient) / self.eta)[:, None]

    def add_inverse_square_tail(self, matrices: np.ndarray) -> None:
        """``matrices += (1:, 1:) block of W^{-2}`` in place, for ``(n, m, m)`` matrices."""
        scale, vector = self.inverse_square_tail()
        matrices += vector[:, :, None] * vector[:, None, :]
        index = np.arange(matrices.shape[-1])
        matrices[:, index, index] += scale[:, None]


def _jordan(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``u o v = (u . v, u_0 v_1 + v_0 u_1)``."""
    out = np.empty_like(u)
    out[:, 0] = np.einsum("ij,ij->i", u, v)
    out[:, 1:] = u[:, :1] * v[:, 1:] + v[:, :1] * u[:, 1:]
    return out


def _jordan_solve(scaled: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``x`` with ``lambda o x = rhs``."""
    l0, l1 = scaled[:, 0], scaled[:, 1:]
    determinant = l0**2 - np.einsum("ij,ij->i", l1, l1)
    out = np.empty_like(rhs)
    out[:, 0] = (l0 * rhs[:, 0] - np.einsum("ij,ij->i", l1, rhs[:, 1:])) / determinant
    out[:, 1:] = (rhs[:, 1:] - out[:, :1] * l1) / l0[:, None]
    return out


def _cone_step(u: np.ndarray, du: np.ndarray) -> np.ndarray:
    """Largest ``alpha`` (``inf`` if none) with ``u + alpha du`` in the cone, for interior ``u``.

    ``f(alpha) = (u_0 + alpha du_0)^2 - ||u_1 + alpha du_1||^2 = a alpha^2 + 2 b alpha + c`` with
    ``c > 0``; the line leaves the cone at the smallest positive root of ``f`` (it can reach the
    negative cone only through ``f <= 0``), or where ``u_0 + alpha du_0`` vanishes.
    """
    a = du[:, 0] ** 2 - np.einsum("ij,ij->i", du[:, 1:], du[:, 1:])
    b = u[:, 0] * du[:, 0] - np.einsum("ij,ij->i", u[:, 1:], du[:, 1:])
    c = u[:, 0] ** 2 - np.einsum("ij,ij->i", u[:, 1:], u[:, 1:])
    step = np.full(u.shape[0], np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        root = np.sqrt(np.maximum(b * b - a * c, 0.0))
        candidates = [(-b - root) / a, (-b + root) / a, np.where(a == 0, -c / (2.0 * b), np.inf)]
        candidates.append(np.where(du[:, 0] < 0, -u[:, 0] / du[:, 0], np.inf))
        for candidate in candidates:
            usable = np.isfinite(candidate) & (candidate > 0)
            step = np.where(usable, np.minimum(step, candidate), step)
    return step


# -- the method ----------------------------------------------------------------------------------


class _Iterate:
    """Primal-dual state of a block of users: ``V``, ``z`` (dual side, always feasible), ``q`` and the
    cone multipliers ``y_j`` (primal side)."""

    def __init__(self, problem: ConicProblem) -> None:
        n, horizon, n_states, n_actions = problem.shape
        self.problem = problem
        transitions, reward = problem.transitions, problem.reward
        # V above the optimal values of theta_hat by a margin that grows to the start: every
        # slack is then at least the margin, and z = 0 is the centre of every ball.
        margin = 1.0 + np.abs(reward).max(axis=(1, 2))[:, None]
        values = np.empty((n, horizon, n_states))
        following = np.zeros((n, n_states))
        for step in range(horizon - 1, -1, -1):
            q_values = reward[:, step] + following @ transitions[step].T
            values[:, step] = q_values.reshape(n, n_states, n_actions).max(axis=-1) + margin
            following = values[:, step]
        self.V = values
        self.z = np.zeros((n, sum(problem.blocks)))
        self.s = slacks(problem, self.V, self.z)
        # A perfectly centred start, q o s = level: the products of the start occupancy with the
        # slacks spread over orders of magnitude, which shortens the first steps. The flow
        # residual this leaves is driven to zero with the rest (an infeasible-start method).
        level = np.einsum("ihsa,ihsa->i", problem.start, self.s) / self.s[0].size
        self.q = level[:, None, None, None] / self.s
        self.y = []
        for size in problem.blocks:
            cone = np.zeros((n, size + 1))
            cone[:, 0] = level
            self.y.append(cone)
        # Separate primal and dual step lengths until the flow residual grows (rounding in an
        # ill-conditioned system, near a degenerate optimum): from then on one common step.
        self.common = np.zeros(n, dtype=bool)
        self.least_residual = np.full(n, np.inf)
        if problem.coordinates is not None:
            self.reference_y = _products(problem.coordinates.pseudo_inverse, problem.rows, problem.reference, left=True)

    def cones(self) -> list[np.ndarray]:
        """The cone slacks ``(1, z_j)``."""
        out, start = [], 0
        for size in self.problem.blocks:
            cone = np.empty((self.z.shape[0], size + 1))
            cone[:, 0] = 1.0
            cone[:, 1:] = self.z[:, start:start + size]
            out.append(cone)
            start += size
        return out

    def keep(self, rows: np.ndarray) -> None:
        """Restrict the state (and its problem) to the users ``rows``."""
        p = self.problem
        if p.coordinates is None:
            self.problem = ConicProblem(p.transitions, p.initial_distribution, p.reward[rows], p.features[rows],
                                        p.reference[rows], p.blocks, p.start[rows], p.constant[rows])
        else:
            # The users' (S A) x k matrices stay where they are: a copy would cost more than a step.
            self.problem = ConicProblem(p.transitions, p.initial_distribution, p.reward[rows], p.features,
                                        p.reference[rows], p.blocks, p.start[rows], p.constant[rows],
                                        p.coordinates, _users(p)[rows])
        self.V, self.z, self.q, self.s = self.V[rows], self.z[rows], self.q[rows], self.s[rows]
        self.y = [cone[rows] for cone in self.y]
        self.common, self.least_residual = self.common[rows], self.least_residual[rows]
        if p.coordinates is not None:
            self.reference_y = self.reference_y[rows]


def slacks(problem: ConicProblem, values: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``s[h, s, a] = V_h(s) - P[h, s, a] . V_{h+1} - theta(z) . phi[h, s, a]``, shape ``(n, H, S, A)``."""
    out = _bellman(problem, values) - problem.reward
    out -= _features_times(problem, z)
    return out.reshape(problem.shape)


def _users(problem: ConicProblem) -> np.ndarray:
    """The rows of ``features`` and ``coordinates`` of the block's users."""
    return np.arange(problem.shape[0]) if problem.rows is None else problem.rows


def _products(matrices: np.ndarray, rows: np.ndarray | None, vectors: np.ndarray, *, left: bool = False) -> np.ndarray:
    """``matrices[rows[i]] @ vectors[i]`` (``vectors[i] @ matrices[rows[i]]`` with ``left``) for each ``i``,
    ``rows`` None for the identity: stacked matrix-vector products without gathering the matrices."""
    if rows is None:
        if left:
            return np.matmul(vectors[:, None, :], matrices)[:, 0]
        return np.matmul(matrices, vectors[..., None])[..., 0]
    out = np.empty((len(rows), matrices.shape[-1] if left else matrices.shape[-2]))
    for index, row in enumerate(rows):
        if left:
            np.matmul(vectors[index], matrices[row], out=out[index])
        else:
            np.matmul(matrices[row], vectors[index], out=out[index])
    return out


def _features_times(problem: ConicProblem, z: np.ndarray) -> np.ndarray:
    """``Psi z`` as ``(n, H or 1, S A)`` (broadcasts over the steps for stationary features)."""
    _, steps, n_pairs, k = problem.features.shape
    flat = _products(problem.features.reshape(-1, steps * n_pairs, k), problem.rows, z)
    return flat.reshape(len(z), steps, n_pairs)


def _features_transposed(problem: ConicProblem, x: np.ndarray) -> np.ndarray:
    """``Psi^T x`` for ``x`` ``(n, H, S A)``: shape ``(n, k)``."""
    _, steps, n_pairs, k = problem.features.shape
    if steps == 1:
        x = x.sum(axis=1, keepdims=True)
    return _products(problem.features.reshape(-1, steps * n_pairs, k), problem.rows,
                     x.reshape(len(x), steps * n_pairs), left=True)


def _flow(problem: ConicProblem, x: np.ndarray) -> np.ndarray:
    """``A_V^T x``: ``sum_a x[h, s, a] - sum_{s', a} P[h-1, s', a, s] x[h-1, s', a]``, ``(n, H, S)``."""
    n, horizon, n_states, n_actions = problem.shape
    flat = x.reshape(n, horizon, n_states * n_actions)
    out = flat.reshape(n, horizon, n_states, n_actions).sum(axis=-1)
    # All steps in one stacked product (H - 1, n, S A) x (H - 1, S A, S).
    out[:, 1:] -= np.matmul(flat[:, :-1].transpose(1, 0, 2), problem.transitions[:-1]).transpose(1, 0, 2)
    return out


def _bellman(problem: ConicProblem, values: np.ndarray) -> np.ndarray:
    """``A_V dV``: ``dV_h(s) - P[h, s, a] . dV_{h+1}``, ``(n, H, S A)``."""
    n_actions = problem.shape[3]
    out = np.repeat(values, n_actions, axis=2)
    following = np.matmul(values[:, 1:].transpose(1, 0, 2), problem.transitions[:-1].transpose(0, 2, 1))
    out[:, :-1] -= following.transpose(1, 0, 2)
    return out


def _cholesky(matrices: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack of symmetric positive (semi)definite matrices.

    Near the optimum the weights ``q / s`` of active and inactive constraints differ by many
    orders of magnitude and rounding can make a factor fail; such a matrix gets a ridge of
    ``1e-14`` of its largest diagonal entry, grown a hundredfold until it factors (the Newton
    direction is then slightly damped, which the certificate of every iterate absorbs).
    """
    if len(matrices) <= _FEW:
        # A few small matrices: LAPACK directly, without numpy's per-call overhead.
        factors = np.empty_like(matrices)
        for index, matrix in enumerate(matrices):
            factor, info = scipy.linalg.lapack.dpotrf(matrix, lower=1, clean=1)
            if info != 0:
                break
            factors[index] = factor
        else:
            return factors
    else:
        try:
            return np.linalg.cholesky(matrices)
        except np.linalg.LinAlgError:
            pass
    factors = np.empty_like(matrices)
    identity = np.eye(matrices.shape[-1])
    for index, matrix in enumerate(matrices):
        size = max(float(np.abs(np.diagonal(matrix)).max(initial=0.0)), np.finfo(float).tiny)
        for ridge in (0.0, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6):
            try:
                factors[index] = np.linalg.cholesky(matrix + ridge * size * identity)
                break
            except np.linalg.LinAlgError:
                continue
        else:
            raise np.linalg.LinAlgError("a Newton system is not positive definite even with a ridge")
    return factors


_STACKED_ELEMENTS = 2_000_000  # D_h P_h of all steps at once up to this size (16 MB; step by step above,
# where fresh pages of a larger temporary cost more than the loop)
_FEW = 4  # up to this many users, small factorisations call LAPACK one matrix at a time
#: Relative duality gap above which a user's Schur complement in feature coordinates is formed and
#: factored in single precision. Measured on 29 full-dimensional sets of S = 50, A = 10, H = 10
#: (tol 1e-6): the same 552 steps and values to 9 digits as double precision throughout, where
#: single precision at every step took 560 steps.
_SINGLE_PRECISION_GAP = 1e-3


def _lower_inverse(factors: np.ndarray) -> np.ndarray:
    """Inverses of a stack of lower triangular matrices (LAPACK's ``trtri`` one matrix at a time:
    a sixth of the operations of numpy's stacked general inverse, faster even for 1000 ``10 x 10``)."""
    out = np.empty_like(factors)
    for index, factor in enumerate(factors):
        # trtri reads the C-ordered L as the Fortran-ordered upper L^T and returns L^{-T}.
        inverse, info = scipy.linalg.lapack.dtrtri(factor.T, lower=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"trtri failed with info {info}")
        out[index] = inverse.T
    return out


def _cho_solve(factors: list[tuple[np.ndarray, bool]], rhs: np.ndarray) -> np.ndarray:
    """``A^{-1} rhs`` for Cholesky factors of ``A``, one ``(Fortran-ordered factor, lower)`` per user,
    and ``rhs`` ``(n, m)`` or ``(n, m, c)``, by LAPACK's ``potrs`` (``scipy.linalg.cho_solve``
    copies a C-ordered factor at every call)."""
    out = np.empty(rhs.shape)
    for index, ((factor, lower), row) in enumerate(zip(factors, rhs)):
        if factor.dtype == np.float32:
            solution, info = scipy.linalg.lapack.spotrs(factor, row.astype(np.float32), lower=int(lower))
        else:
            solution, info = scipy.linalg.lapack.dpotrs(factor, row, lower=int(lower))
        if info != 0:
            raise np.linalg.LinAlgError(f"potrs failed with info {info}")
        out[index] = solution
    return out


class _NewtonSystem:
    """``G^T W^{-2} G`` in ``(V, z)``, factored: block Cholesky of the value block
    ``T = A_V^T D A_V`` (tridiagonal in ``h``), then Cholesky of the Schur complement on ``z``, or
    on ``y = Psi z`` when the problem carries :class:`FeatureCoordinates` (bordered by the range
    constraint)."""

    def __init__(self, problem: ConicProblem, weights: np.ndarray, scalings: list[_Scaling],
                 single: np.ndarray | None = None) -> None:
        """``single`` ``(n,)``: users whose Schur complement in feature coordinates is formed and
        factored in single precision (:data:`_SINGLE_PRECISION_GAP`)."""
        n, horizon, n_states, n_actions = problem.shape
        k = problem.features.shape[-1]
        pairs = n_states * n_actions
        transitions = problem.transitions
        coordinates = problem.coordinates
        flat = weights.reshape(n, horizon, pairs)
        self.problem = problem
        self.border = None
        self.weights = flat
        if coordinates is not None:
            self.inverse = np.empty((n, horizon, n_states, n_states))
            self.below = np.empty((n, max(horizon - 1, 0), n_states, n_states))
            self.factors = self._feature_system(coordinates, flat.sum(axis=1), scalings[0],
                                                np.zeros(n, dtype=bool) if single is None else single)
            normal = coordinates.normal[_users(problem)]
            if normal.shape[-1]:
                # The range constraint N^T dy = 0: dy = S^{-1} (r - N lambda) with
                # (N^T S^{-1} N) lambda = N^T S^{-1} r.
                solved = _cho_solve(self.factors, normal)
                self.border = (normal, solved, np.linalg.inv(np.matmul(np.swapaxes(normal, 1, 2), solved)))
            return
        # T: diagonal blocks diag(sum_a D_h) + P_{h-1}^T diag(D_{h-1}) P_{h-1}, off-diagonal
        # blocks -sum_a D_h[s, a] P_h[s, a, :].
        diagonal = np.zeros((n, horizon, n_states, n_states))
        index = np.arange(n_states)
        diagonal[:, :, index, index] = weights.sum(axis=-1)
        upper = np.empty((n, max(horizon - 1, 0), n_states, n_states))
        stationary = problem.features.shape[1] == 1
        scale = weights.reshape(n, -1).max(axis=1)
        # The coupling C = -A_V^T D Psi: C_h = -sum_a D_h[s, a] Psi[s, a] + P_{h-1}^T D_{h-1} Psi.
        # For large k one product (H S, S A) x (S A, k) per user forms all steps (stationary
        # features); for small k the operator (H S, S A) would cost more than the products. In
        # feature coordinates the operator is the coupling.
        if n * horizon * pairs * n_states <= _STACKED_ELEMENTS:
            # All steps in three array operations (the Python overhead of a loop over the steps
            # dominates small problems).
            weighted = flat[:, :-1, :, None] * transitions[:-1]  # D_h P_h, (n, H - 1, S A, S)
            diagonal[:, 1:] += np.matmul(np.swapaxes(transitions[:-1], 1, 2), weighted)
            upper[:] = -weighted.reshape(n, horizon - 1, n_states, n_actions, n_states).sum(axis=3)
            del weighted
        else:
            for step in range(1, horizon):
                previous = transitions[step - 1]  # (S A, S)
                weighted = flat[:, step - 1, :, None] * previous
                diagonal[:, step] += np.matmul(previous.T, weighted)
                upper[:, step - 1] = -weighted.reshape(n, n_states, n_actions, n_states).sum(axis=2)
        schur = None
        if stationary and coordinates is None:
            # Psi^T diag(w) Psi as X^T X with X = diag(sqrt(w)) Psi (a symmetric rank-k update).
            root = np.sqrt(flat.sum(axis=1))[..., None] * problem.features[:, 0]
            schur = np.matmul(np.swapaxes(root, 1, 2), root)
            del root
        elif coordinates is None:
            schur = np.zeros((n, k, k))
        if stationary and k >= n_states:
            pair_state = np.repeat(np.arange(n_states), n_actions)
            operator = np.zeros((n, horizon, n_states, pairs))
            operator[:, :, pair_state, np.arange(pairs)] = -flat
            for step in range(1, horizon):
                operator[:, step] += transitions[step - 1].T * flat[:, step - 1, None, :]
            coupling = np.matmul(operator.reshape(n, horizon * n_states, -1), problem.features[:, 0]).reshape(
                n, horizon, n_states, k)
            del operator
        elif stationary:
            weighted = flat[..., None] * problem.features  # D_h Psi, (n, H, S A, k)
            coupling = -weighted.reshape(n, horizon, n_states, n_actions, k).sum(axis=3)
            coupling[:, 1:] += np.matmul(np.swapaxes(transitions[:-1], 1, 2), weighted[:, :-1])
            del weighted
        else:
            coupling = np.empty((n, horizon, n_states, k))
            for step in range(horizon):
                features = problem.features[:, 0 if stationary else step]
                weighted = flat[:, step, :, None] * features  # D_h Psi_h, (n, S A, k)
                coupling[:, step] = -weighted.reshape(n, n_states, n_actions, k).sum(axis=2)
                if step > 0:
                    coupling[:, step] += np.matmul(transitions[step - 1].T, previous_weighted)
                if not stationary:
                    schur += np.matmul(np.swapaxes(features, 1, 2), weighted)
                previous_weighted = weighted
        # Unreachable states have q -> 0 and a vanishing row of T: a relative ridge keeps the
        # factorisation defined (it only perturbs the direction, which the certificate checks).
        diagonal[:, :, index, index] += 1e-13 * np.maximum(scale, np.finfo(float).tiny)[:, None, None]
        self.inverse = np.empty((n, horizon, n_states, n_states))
        self.below = np.empty((n, max(horizon - 1, 0), n_states, n_states))
        current = diagonal[:, 0]
        for step in range(horizon):
            cholesky = _cholesky(current)
            self.inverse[:, step] = _lower_inverse(cholesky)
            if step + 1 < horizon:
                self.below[:, step] = np.matmul(np.swapaxes(upper[:, step], 1, 2),
                                                np.swapaxes(self.inverse[:, step], 1, 2))
                current = diagonal[:, step + 1] - np.matmul(self.below[:, step], np.swapaxes(self.below[:, step], 1, 2))
        self.eliminated = self.forward(coupling).reshape(n, horizon * n_states, -1)  # L^{-1} C
        del coupling
        schur -= np.matmul(np.swapaxes(self.eliminated, 1, 2), self.eliminated)  # a symmetric rank-k update
        start = 0
        for size, scaling in zip(problem.blocks, scalings):
            scaling.add_inverse_square_tail(schur[:, start:start + size, start:start + size])
            start += size
        # potrs reads a C-ordered lower factor as the Fortran-ordered upper factor L^T.
        self.factors = [(np.swapaxes(factor, 0, 1), False) for factor in _cholesky(schur)]

    def _feature_system(self, coordinates: FeatureCoordinates, weight_sums: np.ndarray, scaling: _Scaling,
                        single: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """Factors of the Schur complement on ``y``,
        ``diag(sum_h D_h) + (Psi^{+T} Psi^+) / eta^2 + u u^T + rho N N^T - F^T F`` with ``F = L^{-1} C``
        and ``u = Psi^{+T} v`` for the cone's ``W^{-2} = I / eta^2 + v v^T``: ``rho N N^T``, zero on the
        range of ``Psi``, makes the leading block of the bordered system positive definite, and
        ``rho``, the mean diagonal of the rest, keeps it on the scale of the rest.

        One user at a time, in one sweep over the steps, so that its arrays stay in cache: ``W_h = D_h P_h``
        gives the value block's ``h + 1`` diagonal block ``diag(sum_a D_{h+1}) + P_h^T W_h``, its
        off-diagonal block ``-sum_a W_h[., a, .]`` and the coupling ``C_{h+1} = W_h^T - sum_a D_{h+1}[., a]``;
        the block Cholesky factor ``L`` of the value block (``L_h^{-1}`` and ``B_h = U_h^T L_h^{-T}``,
        kept for the solves) and ``F_h = L_h^{-1} (C_h - B_{h-1} F_{h-1})`` follow step by step, and
        ``F`` (``H S x S A``) goes into the symmetric rank update without being stored (the solves
        apply ``C`` as the flow operator). For the users ``single`` the rank update and the
        factorisation are in single precision (half the time of both, and of the solves), falling
        back to double precision if the factorisation fails. Each user's matrix is assembled in place in one
        Fortran-ordered buffer by BLAS (a scaled copy, a rank-one update, symmetric rank updates for
        ``N`` and ``F``, lower triangles only) and factored there by ``potrf``.
        """
        n, pairs = weight_sums.shape
        _, horizon, n_states, n_actions = self.problem.shape
        weight_sums_by_state = self.weights.reshape(n, horizon, n_states, n_actions).sum(axis=-1)
        cone_scale, vector = scaling.inverse_square_tail()
        users = _users(self.problem)
        u = _products(coordinates.pseudo_inverse, self.problem.rows, vector, left=True)
        metric_diagonal = np.einsum("nii->ni", coordinates.metric)[users]
        normal = coordinates.normal
        index = np.arange(pairs)
        states = np.arange(n_states)
        transitions = self.problem.transitions  # (H, S A, S)
        eliminated = np.empty((horizon, n_states, pairs))  # F of one user
        stacked, left = np.empty((2 * n_states, pairs)), np.empty((n_states, 2 * n_states))
        weighted = np.empty((pairs, n_states))  # W_{h-1}
        block = np.empty((n_states, n_states))
        buffer = np.empty((n, pairs, pairs))
        buffer_single = np.empty((n, pairs, pairs), dtype=np.float32) if single.any() else None
        factors = []
        blas, lapack = scipy.linalg.blas, scipy.linalg.lapack
        for user in range(n):
            weights = self.weights[user]
            inverse, below = self.inverse[user], self.below[user]
            # Unreachable states have q -> 0 and a vanishing row of T: a relative ridge keeps the
            # factorisation defined (it only perturbs the direction, which the certificate checks).
            ridge = 1e-13 * max(float(weights.max()), np.finfo(float).tiny)
            for step in range(horizon):
                block.fill(0.0)
                block[states, states] = weight_sums_by_state[user, step] + ridge
                # F_h = [L_h^{-1}, -L_h^{-1} B_{h-1}] [C_h; F_{h-1}]: one product with 2 S columns.
                work = stacked[:n_states]
                if step == 0:
                    work.fill(0.0)
                else:
                    block += np.matmul(transitions[step - 1].T, weighted)  # P_{h-1}^T W_{h-1}
                    block -= np.matmul(below[step - 1], below[step - 1].T)
                    np.copyto(work, weighted.T)
                    np.copyto(stacked[n_states:], eliminated[step - 1])
                inverse[step] = _lower_inverse(_cholesky(block[None]))[0]
                if step + 1 < horizon:
                    np.multiply(weights[step][:, None], transitions[step], out=weighted)  # W_h
                    # B_h = U_h^T L_h^{-T} with U_h = -sum_a W_h[s, a, .]
                    np.matmul(-weighted.reshape(n_states, n_actions, n_states).sum(axis=1).T, inverse[step].T,
                              out=below[step])
                work.reshape(n_states, n_states, n_actions)[states, states] -= (
                    weights[step].reshape(n_states, n_actions))
                if step == 0:
                    np.matmul(inverse[step], work, out=eliminated[step])
                else:
                    left[:, :n_states] = inverse[step]
                    np.matmul(inverse[step], below[step - 1], out=left[:, n_states:])
                    left[:, n_states:] *= -1.0
                    np.matmul(left, stacked, out=eliminated[step])
            flat = eliminated.reshape(horizon * n_states, pairs)
            diagonal = (weight_sums[user] + cone_scale[user] * metric_diagonal[user] + u[user] ** 2
                        - np.einsum("hd,hd->d", flat, flat))
            rho = max(float(diagonal.mean()), np.finfo(float).tiny)
            if single[user]:
                matrix = buffer_single[user].T  # Fortran-ordered view
                np.multiply(coordinates.metric[users[user]].T, cone_scale[user], out=matrix, casting="same_kind")
                matrix[index, index] += weight_sums[user]
                matrix = blas.ssyr(1.0, u[user].astype(np.float32), a=matrix, lower=1, overwrite_a=1)
                if normal.shape[-1]:
                    matrix = blas.ssyrk(rho, normal[users[user]].astype(np.float32), beta=1.0, c=matrix, lower=1,
                                        overwrite_c=1)
                matrix = blas.ssyrk(-1.0, flat.T.astype(np.float32, order="F"), beta=1.0, c=matrix, lower=1,
                                    overwrite_c=1)
                factor, info = lapack.spotrf(matrix, lower=1, clean=0, overwrite_a=1)
                if info == 0:
                    factors.append((factor, True))
                    continue

            def assemble(ridge: float = 0.0) -> np.ndarray:
                matrix = buffer[user].T  # Fortran-ordered view
                np.multiply(coordinates.metric[users[user]].T, cone_scale[user], out=matrix)  # symmetric: same layout
                matrix[index, index] += weight_sums[user] + ridge
                matrix = blas.dsyr(1.0, u[user], a=matrix, lower=1, overwrite_a=1)
                if normal.shape[-1]:
                    matrix = blas.dsyrk(rho, normal[users[user]], beta=1.0, c=matrix, lower=1,
                                        overwrite_c=1)
                return blas.dsyrk(-1.0, flat.T, beta=1.0, c=matrix, lower=1, overwrite_c=1)

            factor, info = lapack.dpotrf(assemble(), lower=1, clean=0, overwrite_a=1)
            # Rounding near the optimum: a ridge grown a hundredfold until it factors (as _cholesky).
            size = float(np.abs(diagonal).max(initial=0.0)) + np.finfo(float).tiny
            for ridge in (1e-14, 1e-12, 1e-10, 1e-8, 1e-6):
                if info == 0:
                    break
                factor, info = lapack.dpotrf(assemble(ridge * size), lower=1, clean=0, overwrite_a=1)
            if info != 0:
                raise np.linalg.LinAlgError("a Newton system is not positive definite even with a ridge")
            factors.append((factor, True))
        return factors

    def forward(self, rhs: np.ndarray) -> np.ndarray:
        """``L^{-1} rhs`` for ``rhs`` ``(n, H, S, m)``."""
        out = np.empty_like(rhs)
        out[:, 0] = np.matmul(self.inverse[:, 0], rhs[:, 0])
        for step in range(1, rhs.shape[1]):
            out[:, step] = np.matmul(self.inverse[:, step], rhs[:, step] - np.matmul(self.below[:, step - 1], out[:, step - 1]))
        return out

    def backward(self, rhs: np.ndarray) -> np.ndarray:
        """``L^{-T} rhs``."""
        out = np.empty_like(rhs)
        last = rhs.shape[1] - 1
        out[:, last] = np.matmul(np.swapaxes(self.inverse[:, last], 1, 2), rhs[:, last])
        for step in range(last - 1, -1, -1):
            residual = rhs[:, step] - np.matmul(np.swapaxes(self.below[:, step], 1, 2), out[:, step + 1])
            out[:, step] = np.matmul(np.swapaxes(self.inverse[:, step], 1, 2), residual)
        return out

    def solve(self, rhs_values: np.ndarray, rhs_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dV, dz)`` solving the system with right-hand side ``(rhs_values (n, H, S), rhs_z (n, k))``."""
        n, horizon, n_states = rhs_values.shape
        if self.problem.coordinates is not None:
            rhs_y = _products(self.problem.coordinates.pseudo_inverse, self.problem.rows, rhs_z, left=True)
            return self.solve_features(rhs_values, rhs_y)[:2]
        eliminated = self.forward(rhs_values[..., None])
        reduced = rhs_z - np.matmul(np.swapaxes(self.eliminated, 1, 2), eliminated.reshape(n, -1, 1))[..., 0]
        dx = _cho_solve(self.factors, reduced)
        if self.border is not None:
            normal, solved, inverse = self.border
            multiplier = np.matmul(inverse, np.matmul(normal.transpose(0, 2, 1), dx[..., None]))
            dx = dx - np.matmul(solved, multiplier)[..., 0]
        back = eliminated.reshape(n, -1) - np.matmul(self.eliminated, dx[..., None])[..., 0]
        dV = self.backward(back.reshape(n, horizon, n_states, 1))[..., 0]
        return dV, dx

    def solve_features(self, rhs_values: np.ndarray, rhs_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`solve` in feature coordinates, for the right-hand side ``rhs_y = Psi^{+T} r_z``,
        with the coupling applied as the flow operator: ``dy = S^{-1} (rhs_y - C^T T^{-1} r_V)``
        (bordered by ``N^T dy = 0``) and ``dV = T^{-1} (r_V - C dy)``, where
        ``C y = -A_V^T D (y, ..., y)`` and ``C^T w = -sum_h D_h (A_V w)_h``. Returns ``(dV, dz, dy)``."""
        problem, coordinates = self.problem, self.problem.coordinates
        shape = problem.shape

        def value_solve(rhs: np.ndarray) -> np.ndarray:  # T^{-1} rhs
            return self.backward(self.forward(rhs[..., None]))[..., 0]

        rhs_y = rhs_y + np.einsum("nhd,nhd->nd", self.weights, _bellman(problem, value_solve(rhs_values)))
        dy = _cho_solve(self.factors, rhs_y)
        if self.border is not None:
            normal, solved, inverse = self.border
            multiplier = np.matmul(inverse, np.matmul(normal.transpose(0, 2, 1), dy[..., None]))
            dy = dy - np.matmul(solved, multiplier)[..., 0]
        dV = value_solve(rhs_values + _flow(problem, (self.weights * dy[:, None, :]).reshape(shape)))
        return dV, _products(coordinates.pseudo_inverse, problem.rows, dy), dy  # dz = Psi^+ dy


def interior_point(
    problem: ConicProblem,
    check: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    *,
    tol: float,
    max_iterations: int,
    out_of_time: Callable[[], bool],
) -> np.ndarray:
    """Run Mehrotra's method on a block of users until ``check`` says each is done.

    Parameters
    ----------
    problem : ConicProblem
    check : callable ``(rows, q, z) -> done``
        Called with the users whose own duality gap ``q . s + sum_j y_j . (1, z_j)`` has fallen
        within ``1000 tol`` of their dual objective (the certificate, a backward induction at
        ``theta(z)`` and the exact value of ``q``'s policy, is tighter than that gap, but not by
        orders of magnitude), with their occupancies ``q`` ``(m, H, S, A)`` and ball coordinates
        ``z`` ``(m, k)``; records what it needs (the caller certifies the gap exactly) and
        returns which of them are finished.
    tol : float
        The caller's relative tolerance.
    max_iterations : int
    out_of_time : callable
        Polled once per iteration; stops all users when it returns True.

    Returns
    -------
    ndarray of int, shape (n,)
        Iterations run by each user. Users whose duality gap and flow residual fell to
        ``1e-4 tol`` without a certificate within ``tol`` (rounding limits the certificate) stop
        there too.
    """
    n = problem.shape[0]
    state = _Iterate(problem)
    rows = np.arange(n)
    iterations = np.zeros(n, dtype=int)
    degree = state.q[0].size + len(problem.blocks)
    for iteration in range(max_iterations):
        if not rows.size or out_of_time():
            break
        try:
            # Near a degenerate optimum (a ball term at its apex) rounding can zero a slack or
            # overflow a cone's scaling: raised here, such a step ends the method like an indefinite factor.
            with np.errstate(divide="raise", over="raise", invalid="raise"):
                _mehrotra_step(state, degree)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            # Rounding has made a factor indefinite: the last iterate is as good as it gets.
            check(rows, state.q, state.z)
            break
        iterations[rows] += 1
        gap = np.einsum("ihsa,ihsa->i", state.q, state.s) + sum(
            np.einsum("ij,ij->i", cone, y) for cone, y in zip(state.cones(), state.y))
        scale = np.maximum(1.0, np.abs(_dual_objective(state)))
        last = iteration + 1 == max_iterations
        ready = (gap <= 1e3 * tol * scale) | last | out_of_time()
        done = np.zeros(rows.size, dtype=bool)
        if ready.any():
            done[ready] = np.asarray(check(rows[ready], state.q[ready], state.z[ready]), dtype=bool)
        # Far below tol with a flow-feasible q, no further step can improve the certificate.
        flow = _flow(state.problem, state.q)
        flow[:, 0] -= state.problem.initial_distribution
        residual = np.abs(flow).sum(axis=(1, 2))
        done |= (gap <= 1e-4 * tol * scale) & (residual <= 1e-4 * tol)
        state.common |= residual > 10.0 * state.least_residual
        state.least_residual = np.minimum(state.least_residual, residual)
        if done.all():
            break
        if done.any():
            state.keep(np.flatnonzero(~done))
            rows = rows[~done]
    return iterations


def _dual_objective(state: _Iterate) -> np.ndarray:
    """``rho . V_0 - theta(z) . d_ref``: an upper bound on the optimum at every iterate."""
    problem = state.problem
    return state.V[:, 0] @ problem.initial_distribution - problem.constant - np.einsum("ik,ik->i", problem.reference, state.z)


def _mehrotra_step(state: _Iterate, degree: int) -> None:
    """One predictor-corrector step, with separate step lengths for the primal side ``(q, y)`` and the
    dual side ``(V, z)``: the dual iterates are feasible by construction (``s`` is computed from
    ``(V, z)``), so only the primal residuals, linear in ``(q, y)``, shrink with the primal step.
    Users whose flow residual has grown (``state.common``) take one common step."""
    problem = state.problem
    n = problem.shape[0]
    cones = state.cones()
    q, s = state.q, state.s
    mu = (np.einsum("ihsa,ihsa->i", q, s) + sum(np.einsum("ij,ij->i", c, y) for c, y in zip(cones, state.y))) / degree
    flow_residual = _flow(problem, q)
    flow_residual[:, 0] -= problem.initial_distribution  # A_V^T q - b_V
    coordinates = problem.coordinates
    if coordinates is None:
        z_residual = _features_transposed(problem, q.reshape(n, q.shape[1], -1)) - problem.reference
        start = 0
        for size, y in zip(problem.blocks, state.y):
            z_residual[:, start:start + size] -= y[:, 1:]
            start += size
    else:
        # In y = Psi z, Psi^{+T} of the z residual Psi^T sum_h q - Psi_ref - y_1 needs no product
        # with Psi: Psi^{+T} Psi^T = I - N N^T, and Psi^{+T} Psi_ref = state.reference_y.
        normal = coordinates.normal[_users(problem)]
        occupied = q.reshape(n, q.shape[1], -1).sum(axis=1)
    weights = q / s
    scalings = [_Scaling(c, y) for c, y in zip(cones, state.y)]
    single = None
    if problem.coordinates is not None:
        # Far from the optimum the Newton systems are well conditioned and their directions need
        # not be exact (each iterate is recomputed from (V, z), and the caller certifies it
        # exactly): single precision there.
        single = mu * degree > _SINGLE_PRECISION_GAP * np.maximum(1.0, np.abs(_dual_objective(state)))
    system = _NewtonSystem(problem, weights, scalings, single)
    root = np.sqrt(s / q)  # W of the linear cone
    scaled = np.sqrt(q * s)  # lambda of the linear cone

    def direction(target_linear: np.ndarray, targets: list[np.ndarray]):
        # W dy + W^{-1} ds = xi := lambda \ target;  dx from G^T W^{-2} G dx = -r_x - G^T W^{-1} xi
        linear = target_linear / scaled / root  # W^{-1} xi, linear cone
        conic = [scaling.apply(_jordan_solve(scaling.scaled, target), inverse=True)
                 for scaling, target in zip(scalings, targets)]
        rhs_values = flow_residual + _flow(problem, linear)
        if coordinates is None:
            rhs_z = -z_residual - _features_transposed(problem, linear.reshape(n, linear.shape[1], -1))
            start = 0
            for size, part in zip(problem.blocks, conic):
                rhs_z[:, start:start + size] += part[:, 1:]
                start += size
            dV, dz = system.solve(rhs_values, rhs_z)
            ds = (_bellman(problem, dV) - _features_times(problem, dz)).reshape(q.shape)
        else:
            total = occupied + linear.reshape(n, linear.shape[1], -1).sum(axis=1)
            total -= np.matmul(normal, np.matmul(total[:, None, :], normal).transpose(0, 2, 1))[..., 0]
            rhs_y = state.reference_y - total + _products(coordinates.pseudo_inverse, problem.rows,
                                                          state.y[0][:, 1:] + conic[0][:, 1:], left=True)
            dV, dz, dy = system.solve_features(rhs_values, rhs_y)
            ds = (_bellman(problem, dV) - dy[:, None, :]).reshape(q.shape)  # Psi dz = dy
        dq = linear - weights * ds
        ds_cones, dy_cones, start = [], [], 0
        for size, scaling, part in zip(problem.blocks, scalings, conic):
            ds_cone = np.zeros((n, size + 1))
            ds_cone[:, 1:] = dz[:, start:start + size]
            ds_cones.append(ds_cone)
            dy_cones.append(part - scaling.apply(scaling.apply(ds_cone, inverse=True), inverse=True))
            start += size
        return dV, dz, dq, ds, dy_cones, ds_cones

    def step_lengths(dq, ds, dy_cones, ds_cones) -> tuple[np.ndarray, np.ndarray]:
        """Largest steps keeping the primal side ``(q, y)`` and the dual side ``(s, (1, z))`` interior."""
        with np.errstate(divide="ignore", invalid="ignore"):
            primal = np.min(np.where(dq < 0, -q / dq, np.inf).reshape(n, -1), axis=1)
            dual = np.min(np.where(ds < 0, -s / ds, np.inf).reshape(n, -1), axis=1)
        for c, y, dc, dy in zip(cones, state.y, ds_cones, dy_cones):
            primal = np.minimum(primal, _cone_step(y, dy))
            dual = np.minimum(dual, _cone_step(c, dc))
        return np.minimum(1.0, primal), np.minimum(1.0, dual)

    # Predictor: the affine-scaling direction (target lambda o lambda -> 0).
    affine = direction(-scaled * scaled, [-_jordan(sc.scaled, sc.scaled) for sc in scalings])
    dV, dz, dq, ds, dy_cones, ds_cones = affine
    primal, dual = step_lengths(dq, ds, dy_cones, ds_cones)
    gap_affine = np.einsum("ihsa,ihsa->i", q + primal[:, None, None, None] * dq, s + dual[:, None, None, None] * ds)
    for c, y, dc, dy in zip(cones, state.y, ds_cones, dy_cones):
        gap_affine += np.einsum("ij,ij->i", c + dual[:, None] * dc, y + primal[:, None] * dy)
    centring = np.clip(gap_affine / degree / mu, 0.0, 1.0) ** 3
    # Corrector: second-order term of the complementarity and the centring target.
    target_linear = -scaled * scaled - (ds / root) * (dq * root) + (centring * mu)[:, None, None, None]
    targets = []
    for scaling, dc, dy in zip(scalings, ds_cones, dy_cones):
        target = -_jordan(scaling.scaled, scaling.scaled) - _jordan(scaling.apply(dc, inverse=True), scaling.apply(dy))
        target[:, 0] += centring * mu
        targets.append(target)
    dV, dz, dq, ds, dy_cones, ds_cones = direction(target_linear, targets)
    primal, dual = step_lengths(dq, ds, dy_cones, ds_cones)
    common = np.minimum(primal, dual)
    primal, dual = 0.99 * np.where(state.common, common, primal), 0.99 * np.where(state.common, common, dual)
    state.V = state.V + dual[:, None, None] * dV
    state.z = state.z + dual[:, None] * dz
    state.s = slacks(problem, state.V, state.z)
    state.q = q + primal[:, None, None, None] * dq
    state.y = [y + primal[:, None] * dy for y, dy in zip(state.y, dy_cones)]
