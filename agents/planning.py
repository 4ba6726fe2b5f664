"""Planning against a confidence set of rewards (docs/algorithms.md, Planning).

Three planners, all built on the batched :func:`~lr_mdp_env.backward_induction`:

- :func:`greedy`: backward induction on the point estimate (no pessimism);
- :func:`rectangular`: backward induction on the estimate minus a per-``(h, s, a)`` bonus
  ``radius ||G phi_id[h, s, a]||_{M^{-1}}`` (PEVI-style), optionally with L1-robust transitions;
- :func:`robust_optimize`: the exact non-rectangular problem
  ``max_pi L(pi)``, ``L(pi) = min_{theta in C} theta . (d_pi - d_ref)``, to a certified gap.

With ``g = d_pi - d_ref`` and the set ``C = {offset + B w : ||w - c||_M <= radius}``,
``L = theta_hat . g - radius ||K g||`` where ``K = L_M^{-1} B^T`` whitens the set's coordinates
(``M = L_M L_M^T``), and the minimiser is ``theta(z) = theta_hat + radius K^T z`` with
``z = -K g / ||K g||``. Every ``theta(z)`` with ``||z|| <= 1`` lies in ``C``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize

from lr_mdp_env import TabularMDP
from lr_mdp_env._validation import as_real_array, check_int, check_real
from lr_mdp_env.dynamic_programming import backward_induction, expected_features, occupancy
from lr_mdp_env.identifiability import project_identifiable, unidentified_directions

from .confidence import ConfidenceSet, Ellipsoid

__all__ = [
    "RectangularSolution",
    "RobustSolution",
    "empirical_mdp",
    "greedy",
    "pessimistic_value",
    "rectangular",
    "rectangular_bonus",
    "robust_optimize",
]


# -- argument checks --------------------------------------------------------------------------


def _check_mdp(mdp: Any) -> TabularMDP:
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    return mdp


def _as_sets(mdp: TabularMDP, sets: Any, name: str) -> tuple[list[ConfidenceSet], bool]:
    """One confidence set or a sequence of them, each of the MDP's feature dimension."""
    batched = not isinstance(sets, ConfidenceSet)
    try:
        items = list(sets) if batched else [sets]
    except TypeError:
        raise TypeError(f"{name} must be an agents.ConfidenceSet or a sequence of them, got {type(sets).__name__}") from None
    if batched and not items:
        raise ValueError(f"{name} must not be empty")
    for index, item in enumerate(items):
        label = f"{name}[{index}]" if batched else name
        if not isinstance(item, ConfidenceSet):
            raise TypeError(f"{label} must be an agents.ConfidenceSet, got {type(item).__name__}")
        if item.n_features != mdp.n_features:
            raise ValueError(
                f"{label} lives in dimension {item.n_features} but the MDP has {mdp.n_features} features"
            )
    return items, batched


def _reference_rows(mdp: TabularMDP, reference_features: Any, n_sets: int, batched: bool) -> np.ndarray:
    """``d_ref`` as ``(n_sets, d)``: one row per set, or one vector shared by all."""
    reference = as_real_array("reference_features", reference_features, (1, 2) if batched else (1,))
    d = mdp.n_features
    if reference.ndim == 1:
        if reference.shape != (d,):
            raise ValueError(f"reference_features must have shape ({d},), got {reference.shape}")
        return np.broadcast_to(reference, (n_sets, d))
    if reference.shape != (n_sets, d):
        raise ValueError(f"reference_features must have shape ({d},) or ({n_sets}, {d}), got {reference.shape}")
    return reference


def _whitening(confidence_set: Ellipsoid) -> np.ndarray:
    """``K = L^{-1} B^T`` with ``M = L L^T``: ``||G v||_{M^{-1}} = ||K v||``, shape ``(k, d)``."""
    cholesky = np.linalg.cholesky(confidence_set.matrix)
    return scipy.linalg.solve_triangular(cholesky, confidence_set.basis.T, lower=True)


# -- greedy and the pessimistic objective ------------------------------------------------------


def greedy(mdp: TabularMDP, theta_hat: Any) -> np.ndarray:
    """Optimal policies of the point estimates (greedy value iteration, no pessimism).

    Parameters
    ----------
    mdp : TabularMDP
    theta_hat : array_like, shape (d,) or (N, d)

    Returns
    -------
    ndarray, shape (H, S, A) or (N, H, S, A)
        Deterministic policies; all users go through one batched backward induction.

    References
    ----------
    Puterman, *Markov Decision Processes*, 1994, section 4.5.
    """
    mdp = _check_mdp(mdp)
    policy, _ = backward_induction(mdp, mdp.reward(theta_hat))
    return policy


def pessimistic_value(mdp: TabularMDP, confidence_set: Any, reference_features: Any, policy: Any) -> Any:
    """``L(pi) = min_{theta in C} theta . (d_pi - d_ref)``, exactly (expected features by DP).

    Parameters
    ----------
    mdp : TabularMDP
    confidence_set : Ellipsoid or sequence of N Ellipsoids
    reference_features : array_like, shape (d,) or (N, d)
    policy : array_like, shape (H, S, A), or (N, H, S, A) with a sequence of sets

    Returns
    -------
    float, or ndarray of shape (N,) for a sequence of sets

    References
    ----------
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023 (the pessimistic objective).
    """
    mdp = _check_mdp(mdp)
    sets, batched = _as_sets(mdp, confidence_set, "confidence_set")
    reference = _reference_rows(mdp, reference_features, len(sets), batched)
    features = np.atleast_2d(expected_features(mdp, policy))
    if features.shape[0] != len(sets):
        raise ValueError(f"policy must hold one policy per set ({len(sets)}), got {features.shape[0]}")
    values = np.array([item.lower(f - r) for item, f, r in zip(sets, features, reference)])
    return values if batched else float(values[0])


# -- rectangular pessimism ---------------------------------------------------------------------


def rectangular_bonus(mdp: TabularMDP, sets: Any) -> np.ndarray:
    """Per-``(h, s, a)`` bonus ``radius ||G phi_id[h, s, a]||_{M^{-1}}`` of each set.

    ``phi_id`` is the identifiable part of the features: their projection onto the orthogonal
    complement of :func:`~lr_mdp_env.identifiability.unidentified_directions`. Comparisons never
    see the removed directions, so a set's width along them is only the ridge's
    (``radius / sqrt(lambda)``) and would swamp the bonus (docs/algorithms.md, Identifiability);
    removing them changes every policy's value by the same amount per step, so no ranking.

    Parameters
    ----------
    mdp : TabularMDP
    sets : Ellipsoid or sequence of N Ellipsoids

    Returns
    -------
    ndarray, shape (H, S, A) or (N, H, S, A)

    References
    ----------
    Jin, Yang and Wang, *Is Pessimism Provably Efficient for Offline RL?*, ICML 2021 (PEVI).
    """
    mdp = _check_mdp(mdp)
    items, batched = _as_sets(mdp, sets, "sets")
    identifiable = project_identifiable(mdp, mdp.flat_features(), unidentified_directions(mdp))
    cache: list[tuple[np.ndarray, np.ndarray]] = []  # the sets of one estimator usually share a basis
    bonus = np.empty((len(items), identifiable.shape[0]))
    for index, item in enumerate(items):
        coordinates = next((coords for basis, coords in cache if basis.shape == item.basis.shape
                            and np.array_equal(basis, item.basis)), None)
        if coordinates is None:
            coordinates = identifiable @ item.basis
            cache.append((item.basis, coordinates))
        cholesky = np.linalg.cholesky(item.matrix)
        whitened = scipy.linalg.solve_triangular(cholesky, coordinates.T, lower=True)
        bonus[index] = item.radius * np.linalg.norm(whitened, axis=0)
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    bonus = np.broadcast_to(bonus.reshape((len(items), -1, mdp.n_states, mdp.n_actions)), (len(items),) + shape)
    return np.array(bonus if batched else bonus[0])


@dataclass(frozen=True)
class RectangularSolution:
    """Result of :func:`rectangular`.

    Attributes
    ----------
    policy : ndarray, shape (H, S, A) or (N, H, S, A)
        Deterministic policies maximising the penalised reward.
    value : float or ndarray of shape (N,)
        Each policy's exact pessimistic objective ``L(pi)`` against its set (in ``mdp``).
    bonus : ndarray, shape (H, S, A) or (N, H, S, A)
        The subtracted bonus (see :func:`rectangular_bonus`).
    """

    policy: np.ndarray
    value: Any
    bonus: np.ndarray


def rectangular(
    mdp: TabularMDP, sets: Any, reference_features: Any, *, transition_radius: Any = None
) -> RectangularSolution:
    """Rectangular pessimistic value iteration (fast, conservative).

    Backward induction on ``r_hat[h, s, a] - radius ||G phi_id[h, s, a]||_{M^{-1}}``: each
    ``(h, s, a)`` gets its own worst case, which is never less conservative than the exact
    objective (its policy's ``L`` is at most :func:`robust_optimize`'s optimum).

    Parameters
    ----------
    mdp : TabularMDP
        The known MDP, or one with estimated transitions (see :func:`empirical_mdp`).
    sets : Ellipsoid or sequence of N Ellipsoids
        ``r_hat`` is each set's ``theta_hat``; all users share one batched backward induction.
    reference_features : array_like, shape (d,) or (N, d)
        ``d_ref``, used to report each policy's ``L``.
    transition_radius : float or array_like of shape (H, S, A), optional
        With estimated transitions, the L1 radius of each row's uncertainty, e.g.
        ``lr_mdp_env.dynamic_programming.l1_transition_radius(counts, delta)``; the Bellman step
        then also minimises over the transitions (robust value iteration).

    Returns
    -------
    RectangularSolution

    References
    ----------
    Jin, Yang and Wang, *Is Pessimism Provably Efficient for Offline RL?*, ICML 2021 (PEVI).
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023.
    """
    mdp = _check_mdp(mdp)
    items, batched = _as_sets(mdp, sets, "sets")
    reference = _reference_rows(mdp, reference_features, len(items), batched)
    bonus = rectangular_bonus(mdp, items)
    estimates = np.stack([item.theta_hat for item in items])
    policy, _ = backward_induction(mdp, mdp.reward(estimates) - bonus, transition_radius=transition_radius)
    features = expected_features(mdp, policy)
    value = np.array([item.lower(f - r) for item, f, r in zip(items, features, reference)])
    if not batched:
        return RectangularSolution(policy[0], float(value[0]), bonus[0])
    return RectangularSolution(policy, value, bonus)


def empirical_mdp(mdp: TabularMDP, counts: Any) -> TabularMDP:
    """``mdp`` with its transitions replaced by the empirical ones of ``counts``.

    Rows never observed become uniform; pair them with a radius of 2
    (:func:`~lr_mdp_env.dynamic_programming.l1_transition_radius` does), which lets the robust
    step choose any distribution there.

    Parameters
    ----------
    mdp : TabularMDP
        Supplies the horizon, initial distribution and features.
    counts : array_like, shape (H, S, A, S) or (S, A, S)
        Observed transitions, e.g. :meth:`~lr_mdp_env.PreferenceDataset.transition_counts`.

    Returns
    -------
    TabularMDP

    References
    ----------
    Weissman, Ordentlich, Seroussi, Verdu and Weinberger, *Inequalities for the L1 deviation of
    the empirical distribution*, HP Labs technical report HPL-2003-97, 2003.
    """
    mdp = _check_mdp(mdp)
    counts = as_real_array("counts", counts, (3, 4))
    shape = (mdp.n_states, mdp.n_actions, mdp.n_states)
    if counts.shape not in (shape, (mdp.horizon,) + shape):
        raise ValueError(f"counts must have shape {shape} or {(mdp.horizon,) + shape}, got {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative")
    visits = counts.sum(axis=-1, keepdims=True)
    transitions = np.where(visits > 0, counts / np.where(visits > 0, visits, 1.0), 1.0 / mdp.n_states)
    features = mdp.features[0] if mdp.stationary_features else mdp.features
    return TabularMDP(transitions, mdp.initial_distribution, horizon=mdp.horizon, features=features)


# -- exact robust optimisation -----------------------------------------------------------------


@dataclass(frozen=True)
class RobustSolution:
    """Result of :func:`robust_optimize`.

    Attributes
    ----------
    policy : ndarray, shape (H, S, A)
        Markov policy realising the primal occupancy ``q``: ``pi_h(a|s) = q_h(s, a) / sum_a q_h(s, a)``,
        uniform where ``q_h(s, .) = 0``.
    value : float
        Its pessimistic objective ``L(pi)``, computed exactly from its expected features.
    upper_bound : float
        ``max_pi' theta . (d_pi' - d_ref)`` for the certificate ``theta`` in ``C``: by weak
        duality at least ``max_pi L(pi)``.
    gap : float
        ``upper_bound - value >= 0``: how far ``value`` may be from the optimum.
    iterations : int
        Backward inductions run (pricing steps).
    converged : bool
        Whether ``gap <= tol * max(1, |value|)``.
    certificate : ndarray, shape (d,)
        The member of ``C`` giving ``upper_bound``.
    occupancy : ndarray, shape (H, S, A)
        ``q``, a mixture of the occupancies of deterministic policies (and of the reference
        policy, if one was given).
    """

    policy: np.ndarray
    value: float
    upper_bound: float
    gap: float
    iterations: int
    converged: bool
    certificate: np.ndarray
    occupancy: np.ndarray


def robust_optimize(
    mdp: TabularMDP,
    confidence_set: Any,
    reference_features: Any,
    tol: float = 1e-8,
    *,
    reference_policy: Any = None,
    max_iterations: int = 500,
) -> Any:
    """Exact non-rectangular pessimism: ``max_pi min_{theta in C} theta . (d_pi - d_ref)``.

    ``L(pi) = theta_hat . g - radius ||G g||_{M^{-1}}`` with ``g = d_pi - d_ref`` is concave in
    the occupancy measure, so this is a convex problem over the occupancy polytope. It is solved
    by column generation (fully corrective Frank-Wolfe, or simplicial decomposition):

    1. keep the deterministic policies found so far, with ``c_i = theta_hat . g_i`` and whitened
       coordinates ``u_i = K g_i``;
    2. restricted master: ``max_{lambda in simplex} c . lambda - radius ||U lambda||``, a small
       second-order cone program in the mixture weights, and its dual
       ``min_{||z|| <= 1} max_i c_i + radius u_i . z``, solved to rounding level by a dedicated
       method on the ``rank(U) + 1`` dual variables: Newton's method on the optimality
       conditions of the previous support (warm start), a linear program when the optimal
       mixture has ``G g = 0``, and a barrier method when neither settles it;
    3. pricing: a dual point ``z`` in the unit ball gives ``theta(z) = theta_hat + radius K^T z``
       in ``C`` (at the master's dual, the minimiser over ``C`` for the current mixture); one
       backward induction on its reward finds the best deterministic policy for it, the next
       column, and ``max_pi theta(z) . (d_pi - d_ref)`` bounds the optimum from above (weak
       duality). The pricing point is the master's dual smoothed towards the point of the best
       bound so far (Wentges), which damps the zig-zag of plain column generation.

    It stops when the best bound minus the master's value is below ``tol * max(1, |value|)``.
    At the optimum the master's dual is the saddle point's, so the bound is tight and the loop
    ends after finitely many columns. The optimal mixture needs up to ``rank + 1`` vertices and
    certifying it needs the dual in every direction of the set, so the number of pricing steps
    grows with the set's dimension ``k``: a few for ``k <= 10``, a few times ``k`` for sets of
    hundreds of dimensions. Degenerate cases need no special treatment: radius 0 or ``G g = 0``
    (the master is then linear: greedy), and sets whose basis is not injective (only ``K g``
    enters).

    Parameters
    ----------
    mdp : TabularMDP
    confidence_set : Ellipsoid or sequence of Ellipsoids
        With a sequence, every problem is solved and their pricing steps share one batched
        backward induction per iteration; a list of solutions is returned.
    reference_features : array_like, shape (d,) or (N, d)
        ``d_ref``.
    tol : float, default 1e-8
        Relative gap at which to stop (below about ``1e-11`` rounding dominates).
    reference_policy : array_like, shape (H, S, A) or (N, H, S, A), optional
        A policy added to the first columns, e.g. the reference policy itself: the point
        ``g = 0`` (``L = 0``), often optimal for large radii, is then in the master from the
        start instead of being reproduced as a mixture of vertices. (Certifying it still takes
        pricing steps: the dual point must be found in every direction of the set.)
    max_iterations : int, default 500
        Largest number of pricing steps per problem.

    Returns
    -------
    RobustSolution, or list of RobustSolution for a sequence of sets

    References
    ----------
    Von Hohenbalken, *Simplicial decomposition in nonlinear programming algorithms*,
    Mathematical Programming 13, 1977. Wentges, *Weighted Dantzig-Wolfe decomposition for
    linear mixed-integer programming*, International Transactions in Operational Research 4(2),
    1997 (dual price smoothing). Boyd and Vandenberghe, *Convex Optimization*, 2004, section 11.3
    (barrier method). Zhu, Jordan and Jiao, ICML 2023 (pessimistic MLE policy).
    """
    mdp = _check_mdp(mdp)
    items, batched = _as_sets(mdp, confidence_set, "confidence_set")
    reference = _reference_rows(mdp, reference_features, len(items), batched)
    tol = check_real("tol", tol, 0.0, strict_minimum=True)
    max_iterations = check_int("max_iterations", max_iterations, minimum=1)
    problems = [_RobustProblem(item, ref) for item, ref in zip(items, reference)]
    if reference_policy is not None:
        reference_policy = np.asarray(reference_policy, dtype=float)
        shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
        if reference_policy.shape not in (shape, (len(problems), *shape)):
            raise ValueError(
                f"reference_policy must have shape (H, S, A) = {shape} or one per set "
                f"({len(problems)}, H, S, A), got {reference_policy.shape}"
            )
        reference_feature = expected_features(mdp, reference_policy)  # validates the rows
        per_set = reference_policy.ndim == 4
        for index, problem in enumerate(problems):
            problem.add_column(reference_policy[index] if per_set else reference_policy,
                               reference_feature[index] if per_set else reference_feature)
    active = list(range(len(problems)))
    while active:
        # One batched backward induction prices every unfinished problem at its pricing point.
        thetas = np.stack([problems[index].pricing_parameter() for index in active])
        policies, values = backward_induction(mdp, mdp.reward(thetas))
        best = values[:, 0] @ mdp.initial_distribution
        features = expected_features(mdp, policies)
        still_active = []
        for row, index in enumerate(active):
            problem = problems[index]
            problem.record_bound(best[row] - thetas[row] @ problem.reference)
            problem.add_column(policies[row].argmax(axis=-1), features[row])
            if not problem.small_gap(tol) and not problem.stalled and problem.iterations < max_iterations:
                still_active.append(index)
        active = still_active
    solutions = [problem.solution(mdp, tol) for problem in problems]
    return solutions if batched else solutions[0]


class _RobustProblem:
    """State of one column-generation run: columns, master solution, dual bounds.

    The pricing point is smoothed towards the dual point of the best bound so far (Wentges'
    dual price smoothing): ``z_price = a z_best + (1 - a) z_master``. Pure column generation
    (``a = 0``) zig-zags when many vertices share the optimal face (the dual of a large set is
    then determined late); smoothing keeps the dual steps short. A column that does not improve
    the master (a mis-price) instead improves the best bound, so the pricing point moves on
    towards the master's dual and nothing cycles.
    """

    SMOOTHING = 0.5

    def __init__(self, confidence_set: Ellipsoid, reference: np.ndarray) -> None:
        self.set = confidence_set
        self.theta_hat = confidence_set.theta_hat
        self.radius = confidence_set.radius
        self.reference = np.asarray(reference, dtype=float)
        self.whitening = _whitening(confidence_set)
        self.frame = np.zeros((self.whitening.shape[0], 0))  # orthonormal basis of span(u_i)
        self.policies: list[np.ndarray] = []  # (H, S) actions of a vertex, or an (H, S, A) policy
        self.gains = np.zeros(0)  # c_i = theta_hat . g_i
        self.reduced = np.zeros((0, 0))  # frame^T u_i, u_i = K g_i, as columns (p, m)
        self.upper_bound = np.inf
        self.best_dual = np.zeros(self.whitening.shape[0])  # z of the best bound
        self.certificate = self.theta_hat
        self.iterations = 0
        self.improved = False
        self.direct = False  # price at the master's dual, without smoothing
        self.stalled = False
        self.master: _Master | None = None
        self.master_value = -np.inf
        self.pricing_dual = self.best_dual

    def pricing_parameter(self) -> np.ndarray:
        """``theta(z) = theta_hat + radius K^T z`` at the (smoothed) pricing point."""
        if self.master is None:
            self.pricing_dual = self.best_dual
        elif self.direct:
            self.pricing_dual = self.master.dual
        else:
            self.pricing_dual = self.SMOOTHING * self.best_dual + (1 - self.SMOOTHING) * self.master.dual
        return self.theta_hat + self.radius * (self.whitening.T @ self.pricing_dual)

    def record_bound(self, bound: float) -> None:
        """Keep the best dual bound ``max_pi theta(z) . (d_pi - d_ref)`` and its point."""
        self.iterations += 1
        self.improved = bound < self.upper_bound
        if self.improved:
            self.upper_bound = float(bound)
            self.best_dual = self.pricing_dual
            self.certificate = self.theta_hat + self.radius * (self.whitening.T @ self.best_dual)

    def add_column(self, policy: np.ndarray, features: np.ndarray) -> None:
        """Add the priced vertex if it improves the master, and re-solve the master."""
        direction = features - self.reference
        coordinates = self.whitening @ direction
        gain = float(self.theta_hat @ direction)
        if self.master is not None:
            reduced_cost = gain + self.radius * float(coordinates @ self.master.dual) - self.master.level
            if reduced_cost <= 1e-13 * max(1.0, abs(self.master.level)):
                # A mis-price: nothing to add (the bound has improved instead). Price at the
                # master's own dual next; if that mis-prices too, the master is optimal up to
                # rounding and nothing is left to add.
                self.stalled = self.direct
                self.direct = True
                return
        self.direct = False
        self.policies.append(policy)
        self.gains = np.append(self.gains, gain)
        self._extend_frame(coordinates)
        spread = self.radius * self.reduced
        previous = None if self.master is None else np.append(self.master.weights, 0.0)
        self.master = _solve_master(self.gains, spread, self.frame, self.master, previous)
        self.master_value = _master_primal(self.gains, spread, self.master.weights)

    def _extend_frame(self, coordinates: np.ndarray) -> None:
        """Append ``frame^T u`` as a column of ``reduced``, growing the frame if ``u`` leaves its span.

        Classical Gram-Schmidt applied twice keeps the frame orthonormal to rounding.
        """
        residual = coordinates.copy()
        projection = np.zeros(self.frame.shape[1])
        for _ in range(2):
            step = self.frame.T @ residual
            projection += step
            residual -= self.frame @ step
        norm = float(np.linalg.norm(residual))
        largest = max(float(np.linalg.norm(coordinates)), float(np.abs(self.reduced).max(initial=0.0)))
        column = projection
        if norm > 1e-12 * largest:
            self.frame = np.column_stack([self.frame, residual / norm])
            self.reduced = np.vstack([self.reduced, np.zeros((1, self.reduced.shape[1]))])
            column = np.append(projection, norm)
        self.reduced = np.column_stack([self.reduced, column])

    def small_gap(self, tol: float) -> bool:
        return self.upper_bound - self.master_value <= tol * max(1.0, abs(self.master_value))

    def solution(self, mdp: TabularMDP, tol: float) -> RobustSolution:
        weights = self.master.weights
        # Weights at rounding level carry no value; dropping them keeps the mixture small.
        support = np.flatnonzero(weights > 1e-12 * weights.max())
        weights = weights[support] / weights[support].sum()
        eye = np.eye(mdp.n_actions)
        # Vertices are stored as (H, S) actions, a seeded reference policy as (H, S, A) rows.
        members = np.stack([eye[self.policies[i]] if self.policies[i].ndim == 2 else self.policies[i] for i in support])
        mixture = np.tensordot(weights, occupancy(mdp, members), axes=1)
        totals = mixture.sum(axis=-1, keepdims=True)
        policy = np.where(totals > 0, mixture / np.where(totals > 0, totals, 1.0), 1.0 / mdp.n_actions)
        value = float(self.set.lower(expected_features(mdp, policy) - self.reference))
        gap = self.upper_bound - value
        return RobustSolution(
            policy=policy, value=value, upper_bound=self.upper_bound, gap=gap, iterations=self.iterations,
            converged=bool(gap <= tol * max(1.0, abs(value))), certificate=self.certificate, occupancy=mixture,
        )


# -- the restricted master ---------------------------------------------------------------------
#
# max_{lambda in simplex} c . lambda - ||B lambda||, with B = radius R the whitened coordinates of
# the columns reduced to their span (p = rank <= m rows), and its dual
# min_{||y|| <= 1} max_i c_i + b_i . y. Optimality on the support S of lambda:
#   c_S + B_S^T y = t,  c_i + b_i . y <= t elsewhere,  lambda_S >= 0,  sum lambda_S = 1,  and either
#   B_S lambda_S + nu y = 0, ||y|| = 1, nu >= 0     (the ball is active: nu = ||B lambda||), or
#   B_S lambda_S = 0, ||y|| <= 1                    (it is not: the best mixture has G g = 0).


@dataclass(frozen=True)
class _Master:
    """A master solution: weights over all columns, dual point ``z`` in the whitened space
    ``(k,)``, level ``t`` and the support, kept to warm-start the next master."""

    weights: np.ndarray
    dual: np.ndarray
    level: float
    support: np.ndarray


def _solve_master(
    gains: np.ndarray, spread: np.ndarray, frame: np.ndarray, warm: _Master | None = None,
    previous_weights: np.ndarray | None = None,
) -> _Master:
    """Solve the restricted master exactly (to rounding).

    ``spread`` ``B`` ``(p, m)`` holds ``radius`` times the columns' whitened coordinates in the
    orthonormal ``frame`` ``(k, p)`` of their span, so the work depends on the number of
    columns, not on ``k``. Candidates, cheapest first, until one is optimal to rounding:

    1. the ball is active: the previous master's support and dual point (one column fewer),
       corrected by :func:`_active_set`, usually solve the new master in a few Newton steps;
    2. the ball is inactive: the linear program ``max c . lambda`` s.t. ``B lambda = 0`` over the
       simplex (HiGHS), optimal for the master when its dual point lies in the ball;
    3. a barrier method finds the neighbourhood of the optimum and its near-active cuts, from
       which :func:`_active_set` finishes.

    Every candidate is checked as it is (weights on the simplex, dual point in the ball), and
    the best primal and dual are kept (the previous master's weights, padded with a zero, are
    one more candidate), so a failed attempt costs nothing but time.
    """
    n_columns = gains.size
    if spread.shape[0] == 0 or not np.any(spread):
        # A linear master: the best column, and theta_hat itself (z = 0) prices it.
        best = int(np.argmax(gains))
        weights = np.zeros(n_columns)
        weights[best] = 1.0
        return _Master(weights, np.zeros(frame.shape[0]), float(gains[best]), np.array([best]))
    scale = float(max(np.abs(gains).max(), np.linalg.norm(spread, axis=0).max()))
    candidates: list[tuple[np.ndarray, np.ndarray]] = []
    start_dual = np.zeros(spread.shape[0]) if warm is None else _into_ball(frame.T @ warm.dual)
    if previous_weights is not None:
        candidates.append((previous_weights, start_dual))

    def settled() -> bool:
        """Whether the best pair's duality gap is at rounding level (relative to the value)."""
        if not candidates:
            return False
        weights, y = _best_pair(gains, spread, candidates)
        primal = _master_primal(gains, spread, weights)
        gap = float(np.max(gains + y @ spread)) - primal
        return gap <= 1e-13 * max(1.0, abs(primal)) + 1e3 * np.finfo(float).eps * scale

    warm_inactive = warm is not None and float(np.linalg.norm(warm.dual)) < 1.0 - 1e-9
    if warm_inactive:  # the previous master had G g = 0: most likely this one too
        candidates += _inactive_ball(gains, spread)
    if warm is not None and not settled():
        start_weights = np.zeros(n_columns)
        start_weights[warm.support] = warm.weights[warm.support]
        candidates += _active_set(gains, spread, warm.support, start_weights, start_dual, warm.level, scale)
    if not warm_inactive and not settled():
        candidates += _inactive_ball(gains, spread)
    if not settled():
        weights, y, level = _master_barrier(gains, spread)
        candidates.append((weights, y))
        slack = np.maximum(level - gains - y @ spread, 0.0)
        # On the central path lambda_i s_i = 1 / tau: a cut is taken as active when its
        # multiplier exceeds its slack in units of the value (the scale of the caller's
        # tolerance), not of the data, whose spread term can be much larger.
        start = np.flatnonzero(weights * max(1.0, abs(level)) > slack)
        candidates += _active_set(gains, spread, start, weights, y, level, scale)
    weights, y = _best_pair(gains, spread, candidates)
    return _Master(weights, frame @ y, float(np.max(gains + y @ spread)), np.flatnonzero(weights > 0))


def _into_ball(y: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(y))
    return y / norm if norm > 1.0 else y


def _best_pair(gains, spread, candidates):
    """The best primal weights and the best dual point among the candidates."""
    weights = max((w for w, _ in candidates), key=lambda w: _master_primal(gains, spread, w))
    y = min((y for _, y in candidates), key=lambda y: float(np.max(gains + y @ spread)))
    return weights, y


def _master_primal(gains: np.ndarray, spread: np.ndarray, weights: np.ndarray) -> float:
    return float(gains @ weights - np.linalg.norm(spread @ weights))


def _active_set(gains, spread, support, weights, y, level, scale) -> list:
    """Solve the optimality conditions with the ball active by a primal active-set method.

    For a support ``S`` the conditions (``c_S + B_S^T y = t``, ``||y|| = 1``,
    ``B_S lambda_S + nu y = 0``, ``sum lambda_S = 1``) characterise the maximiser of the concave
    objective over the affine hull of ``S``: a square system in ``(y, t, lambda_S, nu)``, solved
    by Newton's method from a nearby point (quadratic convergence to rounding level; when
    column generation has collected more vertices of the optimal face than needed the system is
    under-determined and a minimum-norm solution is taken). As in Wolfe's and Lawson and
    Hanson's methods the weights stay feasible: if the maximiser has negative weights, move
    towards it until the first weight vanishes and drop that column (the objective does not
    decrease along the way, by concavity); if it is feasible and a cut outside ``S`` is violated,
    the most violated column enters. A support on which Newton's method finds no solution loses
    its lightest column (a starting support may hold near-active columns that do not belong).
    Returns a list with one candidate ``(lambda, y)``, or an empty list when the ball is not
    active at the optimum (or no support works).
    """
    tolerance = 64 * np.finfo(float).eps * scale
    support = [int(i) for i in support if weights[i] > 0]
    if not support:
        return []
    current = weights[support] / weights[support].sum()
    entering = -1
    failures = 0
    for _ in range(4 * gains.size + 20):
        solved = _newton_active_ball(gains[support], spread[:, support], y, level, current)
        if solved is None:
            # No maximiser on this affine hull (the objective grows without bound along it, or
            # the system is inconsistent): the smallest weight is the least trusted column.
            # A few such failures mean the ball is not active: leave it to the other methods.
            failures += 1
            if len(support) == 1 or failures > 3:
                return []
            dropped = int(np.argmin(current))
            support.pop(dropped)
            current = np.delete(current, dropped)
            current = current / current.sum() if current.sum() > 0 else np.full(len(support), 1.0 / len(support))
            entering = -1
            continue
        target, y, level, multiplier = solved
        if target.min() < -tolerance / scale:
            change = target - current
            shrinking = np.flatnonzero(change < 0)
            ratios = -current[shrinking] / change[shrinking]
            blocking = int(shrinking[np.argmin(ratios)])
            if support[blocking] == entering and ratios.min() <= 0:
                return []  # the entering column cannot take weight: degenerate, give up here
            current = np.maximum(current + min(1.0, float(ratios.min())) * change, 0.0)
            current[blocking] = 0.0
            kept = current > 0
            support = [column for column, keep in zip(support, kept) if keep]
            if not support:
                return []
            current = current[kept] / current[kept].sum()
            entering = -1
            continue
        if multiplier < -tolerance:
            return []  # the ball is not active
        current = np.maximum(target, 0.0)
        violation = gains + y @ spread - level
        violation[support] = -np.inf
        entering = int(np.argmax(violation))
        if violation[entering] <= tolerance:
            return [_feasible_pair(gains.size, np.array(support), current, y)]
        support.append(entering)
        current = np.append(current, 0.0)
    return []


def _inactive_ball(gains, spread) -> list:
    """The master when the ball is inactive: ``max c . lambda`` s.t. ``B lambda = 0`` on the simplex.

    A linear program (HiGHS); its basic solution is then solved exactly on its support, and its
    equality multipliers are the dual point (optimal for the master if it lies in the ball).
    Returns a list with one candidate ``(lambda, y)``, or an empty list if ``B lambda = 0`` is
    infeasible.
    """
    n_dual, n_columns = spread.shape
    constraints = np.vstack([spread, np.ones((1, n_columns))])
    rhs = np.concatenate([np.zeros(n_dual), [1.0]])
    # HiGHS's default tolerances (1e-7) stop a vertex or two early; the exact solve below only
    # restores feasibility on the support it returns, so ask for optimality to 1e-10.
    result = scipy.optimize.linprog(-gains, A_eq=constraints, b_eq=rhs, bounds=(0, None), method="highs",
                                    options={"primal_feasibility_tolerance": 1e-10,
                                             "dual_feasibility_tolerance": 1e-10})
    if result.status != 0:
        return []
    weights = np.maximum(result.x, 0.0)
    support = np.flatnonzero(weights > 0)
    exact, *_ = np.linalg.lstsq(constraints[:, support], rhs, rcond=None)
    basic = constraints[:, support]
    if np.all(exact >= 0) and np.abs(basic @ exact - rhs).max() <= np.abs(basic @ weights[support] - rhs).max():
        weights[support] = exact
    return [_feasible_pair(n_columns, support, weights[support], result.eqlin.marginals[:n_dual])]


def _newton_active_ball(gains, spread, y, level, weights):
    """Newton's method on ``c + B^T y - t = 0``, ``(||y||^2 - 1) / 2 = 0``, ``B lambda + nu y = 0``,
    ``sum lambda - 1 = 0`` in ``(y, t, lambda, nu)``; returns ``(lambda, y, t, nu)`` or None.

    Full steps first: with nearly parallel columns the weights move far in the first step and the
    residual grows through the ``nu y`` term before Newton's quadratic convergence sets in, which
    a monotone line search would refuse. If full steps do not converge, damped steps
    (backtracking on the residual) from the start point, for starts far from the solution.
    """
    n_dual, size = spread.shape
    scale = max(float(np.abs(gains).max()), float(np.linalg.norm(spread, axis=0).max()), 1.0)
    norm = float(np.linalg.norm(y))
    y = y / norm if norm > 0 else y
    start = np.concatenate([y, [level], weights, [float(np.linalg.norm(spread @ weights))]])
    jacobian = np.zeros((size + n_dual + 2, n_dual + size + 2))
    jacobian[:size, :n_dual] = spread.T
    jacobian[:size, n_dual] = -1.0
    jacobian[size + 1:size + 1 + n_dual, n_dual + 1:-1] = spread
    jacobian[-1, n_dual + 1:-1] = 1.0
    rounding = 64 * np.finfo(float).eps * scale

    def residual_at(point):
        dual, t, local_weights, nu = point[:n_dual], point[n_dual], point[n_dual + 1:-1], point[-1]
        return np.concatenate([
            gains + dual @ spread - t, [0.5 * (dual @ dual - 1.0)],
            spread @ local_weights + nu * dual, [local_weights.sum() - 1.0],
        ])

    def newton_step(point, residual):
        dual, nu = point[:n_dual], point[-1]
        jacobian[size, :n_dual] = dual
        jacobian[size + 1:size + 1 + n_dual, :n_dual] = nu * np.eye(n_dual)
        jacobian[size + 1:size + 1 + n_dual, -1] = dual
        return _square_solve(jacobian, -residual)

    for damped in (False, True):
        point = start
        residual = residual_at(point)
        size_of = float(np.abs(residual).max())
        best_point, best_size = point, size_of
        for _ in range(30 if damped else 12):  # full steps converge in a few or not at all
            if size_of <= rounding:
                break
            step = newton_step(point, residual)
            lengths = 0.5 ** np.arange(12) if damped else (1.0,)
            for length in lengths:
                candidate = point + length * step
                candidate_residual = residual_at(candidate)
                candidate_size = float(np.abs(candidate_residual).max())
                if not damped or candidate_size < (1.0 - 0.25 * length) * size_of:
                    break
            else:
                break  # no decrease: stuck (damped steps only)
            if not np.isfinite(candidate_size) or candidate_size > 1e6 * max(best_size, rounding):
                break  # full steps diverge
            point, residual, size_of = candidate, candidate_residual, candidate_size
            if size_of < best_size:
                best_point, best_size = point, size_of
            elif size_of <= 1e3 * rounding:
                break  # at rounding level, no further progress
        if best_size <= 1e-9 * scale:
            point = best_point
            return point[n_dual + 1:-1], point[:n_dual], point[n_dual], point[-1]
    return None


def _feasible_pair(n_columns: int, support: np.ndarray, local_weights: np.ndarray, dual: np.ndarray):
    """Weights on the simplex (negative rounding dropped) and a dual point in the unit ball."""
    weights = np.zeros(n_columns)
    weights[support] = np.maximum(local_weights, 0.0)
    total = weights.sum()
    weights = weights / total if total > 0 and np.isfinite(total) else np.full(n_columns, 1.0 / n_columns)
    norm = float(np.linalg.norm(dual))
    if not np.isfinite(norm):
        dual = np.zeros_like(dual)
    elif norm > 1.0:
        dual = dual / norm
    return weights, dual


def _master_barrier(gains: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Barrier method for the master's dual ``min t`` s.t. ``s_i = t - c_i - b_i . y >= 0``,
    ``||y|| <= 1`` (``b_i`` the columns of ``spread``, ``(p, m)``).

    Minimises ``tau t - sum_i log s_i - log(1 - ||y||^2)`` by damped Newton steps (the function is
    self-concordant, so steps of ``1 / (1 + decrement)`` stay feasible and converge) for ``tau``
    growing 10-fold per stage until the duality gap ``(m + 1) / tau`` is below ``1e-13`` of the
    data's scale. On the central path the multipliers ``lambda_i = 1 / (tau s_i)`` of the cuts
    sum to one: they are the primal mixture weights. Near the end the slacks of the active cuts,
    recomputed as ``t - c_i - b_i . y``, lose their relative precision to cancellation, so the
    weights are only good enough to tell the active cuts apart; :func:`_active_set` finishes.
    Returns ``lambda``, ``y`` and ``t``.
    """
    n_columns = gains.size
    n_dual = spread.shape[0]
    widths = np.linalg.norm(spread, axis=0)
    span = float(widths.max() + gains.max() - gains.min())
    scale = float(max(np.abs(gains).max(), widths.max()))
    barrier_parameter = n_columns + 1
    y = np.zeros(n_dual)
    t = float(gains.max()) + span
    tau = barrier_parameter / span
    identity = np.eye(n_dual)
    while True:
        for _ in range(50):  # centring by damped Newton steps
            slack = t - gains - y @ spread
            room = 1.0 - y @ y
            inverse = 1.0 / slack
            inverse_squared = inverse * inverse
            gradient = np.concatenate([spread @ inverse + (2.0 / room) * y, [tau - inverse.sum()]])
            hessian = np.empty((n_dual + 1, n_dual + 1))
            hessian[:n_dual, :n_dual] = (spread * inverse_squared) @ spread.T + (2.0 / room) * identity \
                + (4.0 / room**2) * np.outer(y, y)
            hessian[:n_dual, n_dual] = hessian[n_dual, :n_dual] = -(spread @ inverse_squared)
            hessian[n_dual, n_dual] = inverse_squared.sum()
            step = -_scaled_solve(hessian, gradient)
            decrement = float(np.sqrt(max(-gradient @ step, 0.0)))
            length = 1.0 if decrement < 0.25 else 1.0 / (1.0 + decrement)
            new_y, new_t = y + length * step[:n_dual], t + length * step[n_dual]
            if not (new_y @ new_y < 1.0 and np.all(new_t - gains - new_y @ spread > 0)):
                break  # rounding: the theory says the step is feasible, the arithmetic disagrees
            y, t = new_y, new_t
            if decrement < 1e-6:  # the iterate is then well inside the quadratic region
                break
        if barrier_parameter / tau <= 1e-13 * scale:
            break
        tau *= 10.0
    weights = 1.0 / (tau * (t - gains - y @ spread))
    return weights / weights.sum(), y, t


def _square_solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a square system by LU; minimum-norm least squares if it is singular."""
    try:
        solution = np.linalg.solve(matrix, rhs)
        if np.all(np.isfinite(solution)):
            # A nearly singular matrix gives a huge solution whose residual may overflow: that is
            # the signal to fall back, not an error.
            with np.errstate(over="ignore", invalid="ignore"):
                error = np.abs(matrix @ solution - rhs).max()
            if error <= 1e-8 * max(np.abs(rhs).max(), np.finfo(float).tiny):
                return solution
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def _scaled_solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a symmetric system after a diagonal (Jacobi) scaling; least squares if singular."""
    diagonal = 1.0 / np.sqrt(np.maximum(np.abs(np.diag(matrix)), np.finfo(float).tiny))
    scaled = matrix * np.outer(diagonal, diagonal)
    try:
        return diagonal * np.linalg.solve(scaled, diagonal * rhs)
    except np.linalg.LinAlgError:
        return diagonal * np.linalg.lstsq(scaled, diagonal * rhs, rcond=None)[0]
