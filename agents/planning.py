"""Planning against a confidence set of rewards (docs/algorithms.md, Planning).

Three planners, all built on the batched :func:`~lr_mdp_env.backward_induction`:

- :func:`greedy`: backward induction on the point estimate (no pessimism);
- :func:`rectangular`: backward induction on the estimate minus a per-``(h, s, a)`` bonus
  ``radius ||G phi_id[h, s, a]||_{M^{-1}}`` (PEVI-style), optionally with L1-robust transitions;
- :func:`robust_optimize`: the exact non-rectangular problem
  ``max_pi L(pi)``, ``L(pi) = min_{theta in C} theta . (d_pi - d_ref)``, to a certified gap, for
  any :class:`~agents.ConfidenceSet` and all users in one call.

For a set with seminorm structure, ``C = {theta_hat + sum_j radius_j K_j^T z_j : ||z_j|| <= 1}``
(an ellipsoid ``{offset + B w : ||w - c||_M <= radius}`` has one term, ``K = L_M^{-1} B^T`` with
``M = L_M L_M^T``), ``L = theta_hat . g - sum_j radius_j ||K_j g||``. The exact planner solves it by
an interior-point method (:mod:`agents.interior_point`) or by column generation
(:mod:`agents.column_generation`), whichever an operation count says is cheaper, and any other
convex set by Frank-Wolfe; every answer is certified by the exact ``L`` of the returned policy
and one backward induction at a member of ``C``.
"""

from __future__ import annotations

import concurrent.futures
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse

from lr_mdp_env import TabularMDP
from lr_mdp_env._validation import as_real_array, check_int, check_real
from lr_mdp_env.dynamic_programming import (
    backward_induction,
    check_policy,
    expected_features,
    occupancy,
    uniform_policy,
)
from lr_mdp_env.identifiability import project_identifiable, unidentified_directions

from . import column_generation, interior_point
from .confidence import ELLIPSOIDS, ConfidenceSet, Ellipsoid
from .contextual_sets import ContextualEllipsoid
from .likelihood_set import LikelihoodRatioSet
from .logistic import ConvergenceWarning, _PaddedProblems

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
    d_ref = as_real_array("reference_features", reference_features, (1, 2) if batched else (1,))
    d = mdp.n_features
    if d_ref.ndim == 1:
        if d_ref.shape != (d,):
            raise ValueError(f"reference_features must have shape ({d},), got {d_ref.shape}")
        return np.broadcast_to(d_ref, (n_sets, d))
    if d_ref.shape != (n_sets, d):
        raise ValueError(f"reference_features must have shape ({d},) or ({n_sets}, {d}), got {d_ref.shape}")
    return d_ref


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
    confidence_set : ConfidenceSet or sequence of N ConfidenceSets
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
    d_ref = _reference_rows(mdp, reference_features, len(sets), batched)
    d_pi = np.atleast_2d(expected_features(mdp, policy))
    if d_pi.shape[0] != len(sets):
        raise ValueError(f"policy must hold one policy per set ({len(sets)}), got {d_pi.shape[0]}")
    L = _lowers(sets, d_pi - d_ref)
    return L if batched else float(L[0])


def _lowers(sets: Any, vectors: np.ndarray) -> np.ndarray:
    """``sets[i].lower(vectors[i])`` for every set: the ellipsoids (of the independent and
    reduced estimators, or the contexts of a contextual fit) in one batch per kind, each solve
    with a shared factor taken for many right-hand sides at once; any other set on its own."""
    lowers = np.empty(len(sets))
    done = np.zeros(len(sets), dtype=bool)
    for kinds, batch_lower in ((ELLIPSOIDS, Ellipsoid.batch_lower),
                               ((ContextualEllipsoid,), ContextualEllipsoid.batch_lower)):
        chosen = np.array([isinstance(item, kinds) for item in sets], dtype=bool)
        if np.any(chosen):
            lowers[chosen] = batch_lower([sets[i] for i in np.flatnonzero(chosen)], vectors[chosen])
            done |= chosen
    for i in np.flatnonzero(~done):
        lowers[i] = sets[i].lower(vectors[i])
    return lowers


# -- rectangular pessimism ---------------------------------------------------------------------


def rectangular_bonus(mdp: TabularMDP, sets: Any) -> np.ndarray:
    """Per-``(h, s, a)`` bonus ``b = theta_hat . phi_id - lower(phi_id)`` of each set.

    ``b[h, s, a]`` is how far the set lets the reward of ``(h, s, a)`` fall below the set's own
    member ``theta_hat``: its support function on the identifiable features ``phi_id[h, s, a]``.
    It has closed forms for the structured sets: ``radius ||G phi_id||_{M^{-1}} = radius ||K phi_id||``
    for an :class:`~agents.Ellipsoid`, ``sum_j radius_j ||K_j phi_id||`` for a set with
    :meth:`~agents.ConfidenceSet.seminorms` (an ellipsoid plus a ball in the complement of a
    subspace, say); any other :class:`~agents.ConfidenceSet` is asked for ``lower`` on the
    ``H S A`` (``S A`` with stationary features) rows of ``phi_id`` in one batch.

    ``phi_id`` is the identifiable part of the features: their projection onto the orthogonal
    complement of :func:`~lr_mdp_env.identifiability.unidentified_directions`. Comparisons never
    see the removed directions, so a set's width along them is only the ridge's
    (``radius / sqrt(lambda)``) and would swamp the bonus (docs/algorithms.md, Identifiability);
    removing them changes every policy's value by the same amount per step, so no ranking.

    Parameters
    ----------
    mdp : TabularMDP
    sets : ConfidenceSet or sequence of N ConfidenceSets

    Returns
    -------
    ndarray, shape (H, S, A) or (N, H, S, A)
        ``b >= 0`` (``theta_hat`` is a member, so ``lower(phi_id) <= theta_hat . phi_id``).

    References
    ----------
    Jin, Yang and Wang, *Is Pessimism Provably Efficient for Offline RL?*, ICML 2021 (PEVI).
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023.
    """
    mdp = _check_mdp(mdp)
    items, batched = _as_sets(mdp, sets, "sets")
    phi_id = project_identifiable(mdp, mdp.flat_features(), unidentified_directions(mdp))
    b = _bonus_rows(mdp, items, phi_id, [], batched)
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    b = np.broadcast_to(b.reshape((len(items), -1, mdp.n_states, mdp.n_actions)), (len(items),) + shape)
    return np.array(b if batched else b[0])


def _bonus_rows(mdp: TabularMDP, items: list[ConfidenceSet], phi_id: np.ndarray,
                coordinates_by_basis: list[tuple[np.ndarray, np.ndarray]], batched: bool,
                first: int = 0) -> np.ndarray:
    """:func:`rectangular_bonus` of ``items`` on the rows of ``phi_id``: ``(len(items), rows)``.

    ``coordinates_by_basis`` caches ``phi_id G`` across calls (an estimator's sets usually share
    ``G``); ``first`` is the index of ``items[0]`` among all sets (for messages). A set with a
    method ``rectangular_bonus(phi_id)`` returning the ``(rows,)`` bonus (or ``None`` to decline)
    supplies its own."""
    b = np.empty((len(items), phi_id.shape[0]))
    for index, item in enumerate(items):
        # A set may compute its bonus in its own structure (agents.contextual_sets: no d x k map
        # per context); None declines.
        own = getattr(item, "rectangular_bonus", None)
        bonus = own(phi_id) if callable(own) else None
        if bonus is not None:
            b[index] = bonus
            continue
        if isinstance(item, Ellipsoid):
            if item.dimension == 0:
                b[index] = 0.0
                continue
            g_phi = next((coordinates for basis, coordinates in coordinates_by_basis
                          if basis.shape == item.basis.shape and np.array_equal(basis, item.basis)), None)
            if g_phi is None:
                g_phi = phi_id @ item.basis
                coordinates_by_basis.append((item.basis, g_phi))
            k_phi = scipy.linalg.solve_triangular(item.factor, g_phi.T, lower=True)
            b[index] = item.radius * np.linalg.norm(k_phi, axis=0)
            continue
        seminorms = item.seminorms()
        if seminorms is not None:
            b[index] = sum((term.radius * term.norm(phi_id) for term in seminorms), np.zeros(phi_id.shape[0]))
            continue
        theta_hat = np.asarray(item.theta_hat, dtype=float)
        lower = np.asarray(item.lower(phi_id), dtype=float)
        if lower.shape != (phi_id.shape[0],) or not np.all(np.isfinite(lower)):
            label = f"sets[{first + index}]" if batched else "sets"
            raise ValueError(f"{label}.lower must return one finite value per row of a ({phi_id.shape[0]}, "
                             f"{mdp.n_features}) batch, got shape {lower.shape}")
        # A member attains at most theta_hat . phi_id: only rounding can make the gap negative.
        b[index] = np.maximum(phi_id @ theta_hat - lower, 0.0)
    return b


@dataclass(frozen=True)
class RectangularSolution:
    """Result of :func:`rectangular`.

    Attributes
    ----------
    policy : ndarray, shape (H, S, A) or (N, H, S, A)
        Deterministic policies maximising the penalised reward, or the reference policy for the
        users the safeguard fell back on.
    value : float or ndarray of shape (N,)
        Each returned policy's exact pessimistic objective ``L(pi)`` against its set (in ``mdp``).
    bonus : ndarray, shape (H, S, A) or (N, H, S, A)
        The subtracted bonus (see :func:`rectangular_bonus`). With stationary features and
        several sets, a read-only view that repeats one ``(N, 1, S, A)`` array along ``h``.
    safeguarded : bool or ndarray of shape (N,)
        Whether the reference policy replaced the rectangular one (``L(pi_rect) < L(ref) = 0``);
        always ``False`` without ``reference_policy``.
    """

    policy: np.ndarray
    value: Any
    bonus: np.ndarray
    safeguarded: Any


def rectangular(
    mdp: TabularMDP, sets: Any, reference_features: Any, *, transition_radius: Any = None,
    reference_policy: Any = None,
) -> RectangularSolution:
    """Rectangular pessimistic value iteration (one backward induction, conservative), with a safeguard.

    Backward induction on ``theta_hat . phi[h, s, a] - b[h, s, a]`` with the bonus ``b`` of
    :func:`rectangular_bonus` (``radius ||G phi_id[h, s, a]||_{M^{-1}}`` for an ellipsoid): each
    ``(h, s, a)`` gets its own worst case, which is never less conservative than the exact
    objective (its policy's ``L`` is at most :func:`robust_optimize`'s optimum).

    Being a per-step worst case, the rectangular policy can have ``L(pi) < 0 = L(ref)``: it is
    then not known to be as good as the reference policy, and on data concentrated on one policy
    it can be much worse (the bonus of every pair the data rarely show is large, so the penalised
    reward prefers the pairs that were seen, whether or not they lead anywhere). Given
    ``reference_policy`` (whose expected features are ``d_ref``), the safeguard returns it for
    the users with ``L(pi_rect) < 0``. The returned policy then has ``L(pi) >= 0``, and the lower
    bound ``J(pi) - J(ref) = theta* . (d_pi - d_ref) >= L(pi)`` (docs/theory.md) gives
    ``J(pi) >= J(ref)`` whenever the truth ``theta*`` is in the set.

    Parameters
    ----------
    mdp : TabularMDP
        The known MDP, or one with estimated transitions (see :func:`empirical_mdp`).
    sets : ConfidenceSet or sequence of N ConfidenceSets
        ``theta_hat`` is each set's own; all users share one batched backward induction.
    reference_features : array_like, shape (d,) or (N, d)
        ``d_ref``, used to compute each policy's ``L``.
    transition_radius : float or array_like of shape (H, S, A), optional
        With estimated transitions, the L1 radius of each row's uncertainty, e.g.
        ``lr_mdp_env.dynamic_programming.l1_transition_radius(counts, delta)``; the Bellman step
        then also minimises over the transitions (robust value iteration).
    reference_policy : array_like, shape (H, S, A) or (N, H, S, A), optional
        The policy whose expected features in ``mdp`` are ``d_ref``. When given, the safeguard
        above is on.

    Returns
    -------
    RectangularSolution

    References
    ----------
    Jin, Yang and Wang, *Is Pessimism Provably Efficient for Offline RL?*, ICML 2021 (PEVI).
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023 (the pessimistic objective and its lower bound).
    """
    mdp = _check_mdp(mdp)
    items, batched = _as_sets(mdp, sets, "sets")
    d_ref = _reference_rows(mdp, reference_features, len(items), batched)
    reference_policies = _reference_policies(mdp, reference_policy, len(items))
    phi_id = project_identifiable(mdp, mdp.flat_features(), unidentified_directions(mdp))
    n_sets, shape = len(items), (mdp.horizon, mdp.n_states, mdp.n_actions)
    # Blocks of users: the bonus, the penalised reward and the one-hot policy of a block are each
    # (users, H, S, A), so that only the returned policy is ever that large for all users. With
    # stationary features the bonus does not depend on h and is kept (and returned) per (s, a).
    policy = np.empty((n_sets,) + shape)
    bonus = np.empty((n_sets, phi_id.shape[0]))
    d_pi = np.empty((n_sets, mdp.n_features))
    coordinates_by_basis: list[tuple[np.ndarray, np.ndarray]] = []
    block = _rectangular_block_size(mdp)
    for start in range(0, n_sets, block):
        users = slice(start, min(start + block, n_sets))
        bonus[users] = _bonus_rows(mdp, items[users], phi_id, coordinates_by_basis, batched, start)
        b = np.broadcast_to(bonus[users].reshape((-1, phi_id.shape[0] // (mdp.n_states * mdp.n_actions),
                                                   mdp.n_states, mdp.n_actions)), (users.stop - start,) + shape)
        theta_hat = np.stack([item.theta_hat for item in items[users]])
        policy[users], _ = backward_induction(mdp, mdp.reward(theta_hat) - b, transition_radius=transition_radius)
        d_pi[users] = expected_features(mdp, policy[users])
    b = bonus.reshape((n_sets, -1, mdp.n_states, mdp.n_actions))
    b = b if b.shape[1] == mdp.horizon else np.broadcast_to(b, (n_sets,) + shape)
    L = _lowers(items, d_pi - d_ref)
    safeguarded = np.zeros(len(items), dtype=bool)
    if reference_policies is not None:
        safeguarded = L < 0.0  # L(ref) = lower(0) = 0 for every set
        users = np.flatnonzero(safeguarded)
        if users.size:
            policy[users] = reference_policies[users]
            g = expected_features(mdp, policy[users]) - d_ref[users]
            L[users] = _lowers([items[i] for i in users], g)
    if not batched:
        return RectangularSolution(policy[0], float(L[0]), np.array(b[0]), bool(safeguarded[0]))
    return RectangularSolution(policy, L, b, safeguarded)


# Users per block of rectangular planning: about this many bytes per (users, H, S, A) array.
_RECTANGULAR_BLOCK_BYTES = 64 * 2**20


def _rectangular_block_size(mdp: TabularMDP) -> int:
    """Users per block of :func:`rectangular` (at least one)."""
    return max(1, _RECTANGULAR_BLOCK_BYTES // (8 * mdp.horizon * mdp.n_states * mdp.n_actions))


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

METHODS = ("auto", "interior-point", "column-generation", "cutting-plane", "frank-wolfe")

#: Memory of one block of users' solver arrays, in float64 elements (about 800 MB): users are
#: solved in blocks whose largest arrays (``Psi``, the Newton system, the columns) fit in it.
_BLOCK_ELEMENTS = 100_000_000

#: Methods for any ConfidenceSet (they use only ``lower`` and ``minimizer``).
_GENERAL_METHODS = ("cutting-plane", "frank-wolfe")


@dataclass(frozen=True)
class RobustSolution:
    """Result of :func:`robust_optimize`.

    Attributes
    ----------
    policy : ndarray, shape (H, S, A)
        Markov policy realising the primal occupancy ``q``: ``pi_h(a|s) = q_h(s, a) / sum_a q_h(s, a)``,
        uniform where ``q_h(s, .) = 0``.
    value : float
        Its pessimistic objective ``L(pi)``, computed exactly from its expected features with the
        set's own :meth:`~agents.ConfidenceSet.lower`.
    upper_bound : float
        ``max_pi' theta . (d_pi' - d_ref)`` for the certificate ``theta`` in ``C`` (one backward
        induction): by weak duality at least ``max_pi L(pi)``.
    gap : float
        ``upper_bound - value >= 0``: how far ``value`` may be from the optimum.
    iterations : int
        Iterations of the method (interior-point steps, pricing steps or Frank-Wolfe steps).
    converged : bool
        Whether ``gap <= tol * max(1, |value|)``.
    certificate : ndarray, shape (d,)
        The member of ``C`` giving ``upper_bound``.
    occupancy : ndarray, shape (H, S, A)
        The occupancy measure of ``policy``.
    method : str
        ``"interior-point"``, ``"column-generation"``, ``"cutting-plane"``, ``"barrier"`` (a
        likelihood-ratio set planned by the cutting-plane choice), ``"frank-wolfe"`` or
        ``"greedy"`` (a set of radius 0); ``"interior-point+column-generation"`` (or the reverse) when the first
        method broke down before ``tol`` and the second continued.
    """

    policy: np.ndarray
    value: float
    upper_bound: float
    gap: float
    iterations: int
    converged: bool
    certificate: np.ndarray
    occupancy: np.ndarray
    method: str


def robust_optimize(
    mdp: TabularMDP,
    confidence_set: Any,
    reference_features: Any,
    tol: float = 1e-8,
    *,
    reference_policy: Any = None,
    method: str = "auto",
    max_iterations: int | None = None,
    max_seconds: float | None = None,
    workers: int = 1,
) -> Any:
    """Exact non-rectangular pessimism: ``max_pi min_{theta in C} theta . (d_pi - d_ref)``.

    ``L(pi) = min_{theta in C} theta . g`` with ``g = d_pi - d_ref`` is concave in the occupancy
    measure, so this is a convex problem over the occupancy polytope. Its dual is
    ``min_{theta in C} max_pi theta . (d_pi - d_ref)``, a convex problem over the set whose every
    evaluation is one backward induction. Whatever the method, the result is certified the same
    way: ``value`` is ``L`` of the returned policy, computed exactly from its expected features,
    and ``upper_bound`` is the dual objective at a member ``certificate`` of ``C``, so
    ``value <= max_pi L(pi) <= upper_bound`` holds whatever the solver did.

    Methods (``method="auto"`` picks the cheaper of the first two by an operation count, and the
    third for sets without seminorm structure):

    - ``"interior-point"`` (sets with :meth:`~agents.ConfidenceSet.seminorms`,
      ``C = {theta_hat + sum_j radius_j K_j^T z_j : ||z_j|| <= 1}``): Mehrotra's
      predictor-corrector method with Nesterov-Todd scaling on the dual linear program of the MDP
      in the values ``V`` and the ball coordinates ``z``, whose multipliers are the occupancy
      measure (:mod:`agents.interior_point`). Ten to thirty iterations whatever the set's
      dimension ``k``; each solves a Newton system whose value block is block tridiagonal in the
      step (``S x S`` blocks) and whose Schur complement on ``z`` is ``k x k``, for all users of a
      block at once. For one-hot features and one ball of nearly full dimension the Schur
      complement is taken on the features ``y = radius K^T z`` instead, which needs no product
      with the set's map. The method of choice for full-dimensional sets (``k = S A - 1``).
    - ``"column-generation"`` (seminorm sets): simplicial decomposition
      (:mod:`agents.column_generation`): deterministic policies found by backward induction
      at dual points of the set are mixed by a restricted master problem, solved for all users
      at once by a barrier method on its ``k + 1`` dual variables. Its pricing steps grow with
      ``k`` (about ``2 k``) but each costs one batched backward induction, so it is the method of
      choice for sets of small dimension in large MDPs.
    - ``"cutting-plane"`` (any :class:`~agents.ConfidenceSet`, using only ``lower`` and
      ``minimizer``; the choice of ``"auto"`` for sets without seminorms): Kelley's outer
      approximation. The members ``theta_1..theta_t`` found so far replace ``C`` in a linear
      program over the occupancy polytope, ``max_q min_j theta_j . (d_q - d_ref)`` (solved by
      HiGHS), whose value bounds the optimum from above; its optimal multipliers mix the
      ``theta_j`` into a member of ``C`` that certifies that bound by one backward induction, and
      ``minimizer(d_q - d_ref)`` is the next cut. Few cuts are needed for sets of small dimension;
      each costs one linear program per user. Bounded likelihood-ratio sets with an interior are
      instead solved, where its dense Newton system is cheap (``H S A (k + H S)^2 <= 1e8``), by
      a barrier method on the joint dual in the set's coordinates and the MDP's values
      (``method`` ``"barrier"`` in the result): about ``log10(1 / tol)`` centring stages
      whatever ``k``, e.g. ``k = 17`` to ``tol = 1e-6`` in about 10 stages and a fraction of a second,
      where Kelley's cuts stalled at a gap of 1e-3 after 200 cuts.
    - ``"frank-wolfe"`` (any :class:`~agents.ConfidenceSet`, using only ``lower`` and
      ``minimizer``): the conditional gradient method on the occupancy polytope with a line
      search; ``minimizer(g)`` is a supergradient of ``L`` and a member of ``C``, so each step's
      backward induction also yields an upper bound. Its gap falls like ``1 / t``: use it with
      ``max_seconds`` for tight tolerances.

    Parameters
    ----------
    mdp : TabularMDP
    confidence_set : ConfidenceSet or sequence of ConfidenceSets
        With a sequence, every problem is solved in one call (batched backward inductions and
        array operations across users) and a list of solutions is returned.
    reference_features : array_like, shape (d,) or (N, d)
        ``d_ref``.
    tol : float, default 1e-8
        Relative gap at which to stop: ``gap <= tol * max(1, |value|)`` (below about ``1e-11``
        rounding dominates).
    reference_policy : array_like, shape (H, S, A) or (N, H, S, A), optional
        The policy whose features are ``d_ref``. It starts the interior-point method (mixed with
        the uniform policy), is the first column of column generation and the start of
        Frank-Wolfe: the point ``g = 0`` (``L = 0``), often optimal for large radii, is then
        available from the start.
    method : {"auto", "interior-point", "column-generation", "cutting-plane", "frank-wolfe"}, default "auto"
        Seminorm methods fall back to the cutting-plane method for sets without seminorms.
    max_iterations : int, optional
        Iteration budget per problem (default 200 interior-point steps, ``100 + 10 k`` pricing
        steps, 200 cuts or barrier stages, 20000 Frank-Wolfe steps).
    max_seconds : float, optional
        Time budget of the whole call. Problems still open when it runs out return their best
        certified policy so far.
    workers : int, default 1
        Threads that solve blocks of users of the interior-point method or column generation at
        the same time (their products, factorisations and backward inductions release the GIL,
        so each takes a core). With one BLAS thread per process, ``workers=2`` uses both cores of
        a two-core machine.

    Returns
    -------
    RobustSolution, or list of RobustSolution for a sequence of sets

    Warns
    -----
    ConvergenceWarning
        When a budget stops a problem before its gap reached ``tol``; the solution's ``gap`` and
        ``converged`` say by how much.

    References
    ----------
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023 (the pessimistic objective). Mehrotra, SIAM Journal on
    Optimization 2(4), 1992; Nesterov and Todd, SIAM Journal on Optimization 8(2), 1998 (the
    interior-point method). Von Hohenbalken, *Simplicial decomposition in nonlinear programming
    algorithms*, Mathematical Programming 13, 1977 (column generation). Frank and Wolfe,
    *An algorithm for quadratic programming*, Naval Research Logistics Quarterly 3, 1956. Kelley,
    *The cutting-plane method for solving convex programs*, Journal of the SIAM 8(4), 1960.
    """
    mdp = _check_mdp(mdp)
    items, batched = _as_sets(mdp, confidence_set, "confidence_set")
    d_ref = _reference_rows(mdp, reference_features, len(items), batched)
    tol = check_real("tol", tol, 0.0, strict_minimum=True)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_iterations is not None:
        max_iterations = check_int("max_iterations", max_iterations, minimum=1)
    deadline = np.inf
    if max_seconds is not None:
        deadline = time.perf_counter() + check_real("max_seconds", max_seconds, 0.0, strict_minimum=True)
    policies = _reference_policies(mdp, reference_policy, len(items))
    run = _Run(mdp, items, d_ref, policies, tol, deadline)
    run.workers = check_int("workers", workers, minimum=1)
    run.start()
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        # The dense maps are rebuilt block by block by the solvers: only the ball sizes are kept
        # here (all users' maps at once could take gigabytes).
        structure = None if method in _GENERAL_METHODS else _structure(item)
        general = method if method in _GENERAL_METHODS else "cutting-plane"
        key = general if structure is None else ("greedy" if not structure.blocks else structure.blocks)
        groups.setdefault(key, []).append(index)
    for key, users in groups.items():
        users = np.array(users)
        if key == "frank-wolfe":
            _frank_wolfe(run, users, max_iterations or 20_000)
        elif key == "cutting-plane":
            _cutting_plane(run, users, max_iterations or 200)
        elif key == "greedy":
            run.greedy(users)
        else:
            chosen = method if method != "auto" else _cheaper_method(mdp, sum(key), len(users))
            budget = max_iterations or (200 if chosen == "interior-point" else 100 + 10 * sum(key))
            solvers = {"interior-point": _solve_interior_point, "column-generation": _solve_column_generation}
            solvers[chosen](run, users, budget)
            # A method that stopped short of its budget and of tol broke down (rounding in an
            # ill-conditioned Newton system, or a stalled master): the other method continues.
            # The best certified policy and bound of both are kept.
            stuck = users[~run.done(users) & (run.iterations[users] < budget)]
            if stuck.size and not run.out_of_time():
                other = "column-generation" if chosen == "interior-point" else "interior-point"
                spent = run.iterations[stuck].copy()
                solvers[other](run, stuck, budget)
                run.iterations[stuck] += spent
    solutions = run.solutions()
    open_problems = [index for index, solution in enumerate(solutions) if not solution.converged]
    if open_problems:
        worst = max(solutions[i].gap for i in open_problems)
        warnings.warn(
            f"robust_optimize stopped {len(open_problems)} of {len(solutions)} problems before their gap reached "
            f"tol={tol:g} (budget: max_iterations={max_iterations}, max_seconds={max_seconds}); the largest "
            f"remaining gap is {worst:.3g}. Each solution's value, upper_bound and gap are still exact.",
            ConvergenceWarning, stacklevel=2,
        )
    return solutions if batched else solutions[0]


def _reference_policies(mdp: TabularMDP, reference_policy: Any, n_sets: int) -> np.ndarray | None:
    """The reference policy as ``(n_sets, H, S, A)`` (a broadcast view for a shared one), or None."""
    if reference_policy is None:
        return None
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    policy = np.asarray(reference_policy, dtype=float)
    if policy.shape not in (shape, (n_sets, *shape)):
        raise ValueError(
            f"reference_policy must have shape (H, S, A) = {shape} or one per set ({n_sets}, H, S, A), "
            f"got {policy.shape}"
        )
    check_policy(mdp, policy, "reference_policy")
    return np.broadcast_to(policy, (n_sets, *shape))


@dataclass(frozen=True)
class _Structure:
    """A seminorm set as dense maps: ``theta(z) = theta_hat + adjoint @ z`` with ``z`` in a product of
    unit balls of sizes ``blocks`` (the radii folded into ``adjoint``)."""

    theta_hat: np.ndarray
    adjoint: np.ndarray  # (d, k)
    blocks: tuple[int, ...]


def _structure(confidence_set: ConfidenceSet) -> _Structure | None:
    """The seminorm terms of a set as one stacked map, dropping terms of radius 0 or map 0."""
    terms = confidence_set.seminorms()
    if terms is None:
        return None
    d = confidence_set.n_features
    columns, blocks = [], []
    for term in terms:
        if term.radius == 0:
            continue
        adjoint = term.feature_adjoint(d)
        if adjoint.shape[1] == 0 or not np.any(adjoint):
            continue
        columns.append(term.radius * adjoint)
        blocks.append(adjoint.shape[1])
    adjoint = np.concatenate(columns, axis=1) if columns else np.zeros((d, 0))
    return _Structure(np.asarray(confidence_set.theta_hat, dtype=float), adjoint, tuple(blocks))


def _structured_lower(structures: list[_Structure], g: np.ndarray) -> np.ndarray:
    """``L = theta_hat . g - sum_j ||radius_j K_j g||`` for each structure and its row of ``g``."""
    L = np.empty(len(structures))
    for row, (structure, g_row) in enumerate(zip(structures, g)):
        radius_K_g = g_row @ structure.adjoint  # the blocks radius_j K_j g, stacked
        penalty, start = 0.0, 0
        for size in structure.blocks:
            penalty += float(np.linalg.norm(radius_K_g[start:start + size]))
            start += size
        L[row] = structure.theta_hat @ g_row - penalty
    return L


def _cheaper_method(mdp: TabularMDP, k: int, n_users: int) -> str:
    """The method with the smaller estimated cost, in floating-point operations plus a charge for
    each array operation (Python's overhead, about ``2e5`` operations' worth).

    Interior point: about 25 iterations, each forming and factoring the value block
    (``2 H S^2 (S A)`` and ``H S^3``), the ``z`` block and the coupling (``2 (S A) k^2``,
    ``2 H S (S A) k``, ``2 H S k^2``) and the Schur complement (``k^3 / 3``), about ``100 + 30 H``
    array operations. Column generation: about ``2 k + 10`` pricing steps, each a backward
    induction and an occupancy (``4 H S^2 A``) and a barrier master over ``t`` columns charged
    ``1e4 t (k + 1)^2`` operations' worth (some 70 Newton steps with a feasibility search, on
    arrays too small for BLAS to pay), and about 1000 array operations.
    """
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    pairs = n_states * n_actions
    overhead = 2e5
    interior = 25 * (n_users * (2 * horizon * n_states**2 * pairs + horizon * n_states**3 + 2 * pairs * k**2
                                + 2 * horizon * n_states * pairs * k + 2 * horizon * n_states * k**2 + k**3 / 3)
                     + (100 + 30 * horizon) * overhead)
    steps = 2 * k + 10
    columns = steps / 2 + 2
    generation = steps * (n_users * (4 * horizon * n_states**2 * n_actions + 1e4 * columns * (k + 1) ** 2)
                          + 1000 * overhead)
    return "interior-point" if interior <= generation else "column-generation"


class _Run:
    """Book-keeping shared by the methods: the best certified primal and dual of every problem.

    ``record_policies`` evaluates policies exactly (expected features by DP) and keeps each
    problem's best; ``record_duals`` runs one batched backward induction at members of the sets
    and keeps each problem's lowest upper bound. A problem is done when the two are within
    ``tol``.
    """

    workers = 1  # threads over blocks of users of the seminorm methods (robust_optimize's workers)

    def __init__(self, mdp, items, d_ref, reference_policies, tol, deadline) -> None:
        self.mdp, self.items, self.d_ref, self.tol, self.deadline = mdp, items, d_ref, tol, deadline
        self.reference_policies = reference_policies
        n = len(items)
        shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
        self.value = np.full(n, -np.inf)
        self.upper = np.full(n, np.inf)
        self.policy = np.zeros((n, *shape))
        self.certificate = np.zeros((n, mdp.n_features))
        self.iterations = np.zeros(n, dtype=int)
        self.method = ["" for _ in range(n)]

    def start(self) -> None:
        """Certify a first answer for every problem: the greedy policy of ``theta_hat`` (and the
        reference policy, ``L = 0``, if given) against the bound at ``theta_hat``, so that even a
        spent budget returns a valid policy with an honest gap."""
        users = np.arange(len(self.items))
        theta_hat = np.stack([item.theta_hat for item in self.items])
        _, policies = self.record_duals(users, theta_hat)
        self.record_policies(users, policies, self.exact_values(users, expected_features(self.mdp, policies)))
        if self.reference_policies is not None:
            d_pi = expected_features(self.mdp, self.reference_policies)
            self.record_policies(users, np.array(self.reference_policies), self.exact_values(users, d_pi))

    def exact_values(self, users: np.ndarray, d_pi: np.ndarray) -> np.ndarray:
        """``L = lower(d_pi - d_ref)`` by each set's own support function (:func:`_certified_lower`)."""
        return np.array([_certified_lower(self.items[i], d_i - self.d_ref[i], self.d_ref[i])
                         for i, d_i in zip(users, d_pi)])

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def done(self, users: np.ndarray) -> np.ndarray:
        return self.upper[users] - self.value[users] <= self.tol * np.maximum(1.0, np.abs(self.value[users]))

    def record_policies(self, users: np.ndarray, policies: np.ndarray, L: np.ndarray) -> None:
        """Keep ``policies`` ``(m, H, S, A)`` of ``users`` whose exact ``L`` beat the best so far."""
        better = L > self.value[users]
        self.value[users[better]] = L[better]
        self.policy[users[better]] = policies[better]

    def record_duals(self, users: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Upper bounds ``max_pi theta . (d_pi - d_ref)`` at members ``theta`` ``(m, d)`` of the sets,
        keeping the best; returns the bounds and the greedy policies."""
        policies, values = backward_induction(self.mdp, _reward_tables(self.mdp, theta))
        bounds = values[:, 0] @ self.mdp.initial_distribution - np.einsum("ij,ij->i", theta, self.d_ref[users])
        order = np.argsort(bounds, kind="stable")
        _, first = np.unique(users[order], return_index=True)  # each user's lowest bound
        rows = order[first]
        better = rows[bounds[rows] < self.upper[users[rows]]]
        self.upper[users[better]] = bounds[better]
        self.certificate[users[better]] = theta[better]
        return bounds, policies

    def greedy(self, users: np.ndarray) -> None:
        """Sets without a seminorm term of positive radius are the point ``theta_hat``: the greedy
        policy that :meth:`start` certified is exact."""
        self.iterations[users] = 1
        self.label(users, "greedy")

    def label(self, users: np.ndarray, method: str) -> None:
        """Name the method that ran on ``users`` (``a+b`` when ``b`` continued after ``a``)."""
        for i in users:
            self.method[i] = f"{self.method[i]}+{method}" if self.method[i] else method

    def solutions(self) -> list[RobustSolution]:
        occupancies = occupancy(self.mdp, self.policy)
        g = expected_features(self.mdp, self.policy) - self.d_ref
        out = []
        for index, item in enumerate(self.items):
            # The reported value is the set's own lower(), whatever the method used internally.
            value = float(item.lower(g[index]))
            upper = float(self.upper[index])
            gap = upper - value
            out.append(RobustSolution(
                policy=self.policy[index], value=value, upper_bound=upper, gap=gap,
                iterations=int(self.iterations[index]), converged=bool(gap <= self.tol * max(1.0, abs(value))),
                certificate=self.certificate[index], occupancy=occupancies[index], method=self.method[index],
            ))
        return out


def _reward_tables(mdp: TabularMDP, theta: np.ndarray) -> np.ndarray:
    """``mdp.reward(theta)``, ``(n, H, S, A)``; with stationary features a read-only view that
    repeats one ``(S, A)`` table over the steps instead of writing ``H`` copies."""
    if not mdp.stationary_features:
        return mdp.reward(theta)
    table = (theta @ mdp.flat_features().T).reshape(len(theta), 1, mdp.n_states, mdp.n_actions)
    return np.broadcast_to(table, (len(theta), mdp.horizon, mdp.n_states, mdp.n_actions))


def _policy_of(occupancy_measure: np.ndarray) -> np.ndarray:
    """``pi_h(a|s) = q_h(s, a) / sum_a q_h(s, a)``, uniform where the state is never visited."""
    totals = occupancy_measure.sum(axis=-1, keepdims=True)
    n_actions = occupancy_measure.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        policy = occupancy_measure / totals
    return np.where(totals > 0, policy, 1.0 / n_actions)


def _feature_map(mdp: TabularMDP) -> tuple[np.ndarray | None, int]:
    """``phi`` as ``(H or 1, S A, d)``, or None for one-hot ``(s, a)`` features (``phi = I``)."""
    flat = mdp.flat_features()
    steps = 1 if mdp.stationary_features else mdp.horizon
    pairs = mdp.n_states * mdp.n_actions
    if steps == 1 and flat.shape == (pairs, pairs) and np.array_equal(flat, np.eye(pairs)):
        return None, steps
    return flat.reshape(steps, pairs, mdp.n_features), steps


def _block_size(per_user: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(per_user, 1))


def _run_blocks(run: _Run, users: np.ndarray, per_user: int, solve_block: Callable[[np.ndarray], None]) -> None:
    """``solve_block`` on blocks of ``users`` that bound the memory (each worker holds one), on
    ``run.workers`` threads with at least one block each. Numpy's products, factorisations and
    large element-wise operations release the GIL, so the blocks run on separate cores; the
    book-keeping of ``_Run`` touches only each block's own users."""
    size = _block_size(per_user * run.workers)
    if run.workers > 1:
        size = min(size, -(-len(users) // run.workers))
    blocks = [users[start:start + size] for start in range(0, len(users), size)]
    if run.workers > 1 and len(blocks) > 1:
        with concurrent.futures.ThreadPoolExecutor(run.workers) as pool:
            list(pool.map(solve_block, blocks))
    else:
        for block in blocks:
            solve_block(block)


def _solve_interior_point(run: _Run, users: np.ndarray, max_iterations: int) -> None:
    """Solve the problems of ``users`` (same ball sizes) by the interior-point method, in blocks."""
    mdp = run.mdp
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    pairs = n_states * n_actions
    first = _structure(run.items[users[0]])  # the ball sizes are the same for the whole group
    k = first.adjoint.shape[1]
    phi, steps = _feature_map(mdp)
    transitions = np.asarray(mdp.transitions).reshape(horizon, pairs, n_states)
    # One-hot features and one ball of nearly full dimension: Newton systems in y = Psi z, which
    # need no product with Psi (interior_point.FeatureCoordinates).
    # (k > S A: the solve stays in z, whose k x k systems the second estimate counts.)
    in_features = (phi is None and len(first.blocks) == 1 and k <= pairs
                   and interior_point.feature_coordinates_pay(horizon, n_states, n_actions, k))
    if in_features:
        # Psi (in the set's structure and stacked) and Psi^+, the metric, the S A x S A system in
        # double and single precision, the iterates, the value blocks.
        per_user = 3 * pairs * k + 3 * pairs * pairs + 12 * horizon * pairs + 4 * horizon * n_states**2
    else:
        # Psi, its coupling operator, L^{-1} C, the k x k system and the value blocks.
        per_user = (2 * steps * pairs * k + horizon * n_states * pairs + 3 * horizon * n_states * k + 3 * k * k
                    + 4 * horizon * n_states**2)
    uniform = occupancy(mdp, uniform_policy(mdp))

    def solve_block(block: np.ndarray) -> None:
        block_structures = [_structure(run.items[i]) for i in block]
        theta_hat = np.stack([s.theta_hat for s in block_structures])
        adjoints = np.stack([s.adjoint for s in block_structures])  # (n, d, k)
        psi = adjoints[:, None] if phi is None else np.matmul(phi[None], adjoints[:, None])
        if run.reference_policies is None:
            start_occupancy = np.broadcast_to(uniform, (len(block), *uniform.shape))
        else:
            start_occupancy = occupancy(mdp, 0.5 * run.reference_policies[block] + 0.5 / n_actions)
        problem = interior_point.ConicProblem(
            transitions=transitions, initial_distribution=np.asarray(mdp.initial_distribution),
            reward=mdp.reward(theta_hat).reshape(len(block), horizon, pairs), features=psi,
            reference=np.matmul(run.d_ref[block][:, None, :], adjoints)[:, 0],
            blocks=first.blocks, start=start_occupancy,
            constant=np.einsum("ij,ij->i", theta_hat, run.d_ref[block]),
            coordinates=interior_point.feature_coordinates(adjoints) if in_features else None,
        )

        def check(rows: np.ndarray, q: np.ndarray, z: np.ndarray) -> np.ndarray:
            # An iterate that rounding has made non-finite certifies nothing: those problems stop
            # here and column generation continues them (robust_optimize's fallback).
            finite = np.isfinite(q).all(axis=(1, 2, 3)) & np.isfinite(z).all(axis=1)
            rows, q, z = rows[finite], q[finite], z[finite]
            members = block[rows]
            policies = _policy_of(q)
            g = expected_features(mdp, policies) - run.d_ref[members]
            run.record_policies(members, policies, _structured_lower([block_structures[r] for r in rows], g))
            run.record_duals(members, theta_hat[rows] + np.matmul(adjoints[rows], z[..., None])[..., 0])
            done = np.ones(finite.size, dtype=bool)
            done[finite] = run.done(members)
            return done

        # A Newton system that an ill-conditioned set (a tiny ridge along directions the data never
        # see) makes singular in floating point raises at the step that meets it, instead of
        # carrying NaN on: interior_point then certifies its last iterate and stops.
        with np.errstate(divide="raise", invalid="raise", over="raise"):
            iterations = interior_point.interior_point(problem, check, tol=run.tol, max_iterations=max_iterations,
                                                       out_of_time=run.out_of_time)
        run.iterations[block] = iterations
        run.label(block, "interior-point")

    _run_blocks(run, users, per_user, solve_block)


def _solve_column_generation(run: _Run, users: np.ndarray, max_iterations: int) -> None:
    """Solve the problems of ``users`` (same ball sizes) by column generation, in blocks."""
    mdp = run.mdp
    first = _structure(run.items[users[0]])  # the ball sizes are the same for the whole group
    k = first.adjoint.shape[1]
    # The set's map, the occupancy temporaries, and each column's state distributions (about
    # 2 k + 20 columns).
    per_user = (mdp.n_features * k + 6 * mdp.horizon * mdp.n_states * mdp.n_actions
                + (2 * k + 20) * (mdp.horizon * mdp.n_states + k + 2))

    def solve_block(block: np.ndarray) -> None:
        block_structures = [_structure(run.items[i]) for i in block]
        iterations = column_generation.column_generation(
            run, block, np.stack([s.theta_hat for s in block_structures]),
            np.stack([s.adjoint for s in block_structures]), first.blocks, max_iterations=max_iterations,
        )
        run.iterations[block] = iterations
        run.label(block, "column-generation")

    _run_blocks(run, users, per_user, solve_block)


def _frank_wolfe(run: _Run, users: np.ndarray, max_iterations: int) -> None:
    """Frank-Wolfe on the occupancy polytope for sets known only through ``lower`` and ``minimizer``.

    The iterate is a mixture of occupancies ``q`` with ``g = d_q - d_ref``. Each step takes
    ``theta = minimizer(g)``, a member of ``C`` and a supergradient of ``L`` at ``g``; one batched
    backward induction on ``theta`` gives the vertex maximising the linearisation and the upper
    bound ``max_pi theta . (d_pi - d_ref)``; ``q`` moves towards the vertex by the step that
    maximises ``L`` on the segment (``L`` is concave along it: a grid search refined twice).
    """
    mdp = run.mdp
    items = [run.items[i] for i in users]
    d_ref = run.d_ref[users]
    if run.reference_policies is None:
        start = greedy(mdp, np.stack([item.theta_hat for item in items]))
    else:
        start = run.reference_policies[users]
    current = occupancy(mdp, start)
    d_q = expected_features(mdp, start)
    active = np.arange(len(users))
    theta_mean = np.zeros((len(users), mdp.n_features))
    grid = np.linspace(0.0, 1.0, 17)
    for iteration in range(max_iterations):
        if not active.size or run.out_of_time():
            break
        members = users[active]
        g = d_q[active] - d_ref[active]
        L = np.array([items[i].lower(g_i) for i, g_i in zip(active, g)])
        run.record_policies(members, _policy_of(current[active]), L)
        theta = np.stack([items[i].minimizer(g_i) for i, g_i in zip(active, g)])
        # The running mean of the minimisers (a member of C: the set is convex) is the dual of
        # the equilibrium this method computes (Abernethy and Wang, 2017): when L is not
        # differentiable at the optimum (e.g. g = 0), minimizer(g_t) oscillates and only the mean
        # certifies. Both are priced in one batched backward induction.
        theta_mean[active] += (theta - theta_mean[active]) / (iteration + 1)
        _, both = run.record_duals(np.concatenate([members, members]), np.concatenate([theta, theta_mean[active]]))
        vertices = both[:active.size]
        run.iterations[members] = iteration + 1
        finished = run.done(members)
        d_vertex = expected_features(mdp, vertices)
        vertex_occupancy = occupancy(mdp, vertices)
        steps = np.empty(active.size)
        for row, i in enumerate(active):
            low, high = 0.0, 1.0
            for _ in range(3):  # grid, then two refinements around the best point
                points = low + (high - low) * grid
                d_trial = (1 - points)[:, None] * d_q[i] + points[:, None] * d_vertex[row]
                L_trial = np.asarray(items[i].lower(d_trial - d_ref[i]))
                best = int(np.argmax(L_trial))
                width = (high - low) / (grid.size - 1)
                low, high = max(0.0, points[best] - width), min(1.0, points[best] + width)
            steps[row] = points[best]
        current[active] = (1 - steps)[:, None, None, None] * current[active] + steps[:, None, None, None] * vertex_occupancy
        d_q[active] = (1 - steps)[:, None] * d_q[active] + steps[:, None] * d_vertex
        active = active[~finished]
    if active.size:  # the last step's iterate, if the budget ended the run
        L = np.array([items[i].lower(g_i) for i, g_i in zip(active, d_q[active] - d_ref[active])])
        run.record_policies(users[active], _policy_of(current[active]), L)
    run.label(users, "frank-wolfe")


def _occupancy_polytope(mdp: TabularMDP) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Flow constraints ``A q = b`` of the occupancy measures ``q`` (flattened ``(H, S, A)``):
    ``sum_a q_0(s, a) = rho(s)`` and ``sum_a q_{h+1}(s', a) = sum_{s, a} P_h(s' | s, a) q_h(s, a)``."""
    H, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    sum_over_actions = scipy.sparse.kron(scipy.sparse.eye(S), np.ones((1, A)))
    blocks = [[None] * H for _ in range(H)]
    for h in range(H):
        blocks[h][h] = sum_over_actions
        if h:
            blocks[h][h - 1] = -scipy.sparse.csr_matrix(mdp.transitions[h - 1].reshape(S * A, S).T)
    right = np.zeros(H * S)
    right[:S] = mdp.initial_distribution
    return scipy.sparse.bmat(blocks, format="csr"), right


def _snap_rounding(g: np.ndarray, d_ref: np.ndarray) -> np.ndarray:
    """``g = d_pi - d_ref`` with entries below ``1e-12 max(1, |d_ref|)`` set to zero: the rounding
    of equal occupancies (the reference policy's own features), which along an unbounded direction
    of a set would read as ``L = -inf``."""
    rounding = 1e-12 * max(1.0, float(np.abs(d_ref).max(initial=0.0)))
    return np.where(np.abs(g) <= rounding, 0.0, g)


def _certified_lower(item: ConfidenceSet, g: np.ndarray, d_ref: np.ndarray) -> float:
    """``L = item.lower(g)`` after :func:`_snap_rounding`, or ``-inf`` (no certificate) where the
    set cannot compute it (a support that is not attained, as for separable data)."""
    try:
        return float(item.lower(_snap_rounding(g, d_ref)))
    except RuntimeError:
        return -np.inf


def _cutting_plane(run: _Run, users: np.ndarray, max_iterations: int) -> None:
    """Kelley's cutting-plane method for sets known only through ``lower`` and ``minimizer``.

    The master ``max_{q, tau} tau`` subject to ``tau <= theta_j . (Phi^T q - d_ref)`` for the cuts
    ``theta_j`` and ``q`` in the occupancy polytope is a linear program; its value is at least
    the optimum (the cuts are members of ``C``). Its multipliers ``lambda_j`` (non-negative,
    summing to one) mix the cuts into ``theta_bar = sum_j lambda_j theta_j``, a member of ``C``
    at which one backward induction gives exactly that value: the certificate. The master's
    occupancy gives the primal policy (its exact ``L`` is recorded) and the next cut
    ``minimizer(d_q - d_ref)``.

    Bounded likelihood-ratio sets with a positive level (where a dense Newton system in ``k + H S``
    unknowns is cheap: ``H S A (k + H S)^2 <= 1e8``) are solved instead by a barrier method on the joint dual (:func:`_likelihood_barrier`).
    """
    smooth = np.array([_barrier_ready(run.mdp, run.items[user]) for user in users], dtype=bool)
    if smooth.any():
        _likelihood_barrier(run, users[smooth], max_iterations)
        users = users[~smooth]
        if not users.size:
            return
    mdp = run.mdp
    flow, right = _occupancy_polytope(mdp)
    n_occupancy = flow.shape[1]
    equality = scipy.sparse.hstack([flow, scipy.sparse.csr_matrix((flow.shape[0], 1))], format="csr")
    objective = np.zeros(n_occupancy + 1)
    objective[-1] = -1.0
    bounds = [(0, None)] * n_occupancy + [(None, None)]
    starts = run.policy[users]
    for row, user in enumerate(users):
        item, d_ref = run.items[user], run.d_ref[user]

        def features_gap(policy: np.ndarray) -> np.ndarray:
            return _snap_rounding(expected_features(mdp, policy) - d_ref, d_ref)

        # Cuts: members theta_j (tau <= theta_j . g) and, for sets unbounded along -g, recession
        # directions u_i (0 <= u_i . g: every policy with a finite L satisfies it). Each row of the
        # master (-theta . phi over q, then tau's coefficient) is formed once when it is added.

        def value_and_cut(g: np.ndarray) -> tuple[float, np.ndarray | None, bool]:
            """``L = lower(g)`` (one support computation) and the cut it gives: a member attaining
            it, or a recession direction where it is ``-inf``; no cut (``None``, ``L = -inf``)
            where the set's support is not attained (separable data, ``g`` on the boundary of the
            recession cone's dual) or the set has no recession directions to offer."""
            try:
                cut = item.minimizer(g)  # it attains lower(g): its value is L
                return float(cut @ g), cut, True
            except ValueError:  # unbounded along -g: lower(g) = -inf, no member attains it
                if not hasattr(item, "recession_direction"):
                    return -np.inf, None, False
                return -np.inf, item.recession_direction(g), False
            except RuntimeError:
                return -np.inf, None, False

        _, first, member = value_and_cut(features_gap(starts[row]))
        if first is None:  # no cut: the start's certificate (run.start) stands
            continue
        thetas = np.stack([item.theta_hat, first])
        is_member = np.array([True, member])
        inequality = np.hstack([-_reward_tables(mdp, thetas).reshape(len(thetas), n_occupancy),
                                is_member[:, None].astype(float)])
        for iteration in range(max_iterations):
            if run.done(np.array([user]))[0] or run.out_of_time():
                break
            result = scipy.optimize.linprog(objective, A_ub=inequality, b_ub=-(thetas @ d_ref), A_eq=equality,
                                            b_eq=right, bounds=bounds, method="highs")
            run.iterations[user] = iteration + 1
            if result.status != 0:  # numerical trouble in the master: keep the certified best so far
                break
            weights = np.maximum(-result.ineqlin.marginals, 0.0)
            total = weights[is_member].sum()
            if total > 0:  # members mixed by the cuts' multipliers, plus the recession directions'
                run.record_duals(np.array([user]), ((weights / total) @ thetas)[None])
            q = np.maximum(result.x[:n_occupancy], 0.0).reshape(mdp.horizon, mdp.n_states, mdp.n_actions)
            policy = _policy_of(q)
            lower, cut, member = value_and_cut(features_gap(policy))
            run.record_policies(np.array([user]), policy[None], np.array([lower]))
            if cut is None:  # stop with the best certified policy so far; the run reports its gap
                break
            thetas = np.vstack([thetas, cut])
            is_member = np.append(is_member, member)
            inequality = np.vstack([inequality, np.append(-_reward_tables(mdp, cut[None]).ravel(), float(member))])
    run.label(users, "cutting-plane")




# -- a barrier method for likelihood-ratio sets ----------------------------------------------------

# Largest cost of one dense Newton system of the likelihood barrier method, H S A (k + H S)^2
# operations to form it (about 0.05 s at 1e8): beyond, Kelley's cuts, whose linear programs
# HiGHS solves sparsely, are used.
_BARRIER_MAX_OPERATIONS = 1e8
# Barrier parameter at the start relative to the value scale, and its decrease per stage.
_BARRIER_FIRST_MU = 1.0
_BARRIER_MU_FACTOR = 0.1
_BARRIER_NEWTON_STEPS = 80
# Users whose Newton systems are stacked together (memory: the block's Bellman matrices,
# H S A (k + H S) floats each).
_BARRIER_BLOCK = 64
# A centring ends when half the squared Newton decrement (for a self-concordant barrier, about the
# distance of the barrier function to its minimum) is below this.
_BARRIER_DECREMENT = 1e-9


def _barrier_ready(mdp: TabularMDP, item: ConfidenceSet) -> bool:
    """Whether :func:`_likelihood_barrier` applies: a bounded likelihood-ratio set with an interior
    (``level > 0``, so its centre is strictly inside) and a Newton system small enough to be dense."""
    if not (isinstance(item, LikelihoodRatioSet) and item.bounded and item.level > 0 and item.dimension > 0):
        return False
    values = mdp.horizon * mdp.n_states
    return values * mdp.n_actions * (item.dimension + values) ** 2 <= _BARRIER_MAX_OPERATIONS


def _likelihood_barrier(run: _Run, users: np.ndarray, max_iterations: int) -> None:
    """Exact pessimism on likelihood-ratio sets ``C = {offset + B w : f(w) <= c}`` by a barrier
    method on the joint dual.

    The dual ``min_{theta in C} max_pi theta . (d_pi - d_ref)`` replaces the inner maximum by its
    linear-programming dual over values ``V_h(s)``: a convex program in ``(w, V)``,

        min  rho . V_0 - (offset + B w) . d_ref
        s.t. V_h(s) >= r_w(h, s, a) + sum_s' P_h(s' | s, a) V_{h+1}(s')   for every (h, s, a),
             f(w) <= c,

    with ``r_w(h, s, a) = phi(h, s, a) . (offset + B w)``: ``H S A`` linear inequalities and one
    smooth convex one. The barrier ``(objective) / mu - sum log(slacks) - log(c - f(w))`` is
    minimised by damped Newton steps (dense, ``k + H S`` unknowns; ``f``'s gradient and Hessian
    from :meth:`~agents.LikelihoodRatioSet.loss_derivatives`) for ``mu`` falling tenfold per
    stage. At a centred point the multipliers ``mu / slack`` of the Bellman inequalities satisfy
    the flow equations exactly: they are an occupancy measure, whose policy is the primal answer.
    After each stage the run certifies as every method does: ``L`` of that policy by the set's
    own ``lower``, and one backward induction at ``theta = offset + B w``, a member of ``C``
    (strictly inside), for the upper bound. The duality gap of a centred point is
    ``(H S A + 1) mu``, so the stages needed grow like ``log(1 / tol)``, whatever ``k``; an
    iteration is one stage. Users with sets of the same dimension are solved together in blocks
    of :data:`_BARRIER_BLOCK` (stacked Newton systems, padded pairs, batched backward
    inductions), each leaving its block's stages once its gap is within ``tol``.

    References
    ----------
    Boyd and Vandenberghe, *Convex Optimization*, 2004, sections 9.5 and 11.2-11.3 (Newton's
    method, the barrier method and the dual points of its central path). Nesterov and Nemirovskii,
    *Interior-Point Polynomial Algorithms in Convex Programming*, SIAM 1994 (self-concordance).
    Puterman, *Markov Decision Processes*, 1994, section 6.9 (the linear program of an MDP).
    """
    mdp = run.mdp
    H, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    rows = H * S * A
    # The Bellman rows' value part, shared by all users: +1 at V_h(s), -P_h(s'|s, a) at V_{h+1}(s').
    values_part = np.zeros((rows, H * S))
    index = np.arange(rows)
    values_part[index, (index // A)] = 1.0
    for h in range(H - 1):
        block = slice(h * S * A, (h + 1) * S * A)
        values_part[block, (h + 1) * S:(h + 2) * S] = -mdp.transitions[h].reshape(S * A, S)
    objective_values = np.zeros(H * S)
    objective_values[:S] = mdp.initial_distribution
    by_dimension: dict[int, list[int]] = {}
    for user in users:
        by_dimension.setdefault(run.items[user].dimension, []).append(int(user))
    for members in by_dimension.values():
        for first in range(0, len(members), _BARRIER_BLOCK):
            _barrier_block(run, np.array(members[first:first + _BARRIER_BLOCK]), values_part, objective_values,
                           max_iterations)
    run.label(users, "barrier")


class _PaddedLosses:
    """The losses ``f_b`` of a block of likelihood-ratio sets with the same dimension, in the padded
    layout of the batched logistic solver (each set's ``beta`` folded into its features)."""

    def __init__(self, sets: list[LikelihoodRatioSet]) -> None:
        counts = [region.features.shape[0] for region in sets]
        features = np.concatenate([region.beta * region.features for region in sets])
        self.problems = _PaddedProblems(features, np.concatenate([region.labels for region in sets]),
                                        np.repeat(np.arange(len(sets)), counts),
                                        np.concatenate([region.offsets for region in sets]), len(sets))
        self.ridge = np.array([region.ridge for region in sets], dtype=float)

    def loss(self, rows: np.ndarray, w: np.ndarray) -> np.ndarray:
        return self.problems.objective(1.0, self.ridge, w, rows)

    def derivatives(self, rows: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.problems.derivatives(1.0, self.ridge, w, rows)


def _barrier_block(run: _Run, users: np.ndarray, values_part: np.ndarray, objective_values: np.ndarray,
                   max_iterations: int) -> None:
    """:func:`_likelihood_barrier` for a block of users whose sets have the same dimension ``k``."""
    mdp = run.mdp
    H, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    rows = H * S * A
    sets = [run.items[user] for user in users]
    b, k = len(sets), sets[0].dimension
    offsets = np.stack([region.offset for region in sets])
    bases = np.stack([region.basis for region in sets])  # (b, d, k)
    d_ref = run.d_ref[users]
    base_rewards = _reward_tables(mdp, offsets).reshape(b, rows)
    slopes = _reward_tables(mdp, bases.transpose(0, 2, 1).reshape(b * k, -1)).reshape(b, k, rows)
    matrix = np.concatenate([-slopes.transpose(0, 2, 1), np.broadcast_to(values_part, (b, *values_part.shape))],
                            axis=2)  # slacks = matrix @ x - base_rewards
    linear = np.concatenate([-np.einsum("bdk,bd->bk", bases, d_ref), np.broadcast_to(objective_values, (b, H * S))],
                            axis=1)
    thresholds = np.array([region.threshold for region in sets])
    losses = _PaddedLosses(sets)
    w = np.stack([region.center for region in sets]).astype(float)
    # A strictly feasible start: the values of theta(w) by backward induction, raised by one per
    # remaining step, satisfy every Bellman inequality with slack one.
    _, start_values = backward_induction(mdp, _reward_tables(mdp, offsets + np.einsum("bdk,bk->bd", bases, w)))
    values = (start_values + (H - np.arange(H))[None, :, None]).reshape(b, H * S)
    x = np.concatenate([w, values], axis=1)
    objective = np.einsum("bn,bn->b", linear, x) - np.einsum("bd,bd->b", offsets, d_ref)
    mu = _BARRIER_FIRST_MU * np.maximum(1.0, np.abs(objective))
    active = np.arange(b)
    for stage in range(max_iterations):
        if not active.size or run.out_of_time():
            break
        x[active] = _centre(losses, thresholds, matrix, base_rewards, linear, x, mu, active, k)
        members = users[active]
        run.iterations[members] = stage + 1
        theta = offsets[active] + np.einsum("bdk,bk->bd", bases[active], x[active, :k])
        run.record_duals(members, theta)
        # The exact L of a policy (the set's lower, a root search per user) is the costly part of a
        # stage: it is computed once the centred point's duality gap (H S A + 1) mu is within ten
        # times the tolerance, when the certificate can close, and at the last stage.
        ready = active[((rows + 1) * mu[active] <= 10 * run.tol * np.maximum(1.0, np.abs(run.upper[members])))
                       | (stage == max_iterations - 1)]
        if ready.size:
            slacks = np.einsum("bij,bj->bi", matrix[ready], x[ready]) - base_rewards[ready]
            policies = _policy_of((mu[ready, None] / slacks).reshape(len(ready), H, S, A))
            g = expected_features(mdp, policies) - d_ref[ready]
            run.record_policies(users[ready], policies,
                                np.array([_certified_lower(sets[i], row, d_ref[i]) for i, row in zip(ready, g)]))
        active = active[~run.done(members)]
        mu[active] *= _BARRIER_MU_FACTOR


def _centre(losses: _PaddedLosses, thresholds: np.ndarray, matrix: np.ndarray, base_rewards: np.ndarray,
            linear: np.ndarray, x: np.ndarray, mu: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Minimise each row's ``linear . x / mu - sum log(matrix x - base_rewards) - log(c - f(x[:k]))``
    from a strictly feasible ``x`` by damped Newton steps (Armijo backtracking that keeps
    feasibility), all ``rows`` together; returns their new ``x``."""
    x = x[rows].copy()
    n = x.shape[1]

    def barrier(where: np.ndarray, points: np.ndarray) -> np.ndarray:
        problems = rows[where]
        slacks_ = np.einsum("bij,bj->bi", matrix[problems], points) - base_rewards[problems]
        room_ = thresholds[problems] - losses.loss(problems, points[:, :k])
        feasible = np.all(slacks_ > 0, axis=1) & (room_ > 0)
        value = np.full(where.size, np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            value[feasible] = (np.einsum("bn,bn->b", linear[problems], points)[feasible] / mu[problems][feasible]
                               - np.sum(np.log(slacks_[feasible]), axis=1) - np.log(room_[feasible]))
        return value

    running = np.arange(rows.size)
    current = barrier(running, x)
    for _ in range(_BARRIER_NEWTON_STEPS):
        if not running.size:
            break
        problems = rows[running]
        f, grad_f, hess_f = losses.derivatives(problems, x[running, :k])
        room = thresholds[problems] - f
        inverse = 1.0 / (np.einsum("bij,bj->bi", matrix[problems], x[running]) - base_rewards[problems])
        gradient = linear[problems] / mu[problems, None] - np.einsum("bij,bi->bj", matrix[problems], inverse)
        gradient[:, :k] += grad_f / room[:, None]
        hessian = np.einsum("bij,bi,bil->bjl", matrix[problems], inverse**2, matrix[problems])
        scaled = grad_f / room[:, None]
        hessian[:, :k, :k] += hess_f / room[:, None, None] + np.einsum("bi,bj->bij", scaled, scaled)
        try:
            step = -np.linalg.solve(hessian, gradient[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -np.einsum("bij,bj->bi", np.linalg.pinv(hessian, hermitian=True), gradient)
        decrement = -np.einsum("bn,bn->b", gradient, step)
        moving = decrement > 2 * _BARRIER_DECREMENT  # also False for NaN
        running, step, decrement = running[moving], step[moving], decrement[moving]
        size = np.ones(running.size)
        accepted = np.zeros(running.size, dtype=bool)
        trial = np.full(running.size, np.inf)
        for _ in range(60):
            pending = np.flatnonzero(~accepted)
            if not pending.size:
                break
            values = barrier(running[pending], x[running[pending]] + size[pending, None] * step[pending])
            ok = values <= current[running[pending]] - 0.25 * size[pending] * decrement[pending]
            accepted[pending[ok]] = True
            trial[pending[ok]] = values[ok]
            size[pending[~ok]] *= 0.5
        # Rows without a decrease beyond rounding are as centred as they get: they stop here.
        moved = running[accepted]
        x[moved] += size[accepted, None] * step[accepted]
        current[moved] = trial[accepted]
        running = moved
    return x
