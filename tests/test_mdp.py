"""TabularMDP, its feature maps and the families of constructors."""

from __future__ import annotations

import pickle

import networkx as nx
import numpy as np
import pytest

import lr_mdp_env.mdp
from lr_mdp_env import (
    TabularMDP,
    chain_mdp,
    dense_features,
    graph_mdp,
    gridworld_graph,
    gridworld_mdp,
    occupancy,
    one_hot_features,
    one_hot_time_features,
    random_mdp,
    uniform_policy,
)

STATIONARY = np.array(
    [
        [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]],
        [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]],
        [[0.0, 0.0, 1.0], [0.25, 0.25, 0.5]],
    ]
)
RHO = np.array([0.5, 0.5, 0.0])


def _with(array, index, value):
    array = np.array(array, dtype=float)
    array[index] = value
    return array


STAGES = np.stack([STATIONARY, STATIONARY[::-1]])  # (H=2, S=3, A=2, S=3)


# -- construction ----------------------------------------------------------------------------


def test_stationary_arrays_are_broadcast_views_and_read_only():
    mdp = TabularMDP(STATIONARY, RHO, horizon=4)
    assert (mdp.n_states, mdp.n_actions, mdp.horizon, mdp.n_features) == (3, 2, 4, 6)
    assert mdp.transitions.shape == (4, 3, 2, 3) and mdp.features.shape == (4, 3, 2, 6)
    assert mdp.stationary_transitions and mdp.stationary_features
    for h in range(4):
        np.testing.assert_array_equal(mdp.transitions[h], STATIONARY)
        np.testing.assert_array_equal(mdp.features[h], np.eye(6).reshape(3, 2, 6))
    with pytest.raises(ValueError):
        mdp.transitions[0, 0, 0, 0] = 0.3
    with pytest.raises(ValueError):
        mdp.initial_distribution[0] = 1.0
    with pytest.raises(AttributeError):
        mdp.horizon = 5


def test_stage_dependent_transitions_and_features():
    features = np.random.default_rng(0).standard_normal((2, 3, 2, 4))
    mdp = TabularMDP(STAGES, RHO, features=features)
    assert mdp.horizon == 2 and not mdp.stationary_transitions and not mdp.stationary_features
    np.testing.assert_array_equal(mdp.transitions, STAGES)
    np.testing.assert_array_equal(mdp.features, features)
    assert TabularMDP(STAGES, RHO, horizon=2).horizon == 2


def test_feature_makers():
    np.testing.assert_array_equal(one_hot_features(2, 3).reshape(6, 6), np.eye(6))
    assert one_hot_features(2, 3)[1, 2].argmax() == 1 * 3 + 2
    time = one_hot_time_features(2, 3, 2)
    assert time.shape == (2, 3, 2, 12)
    assert time[1, 2, 0].argmax() == 1 * 6 + 2 * 2 + 0 and time.sum() == 12
    mdp = TabularMDP(STATIONARY, RHO, horizon=2, features="one_hot_time")
    np.testing.assert_array_equal(mdp.features, time)
    dense = dense_features(3, 2, 5, norm_bound=2.0, seed=0)
    norms = np.linalg.norm(dense, axis=-1)
    assert dense.shape == (3, 2, 5) and np.all(norms <= 2.0 + 1e-12) and np.all(norms >= 1.0 - 1e-12)
    assert dense_features(3, 2, 5, horizon=4, seed=0).shape == (4, 3, 2, 5)
    np.testing.assert_array_equal(dense, dense_features(3, 2, 5, norm_bound=2.0, seed=0))


@pytest.mark.parametrize("stage_features", [False, True])
def test_reward_is_features_times_theta(stage_features):
    rng = np.random.default_rng(1)
    shape = (3, 3, 2, 4) if stage_features else (3, 2, 4)
    features = rng.standard_normal(shape)
    mdp = TabularMDP(STATIONARY, RHO, horizon=3, features=features)
    thetas = rng.standard_normal((5, 4))
    table = mdp.reward(thetas)
    assert table.shape == (5, 3, 3, 2)
    for i in range(5):
        for h in range(3):
            for s in range(3):
                for a in range(2):
                    assert abs(table[i, h, s, a] - mdp.features[h, s, a] @ thetas[i]) < 1e-12
    np.testing.assert_allclose(mdp.reward(thetas[2]), table[2], atol=1e-12)
    table[0, 0, 0, 0] = 99.0  # a fresh array, not a view of the features
    assert mdp.reward(thetas)[0, 0, 0, 0] != 99.0


@pytest.mark.parametrize("features", [None, "one_hot_time", "dense_stage"])
def test_trajectory_features_are_per_step_sums(features):
    rng = np.random.default_rng(2)
    spec = rng.standard_normal((3, 3, 2, 4)) if features == "dense_stage" else features
    mdp = TabularMDP(STATIONARY, RHO, horizon=3, features=spec)
    states = rng.integers(0, 3, size=(7, 3))
    actions = rng.integers(0, 2, size=(7, 3))
    expected = np.zeros((7, mdp.n_features))
    for j in range(7):
        for h in range(3):
            expected[j] += mdp.features[h, states[j, h], actions[j, h]]
    np.testing.assert_allclose(mdp.trajectory_features(states, actions), expected, atol=1e-12)


def test_pickle_round_trip_keeps_compact_arrays():
    mdp = TabularMDP(STATIONARY, RHO, horizon=50, features="one_hot")
    clone = pickle.loads(pickle.dumps(mdp))
    np.testing.assert_array_equal(clone.transitions, mdp.transitions)
    np.testing.assert_array_equal(clone.features, mdp.features)
    assert clone.horizon == 50 and clone.stationary_transitions
    assert len(pickle.dumps(mdp)) < 10 * STATIONARY.nbytes + 2000


# -- every invalid input is named ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(transitions=np.ones((3, 3))), ValueError, r"transitions must have 3 or 4 axes, got shape \(3, 3\)"),
        (dict(transitions="P"), TypeError, r"transitions must be an array of real numbers, got str"),
        (dict(transitions=[[["a"]]]), TypeError, r"transitions must be an array of real numbers"),
        (dict(transitions=STATIONARY + 0j), TypeError, r"transitions must be an array of real numbers, got complex values"),
        (dict(transitions=[[[1.0], [0.5, 0.5]]]), TypeError, r"transitions must be an array of real numbers \(.*inhomogeneous"),
        (dict(transitions=np.full((3, 2, 2), 0.5)), ValueError, r"same S on the state and next-state axes"),
        (dict(transitions=np.zeros((3, 0, 3))), ValueError, r"at least one state and action"),
        (dict(transitions=_with(STATIONARY, (1, 0, 2), np.nan)), ValueError, r"transitions must be finite, but transitions\[1, 0, 2\] = nan"),
        (dict(transitions=_with(STATIONARY, (2, 1, 0), np.inf)), ValueError, r"transitions must be finite, but transitions\[2, 1, 0\] = inf"),
        (dict(transitions=_with(_with(STATIONARY, (1, 1, 0), 1.5), (1, 1, 1), -0.5)), ValueError,
         r"transitions must be non-negative, but transitions\[s=1, a=1\] has entry -0\.5 at position 1"),
        (dict(transitions=_with(STATIONARY, (2, 0, 2), 0.9)), ValueError, r"transitions\[s=2, a=0\] sums to 0\.9, not 1"),
        (dict(transitions=_with(STAGES, (1, 0, 1, 0), 0.5), horizon=None), ValueError, r"transitions\[h=1, s=0, a=1\] sums to 1\.25, not 1"),
        (dict(transitions=_with(STAGES, (0, 2, 0, 0), -1e-3), horizon=None), ValueError, r"transitions must be non-negative, but transitions\[h=0, s=2, a=0\]"),
        (dict(transitions=_with(STATIONARY, (0, 0, 0), 0.5 + 2e-8)), ValueError, r"transitions\[s=0, a=0\] sums to"),
        (dict(horizon=None), ValueError, r"horizon is required when transitions are stationary"),
        (dict(horizon=0), ValueError, r"horizon must be at least 1, got 0"),
        (dict(horizon=-2), ValueError, r"horizon must be at least 1, got -2"),
        (dict(horizon=2.5), TypeError, r"horizon must be an integer, got 2\.5"),
        (dict(horizon=True), TypeError, r"horizon must be an integer, got True"),
        (dict(transitions=STAGES, horizon=3), ValueError, r"transitions have 2 stages but horizon=3"),
        (dict(transitions=STAGES, horizon=0), ValueError, r"horizon must be at least 1"),
        (dict(initial_distribution=[0.5, 0.5]), ValueError, r"initial_distribution must have shape \(3,\) to match transitions, got \(2,\)"),
        (dict(initial_distribution=np.full((1, 3), 1 / 3)), ValueError, r"initial_distribution must have 1 axes"),
        (dict(initial_distribution=[0.5, 0.6, -0.1]), ValueError, r"initial_distribution must be non-negative, but initial_distribution has entry -0\.1 at position 2"),
        (dict(initial_distribution=[0.5, 0.4, 0.0]), ValueError, r"initial_distribution sums to 0\.9, not 1"),
        (dict(initial_distribution=[0.5, np.nan, 0.5]), ValueError, r"initial_distribution must be finite, but initial_distribution\[1\] = nan"),
        (dict(initial_distribution=None), TypeError, r"initial_distribution must be an array of real numbers, got NoneType"),
        (dict(features=np.ones((3, 3, 4))), ValueError, r"features must have shape \(S, A, d\) or \(H, S, A, d\) with \(S, A\) = \(3, 2\), got \(3, 3, 4\)"),
        (dict(features=np.ones((2, 3, 2, 4))), ValueError, r"features have 2 stages but horizon=3"),
        (dict(features=np.ones((3, 2, 0))), ValueError, r"features must have at least one dimension"),
        (dict(features=np.ones((3, 2))), ValueError, r"features must have 3 or 4 axes"),
        (dict(features=_with(np.ones((3, 2, 4)), (0, 1, 3), np.nan)), ValueError, r"features must be finite, but features\[0, 1, 3\] = nan"),
        (dict(features="tabular"), ValueError, r"features must be an array, 'one_hot' or 'one_hot_time', got the string 'tabular'"),
    ],
)
def test_invalid_mdp_inputs_are_named(kwargs, error, match):
    arguments = dict(transitions=STATIONARY, initial_distribution=RHO, horizon=3, features=None)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        TabularMDP(**arguments)


def test_probability_tolerance_is_1e_8():
    TabularMDP(_with(STATIONARY, (0, 0, 0), 0.5 + 5e-9), RHO, horizon=1)
    with pytest.raises(ValueError, match=r"transitions\[s=0, a=0\] sums to"):
        TabularMDP(_with(STATIONARY, (0, 0, 0), 0.5 + 5e-8), RHO, horizon=1)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m.reward(np.ones(5)), ValueError, r"theta must have 6 features on its last axis, got shape \(5,\)"),
        (lambda m: m.reward(np.ones((2, 2, 6))), ValueError, r"theta must have 1 or 2 axes"),
        (lambda m: m.reward([np.nan] * 6), ValueError, r"theta must be finite"),
        (lambda m: m.trajectory_features(np.zeros((2, 3)), np.zeros((2, 3), int)), TypeError, r"states must be an integer array, got dtype float64"),
        (lambda m: m.trajectory_features(np.zeros((2, 3), int), np.zeros((2, 3), bool)), TypeError, r"actions must be an integer array, got dtype bool"),
        (lambda m: m.trajectory_features(np.zeros((2, 4), int), np.zeros((2, 4), int)), ValueError, r"states must have shape \(n, 3\), got \(2, 4\)"),
        (lambda m: m.trajectory_features(np.zeros(3, int), np.zeros(3, int)), ValueError, r"states must have shape \(n, 3\), got \(3,\)"),
        (lambda m: m.trajectory_features(_with(np.zeros((2, 3)), (1, 2), 3).astype(int), np.zeros((2, 3), int)), ValueError,
         r"states\[1, 2\] = 3 is outside 0\.\.2"),
        (lambda m: m.trajectory_features(np.zeros((2, 3), int), _with(np.zeros((2, 3)), (0, 1), -1).astype(int)), ValueError,
         r"actions\[0, 1\] = -1 is outside 0\.\.1"),
        (lambda m: m.trajectory_features(np.zeros((2, 3), int), np.zeros((3, 3), int)), ValueError,
         r"states and actions must have the same shape, got \(2, 3\) and \(3, 3\)"),
    ],
)
def test_invalid_feature_and_trajectory_inputs_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call(TabularMDP(STATIONARY, RHO, horizon=3))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: one_hot_features(0, 2), ValueError, r"n_states must be at least 1"),
        (lambda: one_hot_time_features(0, 2, 2), ValueError, r"horizon must be at least 1"),
        (lambda: dense_features(2, 2, 0), ValueError, r"n_features must be at least 1"),
        (lambda: dense_features(2, 2, 3, norm_bound=0.0), ValueError, r"norm_bound must be greater than 0"),
        (lambda: dense_features(2, 2, 3, horizon=0), ValueError, r"horizon must be at least 1"),
        (lambda: dense_features(2, 2, 3, seed="x"), TypeError, r"seed must be a non-negative int"),
    ],
)
def test_invalid_feature_maker_inputs_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- families ---------------------------------------------------------------------------------


def test_random_mdp_is_reproducible_and_valid():
    first = random_mdp(4, 3, 5, stationary=False, seed=3)
    second = random_mdp(4, 3, 5, stationary=False, seed=3)
    other = random_mdp(4, 3, 5, stationary=False, seed=4)
    np.testing.assert_array_equal(first.transitions, second.transitions)
    assert not np.array_equal(first.transitions, other.transitions)
    assert not first.stationary_transitions and first.transitions.shape == (5, 4, 3, 4)
    assert not np.array_equal(first.transitions[0], first.transitions[1])
    np.testing.assert_allclose(first.transitions.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(first.initial_distribution, np.full(4, 0.25))
    stationary = random_mdp(4, 3, 5, seed=3)
    assert stationary.stationary_transitions
    dense = random_mdp(4, 3, 5, features="dense", n_features=7, seed=3)
    assert dense.n_features == 7 and np.all(np.linalg.norm(dense.features, axis=-1) <= 1 + 1e-12)
    assert random_mdp(2, 2, 3, features="one_hot_time").n_features == 12


def test_random_mdp_with_vanishing_concentration_has_point_mass_rows():
    # Gamma draws with alpha = 1e-300 underflow to zero: such rows must become point masses.
    mdp = random_mdp(5, 3, 2, concentration=1e-300, seed=0)
    rows = mdp.transitions[0]
    np.testing.assert_array_equal(rows.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(rows.max(axis=-1), 1.0)


def test_chain_mdp_is_a_combination_lock():
    n_states, n_actions, horizon = 5, 3, 6
    mdp = chain_mdp(n_states, horizon, n_actions=n_actions, seed=4)
    np.testing.assert_array_equal(mdp.initial_distribution, np.eye(n_states)[0])
    transitions = mdp.transitions[0]
    assert set(np.unique(transitions)) == {0.0, 1.0}
    for s in range(n_states):
        successors = transitions[s].argmax(axis=-1)
        advancing = np.flatnonzero(successors == min(s + 1, n_states - 1))
        falling = np.flatnonzero(successors == 0)
        if s < n_states - 1:
            assert advancing.size == 1 and falling.size == n_actions - 1
        else:
            assert advancing.size >= 1  # the end is absorbing under its advancing action
    # A uniform policy reaches the end at step S-1 with probability exactly A^-(S-1).
    q = occupancy(mdp, uniform_policy(mdp))
    assert abs(q[n_states - 1, n_states - 1].sum() - n_actions ** -(n_states - 1)) < 1e-15


def test_chain_mdp_slip_mixes_the_two_outcomes():
    exact = chain_mdp(4, 3, seed=1).transitions[0]
    slippery = chain_mdp(4, 3, slip=0.25, seed=1).transitions[0]
    for s in range(4):
        for a in range(2):
            intended = exact[s, a].argmax()
            other = 0 if intended != 0 else min(s + 1, 3)
            expected = 0.75 * np.eye(4)[intended] + 0.25 * np.eye(4)[other]
            if intended == other:
                expected = np.eye(4)[intended]
            np.testing.assert_allclose(slippery[s, a], expected, atol=1e-15)


def test_graph_mdp_follows_edges_in_graph_order():
    graph = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "c"), ("c", "a")])
    mdp = graph_mdp(graph, 2)
    nodes = list(graph.nodes)
    targets = mdp.transitions[0].argmax(axis=-1)
    assert mdp.n_actions == 3
    for k, node in enumerate(nodes):
        assert targets[k, 0] == k  # action 0 stays
        successors = list(graph.successors(node))
        for j in range(1, 3):
            expected = nodes.index(successors[j - 1]) if j <= len(successors) else k
            assert targets[k, j] == expected
    np.testing.assert_array_equal(mdp.initial_distribution, np.full(3, 1 / 3))
    started = graph_mdp(graph, 2, start="b", slip=0.3)
    np.testing.assert_array_equal(started.initial_distribution, [0, 1, 0])
    np.testing.assert_allclose(
        started.transitions[0], 0.7 * mdp.transitions[0] + 0.3 * mdp.transitions[0].mean(axis=1, keepdims=True)
    )


def test_gridworld_actions_move_in_compass_directions_and_walls_block():
    mdp = gridworld_mdp(3, 3, 4, walls=[(1, 1)])
    cells = list(gridworld_graph(3, 3, walls=[(1, 1)]).nodes)
    assert mdp.n_states == 8 and mdp.n_actions == 5 and (1, 1) not in cells
    moves = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (0, -1), 4: (-1, 0)}
    targets = mdp.transitions[0].argmax(axis=-1)
    for k, (x, y) in enumerate(cells):
        for action, (dx, dy) in moves.items():
            goal = (x + dx, y + dy)
            expected = cells.index(goal) if goal in cells else k
            assert targets[k, action] == expected, (x, y, action)
    np.testing.assert_array_equal(mdp.initial_distribution, np.eye(8)[cells.index((0, 0))])
    assert gridworld_mdp(2, 2, 3, start=None).initial_distribution.tolist() == [0.25] * 4


def _path():
    return nx.path_graph(3)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: random_mdp(0, 2, 3), ValueError, r"n_states must be at least 1, got 0"),
        (lambda: random_mdp(2, 0, 3), ValueError, r"n_actions must be at least 1, got 0"),
        (lambda: random_mdp(2, 2, 0), ValueError, r"horizon must be at least 1, got 0"),
        (lambda: random_mdp(2.0, 2, 3), TypeError, r"n_states must be an integer, got 2\.0"),
        (lambda: random_mdp(2, 2, 3, concentration=0.0), ValueError, r"concentration must be greater than 0"),
        (lambda: random_mdp(2, 2, 3, concentration=-1.0), ValueError, r"concentration must be greater than 0"),
        (lambda: random_mdp(2, 2, 3, concentration=np.nan), ValueError, r"concentration must be finite"),
        (lambda: random_mdp(2, 2, 3, features="dense"), ValueError, r"features='dense' needs n_features"),
        (lambda: random_mdp(2, 2, 3, n_features=3), ValueError, r"n_features is only used with features='dense'"),
        (lambda: random_mdp(2, 2, 3, features="dense", n_features=0), ValueError, r"n_features must be at least 1"),
        (lambda: random_mdp(2, 2, 3, features="bogus"), ValueError, r"features must be an array, 'one_hot' or 'one_hot_time'"),
        (lambda: random_mdp(2, 2, 3, seed=-1), TypeError, r"seed must be a non-negative int"),
        (lambda: random_mdp(2, 2, 3, seed=1.5), TypeError, r"seed must be a non-negative int"),
        (lambda: chain_mdp(1, 3), ValueError, r"n_states must be at least 2, got 1"),
        (lambda: chain_mdp(3, 0), ValueError, r"horizon must be at least 1"),
        (lambda: chain_mdp(3, 3, n_actions=1), ValueError, r"n_actions must be at least 2, got 1"),
        (lambda: chain_mdp(3, 3, slip=1.5), ValueError, r"slip must be at most 1"),
        (lambda: chain_mdp(3, 3, slip=-0.1), ValueError, r"slip must be at least 0"),
        (lambda: chain_mdp(3, 3, features="dense"), ValueError, r"features='dense' needs n_features"),
        (lambda: graph_mdp("a-b", 3), TypeError, r"graph must be a networkx Graph or DiGraph, got str"),
        (lambda: graph_mdp(nx.Graph(), 3), ValueError, r"graph must have at least one node"),
        (lambda: graph_mdp(_path(), 0), ValueError, r"horizon must be at least 1"),
        (lambda: graph_mdp(_path(), 3, slip=2.0), ValueError, r"slip must be at most 1"),
        (lambda: graph_mdp(_path(), 3, start=7), ValueError, r"start=7 is not a node of the graph"),
        (lambda: graph_mdp(_path(), 3, n_actions=2), ValueError, r"n_actions must be at least 3, got 2"),
        (lambda: graph_mdp(_path(), 3, edge_action=lambda u, v: 1), ValueError, r"n_actions is required with edge_action"),
        (lambda: graph_mdp(_path(), 3, edge_action=lambda u, v: 1, n_actions=3), ValueError,
         r"edge_action gives two edges out of node 1 the same action 1"),
        (lambda: graph_mdp(_path(), 3, edge_action=lambda u, v: 5, n_actions=3), ValueError,
         r"edge_action\(0, 1\) = 5 must be an action in 1\.\.2"),
        (lambda: graph_mdp(_path(), 3, edge_action=lambda u, v: 0, n_actions=3), ValueError,
         r"edge_action\(0, 1\) = 0 must be an action in 1\.\.2"),
        (lambda: graph_mdp(_path(), 3, edge_action=lambda u, v: 1.0, n_actions=3), ValueError,
         r"edge_action\(0, 1\) = 1\.0 must be an action"),
        (lambda: gridworld_mdp(0, 2, 3), ValueError, r"width must be at least 1, got 0"),
        (lambda: gridworld_mdp(2, 0, 3), ValueError, r"height must be at least 1, got 0"),
        (lambda: gridworld_mdp(2, 2, 0), ValueError, r"horizon must be at least 1"),
        (lambda: gridworld_mdp(2, 2, 3, walls=[(5, 5)]), ValueError, r"wall \(5, 5\) is not a cell of the 2 x 2 grid"),
        (lambda: gridworld_mdp(2, 2, 3, walls=[(0, 0)]), ValueError, r"start=\(0, 0\) is not a node of the graph"),
        (lambda: gridworld_mdp(2, 2, 3, start=(3, 3)), ValueError, r"start=\(3, 3\) is not a node"),
        (lambda: gridworld_mdp(2, 2, 3, slip=1.1), ValueError, r"slip must be at most 1"),
    ],
)
def test_invalid_family_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_model_does_not_share_memory_with_the_callers_arrays():
    """A validated model cannot be changed afterwards through the arrays it was built from."""
    transitions = np.full((2, 2, 2), 0.5)
    initial = np.array([1.0, 0.0])
    features = np.ones((2, 2, 3))
    mdp = TabularMDP(transitions, initial, horizon=2, features=features)
    transitions[0, 0] = [1.0, 0.0]
    initial[:] = [0.0, 1.0]
    features[:] = 7.0
    np.testing.assert_array_equal(mdp.transitions[0, 0, 0], [0.5, 0.5])
    np.testing.assert_array_equal(mdp.initial_distribution, [1.0, 0.0])
    np.testing.assert_array_equal(mdp.features, 1.0)


@pytest.mark.parametrize("stationary_features", [True, False])
@pytest.mark.parametrize("block_entries", [2**16, 84])  # one block; blocks of 7 rows (of 2 H = 12), the last partial
def test_visit_count_differences_are_canonical_count_differences(stationary_features, block_entries, monkeypatch):
    monkeypatch.setattr(lr_mdp_env.mdp, "_VISIT_BLOCK_ENTRIES", block_entries)
    rng = np.random.default_rng(5)
    mdp = random_mdp(4, 3, 6, seed=0)
    if not stationary_features:
        mdp = TabularMDP(mdp.transitions[0], mdp.initial_distribution, horizon=6, features="one_hot_time")
    n = 200
    states1, states0 = rng.integers(4, size=(2, n, 6))
    actions1, actions0 = rng.integers(3, size=(2, n, 6))
    states0[:7], actions0[:7] = states1[:7], actions1[:7]  # identical trajectories: empty rows
    differences = mdp.visit_count_differences(states1, actions1, states0, actions0)
    expected = (mdp.visit_counts(states1, actions1) - mdp.visit_counts(states0, actions0)).toarray()
    np.testing.assert_array_equal(differences.toarray(), expected)
    assert differences.has_canonical_format and np.all(differences.data != 0)
    assert differences.indptr[7] == 0
    empty = mdp.visit_count_differences(states1[:0], actions1[:0], states0[:0], actions0[:0])
    assert empty.shape == (0, expected.shape[1])
