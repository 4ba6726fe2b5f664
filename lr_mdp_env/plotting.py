"""Figures of a world: a user's reward, a policy, occupancy measures, users in the shared subspace.

Every function draws one figure (or one panel, with ``ax=``) with matplotlib's object interface,
off-screen (no pyplot, no display), and returns the :class:`matplotlib.figure.Figure`; save it
with ``figure.savefig(path)``. Inputs are arrays in the conventions of docs/model.md (reward
tables ``r[h, s, a]``, policies ``pi[h, s, a]``, occupancy measures ``q[h, s, a]``, parameters
``theta``), so estimates of any learner can be drawn: an agent's ``policy(user)``, ``theta_hat``
``(N, d)`` and ``subspace`` ``(d, r)``.

A ``layout`` (:mod:`lr_mdp_env.layouts`; ``env.unwrapped.layout`` of a registered environment)
places the states: on a grid, cells with walls; on a graph, nodes and edges; otherwise a
states x actions table (the chain's read left to right with its advancing actions outlined).
Rewards use a diverging colormap symmetric about 0, as the environments' ``rgb_array`` frames do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from ._validation import as_real_array, check_int
from .dynamic_programming import check_policy, check_reward
from .identifiability import project_identifiable
from .layouts import MASS_COLORMAP, REWARD_COLORMAP, GraphLayout, GridLayout, Layout, TableLayout, check_layout
from .mdp import TabularMDP
from .rewards import ContextualRewards, LowRankRewards
from .subspace import principal_angle_distance

#: Probabilities below this are not drawn as arrows (they would be invisible).
_SMALLEST_ARROW = 0.02


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is None:
        return Figure(figsize=size, layout="constrained").subplots()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _check_step(step: Any, mdp: TabularMDP) -> int:
    return check_int("step", step, minimum=0, maximum=mdp.horizon - 1)


def _reward_norm(values: np.ndarray) -> Normalize:
    scale = float(np.abs(values).max()) or 1.0
    return Normalize(-scale, scale)


def _size(layout: Layout) -> tuple[float, float]:
    if isinstance(layout, GridLayout):
        return (1.0 + 0.9 * layout.width, 0.5 + 0.9 * layout.height)
    if isinstance(layout, GraphLayout):
        return (5.5, 4.5)
    rows, columns = (layout.n_actions, layout.n_states) if layout.states_across else (layout.n_states, layout.n_actions)
    return (min(1.5 + 0.6 * columns, 12.0), min(1.0 + 0.45 * rows, 12.0))


# -- state values on a layout: the heat maps under every picture ---------------------------------


def _draw_grid(ax: Axes, layout: GridLayout, values: np.ndarray, cmap: str, norm: Normalize):
    image = np.full((layout.height, layout.width), np.nan)
    image[layout.cells[:, 1], layout.cells[:, 0]] = values
    shown = ax.imshow(
        np.ma.masked_invalid(image), origin="lower", cmap=colormaps[cmap].with_extremes(bad="0.25"), norm=norm,
        extent=(-0.5, layout.width - 0.5, -0.5, layout.height - 0.5),
    )  # walls are the masked cells, dark grey
    ax.set_xticks(range(layout.width))
    ax.set_yticks(range(layout.height))
    ax.set_xticks(np.arange(layout.width + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(layout.height + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return shown


def _draw_graph(ax: Axes, layout: GraphLayout, values: np.ndarray, cmap: str, norm: Normalize):
    positions = layout.positions
    if layout.directed:
        for source, target in layout.edges:
            ax.add_patch(FancyArrowPatch(
                positions[source], positions[target], arrowstyle="-|>", mutation_scale=10,
                color="0.6", shrinkA=9, shrinkB=9, linewidth=1.0, zorder=1,
            ))
    else:
        ax.add_collection(LineCollection(positions[layout.edges], colors="0.6", linewidths=1.0, zorder=1))
    shown = ax.scatter(
        positions[:, 0], positions[:, 1], c=values, cmap=cmap, norm=norm, s=260, edgecolors="0.2",
        linewidths=0.8, zorder=2,
    )
    for node, (x, y) in enumerate(positions):
        ax.annotate(str(node), (x, y), ha="center", va="center", fontsize=7, zorder=3)
    ax.set_aspect("equal")
    ax.margins(0.12)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _draw_table(ax: Axes, layout: TableLayout, values: np.ndarray, cmap: str, norm: Normalize, label: str):
    """``values`` ``(S, A)`` as a table; states as rows, or columns with ``states_across``."""
    across = layout.states_across
    shown = ax.imshow(values.T if across else values, cmap=cmap, norm=norm, aspect="auto")
    state_axis, action_axis = (ax.set_xlabel, ax.set_ylabel) if across else (ax.set_ylabel, ax.set_xlabel)
    state_axis(label)
    action_axis("action a")
    (ax.set_xticks if across else ax.set_yticks)(range(layout.n_states))
    (ax.set_yticks if across else ax.set_xticks)(range(layout.n_actions))
    if layout.key_actions is not None:
        for state, action in enumerate(layout.key_actions):
            corner = (state - 0.5, action - 0.5) if across else (action - 0.5, state - 0.5)
            ax.add_patch(Rectangle(corner, 1, 1, fill=False, edgecolor="green", linewidth=2.0))
    return shown


def _state_values(ax: Axes, layout: Layout, by_state: np.ndarray, by_cell: np.ndarray, cmap: str, norm: Normalize, label: str):
    """Heat map of ``by_state`` ``(S,)`` on a grid or graph, or of ``by_cell`` ``(S, A)`` as a table."""
    if isinstance(layout, GridLayout):
        return _draw_grid(ax, layout, by_state, cmap, norm)
    if isinstance(layout, GraphLayout):
        return _draw_graph(ax, layout, by_state, cmap, norm)
    return _draw_table(ax, layout, by_cell, cmap, norm, label)


def _user_reward(mdp: TabularMDP, reward: Any) -> np.ndarray:
    reward = check_reward(mdp, reward)
    if reward.ndim != 3:
        raise ValueError(f"reward must be one user's table of shape (H, S, A), got shape {reward.shape}")
    return reward


def _reward_map(ax: Axes, layout: Layout, reward: np.ndarray, step: int) -> None:
    """The reward of step ``step`` on the layout, with its colour bar (symmetric about 0)."""
    table = reward[step]
    shown = _state_values(ax, layout, table.mean(axis=1), table, REWARD_COLORMAP, _reward_norm(reward), "state s")
    ax.figure.colorbar(shown, ax=ax, label=f"reward r[h={step}]")


# -- the public figures ----------------------------------------------------------------------------


def plot_reward(
    mdp: TabularMDP, reward: Any, *, layout: Layout | None = None, step: int = 0, ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """One user's reward ``r[h, s, a]`` at step ``h = step``, on the world's layout.

    On a grid or graph the states are coloured by the mean reward over actions (the families'
    rewards are rewards of states); a table shows every ``(s, a)``.

    Parameters
    ----------
    mdp : TabularMDP
    reward : array_like, shape (H, S, A)
        E.g. ``rewards.reward_table(mdp)[i]`` or ``env.unwrapped.params.reward_table[i]``.
    layout : GridLayout, GraphLayout or TableLayout, optional
        Default the states x actions table.
    step : int, default 0
    ax : matplotlib Axes, optional
        Draw into this panel instead of a new figure.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    reward = _user_reward(mdp, reward)
    layout = check_layout(layout, mdp)
    step = _check_step(step, mdp)
    ax = _axes(ax, _size(layout))
    _reward_map(ax, layout, reward, step)
    ax.set_title(title if title is not None else f"reward at step {step}")
    return ax.figure


def plot_policy(
    mdp: TabularMDP, policy: Any, *, layout: Layout | None = None, step: int = 0, reward: Any = None,
    ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """A policy ``pi[h, s, a]`` at step ``h = step``: arrows on a grid or graph, probabilities elsewhere.

    On a grid or graph each action that moves is an arrow towards the state it leads to, as long
    as its probability (a full-length arrow reaches 0.45 of the way); the probability of staying
    is the area of a dot. Over ``reward`` (a user's table), the states are coloured by it. A
    table shows ``pi[h, s, a]`` in shades, with the probabilities written in.

    Parameters
    ----------
    mdp : TabularMDP
    policy : array_like, shape (H, S, A)
        E.g. ``agent.policy(user)`` or ``backward_induction(mdp, r)[0][i]``.
    layout : GridLayout, GraphLayout or TableLayout, optional
    step : int, default 0
    reward : array_like, shape (H, S, A), optional
        Colours the states of a grid or graph (at the same step).
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    policy = check_policy(mdp, policy)
    if policy.ndim != 3:
        raise ValueError(f"policy must be one policy of shape (H, S, A), got shape {policy.shape}")
    layout = check_layout(layout, mdp)
    step = _check_step(step, mdp)
    ax = _axes(ax, _size(layout))
    probabilities = policy[step]
    if isinstance(layout, TableLayout):
        shown = _draw_table(ax, layout, probabilities, MASS_COLORMAP, Normalize(0.0, 1.0), "state s")
        rows, columns = np.nonzero(probabilities >= 0.005)
        for state, action in zip(rows, columns):
            x, y = (state, action) if layout.states_across else (action, state)
            value = probabilities[state, action]
            ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
        ax.figure.colorbar(shown, ax=ax, label=f"pi[h={step}](a | s)")
    else:
        if reward is not None:
            _reward_map(ax, layout, _user_reward(mdp, reward), step)
        else:
            _state_values(ax, layout, np.zeros(mdp.n_states), None, "Greys", Normalize(0.0, 1.0), "state s")
        positions = layout.positions
        moves = positions[layout.targets] - positions[:, None, :]  # (S, A, 2)
        moving = np.any(moves != 0, axis=-1)
        drawn = moving & (probabilities >= _SMALLEST_ARROW)
        states, actions = np.nonzero(drawn)
        arrows = 0.45 * probabilities[states, actions, None] * moves[states, actions]
        ax.quiver(
            positions[states, 0], positions[states, 1], arrows[:, 0], arrows[:, 1], angles="xy",
            scale_units="xy", scale=1, width=0.012, color="black", zorder=4,
        )
        staying = np.where(moving, 0.0, probabilities).sum(axis=1)
        ax.scatter(positions[:, 0], positions[:, 1], s=90 * staying, color="black", zorder=4)
    ax.set_title(title if title is not None else f"policy at step {step}")
    return ax.figure


def plot_occupancy(
    mdp: TabularMDP, occupancy_measure: Any, *, layout: Layout | None = None, ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """An occupancy measure ``q[h, s, a]`` (:func:`lr_mdp_env.occupancy`).

    On a grid or graph the states are shaded by their expected number of visits
    ``sum_{h, a} q[h, s, a]``; otherwise the picture is the steps x states table of
    ``sum_a q[h, s, a]``, the probability of being in ``s`` at step ``h``.

    Parameters
    ----------
    mdp : TabularMDP
    occupancy_measure : array_like, shape (H, S, A)
        Non-negative; each step sums to 1 for a policy's occupancy.
    layout : GridLayout, GraphLayout or TableLayout, optional
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    q = as_real_array("occupancy_measure", occupancy_measure, (3,))
    expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
    if q.shape != expected:
        raise ValueError(f"occupancy_measure must have shape (H, S, A) = {expected}, got {q.shape}")
    if np.any(q < 0):
        raise ValueError("occupancy_measure must be non-negative")
    layout = check_layout(layout, mdp)
    if isinstance(layout, TableLayout):
        ax = _axes(ax, (min(1.5 + 0.5 * mdp.n_states, 12.0), min(1.0 + 0.4 * mdp.horizon, 12.0)))
        by_step = q.sum(axis=2)
        shown = ax.imshow(by_step, cmap=MASS_COLORMAP, norm=Normalize(0.0, max(float(by_step.max()), 1e-12)), aspect="auto")
        ax.set_xlabel("state s")
        ax.set_ylabel("step h")
        ax.set_xticks(range(mdp.n_states))
        ax.set_yticks(range(mdp.horizon))
        ax.figure.colorbar(shown, ax=ax, label="Pr(s_h = s)")
    else:
        ax = _axes(ax, _size(layout))
        visits = q.sum(axis=(0, 2))
        shown = _state_values(ax, layout, visits, None, MASS_COLORMAP, Normalize(0.0, max(float(visits.max()), 1e-12)), "state s")
        ax.figure.colorbar(shown, ax=ax, label="expected visits")
    ax.set_title(title if title is not None else "occupancy measure")
    return ax.figure


def plot_users_in_subspace(
    rewards: LowRankRewards | ContextualRewards, *, theta_hat: Any = None, subspace_hat: Any = None,
    mdp: TabularMDP | None = None, ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """The users' reward vectors in the shared subspace: their coordinates ``U*^T (theta_i - Theta_0)``.

    With ``theta_hat`` the estimated users are drawn in the same coordinates, each joined to its
    true point, so the figure shows the error of every user in the planted subspace. For rank
    ``r >= 2`` the first two coordinates are the axes; for ``r = 1`` the coordinate is plotted
    against the user index.

    Parameters
    ----------
    rewards : LowRankRewards or ContextualRewards
        The truth: ``theta`` ``(d, N)``, ``subspace`` ``U*`` ``(d, r)`` and ``base`` ``Theta_0``
        (zero for contextual rewards).
    theta_hat : array_like, shape (N, d), optional
        Estimated parameters, one row per user (an estimator's ``theta_hat``).
    subspace_hat : array_like, shape (d, r_hat), optional
        Estimated subspace (an estimator's ``subspace``): the title reports
        ``sin`` of its largest principal angle to ``U*``.
    mdp : TabularMDP, optional
        If given, directions that comparisons cannot identify
        (:func:`lr_mdp_env.identifiability.unidentified_directions`) are removed from true and
        estimated parameters before projecting, so estimates that differ only there coincide.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    References
    ----------
    Liu, Wang, Li, Shen and Yang, *A Shared Low-Rank Adaptation Approach to Personalized RLHF*,
    arXiv:2503.19201 (P-ShareLoRA).
    """
    if not isinstance(rewards, (LowRankRewards, ContextualRewards)):
        raise TypeError(f"rewards must be a LowRankRewards or ContextualRewards, got {type(rewards).__name__}")
    theta = rewards.theta
    n_features, n_users = theta.shape
    base = getattr(rewards, "base", np.zeros_like(theta))
    subspace = rewards.subspace
    if mdp is not None and mdp.n_features != n_features:
        raise ValueError(f"mdp has {mdp.n_features} features but the rewards have {n_features}")

    def coordinates(parameters: np.ndarray) -> np.ndarray:
        """``(N, r)`` coordinates on ``U*`` of users' parameters ``(N, d)``."""
        personal = parameters - base.T
        if mdp is not None:
            personal = project_identifiable(mdp, personal)
        return personal @ subspace

    truth = coordinates(theta.T)
    estimate = None
    if theta_hat is not None:
        theta_hat = as_real_array("theta_hat", theta_hat, (2,))
        if theta_hat.shape != (n_users, n_features):
            raise ValueError(f"theta_hat must have shape (N, d) = {(n_users, n_features)}, got {theta_hat.shape}")
        estimate = coordinates(theta_hat)
    distance = None
    if subspace_hat is not None:
        subspace_hat = as_real_array("subspace_hat", subspace_hat, (2,))
        if subspace_hat.shape[0] != n_features:
            raise ValueError(f"subspace_hat must have shape (d, r_hat) with d = {n_features}, got {subspace_hat.shape}")
        distance = principal_angle_distance(subspace, subspace_hat)
    ax = _axes(ax, (5.0, 4.2))
    if subspace.shape[1] >= 2:
        x_true, y_true = truth[:, 0], truth[:, 1]
        ax.set_xlabel("coordinate 1 on U*")
        ax.set_ylabel("coordinate 2 on U*")
        ax.set_aspect("equal", adjustable="datalim")
    else:
        x_true, y_true = np.arange(n_users, dtype=float), truth[:, 0]
        ax.set_xlabel("user i")
        ax.set_ylabel("coordinate on U*")
    ax.axhline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.scatter(x_true, y_true, color="black", s=30, label="true", zorder=3)
    if estimate is not None:
        if subspace.shape[1] >= 2:
            x_hat, y_hat = estimate[:, 0], estimate[:, 1]
        else:
            x_hat, y_hat = x_true, estimate[:, 0]
        ax.add_collection(LineCollection(
            np.stack([np.stack([x_true, y_true], 1), np.stack([x_hat, y_hat], 1)], axis=1),
            colors="tab:orange", linewidths=0.8, zorder=2,
        ))
        ax.scatter(x_hat, y_hat, facecolors="none", edgecolors="tab:orange", s=30, label="estimated", zorder=3)
        ax.legend(loc="best", fontsize=8)
    default = f"{n_users} users in the shared subspace (r = {subspace.shape[1]})"
    if distance is not None:
        default += f"\nsin angle(U*, U_hat) = {distance:.3f}"
    ax.set_title(title if title is not None else default)
    return ax.figure


__all__ = ["plot_occupancy", "plot_policy", "plot_reward", "plot_users_in_subspace"]
