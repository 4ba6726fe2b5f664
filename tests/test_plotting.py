"""Figures of :mod:`lr_mdp_env.plotting`: the drawn data are the inputs, placed by the layout.

Each test reads the artists back (image arrays, arrow vectors, marker positions) and compares
them with values computed here from the model: cell values from the reward table, arrow vectors
from the grid's geometry written out by hand, coordinates from ``U*^T theta``.
"""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.quiver import Quiver

import lr_mdp_env
from lr_mdp_env import backward_induction, layouts, occupancy, plotting, uniform_policy
from lr_mdp_env.identifiability import project_identifiable


def _grid_world():
    env = gym.make("lr_mdp_env/GridWorld-v0", width=4, height=3, walls=[[1, 1]], n_users=6, model_seed=5)
    return env.unwrapped


def _image(ax) -> np.ma.MaskedArray:
    (image,) = [artist for artist in ax.get_children() if isinstance(artist, AxesImage)]
    return image.get_array()


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_reward_on_a_grid_is_the_state_reward_with_walls_masked():
    world = _grid_world()
    reward = world.params.reward_table[2]
    figure = plotting.plot_reward(world.mdp, reward, layout=world.layout, step=1)
    assert isinstance(figure, Figure) and _png_bytes(figure).startswith(b"\x89PNG")
    ax = figure.axes[0]
    image = _image(ax)
    assert image.shape == (3, 4)
    cells = list(lr_mdp_env.gridworld_graph(4, 3, [(1, 1)]).nodes)
    for state, (x, y) in enumerate(cells):
        assert image[y, x] == pytest.approx(reward[1, state].mean())
    assert image.mask[1, 1] and image.mask.sum() == 1  # the wall
    scale = np.abs(reward).max()
    norm = ax.get_images()[0].norm
    assert (norm.vmin, norm.vmax) == (pytest.approx(-scale), pytest.approx(scale))


def test_reward_as_a_table_and_the_chain_read_across():
    world = gym.make("lr_mdp_env/RandomLowRank-v0", n_states=5, n_actions=3).unwrapped
    figure = plotting.plot_reward(world.mdp, world.params.reward_table[0], step=2)
    np.testing.assert_array_equal(_image(figure.axes[0]), world.params.reward_table[0, 2])
    chain = gym.make("lr_mdp_env/Chain-v0", n_states=4, horizon=6, distractor=0.5).unwrapped
    ax = plotting.plot_reward(chain.mdp, chain.params.reward_table[1], layout=chain.layout).axes[0]
    np.testing.assert_array_equal(_image(ax), chain.params.reward_table[1, 0].T)  # actions down, states across
    keys = sorted((patch.get_x() + 0.5, patch.get_y() + 0.5) for patch in ax.patches if isinstance(patch, Rectangle))
    advancing = lr_mdp_env.families.advancing_actions(chain.mdp)
    assert keys == sorted((float(state), float(action)) for state, action in enumerate(advancing))


def test_policy_arrows_on_a_grid_follow_the_moves():
    world = _grid_world()
    rng = np.random.default_rng(0)
    policy = rng.dirichlet(np.ones(5), size=(world.mdp.horizon, world.mdp.n_states))
    policy[0, 0] = [0.0, 0.0, 0.0, 0.99, 0.01]  # from (0, 0): down and left hit the border
    ax = plotting.plot_policy(world.mdp, policy, layout=world.layout, reward=world.params.reward_table[0]).axes[0]
    (quiver,) = [artist for artist in ax.get_children() if isinstance(artist, Quiver)]
    cells = list(lr_mdp_env.gridworld_graph(4, 3, [(1, 1)]).nodes)
    free = set(cells)
    expected, stay = {}, np.zeros(len(cells))
    for state, (x, y) in enumerate(cells):
        for action, (dx, dy) in enumerate([(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)]):
            probability = policy[0, state, action]
            if (dx, dy) == (0, 0) or (x + dx, y + dy) not in free:
                stay[state] += probability
            elif probability >= 0.02:
                expected[(x, y, dx, dy)] = 0.45 * probability
    drawn = {}
    for (x, y), (u, v) in zip(quiver.get_offsets(), np.stack([quiver.U, quiver.V], axis=1)):
        length = np.hypot(u, v)
        drawn[(round(x), round(y), round(u / length), round(v / length))] = length
    assert drawn.keys() == expected.keys()
    for key, length in expected.items():
        assert drawn[key] == pytest.approx(length)
    (dots,) = [artist for artist in ax.collections if isinstance(artist, PathCollection)]
    np.testing.assert_allclose(dots.get_sizes(), 90 * stay)
    assert stay[0] == pytest.approx(1.0)


def test_policy_arrows_on_a_graph_point_along_edges():
    world = gym.make("lr_mdp_env/Graph-v0", graph="path", n_nodes=4).unwrapped
    optimal, _ = backward_induction(world.mdp, world.params.reward_table)
    ax = plotting.plot_policy(world.mdp, optimal[0], layout=world.layout).axes[0]
    (quiver,) = [artist for artist in ax.get_children() if isinstance(artist, Quiver)]
    positions = world.layout.positions
    edges = {tuple(edge) for edge in world.layout.edges} | {tuple(edge[::-1]) for edge in world.layout.edges}
    for start, vector in zip(quiver.get_offsets(), np.stack([quiver.U, quiver.V], axis=1)):
        source = int(np.argmin(np.linalg.norm(positions - start, axis=1)))
        target = int(np.argmin(np.linalg.norm(positions - (start + vector / 0.45), axis=1)))
        assert (source, target) in edges  # a deterministic policy's arrow goes 0.45 of an edge
    moving = optimal[0, 0] * (world.layout.targets != np.arange(4)[:, None])
    assert len(quiver.get_offsets()) == int(np.sum(moving >= 0.02))


def test_policy_as_a_table_writes_the_probabilities():
    world = gym.make("lr_mdp_env/ContextualBandit-v0", n_queries=3, n_answers=2).unwrapped
    policy = np.array([[[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]]])
    ax = plotting.plot_policy(world.mdp, policy).axes[0]
    np.testing.assert_array_equal(_image(ax), policy[0])
    texts = sorted((text.get_position(), text.get_text()) for text in ax.texts)
    assert texts == sorted([((1, 0), "0.75"), ((0, 0), "0.25"), ((0, 1), "1.00"), ((0, 2), "0.50"), ((1, 2), "0.50")])


def test_occupancy_as_steps_by_states_and_as_visits_on_a_grid():
    world = gym.make("lr_mdp_env/RandomLowRank-v0", n_states=4, n_actions=2, horizon=3).unwrapped
    q = occupancy(world.mdp, uniform_policy(world.mdp))
    image = _image(plotting.plot_occupancy(world.mdp, q).axes[0])
    np.testing.assert_allclose(image, q.sum(axis=2))
    np.testing.assert_allclose(image.sum(axis=1), 1.0)  # a distribution per step
    grid = _grid_world()
    q = occupancy(grid.mdp, uniform_policy(grid.mdp))
    image = _image(plotting.plot_occupancy(grid.mdp, q, layout=grid.layout).axes[0])
    cells = list(lr_mdp_env.gridworld_graph(4, 3, [(1, 1)]).nodes)
    for state, (x, y) in enumerate(cells):
        assert image[y, x] == pytest.approx(q[:, state].sum())
    assert image.sum() == pytest.approx(grid.mdp.horizon)  # H visits in all


def test_users_in_the_shared_subspace():
    rewards = lr_mdp_env.low_rank_rewards(12, 7, 2, condition_number=2.0, base=np.linspace(0, 1, 12), seed=3)
    rng = np.random.default_rng(1)
    theta_hat = rewards.theta.T + 0.05 * rng.standard_normal((7, 12))
    subspace_hat = rewards.subspace + 0.1 * rng.standard_normal((12, 2))
    ax = plotting.plot_users_in_subspace(rewards, theta_hat=theta_hat, subspace_hat=subspace_hat).axes[0]
    true_points, estimated_points = (artist.get_offsets() for artist in ax.collections if isinstance(artist, PathCollection))
    coordinates = (rewards.theta - rewards.base).T @ rewards.subspace
    np.testing.assert_allclose(true_points, coordinates)
    # The personal part is exactly U* diag(sigma) W*^T, so its coordinates are W* diag(sigma).
    np.testing.assert_allclose(np.abs(true_points), np.abs(rewards.user_factors * rewards.singular_values), atol=1e-12)
    np.testing.assert_allclose(estimated_points, (theta_hat - rewards.base.T) @ rewards.subspace)
    distance = lr_mdp_env.principal_angle_distance(rewards.subspace, subspace_hat)
    assert f"{distance:.3f}" in ax.get_title()


def test_users_in_the_subspace_of_rank_one_and_without_unidentified_directions():
    mdp = lr_mdp_env.random_mdp(3, 2, 2, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, 5, 1, mdp=mdp, seed=2)
    # An estimate that differs from the truth only by the constant (unidentified) direction.
    theta_hat = rewards.theta.T + 3.0
    ax = plotting.plot_users_in_subspace(rewards, theta_hat=theta_hat, mdp=mdp).axes[0]
    true_points, estimated_points = (artist.get_offsets() for artist in ax.collections if isinstance(artist, PathCollection))
    np.testing.assert_array_equal(true_points[:, 0], np.arange(5))  # users along the x axis
    np.testing.assert_allclose(estimated_points, true_points, atol=1e-12)
    expected = project_identifiable(mdp, rewards.theta.T) @ rewards.subspace
    np.testing.assert_allclose(true_points[:, 1], expected[:, 0])


def test_panels_share_a_figure_when_given_axes():
    world = _grid_world()
    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert plotting.plot_reward(world.mdp, world.params.reward_table[0], layout=world.layout, ax=left) is figure
    assert plotting.plot_occupancy(world.mdp, occupancy(world.mdp, uniform_policy(world.mdp)), layout=world.layout, ax=right) is figure


def test_bad_arguments_name_the_problem():
    world = _grid_world()
    mdp, table = world.mdp, world.params.reward_table
    other = layouts.table_layout(lr_mdp_env.random_mdp(3, 2, 2))
    cases = [
        (lambda: plotting.plot_reward(mdp, table), ValueError, r"reward must be one user's table of shape \(H, S, A\)"),
        (lambda: plotting.plot_reward(mdp, table[0, :, :2]), ValueError, r"reward must have shape"),
        (lambda: plotting.plot_reward(mdp, table[0], step=mdp.horizon), ValueError, r"step must be at most"),
        (lambda: plotting.plot_reward(mdp, table[0], layout=other), ValueError, r"layout is for 3 states"),
        (lambda: plotting.plot_reward(mdp, table[0], ax="left"), TypeError, r"ax must be a matplotlib Axes"),
        (lambda: plotting.plot_policy(mdp, np.full((mdp.horizon, mdp.n_states, 5), 0.3)), ValueError, r"policy"),
        (lambda: plotting.plot_occupancy(mdp, -np.ones((mdp.horizon, mdp.n_states, 5))), ValueError, r"occupancy_measure must be non-negative"),
        (lambda: plotting.plot_occupancy(mdp, np.ones((2, 2, 2))), ValueError, r"occupancy_measure must have shape"),
        (lambda: plotting.plot_users_in_subspace(table), TypeError, r"rewards must be a LowRankRewards"),
        (lambda: plotting.plot_users_in_subspace(world.params.rewards, theta_hat=np.zeros((2, 2))), ValueError, r"theta_hat must have shape \(N, d\)"),
        (lambda: plotting.plot_users_in_subspace(world.params.rewards, subspace_hat=np.zeros((3, 2))), ValueError, r"subspace_hat must have shape"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
