"""The simulated teacher: Bradley-Terry-Luce labels with the B-Pref noise models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit

from ._validation import as_generator, as_real_array, check_real


class Answers(NamedTuple):
    """What a teacher says about a batch of trajectory pairs.

    Attributes
    ----------
    labels : ndarray of float, shape (n,)
        ``1.0`` if ``tau1`` is preferred, ``0.0`` if ``tau0`` is, ``0.5`` for "equally good".
        Entries of skipped pairs are ``0.5`` and must be dropped with ``answered``.
    probabilities : ndarray, shape (n,)
        ``Pr(y = 1)`` under the teacher's full model, given that the pair is answered and not
        declared equal.
    answered : ndarray of bool, shape (n,)
        ``False`` where the teacher skipped the pair.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    answered: np.ndarray


@dataclass(frozen=True)
class Teacher:
    """A simulated user who compares two trajectories (docs/model.md, Preferences).

    For step rewards ``r0[h], r1[h]`` of the two trajectories the teacher computes the myopic
    returns ``R_k = sum_h gamma^(H - 1 - h) r_k[h]`` (``gamma = myopia``; 1 is fully rational),
    then, in the order of B-Pref (Lee et al. 2021):

    1. **skip**: no label if ``max(|R_0|, |R_1|) < skip`` (both returns small);
    2. **equal**: label ``0.5`` if ``|R_1 - R_0| < equal``;
    3. **Bradley-Terry-Luce**: ``Pr(y = 1) = sigmoid(beta (R_1 - R_0))`` (``beta = inf``: the
       better trajectory, a fair coin on exact ties);
    4. **mistake**: the label is flipped with probability ``mistake``.

    Parameters
    ----------
    beta : float, default 1.0
        Rationality (inverse temperature), ``> 0``; ``numpy.inf`` for a deterministic teacher.
    mistake : float, default 0.0
        Flip probability in ``[0, 1]``.
    myopia : float, default 1.0
        Discount ``gamma`` in ``(0, 1]`` on earlier steps.
    skip : float, default 0.0
        Return threshold below which both trajectories are too uninformative to compare.
    equal : float, default 0.0
        Return-difference threshold below which the pair is declared equal.

    References
    ----------
    Bradley and Terry, *Rank analysis of incomplete block designs*, Biometrika 1952.
    Lee, Smith, Dragan and Abbeel, *B-Pref: Benchmarking Preference-Based Reinforcement
    Learning*, NeurIPS Datasets and Benchmarks 2021.
    """

    beta: float = 1.0
    mistake: float = 0.0
    myopia: float = 1.0
    skip: float = 0.0
    equal: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "beta", check_real("beta", self.beta, 0.0, strict_minimum=True, allow_infinite=True))
        set_(self, "mistake", check_real("mistake", self.mistake, 0.0, 1.0))
        set_(self, "myopia", check_real("myopia", self.myopia, 0.0, 1.0, strict_minimum=True))
        set_(self, "skip", check_real("skip", self.skip, 0.0))
        set_(self, "equal", check_real("equal", self.equal, 0.0))

    def returns(self, step_rewards: np.ndarray) -> np.ndarray:
        """Myopic returns ``sum_h gamma^(H - 1 - h) r[..., h]`` of step rewards ``(..., H)``."""
        horizon = step_rewards.shape[-1]
        if self.myopia == 1.0:
            return step_rewards.sum(axis=-1)
        weights = self.myopia ** np.arange(horizon - 1, -1, -1, dtype=float)
        return step_rewards @ weights

    def preference_probability(self, return0: Any, return1: Any) -> np.ndarray:
        """``Pr(y = 1)`` for (myopic) returns, including the mistake rate.

        ``(1 - mistake) sigmoid(beta (R_1 - R_0)) + mistake (1 - sigmoid(beta (R_1 - R_0)))``.
        """
        difference = np.asarray(return1, dtype=float) - np.asarray(return0, dtype=float)
        if np.isinf(self.beta):
            rational = np.where(difference > 0, 1.0, np.where(difference < 0, 0.0, 0.5))
        else:
            rational = expit(self.beta * difference)
        return (1.0 - self.mistake) * rational + self.mistake * (1.0 - rational)

    def answer(self, step_rewards0: Any, step_rewards1: Any, *, seed: Any = None) -> Answers:
        """Label a batch of pairs from their per-step rewards.

        Parameters
        ----------
        step_rewards0, step_rewards1 : array_like, shape (n, H)
            Rewards ``r[h, s_h, a_h]`` along ``tau0`` and ``tau1`` under the user's true reward.
        seed : int, SeedSequence or Generator, optional
            Source of the label noise (one uniform draw per pair, so answers are reproducible).

        Returns
        -------
        Answers
        """
        step_rewards0 = as_real_array("step_rewards0", step_rewards0, (2,))
        step_rewards1 = as_real_array("step_rewards1", step_rewards1, (2,))
        if step_rewards0.shape != step_rewards1.shape:
            raise ValueError(
                "step_rewards0 and step_rewards1 must have the same shape, got "
                f"{step_rewards0.shape} and {step_rewards1.shape}"
            )
        return self.answer_returns(self.returns(step_rewards0), self.returns(step_rewards1), seed=seed)

    def answer_returns(self, return0: Any, return1: Any, *, seed: Any = None) -> Answers:
        """Label a batch of pairs from their (myopic) returns ``R_0, R_1``.

        :meth:`answer` after :meth:`returns`; for callers that accumulate the returns while
        drawing the trajectories, as :func:`~lr_mdp_env.collect_preferences` does.

        Parameters
        ----------
        return0, return1 : array_like, shape (n,)
            ``sum_h gamma^(H - 1 - h) r[h, s_h, a_h]`` along ``tau0`` and ``tau1``.
        seed : int, SeedSequence or Generator, optional
            Source of the label noise (one uniform draw per pair).

        Returns
        -------
        Answers
        """
        return0 = as_real_array("return0", return0, (1,))
        return1 = as_real_array("return1", return1, (1,))
        if return0.shape != return1.shape:
            raise ValueError(f"return0 and return1 must have the same shape, got {return0.shape} and {return1.shape}")
        rng = as_generator(seed)
        probabilities = self.preference_probability(return0, return1)
        labels = (rng.random(return0.shape) < probabilities).astype(float)
        equal = np.abs(return1 - return0) < self.equal
        labels[equal] = 0.5
        answered = np.maximum(np.abs(return0), np.abs(return1)) >= self.skip
        labels[~answered] = 0.5
        return Answers(labels, probabilities, answered)
