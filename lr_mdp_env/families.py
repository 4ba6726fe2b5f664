"""Constructors of the environment families: random Dirichlet MDPs, chains, grids and graphs."""

from __future__ import annotations

from typing import Any, Callable, Hashable

import networkx as nx
import numpy as np

from ._validation import as_generator, check_int, check_real
from .mdp import TabularMDP, dense_features


def _feature_spec(kind: Any, n_features: int | None, n_states: int, n_actions: int, rng: np.random.Generator) -> Any:
    """Resolve a feature specification: ``"one_hot"``, ``"one_hot_time"``, ``"dense"`` or an array."""
    if isinstance(kind, str) and kind == "dense":
        if n_features is None:
            raise ValueError("features='dense' needs n_features")
        return dense_features(n_states, n_actions, n_features, seed=rng)
    if n_features is not None:
        raise ValueError(f"n_features is only used with features='dense', got features={kind!r}")
    return kind


def random_mdp(
    n_states: int,
    n_actions: int,
    horizon: int,
    *,
    stationary: bool = True,
    concentration: float = 1.0,
    features: Any = "one_hot",
    n_features: int | None = None,
    seed: Any = None,
) -> TabularMDP:
    """An MDP with Dirichlet random transitions and a uniform initial distribution.

    Parameters
    ----------
    n_states, n_actions, horizon : int
    stationary : bool, default True
        One transition kernel for every step, or an independent one per step.
    concentration : float, default 1.0
        Dirichlet parameter ``alpha`` of each row ``P[h, s, a, :]``; small values give nearly
        deterministic transitions, large values nearly uniform ones.
    features : {"one_hot", "one_hot_time", "dense"} or array_like, default "one_hot"
    n_features : int, optional
        ``d`` for ``features="dense"`` (unit-bounded Gaussian directions).
    seed : int, SeedSequence or Generator, optional

    Returns
    -------
    TabularMDP
    """
    n_states = check_int("n_states", n_states, minimum=1)
    n_actions = check_int("n_actions", n_actions, minimum=1)
    horizon = check_int("horizon", horizon, minimum=1)
    concentration = check_real("concentration", concentration, 0.0, strict_minimum=True)
    rng = as_generator(seed)
    shape = (n_states, n_actions) if stationary else (horizon, n_states, n_actions)
    draws = rng.gamma(concentration, size=shape + (n_states,))
    totals = draws.sum(axis=-1, keepdims=True)
    # A tiny alpha can underflow a whole row to zero: that row is then a point mass, as its
    # limit distribution is.
    empty = totals[..., 0] == 0
    if np.any(empty):
        draws[empty, rng.integers(n_states, size=int(empty.sum()))] = 1.0
        totals = draws.sum(axis=-1, keepdims=True)
    transitions = draws / totals
    feature_spec = _feature_spec(features, n_features, n_states, n_actions, rng)
    initial = np.full(n_states, 1.0 / n_states)
    return TabularMDP(transitions, initial, horizon=horizon, features=feature_spec)


def chain_mdp(
    n_states: int,
    horizon: int,
    *,
    n_actions: int = 2,
    slip: float = 0.0,
    features: Any = "one_hot",
    n_features: int | None = None,
    seed: Any = None,
    return_advancing: bool = False,
) -> TabularMDP | tuple[TabularMDP, np.ndarray]:
    """A combination-lock chain whose far end a uniform policy rarely reaches.

    States ``0..S-1``, start in state 0. In each state one action (drawn once from ``seed``)
    advances to the next state; every other action falls back to state 0. The last state is
    absorbing under its advancing action. With probability ``slip`` the outcome of the other
    kind happens instead. A uniform policy reaches the end in ``S - 1`` steps with probability
    ``((1 - slip) / A)^(S - 1)`` at most, so uniformly collected data rarely cover it: the
    setting where pessimism matters (docs/model.md, Environments).

    Parameters
    ----------
    n_states : int
        Chain length ``S >= 2``.
    horizon : int
    n_actions : int, default 2
    slip : float in [0, 1], default 0.0
    features, n_features, seed
        As in :func:`random_mdp`.
    return_advancing : bool, default False
        Also return the advancing actions drawn.

    Returns
    -------
    TabularMDP
        The chain; with ``return_advancing=True`` the pair ``(mdp, advancing)``, where
        ``advancing[s]`` (shape ``(S,)``, integers) is the action that moves forward from state
        ``s`` (and keeps the last state).
    """
    if not isinstance(return_advancing, (bool, np.bool_)):
        raise TypeError(f"return_advancing must be a bool, got {return_advancing!r}")
    n_states = check_int("n_states", n_states, minimum=2)
    n_actions = check_int("n_actions", n_actions, minimum=2)
    horizon = check_int("horizon", horizon, minimum=1)
    slip = check_real("slip", slip, 0.0, 1.0)
    rng = as_generator(seed)
    advancing = rng.integers(n_actions, size=n_states)
    states = np.arange(n_states)
    forward = np.zeros((n_states, n_states))
    forward[states, np.minimum(states + 1, n_states - 1)] = 1.0
    back = np.zeros((n_states, n_states))
    back[:, 0] = 1.0
    is_advancing = np.arange(n_actions)[None, :] == advancing[:, None]  # (S, A)
    intended = np.where(is_advancing[..., None], forward[:, None, :], back[:, None, :])
    other = np.where(is_advancing[..., None], back[:, None, :], forward[:, None, :])
    transitions = (1 - slip) * intended + slip * other
    initial = np.zeros(n_states)
    initial[0] = 1.0
    feature_spec = _feature_spec(features, n_features, n_states, n_actions, rng)
    mdp = TabularMDP(transitions, initial, horizon=horizon, features=feature_spec)
    return (mdp, advancing) if return_advancing else mdp


def advancing_actions(mdp: TabularMDP) -> np.ndarray:
    """The action that moves forward in each state of a :func:`chain_mdp` (slip < 1/2).

    Recovered from the transitions, for a chain MDP made elsewhere; ``chain_mdp(...,
    return_advancing=True)`` returns the same actions as it draws them.
    """
    states = np.arange(mdp.n_states)
    forward = np.minimum(states + 1, mdp.n_states - 1)
    return np.argmax(mdp.transitions[0, states, :, forward], axis=1)


def graph_mdp(
    graph: nx.Graph,
    horizon: int,
    *,
    slip: float = 0.0,
    start: Hashable | None = None,
    edge_action: Callable[[Hashable, Hashable], int] | None = None,
    n_actions: int | None = None,
    features: Any = "one_hot",
    n_features: int | None = None,
    seed: Any = None,
) -> TabularMDP:
    """An MDP whose states are the nodes of a networkx graph and whose actions follow edges.

    State ``k`` is the ``k``-th node of ``list(graph.nodes)``. Action 0 stays; action ``j >= 1``
    moves along the ``j``-th edge out of the node (successors for a ``DiGraph``, neighbours
    otherwise, in the graph's order), and stays where the node has fewer edges. With
    probability ``slip`` the move is replaced by a uniformly random action's outcome.

    Parameters
    ----------
    graph : networkx.Graph or networkx.DiGraph
        At least one node.
    horizon : int
    slip : float in [0, 1], default 0.0
    start : node, optional
        Initial node; default uniform over nodes.
    edge_action : callable (u, v) -> int, optional
        Assigns the action (``1..A-1``) that moves from ``u`` to ``v``, e.g. compass directions
        on a grid. Two edges out of one node must get different actions.
    n_actions : int, optional
        ``A`` (needed with ``edge_action``); default ``1 + max out-degree``.
    features, n_features, seed
        As in :func:`random_mdp`.

    Returns
    -------
    TabularMDP
    """
    if not isinstance(graph, nx.Graph):
        raise TypeError(f"graph must be a networkx Graph or DiGraph, got {type(graph).__name__}")
    nodes = list(graph.nodes)
    if not nodes:
        raise ValueError("graph must have at least one node")
    horizon = check_int("horizon", horizon, minimum=1)
    slip = check_real("slip", slip, 0.0, 1.0)
    index = {node: k for k, node in enumerate(nodes)}
    neighbours = graph.successors if graph.is_directed() else graph.neighbors
    if edge_action is None:
        out_degree = max((sum(1 for _ in neighbours(node)) for node in nodes), default=0)
        n_actions = 1 + out_degree if n_actions is None else check_int("n_actions", n_actions, minimum=1 + out_degree)
    elif n_actions is None:
        raise ValueError("n_actions is required with edge_action")
    else:
        n_actions = check_int("n_actions", n_actions, minimum=1)
    n_states = len(nodes)
    # Graph construction walks the edges once; the arrays below are then built in numpy.
    targets = np.tile(np.arange(n_states)[:, None], (1, n_actions))
    for node in nodes:
        for j, neighbour in enumerate(neighbours(node), start=1):
            action = j if edge_action is None else edge_action(node, neighbour)
            if not isinstance(action, (int, np.integer)) or not 1 <= action < n_actions:
                raise ValueError(
                    f"edge_action({node!r}, {neighbour!r}) = {action!r} must be an action in 1..{n_actions - 1}"
                )
            if targets[index[node], action] != index[node]:
                raise ValueError(f"edge_action gives two edges out of node {node!r} the same action {action}")
            targets[index[node], action] = index[neighbour]
    intended = np.zeros((n_states, n_actions, n_states))
    np.put_along_axis(intended, targets[..., None], 1.0, axis=-1)
    transitions = (1 - slip) * intended + slip * intended.mean(axis=1, keepdims=True)
    if start is None:
        initial = np.full(n_states, 1.0 / n_states)
    else:
        if start not in index:
            raise ValueError(f"start={start!r} is not a node of the graph")
        initial = np.zeros(n_states)
        initial[index[start]] = 1.0
    feature_spec = _feature_spec(features, n_features, n_states, n_actions, as_generator(seed))
    return TabularMDP(transitions, initial, horizon=horizon, features=feature_spec)


GRID_ACTIONS = ("stay", "up", "right", "down", "left")
_GRID_MOVES = {(0, 1): 1, (1, 0): 2, (0, -1): 3, (-1, 0): 4}


def gridworld_graph(width: int, height: int, walls: Any = ()) -> nx.Graph:
    """The ``width x height`` grid as a networkx graph of cells ``(x, y)``, without ``walls``."""
    width = check_int("width", width, minimum=1)
    height = check_int("height", height, minimum=1)
    graph = nx.grid_2d_graph(width, height)
    for wall in walls:
        wall = tuple(wall)
        if wall not in graph:
            raise ValueError(f"wall {wall} is not a cell of the {width} x {height} grid")
        graph.remove_node(wall)
    return graph


def gridworld_mdp(
    width: int,
    height: int,
    horizon: int,
    *,
    walls: Any = (),
    slip: float = 0.0,
    start: Any = (0, 0),
    features: Any = "one_hot",
    n_features: int | None = None,
    seed: Any = None,
) -> TabularMDP:
    """A grid world built from ``networkx.grid_2d_graph``: five actions, walls, slip.

    Actions are :data:`GRID_ACTIONS` (stay, up, right, down, left); a move into a wall or off
    the grid stays. States are the free cells in the order of :func:`gridworld_graph`.

    Parameters
    ----------
    width, height, horizon : int
    walls : iterable of (x, y), optional
        Blocked cells.
    slip : float in [0, 1], default 0.0
        Probability that a uniformly random action's outcome replaces the intended one.
    start : (x, y) or None, default (0, 0)
        Start cell; ``None`` for uniform over free cells.
    features, n_features, seed
        As in :func:`random_mdp`.

    Returns
    -------
    TabularMDP
    """
    graph = gridworld_graph(width, height, walls)
    start = None if start is None else tuple(start)

    def direction(cell: tuple[int, int], neighbour: tuple[int, int]) -> int:
        return _GRID_MOVES[(neighbour[0] - cell[0], neighbour[1] - cell[1])]

    return graph_mdp(
        graph, horizon, slip=slip, start=start, edge_action=direction, n_actions=len(GRID_ACTIONS),
        features=features, n_features=n_features, seed=seed,
    )
