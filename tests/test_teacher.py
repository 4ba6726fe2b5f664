"""The simulated Bradley-Terry-Luce teacher and its B-Pref noise models."""

from __future__ import annotations

import numpy as np
import pytest

from lr_mdp_env import Teacher


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _pairs_with_differences(differences, repeats, horizon=3):
    """Step rewards ``(n, H)`` whose returns differ by ``differences`` (each repeated)."""
    difference = np.repeat(np.asarray(differences, dtype=float), repeats)
    rewards0 = np.zeros((difference.size, horizon))
    rewards0[:, 0] = 0.25
    rewards1 = rewards0.copy()
    rewards1[:, -1] += difference
    return rewards0, rewards1, difference


@pytest.mark.parametrize("beta, mistake", [(1.0, 0.0), (2.5, 0.0), (0.7, 0.2)])
def test_label_frequencies_match_the_btl_probability(beta, mistake, frequency_tolerance):
    differences = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 3.0])
    repeats = 20_000
    rewards0, rewards1, difference = _pairs_with_differences(differences, repeats)
    teacher = Teacher(beta=beta, mistake=mistake)
    answers = teacher.answer(rewards0, rewards1, seed=1)
    rational = _sigmoid(beta * differences)
    expected = (1 - mistake) * rational + mistake * (1 - rational)
    np.testing.assert_allclose(answers.probabilities, np.repeat(expected, repeats), rtol=1e-12)
    np.testing.assert_allclose(teacher.preference_probability(0.0, differences), expected, rtol=1e-12)
    assert set(np.unique(answers.labels)) == {0.0, 1.0} and answers.answered.all()
    frequencies = answers.labels.reshape(len(differences), repeats).mean(axis=1)
    # Each group's count of 1-labels is Binomial(repeats, p); Bernstein with a union bound over
    # the groups (conftest) fails with probability below 1e-6.
    assert np.all(np.abs(frequencies - expected) <= frequency_tolerance(expected, repeats))


def test_infinite_beta_is_deterministic_with_fair_ties(frequency_tolerance):
    rewards0, rewards1, difference = _pairs_with_differences([-1e-9, 1e-9, 5.0, -5.0], 100)
    answers = Teacher(beta=np.inf).answer(rewards0, rewards1, seed=0)
    np.testing.assert_array_equal(answers.labels, (difference > 0).astype(float))
    np.testing.assert_array_equal(answers.probabilities, (difference > 0).astype(float))
    again = Teacher(beta=np.inf).answer(rewards0, rewards1, seed=99)
    np.testing.assert_array_equal(again.labels, answers.labels)
    # an exact tie is a fair coin
    tie0, tie1, _ = _pairs_with_differences([0.0], 40_000)
    ties = Teacher(beta=np.inf).answer(tie0, tie1, seed=3)
    np.testing.assert_array_equal(ties.probabilities, 0.5)
    assert abs(ties.labels.mean() - 0.5) <= frequency_tolerance(np.array([0.5]), 40_000)[0]


def test_mistakes_flip_labels(frequency_tolerance):
    rewards0, rewards1, difference = _pairs_with_differences([-2.0, 1.0], 20_000)
    correct = (difference > 0).astype(float)
    always_wrong = Teacher(beta=np.inf, mistake=1.0).answer(rewards0, rewards1, seed=0)
    np.testing.assert_array_equal(always_wrong.labels, 1.0 - correct)
    sometimes = Teacher(beta=np.inf, mistake=0.3).answer(rewards0, rewards1, seed=0)
    wrong_rate = np.mean(sometimes.labels != correct)
    assert abs(wrong_rate - 0.3) <= frequency_tolerance(np.array([0.3]), correct.size)[0]
    # with a finite beta the flip mixes the two BTL outcomes
    flipped = Teacher(beta=2.0, mistake=1.0).preference_probability(0.0, 1.0)
    assert abs(flipped - (1 - _sigmoid(2.0))) < 1e-15


def test_myopia_discounts_earlier_steps():
    rng = np.random.default_rng(0)
    step_rewards = rng.standard_normal((5, 4))
    gamma = 0.6
    teacher = Teacher(myopia=gamma)
    expected = np.array([sum(gamma ** (4 - 1 - h) * row[h] for h in range(4)) for row in step_rewards])
    np.testing.assert_allclose(teacher.returns(step_rewards), expected, rtol=1e-12)
    np.testing.assert_allclose(Teacher().returns(step_rewards), step_rewards.sum(axis=1), rtol=1e-12)
    # tau0 is better overall but tau1 is better late: the myopic teacher prefers tau1.
    early, late = np.array([[1.0, 0.0]]), np.array([[0.0, 0.6]])
    assert Teacher(beta=np.inf).answer(early, late, seed=0).labels[0] == 0.0
    assert Teacher(beta=np.inf, myopia=0.5).answer(early, late, seed=0).labels[0] == 1.0
    answers = Teacher(beta=1.3, myopia=0.5).answer(early, late, seed=0)
    assert abs(answers.probabilities[0] - _sigmoid(1.3 * (0.6 - 0.5))) < 1e-15


def test_skip_and_equal_thresholds():
    # returns (R0, R1): both small -> skipped; close -> equal; otherwise a BTL label
    returns = np.array([[0.1, -0.2], [0.3, 0.29], [0.5, 0.5], [0.0, 0.5], [2.0, 2.1], [2.0, 2.3], [0.5, 0.2]])
    rewards0, rewards1 = returns[:, :1], returns[:, 1:]
    teacher = Teacher(beta=np.inf, skip=0.5, equal=0.2)
    answers = teacher.answer(rewards0, rewards1, seed=0)
    answered = np.maximum(np.abs(returns[:, 0]), np.abs(returns[:, 1])) >= 0.5
    np.testing.assert_array_equal(answers.answered, answered)
    np.testing.assert_array_equal(answers.answered, [False, False, True, True, True, True, True])
    np.testing.assert_array_equal(answers.labels, [0.5, 0.5, 0.5, 1.0, 0.5, 1.0, 0.0])
    # thresholds are strict for "equal" and inclusive for "answered": exactly 0.5 is answered,
    # a difference of exactly the equal threshold is not declared equal
    boundary = Teacher(beta=np.inf, equal=0.25).answer(np.array([[0.0]]), np.array([[0.25]]), seed=0)
    assert boundary.labels[0] == 1.0
    neutral = Teacher(beta=np.inf).answer(np.zeros((3, 1)), np.zeros((3, 1)), seed=0)
    assert neutral.answered.all()  # skip = 0 skips nothing, not even zero returns


def test_labels_are_reproducible_with_a_seed():
    rewards0, rewards1, _ = _pairs_with_differences([0.0, 0.4], 500)
    teacher = Teacher(beta=1.0, mistake=0.1)
    first = teacher.answer(rewards0, rewards1, seed=5)
    np.testing.assert_array_equal(first.labels, teacher.answer(rewards0, rewards1, seed=5).labels)
    np.testing.assert_array_equal(first.labels, teacher.answer(rewards0, rewards1, seed=np.random.default_rng(5)).labels)
    assert not np.array_equal(first.labels, teacher.answer(rewards0, rewards1, seed=6).labels)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(beta=0.0), ValueError, r"beta must be greater than 0\.0, got 0\.0"),
        (dict(beta=-1.0), ValueError, r"beta must be greater than 0\.0, got -1\.0"),
        (dict(beta=np.nan), ValueError, r"beta must be finite, got nan"),
        (dict(beta=-np.inf), ValueError, r"beta must be greater than 0\.0"),
        (dict(beta="1"), TypeError, r"beta must be a real number, got '1'"),
        (dict(mistake=-0.1), ValueError, r"mistake must be at least 0\.0, got -0\.1"),
        (dict(mistake=1.5), ValueError, r"mistake must be at most 1\.0, got 1\.5"),
        (dict(mistake=np.nan), ValueError, r"mistake must be finite"),
        (dict(myopia=0.0), ValueError, r"myopia must be greater than 0\.0, got 0\.0"),
        (dict(myopia=1.01), ValueError, r"myopia must be at most 1\.0, got 1\.01"),
        (dict(myopia=None), TypeError, r"myopia must be a real number, got None"),
        (dict(skip=-0.5), ValueError, r"skip must be at least 0\.0, got -0\.5"),
        (dict(skip=np.inf), ValueError, r"skip must be finite, got inf"),
        (dict(equal=-1.0), ValueError, r"equal must be at least 0\.0, got -1\.0"),
        (dict(equal=np.inf), ValueError, r"equal must be finite, got inf"),
        (dict(equal=True), TypeError, r"equal must be a real number, got True"),
    ],
)
def test_invalid_teacher_parameters_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        Teacher(**kwargs)


@pytest.mark.parametrize(
    "rewards0, rewards1, error, match",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), ValueError, r"step_rewards0 and step_rewards1 must have the same shape, got \(3, 2\) and \(3, 3\)"),
        (np.zeros(3), np.zeros(3), ValueError, r"step_rewards0 must have 2 axes"),
        (np.zeros((3, 2)), np.zeros((3, 2, 1)), ValueError, r"step_rewards1 must have 2 axes"),
        (np.full((1, 2), np.nan), np.zeros((1, 2)), ValueError, r"step_rewards0 must be finite"),
        (np.zeros((1, 2)), "good", TypeError, r"step_rewards1 must be an array of real numbers"),
    ],
)
def test_invalid_answer_inputs_are_named(rewards0, rewards1, error, match):
    with pytest.raises(error, match=match):
        Teacher().answer(rewards0, rewards1, seed=0)


def test_answers_from_returns_equal_answers_from_step_rewards():
    rewards0, rewards1, _ = _pairs_with_differences([-1.0, 0.0, 0.4, 2.0], 50, horizon=4)
    rewards1[:, 1] -= 0.3  # the myopic discount then changes the returns' difference
    teacher = Teacher(beta=1.5, mistake=0.1, myopia=0.8, skip=0.3, equal=0.05)
    from_steps = teacher.answer(rewards0, rewards1, seed=9)
    from_returns = teacher.answer_returns(teacher.returns(rewards0), teacher.returns(rewards1), seed=9)
    for got, expected in zip(from_returns, from_steps):
        np.testing.assert_array_equal(got, expected)
    assert 0 < from_steps.answered.sum() < len(rewards0)  # both the skip and the BTL branch ran


@pytest.mark.parametrize(
    "return0, return1, error, match",
    [
        (np.zeros(3), np.zeros(2), ValueError, r"return0 and return1 must have the same shape, got \(3,\) and \(2,\)"),
        (np.zeros((3, 1)), np.zeros(3), ValueError, r"return0 must have 1 axes"),
        (np.zeros(2), np.array([0.0, np.inf]), ValueError, r"return1 must be finite"),
    ],
)
def test_invalid_returns_are_named(return0, return1, error, match):
    with pytest.raises(error, match=match):
        Teacher().answer_returns(return0, return1, seed=0)
