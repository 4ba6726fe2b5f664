"""The registry of the five environment families: factories Gymnasium calls, and registration.

Each family lives in its own module, which holds its builder (``*_world``): JSON-serialisable
arguments (sizes, ranks, seeds; never arrays) to a :class:`~lr_mdp_env.envs.world.World`.
This module wraps every builder in two factories that Gymnasium calls, one for
:class:`TabularPreferenceEnv` (``entry_point``) and one for :class:`TabularPreferenceVectorEnv`
(``vector_entry_point``), and :func:`register_envs` registers the five ids of docs/model.md,
Environments under the ``lr_mdp_env`` namespace; ``import lr_mdp_env`` calls it.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit

from .._validation import check_int
from ..families import advancing_actions  # noqa: F401  (still importable from here)
from ..layouts import Layout, chain_layout, graph_layout, grid_layout
from ..mdp import TabularMDP
from .chain import chain_world
from .contextual_bandit import contextual_bandit_world
from .graph import graph_world
from .gridworld import gridworld_world
from .random_low_rank import random_low_rank_world
from .tabular import TabularPreferenceEnv
from .vector import TabularPreferenceVectorEnv, vector_users
from .world import World

NAMESPACE = "lr_mdp_env"


def _table(mdp: TabularMDP, arguments: dict[str, Any]) -> None:
    return None


def _grid(mdp: TabularMDP, arguments: dict[str, Any]) -> Layout:
    return grid_layout(mdp, arguments["width"], arguments["height"], arguments["walls"])


def _graph(mdp: TabularMDP, arguments: dict[str, Any]) -> Layout:
    return graph_layout(mdp)


def _chain(mdp: TabularMDP, arguments: dict[str, Any]) -> Layout:
    return chain_layout(mdp)


#: How pictures place the states of each family's world, from the MDP and the builder's
#: arguments (``None``: the states x actions table).
LAYOUTS: dict[str, Callable[[TabularMDP, dict[str, Any]], Layout | None]] = {
    "RandomLowRank": _table, "GridWorld": _grid, "Graph": _graph, "Chain": _chain, "ContextualBandit": _table,
}


def build_world(builder: Callable[..., World], family: str, model_kwargs: dict[str, Any]) -> tuple[World, Callable[[], Layout | None]]:
    """The world of ``builder(**model_kwargs)`` and how to lay it out.

    The layout comes as a (picklable) function the environments call when a picture first needs
    it: placing a graph's nodes is an optimisation that plain stepping should not pay for.
    """
    world = builder(**model_kwargs)
    arguments = inspect.signature(builder).bind(**model_kwargs)
    arguments.apply_defaults()
    return world, partial(LAYOUTS[family], world.mdp, dict(arguments.arguments))


def _env_factory(builder: Callable[..., World], family: str, name: str) -> Callable[..., TimeLimit]:
    def factory(
        *, user: int = 0, reward_visible: bool = True, observation: str = "discrete",
        render_mode: str | None = None, **model_kwargs: Any,
    ) -> TimeLimit:
        (mdp, rewards), layout = build_world(builder, family, model_kwargs)
        env = TabularPreferenceEnv(
            mdp, rewards, user=user, reward_visible=reward_visible, observation=observation,
            render_mode=render_mode, layout=layout,
        )
        # H depends on the kwargs, so the limit is set here rather than in the registry.
        return TimeLimit(env, mdp.horizon)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"``TabularPreferenceEnv`` of :func:`{builder.__name__}` (its keyword arguments), for user "
        "``user`` with ``reward_visible``, ``observation`` and ``render_mode``, in ``TimeLimit(H)`` "
        "of its own horizon ``H`` (see :func:`register_envs`)."
    )
    # gym.make reads the render modes from the entry point's metadata: it applies
    # HumanRendering for "human" and RenderCollection for "<mode>_list" from them.
    factory.metadata = TabularPreferenceEnv.metadata  # type: ignore[attr-defined]
    return factory


def _truncation_step(max_episode_steps: Any, horizon: int) -> int:
    """The step at which copies of ``gym.make(id, max_episode_steps=...)`` are truncated.

    The entry point's ``TimeLimit(H)`` ends every episode at ``H``; ``gym.make`` adds
    ``TimeLimit(max_episode_steps)``, which only cuts earlier, unless it is ``None`` or ``-1``.

    Raises
    ------
    ValueError, TypeError
        If ``max_episode_steps`` is not ``None``, ``-1`` or a positive integer.
    """
    if max_episode_steps is None or (isinstance(max_episode_steps, (int, np.integer)) and max_episode_steps == -1):
        return horizon
    return min(check_int("max_episode_steps", max_episode_steps, minimum=1), horizon)


def _vector_factory(builder: Callable[..., World], family: str, name: str) -> Callable[..., TabularPreferenceVectorEnv]:
    def factory(
        num_envs: int = 1, *, users: Any = None, user: int | None = None, reward_visible: bool = True,
        observation: str = "discrete", autoreset_mode: str = "NextStep",
        max_episode_steps: int | None = None, render_mode: str | None = None, **model_kwargs: Any,
    ) -> TabularPreferenceVectorEnv:
        (mdp, rewards), layout = build_world(builder, family, model_kwargs)
        num_envs = check_int("num_envs", num_envs, minimum=1)
        chosen = vector_users(num_envs, rewards.n_users, user=user, users=users)
        return TabularPreferenceVectorEnv(
            mdp, rewards, num_envs, users=chosen, reward_visible=reward_visible,
            observation=observation, autoreset_mode=autoreset_mode,
            max_episode_steps=_truncation_step(max_episode_steps, mdp.horizon), render_mode=render_mode,
            layout=layout,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"``TabularPreferenceVectorEnv`` of :func:`{builder.__name__}` (its keyword arguments): "
        "sub-environment ``k`` follows ``users[k]``, or ``user`` everywhere, or user ``k % N``; "
        "episodes are truncated at ``H``, or at ``max_episode_steps`` if earlier, as the copies "
        "of ``gym.make`` are; ``render_mode`` as for ``TabularPreferenceVectorEnv``."
    )
    return factory


make_random_low_rank = _env_factory(random_low_rank_world, "RandomLowRank", "make_random_low_rank")
make_gridworld = _env_factory(gridworld_world, "GridWorld", "make_gridworld")
make_graph = _env_factory(graph_world, "Graph", "make_graph")
make_chain = _env_factory(chain_world, "Chain", "make_chain")
make_contextual_bandit = _env_factory(contextual_bandit_world, "ContextualBandit", "make_contextual_bandit")
make_random_low_rank_vector = _vector_factory(random_low_rank_world, "RandomLowRank", "make_random_low_rank_vector")
make_gridworld_vector = _vector_factory(gridworld_world, "GridWorld", "make_gridworld_vector")
make_graph_vector = _vector_factory(graph_world, "Graph", "make_graph_vector")
make_chain_vector = _vector_factory(chain_world, "Chain", "make_chain_vector")
make_contextual_bandit_vector = _vector_factory(contextual_bandit_world, "ContextualBandit", "make_contextual_bandit_vector")

#: Registered name -> (builder, factory name).
FAMILIES: dict[str, tuple[Callable[..., World], str]] = {
    "RandomLowRank": (random_low_rank_world, "make_random_low_rank"),
    "GridWorld": (gridworld_world, "make_gridworld"),
    "Graph": (graph_world, "make_graph"),
    "Chain": (chain_world, "make_chain"),
    "ContextualBandit": (contextual_bandit_world, "make_contextual_bandit"),
}

#: The registered ids.
ENV_IDS = tuple(f"{NAMESPACE}/{name}-v0" for name in FAMILIES)


def default_kwargs(builder: Callable[..., World]) -> dict[str, Any]:
    """The builder's defaults that are set (not ``None``), as JSON values: the spec's kwargs."""
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(builder).parameters.items():
        if parameter.default is inspect.Parameter.empty or parameter.default is None:
            continue
        value = parameter.default
        kwargs[name] = list(value) if isinstance(value, tuple) else value
    kwargs.update(reward_visible=True, observation="discrete")
    return kwargs


def register_envs() -> None:
    """Register the five environment ids (idempotent: a second call changes nothing).

    The registered specs have no ``max_episode_steps``: the episode length ``H`` depends on the
    kwargs (``horizon``), and a registered limit would make ``gym.make`` add a ``TimeLimit``
    that cuts every longer horizon at the default one. The entry points add ``TimeLimit(H)`` of
    the model they build instead, so every episode lasts exactly its own ``H`` steps (the last
    one ``terminated`` and ``truncated``), ``gym.make(id, **kwargs).spec.max_episode_steps`` is
    that ``H`` (``TimeAwareObservation`` reads it), and ``gym.make(env.spec)``, which adds
    another ``TimeLimit(H)`` since the spec declares ``H``, returns the same steps.
    ``max_episode_steps=k`` in ``gym.make`` or ``gym.make_vec`` cuts episodes at step ``k < H``.
    """
    module = __name__
    for name, (builder, factory) in FAMILIES.items():
        env_id = f"{NAMESPACE}/{name}-v0"
        entry_point = f"{module}:{factory}"
        existing = gym.registry.get(env_id)
        if existing is not None and existing.entry_point == entry_point:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=f"{module}:{factory}_vector",
            kwargs=default_kwargs(builder),
        )


__all__ = ["ENV_IDS", "FAMILIES", "LAYOUTS", "NAMESPACE", "World", "build_world", "default_kwargs", "register_envs"]
