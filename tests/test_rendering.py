"""``rgb_array`` frames of every id: what they show, and that videos of them can be recorded.

Pixel checks use oracles built from the model alone: a cell's colour is the colormap of the
user's reward (computed here from the reward table), the agent's disk is where the environment's
``info`` says the state is, the step strip counts the steps of ``info["time"]``.
"""

from __future__ import annotations

import os

import gymnasium as gym
import matplotlib
import numpy as np
import pytest
from gymnasium.wrappers import HumanRendering, RecordVideo, RenderCollection
from moviepy.video.io.VideoFileClip import VideoFileClip

import lr_mdp_env
from lr_mdp_env import layouts
from lr_mdp_env.envs import ENV_IDS, TabularPreferenceEnv, TabularPreferenceVectorEnv, registration
from lr_mdp_env.envs.rendering import GRID_CELL, STRIP, node_pixels, reward_colors, table_cell


def _colour(value: float, scale: float) -> np.ndarray:
    """The colour the frames must use for ``value``: matplotlib's diverging map, by hand."""
    rgba = matplotlib.colormaps[layouts.REWARD_COLORMAP](0.5 + 0.5 * np.clip(value / scale, -1, 1))
    return (np.asarray(rgba[:3]) * 255).round().astype(np.uint8)


def _strip_steps(frame: np.ndarray, horizon: int) -> int:
    """Number of finished steps shown in the strip under the picture."""
    row = frame[-STRIP // 2]
    edges = np.linspace(0, frame.shape[1], horizon + 1).round().astype(int)
    middles = (edges[:-1] + edges[1:]) // 2
    return int(np.sum(row[middles, 0] < 150))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_renders_rgb_frames_of_a_fixed_size(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    assert env.render_mode == "rgb_array" and "rgb_array" in env.metadata["render_modes"]
    shapes = set()
    env.reset(seed=0)
    for step in range(2 * env.unwrapped.mdp.horizon + 1):
        frame = env.render()
        assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        shapes.add(frame.shape)
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    assert len(shapes) == 1  # a video needs frames of one size
    height, width, _ = shapes.pop()
    assert height % 16 == 0 and width % 16 == 0


def test_grid_frame_shows_the_reward_heat_map_walls_and_the_agent():
    walls = [[1, 1], [2, 1]]
    env = gym.make("lr_mdp_env/GridWorld-v0", width=4, height=3, walls=walls, start=[0, 0], render_mode="rgb_array", user=2, model_seed=3)
    table = env.unwrapped.params.reward_table[2]
    scale = np.abs(table).max()
    cells = list(lr_mdp_env.gridworld_graph(4, 3, [tuple(wall) for wall in walls]).nodes)
    _, info = env.reset(seed=0)
    for step in range(3):
        frame = env.render()
        assert _strip_steps(frame, 8) == info["time"] == step
        for state, (x, y) in enumerate(cells):
            # Cell (x, y) is drawn with y upwards: its centre pixel, and one near a corner.
            row, column = int((2 - y + 0.5) * GRID_CELL), int((x + 0.5) * GRID_CELL)
            corner = frame[int((2 - y) * GRID_CELL) + 4, int(x * GRID_CELL) + 4]
            expected = _colour(table[step, state].mean(), scale)
            assert np.abs(corner.astype(int) - expected).max() <= 1
            is_agent = state == info["state"]
            assert np.array_equal(frame[row, column], [0, 0, 0]) == is_agent
        for x, y in walls:
            np.testing.assert_array_equal(frame[int((2 - y + 0.5) * GRID_CELL), int((x + 0.5) * GRID_CELL)], [64, 64, 64])
        _, _, _, _, info = env.step(2)  # right


def test_graph_frame_colours_the_nodes_and_rings_the_agent():
    env = gym.make("lr_mdp_env/Graph-v0", graph="cycle", n_nodes=6, render_mode="rgb_array", user=1)
    base = env.unwrapped
    table = base.params.reward_table[1]
    centers, radius = node_pixels(base.layout)
    assert base.layout.edges.shape == (6, 2) and not base.layout.directed  # the cycle's six edges
    _, info = env.reset(seed=4)
    frame = env.render()
    for node, (row, column) in enumerate(centers.round().astype(int)):
        expected = _colour(table[0, node].mean(), np.abs(table).max())
        assert np.abs(frame[row, column].astype(int) - expected).max() <= 1
        ring = frame[row, int(round(column + radius + 5))]
        assert np.array_equal(ring, [0, 0, 0]) == (node == info["state"])


def test_directed_graph_frame_draws_arrowheads():
    edges = [[0, 1], [1, 2], [2, 0]]
    directed = gym.make("lr_mdp_env/Graph-v0", edges=edges, directed=True, render_mode="rgb_array").unwrapped
    undirected = gym.make("lr_mdp_env/Graph-v0", edges=edges, render_mode="rgb_array").unwrapped
    assert directed.layout.directed and not undirected.layout.directed
    np.testing.assert_array_equal(directed.layout.positions, undirected.layout.positions)
    for env in (directed, undirected):
        env.reset(seed=0)
    grey = [np.sum(np.all(env.render() == [150, 150, 150], axis=-1)) for env in (directed, undirected)]
    assert grey[0] > grey[1]  # the same lines, plus three filled arrowheads


@pytest.mark.parametrize("env_id", ["lr_mdp_env/RandomLowRank-v0", "lr_mdp_env/Chain-v0", "lr_mdp_env/ContextualBandit-v0"])
def test_table_frames_show_every_cell_the_state_and_the_played_cell(env_id):
    env = gym.make(env_id, render_mode="rgb_array", user=3, **({"distractor": 0.5} if "Chain" in env_id else {}))
    base = env.unwrapped
    layout = base.layout
    table = base.params.reward_table[3]
    scale = np.abs(table).max()
    cell = table_cell(layout)
    horizon, n_states, n_actions = table.shape

    def corner(frame, state, action):
        row, column = (action, state) if layout.states_across else (state, action)
        return frame[row * cell + cell // 2, column * cell + 3 * cell // 8 - cell // 4]

    _, info = env.reset(seed=1)
    played = None
    for _ in range(horizon):
        frame = env.render()
        step = info["time"]
        for state in range(n_states):
            for action in range(n_actions):
                if state == info["state"]:
                    continue  # outlined in black
                expected = _colour(table[min(step, horizon - 1), state, action], scale)
                if layout.key_actions is not None and layout.key_actions[state] == action:
                    continue  # outlined in green
                assert np.abs(corner(frame, state, action).astype(int) - expected).max() <= 1
        if played is not None:
            row, column = (played[1], played[0]) if layout.states_across else played
            assert np.array_equal(frame[row * cell + cell // 2, column * cell + cell // 2], [0, 0, 0])
        previous = info["state"]
        action = int(env.action_space.sample())
        _, _, terminated, _, info = env.step(action)
        played = (previous, action)
        if terminated:
            break
    if "Chain" in env_id:
        # The lock's key: each state's advancing action, outlined in green.
        np.testing.assert_array_equal(layout.key_actions, lr_mdp_env.families.advancing_actions(base.mdp))
        frame = env.render()
        for state, action in enumerate(layout.key_actions):
            if state != info["state"]:  # the current state's black outline covers its key
                assert np.array_equal(frame[action * cell + 1, state * cell + cell // 2], [0, 140, 0])


def test_reward_colours_are_the_diverging_map_centred_on_zero():
    values = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 7.0])
    colours = reward_colors(values, 2.0).astype(int)
    assert colours[2].min() > 240  # zero is white
    assert colours[0, 2] > colours[0, 0] and colours[4, 0] > colours[4, 2]  # blue below, red above
    np.testing.assert_array_equal(colours[4], colours[5])  # clipped at the scale
    for value, colour in zip(values, colours):
        assert np.abs(colour - _colour(value, 2.0)).max() <= 1


def test_render_before_reset_and_direct_construction():
    world = lr_mdp_env.envs.chain_world(4, 5, model_seed=2)
    env = TabularPreferenceEnv(*world, render_mode="rgb_array", layout=layouts.chain_layout(world.mdp))
    before = env.render()
    env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), before)  # the chain starts in state 0
    plain = TabularPreferenceEnv(*world, render_mode="rgb_array")
    assert isinstance(plain.layout, layouts.TableLayout) and plain.layout.key_actions is None
    with pytest.raises(TypeError, match="layout must be a GridLayout"):
        TabularPreferenceEnv(*world, layout="grid")
    other = lr_mdp_env.chain_mdp(5, 5)
    with pytest.raises(ValueError, match="layout is for 5 states and 2 actions, the MDP has 4 and 2"):
        TabularPreferenceEnv(*world, layout=layouts.chain_layout(other))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_vector_env_renders_one_frame_per_copy_like_the_single_env(env_id):
    pair = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", render_mode="rgb_array", users=[0, 1])
    pair.reset(seed=5)
    frames = pair.render()
    assert isinstance(frames, tuple) and len(frames) == 2 and frames[0].shape == frames[1].shape
    # One copy draws from the seeded stream exactly as the single env does: same states, same frames.
    vector = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", render_mode="rgb_array", user=1)
    single = gym.make(env_id, render_mode="rgb_array", user=1)
    assert isinstance(vector, TabularPreferenceVectorEnv)
    vector.reset(seed=5)
    single.reset(seed=5)
    for _ in range(single.unwrapped.mdp.horizon):
        (frame,) = vector.render()
        np.testing.assert_array_equal(frame, single.render())
        vector.step(np.array([1 % single.action_space.n]))
        single.step(1 % single.action_space.n)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_collection_and_human_rendering_wrappers(env_id):
    env = gym.make(env_id, render_mode="rgb_array_list")
    assert isinstance(env, RenderCollection)
    env.reset(seed=0)
    env.step(0)
    frames = env.render()
    assert len(frames) == 2 and all(frame.shape == frames[0].shape for frame in frames)
    # "human" is drawn by Gymnasium's HumanRendering around rgb_array (shown only with a display).
    with pytest.warns(UserWarning, match="HumanRendering wrapper is being applied"):
        human = gym.make(env_id, render_mode="human")
    assert isinstance(human, HumanRendering) and human.render_mode == "human"
    assert human.env.render_mode == "rgb_array"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_record_video_of_an_episode(env_id, tmp_path):
    folder = tmp_path / "videos"
    env = RecordVideo(gym.make(env_id, render_mode="rgb_array"), video_folder=str(folder), episode_trigger=lambda episode: True, disable_logger=True)
    env.reset(seed=0)
    rendered, done = [env.render()], False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        rendered.append(env.render())
        done = terminated or truncated
    env.close()
    (video,) = os.listdir(folder)
    clip = VideoFileClip(str(folder / video))
    try:
        decoded = [frame.astype(float) for frame in clip.iter_frames()]
    finally:
        clip.close()
    horizon = env.spec.max_episode_steps
    assert len(decoded) == horizon + 1 == len(rendered)
    assert decoded[0].shape == rendered[0].shape
    # The codec is lossy, so each decoded frame is identified with its rendered frame: it is
    # nearer to it than to any rendered frame that differs from it.
    for k, frame in enumerate(decoded):
        distances = [np.abs(frame - other).mean() for other in rendered]
        assert distances[k] == min(distances)


def test_layouts_are_made_when_a_picture_first_needs_them(monkeypatch):
    made = []
    place = registration.graph_layout
    monkeypatch.setattr(registration, "graph_layout", lambda mdp: made.append(mdp) or place(mdp))
    env = gym.make("lr_mdp_env/Graph-v0", render_mode="rgb_array")
    vector = gym.make_vec("lr_mdp_env/Graph-v0", num_envs=2, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    env.step(1)
    vector.reset(seed=0)
    assert made == []  # stepping never places the nodes (an optimisation over the graph)
    env.render()
    assert isinstance(env.unwrapped.layout, layouts.GraphLayout) and len(made) == 1
    assert isinstance(vector.layout, layouts.GraphLayout) and len(made) == 2
    env.render()
    assert len(made) == 2  # made once per environment
