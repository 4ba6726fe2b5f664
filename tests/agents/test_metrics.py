"""Evaluation metrics: identifiable-part subspace distance and reward errors, accuracy, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from agents import (
    IndependentMLE,
    LoCoPRS,
    OracleSubspaceMLE,
    PShareLoRA,
    coverage,
    estimation_report,
    preference_accuracy,
    reward_errors,
    subspace_distance,
)
from lr_mdp_env import Teacher, collect_preferences, contextual_rewards, low_rank_rewards, random_mdp


def make_mdp(kind, seed=0):
    if kind == "one_hot":
        return random_mdp(4, 3, 3, seed=seed)
    if kind == "one_hot_time":
        return random_mdp(3, 2, 3, features="one_hot_time", seed=seed)
    return random_mdp(5, 3, 3, features="dense", n_features=6, seed=seed)


def hidden_directions(mdp, kind):
    """Unidentified directions from the feature kind alone (one per step block of one-hot features)."""
    d = mdp.n_features
    if kind == "one_hot":
        return np.ones((d, 1)) / np.sqrt(d)
    if kind == "one_hot_time":
        block = mdp.n_states * mdp.n_actions
        return np.kron(np.eye(mdp.horizon), np.ones((block, 1))) / np.sqrt(block)
    return np.zeros((d, 0))


def largest_angle_sine(first, second):
    """``sin`` of the largest principal angle of two equal-dimensional spans: ``sqrt(1 - cos_min^2)``
    with the cosines the singular values of ``Q1^T Q2``."""
    q1, q2 = np.linalg.qr(first)[0], np.linalg.qr(second)[0]
    cosines = np.linalg.svd(q1.T @ q2, compute_uv=False)
    return float(np.sqrt(max(0.0, 1.0 - cosines.min() ** 2)))


KINDS = ["one_hot", "one_hot_time", "dense"]


@pytest.mark.parametrize("kind", KINDS)
def test_subspace_distance(kind):
    mdp = make_mdp(kind)
    rng = np.random.default_rng(1)
    d, rank = mdp.n_features, 2
    hidden = hidden_directions(mdp, kind)
    truth = np.linalg.qr(rng.normal(size=(d, rank)))[0]
    assert subspace_distance(mdp, truth, truth) == pytest.approx(0.0, abs=1e-12)
    estimate = truth + 0.3 * rng.normal(size=(d, rank))
    expected = largest_angle_sine(truth - hidden @ (hidden.T @ truth), estimate - hidden @ (hidden.T @ estimate))
    assert subspace_distance(mdp, truth, estimate) == pytest.approx(expected, rel=1e-9)
    if hidden.shape[1]:
        # Unidentified components of either argument do not count ...
        shifted_truth = truth + hidden @ rng.normal(size=(hidden.shape[1], rank))
        shifted_estimate = estimate + hidden @ rng.normal(size=(hidden.shape[1], rank))
        assert subspace_distance(mdp, shifted_truth, shifted_estimate) == pytest.approx(expected, rel=1e-9)
        assert subspace_distance(mdp, truth, shifted_truth) == pytest.approx(0.0, abs=1e-12)
    # ... while a rotation by a known angle inside the identifiable space does.
    identifiable = np.linalg.qr(np.hstack([hidden, truth, rng.normal(size=(d, 1))]))[0][:, hidden.shape[1]:]
    inside_truth = identifiable[:, :rank]
    turned = inside_truth.copy()
    turned[:, 0] = np.cos(0.2) * identifiable[:, 0] + np.sin(0.2) * identifiable[:, rank]
    assert subspace_distance(mdp, inside_truth, turned) == pytest.approx(np.sin(0.2), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_reward_errors_ignore_unidentified_components(kind):
    mdp = make_mdp(kind)
    rng = np.random.default_rng(2)
    n_users, d = 5, mdp.n_features
    theta = rng.normal(size=(d, n_users))
    theta_hat = theta.T + 0.1 * rng.normal(size=(n_users, d))
    errors = reward_errors(mdp, theta_hat, theta)
    assert errors.shape == (n_users,)
    hidden = hidden_directions(mdp, kind)
    difference = theta_hat - theta.T
    expected = np.linalg.norm(difference - difference @ hidden @ hidden.T, axis=1)
    np.testing.assert_allclose(errors, expected, rtol=1e-12)
    if kind == "one_hot":
        # Adding a constant per user to every (s, a) reward changes no comparison, and no error.
        shifted = theta_hat + rng.normal(size=(n_users, 1))
        np.testing.assert_allclose(reward_errors(mdp, shifted, theta), errors, rtol=1e-12)
        np.testing.assert_allclose(errors, np.linalg.norm(difference - difference.mean(axis=1, keepdims=True),
                                                          axis=1), rtol=1e-12)
    elif kind == "one_hot_time":
        # A constant per step (a different one for every step) changes nothing either.
        block = mdp.n_states * mdp.n_actions
        shifted = theta_hat + np.repeat(rng.normal(size=(n_users, mdp.horizon)), block, axis=1)
        np.testing.assert_allclose(reward_errors(mdp, shifted, theta), errors, rtol=1e-12)
    else:
        np.testing.assert_allclose(errors, np.linalg.norm(difference, axis=1), rtol=1e-12)


class KnowsTheTruth:
    """An estimator whose point estimate is the true reward."""

    def __init__(self, theta, beta=1.0):
        self.theta_hat, self.beta, self.base = theta, beta, None

    def pair_logits(self, data):
        return self.beta * data.row_dot(self.theta_hat[data.users])


@pytest.mark.parametrize("kind", ["one_hot", "dense"])
def test_preference_accuracy(kind):
    mdp = make_mdp(kind, seed=3)
    rewards = low_rank_rewards(mdp.n_features, 5, 2, mdp=mdp, scale=2.0, seed=4)
    teacher = Teacher(beta=2.0, mistake=0.1, equal=0.1)
    held_out = collect_preferences(mdp, rewards, 200, teacher=teacher, seed=5)
    assert np.any(held_out.labels == 0.5)  # "equal" pairs exist and must be left out
    truth = preference_accuracy(KnowsTheTruth(rewards.theta.T, beta=0.5), held_out, mdp)
    assert truth["accuracy"] == truth["truth_accuracy"]
    decided = held_out.labels != 0.5
    probabilities = held_out.probabilities[decided]
    assert truth["bayes_accuracy"] == pytest.approx(np.mean(np.maximum(probabilities, 1 - probabilities)))
    # A fitted estimator's accuracy, recomputed from the trajectories.
    train = collect_preferences(mdp, rewards, 60, seed=6)
    estimator = IndependentMLE(ridge=1.0).fit(train, mdp)
    z = (mdp.trajectory_features(held_out.states1, held_out.actions1)
         - mdp.trajectory_features(held_out.states0, held_out.actions0))
    predicted = np.sum(estimator.theta_hat[held_out.users] * z, axis=1) > 0
    expected = np.mean(predicted[decided] == (held_out.labels[decided] == 1.0))
    assert preference_accuracy(estimator, held_out, mdp)["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_coverage_is_one_bool_per_user():
    mdp = make_mdp("one_hot", seed=7)
    rewards = low_rank_rewards(mdp.n_features, 8, 2, mdp=mdp, scale=2.0, seed=8)
    dataset = collect_preferences(mdp, rewards, 40, seed=9)
    for estimator in (IndependentMLE(ridge=1.0, delta=0.5), OracleSubspaceMLE(rewards.subspace, ridge=1.0),
                      PShareLoRA(2, ridge=1.0, delta=0.5, subspace_error="ignore")):
        estimator.fit(dataset, mdp)
        covered = coverage(estimator, rewards)
        assert covered.shape == (8,) and covered.dtype == bool
        for user in range(8):
            region = estimator.confidence_set(user)
            basis = np.linalg.qr(region.basis)[0]
            # The truth's projection onto the set's span, in the set's coordinates.
            target = np.linalg.lstsq(region.basis, basis @ (basis.T @ (rewards.theta[:, user] - region.offset)),
                                     rcond=None)[0]
            deviation = target - region.center
            assert covered[user] == (deviation @ region.matrix @ deviation <= region.radius**2)


def test_contextual_coverage_and_report():
    mdp = make_mdp("dense", seed=10)
    rewards = contextual_rewards(mdp.n_features, 3, 1, n_users=20, mdp=mdp, scale=2.0, seed=11)
    dataset = collect_preferences(mdp, rewards, 20, seed=12)
    estimator = LoCoPRS(1, ridge=1.0).fit(dataset, mdp)
    np.testing.assert_array_equal(coverage(estimator, rewards), [estimator.covers(rewards.theta_c)])
    report = estimation_report(estimator, mdp, rewards)
    np.testing.assert_allclose(report["reward_error"], reward_errors(mdp, estimator.theta_hat, rewards.theta))
    assert "truth_in_set" not in report
    assert report["subspace_distance"].iloc[0] == pytest.approx(
        subspace_distance(mdp, rewards.subspace, estimator.subspace))


def test_estimation_report_collects_the_metrics():
    mdp = make_mdp("one_hot", seed=13)
    rewards = low_rank_rewards(mdp.n_features, 6, 2, mdp=mdp, scale=2.0, seed=14)
    dataset = collect_preferences(mdp, rewards, 40, seed=15)
    held_out = collect_preferences(mdp, rewards, 40, seed=16)
    estimator = PShareLoRA(2, ridge=1.0).fit(dataset, mdp)
    report = estimation_report(estimator, mdp, rewards, held_out)
    assert list(report["user"]) == list(range(6))
    np.testing.assert_allclose(report["reward_error"], reward_errors(mdp, estimator.theta_hat, rewards.theta))
    np.testing.assert_array_equal(report["truth_in_set"], coverage(estimator, rewards))
    assert np.all(report["subspace_distance"] == subspace_distance(mdp, rewards.subspace, estimator.subspace))
    accuracy = preference_accuracy(estimator, held_out, mdp)
    for name, value in accuracy.items():
        assert np.all(report[name] == value)
    assert report.attrs["unidentified_directions"] == 1


def test_batched_membership_equals_each_sets_own_test():
    """Ellipsoids of several estimators (shared basis, pooled shared matrix) and a set of another
    kind in one call: each answer is that set's own ``contains(theta, project=True)``."""
    from agents import ConfidenceSet, PooledMLE
    from agents.metrics import set_membership

    class Ball(ConfidenceSet):
        """``{theta : ||theta - c|| <= r}``, a set that is not an ellipsoid."""

        def __init__(self, centre, radius):
            self.centre, self.radius = centre, radius

        n_features = property(lambda self: self.centre.shape[0])
        theta_hat = property(lambda self: self.centre)

        def lower(self, vectors):
            vectors = np.asarray(vectors, dtype=float)
            return vectors @ self.centre - self.radius * np.linalg.norm(vectors, axis=-1)

        def minimizer(self, vectors):
            vectors = np.asarray(vectors, dtype=float)
            return self.centre - self.radius * vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)

        def contains(self, theta, *, atol=1e-9, project=False):
            return bool(np.linalg.norm(theta - self.centre) <= self.radius)

    mdp = make_mdp("one_hot", seed=17)
    rewards = low_rank_rewards(mdp.n_features, 10, 2, mdp=mdp, scale=2.0, seed=18)
    dataset = collect_preferences(mdp, rewards, 40, seed=19)
    sets, thetas = [], []
    for estimator in (IndependentMLE(ridge=1.0, delta=0.05), PooledMLE(ridge=1.0, delta=0.05),
                      PShareLoRA(2, ridge=1.0, delta=0.05), OracleSubspaceMLE(rewards.subspace, ridge=1.0)):
        estimator.fit(dataset, mdp)
        sets += [estimator.confidence_set(user) for user in range(10)]
        thetas += list(rewards.theta.T)
    sets += [Ball(rewards.theta[:, 0], 1.0), Ball(rewards.theta[:, 0] + 2.0, 1.0)]
    thetas += [rewards.theta[:, 0], rewards.theta[:, 0]]
    expected = [item.contains(theta, project=True) for item, theta in zip(sets, thetas)]
    assert 0 < sum(expected) < len(expected)  # both answers occur: the comparison can fail
    np.testing.assert_array_equal(set_membership(sets, np.array(thetas)), expected)


@pytest.mark.parametrize("name, pessimism", [("p-sharelora", "rectangular"), ("independent", "none"),
                                              ("oracle-subspace", "rectangular"), ("p-sharelora-default", "none")])
def test_evaluate_diagnostics_equal_the_per_user_formulas(name, pessimism):
    """evaluate's batched diagnostics against each user's set, one at a time, through the set
    protocol and lr_mdp_env.theory (the pessimism lemma's terms)."""
    import agents
    from lr_mdp_env import expected_features, theory

    mdp = make_mdp("dense", seed=20)
    rewards = low_rank_rewards(mdp.n_features, 6, 2, mdp=mdp, scale=2.0, seed=21)
    dataset = collect_preferences(mdp, rewards, 30, seed=22)
    options = {"rank": 2, "subspace_error": "ignore"} if name == "p-sharelora" else \
        {"rank": 2} if name == "p-sharelora-default" else \
        {"subspace": rewards.subspace} if name == "oracle-subspace" else {}
    agent = agents.make(name.removesuffix("-default"), pessimism=pessimism, ridge=1.0, **options).fit(dataset, mdp)
    report = agents.evaluate(agent, mdp, rewards)
    policies = agent.policies()
    optimal, _ = agents.planning.greedy(mdp, rewards.theta.T), None
    features, optimal_features = expected_features(mdp, policies), expected_features(mdp, optimal)
    reference = np.broadcast_to(agent.reference_features, features.shape)
    for user in range(6):
        region, theta = agent.confidence_set(user), rewards.theta[:, user]
        if name == "p-sharelora-default":  # a set with the subspace error: the lemma's general form
            row = report.iloc[user]
            assert row["lower_bound"] == pytest.approx(region.lower(features[user] - reference[user]), rel=1e-8,
                                                       abs=1e-10)
            assert np.isnan(row["coverage_term"]) and row["misspecification"] == 0.0
            assert row["bound"] == pytest.approx(region.width(optimal_features[user] - reference[user]), rel=1e-8)
            assert row["truth_in_set"] == region.contains(theta)
            continue
        coverage_term = region.dual_norm(optimal_features[user] - reference[user])
        residual = theta - theory.affine_projection(theta, region.offset, region.basis)
        misspecification = theory.misspecification_term(mdp, residual, reference[user])
        row = report.iloc[user]
        assert row["lower_bound"] == pytest.approx(region.lower(features[user] - reference[user]), rel=1e-8, abs=1e-10)
        assert row["coverage_term"] == pytest.approx(coverage_term, rel=1e-8, abs=1e-12)
        assert row["truth_in_set"] == region.contains(theta, project=True)
        assert row["misspecification"] == pytest.approx(misspecification, rel=1e-8, abs=1e-10)
        assert row["bound"] == pytest.approx(2 * region.radius * coverage_term + misspecification, rel=1e-8, abs=1e-10)
    if name == "p-sharelora":  # a reduced set: the truth is not in its span, the term is not 0
        assert report["misspecification"].max() > 1e-6


def test_evaluate_in_blocks_of_users_equals_one_block(monkeypatch):
    """With a memory budget for one set and one user's tables at a time (full-dimensional sets at
    large d, many users), evaluate goes through the users in blocks and the estimator keeps no
    sets: the report is unchanged."""
    import pandas as pd

    import agents
    import agents.estimators
    import agents.evaluation
    mdp = random_mdp(5, 3, 4, seed=3)
    rewards = low_rank_rewards(mdp.n_features, 6, 2, seed=4, mdp=mdp)
    dataset = collect_preferences(mdp, rewards, 30, seed=5)
    agent = agents.make("independent", ridge=1.0, pessimism="rectangular").fit(dataset, mdp)
    whole = agents.evaluate(agent, mdp, rewards, progress=False)
    monkeypatch.setattr(agents.evaluation, "SETS_BYTES", 1)
    monkeypatch.setattr(agents.evaluation, "DP_BYTES", 1)  # one user per dynamic-programming block
    monkeypatch.setattr(agents.estimators, "SET_CACHE_BYTES", 0)
    fresh = agents.make("independent", ridge=1.0, pessimism="rectangular").fit(dataset, mdp)
    assert fresh.estimator.confidence_set(0) is not fresh.estimator.confidence_set(0)  # not kept
    blocks = agents.evaluate(fresh, mdp, rewards, progress=False)
    pd.testing.assert_frame_equal(whole, blocks, check_exact=False, rtol=1e-10, atol=1e-12)


def test_coverage_in_blocks_of_users_equals_one_block(monkeypatch):
    """coverage builds the users' sets in blocks that fit in evaluate's SETS_BYTES (full-dimensional
    low-rank-plus-ridge sets of many users at large d): the answer is that of one block, and of
    each set's own contains."""
    import agents
    import agents.evaluation
    from agents.metrics import coverage

    mdp = random_mdp(25, 3, 3, seed=3)  # d = 75: 74 coordinates, more than the 30 pairs per user
    rewards = low_rank_rewards(mdp.n_features, 5, 2, seed=4, mdp=mdp)
    dataset = collect_preferences(mdp, rewards, 30, seed=5)
    estimator = agents.IndependentMLE(ridge=1.0, progress=False).fit(dataset, mdp)
    whole = coverage(estimator, rewards)
    monkeypatch.setattr(agents.evaluation, "SETS_BYTES", 1)
    np.testing.assert_array_equal(coverage(estimator, rewards), whole)
    np.testing.assert_array_equal(
        whole, [estimator.confidence_set(i).contains(rewards.theta[:, i], project=True) for i in range(5)])
