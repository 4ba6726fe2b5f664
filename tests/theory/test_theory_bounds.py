"""The deterministic facts of docs/theory.md about pessimism, on drawn worlds.

Each property is one line of the theory:

* pessimism lemma: truth in the set => ``0 <= J(pi*) - J(pi_hat) <= 2 radius ||G (d* - d_ref)||_{M^-1}``
  (:func:`lr_mdp_env.theory.pessimism_bound`), for the exact robust policy;
* reduced sets (the truth's *projection* in the set, as for P-ShareLoRA's ``U_hat``): the same
  plus :func:`lr_mdp_env.theory.misspecification_term`;
* lower bound: truth in the set => ``J(pi_hat) - J(ref) >= L(pi_hat)`` (minus half the
  misspecification term for reduced sets);
* rectangular pessimism is never less conservative than exact.

Worlds come from :mod:`lr_mdp_env.testing`; the sets are built around a drawn truth so that it
(or its projection) lies in them by construction. The exact policy comes from
``agents.planning.robust_optimize``, which certifies a gap: a policy that is optimal only up to
``gap`` satisfies the lemma up to ``gap``, so the gap enters the bounds additively. Remaining
slack is rounding: ``1e-9`` relative to the values involved (everything here is a few dozen
floating-point operations on O(1) numbers). tests/agents/test_planning.py checks the same
facts for generic random ellipsoids against the planners' own invariants; here the sets have
the shapes of the learners' (full-dimensional and reduced low-rank sets on one-hot and dense
features).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents import Ellipsoid, planning
from lr_mdp_env import backward_induction, expected_features, theory
from lr_mdp_env.testing import low_rank_reward_structures, mdps, policies, seeds

RADII = st.sampled_from([0.0, 0.1, 1.0, 5.0])


def random_metric(rng, k):
    """A positive definite ``M`` with eigenvalues spread over two orders of magnitude."""
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    matrix = (q * np.exp(rng.uniform(-2.3, 2.3, size=k))) @ q.T
    return 0.5 * (matrix + matrix.T)


def set_around(rng, point, offset, basis, radius, matrix):
    """An ellipsoid ``{offset + B w : ||w - c||_M <= radius}`` whose closure holds the projection
    of ``point`` onto ``offset + range(B)``: the centre is that projection's coordinates moved by
    a random step of ``M``-norm at most ``radius``."""
    coordinates = np.linalg.lstsq(basis, point - offset, rcond=None)[0]
    step = rng.normal(size=basis.shape[1])
    cholesky = np.linalg.cholesky(matrix)
    step *= rng.uniform(0.0, 0.99) / max(np.linalg.norm(step), 1e-300)
    center = coordinates + radius * np.linalg.solve(cholesky.T, step)  # ||center - coordinates||_M <= radius
    return Ellipsoid(offset=offset, basis=basis, center=center, matrix=matrix, radius=radius)


@st.composite
def worlds_with_sets(draw, reduced):
    """``(mdp, truth, set, reference features)``.

    Full sets: basis ``I_d``, so the truth itself is in the set. Reduced sets: the truth is a
    user of a drawn low-rank structure (optionally with a tail beyond rank ``r``) and the basis is
    its subspace ``U*`` tilted by a drawn angle, as an estimated ``U_hat`` would be: the truth is
    then off the set's span and only its projection is in the set.
    """
    mdp = draw(mdps(max_states=3, max_actions=3, max_horizon=3))
    rng = np.random.default_rng(draw(seeds()))
    d = mdp.n_features
    radius = draw(RADII)
    reference = expected_features(mdp, draw(policies(mdp)))
    if not reduced:
        truth = rng.normal(size=d)
        confidence_set = set_around(rng, truth, np.zeros(d), np.eye(d), radius, random_metric(rng, d))
        return mdp, truth, confidence_set, reference
    rewards = draw(low_rank_reward_structures(mdp, max_users=4, with_base=draw(st.booleans())))
    user = draw(st.integers(0, rewards.n_users - 1))
    truth = rewards.theta[:, user]
    tilt = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    basis = rewards.subspace + tilt * rng.normal(size=rewards.subspace.shape)
    offset = rewards.base[:, user]
    confidence_set = set_around(rng, truth, offset, basis, radius, random_metric(rng, basis.shape[1]))
    return mdp, truth, confidence_set, reference


def optimal_features(mdp, theta):
    policy, _ = backward_induction(mdp, mdp.reward(theta))
    return expected_features(mdp, policy)


def misspecification(mdp, truth, confidence_set, reference):
    residual = truth - theory.affine_projection(truth, confidence_set.offset, confidence_set.basis)
    return theory.misspecification_term(mdp, residual, reference)


@pytest.mark.parametrize("reduced", [False, True], ids=["full", "reduced"])
@given(data=st.data())
def test_pessimism_lemma_and_lower_bound(reduced, data):
    """Lemma: ``0 <= J(pi*) - J(pi_hat) <= pessimism_bound(radius, ||G g*||, misspecification) + gap``.

    Lower bound: ``J(pi) - J(ref) = theta* . g >= theta_p . g - |e . g| >= L(pi) - misspecification / 2``
    for every policy ``pi`` (``theta_p`` the projection, in the set; ``e = theta* - theta_p``);
    with a full set ``e = 0``. Checked for the robust policy and for a drawn policy.
    """
    mdp, truth, confidence_set, reference = data.draw(worlds_with_sets(reduced))
    assert confidence_set.contains(truth, project=True)
    solution = planning.robust_optimize(mdp, confidence_set, reference)
    d_star = optimal_features(mdp, truth)
    d_hat = expected_features(mdp, solution.policy)
    suboptimality = truth @ (d_star - d_hat)
    misspecified = misspecification(mdp, truth, confidence_set, reference)
    if not reduced:
        assert misspecified == 0.0  # a full set's span holds the truth: nothing is missed
    bound = theory.pessimism_bound(confidence_set.radius, confidence_set.dual_norm(d_star - reference), misspecified)
    slack = 1e-9 * (1 + np.abs(truth) @ (np.abs(d_star) + np.abs(d_hat)) + bound)
    assert suboptimality >= -slack
    assert suboptimality <= bound + solution.gap + slack

    for policy in (solution.policy, data.draw(policies(mdp, deterministic=None))):
        g = expected_features(mdp, policy) - reference
        lower = planning.pessimistic_value(mdp, confidence_set, reference, policy)
        slack = 1e-9 * (1 + np.abs(truth) @ np.abs(g) + abs(lower))
        assert truth @ g >= lower - misspecified / 2 - slack


@given(data=st.data())
def test_zero_radius_around_the_truth_gives_zero_suboptimality(data):
    """The lemma is tight at radius 0: the bound is 0, so the robust policy must be optimal."""
    mdp, truth, _, reference = data.draw(worlds_with_sets(reduced=False))
    exact = Ellipsoid(offset=np.zeros(mdp.n_features), basis=np.eye(mdp.n_features), center=truth,
                      matrix=np.eye(mdp.n_features), radius=0.0)
    solution = planning.robust_optimize(mdp, exact, reference)
    d_star = optimal_features(mdp, truth)
    assert theory.pessimism_bound(0.0, exact.dual_norm(d_star - reference)) == 0.0
    suboptimality = truth @ (d_star - expected_features(mdp, solution.policy))
    assert abs(suboptimality) <= solution.gap + 1e-9 * (1 + np.abs(truth).sum() * mdp.horizon)


@pytest.mark.parametrize("reduced", [False, True], ids=["full", "reduced"])
@given(data=st.data())
def test_rectangular_is_never_less_conservative_than_exact(reduced, data):
    """``L(pi_rect) <= max_pi L(pi) <= upper_bound``: the rectangular planner optimises a lower
    bound of ``L`` (a per-step worst case), so its policy cannot beat the exact optimum of ``L``."""
    mdp, _, confidence_set, reference = data.draw(worlds_with_sets(reduced))
    exact = planning.robust_optimize(mdp, confidence_set, reference)
    rectangular = planning.rectangular(mdp, confidence_set, reference)
    slack = 1e-9 * (1 + abs(exact.upper_bound))
    assert rectangular.value <= exact.upper_bound + slack
    assert rectangular.value <= exact.value + exact.gap + slack


@given(radius=st.floats(0, 1e3), coverage=st.floats(0, 1e3), misspecified=st.floats(0, 1e3))
def test_pessimism_bound_is_its_formula_and_broadcasts(radius, coverage, misspecified):
    assert theory.pessimism_bound(radius, coverage, misspecified) == 2 * radius * coverage + misspecified
    assert theory.pessimism_bound(radius, coverage) == 2 * radius * coverage
    batch = theory.pessimism_bound([radius, 2 * radius], coverage, [misspecified, 0.0])
    np.testing.assert_array_equal(batch, [2 * radius * coverage + misspecified, 4 * radius * coverage])


@pytest.mark.parametrize("arguments, name", [
    ((-1.0, 1.0), "radius"), ((1.0, -1.0), "coverage"), ((1.0, 1.0, -0.5), "misspecification"),
    ((np.nan, 1.0), "radius"),
])
def test_pessimism_bound_rejects_bad_input(arguments, name):
    with pytest.raises(ValueError, match=name):
        theory.pessimism_bound(*arguments)


def test_the_misspecification_term_is_needed_and_tight():
    """A two-armed bandit with features ``e_1, e_2`` and truth ``(1, eps)``; the reduced set is the
    point ``(0, eps)`` (basis ``e_2``, radius 0), the truth's projection. Greedy on it pulls arm 2:
    sub-optimality ``1 - eps``, while ``2 radius ||G g*|| = 0``. With ``d_ref`` the uniform arm,
    the misspecification term is ``2 max_pi |e_1 . (d_pi - d_ref)| = 2 * 1/2 = 1``: the lemma
    holds only thanks to it, with slack ``eps``."""
    from lr_mdp_env import TabularMDP

    eps = 1e-3
    mdp = TabularMDP(np.ones((1, 2, 1)), np.ones(1), horizon=1, features=np.eye(2)[None])
    truth = np.array([1.0, eps])
    point = Ellipsoid(offset=np.zeros(2), basis=np.array([[0.0], [1.0]]), center=np.array([eps]),
                      matrix=np.eye(1), radius=0.0)
    reference = np.array([0.5, 0.5])
    assert point.contains(truth, project=True) and not point.contains(truth)
    solution = planning.robust_optimize(mdp, point, reference)
    suboptimality = truth @ (optimal_features(mdp, truth) - expected_features(mdp, solution.policy))
    misspecified = misspecification(mdp, truth, point, reference)
    assert suboptimality == pytest.approx(1 - eps, abs=1e-12)
    assert misspecified == pytest.approx(1.0, abs=1e-12)
    assert theory.pessimism_bound(0.0, point.dual_norm(np.array([0.5, -0.5])), misspecified) - suboptimality \
        == pytest.approx(eps, abs=1e-12)
