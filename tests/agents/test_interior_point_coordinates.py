"""The interior-point method's Newton systems in feature coordinates ``y = Psi z`` (one-hot
features, one ball), and its threaded blocks.

Three kinds of check: the linear algebra (the system in ``y``, bordered by the range constraint,
returns the same direction as the system in ``z``), the end result against cvxpy with Clarabel on
hypothesis-drawn instances with the feature coordinates forced on (full-dimensional sets, zero and
huge radii, rank-deficient and duplicated bases, where the method must fall back to ``z``), and
``workers=2`` against ``workers=1``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lr_mdp_env
from agents import interior_point, planning
from lr_mdp_env import expected_features, uniform_policy

from test_robust_planning import assert_certified, conic_optimum, full_dimensional_set, objective_scale, random_ellipsoid

pytest.importorskip("cvxpy")


def test_feature_coordinates_invert_the_map_and_refuse_dependent_columns():
    rng = np.random.default_rng(0)
    adjoint = rng.normal(size=(3, 7, 5))
    coordinates = interior_point.feature_coordinates(adjoint)
    assert coordinates is not None
    for psi, inverse, metric, normal in zip(adjoint, coordinates.pseudo_inverse, coordinates.metric, coordinates.normal):
        assert np.allclose(inverse @ psi, np.eye(5), atol=1e-12)
        assert np.allclose(inverse, np.linalg.pinv(psi), atol=1e-12)
        assert np.allclose(metric, inverse.T @ inverse, atol=1e-12)
        # N spans the orthogonal complement of the range: orthonormal, orthogonal to Psi, d - k columns.
        assert normal.shape == (7, 2)
        assert np.allclose(normal.T @ normal, np.eye(2), atol=1e-12)
        assert np.allclose(normal.T @ psi, 0.0, atol=1e-12)
    duplicated = adjoint.copy()
    duplicated[1, :, 4] = duplicated[1, :, 0]
    assert interior_point.feature_coordinates(duplicated) is None
    nearly = adjoint.copy()
    nearly[2, :, 3] *= 1e-10  # condition number about 1e10
    assert interior_point.feature_coordinates(nearly) is None
    assert interior_point.feature_coordinates(rng.normal(size=(1, 4, 5))) is None  # k > d


@pytest.mark.parametrize("k", [3, 6])
def test_the_newton_system_in_feature_coordinates_is_the_system_in_z(k):
    # The same problem, weights and cone scaling with and without FeatureCoordinates: the
    # directions (dV, dz) solve the same positive definite system, so they agree to rounding.
    mdp = lr_mdp_env.random_mdp(3, 2, 3, seed=3)
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    pairs = n_states * n_actions
    rng = np.random.default_rng(k)
    n = 4
    adjoint = rng.normal(size=(n, pairs, k))
    theta_hat = rng.normal(size=(n, pairs))
    uniform = lr_mdp_env.occupancy(mdp, uniform_policy(mdp))
    problem = interior_point.ConicProblem(
        transitions=np.asarray(mdp.transitions).reshape(horizon, pairs, n_states),
        initial_distribution=np.asarray(mdp.initial_distribution),
        reward=np.broadcast_to(theta_hat[:, None], (n, horizon, pairs)).copy(), features=adjoint[:, None],
        reference=rng.normal(size=(n, k)), blocks=(k,), start=np.broadcast_to(uniform, (n, *uniform.shape)),
        constant=np.zeros(n),
    )
    in_features = interior_point.ConicProblem(**{**problem.__dict__,
                                                 "coordinates": interior_point.feature_coordinates(adjoint)})
    assert in_features.coordinates is not None
    # Weights over eight orders of magnitude, as near an optimum; an interior cone point and multiplier.
    weights = np.exp(rng.uniform(-9, 9, size=(n, horizon, n_states, n_actions)))
    cone = np.concatenate([np.ones((n, 1)), 0.3 * rng.normal(size=(n, k)) / np.sqrt(k)], axis=1)
    multiplier = np.concatenate([np.full((n, 1), 2.0), 0.5 * rng.normal(size=(n, k)) / np.sqrt(k)], axis=1)
    scaling = interior_point._Scaling(cone, multiplier)
    rhs_values, rhs_z = rng.normal(size=(n, horizon, n_states)), rng.normal(size=(n, k))
    dV, dz = interior_point._NewtonSystem(problem, weights, [scaling]).solve(rhs_values, rhs_z)
    dV_y, dz_y = interior_point._NewtonSystem(in_features, weights, [scaling]).solve(rhs_values, rhs_z)
    # Rounding is amplified by the system's condition number (weights spanning 1e8): compare
    # the residuals of both in the z system, and the directions to 1e-6 of their size.
    assert np.allclose(dz_y, dz, rtol=1e-6, atol=1e-6 * np.abs(dz).max())
    assert np.allclose(dV_y, dV, rtol=1e-6, atol=1e-6 * np.abs(dV).max())


@st.composite
def one_hot_problems(draw):
    """A one-hot MDP with a set of every kind that the feature coordinates see."""
    n_states, n_actions, horizon = draw(st.integers(1, 4)), draw(st.integers(2, 3)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    mdp = lr_mdp_env.random_mdp(n_states, n_actions, horizon, stationary=draw(st.booleans()), seed=seed % 2**31)
    rng = np.random.default_rng(seed)
    d = mdp.n_features
    radius = draw(st.sampled_from([0.0, 0.05, 0.5, 2.0, 1e3]))
    kind = draw(st.sampled_from(["full", "ellipsoid", "rank-deficient", "duplicated"]))
    if kind == "full":
        confidence_set = full_dimensional_set(rng, mdp, radius)
    else:
        k = draw(st.integers(1, d))
        rank = draw(st.integers(1, k)) if kind == "rank-deficient" else None
        confidence_set = random_ellipsoid(rng, d, k, radius, rank=rank, duplicate=kind == "duplicated")
    policy = draw(st.sampled_from(["uniform", "greedy"]))
    reference_policy = uniform_policy(mdp) if policy == "uniform" else planning.greedy(mdp, rng.normal(size=d))
    return mdp, confidence_set, expected_features(mdp, reference_policy)


@settings(max_examples=40, deadline=None)
@given(problem=one_hot_problems())
def test_feature_coordinates_reach_the_conic_optimum_with_an_honest_certificate(problem):
    mdp, confidence_set, reference = problem
    assert planning._feature_map(mdp)[0] is None
    built: list = []  # what feature_coordinates returned
    original = interior_point.feature_coordinates

    def recording(adjoint, **kwargs):
        built.append(original(adjoint, **kwargs))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interior_point, "feature_coordinates_pay", lambda *args: True)  # forced on
        patch.setattr(interior_point, "feature_coordinates", recording)
        solution = planning.robust_optimize(mdp, confidence_set, reference, tol=1e-8, method="interior-point")
    optimum = conic_optimum(mdp, confidence_set, reference)
    assert_certified(mdp, confidence_set, reference, solution, optimum)
    scale = objective_scale(mdp, confidence_set)
    # As in test_robust_planning: about 1e-12 of the objective's scale is rounding.
    floor = 1e-12 * scale
    assert solution.gap <= max(1e-8 * max(1.0, abs(solution.value)), floor)
    assert abs(solution.value - optimum) <= 1e-7 * scale
    structure = planning._structure(confidence_set)
    if structure.blocks:
        adjoint = structure.adjoint
        injective = np.linalg.matrix_rank(adjoint) == adjoint.shape[1] and np.linalg.cond(adjoint) < 1e7
        # The path was taken exactly where z is a function of y (and refused elsewhere).
        assert built, "robust_optimize did not reach the interior-point method"
        if injective:
            assert built[0] is not None
        elif np.linalg.matrix_rank(adjoint) < adjoint.shape[1]:
            assert built[0] is None


def test_feature_coordinates_are_chosen_for_full_dimensional_sets_only():
    assert interior_point.feature_coordinates_pay(10, 50, 10, 499)
    assert not interior_point.feature_coordinates_pay(10, 50, 10, 20)
    assert not interior_point.feature_coordinates_pay(20, 200, 10, 5)


@pytest.mark.parametrize("method", ["interior-point", "column-generation"])
def test_two_workers_give_the_single_worker_answers(method):
    # Each block of users is solved by its own thread: the arithmetic of every user is the same
    # as with one worker (blocks only change which users share an array), so the answers agree
    # to the rounding of stacked products.
    mdp = lr_mdp_env.random_mdp(4, 3, 3, seed=11)
    rng = np.random.default_rng(12)
    sets = [full_dimensional_set(rng, mdp, float(radius)) for radius in rng.uniform(0.1, 2.0, size=6)]
    reference = np.broadcast_to(expected_features(mdp, uniform_policy(mdp)), (6, mdp.n_features))
    one = planning.robust_optimize(mdp, sets, reference, method=method)
    two = planning.robust_optimize(mdp, sets, reference, method=method, workers=2)
    for a, b in zip(one, two):
        assert a.converged and b.converged and a.method == b.method == method
        assert abs(a.value - b.value) <= 1e-9 * max(1.0, abs(a.value))
    with pytest.raises(ValueError, match="workers"):
        planning.robust_optimize(mdp, sets[0], reference[0], workers=0)
