"""A numpy-batched vector environment: many users' episodes stepped with array operations."""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .._validation import check_int
from ..layouts import Layout
from ..mdp import TabularMDP
from ..sampling import CategoricalSampler, transition_sampler
from .tabular import (
    NOT_STARTED,
    LazyLayout,
    PreferenceEnvParams,
    TabularPreferenceEnv,
    check_observation_mode,
    check_render_mode,
    check_user,
    check_users,
    describe_state,
    observation_space,
)
from .rendering import render_frame


def _autoreset_mode(value: Any) -> AutoresetMode:
    if isinstance(value, AutoresetMode):
        return value
    try:
        return AutoresetMode(value)
    except ValueError:
        names = [mode.value for mode in AutoresetMode]
        raise ValueError(f"autoreset_mode must be an AutoresetMode or one of {names}, got {value!r}") from None


class TabularPreferenceVectorEnv(VectorEnv):
    """``num_envs`` copies of :class:`TabularPreferenceEnv` stepped together with numpy.

    Sub-environment ``k`` follows user ``users[k]`` (default ``k % N``). Every call to
    :meth:`step` computes the rewards, next states, terminations and observations of all
    sub-environments with a few array operations: one uniform per sub-environment, next states by
    :class:`lr_mdp_env.sampling.CategoricalSampler`. The law of each sub-environment's episodes is
    that of :class:`TabularPreferenceEnv` (same rewards, same observation encoding, same final
    state ``s_H``).

    Autoreset follows Gymnasium 1.x (``metadata["autoreset_mode"]``):

    - ``NEXT_STEP`` (default): the step after a sub-environment terminates resets it; that step
      ignores its action and returns its first observation with reward 0 and
      ``terminated=False``.
    - ``SAME_STEP``: a terminating sub-environment is reset within the step; the returned
      observation is the new episode's first, the last one is in ``info["final_obs"]`` and its
      info in ``info["final_info"]`` (masks ``info["_final_obs"]``, ``info["_final_info"]``).
    - ``DISABLED``: no automatic reset; reset ended sub-environments with
      ``reset(options={"reset_mask": mask})``.

    Everything a step or reset returns is what :class:`gymnasium.vector.SyncVectorEnv` returns
    for copies of ``gym.make`` of the same model: the same arrays, ``info`` keys, masks and
    types (``info["final_obs"]`` holds each copy's own observation, a Python ``int`` for
    discrete observations), and the same errors for malformed actions or reset masks.

    Parameters
    ----------
    mdp : TabularMDP or PreferenceEnvParams
    rewards : LowRankRewards, ContextualRewards or array_like, optional
        As for :class:`TabularPreferenceEnv` (omit with ``PreferenceEnvParams``).
    num_envs : int, default 1
    users : sequence of int, optional
        One user per sub-environment; default ``k % N``.
    reward_visible : bool, optional
        Default ``True`` (or the value in ``PreferenceEnvParams``).
    observation : {"discrete", "multi_discrete"}, default "discrete"
    autoreset_mode : AutoresetMode or str, default AutoresetMode.NEXT_STEP
    max_episode_steps : int, optional
        Truncate an episode after this many steps (``truncated=True``), as a ``TimeLimit``
        wrapper around each copy of ``SyncVectorEnv`` does; default none. The registered vector
        entry points pass ``H``, or ``gym.make_vec``'s ``max_episode_steps`` if it is earlier:
        the copies of ``gym.make`` are truncated there (the last step of a full episode is both
        terminated and truncated).
    render_mode : {None, "ansi", "rgb_array"}, default None
        :meth:`render` returns one rendering per sub-environment, as ``SyncVectorEnv`` does
        (frames as :class:`TabularPreferenceEnv` draws them).
    layout : GridLayout, GraphLayout, TableLayout or callable, optional
        How frames place the states (:mod:`lr_mdp_env.layouts`), or a function returning it,
        called when first needed; default the states x actions table.

    Notes
    -----
    ``reset(options=...)`` accepts ``"users"`` (new users for all sub-environments, kept for later
    episodes) and ``"reset_mask"`` (a boolean numpy array with at least one ``True``: reset only
    those sub-environments). ``info`` holds the arrays ``"user"``, ``"time"`` and ``"state"``
    with their masks ``"_user"``, ``"_time"``, ``"_state"``: true for the sub-environments that
    reported (all of them after a step, those reset after a partial reset, whose other entries
    are 0).
    """

    metadata = {"render_modes": list(TabularPreferenceEnv.metadata["render_modes"]),
                "render_fps": TabularPreferenceEnv.metadata["render_fps"],
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        mdp: TabularMDP | PreferenceEnvParams,
        rewards: Any = None,
        num_envs: int = 1,
        *,
        users: Any = None,
        reward_visible: bool | None = None,
        observation: str = "discrete",
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        layout: Layout | Callable[[], Layout | None] | None = None,
    ) -> None:
        params = PreferenceEnvParams.resolve(mdp, rewards, reward_visible)
        self.params = params
        self.num_envs = check_int("num_envs", num_envs, minimum=1)
        self.observation_mode = check_observation_mode(observation)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = check_render_mode(render_mode, self.metadata["render_modes"])
        self._layout = LazyLayout(layout, params.mdp)
        self.max_episode_steps = (
            None if max_episode_steps is None else check_int("max_episode_steps", max_episode_steps, minimum=1)
        )
        mdp = params.mdp
        self.single_action_space = spaces.Discrete(mdp.n_actions)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(mdp, self.observation_mode)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        if users is None:
            users = np.arange(self.num_envs) % params.n_users
        self.users = check_users(params, users, self.num_envs)
        self._horizon = mdp.horizon
        self._n_states = mdp.n_states
        self._n_actions = mdp.n_actions
        self._stage_rows = 0 if mdp.stationary_transitions else mdp.n_states * mdp.n_actions
        self._flat_rewards = params.reward_table.reshape(params.n_users, -1)
        self._transitions = transition_sampler(mdp)
        self._initial = CategoricalSampler(mdp.initial_distribution[None])
        self.times = np.zeros(self.num_envs, dtype=np.int64)
        self.states = np.zeros(self.num_envs, dtype=np.int64)
        # Last (state, action) of each copy, for frames (kept only when drawing them); -1 where a
        # copy has not stepped since its reset.
        self._played = np.full((self.num_envs, 2), -1, dtype=np.int64)
        self._records_played = self.render_mode == "rgb_array"
        self._started = False
        self._ended = np.zeros(self.num_envs, dtype=bool)

    # -- Gymnasium API ------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Reset all sub-environments (or those of ``options["reset_mask"]``); ``s_0 ~ rho``."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"users", "reset_mask"}
        if unknown:
            raise ValueError(f"options has unknown keys {sorted(unknown)}; known: 'users', 'reset_mask'")
        if "users" in options:
            self.users = check_users(self.params, options["users"], self.num_envs, "options['users']")
        mask = np.ones(self.num_envs, dtype=bool)
        if "reset_mask" in options:
            mask = self._check_reset_mask(options["reset_mask"])
            if not self._started and not mask.all():
                raise ResetNeeded("the first reset must reset every sub-environment (no reset_mask)")
        uniforms = self.np_random.random(self.num_envs)
        self._restart(mask, uniforms)
        self._started = True
        return self._observations(), self._info(mask)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-environment; see the class docstring for autoreset."""
        if not self._started:
            raise ResetNeeded("Cannot call step() before reset(): call envs.reset() first")
        actions = self._check_actions(actions)
        mode = self.autoreset_mode
        ended = self._ended
        if mode is AutoresetMode.DISABLED and ended.any():
            raise ResetNeeded(
                f"sub-environments {np.flatnonzero(ended).tolist()} ended their episodes and "
                "autoreset is disabled: reset them with reset(options={'reset_mask': mask})"
            )
        uniforms = self.np_random.random((2 if mode is AutoresetMode.SAME_STEP else 1, self.num_envs))
        if mode is AutoresetMode.NEXT_STEP and ended.any():
            moving = ~ended
            rewards = np.zeros(self.num_envs)
            rewards[moving] = self._advance(moving, actions, uniforms[0])
            self._restart(ended, uniforms[0])
        else:
            moving = np.ones(self.num_envs, dtype=bool)
            rewards = self._advance(moving, actions, uniforms[0])
        terminated = moving & (self.times == self._horizon)
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_episode_steps is not None:
            # Steps since the reset: the step counter, since every episode starts at h = 0.
            truncated = moving & (self.times >= self.max_episode_steps)
        ended = terminated | truncated
        self._ended = ended
        every = np.ones(self.num_envs, dtype=bool)
        info = self._info(every)
        if mode is AutoresetMode.SAME_STEP and ended.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            # Gymnasium's layout: an object array holding each finished copy's own observation,
            # of the single environment's type. The loop only packages the few finished copies
            # (the stepping is vectorised).
            observations = self._observations()
            for index in np.flatnonzero(ended):
                final_obs[index] = self._single_observation(observations[index])
            final_info = self._info(ended)
            self._restart(ended, uniforms[1])
            self._ended = np.zeros(self.num_envs, dtype=bool)
            info = self._info(every)
            info.update(final_obs=final_obs, _final_obs=ended.copy(),
                        final_info=final_info, _final_info=ended.copy())
        return self._observations(), rewards, terminated, truncated, info

    def render(self) -> tuple[Any, ...] | None:
        """One rendering per sub-environment: a frame each (``"rgb_array"``) or a line of text."""
        if self.render_mode is None:
            gym.logger.warn("render() was called without a render_mode; pass render_mode='rgb_array' or 'ansi'")
            return None
        if self.render_mode == "ansi":
            if not self._started:
                return tuple(NOT_STARTED for _ in range(self.num_envs))
            return tuple(
                describe_state(int(user), int(time), self._horizon, int(state))
                for user, time, state in zip(self.users, self.times, self.states)
            )
        start = int(np.argmax(self.params.mdp.initial_distribution))
        frames = []
        # Drawing is per frame; the loop runs once per copy, only when rendering.
        for k in range(self.num_envs):
            played = None if self._played[k, 0] < 0 else (int(self._played[k, 0]), int(self._played[k, 1]))
            frames.append(render_frame(
                self.layout, self.params.reward_table[self.users[k]], time=int(self.times[k]),
                state=int(self.states[k]) if self._started else start, played=played,
            ))
        return tuple(frames)

    # -- array mechanics ----------------------------------------------------------------------

    def _restart(self, mask: np.ndarray, uniforms: np.ndarray) -> None:
        count = int(mask.sum())
        self.times[mask] = 0
        self._played[mask] = -1
        self.states[mask] = self._initial.sample(np.zeros(count, dtype=np.int64), uniforms[mask])
        self._ended = self._ended & ~mask

    def _advance(self, mask: np.ndarray, actions: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Step the sub-environments of ``mask``; return their rewards."""
        times, states, chosen = self.times[mask], self.states[mask], actions[mask]
        if self._records_played:
            self._played[mask, 0] = states
            self._played[mask, 1] = chosen
        cells = states * self._n_actions + chosen
        if self.params.reward_visible:
            rewards = self._flat_rewards[self.users[mask], times * (self._n_states * self._n_actions) + cells]
        else:
            rewards = np.zeros(times.size)
        self.states[mask] = self._transitions.sample(times * self._stage_rows + cells, uniforms[mask])
        self.times[mask] = times + 1
        return rewards

    def _check_reset_mask(self, mask: Any) -> np.ndarray:
        # The checks and exception types of SyncVectorEnv, so code written for one runs on the other.
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"options['reset_mask'] must be a numpy array, got {type(mask).__name__}")
        if mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must have shape ({self.num_envs},), got {mask.shape}")
        if mask.dtype != np.bool_:
            raise TypeError(f"options['reset_mask'] must have dtype bool, got {mask.dtype}")
        if not mask.any():
            raise ValueError("options['reset_mask'] must reset at least one sub-environment, got all False")
        return mask.copy()

    def _check_actions(self, actions: Any) -> np.ndarray:
        array = np.asarray(actions)
        if array.dtype.kind not in "iu" or array.ndim != 1:
            raise TypeError(
                f"actions must be a 1-d array of integers, one per sub-environment, got {actions!r}"
            )
        if array.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {array.shape}")
        if array.size and (array.min() < 0 or array.max() >= self._n_actions):
            raise ValueError(f"actions must lie in 0..{self._n_actions - 1}, got {array.tolist()}")
        return array.astype(np.int64, copy=False)

    def _observations(self) -> np.ndarray:
        if self.observation_mode == "discrete":
            return self.times * self._n_states + self.states
        return np.stack([self.times, self.states], axis=1)

    def _single_observation(self, row: np.ndarray) -> Any:
        """One sub-environment's observation as the single environment returns it."""
        return int(row) if self.observation_mode == "discrete" else row.copy()

    def _info(self, reported: np.ndarray) -> dict[str, np.ndarray]:
        """Info arrays of the sub-environments that ``reported``; 0 elsewhere (as SyncVectorEnv)."""
        info: dict[str, np.ndarray] = {}
        for key, values in (("user", self.users), ("time", self.times), ("state", self.states)):
            info[key] = np.where(reported, values, 0)
            info[f"_{key}"] = reported.copy()
        return info

    @property
    def mdp(self) -> TabularMDP:
        return self.params.mdp

    @property
    def layout(self) -> Layout:
        """Where frames place the states (:mod:`lr_mdp_env.layouts`), made on first use."""
        return self._layout.get()

    @property
    def n_users(self) -> int:
        return self.params.n_users


def vector_users(num_envs: int, n_users: int, user: Any = None, users: Any = None) -> Any:
    """Users of the sub-environments from the factory arguments: ``users``, one ``user`` or ``k % N``."""
    if user is not None and users is not None:
        raise ValueError("give either user (the same user everywhere) or users (one per sub-environment), not both")
    if user is not None:
        return np.full(num_envs, check_user(user, n_users))
    return users


__all__ = ["TabularPreferenceVectorEnv", "vector_users"]
