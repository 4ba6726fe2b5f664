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
``g = B^T v`` and ``c`` the threshold, it is the smaller root ``s`` of
``q(s) = min {f(w) : g . w = s} - c``, a convex function of ``s`` whose slope is minus the
multiplier of the hyperplane. The root is found by safeguarded Newton steps on ``s`` (started
from the quadratic model of ``f``, exact for a quadratic loss), each ``q(s)`` by
equality-constrained damped Newton steps, all vectors of a batch advancing together.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import scipy.optimize

from lr_mdp_env._validation import as_real_array, check_real, frozen
from lr_mdp_env.theory import likelihood_mixture_threshold

from .confidence import ConfidenceSet, _as_value
from .logistic import bernoulli_losses, bernoulli_losses_and_probabilities, check_groups, fit_logistic

__all__ = ["DEFAULT_PRIOR_PRECISIONS", "LikelihoodRatioSet", "finite_sample_likelihood_threshold"]

#: Precisions ``lambda_p`` of the Gaussian priors of the mixture bound (a fixed grid, chosen before
#: any data): the best of them costs ``log(len(grid))`` nats in the union bound.
DEFAULT_PRIOR_PRECISIONS = tuple(float(10.0**e) for e in np.arange(-2.0, 2.01, 0.5))

_MAX_OUTER = 200
_MAX_INNER = 80
_MAX_BACKTRACK = 60
# Accuracy of the boundary point: an error eps in f(w) = c moves lower(v) by eps / nu, which is
# eps / (2 level) of the set's half-width for a quadratic loss.
_BOUNDARY_TOLERANCE = 1e-11
# Below this Newton decrement (relative to the level) full steps are taken without a line search:
# the objective's change is then at its rounding error, which an Armijo test cannot resolve, and the
# logistic loss is well inside Newton's quadratic convergence region.
_FULL_STEP_DECREMENT = 1e-8
# A point inside the set is also accepted once its value is within this fraction of the half-width
# of the minimum (|q| / nu, the first-order error), where f is too flat to meet the boundary tolerance.
_CERTIFIED_TOLERANCE = 1e-9
# A step taken at a decrement this small leaves one of about its square: an error in f far below the
# boundary tolerance.
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
        A member, usually the minimiser of ``f`` (``threshold = f(center) + level``, so it is one).
    level : float
        ``>= 0``: :func:`lr_mdp_env.theory.wilks_level` for the asymptotic set, or
        ``threshold - f(center)`` for an absolute threshold such as
        :func:`finite_sample_likelihood_threshold`.

    Notes
    -----
    ``lower`` solves all vectors of a batch at once, to within ``1e-9`` of the set's half-width
    along each (its minimiser meets ``f = threshold`` to ``1e-11 max(1, level)`` plus the rounding
    of ``f``, or lies inside the set with a first-order error ``|f - threshold| / nu`` below that
    fraction), and raises :class:`RuntimeError` naming the number of vectors that failed. It is
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

    def loss_derivatives(self, coordinates: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``f``, its gradient and its Hessian at points ``w`` of shape ``(b, k)``: shapes ``(b,)``,
        ``(b, k)`` and ``(b, k, k)`` (for exact planners that treat ``f(w) <= threshold`` as a
        constraint)."""
        w = as_real_array("coordinates", coordinates, (2,))
        if w.shape[1] != self.dimension:
            raise ValueError(f"coordinates must have shape (b, {self.dimension}), got {w.shape}")
        return _Loss(self._features, self._labels, self._offsets, self._beta, self._ridge).derivatives(w)

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

    def recession_direction(self, vector: Any) -> np.ndarray:
        """A direction ``u`` of the set's recession cone (``theta + t u`` is in the set for every
        member ``theta`` and ``t >= 0``) with ``v . u < 0``, for a ``v`` (``(d,)``) along whose
        negative the set is unbounded (``lower(v) = -inf``); zeros where ``lower(v)`` is finite.

        With ``ridge = 0`` such directions are those the loss does not see (its kernel: the
        component of ``B^T v`` outside the row space of the features, negated) and those that
        separate the data (``s_j x_j . a >= 0`` for all pairs: the loss does not increase along
        them), found by the linear programme of ``lower``. Exact pessimism uses them as cuts
        ``u . (d_pi - d_ref) >= 0`` that every policy with a finite ``L`` satisfies.
        """
        vector = self._vectors(vector)
        if vector.ndim != 1:
            raise ValueError(f"vector must have shape (d,) = ({self.n_features},), got {vector.shape}")
        direction = vector @ self._basis
        reduced = direction @ self._row_space
        outside = direction - reduced @ self._row_space.T
        norm = float(np.linalg.norm(direction))
        if norm > 0 and np.linalg.norm(outside) > _DIRECTION_TOLERANCE * norm:
            return -(self._basis @ outside)
        if self._coercive or norm == 0:
            return np.zeros(self.n_features)
        signed = (2 * self._labels - 1)[:, None] * self._reduced_features
        result = scipy.optimize.linprog(reduced, A_ub=-signed, b_ub=np.zeros(len(signed)),
                                        bounds=[(-1, 1)] * signed.shape[1], method="highs")
        if result.status != 0 or result.fun >= -_DIRECTION_TOLERANCE * np.abs(reduced).sum():
            return np.zeros(self.n_features)
        return self._basis @ (self._row_space @ result.x)

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
        # Coercive in the reduced coordinates: no direction separates the data there.
        self._coercive = self._ridge > 0 or not self._separable()
        self._bounded = self._coercive and row_space.shape[1] == k
        self._minimum = self._anchor = None
        scale = max(1.0, self._level)
        if row_space.shape[1] == 0:
            return
        if self._coercive:
            minimum = _damped_newton(self._reduced_loss, self._reduced_center[None], None, scale)
            if not minimum.converged[0]:
                raise RuntimeError("could not minimise the loss: the data may be nearly separable")
            self._minimum = minimum
        elif self._level > 0:
            # No minimiser: the support function starts from the minimiser a_eps of f + eps/2 ||a||^2
            # for the largest eps of a grid with f(a_eps) <= threshold - level / 2: a point deep in
            # the set where the logits are not saturated (the centre of separable data may be far out).
            start = np.zeros((1, row_space.shape[1]))
            for epsilon in 10.0 ** np.arange(0.0, -13.0, -1.0):  # usually stops at the first few
                ridged = _Loss(self._reduced_features, self._labels, self._reduced_offsets, self._beta, epsilon)
                anchor = _damped_newton(ridged, start, None, scale)
                if not anchor.converged[0]:
                    break
                start = anchor.point
                if self._reduced_loss.loss(start)[0] <= self._threshold - 0.5 * self._level:
                    self._anchor = start[0]
                    break

    def _separable(self) -> bool:
        """Whether some ``u != 0`` has ``s_j x_j . u >= 0`` for all ``j`` (a linear programme)."""
        signed = (2 * self._labels - 1)[:, None] * self._reduced_features
        if signed.shape[1] == 0:  # no coordinate the loss depends on
            return False
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
        problem = _Loss(features, self._labels, offsets, self._beta, self._ridge)
        result = _damped_newton(problem, np.zeros((1, kernel.shape[1])), None, max(1.0, self._level))
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
        if not self._coercive and moving.any():
            unbounded[moving] = self._unbounded_along(reduced[moving])
            moving &= ~unbounded
        values[unbounded] = -np.inf
        if moving.any():
            solution = self._boundary_points(reduced[moving])
            coordinates[moving] = self._base + solution @ self._row_space.T
        finite = ~unbounded
        values[finite] = np.einsum("bk,bk->b", directions[finite], coordinates[finite])
        return values, coordinates

    @cached_property
    def _reduced_loss(self) -> _Loss:
        """``f(base + V a)`` as a function of the reduced coordinates ``a``."""
        return _Loss(self._reduced_features, self._labels, self._reduced_offsets, self._beta, self._ridge,
                     constant=0.5 * self._ridge * float(self._base @ self._base))

    def _boundary_points(self, directions: np.ndarray) -> np.ndarray:
        """The minimiser of ``g . a`` over ``f(a) <= c`` for each reduced ``g`` (``(b, r)``).

        Parametrised by the value ``s = g . a``: ``q(s) = min {f(a) : g . a = s} - c`` is convex in
        ``s`` with slope ``-nu`` (``nu`` the multiplier of the hyperplane, ``grad f = -nu g`` at its
        minimiser), and the answer is the smaller root of ``q``. Each ``q(s)`` is an
        equality-constrained Newton solve, well posed for every ``s`` (also far outside the set,
        unlike a path parametrised by the multiplier, which ends where the data nearly separate).
        Newton steps ``s + q / nu`` approach the root monotonically from outside, where ``q > 0``;
        a bracket and bisection guard them.
        """
        b = len(directions)
        c = self._threshold
        scale = max(1.0, self._level)
        loss = self._reduced_loss
        if self._minimum is not None:
            origin = np.tile(self._minimum.point[0], (b, 1))
            hessian = self._minimum.hessian[0]
            spread = c - float(self._minimum.loss[0])
            if spread <= _BOUNDARY_TOLERANCE * scale:  # the set is one point of these coordinates
                return origin
        else:  # no minimiser: start from the anchor (or the centre)
            anchor = self._reduced_center if self._anchor is None else self._anchor
            origin = np.tile(anchor, (b, 1))
            hessian = loss.hessian(anchor[None])[0]
            spread = max(c - float(loss.loss(anchor[None])[0]), 1e-3 * scale)
        # The quadratic model at the origin: the minimiser of g . a over f <= c is
        # origin - sqrt(2 spread / G) H^{-1} g with G = g^T H^{-1} g (exact for a quadratic loss).
        solved = _solve(np.broadcast_to(hessian, (b,) + hessian.shape), directions)
        spread_per_g = np.sqrt(2 * spread / np.einsum("br,br->b", directions, solved))
        start = origin - spread_per_g[:, None] * solved
        value = np.einsum("br,br->b", directions, start)
        origin_value = np.einsum("br,br->b", directions, origin)
        first_distance = origin_value - value
        inside = origin_value.copy()  # q < 0 there
        outside = np.full(b, -np.inf)  # q > 0 there
        center_value = np.einsum("br,r->b", directions, self._reduced_center)
        tolerance = _BOUNDARY_TOLERANCE * scale + 1e-13 * abs(c)
        inside_point = origin.copy()
        result = np.empty_like(start)
        done = np.zeros(b, dtype=bool)
        stuck = np.zeros(b, dtype=bool)  # an empty bracket: the search failed for this vector
        for _ in range(_MAX_OUTER):
            active = np.flatnonzero(~done & ~stuck)
            if active.size == 0:
                break
            inner = _damped_newton(loss, start[active], directions[active], scale)
            # A hyperplane whose Newton run fails (far outside, where the logits saturate) is
            # treated as outside: the search retreats towards the inside point. A wrong guess can
            # only empty the bracket (an error below), never give a wrong answer, since an answer
            # needs a converged run on the boundary.
            failed = ~inner.converged
            gap = np.where(failed, np.inf, inner.loss - c)
            normal_squares = np.einsum("br,br->b", directions[active], directions[active])
            multiplier = -np.einsum("br,br->b", inner.gradient, directions[active]) / normal_squares
            s = value[active]
            # The value's error is about |q| / nu: stop when f is within the tolerance of c, or when
            # the point is inside and that error is small against the half-width g . center - s.
            with np.errstate(divide="ignore", invalid="ignore"):
                error = np.abs(gap) / multiplier
            half_width = np.maximum(center_value[active] - s, 0.0)
            finished = ~failed & ((np.abs(gap) <= tolerance) | (
                (gap <= 0) & (multiplier > 0) & (error <= _CERTIFIED_TOLERANCE * half_width)))
            result[active[finished]] = inner.point[finished]
            done[active[finished]] = True
            rows = active[~failed & (gap < 0)]
            inside_point[rows] = inner.point[~failed & (gap < 0)]
            inside[active] = np.where(gap < 0, np.minimum(inside[active], s), inside[active])
            outside[active] = np.where(gap > 0, np.maximum(outside[active], s), outside[active])
            lo, hi = outside[active], inside[active]
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = s + gap / multiplier
            usable = ~failed & (multiplier > 0) & (newton > lo) & (newton < hi)
            # Bisect the bracket; without an outside point yet, double the distance from the origin.
            doubled = s - np.maximum(origin_value[active] - s, first_distance[active])
            new_value = np.where(usable, newton, np.where(np.isfinite(lo), 0.5 * (lo + hi), doubled))
            stuck[active] = ~done[active] & np.isfinite(lo) & (hi - lo <= 1e-15 * np.maximum(np.abs(hi), np.abs(lo)))
            # Warm start on the tangent of the curve of minimisers: da/ds = H^{-1} g / (g^T H^{-1} g).
            with np.errstate(divide="ignore", invalid="ignore"):
                tangent = _solve(inner.hessian, directions[active])
                tangent /= np.einsum("br,br->b", directions[active], tangent)[:, None]
                moved = inner.point + (new_value - s)[:, None] * tangent
            # Otherwise from the last inside point, moved straight onto the new hyperplane.
            anchor = inside_point[active]
            shift = (new_value - np.einsum("br,br->b", directions[active], anchor)) / normal_squares
            fallback = anchor + shift[:, None] * directions[active]
            start[active] = np.where((~failed & np.all(np.isfinite(moved), axis=1))[:, None], moved, fallback)
            value[active] = new_value
        if np.all(done):
            return result
        failed = int((~done).sum())
        raise RuntimeError(
            f"lower: the boundary point was not found for {failed} of {b} vectors (the set may be unbounded with an "
            "infimum that is not attained, or the data nearly separable)"
        )


def _solve(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``A^{-1} b`` batched; the pseudo-inverse where a matrix is singular (saturated logits)."""
    finite = np.all(np.isfinite(matrices), axis=(1, 2)) & np.all(np.isfinite(vectors), axis=1)
    solution = np.full(vectors.shape, np.nan)  # rows with overflowed entries: no step, caught by the caller
    try:
        solution[finite] = np.linalg.solve(matrices[finite], vectors[finite][..., None])[..., 0]
    except np.linalg.LinAlgError:
        solution[finite] = np.einsum("bij,bj->bi", np.linalg.pinv(matrices[finite], hermitian=True), vectors[finite])
    return solution


class _Loss:
    """``f(a) = sum_j [softplus(eta_j) - y_j eta_j] + ridge/2 ||a||^2 + constant``,
    ``eta_j = o_j + beta x_j . a``, for a batch of points."""

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
        # One matrix product for the whole batch: rows (b, i) of the weighted features times X.
        b, m = weights.shape
        r = self.features.shape[1]
        weighted = self.features.T * weights[:, None, :]  # (b, r, m), C-contiguous
        hessian = (weighted.reshape(b * r, m) @ self.features).reshape(b, r, r)
        hessian[:, np.arange(r), np.arange(r)] += self.ridge
        return hessian


class _NewtonResult:
    """The end of :func:`_damped_newton`: points, ``f``, its gradient and Hessian, which converged."""

    def __init__(self, point: np.ndarray, loss: np.ndarray, gradient: np.ndarray, hessian: np.ndarray,
                 converged: np.ndarray) -> None:
        self.point, self.loss, self.gradient, self.hessian, self.converged = point, loss, gradient, hessian, converged


def _damped_newton(problem: _Loss, start: np.ndarray, normals: np.ndarray | None, scale: float) -> _NewtonResult:
    """Minimise ``f`` from each start, on the hyperplane ``normal_b . a = normal_b . start_b`` when
    ``normals`` are given, by damped Newton steps (Armijo backtracking), all problems together.

    The constrained step solves the bordered system ``[[H, n], [n^T, 0]] [da; nu] = [-grad f; 0]``.
    A problem has converged after a full step taken at a Newton decrement below
    ``_DECREMENT_TOLERANCE * scale``; it fails when its Newton system is singular, its line search
    fails, or after ``_MAX_INNER`` steps.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # diverging problems are detected, not warned about
        return _damped_newton_steps(problem, start, normals, scale)


def _damped_newton_steps(problem: _Loss, start: np.ndarray, normals: np.ndarray | None,
                         scale: float) -> _NewtonResult:
    point = start.copy()
    b, r = point.shape
    running = np.ones(b, dtype=bool)
    converged = np.zeros(b, dtype=bool)
    for _ in range(_MAX_INNER):
        rows = np.flatnonzero(running)
        if rows.size == 0:
            break
        loss, gradient, hessian = problem.derivatives(point[rows])
        if normals is None:
            system, right = hessian, -gradient
        else:
            system = np.zeros((rows.size, r + 1, r + 1))
            system[:, :r, :r] = hessian
            system[:, :r, r] = system[:, r, :r] = normals[rows]
            right = np.concatenate([-gradient, np.zeros((rows.size, 1))], axis=1)
        solution = _solve(system, right)
        # A (numerically) singular system, where every logit is saturated, gives no Newton step:
        # such a problem fails instead of passing for converged.
        residual = np.linalg.norm(np.einsum("bij,bj->bi", system, solution) - right, axis=1)
        solvable = residual <= 1e-6 * np.linalg.norm(right, axis=1) + 1e-300
        step = solution[:, :r]
        decrement = -np.einsum("br,br->b", gradient, step)
        final = solvable & (decrement <= _DECREMENT_TOLERANCE * scale)
        size = np.where(solvable, 1.0, 0.0)  # a problem without a Newton step stays where it is, and stops
        accepted = ~solvable | (decrement <= _FULL_STEP_DECREMENT * scale)
        for _ in range(_MAX_BACKTRACK):
            pending = np.flatnonzero(~accepted)
            if pending.size == 0:
                break
            trial = point[rows[pending]] + size[pending, None] * step[pending]
            ok = problem.loss(trial) <= loss[pending] - 0.25 * size[pending] * decrement[pending]
            accepted[pending[ok]] = True
            size[pending[~ok]] *= 0.5
        point[rows[accepted]] += size[accepted, None] * step[accepted]
        converged[rows[final]] = True
        diverged = ~np.all(np.isfinite(point[rows]), axis=1)
        converged[rows[diverged]] = False
        running[rows[final | ~accepted | diverged | ~solvable]] = False
    loss, gradient, hessian = problem.derivatives(point)
    return _NewtonResult(point, loss, gradient, hessian, converged)


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
    groups, n_problems = check_groups(groups, n_problems, n)
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
