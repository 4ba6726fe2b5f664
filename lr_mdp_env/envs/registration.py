"""The registered environment families: model builders from JSON kwargs, factories, registration.

Each family has a builder (``*_world``) that turns JSON-serialisable arguments (sizes, ranks,
seeds; never arrays) into a :class:`World` — a :class:`TabularMDP` and its users' reward
structure — and two factories that Gymnasium calls: one for :class:`TabularPreferenceEnv`
(``entry_point``) and one for :class:`TabularPreferenceVectorEnv` (``vector_entry_point``).
:func:`register_envs` registers the five ids of docs/model.md, Environments under the ``lr_mdp_env`` namespace;
``import lr_mdp_env`` calls it.

All rewards are scaled with ``mdp=`` (:func:`lr_mdp_env.low_rank_rewards`), so the typical return
difference of two uniform-policy trajectories is ``scale`` (default 1): preference labels carry
signal without being deterministic.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import gymnasium as gym
import networkx as nx
import numpy as np

from .._validation import check_int, check_real
from ..dynamic_programming import backward_induction
from ..families import chain_mdp, graph_mdp, gridworld_graph, gridworld_mdp, random_mdp
from ..mdp import TabularMDP, dense_features
from ..rewards import ContextualRewards, LowRankRewards, contextual_rewards, low_rank_rewards
from .tabular import TabularPreferenceEnv
from .vector import TabularPreferenceVectorEnv, vector_users

NAMESPACE = "lr_mdp_env"


class World(NamedTuple):
    """A model to wrap in an environment: the MDP and its users' reward structure."""

    mdp: TabularMDP
    rewards: LowRankRewards | ContextualRewards


def _seeds(model_seed: Any, count: int) -> list[np.random.SeedSequence]:
    """Independent streams for the parts of a model, all from ``model_seed``."""
    model_seed = check_int("model_seed", model_seed, minimum=0)
    return np.random.SeedSequence(model_seed).spawn(count)


def _check_one_hot(features: Any, family: str) -> str:
    # Goal bumps, end bonuses and prototypes are rewards of states; one-hot features express any
    # such reward exactly, so the planted structure is exactly the one described.
    if features not in ("one_hot", "one_hot_time"):
        raise ValueError(f"features must be 'one_hot' or 'one_hot_time' for {family}, got {features!r}")
    return features


def _theta_of_tables(mdp: TabularMDP, tables: np.ndarray) -> np.ndarray:
    """Parameters ``(d, k)`` whose rewards are ``tables`` ``(k, H, S, A)`` under one-hot features.

    With ``"one_hot"`` features (stationary) the tables must not depend on ``h``; only their
    first step is used.
    """
    if mdp.stationary_features:
        return tables[:, 0].reshape(tables.shape[0], -1).T.copy()
    return tables.reshape(tables.shape[0], -1).T.copy()


def _goal_prototypes(
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


def _prototype_rewards(
    mdp: TabularMDP, bumps: np.ndarray, *, n_users: int, condition_number: float, tail: float,
    scale: float, seed: np.random.SeedSequence,
) -> LowRankRewards:
    """Users weighing the goal prototypes: ``low_rank_rewards`` with ``subspace`` the bumps."""
    n_goals = bumps.shape[0]
    if n_goals > n_users:
        raise ValueError(f"n_goals={n_goals} must be at most n_users={n_users} (the users' rank is n_goals)")
    tables = np.broadcast_to(bumps[:, None, :, None], (n_goals, mdp.horizon, mdp.n_states, mdp.n_actions))
    prototypes = _theta_of_tables(mdp, tables)
    return low_rank_rewards(
        mdp.n_features, n_users, n_goals, condition_number=condition_number, tail=tail,
        subspace=prototypes, mdp=mdp, scale=scale, seed=seed,
    )


# -- builders ---------------------------------------------------------------------------------


def random_low_rank_world(
    n_states: int = 10,
    n_actions: int = 3,
    horizon: int = 5,
    *,
    n_users: int = 8,
    rank: int = 2,
    condition_number: float = 2.0,
    tail: float = 0.0,
    features: str = "one_hot",
    n_features: int | None = None,
    concentration: float = 1.0,
    stationary: bool = True,
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """Random Dirichlet MDP with rank-``r`` users (``lr_mdp_env/RandomLowRank-v0``).

    Parameters
    ----------
    n_states, n_actions, horizon : int
    n_users, rank : int
        ``N`` users whose parameters span a ``rank``-dimensional subspace.
    condition_number : float, default 2.0
        ``sigma_1 / sigma_r`` of the users' matrix (preference diversity).
    tail : float, default 0.0
        Tail energy outside the rank (0: exactly low rank).
    features : {"one_hot", "one_hot_time", "dense"}, default "one_hot"
    n_features : int, optional
        ``d`` for ``features="dense"``.
    concentration : float, default 1.0
        Dirichlet parameter of the transition rows.
    stationary : bool, default True
    scale : float, default 1.0
        Typical return difference of two uniform trajectories.
    model_seed : int, default 0
        Seed of the model (transitions, features, users); reset seeds are separate.

    Returns
    -------
    World
    """
    mdp_seed, reward_seed = _seeds(model_seed, 2)
    mdp = random_mdp(
        n_states, n_actions, horizon, stationary=stationary, concentration=concentration,
        features=features, n_features=n_features, seed=mdp_seed,
    )
    rewards = low_rank_rewards(
        mdp.n_features, n_users, rank, condition_number=condition_number, tail=tail, mdp=mdp,
        scale=scale, seed=reward_seed,
    )
    return World(mdp, rewards)


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
    features = _check_one_hot(features, "GridWorld")
    length_scale = check_real("length_scale", length_scale, 0.0, strict_minimum=True)
    goal_seed, reward_seed = _seeds(model_seed, 2)
    walls = [] if walls is None else [tuple(wall) for wall in walls]
    graph = gridworld_graph(width, height, walls)
    n_goals = check_int("n_goals", n_goals, minimum=1, maximum=graph.number_of_nodes())
    mdp = gridworld_mdp(
        width, height, horizon, walls=walls, slip=slip, start=None if start is None else tuple(start),
        features=features,
    )
    _, bumps = _goal_prototypes(graph, n_goals, length_scale, np.random.default_rng(goal_seed))
    rewards = _prototype_rewards(
        mdp, bumps, n_users=n_users, condition_number=condition_number, tail=tail, scale=scale,
        seed=reward_seed,
    )
    return World(mdp, rewards)


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
    features = _check_one_hot(features, "Graph")
    length_scale = check_real("length_scale", length_scale, 0.0, strict_minimum=True)
    graph_seed, goal_seed, reward_seed = _seeds(model_seed, 3)
    network = build_graph(graph, edges=edges, directed=directed, n_nodes=n_nodes, k=k, p=p, degree=degree, seed=graph_seed)
    if start is not None:
        start = check_int("start", start, minimum=0, maximum=network.number_of_nodes() - 1)
    n_goals = check_int("n_goals", n_goals, minimum=1, maximum=network.number_of_nodes())
    mdp = graph_mdp(network, horizon, slip=slip, start=start, features=features)
    _, bumps = _goal_prototypes(network, n_goals, length_scale, np.random.default_rng(goal_seed))
    rewards = _prototype_rewards(
        mdp, bumps, n_users=n_users, condition_number=condition_number, tail=tail, scale=scale,
        seed=reward_seed,
    )
    return World(mdp, rewards)


def advancing_actions(mdp: TabularMDP) -> np.ndarray:
    """The action that moves forward in each state of a :func:`lr_mdp_env.chain_mdp` (slip < 1/2)."""
    states = np.arange(mdp.n_states)
    forward = np.minimum(states + 1, mdp.n_states - 1)
    return np.argmax(mdp.transitions[0, states, :, forward], axis=1)


def _end_seeking(policy: np.ndarray, advancing: np.ndarray, horizon: int) -> bool:
    """Whether every policy of the batch advances wherever the end is still ahead.

    In state ``s < S-1`` at step ``h`` the end can still be reached when ``h + (S-1-s) <= H-1``;
    in the end state, staying matters while a step is left (``h <= H-2``).
    """
    n_states = advancing.size
    steps = np.arange(horizon)[:, None]
    states = np.arange(n_states)[None, :]
    ahead = np.where(states < n_states - 1, steps + (n_states - 1 - states) <= horizon - 1, steps <= horizon - 2)
    chosen = policy[:, :, np.arange(n_states), advancing]  # (N, H, S)
    return bool(np.all(chosen[:, ahead] == 1.0))


def chain_world(
    n_states: int = 6,
    horizon: int = 10,
    *,
    n_actions: int = 2,
    slip: float = 0.0,
    n_users: int = 8,
    rank: int = 2,
    condition_number: float = 2.0,
    tail: float = 0.0,
    distractor: float = 0.0,
    features: str = "one_hot",
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """A combination-lock chain whose good end every user wants (``lr_mdp_env/Chain-v0``).

    The MDP is :func:`lr_mdp_env.chain_mdp`: start in state 0, one advancing action per state,
    every other action falls back to state 0, so the uniform policy reaches the end with
    probability about ``A^-(S-1)``. Each user's reward is

    - a personal low-rank part (``low_rank_rewards`` with ``mdp=``, typical return difference
      ``scale``), plus
    - the shared base ``Theta_0`` (passed as ``base=``): a bonus ``b`` in the end state for
      every action, and ``distractor`` in state 0 for every non-advancing action (a nearby,
      well-covered reward that a greedy estimate may prefer to the unseen end).

    ``b`` is the smallest ``M 2^j`` (``M`` the largest absolute personal-plus-distractor reward)
    for which every user's optimal policy advances wherever the end is still reachable and then
    stays there; it is checked by backward induction, so the claim holds for the returned model.
    Uniformly collected data rarely show the end: the setting where pessimism matters.

    Parameters
    ----------
    n_states : int, default 6
        Chain length ``S >= 2``.
    horizon : int, default 10
        ``H >= S`` so that the end can be reached.
    n_actions : int, default 2
    slip : float in [0, 0.5), default 0.0
        Probability of the other outcome (advance instead of fall back, and vice versa).
    n_users, rank, condition_number, tail, scale, model_seed
        As in :func:`random_low_rank_world`.
    distractor : float, default 0.0
        Base reward of the non-advancing actions in state 0.
    features : {"one_hot", "one_hot_time"}, default "one_hot"

    Returns
    -------
    World
    """
    features = _check_one_hot(features, "Chain")
    n_states = check_int("n_states", n_states, minimum=2)
    horizon = check_int("horizon", horizon, minimum=n_states)
    slip = check_real("slip", slip, 0.0)
    if not slip < 0.5:
        raise ValueError(f"slip must be below 0.5 (so the advancing action moves forward), got {slip}")
    distractor = check_real("distractor", distractor)
    mdp_seed, reward_seed = _seeds(model_seed, 2)
    mdp = chain_mdp(n_states, horizon, n_actions=n_actions, slip=slip, features=features, seed=mdp_seed)
    personal = low_rank_rewards(
        mdp.n_features, n_users, rank, condition_number=condition_number, tail=tail, mdp=mdp,
        scale=scale, seed=reward_seed,
    ).reward_table(mdp)
    advancing = advancing_actions(mdp)
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    lure = np.zeros(shape)
    lure[:, 0, :] = distractor
    lure[:, 0, advancing[0]] = 0.0
    end = np.zeros(shape)
    end[:, -1, :] = 1.0
    bonus = float(np.abs(personal).max() + abs(distractor))
    for _ in range(64):
        policy, _ = backward_induction(mdp, personal + lure + bonus * end)
        if _end_seeking(policy, advancing, horizon):
            break
        bonus *= 2.0
    else:  # pragma: no cover - the advantage of advancing grows linearly with the bonus
        raise RuntimeError("no end bonus made every user's optimal policy reach the end of the chain")
    base = _theta_of_tables(mdp, (lure + bonus * end)[None])[:, 0]
    rewards = low_rank_rewards(
        mdp.n_features, n_users, rank, condition_number=condition_number, tail=tail, base=base,
        mdp=mdp, scale=scale, seed=reward_seed,
    )
    return World(mdp, rewards)


def contextual_bandit_world(
    n_queries: int = 10,
    n_answers: int = 4,
    *,
    n_features: int = 8,
    context_dim: int = 4,
    rank: int = 2,
    n_users: int = 8,
    condition_number: float = 2.0,
    shift: float = 0.0,
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """LoCo-RLHF's contextual bandit (``lr_mdp_env/ContextualBandit-v0``).

    ``H = 1``: a query (state) is drawn uniformly, the agent gives an answer (action) and the
    episode ends. Features ``phi(query, answer)`` are dense with norm at most 1; user ``i`` has
    context ``x_i`` and reward ``x_i^T Theta_c phi`` (:func:`lr_mdp_env.contextual_rewards`).
    The query does not change (the final observation repeats it).

    Parameters
    ----------
    n_queries, n_answers : int
    n_features : int, default 8
        ``d``.
    context_dim : int, default 4
        ``d_x``.
    rank : int, default 2
        Rank of ``Theta_c``.
    n_users : int, default 8
        Users (contexts) drawn from the collection distribution.
    condition_number : float, default 2.0
    shift : float, default 0.0
        Context shift of the evaluation distribution (``ContextualRewards.sample_contexts``).
    scale, model_seed
        As in :func:`random_low_rank_world`.

    Returns
    -------
    World
    """
    n_queries = check_int("n_queries", n_queries, minimum=1)
    n_answers = check_int("n_answers", n_answers, minimum=1)
    feature_seed, reward_seed = _seeds(model_seed, 2)
    features = dense_features(n_queries, n_answers, n_features, seed=feature_seed)
    transitions = np.broadcast_to(np.eye(n_queries)[:, None, :], (n_queries, n_answers, n_queries))
    initial = np.full(n_queries, 1.0 / n_queries)
    mdp = TabularMDP(transitions, initial, horizon=1, features=features)
    rewards = contextual_rewards(
        n_features, context_dim, rank, n_users=n_users, condition_number=condition_number,
        shift=shift, mdp=mdp, scale=scale, seed=reward_seed,
    )
    return World(mdp, rewards)


# -- factories and registration ---------------------------------------------------------------


def _env_factory(builder: Callable[..., World], name: str) -> Callable[..., TabularPreferenceEnv]:
    def factory(
        *, user: int = 0, reward_visible: bool = True, observation: str = "discrete",
        render_mode: str | None = None, **model_kwargs: Any,
    ) -> TabularPreferenceEnv:
        mdp, rewards = builder(**model_kwargs)
        return TabularPreferenceEnv(
            mdp, rewards, user=user, reward_visible=reward_visible, observation=observation,
            render_mode=render_mode,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"``TabularPreferenceEnv`` of :func:`{builder.__name__}` (its keyword arguments), for user "
        "``user`` with ``reward_visible``, ``observation`` and ``render_mode``."
    )
    return factory


def _vector_factory(builder: Callable[..., World], name: str) -> Callable[..., TabularPreferenceVectorEnv]:
    def factory(
        num_envs: int = 1, *, users: Any = None, user: int | None = None, reward_visible: bool = True,
        observation: str = "discrete", autoreset_mode: str = "NextStep", **model_kwargs: Any,
    ) -> TabularPreferenceVectorEnv:
        mdp, rewards = builder(**model_kwargs)
        num_envs = check_int("num_envs", num_envs, minimum=1)
        chosen = vector_users(num_envs, rewards.n_users, user=user, users=users)
        return TabularPreferenceVectorEnv(
            mdp, rewards, num_envs, users=chosen, reward_visible=reward_visible,
            observation=observation, autoreset_mode=autoreset_mode,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"``TabularPreferenceVectorEnv`` of :func:`{builder.__name__}` (its keyword arguments): "
        "sub-environment ``k`` follows ``users[k]``, or ``user`` everywhere, or user ``k % N``."
    )
    return factory


make_random_low_rank = _env_factory(random_low_rank_world, "make_random_low_rank")
make_gridworld = _env_factory(gridworld_world, "make_gridworld")
make_graph = _env_factory(graph_world, "make_graph")
make_chain = _env_factory(chain_world, "make_chain")
make_contextual_bandit = _env_factory(contextual_bandit_world, "make_contextual_bandit")
make_random_low_rank_vector = _vector_factory(random_low_rank_world, "make_random_low_rank_vector")
make_gridworld_vector = _vector_factory(gridworld_world, "make_gridworld_vector")
make_graph_vector = _vector_factory(graph_world, "make_graph_vector")
make_chain_vector = _vector_factory(chain_world, "make_chain_vector")
make_contextual_bandit_vector = _vector_factory(contextual_bandit_world, "make_contextual_bandit_vector")

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
    """Register the five environment ids (idempotent: a second call changes nothing)."""
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


__all__ = [
    "ENV_IDS",
    "FAMILIES",
    "GRAPH_GENERATORS",
    "World",
    "advancing_actions",
    "build_graph",
    "chain_world",
    "contextual_bandit_world",
    "default_kwargs",
    "graph_world",
    "gridworld_world",
    "random_low_rank_world",
    "register_envs",
]
