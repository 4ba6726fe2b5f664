"""Trajectory-preference feedback on top of :class:`TabularPreferenceEnv` (docs/model.md, Environments)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, SupportsInt

import gymnasium as gym
import numpy as np

from ..teacher import Teacher
from .tabular import TabularPreferenceEnv

#: Episode id that stands for the fixed reference trajectory in ``info["preference"]["episodes"]``.
REFERENCE_EPISODE = -1


class PreferenceFeedback(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds a simulated teacher's preference between consecutive episodes to the final ``info``.

    The wrapper records each episode's states and actions. When an episode terminates it is
    compared with the previous complete episode (``tau0``), or with a fixed ``reference``
    trajectory, by ``teacher`` on the step rewards ``r_i[h, s_h, a_h]`` of the episode's user ``i``
    (the true rewards, whether or not the environment shows them). The final step's info gets::

        info["preference"] = {
            "label": float,        # 1.0: this episode (tau1) preferred, 0.0: tau0, 0.5: equal/skipped
            "probability": float,  # Pr(label = 1) = teacher.preference_probability(R(tau0), R(tau1))
            "episodes": (tau0_id, tau1_id),  # tau0_id = REFERENCE_EPISODE (-1) for the reference
            "answered": bool,      # False when the teacher skipped the pair
            "returns": (float, float),  # the teacher's (myopic) returns of tau0 and tau1
        }

    The first episode has nothing to be compared with unless a reference is given: its final info
    has no ``"preference"`` key. Episodes are numbered from 0 by :meth:`reset`; a reset with a
    ``seed`` starts a fresh sequence (ids from 0, no previous episode), so a seeded run of
    episodes gives the same labels every time. An episode abandoned by a reset before it ends is
    neither labelled nor used as ``tau0``. Label noise is drawn from the environment's
    ``np_random``: one uniform per compared pair.

    Parameters
    ----------
    env : gymnasium.Env
        A :class:`TabularPreferenceEnv`, possibly wrapped (``env.unwrapped`` must be one).
    teacher : Teacher or mapping, optional
        Default ``Teacher()``: Bradley-Terry with ``beta = 1``, no noise. A mapping is the
        keyword arguments of a :class:`Teacher` (``{"beta": 2.0, "mistake": 0.1}``).
    reference : (states, actions), optional
        Integer arrays of shape ``(H,)`` (or ``(1, H)``): every episode is compared with this
        trajectory instead of with the previous episode.

    Notes
    -----
    The wrapper records its arguments (``gymnasium.utils.RecordConstructorArgs``) as JSON values:
    the teacher's parameters and the reference as lists. ``env.spec`` of a wrapped ``gym.make``
    environment therefore lists it, ``gym.make(env.spec)`` rebuilds the same stack, and
    ``env.spec.to_json()`` round-trips.

    Attributes
    ----------
    last_trajectory : (states, actions) or None
        The last complete episode, as two ``(H,)`` arrays.
    """

    def __init__(self, env: gym.Env, teacher: Teacher | Mapping[str, Any] | None = None, reference: Any = None) -> None:
        gym.Wrapper.__init__(self, env)
        base = env.unwrapped
        if not isinstance(base, TabularPreferenceEnv):
            raise TypeError(
                f"env must be a TabularPreferenceEnv (possibly wrapped), got {type(base).__name__}"
            )
        if teacher is None:
            teacher = Teacher()
        elif isinstance(teacher, Mapping):
            teacher = Teacher(**teacher)
        elif not isinstance(teacher, Teacher):
            raise TypeError(f"teacher must be a lr_mdp_env.Teacher or its arguments, got {type(teacher).__name__}")
        self.teacher = teacher
        self._base = base
        mdp = base.params.mdp
        self.reference: tuple[np.ndarray, np.ndarray] | None = None
        if reference is not None:
            if not isinstance(reference, (tuple, list)) or len(reference) != 2:
                raise TypeError("reference must be a pair (states, actions) of integer arrays of shape (H,)")
            states, actions = (np.atleast_2d(np.asarray(part)) for part in reference)
            states, actions = mdp.check_trajectories(states, actions, name="reference ")
            if states.shape[0] != 1:
                raise ValueError(f"reference must hold one trajectory, got {states.shape[0]}")
            self.reference = (states[0].copy(), actions[0].copy())
        gym.utils.RecordConstructorArgs.__init__(
            self,
            teacher=asdict(teacher),
            reference=None if self.reference is None else [part.tolist() for part in self.reference],
        )
        self._horizon = mdp.horizon
        self._start_sequence()

    def _start_sequence(self) -> None:
        self._next_episode = 0
        self._episode = -1
        self._previous: tuple[int, np.ndarray, np.ndarray] | None = None
        self._states: list[int] = []
        self._actions: list[int] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        observation, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._start_sequence()
        self._episode = self._next_episode
        self._next_episode += 1
        self._states = [self._base._state.state]
        self._actions = []
        return observation, info

    def step(self, action: SupportsInt) -> tuple[Any, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        # The base environment validated the action and the step counter: record what it did.
        self._actions.append(int(action))
        if terminated:
            states = np.array(self._states, dtype=np.int64)
            actions = np.array(self._actions, dtype=np.int64)
            user = self._base._state.user
            if self.reference is not None:
                info["preference"] = self._compare(user, REFERENCE_EPISODE, *self.reference, states, actions)
            elif self._previous is not None:
                info["preference"] = self._compare(user, *self._previous, states, actions)
            self._previous = (self._episode, states, actions)
        else:
            self._states.append(self._base._state.state)
        return observation, reward, terminated, truncated, info

    def _compare(
        self, user: int, earlier: int, states0: np.ndarray, actions0: np.ndarray,
        states1: np.ndarray, actions1: np.ndarray,
    ) -> dict[str, Any]:
        table = self._base.params.reward_table[user]
        steps = np.arange(self._horizon)
        rewards = np.stack([table[steps, states0, actions0], table[steps, states1, actions1]])
        answers = self.teacher.answer(rewards[:1], rewards[1:], seed=self._base.np_random)
        returns = self.teacher.returns(rewards)
        return {
            "label": float(answers.labels[0]),
            "probability": float(answers.probabilities[0]),
            "episodes": (earlier, self._episode),
            "answered": bool(answers.answered[0]),
            "returns": (float(returns[0]), float(returns[1])),
        }

    @property
    def last_trajectory(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._previous is None:
            return None
        _, states, actions = self._previous
        return states.copy(), actions.copy()

    @property
    def episode(self) -> int:
        """Id of the current (or last) episode; ``-1`` before the first reset."""
        return self._episode


__all__ = ["REFERENCE_EPISODE", "PreferenceFeedback"]
