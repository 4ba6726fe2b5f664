"""``lr_mdp_env/GridWorld-v0``: a grid with walls whose users weigh goal cells."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import check_int, check_real
from ..families import gridworld_graph, gridworld_mdp
from .world import World, check_one_hot, goal_prototypes, model_seeds, prototype_rewards


def gridworld_world(
    width: int = 4,
    height: int = 4,
    horizon: int = 8,
    *,
    walls: Any = None,
    slip: float = 0.0,
    start: Any = (0, 0),
    n_goals: int = 2,
    length_scale: float = 1.0,
    n_users: int = 8,
    condition_number: float = 2.0,
    tail: float = 0.0,
    features: str = "one_hot",
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """Grid world whose users weigh ``n_goals`` goal cells (``lr_mdp_env/GridWorld-v0``).

    Prototype ``k`` rewards being near goal ``g_k``: ``exp(-dist(s, g_k) / length_scale)`` for
    every action, ``dist`` the shortest-path length around walls. The goals are drawn from
    ``model_seed``; the users' parameters are combinations of the prototypes
    (``low_rank_rewards(subspace=prototypes)``, rank ``n_goals``; weights may be negative, a
    user who avoids a goal), plus the optional ``tail``.

    Parameters
    ----------
    width, height, horizon : int
    walls : list of [x, y], optional
        Blocked cells.
    slip : float in [0, 1], default 0.0
        Probability that a uniformly random action's outcome replaces the intended move.
    start : [x, y] or None, default [0, 0]
        Start cell; ``None`` for uniform over free cells.
    n_goals : int, default 2
    length_scale : float, default 1.0
    n_users : int, default 8
    condition_number, tail, scale, model_seed
        As in :func:`random_low_rank_world`.
    features : {"one_hot", "one_hot_time"}, default "one_hot"

    Returns
    -------
    World
    """
    features = check_one_hot(features, "GridWorld")
    length_scale = check_real("length_scale", length_scale, 0.0, strict_minimum=True)
    goal_seed, reward_seed = model_seeds(model_seed, 2)
    walls = [] if walls is None else [tuple(wall) for wall in walls]
    graph = gridworld_graph(width, height, walls)
    n_goals = check_int("n_goals", n_goals, minimum=1, maximum=graph.number_of_nodes())
    mdp = gridworld_mdp(
        width, height, horizon, walls=walls, slip=slip, start=None if start is None else tuple(start),
        features=features,
    )
    _, bumps = goal_prototypes(graph, n_goals, length_scale, np.random.default_rng(goal_seed))
    rewards = prototype_rewards(
        mdp, bumps, n_users=n_users, condition_number=condition_number, tail=tail, scale=scale,
        seed=reward_seed,
    )
    return World(mdp, rewards)


__all__ = ["gridworld_world"]
