"""Exact robust planning: column generation on backward induction against a conic solver.

Setting: S=200, A=10, H=30, random stationary transitions, one-hot (s, a) features (d = 2000),
and an ellipsoidal confidence set of dimension 5 (a random 5-column basis, a random well
conditioned matrix M, radius 1; the reference is the uniform policy). Both solve
``max_pi theta_hat . g - radius ||G g||_{M^{-1}}``, ``g = d_pi - d_ref``:

- ``agents.planning.robust_optimize`` (every inner step one backward induction, tol 1e-8);
- cvxpy with Clarabel on the occupancy-measure formulation (60000 variables q[h, s, a] >= 0,
  the flow constraints and one second-order cone), timed from the model's construction to
  its solution.

Asserts that the two optima agree within 1e-6 relative and that the certified gap closed, and
prints both times and their ratio (target: robust_optimize at least 100x faster). The conic
solve takes a few minutes; it runs once, robust_optimize is timed best of 5.

Run: ``python benchmarks/bench_robust.py`` (needs ``pip install cvxpy clarabel``)
"""

from __future__ import annotations

import time

import cvxpy as cp
import numpy as np
import scipy.sparse
from _timing import best_time

import lr_mdp_env
from agents import Ellipsoid, planning

N_STATES, N_ACTIONS, HORIZON, SET_DIMENSION, RADIUS = 200, 10, 30, 5, 1.0


def build_problem():
    mdp = lr_mdp_env.random_mdp(N_STATES, N_ACTIONS, HORIZON, seed=0)
    rng = np.random.default_rng(1)
    d = mdp.n_features
    basis = rng.normal(size=(d, SET_DIMENSION)) / np.sqrt(d)
    rotation, _ = np.linalg.qr(rng.normal(size=(SET_DIMENSION, SET_DIMENSION)))
    matrix = (rotation * np.exp(rng.uniform(-1, 1, size=SET_DIMENSION))) @ rotation.T
    confidence_set = Ellipsoid(offset=np.zeros(d), basis=basis, center=rng.normal(size=SET_DIMENSION),
                               matrix=0.5 * (matrix + matrix.T), radius=RADIUS)
    reference = lr_mdp_env.expected_features(mdp, lr_mdp_env.uniform_policy(mdp))
    return mdp, confidence_set, reference


def conic_solve(mdp, confidence_set, reference) -> float:
    """The occupancy-measure formulation, solved by Clarabel through cvxpy."""
    n_pairs = N_STATES * N_ACTIONS
    q = cp.Variable((HORIZON, n_pairs), nonneg=True)
    summing = scipy.sparse.kron(scipy.sparse.eye(N_STATES), np.ones((N_ACTIONS, 1)), format="csr")  # (S A, S)
    transitions = np.asarray(mdp.transitions[0]).reshape(n_pairs, N_STATES)
    constraints = [q[0] @ summing == mdp.initial_distribution, q[1:] @ summing == q[:-1] @ transitions]
    features = np.asarray(mdp.features[0]).reshape(n_pairs, -1)
    g = features.T @ cp.sum(q, axis=0) - reference
    whitening = np.linalg.solve(np.linalg.cholesky(confidence_set.matrix), confidence_set.basis.T)
    objective = confidence_set.theta_hat @ g - confidence_set.radius * cp.norm(whitening @ g)
    problem = cp.Problem(cp.Maximize(objective), constraints)
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal", problem.status
    return float(problem.value)


def main() -> None:
    mdp, confidence_set, reference = build_problem()
    solution = planning.robust_optimize(mdp, confidence_set, reference, tol=1e-8)
    ours = best_time(lambda: planning.robust_optimize(mdp, confidence_set, reference, tol=1e-8))
    start = time.perf_counter()
    optimum = conic_solve(mdp, confidence_set, reference)
    conic = time.perf_counter() - start

    assert solution.converged, f"gap {solution.gap:.2e} did not close"
    relative = abs(solution.value - optimum) / max(1.0, abs(optimum))
    assert relative <= 1e-6, f"optima differ: {solution.value!r} vs {optimum!r} ({relative:.1e} relative)"
    greedy = planning.greedy(mdp, confidence_set.theta_hat)
    greedy_value = confidence_set.lower(lr_mdp_env.expected_features(mdp, greedy) - reference)

    print(f"exact robust planning, S={N_STATES} A={N_ACTIONS} H={HORIZON}, one-hot features (d={mdp.n_features}), "
          f"set of dimension {SET_DIMENSION}, radius {RADIUS}")
    print(f"  optimum L*: robust_optimize {solution.value:.10f} (certified gap {solution.gap:.1e}, "
          f"{solution.iterations} backward inductions), Clarabel {optimum:.10f}, relative difference {relative:.1e}")
    print(f"  (greedy policy's L: {greedy_value:.10f})")
    print(f"  robust_optimize          {ours * 1e3:10.1f} ms")
    print(f"  cvxpy + Clarabel         {conic * 1e3:10.1f} ms   ratio {conic / ours:8.0f}x  (target >= 100x)")


if __name__ == "__main__":
    main()
