"""Confidence sets that carry the error of an estimated subspace (docs/algorithms.md, Estimators).

P-ShareLoRA and LoCo-RLHF (PRS) build each user's set in an estimated subspace: the ellipsoid
``{offset + U_hat w : ||w - w_hat||_M <= rho}`` contains, at best, the projection of the truth
onto ``U_hat``'s span, never the truth itself, and pessimism against it guarantees nothing about
the part of the truth it cannot see. :class:`SubspaceErrorSet` adds a ball in the orthogonal
complement of the subspace,

    C = {theta + e : theta in inner, U^T e = 0, ||e|| <= epsilon},

so that the truth is in ``C`` when its projection is in the inner set and its distance to the
subspace is at most ``epsilon``. Its support function is the inner set's minus
``epsilon ||(I - U U^T) v||``: the agent's own pessimism then pays for the subspace error.

``epsilon`` comes from a bound on the principal angles between the true and the estimated
subspaces, calibrated by a parametric bootstrap of the joint rank-``r`` fit
(:func:`bootstrap_refits`, :func:`sharelora_sine_bound`, :func:`loco_dropped_block_bound`), with
the level ``delta`` split between the inner set (``delta / 2``) and the angle (``delta / 2``) by a
union bound; docs/algorithms.md ("The subspace error") derives the radii.

Where the subspace is not identified the bootstrap understates the angle (the fitted world looks
better identified than the truth), so P-ShareLoRA checks the bound against ``max_sine``
(:data:`MAX_IDENTIFIED_SINE`) and the agreement of fits on two halves of the users
(:func:`split_half_sine`), and, failing either, falls back to the full-dimensional Wald set of the
independent fit, held as a :class:`SubspaceErrorSet` around the span of each user's pairs
(:func:`pair_span`); the bootstrap stops as soon as the answer is decided (docs/confidence_sets.md,
"The subspace error").
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.special import expit

from lr_mdp_env._validation import as_generator, as_real_array, check_int, check_real, frozen

from .confidence import ComplementSeminorm, ConfidenceSet, LinearSeminorm, Seminorm
from .factorized import FactoredFit, fit_factored

__all__ = [
    "MAX_IDENTIFIED_SINE",
    "SUBSPACE_ERRORS",
    "SubspaceNotIdentifiedWarning",
    "SubspaceErrorSet",
    "bootstrap_refits",
    "check_subspace_error",
    "coordinate_bound",
    "epsilon_from_product",
    "epsilon_from_sine",
    "loco_dropped_block_bound",
    "order_statistic",
    "pair_span",
    "pair_span_weights",
    "sharelora_sine_bound",
    "sine",
    "split_half_sine",
    "subspace_error_seed",
]

#: Values of the reduced estimators' ``subspace_error`` option.
SUBSPACE_ERRORS = ("bootstrap", "ignore")
#: Default ``max_sine`` of :class:`~agents.PShareLoRA`: beyond this bootstrap bound on the sine of
#: the largest principal angle, ``U_hat`` is treated as not identified and the user's set falls
#: back to the full-dimensional one (docs/confidence_sets.md, "The subspace error"). Below it
#: ``tan(a) <= 0.44``: the in-span fit is close to the projection of the truth, which the set in
#: ``U_hat``'s span is built for.
MAX_IDENTIFIED_SINE = 0.4


class SubspaceNotIdentifiedWarning(UserWarning):
    """The bootstrap bound on the subspace angle reached ``max_sine``: the estimated subspace is not
    identified by the data, and the sets fall back to ones that do not use it."""

# Relative tolerance of the bootstrap refits: each starts from the fit of the real data, where the
# gradient under the resampled labels is the resampling noise itself; a thousandfold reduction of it
# moves each user's distance to the subspace by about 1e-3 of itself (measured), far below the
# spread of the bootstrap distribution the quantile is read from.
_BOOTSTRAP_TOL = 1e-3
# Frank-Wolfe steps of the generic membership test (inner sets without seminorm structure).
_FRANK_WOLFE_MAX_STEPS = 20000


def _as_value(value: np.ndarray) -> np.ndarray | float:
    return float(value) if np.ndim(value) == 0 else value


@dataclass(frozen=True, eq=False)
class SubspaceErrorSet(ConfidenceSet):
    """``C = {theta + e : theta in inner, U^T e = 0, ||e|| <= epsilon}``: a set plus a ball in the
    orthogonal complement of the orthonormal columns ``U`` (docs/algorithms.md, Estimators).

    For P-ShareLoRA the inner set lies in ``offset + range(U_hat)`` and ``U`` is ``U_hat`` with
    the unidentified directions appended (comparisons never see them, so the ball leaves them
    out): every member splits uniquely into its part in the inner set and its error ``e``. For
    LoCo-RLHF the inner set of a context ``x`` also moves along the complement of ``V_hat``
    (the ``(U, V_perp)`` block of the rotated coordinates), the split is not unique, and
    :meth:`contains` solves the small convex problem described there.

    Attributes
    ----------
    inner : ConfidenceSet
        Any set of the protocol, e.g. the :class:`~agents.confidence.Ellipsoid` in ``U_hat``'s
        coordinates.
    subspace : ndarray, shape (d, r)
        Orthonormal columns ``U``; the ball lies in their orthogonal complement.
    epsilon : float
        Radius of the ball, ``>= 0``.

    Notes
    -----
    ``lower(v) = inner.lower(v) - epsilon ||(I - U U^T) v||`` and the minimiser is the inner
    set's minus ``epsilon (I - U U^T) v / ||(I - U U^T) v||``: the support function of a
    Minkowski sum is the sum of the support functions. When the inner set has seminorm structure
    (:meth:`~agents.confidence.ConfidenceSet.seminorms`) so does ``C``, with one more term
    :class:`~agents.confidence.ComplementSeminorm`, and the exact planner keeps its fast path.

    References
    ----------
    Rockafellar, *Convex Analysis*, Princeton 1970, Theorem 13.1 and Corollary 16.4.1 (support
    functions of sums). Liu et al., arXiv:2503.19201 (P-ShareLoRA); Lee, Sun and Liu,
    arXiv:2412.19436 (LoCo-RLHF).
    """

    inner: ConfidenceSet
    subspace: np.ndarray
    epsilon: float

    def __post_init__(self) -> None:
        if not isinstance(self.inner, ConfidenceSet):
            raise TypeError(f"inner must be a ConfidenceSet, got {type(self.inner).__name__}")
        subspace = as_real_array("subspace", self.subspace, (2,))
        d = self.inner.n_features
        if subspace.shape[0] != d or subspace.shape[1] > d:
            raise ValueError(f"subspace must have shape ({d}, r) with r <= {d} to match the inner set, "
                             f"got {subspace.shape}")
        gram = subspace.T @ subspace
        if not np.allclose(gram, np.eye(subspace.shape[1]), atol=1e-8):
            raise ValueError("subspace must have orthonormal columns")
        epsilon = check_real("epsilon", self.epsilon, 0.0)
        object.__setattr__(self, "subspace", frozen(subspace))
        object.__setattr__(self, "epsilon", epsilon)

    # -- the protocol -----------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return self.inner.n_features

    @property
    def theta_hat(self) -> np.ndarray:
        """The inner set's centre (``e = 0``)."""
        return self.inner.theta_hat

    def complement(self, vectors: Any) -> np.ndarray:
        """``(I - U U^T) v`` for ``v`` of shape ``(d,)`` or ``(..., d)``."""
        vectors = np.asarray(vectors, dtype=float)
        return vectors - (vectors @ self.subspace) @ self.subspace.T

    def lower(self, vectors: Any) -> np.ndarray | float:
        """``inner.lower(v) - epsilon ||(I - U U^T) v||``."""
        vectors = np.asarray(vectors, dtype=float)
        value = np.asarray(self.inner.lower(vectors), dtype=float) - \
            self.epsilon * np.linalg.norm(self.complement(vectors), axis=-1)
        return _as_value(value)

    def upper(self, vectors: Any) -> np.ndarray | float:
        """``inner.upper(v) + epsilon ||(I - U U^T) v||``."""
        vectors = np.asarray(vectors, dtype=float)
        value = np.asarray(self.inner.upper(vectors), dtype=float) + \
            self.epsilon * np.linalg.norm(self.complement(vectors), axis=-1)
        return _as_value(value)

    def minimizer(self, vectors: Any) -> np.ndarray:
        """The inner set's minimiser minus ``epsilon (I - U U^T) v / ||(I - U U^T) v||`` (nothing
        is subtracted where ``(I - U U^T) v = 0``)."""
        vectors = np.asarray(vectors, dtype=float)
        error = self.complement(vectors)
        norms = np.linalg.norm(error, axis=-1, keepdims=True)
        # A complement part at rounding level (v in range(U)) has no direction worth following.
        significant = norms > 1e-12 * np.linalg.norm(vectors, axis=-1, keepdims=True)
        direction = np.divide(error, norms, out=np.zeros_like(error), where=significant)
        return np.asarray(self.inner.minimizer(vectors), dtype=float) - self.epsilon * direction

    def seminorms(self) -> tuple[Seminorm, ...] | None:
        """The inner set's terms and ``ComplementSeminorm(epsilon, U)``, or ``None`` when the inner
        set has no such structure."""
        terms = self.inner.seminorms()
        if terms is None:
            return None
        return (*terms, ComplementSeminorm(self.epsilon, np.asarray(self.subspace)))

    def rectangular_bonus(self, phi_id: np.ndarray) -> np.ndarray | None:
        """The inner set's own rectangular bonus (when it has one) plus ``epsilon ||(I - U U^T) phi_p||``
        for every row ``phi_p`` of ``phi_id`` (the support function of the sum); ``None`` when the
        inner set has no such method, so that the planner takes the generic path."""
        own = getattr(self.inner, "rectangular_bonus", None)
        inner = own(phi_id) if callable(own) else None
        if inner is None:
            return None
        return np.asarray(inner, dtype=float) + self.epsilon * _complement_norms(np.asarray(self.subspace), phi_id)

    # -- membership ---------------------------------------------------------------------------------

    def required_epsilon(self, theta: Any) -> float:
        """The smallest ball radius for which ``theta`` would be in the set:
        ``min ||(I - U U^T)(theta - t)||`` over members ``t`` of the inner set with
        ``U^T t = U^T theta`` (``inf`` when there is none).

        The error ``e = theta - t`` must satisfy ``U^T e = 0``, so ``t`` must match ``theta`` on
        ``range(U)``; among those, the one closest to ``theta`` off ``range(U)`` decides.

        - Inner sets with one seminorm, ``{theta_hat + K^T z : ||z|| <= rho}`` (ellipsoids):
          with ``u = theta - theta_hat``, minimise ``||u - K^T z||`` subject to
          ``U^T K^T z = U^T u`` and ``||z|| <= rho``. Writing ``z = z_0 + N a`` (``z_0`` the
          least-norm solution of the constraint, ``N`` an orthonormal basis of the null space
          of ``U^T K^T``) leaves a least-squares problem in ``a`` on the ball
          ``||a||^2 <= rho^2 - ||z_0||^2``, solved exactly from the singular value
          decomposition and the secular equation of its multiplier (More and Sorensen 1983). For
          P-ShareLoRA ``N`` is empty: the split is unique.
        - Inner sets with ``offset`` and ``basis`` inside ``range(U)`` (the split is unique):
          ``t = offset + U U^T (theta - offset)`` must be in the inner set, and the answer is
          ``||(I - U U^T)(theta - offset)||``.
        - Other inner sets: the protocol gives no way to restrict ``t`` to ``U^T t = U^T theta``,
          so ``NotImplementedError`` is raised; :meth:`contains` then measures the distance from
          ``theta`` to ``C`` itself by Frank-Wolfe, whose linear oracle is :meth:`minimizer`.

        References
        ----------
        More and Sorensen, *Computing a Trust Region Step*, SIAM J. Sci. Stat. Comput. 4, 1983.
        """
        theta = self._checked(theta)
        terms = self.inner.seminorms()
        if terms is not None and len(terms) == 1:
            return self._required_epsilon_seminorm(theta, terms[0])
        offset, basis = getattr(self.inner, "offset", None), getattr(self.inner, "basis", None)
        if offset is not None and basis is not None and self._inside_subspace(np.asarray(basis, dtype=float)):
            offset = np.asarray(offset, dtype=float)
            residual = theta - offset
            in_subspace = offset + self.subspace @ (self.subspace.T @ residual)
            if not self.inner.contains(in_subspace):
                return math.inf
            return float(np.linalg.norm(self.complement(residual)))
        raise NotImplementedError(f"required_epsilon needs an inner set with one seminorm or a basis inside the "
                                  f"subspace; {type(self.inner).__name__} has neither")

    def contains(self, theta: Any, *, atol: float = 1e-9, project: bool = False) -> bool:
        """Whether ``theta`` is in the set, exactly (see :meth:`required_epsilon`).

        Parameters
        ----------
        theta : array_like, shape (d,)
        atol : float, default 1e-9
            Relative tolerance.
        project : bool, default False
            First project ``theta`` onto the set's affine span ``theta_hat + span(inner) +
            range(U)^perp`` (for P-ShareLoRA this drops only the unidentified directions, kept out
            of ``U``'s complement): with ``epsilon > 0`` the span reaches every other direction,
            so this tests the full truth, where an :class:`~agents.confidence.Ellipsoid` in
            ``U_hat``'s span tests only its projection. Needs an inner set with a ``basis``.
        """
        theta = self._checked(theta)
        if project:
            theta = self._projected(theta)
        scale = max(1.0, float(np.linalg.norm(theta)))
        try:
            needed = self.required_epsilon(theta)
        except NotImplementedError:
            return self._distance_by_frank_wolfe(theta) <= atol * scale
        return needed <= self.epsilon * (1 + 1e-12) + atol * scale

    # -- helpers ------------------------------------------------------------------------------------

    def _checked(self, theta: Any) -> np.ndarray:
        theta = as_real_array("theta", theta, (1,))
        if theta.shape != (self.n_features,):
            raise ValueError(f"theta must have shape ({self.n_features},), got {theta.shape}")
        return theta

    def _inside_subspace(self, basis: np.ndarray) -> bool:
        scale = max(1.0, float(np.abs(basis).max(initial=0.0)))
        return bool(np.all(np.abs(self.complement(basis.T)) <= 1e-9 * scale))

    def _projected(self, theta: np.ndarray) -> np.ndarray:
        """``theta_hat`` plus the projection of ``theta - theta_hat`` onto
        ``span(inner) + range(U)^perp``: the complement part stays (when ``epsilon > 0``), and
        the part in ``range(U)`` is projected onto ``U^T span(inner)``."""
        if getattr(self.inner, "spans_everything", False):  # the span is R^d: nothing to project
            return theta
        basis = getattr(self.inner, "basis", None)
        if basis is None:
            raise ValueError(f"project=True needs an inner set with a basis; {type(self.inner).__name__} has none")
        residual = theta - self.theta_hat
        in_subspace = self.subspace.T @ residual
        reached = self.subspace.T @ np.asarray(basis, dtype=float)  # (r, k): U^T span(inner)
        coefficients = np.linalg.lstsq(reached, in_subspace, rcond=None)[0] if reached.size else np.zeros(0)
        kept = self.subspace @ (reached @ coefficients) if reached.size else np.zeros_like(theta)
        complement = self.complement(residual)
        if self.epsilon == 0:  # the ball is a point: only the inner set's own span counts
            inner_span = np.asarray(basis, dtype=float)
            complement = inner_span @ np.linalg.lstsq(inner_span, complement, rcond=None)[0]
        return self.theta_hat + kept + complement

    def _required_epsilon_seminorm(self, theta: np.ndarray, term: Seminorm) -> float:
        residual = theta - self.theta_hat
        # Any A with A A^T = K^T K describes the same set {theta_hat + A z : ||z|| <= radius}: a term
        # with many coordinates (a context's set of a contextual estimator, k > d) supplies one in d.
        root = getattr(term, "feature_root", None)
        if callable(root):
            adjoint = np.asarray(root(), dtype=float)
        elif isinstance(term, LinearSeminorm):
            adjoint = np.asarray(term.matrix, dtype=float).T
        else:
            adjoint = np.asarray(term.adjoint(np.eye(term.whiten(np.zeros(self.n_features)).shape[-1])), dtype=float).T
        radius = float(term.radius)
        scale = max(1.0, float(np.linalg.norm(residual)), float(np.abs(adjoint).max(initial=0.0)) * radius)
        constraint = self.subspace.T @ adjoint  # (r, m): U^T K^T
        target = self.subspace.T @ residual
        m = adjoint.shape[1]
        if m == 0:
            if np.linalg.norm(target) > 1e-10 * scale:
                return math.inf
            return float(np.linalg.norm(self.complement(residual)))
        left, singular, right_t = np.linalg.svd(constraint, full_matrices=True)
        rank = int(np.sum(singular > 1e-12 * max(1.0, singular.max(initial=0.0))))
        start = right_t[:rank].T @ ((left[:, :rank].T @ target) / singular[:rank])
        if np.linalg.norm(constraint @ start - target) > 1e-9 * scale:
            return math.inf  # the inner set cannot match theta on range(U)
        slack = radius**2 - float(start @ start)
        if slack < -1e-12 * max(1.0, radius**2):
            return math.inf
        free = right_t[rank:].T  # (m, m - rank), orthonormal, orthogonal to start
        offset_vector = residual - adjoint @ start
        if free.shape[1] == 0:
            return float(np.linalg.norm(offset_vector))
        return _ball_least_squares(adjoint @ free, offset_vector, math.sqrt(max(slack, 0.0)))

    def _distance_by_frank_wolfe(self, theta: np.ndarray) -> float:
        """``dist(theta, C)`` by Frank-Wolfe with exact line search on ``||t - theta||^2 / 2``, the
        linear minimisation oracle being :meth:`minimizer`; stops when the duality gap certifies
        the answer to ``1e-9`` relative (Jaggi 2013), else raises ``RuntimeError``."""
        point = np.asarray(self.theta_hat, dtype=float)
        threshold = 1e-9 * max(1.0, float(np.linalg.norm(theta)))
        for _ in range(_FRANK_WOLFE_MAX_STEPS):
            gradient = point - theta
            distance = float(np.linalg.norm(gradient))
            if distance <= threshold:
                return distance
            vertex = np.asarray(self.minimizer(gradient), dtype=float)
            step = point - vertex
            gap = float(gradient @ step)
            # f(t) = ||t - theta||^2 / 2 is at least f(point) - gap on C: a certified lower bound.
            certified = distance**2 - 2.0 * gap
            if certified > threshold**2:
                return math.sqrt(certified)
            length = min(1.0, max(0.0, gap / max(float(step @ step), 1e-300)))
            point = point - length * step
        raise RuntimeError("the membership test did not decide within its Frank-Wolfe budget")


# The last (rows, subspace) of _complement_norms and its answer: the sets of all contexts of a
# fit share both, and each would otherwise redo an O(m d r) product (seconds over 1000 contexts).
_LAST_COMPLEMENT_NORMS: list = [None]


def _complement_norms(subspace: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``||(I - U U^T) phi_p||`` for the rows of ``rows``, remembered for the last rows (by
    identity, held weakly) and subspace (by value)."""
    key = subspace.tobytes()
    last = _LAST_COMPLEMENT_NORMS[0]
    if last is not None and last[0]() is rows and last[1] == key and last[2].shape == subspace.shape:
        return last[3]
    norms = np.linalg.norm(rows - (rows @ subspace) @ subspace.T, axis=-1)
    try:
        _LAST_COMPLEMENT_NORMS[0] = (weakref.ref(rows), key, subspace, norms)
    except TypeError:  # rows that cannot be referenced weakly are not remembered
        pass
    return norms


def _ball_least_squares(matrix: np.ndarray, target: np.ndarray, radius: float) -> float:
    """``min ||target - A a||`` over ``||a|| <= radius`` (convex trust-region problem).

    With ``A = W S V^T``, ``a(mu) = V (S / (S^2 + mu)) W^T target``; the unconstrained least-norm
    solution (``mu = 0``) is the answer when it fits in the ball, otherwise the unique ``mu > 0``
    with ``||a(mu)|| = radius`` (the norm decreases in ``mu``) is found by bracketing.
    """
    left, singular, _ = np.linalg.svd(matrix, full_matrices=False)
    coefficients = left.T @ target
    outside = float(max(target @ target - coefficients @ coefficients, 0.0))
    positive = singular > 1e-12 * max(1.0, singular.max(initial=0.0))
    s, c = singular[positive], coefficients[positive]
    dropped = float(np.sum(coefficients[~positive] ** 2))

    def step_norm(mu: float) -> float:
        return float(np.sqrt(np.sum((s * c / (s**2 + mu)) ** 2)))

    def residual_at(mu: float) -> float:
        return float(np.sum((mu * c / (s**2 + mu)) ** 2))

    if s.size == 0 or step_norm(0.0) <= radius:
        return math.sqrt(outside + dropped)
    if radius == 0:
        return math.sqrt(outside + dropped + float(c @ c))
    high = float(s.max() * np.linalg.norm(c) / radius)  # there ||a(mu)|| <= radius
    mu = scipy.optimize.brentq(lambda value: step_norm(value) - radius, 0.0, high, xtol=1e-14 * max(high, 1.0),
                               rtol=1e-14)
    return math.sqrt(outside + dropped + residual_at(mu))


# -- calibration of epsilon ----------------------------------------------------------------------------

def check_subspace_error(value: Any) -> str:
    """Validate the ``subspace_error`` option of the reduced estimators."""
    if value not in SUBSPACE_ERRORS:
        raise ValueError(f"subspace_error must be one of {SUBSPACE_ERRORS}, got {value!r}")
    return value


def order_statistic(samples: Any, level: float) -> np.ndarray | float:
    """The ``ceil(level (B + 1))``-th smallest of ``B`` samples along the first axis.

    If the statistic of the truth and the ``B`` bootstrap samples were exchangeable, the truth's
    would exceed it with probability at most ``1 - level`` (the rank argument of Monte Carlo
    tests; Davison and Hinkley 1997, section 4.2). ``inf`` when ``ceil(level (B + 1)) > B``
    (too few samples for the level).

    Parameters
    ----------
    samples : array_like, shape (B, ...)
    level : float in (0, 1)

    Returns
    -------
    float or ndarray of shape ``samples.shape[1:]``

    References
    ----------
    Davison and Hinkley, *Bootstrap Methods and their Application*, Cambridge 1997.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise ValueError("samples must have at least one sample along the first axis")
    level = check_real("level", level, 0.0, 1.0, strict_minimum=True)
    count = samples.shape[0]
    rank = math.ceil(level * (count + 1) - 1e-12)
    if rank > count:
        return _as_value(np.full(samples.shape[1:], math.inf))
    return _as_value(np.sort(samples, axis=0)[rank - 1])


def pair_span_weights(differences: Any) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``W`` (``(m, m')``) such that ``Z^T W`` is an orthonormal basis of the span of the
    rows ``z_j`` of ``differences`` (``Z``, ``(m, d)``, dense or sparse), and the Gram matrix
    ``Z Z^T``, so that the rows' coordinates in that basis, ``Z Z^T W``, cost ``m x m`` work.

    From the Gram matrix's eigenpairs ``(Lambda, V)``, ``B = Z^T V Lambda^{-1/2}`` is orthonormal
    up to rounding; the Cholesky factor ``R`` of ``B^T B = Lambda^{-1/2} V^T Z Z^T V Lambda^{-1/2}``
    (formed from the Gram matrix, never from the ``d``-dimensional ``B``) makes ``B R^{-1}``
    orthonormal to working precision, so ``W = V Lambda^{-1/2} R^{-1}``. Directions whose Gram
    eigenvalue is below ``1e-10`` of the largest carry no information at working precision and are
    left out. Every column of ``Z^T W`` lies in the row span, hence is orthogonal to any direction
    all the ``z_j`` are orthogonal to (the unidentified ones).
    """
    gram = differences @ differences.T
    gram = np.asarray(gram.toarray() if hasattr(gram, "toarray") else gram, dtype=float)
    gram = 0.5 * (gram + gram.T)
    if gram.size == 0:
        return np.zeros((gram.shape[0], 0)), gram
    values, vectors = np.linalg.eigh(gram)
    kept = values > 1e-10 * max(float(values[-1]), 1e-300)
    if not np.any(kept):
        return np.zeros((gram.shape[0], 0)), gram
    weights = vectors[:, kept] / np.sqrt(values[kept])
    inner = weights.T @ gram @ weights
    factor = scipy.linalg.cholesky(0.5 * (inner + inner.T), lower=False, check_finite=False)
    weights = scipy.linalg.solve_triangular(factor, weights.T, trans="T", lower=False, check_finite=False).T
    return weights, gram


def pair_span(differences: Any) -> np.ndarray:
    """Orthonormal basis ``(d, m')`` of the span of the rows ``z_j`` of ``differences`` (``(m, d)``,
    dense or sparse): ``Z^T W`` with the weights of :func:`pair_span_weights` (cheap for sparse
    one-hot differences: no ``d x m`` factorisation)."""
    weights = pair_span_weights(differences)[0]
    if weights.shape[1] == 0:
        return np.zeros((differences.shape[1], 0))
    return np.asarray(differences.T @ weights, dtype=float)


def sine(subspace: np.ndarray, estimate: np.ndarray) -> float:
    """``||(I - Q Q^T) U||_2`` with ``Q`` an orthonormal basis of ``range(estimate)``: the sine of
    the largest principal angle between the orthonormal columns ``U = subspace`` and ``estimate``."""
    basis = np.linalg.qr(np.asarray(estimate, dtype=float))[0]
    residual = subspace - basis @ (basis.T @ subspace)
    return float(np.linalg.norm(residual, ord=2)) if residual.size else 0.0


def bootstrap_refits(contexts: Any, features: Any, rank: int, *, world: tuple[np.ndarray, np.ndarray],
                     start: tuple[np.ndarray, np.ndarray], statistic: Callable[[FactoredFit], Any],
                     offsets: np.ndarray | None = None, beta: float = 1.0, ridge: float = 1.0,
                     balance: float = 0.0, hidden: np.ndarray | None = None, n_bootstrap: int = 19,
                     seed: Any = None, stop: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
    """Parametric bootstrap of the joint rank-``r`` fit: relabel every pair from the fitted world,
    refit, and evaluate ``statistic`` on each refit.

    In the world ``Theta = A B^T`` the pair ``j`` has logit ``offset_j + beta x_j^T A B^T z_j``;
    each replicate draws every label from ``Bernoulli(sigmoid(logit_j))`` (same pairs, same
    contexts), and :func:`agents.factorized.fit_factored` refits from ``start`` (the fit of the
    real data) to a relative tolerance ``1e-3`` of the resampling gradient.

    Parameters
    ----------
    contexts : ndarray or sparse matrix, shape (n, d_x)
        ``x_j`` (the one-hot users for P-ShareLoRA).
    features : ndarray or sparse matrix, shape (n, d)
    rank : int
    world : (ndarray (d_x, r), ndarray (d, r))
        Factors ``(A, B)`` of the fitted world.
    start : (ndarray (d_x, r), ndarray (d, r))
        Starting factors of every refit.
    statistic : callable
        ``FactoredFit -> array``, evaluated on each refit.
    offsets, beta, ridge, balance, hidden
        As :func:`agents.factorized.fit_factored` (those of the original fit).
    n_bootstrap : int, default 19
    seed : int, Generator or SeedSequence, optional
        Every label is drawn from one generator derived from it.
    stop : callable, optional
        ``statistics so far (b, ...) -> bool``, asked after each replicate: ``True`` ends the
        bootstrap there (when the answer is already decided, e.g. :func:`sharelora_sine_bound`).

    Returns
    -------
    ndarray, shape (b, ...)
        The statistics, one row per replicate (``b = n_bootstrap`` unless ``stop`` ended it).

    References
    ----------
    Efron and Tibshirani, *An Introduction to the Bootstrap*, Chapman & Hall 1993, chapter 6
    (parametric bootstrap).
    """
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=1)
    rng = as_generator(seed)
    labels_shape = features.shape[0]
    offsets = np.zeros(labels_shape) if offsets is None else np.asarray(offsets, dtype=float)
    left, right = (np.asarray(factor, dtype=float) for factor in world)
    logits = offsets + beta * np.sum(np.asarray(contexts @ left) * np.asarray(features @ right), axis=1)
    probabilities = expit(logits)
    results = []
    for _ in range(n_bootstrap):  # each replicate is one joint fit, itself vectorised over pairs
        labels = (rng.random(labels_shape) < probabilities).astype(float)
        refit = fit_factored(contexts, features, labels, rank, initial=start, offsets=offsets, beta=beta,
                             ridge=ridge, balance=balance, hidden=hidden, tol=_BOOTSTRAP_TOL)
        results.append(np.asarray(statistic(refit), dtype=float))
        if stop is not None and stop(np.stack(results)):
            break
    return np.stack(results)


def _stop_when_decided(n_bootstrap: int, level: float, stop_at: float | None) -> Callable[[np.ndarray], bool] | None:
    """The ``stop`` of :func:`bootstrap_refits` that ends it once the :func:`order_statistic` of all
    ``B`` replicates is known to be ``>= stop_at``: the ``k``-th smallest (``k = ceil(level
    (B + 1))``) is, as soon as ``B - k + 1`` samples are."""
    rank = math.ceil(level * (n_bootstrap + 1) - 1e-12)
    if stop_at is None or rank > n_bootstrap:
        return None
    needed = n_bootstrap - rank + 1
    return lambda samples: int(np.sum(samples >= stop_at)) >= needed


def _stopped_order_statistic(samples: np.ndarray, n_bootstrap: int, level: float) -> float:
    """:func:`order_statistic` of ``n_bootstrap`` replicates of which only ``samples`` were drawn,
    the missing ones counted as 0: a lower bound on the full bootstrap's value (and ``>= stop_at``
    when :func:`_stop_when_decided` ended it)."""
    if samples.shape[0] < n_bootstrap:
        samples = np.concatenate([samples, np.zeros(n_bootstrap - samples.shape[0])])
    return order_statistic(samples, level)


def subspace_error_seed(seed: Any) -> Any:
    """The seed of the bootstrap labels, derived from an estimator's ``seed`` so that they are
    independent of the draws its ridge selection makes from the same seed."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return seed.spawn(1)[0]
    if seed is None:
        return None
    return np.random.SeedSequence(int(seed), spawn_key=(0x5B5,))


def sharelora_sine_bound(estimator: Any, *, n_bootstrap: int, level: float, seed: Any = None,
                         stop_at: float | None = None) -> float:
    """Bootstrap bound ``s`` on ``sin angle(U*, U_hat)`` for a fitted :class:`~agents.PShareLoRA`.

    The world is the joint fit ``U W^T`` of the real data; each replicate's statistic is
    ``||(I - P_b) U_hat||_2``, the sine of the largest principal angle between ``U_hat`` (the
    world's subspace) and the replicate's; ``s`` is their :func:`order_statistic` at ``level``.

    Parameters
    ----------
    estimator : PShareLoRA
        Fitted.
    n_bootstrap : int
    level : float in (0, 1)
    seed : int, Generator or SeedSequence, optional
    stop_at : float, optional
        Stop refitting as soon as the answer is known to be at least ``stop_at``: the
        ``k``-th smallest of ``B`` samples (``k = ceil(level (B + 1))``) is ``>= stop_at`` once
        ``B - k + 1`` of them are, whatever the others. With the default ``B = 19`` at
        ``level = 0.95`` (``k = 19``) one replicate at or above ``stop_at`` decides, so an
        unidentified subspace costs one refit instead of 19. The value returned then is the
        order statistic with the missing replicates counted as 0: a lower bound on the full
        bootstrap's, and itself ``>= stop_at``.

    Returns
    -------
    float
        In ``[0, 1]``, or ``inf`` when ``n_bootstrap`` is too small for ``level``.
    """
    data, fit = estimator._data, estimator.joint_fit
    subspace = np.asarray(estimator.subspace)
    samples = bootstrap_refits(
        data.user_indicator(), data.differences, estimator.rank, world=(fit.left, fit.right),
        start=(fit.left, fit.right), statistic=lambda refit: sine(subspace, refit.right),
        offsets=data.offsets, beta=estimator.beta, ridge=estimator.ridge_, hidden=estimator._hidden,
        n_bootstrap=n_bootstrap, seed=seed, stop=_stop_when_decided(n_bootstrap, level, stop_at))
    return _stopped_order_statistic(samples, n_bootstrap, level)


def split_half_sine(estimator: Any) -> float:
    """Sine of the largest principal angle between the subspaces of two joint fits of a fitted
    :class:`~agents.PShareLoRA`, one on the users of even index and one on those of odd index
    (same ridge, rank and tolerance as the fit; each from its own spectral start).

    The two halves' data are independent, so unlike the parametric bootstrap this does not
    assume the fitted world: by the triangle inequality of ``sin`` of the largest angle (the
    spectral distance of the projectors), ``sin(U_A, U_B) <= sin(U_A, U*) + sin(U_B, U*)``, so a
    value ``>= 2 s`` means at least one half's estimate is ``>= s`` from the truth. Where the
    subspace is not identified the halves' estimates are two unrelated noise fits and this is
    close to 1, whatever the bootstrap says (measured: 0.99-1.00 where the bootstrap bound was
    0.52-0.54 and the true sine 0.995-0.999).

    Parameters
    ----------
    estimator : PShareLoRA
        Fitted.

    Returns
    -------
    float
        In ``[0, 1]``; ``nan`` when a half has fewer users than the rank.

    References
    ----------
    Stewart and Sun, *Matrix Perturbation Theory*, Academic Press 1990, chapter I.5 (the sine of
    the largest principal angle between equal-dimensional subspaces is ``||P_A - P_B||_2``, a
    metric).
    """
    data, rank = estimator._data, estimator.rank
    contexts = data.user_indicator().tocsc()
    bases = []
    for parity in (0, 1):
        users = np.arange(parity, data.n_users, 2)
        if users.size < rank:
            return math.nan
        rows = np.flatnonzero(data.users % 2 == parity)
        half = fit_factored(contexts[:, users].tocsr()[rows], data.differences[rows], data.labels[rows], rank,
                            offsets=data.offsets[rows], beta=estimator.beta, ridge=estimator.ridge_,
                            hidden=estimator._hidden, tol=estimator._joint_tol)
        bases.append(np.linalg.qr(half.right)[0])
    return sine(bases[0], bases[1])


def coordinate_bound(inner: ConfidenceSet, offset: np.ndarray, subspace: np.ndarray) -> float:
    """``sqrt(sum_k max_{t in inner} (u_k . (t - offset))^2)``: an upper bound on
    ``||U^T (t - offset)||`` over the inner set, from its support function along the columns
    ``u_k`` of ``U`` (exact for a ball, at most ``sqrt(r)`` times too large otherwise)."""
    directions = np.asarray(subspace, dtype=float).T
    shift = directions @ offset
    highest = np.asarray(inner.upper(directions), dtype=float) - shift
    lowest = shift - np.asarray(inner.lower(directions), dtype=float)
    return float(np.sqrt(np.sum(np.maximum(highest, lowest) ** 2)))


def epsilon_from_sine(sine_bound: float, coordinate_norm: float) -> float:
    """``tan(angle) ||U_hat^T (theta* - offset)||``: for ``theta* - offset`` in ``range(U*)``,
    ``||(I - P) x|| <= sin ||x||`` and ``||P x|| >= cos ||x||`` (``P`` the projector on
    ``U_hat``, ``sin`` and ``cos`` of the largest principal angle), so
    ``||(I - P)(theta* - offset)|| <= tan ||P (theta* - offset)||``. ``inf`` when the sine bound
    reaches 1 (the subspace is not identified at this level)."""
    if not sine_bound < 1:
        return math.inf
    return float(sine_bound / math.sqrt(1.0 - sine_bound**2) * coordinate_norm)


def epsilon_from_product(sine_bound: float, norm_bound: float) -> float:
    """``s / (1 - s) * norm_bound``: if ``||D||_2 <= s sigma_1(Theta)`` for the dropped block ``D`` of
    ``Theta = Pi Theta + U_perp D V_perp^T`` and ``||Pi Theta||_2 <= norm_bound``, then
    ``sigma_1(Theta) <= norm_bound + s sigma_1(Theta)`` and ``||D||_2 <= s / (1 - s) norm_bound``.
    ``inf`` when ``s >= 1``."""
    if not sine_bound < 1:
        return math.inf
    return float(sine_bound / (1.0 - sine_bound) * norm_bound)


def loco_dropped_block_bound(estimator: Any, *, n_bootstrap: int, level: float, seed: Any = None,
                             stop_at: float | None = 1.0) -> float:
    """Bootstrap bound ``s`` on ``sin angle(U*, U_hat) sin angle(V*, V_hat)`` for a fitted
    :class:`~agents.LoCoPRS`: the dropped block of the truth obeys
    ``||U_perp^T Theta* V_perp||_2 <= s sigma_1(Theta*)``.

    The world is the rank-``r`` fit ``U V^T`` of the real data; each replicate's statistic is the
    product of the two sines between the world's subspaces and the replicate's. ``stop_at`` as in
    :func:`sharelora_sine_bound`: by default the bootstrap stops once the bound is known to reach
    1, where ``epsilon_from_product`` has no finite answer whatever the other replicates.
    """
    data, fit = estimator._data, estimator.joint_fit
    left, right = np.asarray(estimator.context_subspace), np.asarray(estimator.subspace)
    samples = bootstrap_refits(
        data.contexts, data.differences, estimator.rank, world=(fit.left, fit.right), start=(fit.left, fit.right),
        statistic=lambda refit: sine(left, refit.left) * sine(right, refit.right), offsets=data.offsets,
        beta=estimator.beta, ridge=estimator.ridge_, balance=estimator.balance, hidden=estimator._hidden,
        n_bootstrap=n_bootstrap, seed=seed, stop=_stop_when_decided(n_bootstrap, level, stop_at))
    return _stopped_order_statistic(samples, n_bootstrap, level)
