"""Batched column generation (simplicial decomposition) for exact pessimism against seminorm sets.

For ``C = {theta_hat + sum_j radius_j K_j^T z_j : ||z_j|| <= 1}`` and the stacked map
``adjoint = [radius_j K_j^T]_j`` the problem ``max_pi L(pi)`` is solved over mixtures of
deterministic policies. With columns ``g_i = d_pi_i - d_ref``, gains ``c_i = theta_hat . g_i`` and
coordinates ``u_i = adjoint^T g_i`` (split into the balls' blocks ``u_ij``):

1. restricted master: ``max_{lambda in simplex} c . lambda - sum_j ||sum_i lambda_i u_ij||`` and its
   dual ``min_{||y_j|| <= 1} max_i c_i + u_i . y``, solved for all users at once by a barrier
   method on the ``k + 1`` dual variables (every user has the same number of columns, so the
   Newton systems stack into one ``(n, k + 1, k + 1)`` array);
2. pricing: at a dual point ``zeta`` (the master's dual, smoothed towards the point of the best
   bound so far: Wentges' stabilisation), ``theta(zeta) = theta_hat + adjoint zeta`` is a member of
   ``C``; one batched backward induction gives every user's best deterministic policy for it, the
   next column, and the upper bound ``max_pi theta(zeta) . (d_pi - d_ref)``.

It stops when the best bound is within ``tol`` of the master's value. The number of pricing
steps grows with ``k`` (the optimal mixture has up to ``k + 1`` vertices and the dual point must be
found in every direction), but each is one backward induction for all users, which makes it the
method of choice for sets of small dimension in large MDPs.

References
----------
Von Hohenbalken, *Simplicial decomposition in nonlinear programming algorithms*, Mathematical
Programming 13, 1977. Wentges, *Weighted Dantzig-Wolfe decomposition for linear mixed-integer
programming*, International Transactions in Operational Research 4(2), 1997. Boyd and
Vandenberghe, *Convex Optimization*, 2004, section 11.3 (barrier method).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lr_mdp_env.dynamic_programming import expected_features, occupancy, occupancy_features

__all__ = ["column_generation", "solve_masters"]

#: Weight of the best bound's dual point in the pricing point (Wentges' smoothing).
SMOOTHING = 0.5


def solve_masters(gains: np.ndarray, coordinates: np.ndarray, blocks: tuple[int, ...],
                  accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restricted masters of ``n`` users with ``t`` columns each, by a barrier method.

    Minimises ``kappa tau - sum_i log(tau - c_i - u_i . y) - sum_j log(1 - ||y_j||^2)`` by damped
    Newton steps (the barrier is self-concordant, so steps of ``1 / (1 + decrement)`` converge
    from any feasible point) for ``kappa`` growing tenfold per stage until the duality gap bound
    ``(t + J) / kappa`` is below ``accuracy``. On the central path the multipliers
    ``lambda_i = 1 / (kappa s_i)`` of the cuts are the mixture weights.

    Parameters
    ----------
    gains : ndarray, shape (n, t)
    coordinates : ndarray, shape (n, t, k)
    blocks : tuple of int
        Sizes of the balls, summing to ``k``.
    accuracy : ndarray, shape (n,)
        Absolute duality gap to reach.

    Returns
    -------
    weights : ndarray, shape (n, t)
        On the simplex.
    dual : ndarray, shape (n, k)
        In the product of unit balls.
    values : ndarray, shape (n,)
        The primal objective at ``weights``: ``c . lambda - sum_j ||U_j^T lambda||``.
    """
    n, t, k = coordinates.shape
    n_balls = len(blocks)
    widths = np.linalg.norm(coordinates, axis=2).max(axis=1)
    span = np.maximum(np.abs(gains).max(axis=1) + widths, 1e-8)
    y = np.zeros((n, k))
    tau = gains.max(axis=1) + span
    kappa = (t + n_balls) / span
    starts = np.cumsum((0,) + blocks[:-1])
    eye = np.eye(k)
    reached = np.zeros(n, dtype=bool)
    for _ in range(60):  # stages; the loop ends when every gap bound is below its accuracy
        for _ in range(40):  # centring
            slack = tau[:, None] - gains - np.einsum("itk,ik->it", coordinates, y)
            inverse = 1.0 / slack
            inverse_squared = inverse * inverse
            gradient = np.empty((n, k + 1))
            gradient[:, :k] = np.einsum("itk,it->ik", coordinates, inverse)
            gradient[:, k] = kappa - inverse.sum(axis=1)
            hessian = np.empty((n, k + 1, k + 1))
            hessian[:, :k, :k] = np.matmul(np.swapaxes(coordinates, 1, 2), inverse_squared[..., None] * coordinates)
            hessian[:, :k, k] = hessian[:, k, :k] = -np.einsum("itk,it->ik", coordinates, inverse_squared)
            hessian[:, k, k] = inverse_squared.sum(axis=1)
            for start, size in zip(starts, blocks):
                part = y[:, start:start + size]
                room = 1.0 - np.einsum("ij,ij->i", part, part)
                gradient[:, start:start + size] += 2.0 * part / room[:, None]
                hessian[:, start:start + size, start:start + size] += (
                    (2.0 / room)[:, None, None] * eye[:size, :size]
                    + (4.0 / room**2)[:, None, None] * part[:, :, None] * part[:, None, :])
            step = -_symmetric_solve(hessian, gradient)
            decrement = np.sqrt(np.maximum(-np.einsum("ij,ij->i", gradient, step), 0.0))
            # Each user's iterates depend on its own data only (a batch gives the single calls'
            # results): centred users and users at their accuracy stand still.
            moving = (decrement >= 1e-5) & ~reached
            if not moving.any():
                break
            length = np.where(moving, np.where(decrement < 0.25, 1.0, 1.0 / (1.0 + decrement)), 0.0)
            for _ in range(30):  # rounding can make the theoretically feasible step infeasible
                new_y = y + length[:, None] * step[:, :k]
                new_tau = tau + length * step[:, k]
                feasible = np.all(new_tau[:, None] - gains - np.einsum("itk,ik->it", coordinates, new_y) > 0, axis=1)
                for start, size in zip(starts, blocks):
                    part = new_y[:, start:start + size]
                    feasible &= np.einsum("ij,ij->i", part, part) < 1.0
                if feasible.all():
                    break
                length = np.where(feasible, length, 0.5 * length)
            keep = feasible[:, None]
            y = np.where(keep, new_y, y)
            tau = np.where(feasible, new_tau, tau)
        if reached.all():
            break
        reached = (t + n_balls) / kappa <= accuracy
        kappa = np.where(reached, kappa, 10.0 * kappa)
    slack = tau[:, None] - gains - np.einsum("itk,ik->it", coordinates, y)
    weights = 1.0 / (kappa[:, None] * np.maximum(slack, np.finfo(float).tiny))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights, y, _master_values(gains, coordinates, blocks, weights)


def _master_values(gains: np.ndarray, coordinates: np.ndarray, blocks: tuple[int, ...],
                   weights: np.ndarray) -> np.ndarray:
    mixed = np.einsum("itk,it->ik", coordinates, weights)
    values = np.einsum("it,it->i", gains, weights)
    start = 0
    for size in blocks:
        values -= np.linalg.norm(mixed[:, start:start + size], axis=1)
        start += size
    return values


def _symmetric_solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched solve after a Jacobi scaling (the barrier's Hessians span many orders of magnitude)."""
    scale = 1.0 / np.sqrt(np.maximum(np.abs(np.diagonal(matrix, axis1=1, axis2=2)), np.finfo(float).tiny))
    scaled = matrix * scale[:, :, None] * scale[:, None, :]
    try:
        return scale * np.linalg.solve(scaled, (scale * rhs)[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return scale * np.stack([np.linalg.lstsq(m, r, rcond=None)[0] for m, r in zip(scaled, scale * rhs)])


def column_generation(run: Any, users: np.ndarray, thetas: np.ndarray, adjoints: np.ndarray,
                      blocks: tuple[int, ...], *, max_iterations: int) -> np.ndarray:
    """Solve the problems of ``users`` and record their best policies and bounds in ``run``.

    Parameters
    ----------
    run : agents.planning._Run
        Holds the MDP, the sets, ``d_ref``, ``tol`` and the deadline; ``record_duals`` prices
        (one batched backward induction) and ``record_policies`` keeps exact policy values.
    users : ndarray of int, shape (n,)
    thetas : ndarray, shape (n, d)
        ``theta_hat``.
    adjoints : ndarray, shape (n, d, k)
        ``[radius_j K_j^T]_j``.
    blocks : tuple of int
    max_iterations : int
        Pricing steps per problem.

    Returns
    -------
    ndarray of int, shape (n,)
        Pricing steps of each problem.
    """
    mdp = run.mdp
    n, _, k = adjoints.shape
    reference = run.d_ref[users]
    eye = np.eye(mdp.n_actions)
    actions: list[np.ndarray] = []  # per column, (n, H, S) greedy actions
    states: list[np.ndarray] = []  # per column, (n, H, S) state distributions
    seeded = run.reference_policies is not None
    gains = np.zeros((n, 0))
    coordinates = np.zeros((n, 0, k))
    if seeded:  # the reference policy is column 0: g = 0, so c = 0 and u = 0
        gains = np.zeros((n, 1))
        coordinates = np.zeros((n, 1, k))
    best_dual = np.zeros((n, k))
    best_bound = np.full(n, np.inf)
    master_dual = np.zeros((n, k))
    master_level = np.full(n, -np.inf)
    master_value = np.full(n, -np.inf)
    weights = np.zeros((n, gains.shape[1]))
    direct = np.zeros(n, dtype=bool)
    iterations = np.zeros(n, dtype=int)
    active = np.arange(n)
    tol = run.tol
    for iteration in range(max_iterations):
        if not active.size or run.out_of_time():
            break
        if iteration == 0:
            zeta = best_dual[active]
        else:
            smoothing = np.where(direct[active], 0.0, SMOOTHING)[:, None]
            zeta = smoothing * best_dual[active] + (1 - smoothing) * master_dual[active]
        pricing = thetas[active] + np.matmul(adjoints[active], zeta[..., None])[..., 0]
        bounds, policies = run.record_duals(users[active], pricing)
        improved = bounds < best_bound[active]
        best_bound[active[improved]] = bounds[improved]
        best_dual[active[improved]] = zeta[improved]
        iterations[active] += 1
        column_occupancy = occupancy(mdp, policies)
        directions = occupancy_features(mdp, column_occupancy) - reference[active]
        new_gains = np.einsum("ij,ij->i", thetas[active], directions)
        new_coordinates = np.matmul(directions[:, None, :], adjoints[active])[:, 0]
        # A column that the current master prices at no gain is a mis-price: the bound improved
        # instead; price at the master's own dual next (a second mis-price there ends the run).
        reduced = new_gains + np.einsum("ij,ij->i", new_coordinates, master_dual[active]) - master_level[active]
        misprice = reduced <= 1e-13 * np.maximum(1.0, np.abs(master_level[active]))
        stalled = misprice & direct[active]
        direct[active] = misprice
        # A deterministic column is its actions and its state distributions d_h(s): the mixture's
        # occupancy is rebuilt from them at the end without recomputing any occupancy.
        column_actions = np.zeros((n, mdp.horizon, mdp.n_states), dtype=np.int16)
        column_actions[active] = policies.argmax(axis=-1)
        column_states = np.zeros((n, mdp.horizon, mdp.n_states))
        column_states[active] = column_occupancy.sum(axis=-1)
        actions.append(column_actions)
        states.append(column_states)
        gains = np.concatenate([gains, np.zeros((n, 1))], axis=1)
        coordinates = np.concatenate([coordinates, np.zeros((n, 1, k))], axis=1)
        # Finished users get a placeholder column (weight 0 forever: their masters are not solved).
        gains[active, -1] = new_gains
        coordinates[active, -1] = new_coordinates
        # Masters are solved to 1e-3 tol: the mis-price test and the pricing point need duals
        # well below the tolerance (a cruder master stalls runs whose optimum is L = 0).
        accuracy = 1e-3 * tol * np.maximum(1.0, np.abs(best_bound[active]))
        solved_weights, solved_dual, values = solve_masters(gains[active], coordinates[active], blocks, accuracy)
        weights = np.concatenate([weights, np.zeros((n, 1))], axis=1)
        better = values > master_value[active]
        rows = active[better]
        weights[rows] = solved_weights[better]
        master_value[rows] = values[better]
        master_dual[active] = solved_dual
        master_level[active] = np.max(gains[active] + np.einsum("itk,ik->it", coordinates[active], solved_dual), axis=1)
        finished = best_bound[active] - master_value[active] <= tol * np.maximum(1.0, np.abs(master_value[active]))
        active = active[~(finished | stalled)]
    _record_mixtures(run, users, weights, actions, states, seeded)
    return iterations


def _record_mixtures(run: Any, users: np.ndarray, weights: np.ndarray, actions: list[np.ndarray],
                     states: list[np.ndarray], seeded: bool) -> None:
    """The Markov policy of each user's mixture, evaluated exactly and recorded.

    The mixture's occupancy is ``sum_i lambda_i q_i`` with ``q_i[h, s, a] = d_ih(s) [a = a_ih(s)]``
    for a deterministic column (and the reference policy's occupancy for a seeded column 0).
    """
    mdp = run.mdp
    n = len(users)
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    # Weights at rounding level (the barrier never gives exact zeros) carry no value.
    weights = np.where(weights > 1e-10 * weights.max(axis=1, keepdims=True), weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    offset = 1 if seeded else 0
    mixture = np.zeros((n, *shape))
    if seeded:
        mixture += weights[:, 0, None, None, None] * occupancy(mdp, run.reference_policies[users])
    rows, steps, cells = np.ogrid[:n, :mdp.horizon, :mdp.n_states]
    for column in range(offset, weights.shape[1]):
        weight = weights[:, column]
        if not np.any(weight):
            continue
        # One action per (user, h, s) in a column: the fancy update has no repeated index.
        mixture[rows, steps, cells, actions[column - offset]] += weight[:, None, None] * states[column - offset]
    totals = mixture.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        policies = np.where(totals > 0, mixture / totals, 1.0 / mdp.n_actions)
    features = expected_features(mdp, policies)
    run.record_policies(users, policies, run.exact_values(users, features))
