"""The interior-point method's blocks of users in feature coordinates (one-hot features, one ball
of full dimension): users that finish at different steps leave the block without their matrices
being copied, Newton systems far from the optimum are factored in single precision, and neither
changes an answer. The oracle is cvxpy with Clarabel (``conic_optimum``), which never calls the
code under test, and each user's own single call.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lr_mdp_env
from agents import ConvergenceWarning, interior_point, planning
from lr_mdp_env import expected_features, uniform_policy

from test_robust_planning import assert_certified, conic_optimum, full_dimensional_set

pytest.importorskip("cvxpy")


def one_hot_block(n_users=5, seed=3):
    """A one-hot MDP and full-dimensional sets whose radii span three orders of magnitude, so
    that the users need different numbers of steps."""
    mdp = lr_mdp_env.random_mdp(5, 3, 4, stationary=True, seed=seed)
    assert planning._feature_map(mdp)[0] is None
    rng = np.random.default_rng(seed)
    sets = [full_dimensional_set(rng, mdp, float(radius)) for radius in np.geomspace(0.02, 20.0, n_users)]
    reference = np.broadcast_to(expected_features(mdp, uniform_policy(mdp)), (n_users, mdp.n_features))
    return mdp, sets, reference


@pytest.mark.parametrize("single_gap", [np.inf, 1e-3])
def test_a_narrowing_block_in_feature_coordinates_reaches_each_conic_optimum(single_gap):
    # single_gap: never single precision, or the default (far from the optimum only).
    mdp, sets, reference = one_hot_block()
    rows_seen: list = []  # problem.rows of every Newton system: narrowed blocks index their users
    single_seen: list = []  # the users whose system was factored in single precision
    original = interior_point._NewtonSystem.__init__

    def recording(self, problem, weights, scalings, single=None):
        rows_seen.append(problem.rows)
        single_seen.append(np.zeros(len(weights), dtype=bool) if single is None else single)
        original(self, problem, weights, scalings, single)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interior_point, "feature_coordinates_pay", lambda *args: True)
        patch.setattr(interior_point, "_SINGLE_PRECISION_GAP", single_gap)
        patch.setattr(interior_point._NewtonSystem, "__init__", recording)
        batch = planning.robust_optimize(mdp, sets, reference, tol=1e-8, method="interior-point")
        singles = [planning.robust_optimize(mdp, s, r, tol=1e-8, method="interior-point")
                   for s, r in zip(sets, reference)]
    # The block narrowed: its users needed different numbers of steps, and the later systems saw
    # a subset of the rows of the first.
    assert len({solution.iterations for solution in batch}) > 1
    assert any(rows is not None and len(rows) < len(sets) for rows in rows_seen)
    used = np.concatenate(single_seen)
    assert used.any() if single_gap < np.inf else not used.any()
    assert not used.all()  # double precision near the optimum
    for solution, single, confidence_set, d_ref in zip(batch, singles, sets, reference):
        assert solution.converged and solution.method == "interior-point"
        optimum = conic_optimum(mdp, confidence_set, d_ref)
        assert_certified(mdp, confidence_set, d_ref, solution, optimum)
        # Clarabel's own accuracy is about 1e-8 of the objective's scale (here of order 1).
        assert abs(solution.value - optimum) <= 1e-6 * max(1.0, abs(optimum))
        # Each user's arithmetic is its own: the batch and the single call differ by rounding,
        # and both are certified within their gaps of the same optimum.
        assert abs(solution.value - single.value) <= max(solution.gap, single.gap) + 1e-12
        assert solution.iterations == single.iterations


def test_single_precision_does_not_cost_steps():
    # Far from the optimum (relative gap above 1e-3) the Newton systems are well conditioned, so
    # single-precision factors give the same steps; measured 552 steps for 29 users of S = 50,
    # A = 10, H = 10 with and without. Here at most one extra step per user is allowed.
    mdp, sets, reference = one_hot_block(n_users=4, seed=5)
    steps = {}
    for gap in (np.inf, 1e-3):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(interior_point, "feature_coordinates_pay", lambda *args: True)
            patch.setattr(interior_point, "_SINGLE_PRECISION_GAP", gap)
            solutions = planning.robust_optimize(mdp, sets, reference, tol=1e-8, method="interior-point")
        assert all(s.converged for s in solutions)
        steps[gap] = np.array([s.iterations for s in solutions])
    assert np.all(steps[1e-3] <= steps[np.inf] + 1)


def test_single_precision_near_the_optimum_stalls_but_stays_certified():
    # Why single precision stops at a relative gap of 1e-3: with it at every step, rounding in
    # the ill-conditioned systems near the optimum stalls some users short of tol = 1e-8 (the
    # other method then continues them). Whatever the directions, every answer is certified.
    mdp, sets, reference = one_hot_block()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interior_point, "feature_coordinates_pay", lambda *args: True)
        patch.setattr(interior_point, "_SINGLE_PRECISION_GAP", 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a stalled user warns; its gap is checked below
            batch = planning.robust_optimize(mdp, sets, reference, tol=1e-8, method="interior-point")
    for solution, confidence_set, d_ref in zip(batch, sets, reference):
        assert_certified(mdp, confidence_set, d_ref, solution, conic_optimum(mdp, confidence_set, d_ref))
