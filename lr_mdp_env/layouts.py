"""Where each state of a world is drawn: the geometry shared by environment frames and plots.

A layout tells a picture how to place the states and actions of a :class:`TabularMDP`:

- :class:`GridLayout`: states are the free cells of a grid (:func:`lr_mdp_env.gridworld_mdp`);
- :class:`GraphLayout`: states are the nodes of a graph drawn with networkx
  (:func:`lr_mdp_env.graph_mdp`);
- :class:`TableLayout`: a states x actions table, for worlds without geometry (random MDPs, the
  contextual bandit) and for the chain (:func:`lr_mdp_env.chain_mdp`), whose table is read left
  to right with each state's advancing action (the lock's key) marked.

The environments' ``rgb_array`` frames (:mod:`lr_mdp_env.envs.rendering`) and the figures of
:mod:`lr_mdp_env.plotting` read the same layouts, so a video and a figure of one world agree.
Layouts are plain arrays, built once per world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import networkx as nx
import numpy as np

from ._validation import frozen
from .families import GRID_ACTIONS, advancing_actions, gridworld_graph
from .mdp import TabularMDP

#: Diverging colormap of rewards (negative blue, zero white, positive red), symmetric about 0.
REWARD_COLORMAP = "RdBu_r"
#: Sequential colormap of probabilities and occupancy measures.
MASS_COLORMAP = "Greens"
#: ``(dx, dy)`` of the grid's actions, in the order of ``GRID_ACTIONS``.
GRID_MOVES = np.array([[0, 0], [0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int64)


def _intended_targets(mdp: TabularMDP) -> np.ndarray:
    """``targets[s, a]``: the most likely next state of each action at the first step, ``(S, A)``.

    Without slip (or with slip below 1/2) that is the move the action intends.
    """
    return frozen(np.argmax(mdp.transitions[0], axis=-1))


@dataclass(frozen=True, eq=False)
class GridLayout:
    """The free cells of a ``width x height`` grid.

    Attributes
    ----------
    width, height : int
    cells : ndarray of int, shape (S, 2)
        ``(x, y)`` of state ``s``; ``y`` grows upwards (the action ``"up"``).
    targets : ndarray of int, shape (S, A)
        The state each action moves to without slipping (itself for a move into a wall).
    """

    width: int
    height: int
    cells: np.ndarray
    targets: np.ndarray

    @property
    def positions(self) -> np.ndarray:
        """Centres of the states' cells, ``(S, 2)`` floats in grid units."""
        return self.cells.astype(float)


@dataclass(frozen=True, eq=False)
class GraphLayout:
    """The nodes of a graph placed by networkx.

    Attributes
    ----------
    positions : ndarray, shape (S, 2)
        Node ``s`` at ``positions[s]``, within ``[-1, 1]^2`` (``networkx.kamada_kawai_layout``).
    edges : ndarray of int, shape (m, 2)
        Pairs ``(s, t)`` with ``s != t`` that some action moves between.
    directed : bool
        Whether some edge has no reverse edge.
    targets : ndarray of int, shape (S, A)
        The state each action moves to without slipping.
    """

    positions: np.ndarray
    edges: np.ndarray
    directed: bool
    targets: np.ndarray


@dataclass(frozen=True, eq=False)
class TableLayout:
    """A states x actions table.

    Attributes
    ----------
    n_states, n_actions : int
    key_actions : ndarray of int, shape (S,), or None
        One action per state to outline (the chain's advancing actions).
    states_across : bool
        Draw states as columns (read left to right, as a chain) instead of rows.
    """

    n_states: int
    n_actions: int
    key_actions: np.ndarray | None = None
    states_across: bool = False


Layout = Union[GridLayout, GraphLayout, TableLayout]


def grid_layout(mdp: TabularMDP, width: int, height: int, walls: Any = ()) -> GridLayout:
    """The layout of ``gridworld_mdp(width, height, ..., walls=walls)``.

    Parameters
    ----------
    mdp : TabularMDP
        The grid world (its transitions give the moves).
    width, height : int
    walls : iterable of (x, y), optional

    Returns
    -------
    GridLayout

    Raises
    ------
    ValueError
        If ``mdp`` does not have one state per free cell and the grid's five actions.
    """
    cells = np.array(list(gridworld_graph(width, height, [] if walls is None else walls).nodes), dtype=np.int64)
    if mdp.n_states != cells.shape[0] or mdp.n_actions != len(GRID_ACTIONS):
        raise ValueError(
            f"mdp has {mdp.n_states} states and {mdp.n_actions} actions, but a {width} x {height} grid "
            f"with these walls has {cells.shape[0]} free cells and {len(GRID_ACTIONS)} actions"
        )
    # The moves from the geometry rather than from the transitions, which slip may blur.
    index = np.full((width + 2, height + 2), -1, dtype=np.int64)
    index[cells[:, 0] + 1, cells[:, 1] + 1] = np.arange(cells.shape[0])
    moved = cells[:, None, :] + GRID_MOVES[None, :, :] + 1
    targets = index[moved[..., 0], moved[..., 1]]
    targets = np.where(targets < 0, np.arange(cells.shape[0])[:, None], targets)
    return GridLayout(int(width), int(height), frozen(cells), frozen(targets))


def graph_layout(mdp: TabularMDP) -> GraphLayout:
    """The layout of a :func:`lr_mdp_env.graph_mdp`: its graph, read from the transitions.

    An edge ``(s, t)`` is a pair of distinct states that some action moves between at the first
    step (slipping only mixes the moves of one node, so it adds no edge). Positions come from
    ``networkx.kamada_kawai_layout`` (deterministic).

    Parameters
    ----------
    mdp : TabularMDP

    Returns
    -------
    GraphLayout
    """
    adjacency = (mdp.transitions[0] > 0).any(axis=1)
    np.fill_diagonal(adjacency, False)
    directed = not np.array_equal(adjacency, adjacency.T)
    graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(mdp.n_states))
    edges = np.argwhere(adjacency if directed else np.triu(adjacency))
    graph.add_edges_from(map(tuple, edges))
    if mdp.n_states == 1:
        positions = np.zeros((1, 2))
    else:
        placed = nx.kamada_kawai_layout(graph.to_undirected(as_view=True))
        positions = np.array([placed[node] for node in range(mdp.n_states)], dtype=float)
    return GraphLayout(frozen(positions), frozen(edges.astype(np.int64).reshape(-1, 2)), directed, _intended_targets(mdp))


def table_layout(mdp: TabularMDP) -> TableLayout:
    """A plain states x actions table of ``mdp``."""
    return TableLayout(mdp.n_states, mdp.n_actions)


def chain_layout(mdp: TabularMDP) -> TableLayout:
    """The table of a :func:`lr_mdp_env.chain_mdp`: states left to right, advancing actions marked."""
    return TableLayout(mdp.n_states, mdp.n_actions, frozen(advancing_actions(mdp)), states_across=True)


def check_layout(layout: Any, mdp: TabularMDP, name: str = "layout") -> Layout:
    """Validate a layout against ``mdp`` (``None``: the plain table)."""
    if layout is None:
        return table_layout(mdp)
    if isinstance(layout, TableLayout):
        shape = (layout.n_states, layout.n_actions)
    elif isinstance(layout, (GridLayout, GraphLayout)):
        shape = layout.targets.shape
    else:
        raise TypeError(f"{name} must be a GridLayout, GraphLayout, TableLayout or None, got {type(layout).__name__}")
    if shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(f"{name} is for {shape[0]} states and {shape[1]} actions, the MDP has {mdp.n_states} and {mdp.n_actions}")
    return layout


__all__ = [
    "GRID_MOVES",
    "MASS_COLORMAP",
    "REWARD_COLORMAP",
    "GraphLayout",
    "GridLayout",
    "Layout",
    "TableLayout",
    "chain_layout",
    "check_layout",
    "graph_layout",
    "grid_layout",
    "table_layout",
]
