"""What the family builders share: the :class:`World` they return and the pieces of its recipe.

A builder (``*_world`` in the module of each family) turns JSON-serialisable arguments (sizes,
ranks, seeds; never arrays) into a :class:`World`. All rewards are scaled with ``mdp=``
(:func:`lr_mdp_env.low_rank_rewards`), so the typical return difference of two uniform-policy
trajectories is ``scale`` (default 1): preference labels carry signal without being
deterministic.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import networkx as nx
import numpy as np

from .._validation import check_int
from ..mdp import TabularMDP
from ..rewards import ContextualRewards, LowRankRewards, low_rank_rewards


class World(NamedTuple):
    """A model to wrap in an environment: the MDP and its users' reward structure."""

    mdp: TabularMDP
    rewards: LowRankRewards | ContextualRewards


def model_seeds(model_seed: Any, count: int) -> list[np.random.SeedSequence]:
    """Independent streams for the parts of a model, all from ``model_seed``."""
    model_seed = check_int("model_seed", model_seed, minimum=0)
    return np.random.SeedSequence(model_seed).spawn(count)


def check_one_hot(features: Any, family: str) -> str:
    """Accept only one-hot features for the families whose rewards are planted on states."""
    # Goal bumps, end bonuses and prototypes are rewards of states; one-hot features express any
    # such reward exactly, so the planted structure is exactly the one described.
    if features not in ("one_hot", "one_hot_time"):
        raise ValueError(f"features must be 'one_hot' or 'one_hot_time' for {family}, got {features!r}")
    return features


def theta_of_tables(mdp: TabularMDP, tables: np.ndarray) -> np.ndarray:
    """Parameters ``(d, k)`` whose rewards are ``tables`` ``(k, H, S, A)`` under one-hot features.

    With ``"one_hot"`` features (stationary) the tables must not depend on ``h``; only their
    first step is used.
    """
    if mdp.stationary_features:
        return tables[:, 0].reshape(tables.shape[0], -1).T.copy()
    return tables.reshape(tables.shape[0], -1).T.copy()


def goal_prototypes(
    graph: nx.Graph, n_goals: int, length_scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Goals drawn among the nodes and their bumps ``exp(-dist(s, goal) / length_scale)``.

    ``dist`` is the shortest-path length from ``s`` to the goal (along edge directions in a
    directed graph); a goal that ``s`` cannot reach contributes 0. Returns the goals' state
    indices ``(k,)`` and the bumps ``(k, S)``.
    """
    nodes = list(graph.nodes)
    index = {node: k for k, node in enumerate(nodes)}
    goals = np.sort(rng.choice(len(nodes), size=n_goals, replace=False))
    towards = graph.reverse(copy=False) if graph.is_directed() else graph
    bumps = np.zeros((n_goals, len(nodes)))
    for k, goal in enumerate(goals):
        lengths = nx.single_source_shortest_path_length(towards, nodes[goal])
        reached = np.array([index[node] for node in lengths], dtype=np.int64)
        distances = np.array(list(lengths.values()), dtype=float)
        bumps[k, reached] = np.exp(-distances / length_scale)
    return goals, bumps


def prototype_rewards(
    mdp: TabularMDP, bumps: np.ndarray, *, n_users: int, condition_number: float, tail: float,
    scale: float, seed: np.random.SeedSequence,
) -> LowRankRewards:
    """Users weighing the goal prototypes: ``low_rank_rewards`` with ``subspace`` the bumps."""
    n_goals = bumps.shape[0]
    if n_goals > n_users:
        raise ValueError(f"n_goals={n_goals} must be at most n_users={n_users} (the users' rank is n_goals)")
    tables = np.broadcast_to(bumps[:, None, :, None], (n_goals, mdp.horizon, mdp.n_states, mdp.n_actions))
    prototypes = theta_of_tables(mdp, tables)
    return low_rank_rewards(
        mdp.n_features, n_users, n_goals, condition_number=condition_number, tail=tail,
        subspace=prototypes, mdp=mdp, scale=scale, seed=seed,
    )


__all__ = ["World", "check_one_hot", "goal_prototypes", "model_seeds", "prototype_rewards", "theta_of_tables"]
