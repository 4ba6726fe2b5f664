"""Likelihood-ratio confidence sets of logistic (Bradley-Terry) models and their finite-sample level.

A likelihood-ratio set keeps every parameter whose loss is within a level of the best:

    C = {offset + B w : f(w) <= f(center) + level},
    f(w) = sum_j -log sigmoid(s_j (o_j + beta x_j . w)) + (ridge / 2) ||w||^2,   s_j = 2 y_j - 1,

with ``x_j = B^T z_j`` the coordinates of the ``j``-th comparison and ``o_j`` its known logit
offset. Its shape follows the likelihood, not a quadratic approximation of it: it is not
symmetric about the estimate, and it stays honest where the Wald ellipsoid is not (confident
labels, few comparisons). Two levels are provided (docs/theory.md, Likelihood-ratio sets):

* asymptotic, :func:`lr_mdp_env.theory.wilks_level` ``= chi2_k(1 - delta) / 2`` above the
  minimum (Wilks' theorem);
* finite-sample, :func:`finite_sample_likelihood_threshold`: an absolute threshold on the
  unpenalised loss that the truth's loss stays below with probability ``1 - delta`` at every
  ``n`` (a mixture martingale and Ville's inequality), with no bound on ``||w*||`` and no
  ``exp(L B)`` factor.

The support function ``lower(v) = min_{theta in C} theta . v`` has no closed form. With
``g = B^T v`` and ``c`` the threshold, its minimiser is a point ``w(t) = argmin f(w) + t g . w``
of the tilted path with ``f(w(t)) = c`` (the KKT conditions, ``t`` the inverse multiplier). The
root in ``tau = t^2`` is found by safeguarded Newton steps (``d f(w(t)) / d tau = g^T H^{-1} g / 2``,
exact in one step for a quadratic loss), each inner problem by damped Newton steps, all vectors of
a batch advancing together.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import scipy.optimize

from lr_mdp_env._validation import as_real_array, check_int, check_real, frozen
from lr_mdp_env.theory import likelihood_mixture_threshold

from .confidence import ConfidenceSet, _as_value
from .logistic import bernoulli_losses, bernoulli_losses_and_probabilities, fit_logistic

__all__ = ["DEFAULT_PRIOR_PRECISIONS", "LikelihoodRatioSet", "finite_sample_likelihood_threshold"]

#: Precisions ``lambda_p`` of the Gaussian priors of the mixture bound (a fixed grid, chosen before
#: any data): the best of them costs ``log(len(grid))`` nats in the union bound.
DEFAULT_PRIOR_PRECISIONS = tuple(float(10.0**e) for e in np.arange(-2.0, 2.01, 0.5))

_MAX_OUTER = 200
_MAX_INNER = 80
_MAX_BACKTRACK = 60
# Relative accuracy of the threshold crossing: an error eps in f(w) = c moves lower(v) by
# eps / t, which is eps / (2 level) of the set's half-width for a quadratic loss.
_CROSSING_TOLERANCE = 1e-11
# Below this Newton decrement (relative to the level) full steps are taken without a line search:
# the objective's change is then at its rounding error, which an Armijo test cannot resolve, and the
# logistic loss is well inside Newton's quadratic convergence region.
_FULL_STEP_DECREMENT = 1e-8
# A step taken at a decrement this small leaves one of about its square: an error in f far below the
# crossing tolerance.
_DECREMENT_TOLERANCE = 1e-14
# Components of g = B^T v below this fraction of ||g|| along directions the loss does not see are
# rounding, not a direction of unboundedness.
_DIRECTION_TOLERANCE = 1e-9


class LikelihoodRatioSet(ConfidenceSet):
    """``C = {offset + B w : f(w) <= f(center) + level}`` for a logistic loss ``f`` (module docstring).

    Parameters
    ----------
    offset : array_like, shape (d,)
        Known part of every member (e.g. the base reward ``Theta_0[:, i]``).
    basis : array_like, shape (d, k)
        ``B``: the directions the set moves in.
    features : array_like, shape (m, k)
        ``x_j = B^T z_j``, the coordinates of the ``m`` compared feature differences.
    labels : array_like, shape (m,)
        ``y_j`` in ``{0, 1}``.
    offsets : array_like, shape (m,)
        Known logit offsets ``o_j`` (``beta Theta_0[:, i] . z_j``).
    beta : float
        Rationality, ``> 0``.
    ridge : float
        ``>= 0``; with ``ridge = 0`` the set is unbounded along directions the data do not see or
        separate, and ``lower`` is ``-inf`` there.
    center : array_like, shape (k,)
        A member, usually the minimiser of ``f``: ``f(center) <= threshold`` is required.
    level : float
        ``>= 0``: :func:`lr_mdp_env.theory.wilks_level` for the asymptotic set, or
        ``threshold - f(center)`` for an absolute threshold such as
        :func:`finite_sample_likelihood_threshold`.

    Notes
    -----
    ``lower`` solves all vectors of a batch at once to a relative accuracy of about ``1e-10`` of
    the set's half-width along them (coarser by ``1e-13 |threshold| / level`` when the loss is
    large against the level, the rounding of ``f``) and raises :class:`RuntimeError` if some
    vector fails. It is
    ``-inf`` where the set is unbounded along ``-v``: with ``ridge = 0``, when ``B^T v`` has a
    component along which no comparison varies, or when some direction ``u`` with ``g . u < 0``
    separates the data (``s_j x_j . u >= 0`` for every ``j``; a linear programme per vector,
    solved only for such data). An infimum that is finite but not attained (``ridge = 0``, data
    separable along a direction orthogonal to ``g``) also raises, as there is no minimiser.

    References
    ----------
    Wilks, *The large-sample distribution of the likelihood ratio for testing composite
    hypotheses*, Annals of Mathematical Statistics 1938. Abeille, Faury and Calauzenes, *Instance-
    Wise Minimax-Optimal Algorithms for Logistic Bandits*, AISTATS 2021 (likelihood-ratio sets of
    logistic models). Lee, Yun and Jun, *A Unified Confidence Sequence for Generalized Linear Models,
    with Applications to Bandits*, NeurIPS 2024. Boyd and Vandenberghe, *Convex Optimization*, 2004,
    sections 5.5 and 9.5 (KKT conditions, damped Newton).
    """

    def __init__(self, *, offset: Any, basis: Any, features: Any, labels: Any, offsets: Any, beta: float,
                 ridge: float, center: Any, level: float) -> None:
        offset = as_real_array("offset", offset, (1,))
        basis = as_real_array("basis", basis, (2,))
        d, k = basis.shape
        if offset.shape != (d,):
            raise ValueError(f"offset must have shape ({d},) to match basis {basis.shape}, got {offset.shape}")
        features = as_real_array("features", features, (2,))
        if features.shape[1] != k:
            raise ValueError(f"features must have k={k} columns to match basis {basis.shape}, got {features.shape}")
        m = features.shape[0]
        labels = as_real_array("labels", labels, (1,))
        if labels.shape != (m,):
            raise ValueError(f"labels must have shape ({m},) to match features, got {labels.shape}")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be 0 or 1")
        offsets = as_real_array("offsets", offsets, (1,))
        if offsets.shape != (m,):
            raise ValueError(f"offsets must have shape ({m},) to match features, got {offsets.shape}")
        center = as_real_array("center", center, (1,))
        if center.shape != (k,):
            raise ValueError(f"center must have shape ({k},) to match basis {basis.shape}, got {center.shape}")
        self._beta = check_real("beta", beta, 0.0, strict_minimum=True)
        self._ridge = check_real("ridge", ridge, 0.0)
        self._level = check_real("level", level, 0.0)
        self._offset, self._basis, self._center = frozen(offset), frozen(basis), frozen(center)
        self._features, self._labels, self._offsets = frozen(features), frozen(labels), frozen(offsets)
        self._threshold = float(self.loss(center)) + self._level
        self._reduce()

    # -- the protocol ---------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return self._basis.shape[0]

    @property
    def dimension(self) -> int:
        """``k``, the number of free coordinates."""
        return self._basis.shape[1]

    @property
    def offset(self) -> np.ndarray:
        return self._offset

    @property
    def basis(self) -> np.ndarray:
        return self._basis

    @property
    def center(self) -> np.ndarray:
        return self._center

    @property
    def level(self) -> float:
        return self._level

    @property
    def ridge(self) -> float:
        return self._ridge

    @property
    def beta(self) -> float:
        return self._beta

    @property
    def features(self) -> np.ndarray:
        """``x_j``, shape ``(m, k)``."""
        return self._features

    @property
    def labels(self) -> np.ndarray:
        """``y_j`` in ``{0, 1}``, shape ``(m,)``."""
        return self._labels

    @property
    def offsets(self) -> np.ndarray:
        """Logit offsets ``o_j``, shape ``(m,)``."""
        return self._offsets

    @property
    def threshold(self) -> float:
        """``c = f(center) + level``: members are the ``w`` with ``f(w) <= c``."""
        return self._threshold

    @property
    def theta_hat(self) -> np.ndarray:
        """``offset + B center``."""
        return self._offset + self._basis @ self._center

    @property
    def bounded(self) -> bool:
        """Whether the set is bounded in its coordinates (always with ``ridge > 0``)."""
        return self._bounded

    def loss(self, coordinates: Any) -> np.ndarray | float:
        """``f(w)`` for ``w`` of shape ``(k,)`` or ``(..., k)``."""
        w = as_real_array("coordinates", coordinates, tuple(range(1, 8)))
        if w.shape[-1] != self.dimension:
            raise ValueError(f"coordinates must have {self.dimension} entries on their last axis, got {w.shape}")
        eta = self._offsets + self._beta * (w @ self._features.T)
        value = bernoulli_losses(eta, self._labels).sum(axis=-1) + 0.5 * self._ridge * np.sum(w * w, axis=-1)
        return _as_value(value)

    def lower(self, vectors: Any) -> np.ndarray | float:
        """``min_{theta in C} theta . v``, ``-inf`` where the set is unbounded along ``-v``."""
        vectors = self._vectors(vectors)
        values, _ = self._support(vectors.reshape(-1, self.n_features) @ self._basis)
        values = values.reshape(vectors.shape[:-1]) + vectors @ self._offset
        return _as_value(values)

    def minimizer(self, vectors: Any) -> np.ndarray:
        """A member attaining ``lower(v)``.

        Raises
        ------
        ValueError
            If the set is unbounded along ``-v`` for some vector (``lower`` is ``-inf`` there).
        """
        vectors = self._vectors(vectors)
        values, coordinates = self._support(vectors.reshape(-1, self.n_features) @ self._basis)
        unbounded = np.isneginf(values)
        if unbounded.any():
            raise ValueError(
                f"the set is unbounded along -v for {int(unbounded.sum())} of {values.size} vectors: lower is -inf "
                "and no member attains it"
            )
        return (self._offset + coordinates @ self._basis.T).reshape(vectors.shape)

    def contains(self, theta: Any, *, atol: float = 1e-9) -> bool:
        """Whether ``theta`` is in the set: on ``offset + range(B)`` within ``atol`` relative, and some
        ``w`` with ``B w = theta - offset`` has ``f(w) <= c + atol max(1, level)`` (plus the rounding
        of ``f``)."""
        theta = as_real_array("theta", theta, (1,))
        if theta.shape != self._offset.shape:
            raise ValueError(f"theta must have shape {self._offset.shape}, got {theta.shape}")
        atol = check_real("atol", atol, 0.0)
        residual = theta - self._offset
        w = np.linalg.lstsq(self._basis, residual, rcond=None)[0]
        if np.linalg.norm(residual - self._basis @ w) > atol * max(1.0, np.linalg.norm(theta)):
            return False
        slack = atol * max(1.0, self._level) + 1e-13 * abs(self._threshold)
        if self._basis_kernel.shape[1] == 0:
            return bool(self.loss(w) <= self._threshold + slack)
        # A non-injective basis: the smallest loss over the preimage w + ker(B).
        return bool(self._smallest_loss_on(w, self._basis_kernel) <= self._threshold + slack)

    # -- geometry of the loss -------------------------------------------------------------------

    def _reduce(self) -> None:
        """Coordinates in which the loss is strictly convex, its boundedness and its minimiser.

        With ``ridge > 0`` these are the set's own coordinates. With ``ridge = 0`` the loss is
        constant along the kernel of the features: it works in their row space ``V`` (``w = base +
        V a``, ``base`` the centre's kernel part) and checks by a linear programme whether some
        direction separates the data (then the set is unbounded and ``f`` has no minimiser).
        """
        k = self.dimension
        if self._ridge > 0:
            row_space = np.eye(k)
        else:
            _, singular, right = np.linalg.svd(self._features, full_matrices=True)
            rank = int(np.sum(singular > max(self._features.shape) * np.finfo(float).eps * singular.max(initial=0.0)))
            row_space = right[:rank].T
        self._row_space = row_space
        self._base = self._center - row_space @ (row_space.T @ self._center)
        self._reduced_features = self._features @ row_space
        self._reduced_offsets = self._offsets + self._beta * (self._features @ self._base)
        self._reduced_center = row_space.T @ self._center
        self._bounded = self._ridge > 0 or (row_space.shape[1] == k and not self._separable())
        self._minimum = None
        if self._bounded and row_space.shape[1] > 0:
            minimum = self._inner(np.zeros((1, row_space.shape[1])), np.zeros(1), self._reduced_center[None],
                                  np.full(1, -np.inf), max(1.0, self._level))
            if not minimum.converged[0]:
                raise RuntimeError("could not minimise the loss: the data may be nearly separable")
            self._minimum = minimum

    def _separable(self) -> bool:
        """Whether some ``u != 0`` has ``s_j x_j . u >= 0`` for all ``j`` (a linear programme)."""
        signed = (2 * self._labels - 1)[:, None] * self._reduced_features
        if signed.shape[0] == 0:
            return True
        result = scipy.optimize.linprog(-signed.sum(axis=0), A_ub=-signed, b_ub=np.zeros(len(signed)),
                                        bounds=[(-1, 1)] * signed.shape[1], method="highs")
        scale = np.abs(signed).sum()
        return result.status == 0 and -result.fun > _DIRECTION_TOLERANCE * scale

    def _unbounded_along(self, directions: np.ndarray) -> np.ndarray:
        """For each reduced ``g``: whether some recession direction ``u`` of the set has ``g . u < 0``."""
        signed = (2 * self._labels - 1)[:, None] * self._reduced_features
        flags = np.zeros(len(directions), dtype=bool)
        for position, direction in enumerate(directions):  # only for data that a direction separates
            result = scipy.optimize.linprog(direction, A_ub=-signed, b_ub=np.zeros(len(signed)),
                                            bounds=[(-1, 1)] * signed.shape[1], method="highs")
            flags[position] = result.status == 0 and result.fun < -_DIRECTION_TOLERANCE * np.abs(direction).sum()
        return flags

    @cached_property
    def _basis_kernel(self) -> np.ndarray:
        """Orthonormal columns spanning ``ker(B)``."""
        _, singular, right = np.linalg.svd(self._basis, full_matrices=True)
        rank = int(np.sum(singular > max(self._basis.shape) * np.finfo(float).eps * singular.max(initial=0.0)))
        return right[rank:].T

    def _smallest_loss_on(self, point: np.ndarray, kernel: np.ndarray) -> float:
        """``min_a f(point + K a)`` by damped Newton in ``a`` (``K`` orthonormal, ``point`` orthogonal
        to it, as the least-squares solution is); ``-inf``-free: the loss is bounded below by 0."""
        features = self._features @ kernel
        offsets = self._offsets + self._beta * (self._features @ point)
        problem = _TiltedLoss(features, self._labels, offsets, self._beta, self._ridge)
        result = _damped_newton(problem, np.zeros((1, kernel.shape[1])), np.zeros((1, kernel.shape[1])),
                                np.zeros(1), np.full(1, -np.inf), max(1.0, self._level))
        return float(result.loss[0]) + 0.5 * self._ridge * float(point @ point)

    # -- the support function -------------------------------------------------------------------

    def _vectors(self, vectors: Any) -> np.ndarray:
        vectors = as_real_array("vectors", vectors, tuple(range(1, 8)))
        if vectors.shape[-1] != self.n_features:
            raise ValueError(f"vectors must have d={self.n_features} entries on their last axis, got {vectors.shape}")
        return vectors

    def _support(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``min g . w`` over the set and a minimiser, for ``g`` of shape ``(b, k)``."""
        b, k = directions.shape
        values = np.zeros(b)
        coordinates = np.tile(self._center, (b, 1))
        reduced = directions @ self._row_space
        norms = np.linalg.norm(directions, axis=1)
        unbounded = np.linalg.norm(directions - reduced @ self._row_space.T, axis=1) > _DIRECTION_TOLERANCE * norms
        moving = ~unbounded & (norms > 0)
        if not self._bounded and moving.any():
            unbounded[moving] = self._unbounded_along(reduced[moving])
            moving &= ~unbounded
        values[unbounded] = -np.inf
        if moving.any():
            solution = self._crossing(reduced[moving])
            coordinates[moving] = self._base + solution @ self._row_space.T
        finite = ~unbounded
        values[finite] = np.einsum("bk,bk->b", directions[finite], coordinates[finite])
        return values, coordinates

    @cached_property
    def _reduced_loss(self) -> _TiltedLoss:
        """``f(base + V a)`` as a function of the reduced coordinates ``a``."""
        return _TiltedLoss(self._reduced_features, self._labels, self._reduced_offsets, self._beta, self._ridge,
                           constant=0.5 * self._ridge * float(self._base @ self._base))

    def _inner(self, directions: np.ndarray, tilts: np.ndarray, start: np.ndarray, floors: np.ndarray,
               scale: float) -> _NewtonResult:
        return _damped_newton(self._reduced_loss, start, directions, tilts, floors, scale)

    def _crossing(self, directions: np.ndarray) -> np.ndarray:
        """The point ``w(t)`` of the tilted path with ``f(w(t)) = c`` for each reduced ``g`` (``(b, r)``)."""
        b = len(directions)
        c = self._threshold
        scale = max(1.0, self._level)
        if self._minimum is not None:
            minimum = self._minimum
            floor_loss = float(minimum.loss[0])
            spread = c - floor_loss
            if spread <= _CROSSING_TOLERANCE * scale:  # the set is one point of these coordinates
                return np.tile(minimum.point[0], (b, 1))
            solved = _solve(np.broadcast_to(minimum.hessian[0], (b,) + minimum.hessian.shape[1:]), directions)
            tau = spread / (0.5 * np.einsum("br,br->b", directions, solved))
            # The path's tangent at t = 0 is -H^{-1} g: the first guess of w(t) (exact for a quadratic loss).
            start = minimum.point[0] - np.sqrt(tau)[:, None] * solved
        else:  # no minimiser: start from the centre's quadratic model
            floor_loss = 0.0  # the logistic terms are positive
            hessian = self._reduced_loss.hessian(self._reduced_center[None])[0]
            solved = _solve(np.broadcast_to(hessian, (b,) + hessian.shape), directions)
            tau = max(self._level, 0.5) / (0.5 * np.einsum("br,br->b", directions, solved))
            start = np.tile(self._reduced_center, (b, 1))
        tolerance = _CROSSING_TOLERANCE * scale + 1e-13 * abs(c)
        lower_tau, upper_tau = np.zeros(b), np.full(b, np.inf)
        lower_point = np.tile(self._reduced_center if self._minimum is None else self._minimum.point[0], (b, 1))
        dual_bound = np.full(b, -np.inf)  # a lower bound on min g . w over the set (weak duality)
        previous_gap = np.full(b, np.inf)
        last_converged = lower_point.copy()
        predicted = np.full(b, self._minimum is not None)  # the first start is a tangent guess
        result = np.empty_like(start)
        done = np.zeros(b, dtype=bool)
        for _ in range(_MAX_OUTER):
            active = np.flatnonzero(~done)
            if active.size == 0:
                return result
            tilt = np.sqrt(tau[active])
            floors = floor_loss + tilt * dual_bound[active]
            inner = self._inner(directions[active], tilt, start[active], floors, scale)
            gap = inner.loss - c
            converged = inner.converged
            crossed = converged & (np.abs(gap) <= tolerance)
            below = converged & ~crossed & (gap < 0)
            # A Newton run that failed from a tangent guess, without a certificate, is retried at the
            # same t from the last converged point before its failure counts.
            retry = ~converged & ~inner.certified & predicted[active]
            above = ~crossed & ~below & ~retry  # above the threshold, or the inner problem has no minimiser
            result[active[crossed]] = inner.point[crossed]
            done[active[crossed]] = True
            rows = active[below]
            lower_tau[rows] = tau[rows]
            lower_point[rows] = inner.point[below]
            dual_bound[rows] = (np.einsum("br,br->b", directions[rows], inner.point[below])
                                + gap[below] / tilt[below])
            upper_tau[active[above]] = tau[active[above]]
            start[active[~converged]] = lower_point[active[~converged]]
            start[active[retry]] = last_converged[active[retry]]
            # Safeguarded Newton in tau: the Newton point if it is inside the bracket and the
            # previous step at least halved the gap, else the bracket's midpoint.
            solved = _solve(inner.hessian[converged], directions[active[converged]])  # -dw/dt = H^{-1} g
            slope = np.full(active.size, np.nan)
            slope[converged] = 0.5 * np.einsum("br,br->b", directions[active[converged]], solved)
            with np.errstate(invalid="ignore", divide="ignore"):
                newton = tau[active] - gap / slope
            lo, hi = lower_tau[active], upper_tau[active]
            fast = converged & (np.abs(gap) <= 0.5 * previous_gap[active])
            inside = fast & (newton > lo) & (newton < hi)
            midpoint = np.where(np.isfinite(hi), 0.5 * (lo + hi), 4.0 * tau[active])
            tau[active] = np.where(retry, tau[active],
                                   np.where(inside | (converged & ~np.isfinite(previous_gap[active]) & (newton > lo)
                                                      & (newton < hi)), newton, midpoint))
            previous_gap[active] = np.where(converged, np.abs(gap), previous_gap[active])
            # Warm start on the path's tangent: w(t') ~ w(t) - (t' - t) H^{-1} g.
            start[active[converged]] = (inner.point[converged]
                                        - (np.sqrt(tau[active[converged]]) - tilt[converged])[:, None] * solved)
            last_converged[active[converged]] = inner.point[converged]
            predicted[active] = converged
            collapsed = np.isfinite(hi) & (hi - lo <= 1e-15 * hi)
            if np.any(collapsed & ~done[active]):
                break
        failed = int((~done).sum())
        raise RuntimeError(
            f"lower: the threshold crossing was not found for {failed} of {b} vectors (the set may be unbounded "
            "with an infimum that is not attained, or the data nearly separable)"
        )


def _solve(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``A^{-1} b`` batched; the pseudo-inverse where a Hessian is singular (saturated logits)."""
    try:
        return np.linalg.solve(matrices, vectors[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("bij,bj->bi", np.linalg.pinv(matrices, hermitian=True), vectors)


class _TiltedLoss:
    """``h(a) = f(a) + t g . a`` with ``f(a) = sum_j [softplus(eta_j) - y_j eta_j] + ridge/2 ||a||^2 +
    constant``, ``eta_j = o_j + beta x_j . a``, for a batch of ``(g, t)``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, offsets: np.ndarray, beta: float, ridge: float,
                 constant: float = 0.0) -> None:
        self.features, self.labels, self.offsets = features, labels, offsets
        self.beta, self.ridge, self.constant = beta, ridge, constant

    def loss(self, points: np.ndarray) -> np.ndarray:
        eta = self.offsets + self.beta * (points @ self.features.T)
        return (bernoulli_losses(eta, self.labels).sum(axis=-1) + 0.5 * self.ridge * np.sum(points * points, axis=-1)
                + self.constant)

    def derivatives(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``f``, ``grad f`` and the Hessian of ``f`` at each point."""
        eta = self.offsets + self.beta * (points @ self.features.T)
        losses, probabilities = bernoulli_losses_and_probabilities(eta, self.labels)
        loss = losses.sum(axis=-1) + 0.5 * self.ridge * np.sum(points * points, axis=-1) + self.constant
        gradient = self.beta * (probabilities - self.labels) @ self.features + self.ridge * points
        return loss, gradient, self._hessian(probabilities)

    def hessian(self, points: np.ndarray) -> np.ndarray:
        eta = self.offsets + self.beta * (points @ self.features.T)
        _, probabilities = bernoulli_losses_and_probabilities(eta, self.labels)
        return self._hessian(probabilities)

    def _hessian(self, probabilities: np.ndarray) -> np.ndarray:
        weights = self.beta**2 * probabilities * (1.0 - probabilities)
        hessian = (self.features.T * weights[:, None, :]) @ self.features  # batched BLAS products
        r = self.features.shape[1]
        hessian[:, np.arange(r), np.arange(r)] += self.ridge
        return hessian


class _NewtonResult:
    """The end of :func:`_damped_newton`: points, ``f`` and its Hessian there, and which converged."""

    def __init__(self, point: np.ndarray, loss: np.ndarray, hessian: np.ndarray, converged: np.ndarray,
                 certified: np.ndarray) -> None:
        self.point, self.loss, self.hessian, self.converged = point, loss, hessian, converged
        self.certified = certified  # objective below the floor: the minimiser, if any, is outside the set


def _damped_newton(problem: _TiltedLoss, start: np.ndarray, directions: np.ndarray, tilts: np.ndarray,
                   floors: np.ndarray, scale: float) -> _NewtonResult:
    """Minimise ``f(a) + t_b g_b . a`` for every ``b`` by damped Newton steps (Armijo backtracking).

    A problem stops as converged after a full step taken at a Newton decrement below
    ``_DECREMENT_TOLERANCE * scale``; as failed when its objective falls below ``floors[b]`` (a
    certificate that its minimiser, if any, lies outside the set: see ``_crossing``), when the line
    search fails or after ``_MAX_INNER`` steps.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # diverging paths are detected, not warned about
        return _damped_newton_steps(problem, start, directions, tilts, floors, scale)


def _damped_newton_steps(problem: _TiltedLoss, start: np.ndarray, directions: np.ndarray, tilts: np.ndarray,
                         floors: np.ndarray, scale: float) -> _NewtonResult:
    point = start.copy()
    b = len(point)
    running = np.ones(b, dtype=bool)
    converged = np.zeros(b, dtype=bool)
    certified = np.zeros(b, dtype=bool)
    margin = 1e-12 * np.maximum(1.0, np.abs(np.where(np.isfinite(floors), floors, 0.0)))
    for _ in range(_MAX_INNER):
        rows = np.flatnonzero(running)
        if rows.size == 0:
            break
        loss, gradient, hessian = problem.derivatives(point[rows])
        tilt = tilts[rows, None] * directions[rows]
        objective = loss + np.einsum("br,br->b", tilt, point[rows])
        gradient = gradient + tilt
        step = -_solve(hessian, gradient)
        decrement = -np.einsum("br,br->b", gradient, step)
        # A (numerically) singular Hessian, where every logit is saturated far out on a path with no
        # minimiser, gives no Newton step: such a problem fails instead of passing for converged.
        residual = np.linalg.norm(np.einsum("bij,bj->bi", hessian, step) + gradient, axis=1)
        solvable = residual <= 1e-6 * np.linalg.norm(gradient, axis=1) + 1e-300
        final = solvable & (decrement <= _DECREMENT_TOLERANCE * scale)
        size = np.where(solvable, 1.0, 0.0)  # a problem without a Newton step stays where it is, and stops
        accepted = ~solvable | (decrement <= _FULL_STEP_DECREMENT * scale)
        for _ in range(_MAX_BACKTRACK):
            pending = np.flatnonzero(~accepted)
            if pending.size == 0:
                break
            trial = point[rows[pending]] + size[pending, None] * step[pending]
            value = problem.loss(trial) + np.einsum("br,br->b", tilt[pending], trial)
            ok = value <= objective[pending] - 0.25 * size[pending] * decrement[pending]
            accepted[pending[ok]] = True
            size[pending[~ok]] *= 0.5
        point[rows[accepted]] += size[accepted, None] * step[accepted]
        converged[rows[final]] = True
        new_objective = problem.loss(point[rows]) + np.einsum("br,br->b", tilt, point[rows])
        below_floor = new_objective < floors[rows] - margin[rows]
        diverged = ~np.all(np.isfinite(point[rows]), axis=1) | ~np.isfinite(new_objective)
        converged[rows[below_floor | diverged]] = False
        certified[rows[below_floor]] = True
        running[rows[final | ~accepted | below_floor | diverged | ~solvable]] = False
    loss = problem.loss(point)
    hessian = problem.hessian(point)
    return _NewtonResult(point, loss, hessian, converged, certified)


def finite_sample_likelihood_threshold(
    features: Any,
    labels: Any,
    offsets: Any,
    beta: float,
    delta: float,
    prior_precisions: Any = DEFAULT_PRIOR_PRECISIONS,
    *,
    groups: Any = None,
    n_problems: int | None = None,
) -> np.ndarray | float:
    """Threshold ``c`` with ``P(f0(w*) <= c for every n) >= 1 - delta`` for the unpenalised loss ``f0``.

    ``f0(w) = sum_j -log sigmoid(s_j (o_j + beta x_j . w))``. For each Gaussian prior
    ``Q_p = N(0, I / lambda_p)`` of a grid fixed before the data, the ridge minimum
    ``F_p = min_w f0(w) + lambda_p / 2 ||w||^2`` is computed by :func:`agents.fit_logistic` and
    :func:`lr_mdp_env.theory.likelihood_mixture_threshold` turns the ``F_p`` into
    ``c = min_p [F_p + 1/2 log det(I + beta^2 G / (4 lambda_p)) + log(P / delta)]``
    (``G = sum_j x_j x_j^T``; derivation there). The set ``{w : f0(w) <= c}`` (a
    :class:`LikelihoodRatioSet` with ``ridge = 0``, ``level = c - f0(center)``) then contains
    ``w*`` with probability at least ``1 - delta``, simultaneously for all ``n``.

    Parameters
    ----------
    features : array_like, shape (n, k)
        Coordinates ``x_j`` of the compared pairs.
    labels : array_like, shape (n,)
        ``y_j`` in ``{0, 1}``.
    offsets : array_like, shape (n,)
        Known logit offsets ``o_j``.
    beta : float
        Rationality, ``> 0``.
    delta : float
        In ``(0, 1)``.
    prior_precisions : sequence of float, default :data:`DEFAULT_PRIOR_PRECISIONS`
        The grid ``lambda_p > 0``, fixed before seeing the data.
    groups : array_like of int, shape (n,), optional
        Problem (user) of each pair: one threshold per problem, all fitted in one batched solve.
    n_problems : int, optional
        Number of problems (default ``max(groups) + 1``).

    Returns
    -------
    float, or ndarray of shape (n_problems,) when ``groups`` is given

    Notes
    -----
    Assumptions: each label is Bradley-Terry with the stated ``beta`` and offsets given its pair,
    pairs may be chosen adaptively (each from the past only); the truth's coordinates ``w*``
    exist (the truth lies in the set's affine span). No bound on ``||w*||`` or on the features
    enters, and there is no ``exp(L B)`` factor.

    References
    ----------
    Abeille, Faury and Calauzenes, *Instance-Wise Minimax-Optimal Algorithms for Logistic Bandits*,
    AISTATS 2021. Lee, Yun and Jun, *A Unified Confidence Sequence for Generalized Linear Models, with
    Applications to Bandits*, NeurIPS 2024. Ville, *Etude critique de la notion de collectif*, 1939.
    """
    features = as_real_array("features", features, (2,))
    n, k = features.shape
    labels = as_real_array("labels", labels, (1,))
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match features, got {labels.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    offsets = as_real_array("offsets", offsets, (1,))
    if offsets.shape != (n,):
        raise ValueError(f"offsets must have shape ({n},) to match features, got {offsets.shape}")
    beta = check_real("beta", beta, 0.0, strict_minimum=True)
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    if delta >= 1.0:
        raise ValueError(f"delta must be less than 1, got {delta}")
    precisions = as_real_array("prior_precisions", prior_precisions, (1,))
    if precisions.size == 0 or np.any(precisions <= 0):
        raise ValueError("prior_precisions must be a non-empty sequence of positive numbers")
    batched = groups is not None
    if groups is None:
        groups = np.zeros(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (n,) or (n and groups.dtype.kind not in "iu"):
        raise TypeError(f"groups must be an integer array of shape ({n},), got {groups.dtype} {groups.shape}")
    if n and groups.min() < 0:
        raise ValueError("groups must be non-negative")
    if n_problems is None:
        n_problems = int(groups.max()) + 1 if n else 1
    n_problems = check_int("n_problems", n_problems, minimum=1)
    if n and groups.max() >= n_problems:
        raise ValueError(f"groups has problem {groups.max()} but n_problems={n_problems}")
    n_priors = precisions.size
    # One ridge problem per (user, prior): the data repeated once per prior.
    expanded = (groups[None, :] * n_priors + np.arange(n_priors)[:, None]).ravel()
    fit = fit_logistic(np.tile(features, (n_priors, 1)), np.tile(labels, n_priors), groups=expanded,
                       n_problems=n_problems * n_priors, offsets=np.tile(offsets, n_priors), beta=beta,
                       ridge=np.tile(precisions, n_problems), fisher=False)
    penalised_minima = fit.objective.reshape(n_problems, n_priors)
    grams = np.zeros((n_problems, k, k))
    np.add.at(grams, groups, features[:, :, None] * features[:, None, :])
    thresholds = likelihood_mixture_threshold(penalised_minima, grams, precisions, beta, delta)
    return thresholds if batched else float(thresholds[0])
