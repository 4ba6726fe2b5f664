"""``lr_mdp_env/Graph-v0``: an MDP on a networkx graph whose users weigh goal nodes."""

from __future__ import annotations

from typing import Any, Callable

import networkx as nx
import numpy as np

from .._validation import check_int, check_real
from ..families import graph_mdp
from .world import World, check_one_hot, goal_prototypes, model_seeds, prototype_rewards


#: Named graph generators of ``Graph-v0``, with the parameters each one uses.
GRAPH_GENERATORS: dict[str, tuple[str, ...]] = {
    "watts_strogatz": ("n_nodes", "k", "p"),
    "random_regular": ("n_nodes", "degree"),
    "erdos_renyi": ("n_nodes", "p"),
    "path": ("n_nodes",),
    "cycle": ("n_nodes",),
    "star": ("n_nodes",),
    "complete": ("n_nodes",),
}
_GENERATOR_DEFAULTS = {"n_nodes": 10, "k": 4, "p": 0.2, "degree": 3}


def build_graph(
    graph: str | None = None,
    *,
    edges: Any = None,
    directed: bool = False,
    n_nodes: int | None = None,
    k: int | None = None,
    p: float | None = None,
    degree: int | None = None,
    seed: Any = None,
) -> nx.Graph:
    """A networkx graph from JSON arguments: an edge list or a named generator.

    Parameters
    ----------
    graph : str, optional
        A key of :data:`GRAPH_GENERATORS` (default ``"watts_strogatz"`` when ``edges`` is not
        given). Node ``k`` is state ``k``.
    edges : list of [u, v], optional
        Edges between integer nodes ``0..n-1``; ``n = n_nodes`` if given (isolated nodes allowed),
        else one more than the largest node.
    directed : bool, default False
        Edges are one-way (only with ``edges``).
    n_nodes, k, p, degree : optional
        Generator parameters (defaults 10, 4, 0.2, 3): ``watts_strogatz`` (``n_nodes``, ``k``
        neighbours, rewiring ``p``), ``random_regular`` (``degree``), ``erdos_renyi`` (edge
        probability ``p``), ``path``, ``cycle``, ``star``, ``complete``.
    seed : int or SeedSequence, optional
        For the random generators.

    Returns
    -------
    networkx.Graph or networkx.DiGraph
    """
    if not isinstance(directed, (bool, np.bool_)):
        raise TypeError(f"directed must be a bool, got {directed!r}")
    given = {"n_nodes": n_nodes, "k": k, "p": p, "degree": degree}
    if edges is not None:
        if graph is not None:
            raise ValueError(f"give either graph (a generator name) or edges, not both (graph={graph!r})")
        unused = [name for name in ("k", "p", "degree") if given[name] is not None]
        if unused:
            raise ValueError(f"{', '.join(unused)} only apply to named graph generators, not to edges")
        pairs = np.asarray(edges)
        if pairs.size == 0:
            pairs = np.zeros((0, 2), dtype=np.int64)
        if pairs.dtype.kind not in "iu" or pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"edges must be a list of [u, v] pairs of integer nodes, got {edges!r}")
        if pairs.size and pairs.min() < 0:
            raise ValueError(f"edges must use non-negative integer nodes, got {edges!r}")
        largest = int(pairs.max()) + 1 if pairs.size else 0
        count = largest if n_nodes is None else check_int("n_nodes", n_nodes, minimum=1)
        if count < largest:
            raise ValueError(f"edges use node {largest - 1} but n_nodes={count}")
        if count == 0:
            raise ValueError("edges must not be empty unless n_nodes is given")
        result = nx.DiGraph() if directed else nx.Graph()
        result.add_nodes_from(range(count))
        result.add_edges_from(pairs.tolist())
        return result
    if directed:
        raise ValueError("directed=True needs an explicit edges list")
    name = "watts_strogatz" if graph is None else graph
    if name not in GRAPH_GENERATORS:
        raise ValueError(f"graph must be one of {sorted(GRAPH_GENERATORS)}, got {graph!r}")
    unused = [key for key, value in given.items() if value is not None and key not in GRAPH_GENERATORS[name]]
    if unused:
        raise ValueError(f"{', '.join(unused)} do not apply to graph={name!r} (it uses {GRAPH_GENERATORS[name]})")
    values = {key: _GENERATOR_DEFAULTS[key] if given[key] is None else given[key] for key in GRAPH_GENERATORS[name]}
    nodes = check_int("n_nodes", values["n_nodes"], minimum=2)
    rng = np.random.default_rng(seed)
    random_seed = int(rng.integers(2**31))
    if name == "watts_strogatz":
        neighbours = check_int("k", values["k"], minimum=1, maximum=nodes - 1)
        rewiring = check_real("p", values["p"], 0.0, 1.0)
        return nx.watts_strogatz_graph(nodes, neighbours, rewiring, seed=random_seed)
    if name == "random_regular":
        degree_ = check_int("degree", values["degree"], minimum=0, maximum=nodes - 1)
        if (degree_ * nodes) % 2:
            raise ValueError(f"random_regular needs degree * n_nodes even, got degree={degree_}, n_nodes={nodes}")
        return nx.random_regular_graph(degree_, nodes, seed=random_seed)
    if name == "erdos_renyi":
        return nx.gnp_random_graph(nodes, check_real("p", values["p"], 0.0, 1.0), seed=random_seed)
    constructors: dict[str, Callable[[int], nx.Graph]] = {
        "path": nx.path_graph, "cycle": nx.cycle_graph, "star": lambda n: nx.star_graph(n - 1),
        "complete": nx.complete_graph,
    }
    return constructors[name](nodes)


def graph_world(
    graph: str | None = None,
    horizon: int = 6,
    *,
    edges: Any = None,
    directed: bool = False,
    n_nodes: int | None = None,
    k: int | None = None,
    p: float | None = None,
    degree: int | None = None,
    start: int | None = None,
    slip: float = 0.0,
    n_goals: int = 2,
    length_scale: float = 1.0,
    n_users: int = 8,
    condition_number: float = 2.0,
    tail: float = 0.0,
    features: str = "one_hot",
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """MDP on a networkx graph whose users weigh ``n_goals`` goal nodes (``lr_mdp_env/Graph-v0``).

    States are nodes; action 0 stays and action ``j`` follows the ``j``-th edge
    (:func:`lr_mdp_env.graph_mdp`). Goals and users as in :func:`gridworld_world`, with
    shortest-path distances along the edges.

    Parameters
    ----------
    graph, edges, directed, n_nodes, k, p, degree
        The graph, see :func:`build_graph` (generators are seeded by ``model_seed``).
    horizon : int, default 6
    start : int, optional
        Start node; default uniform over nodes.
    slip : float in [0, 1], default 0.0
    n_goals, length_scale, n_users, condition_number, tail, features, scale, model_seed
        As in :func:`gridworld_world`.

    Returns
    -------
    World
    """
    features = check_one_hot(features, "Graph")
    length_scale = check_real("length_scale", length_scale, 0.0, strict_minimum=True)
    graph_seed, goal_seed, reward_seed = model_seeds(model_seed, 3)
    network = build_graph(graph, edges=edges, directed=directed, n_nodes=n_nodes, k=k, p=p, degree=degree, seed=graph_seed)
    if start is not None:
        start = check_int("start", start, minimum=0, maximum=network.number_of_nodes() - 1)
    n_goals = check_int("n_goals", n_goals, minimum=1, maximum=network.number_of_nodes())
    mdp = graph_mdp(network, horizon, slip=slip, start=start, features=features)
    _, bumps = goal_prototypes(network, n_goals, length_scale, np.random.default_rng(goal_seed))
    rewards = prototype_rewards(
        mdp, bumps, n_users=n_users, condition_number=condition_number, tail=tail, scale=scale,
        seed=reward_seed,
    )
    return World(mdp, rewards)


__all__ = ["GRAPH_GENERATORS", "build_graph", "graph_world"]
