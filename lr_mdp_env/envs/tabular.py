"""A Gymnasium environment for one user of a tabular MDP with personalized rewards.

The model is split as in gymnax: :class:`PreferenceEnvParams` holds everything that does not
change during a run (the MDP, every user's reward table, whether rewards are shown), and
:class:`PreferenceEnvState` the simulation state (user, step, state). :class:`TabularPreferenceEnv`
owns one of each plus ``np_random``.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Any, Callable, SupportsInt

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from .._validation import as_real_array, frozen
from ..dynamic_programming import check_reward
from ..layouts import Layout, check_layout
from ..mdp import TabularMDP
from ..rewards import ContextualRewards, LowRankRewards, reward_matrix
from ..sampling import closed_cdf
from .rendering import render_frame

#: Observation encodings accepted by the environments.
OBSERVATION_MODES = ("discrete", "multi_discrete")


def reward_table_of(mdp: TabularMDP, rewards: Any) -> np.ndarray:
    """Every user's reward table ``r_i[h, s, a]``, shape ``(N, H, S, A)``.

    Parameters
    ----------
    mdp : TabularMDP
    rewards : LowRankRewards, ContextualRewards or array_like
        A reward structure (its users), ``Theta`` of shape ``(d, N)`` (or ``(d,)`` for one user)
        as in docs/model.md, Users, or reward tables ``(N, H, S, A)`` (or ``(H, S, A)``) given directly.

    Returns
    -------
    ndarray, shape (N, H, S, A)

    Raises
    ------
    ValueError
        If the shapes do not match ``mdp`` (the message names ``rewards``).
    """
    if isinstance(rewards, (LowRankRewards, ContextualRewards)):
        return mdp.reward(reward_matrix(rewards, mdp.n_features).T)
    array = as_real_array("rewards", rewards, (1, 2, 3, 4))
    if array.ndim <= 2:
        return mdp.reward(reward_matrix(array, mdp.n_features).T)
    table = check_reward(mdp, array, name="rewards")
    return table[None] if table.ndim == 3 else table


@dataclass(frozen=True, eq=False)
class PreferenceEnvParams:
    """The fixed parameters of the environments: model, users' rewards, reward visibility.

    Build it with :meth:`create`; instances are immutable and may be shared by many
    environments (and pickled with them).

    Attributes
    ----------
    mdp : TabularMDP
    reward_table : ndarray, shape (N, H, S, A), read-only
        ``r_i[h, s, a]`` of every user ``i``.
    reward_visible : bool
        Whether ``step`` returns the reward (``False``: always ``0.0``, the RLHF setting).
    rewards : LowRankRewards, ContextualRewards, ndarray or None
        The reward structure the table came from, kept as ground truth for evaluation.
    transition_cdf : ndarray, shape (S A, S) or (H S A, S), read-only
        Closed cumulative rows of the transitions, indexed by ``s A + a`` (stationary) or
        ``h S A + s A + a``.
    initial_cdf : ndarray, shape (S,), read-only
    """

    mdp: TabularMDP
    reward_table: np.ndarray
    reward_visible: bool = True
    rewards: Any = field(default=None, repr=False)
    transition_cdf: np.ndarray = field(init=False, repr=False)
    initial_cdf: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP, got {type(self.mdp).__name__}")
        if not isinstance(self.reward_visible, (bool, np.bool_)):
            raise TypeError(f"reward_visible must be a bool, got {self.reward_visible!r}")
        table = check_reward(self.mdp, self.reward_table, name="reward_table")
        if table.ndim != 4:
            raise ValueError(f"reward_table must have shape (N, H, S, A), got {table.shape}")
        if table.shape[0] == 0:
            raise ValueError("reward_table must hold at least one user, got N = 0")
        set_ = object.__setattr__
        set_(self, "reward_table", frozen(np.ascontiguousarray(table)))
        set_(self, "reward_visible", bool(self.reward_visible))
        mdp = self.mdp
        rows = mdp.transitions[0] if mdp.stationary_transitions else mdp.transitions
        set_(self, "transition_cdf", frozen(closed_cdf(rows.reshape(-1, mdp.n_states))))
        set_(self, "initial_cdf", frozen(closed_cdf(mdp.initial_distribution[None])[0]))

    @classmethod
    def create(cls, mdp: TabularMDP, rewards: Any, *, reward_visible: bool = True) -> "PreferenceEnvParams":
        """Parameters for ``mdp`` and a reward structure, ``Theta`` or reward tables.

        Parameters
        ----------
        mdp : TabularMDP
        rewards : LowRankRewards, ContextualRewards or array_like
            See :func:`reward_table_of`.
        reward_visible : bool, default True

        Returns
        -------
        PreferenceEnvParams
        """
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
        return cls(mdp, reward_table_of(mdp, rewards), reward_visible, rewards)

    @classmethod
    def resolve(cls, mdp: Any, rewards: Any, reward_visible: bool | None) -> "PreferenceEnvParams":
        """The parameters an environment constructor was given: ready-made parameters (with an
        optional change of ``reward_visible``), or an MDP and a reward structure."""
        if isinstance(mdp, PreferenceEnvParams):
            if rewards is not None:
                raise ValueError("rewards must be None when the first argument is PreferenceEnvParams")
            keep = reward_visible is None or reward_visible is mdp.reward_visible
            return mdp if keep else replace(mdp, reward_visible=reward_visible)
        if rewards is None:
            raise TypeError(
                "rewards is required: a LowRankRewards, ContextualRewards, Theta (d, N) or "
                "reward tables (N, H, S, A)"
            )
        return cls.create(mdp, rewards, reward_visible=True if reward_visible is None else reward_visible)

    @property
    def n_users(self) -> int:
        return self.reward_table.shape[0]

    def __getstate__(self) -> dict:
        # The cumulative tables are derived: rebuild them (read-only) instead of storing them.
        return {"mdp": self.mdp, "reward_table": self.reward_table,
                "reward_visible": self.reward_visible, "rewards": self.rewards}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.__post_init__()


@dataclass(slots=True)
class PreferenceEnvState:
    """The simulation state of one environment: whose episode, which step, which state.

    Attributes
    ----------
    user : int
        Index of the user whose reward is returned.
    time : int
        Step ``h`` of the next action, ``0..H``; ``H`` once the episode has ended.
    state : int
        Current state ``s_h``.
    """

    user: int
    time: int
    state: int


def check_observation_mode(observation: Any) -> str:
    """Validate the ``observation`` argument (one of :data:`OBSERVATION_MODES`)."""
    if not isinstance(observation, str) or observation not in OBSERVATION_MODES:
        raise ValueError(f"observation must be one of {OBSERVATION_MODES}, got {observation!r}")
    return observation


def observation_space(mdp: TabularMDP, observation: str) -> spaces.Space:
    """``Discrete((H + 1) S)`` (index ``h S + s``) or ``MultiDiscrete([H + 1, S])``."""
    if observation == "discrete":
        return spaces.Discrete((mdp.horizon + 1) * mdp.n_states)
    return spaces.MultiDiscrete([mdp.horizon + 1, mdp.n_states], dtype=np.int64)


def check_render_mode(render_mode: Any, render_modes: list[str]) -> str | None:
    """Validate a ``render_mode`` against the modes an environment renders natively."""
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be None or one of {render_modes}, got {render_mode!r}")
    return render_mode


#: What ``render_mode="ansi"`` shows before the first reset.
NOT_STARTED = "not started (call reset())"


def describe_state(user: int, time: int, horizon: int, state: int) -> str:
    """The one-line text rendering (``render_mode="ansi"``) of an environment's state."""
    return f"user {user}, step {time}/{horizon}, state {state}"


def check_user(user: Any, n_users: int, name: str = "user") -> int:
    """Validate a user index against ``n_users``."""
    if isinstance(user, bool) or not isinstance(user, (int, np.integer)):
        raise TypeError(f"{name} must be an integer user index, got {user!r} ({type(user).__name__})")
    if not 0 <= user < n_users:
        raise ValueError(f"{name}={int(user)} is out of range: there are {n_users} users (0..{n_users - 1})")
    return int(user)


class TabularPreferenceEnv(gym.Env):
    """One user of a finite-horizon tabular MDP whose users have personalized rewards.

    ## Description
    An episode is a trajectory ``s_0, a_0, ..., s_{H-1}, a_{H-1}`` of a :class:`TabularMDP`
    (docs/model.md, MDP). The reward of step ``h`` is the current user's reward
    ``r_i[h, s_h, a_h] = phi[h, s_h, a_h] . theta_i``; users share a low-rank reward structure
    (:func:`lr_mdp_env.low_rank_rewards`, :func:`lr_mdp_env.contextual_rewards`). With
    ``reward_visible=False`` the reward is hidden and the only feedback is trajectory
    preferences, added by :class:`lr_mdp_env.envs.PreferenceFeedback` (the RLHF setting).

    ## Action Space
    ``Discrete(A)``: the action's index in the MDP.

    ## Observation Space
    Time is part of the observation, since the horizon is finite. With
    ``observation="discrete"``, ``Discrete((H + 1) S)`` with index ``h S + s``; with
    ``observation="multi_discrete"``, ``MultiDiscrete([H + 1, S])`` with value ``[h, s]``. Both are
    accepted by Stable-Baselines3. The last observation of an episode has ``h = H``; its state
    ``s_H`` is drawn from ``P[H - 1, s_{H-1}, a_{H-1}]`` and carries no reward.
    :meth:`encode` and :meth:`decode` convert between observations and ``(h, s)``.

    ## Starting State
    ``s_0`` is drawn from the MDP's initial distribution ``rho`` with ``self.np_random``; the
    user is the constructor's ``user``, or ``options["user"]`` of :meth:`reset` (which stays the
    user of later episodes).

    ## Rewards
    ``r_i[h, s_h, a_h]``, the current user's true reward of the step, or ``0.0`` when
    ``reward_visible=False``.

    ## Episode End
    ``terminated=True`` after the ``H``-th step. The environment itself never truncates; the
    registered ids' entry points wrap it in ``TimeLimit(H)`` of its own horizon (whatever
    ``horizon`` is given), which marks the same last step ``truncated`` and makes
    ``gym.make(...).spec.max_episode_steps`` that ``H``. Stepping after the end, or before the
    first :meth:`reset`, raises :class:`gymnasium.error.ResetNeeded`.

    ## Information
    ``reset`` and ``step`` return ``{"user": i, "time": h, "state": s}`` for the new state.

    ## Arguments
    ```python
    import gymnasium as gym
    import lr_mdp_env
    env = gym.make("lr_mdp_env/RandomLowRank-v0", n_states=10, n_actions=3, horizon=5,
                   n_users=8, rank=2, model_seed=0, user=3, reward_visible=True,
                   observation="discrete")
    ```
    or directly ``TabularPreferenceEnv(mdp, rewards, user=0, reward_visible=True,
    observation="discrete")`` with ``rewards`` a :class:`~lr_mdp_env.LowRankRewards`,
    :class:`~lr_mdp_env.ContextualRewards`, ``Theta`` ``(d, N)`` or reward tables ``(N, H, S, A)``.

    ## Rendering
    ``render_mode="rgb_array"`` draws the current user's world at the current step
    (:func:`lr_mdp_env.envs.rendering.render_frame`): placed by ``layout``
    (:mod:`lr_mdp_env.layouts`, or a function returning one, called when first needed; the
    registered grid, graph and chain ids pass theirs, the default is the states x actions
    table), coloured by the user's reward, with the agent's state and the step. The same layout
    is ``env.layout``, for the figures of :mod:`lr_mdp_env.plotting`. ``render_mode="ansi"`` renders a one-line text description. ``gym.make(...,
    render_mode="human")`` shows the frames in a window through Gymnasium's ``HumanRendering``
    (which needs pygame and a display); ``"rgb_array_list"`` and ``"ansi_list"`` collect them.

    ## Version History
    - v0: Initial release.

    Each step draws one uniform from ``self.np_random`` and finds the next state by bisection in
    a precomputed cumulative row (``O(log S)``), so stepping in a Python loop is as cheap as a
    tabular environment can be.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        mdp: TabularMDP | PreferenceEnvParams,
        rewards: Any = None,
        *,
        user: int = 0,
        reward_visible: bool | None = None,
        observation: str = "discrete",
        render_mode: str | None = None,
        layout: Layout | Callable[[], Layout | None] | None = None,
    ) -> None:
        params = PreferenceEnvParams.resolve(mdp, rewards, reward_visible)
        self.params = params
        self.observation_mode = check_observation_mode(observation)
        self.render_mode = check_render_mode(render_mode, self.metadata["render_modes"])
        self._layout = LazyLayout(layout, params.mdp)
        mdp = params.mdp
        self.action_space = spaces.Discrete(mdp.n_actions)
        self.observation_space = observation_space(mdp, self.observation_mode)
        self._default_user = check_user(user, params.n_users)
        self._horizon = mdp.horizon
        self._n_states = mdp.n_states
        self._n_actions = mdp.n_actions
        self._cells = mdp.n_states * mdp.n_actions
        self._stage_rows = 0 if mdp.stationary_transitions else self._cells
        self._reward_visible = params.reward_visible
        self._initial_cdf = params.initial_cdf.tolist()
        self._state: PreferenceEnvState | None = None
        self._played: tuple[int, int] | None = None
        self._reset_caches()

    def _reset_caches(self) -> None:
        # Python lists make the per-step lookups cheaper than indexing numpy scalars; cumulative rows are
        # converted on first use, so a large stage-dependent MDP costs only the rows visited.
        self._cdf_rows: list[list[float] | None] = [None] * self.params.transition_cdf.shape[0]
        self._reward_user = -1
        self._user_rewards: list[float] = []

    def _select_user(self, user: int) -> None:
        if user != self._reward_user:
            self._user_rewards = self.params.reward_table[user].ravel().tolist()
            self._reward_user = user

    # -- Gymnasium API ------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Start an episode: ``s_0 ~ rho``; ``options={"user": i}`` switches the user."""
        super().reset(seed=seed)
        if options:
            unknown = set(options) - {"user"}
            if unknown:
                raise ValueError(f"options has unknown keys {sorted(unknown)}; the only option is 'user'")
            if "user" in options:
                self._default_user = check_user(options["user"], self.params.n_users, "options['user']")
        user = self._default_user
        self._select_user(user)
        start = bisect_right(self._initial_cdf, self.np_random.random())
        self._state = PreferenceEnvState(user, 0, start)
        self._played = None
        return self._observation(0, start), {"user": user, "time": 0, "state": start}

    def step(self, action: SupportsInt) -> tuple[Any, float, bool, bool, dict]:
        """Take action ``a_h``: reward ``r_i[h, s_h, a_h]`` and ``s_{h+1} ~ P[h, s_h, a_h]``."""
        state = self._state
        if state is None:
            raise ResetNeeded("Cannot call step() before reset(): call env.reset() to start an episode")
        time = state.time
        if time >= self._horizon:
            raise ResetNeeded(
                f"The episode ended after H={self._horizon} steps (terminated=True); call env.reset() "
                "before stepping again"
            )
        try:
            action = operator.index(action)
        except TypeError:
            raise TypeError(f"action must be an integer in 0..{self._n_actions - 1}, got {action!r}") from None
        if not 0 <= action < self._n_actions:
            raise ValueError(f"action={action} is outside the action space 0..{self._n_actions - 1}")
        current = state.state
        cell = current * self._n_actions + action
        reward = self._user_rewards[time * self._cells + cell] if self._reward_visible else 0.0
        row = time * self._stage_rows + cell
        cdf = self._cdf_rows[row]
        if cdf is None:
            cdf = self._cdf_rows[row] = self.params.transition_cdf[row].tolist()
        following = bisect_right(cdf, self.np_random.random())
        time += 1
        state.time = time
        state.state = following
        self._played = (current, action)
        info = {"user": state.user, "time": time, "state": following}
        return self._observation(time, following), reward, time == self._horizon, False, info

    def render(self) -> str | np.ndarray | None:
        """The current state as a frame (``"rgb_array"``) or a line of text (``"ansi"``).

        Before the first :meth:`reset` the frame shows the initial step of the default user
        in the most likely initial state.
        """
        if self.render_mode is None:
            gym.logger.warn("render() was called without a render_mode; pass render_mode='rgb_array' or 'ansi'")
            return None
        state = self._state
        if self.render_mode == "ansi":
            return NOT_STARTED if state is None else describe_state(state.user, state.time, self._horizon, state.state)
        if state is None:
            state = PreferenceEnvState(self._default_user, 0, int(np.argmax(self.params.mdp.initial_distribution)))
        return render_frame(
            self.layout, self.params.reward_table[state.user], time=state.time, state=state.state,
            played=self._played,
        )

    # -- helpers ------------------------------------------------------------------------------

    def _observation(self, time: int, state: int) -> Any:
        if self.observation_mode == "discrete":
            return time * self._n_states + state
        return np.array([time, state], dtype=np.int64)

    def encode(self, time: Any, state: Any) -> Any:
        """Observation(s) of step(s) ``time`` and state(s) ``state`` (arrays broadcast)."""
        time, state = np.asarray(time), np.asarray(state)
        if self.observation_mode == "discrete":
            return time * self._n_states + state
        return np.stack(np.broadcast_arrays(time, state), axis=-1).astype(np.int64)

    def decode(self, observation: Any) -> tuple[Any, Any]:
        """``(time, state)`` of observation(s): the inverse of :meth:`encode`."""
        observation = np.asarray(observation)
        if self.observation_mode == "discrete":
            return np.divmod(observation, self._n_states)
        return observation[..., 0], observation[..., 1]

    @property
    def state(self) -> PreferenceEnvState | None:
        """A copy of the simulation state, ``None`` before the first :meth:`reset`."""
        return None if self._state is None else replace(self._state)

    @property
    def user(self) -> int:
        """The user of the current episode (or of the next one, before :meth:`reset`)."""
        return self._default_user if self._state is None else self._state.user

    @property
    def mdp(self) -> TabularMDP:
        return self.params.mdp

    @property
    def n_users(self) -> int:
        return self.params.n_users

    @property
    def layout(self) -> Layout:
        """Where pictures place the states (:mod:`lr_mdp_env.layouts`), made on first use."""
        return self._layout.get()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_cdf_rows"], state["_user_rewards"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_caches()
        if self._state is not None:
            self._select_user(self._state.user)


class LazyLayout:
    """A layout given as such, or as a function that makes it, checked against ``mdp`` when first used."""

    def __init__(self, layout: Any, mdp: TabularMDP) -> None:
        self._mdp = mdp
        self._made: Layout | None = None
        self._make: Callable[[], Layout | None] | None = None
        if callable(layout):
            self._make = layout
        else:
            self._made = check_layout(layout, mdp)

    def get(self) -> Layout:
        if self._made is None:
            self._made = check_layout(self._make(), self._mdp)
            self._make = None
        return self._made


def check_users(params: PreferenceEnvParams, users: Any, count: int, name: str = "users") -> np.ndarray:
    """Validate a sequence of ``count`` user indices (used by the vectorised environment)."""
    array = np.asarray(users)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise TypeError(f"{name} must be a 1-d sequence of integer user indices, got {users!r}")
    if array.shape[0] != count:
        raise ValueError(f"{name} must have one entry per sub-environment ({count}), got {array.shape[0]}")
    if array.size and (array.min() < 0 or array.max() >= params.n_users):
        bad = int(array[(array < 0) | (array >= params.n_users)][0])
        raise ValueError(f"{name} contains user {bad}, out of range: there are {params.n_users} users")
    return array.astype(np.int64)


__all__ = [
    "OBSERVATION_MODES",
    "PreferenceEnvParams",
    "PreferenceEnvState",
    "TabularPreferenceEnv",
    "reward_table_of",
]
