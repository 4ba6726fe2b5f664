"""The Gymnasium layer: API conformance, the law of the episodes, preference feedback, vector env.

Statistical checks compare Monte Carlo frequencies with exact dynamic programming
(``occupancy``, ``return_moments``) under fixed seeds, with tolerances from concentration
inequalities whose derivation is given next to each assertion. Structural checks of the families
use independent oracles (Manhattan and path distances, hand-written feature products).
"""

from __future__ import annotations

import inspect
import itertools
import json
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from hypothesis import given, settings
from hypothesis import strategies as st

import lr_mdp_env
from lr_mdp_env import Teacher, backward_induction, occupancy, return_moments, uniform_policy
from lr_mdp_env.envs import (
    ENV_IDS,
    REFERENCE_EPISODE,
    PreferenceEnvParams,
    PreferenceFeedback,
    TabularPreferenceEnv,
    TabularPreferenceVectorEnv,
    chain_world,
    contextual_bandit_world,
    graph_world,
    gridworld_world,
    random_low_rank_world,
)
from lr_mdp_env.envs import chain, registration

# Probability that one statistical assertion fails although the code is correct.
FAILURE_PROBABILITY = 1e-6


# -- kwargs of the registered ids, drawn by hypothesis (small sizes) ---------------------------


@st.composite
def random_low_rank_kwargs(draw):
    n_states = draw(st.integers(1, 5))
    n_actions = draw(st.integers(1 if n_states > 1 else 2, 3))
    horizon = draw(st.integers(1, 4))
    n_users = draw(st.integers(1, 4))
    features = draw(st.sampled_from(["one_hot", "one_hot_time", "dense"]))
    kwargs = dict(n_states=n_states, n_actions=n_actions, horizon=horizon, n_users=n_users, features=features)
    if features == "dense":
        kwargs["n_features"] = draw(st.integers(1, 4))
        dimension = kwargs["n_features"]
    else:
        dimension = n_states * n_actions * (horizon if features == "one_hot_time" else 1)
    rank = draw(st.integers(1, min(dimension, n_users)))
    # A tail of 0.05 stays below sigma_r >= 1/5 (condition numbers up to 5), as low_rank_rewards requires.
    tail = draw(st.sampled_from([0.0, 0.05])) if rank < min(dimension, n_users) else 0.0
    kwargs.update(
        rank=rank, tail=tail, condition_number=draw(st.floats(1.0, 5.0)),
        concentration=draw(st.floats(0.2, 3.0)), stationary=draw(st.booleans()),
        model_seed=draw(st.integers(0, 10_000)),
    )
    return kwargs


@st.composite
def gridworld_kwargs(draw):
    width, height = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if width * height < 2:
        width = 2
    walls = []
    # Grids with both sides >= 2 stay connected without one cell; the start's neighbours stay free.
    if width >= 2 and height >= 2 and draw(st.booleans()):
        candidates = [[x, y] for x in range(width) for y in range(height) if [x, y] not in ([0, 0], [1, 0], [0, 1])]
        if candidates:
            walls = [draw(st.sampled_from(candidates))]
    n_users = draw(st.integers(1, 4))
    free = width * height - len(walls)
    return dict(
        width=width, height=height, horizon=draw(st.integers(2, 5)), walls=walls,
        slip=draw(st.floats(0.0, 0.5)), start=draw(st.sampled_from([[0, 0], None])),
        n_goals=draw(st.integers(1, min(free, n_users, 3))), length_scale=draw(st.floats(0.5, 3.0)),
        n_users=n_users, condition_number=draw(st.floats(1.0, 4.0)),
        features=draw(st.sampled_from(["one_hot", "one_hot_time"])), model_seed=draw(st.integers(0, 10_000)),
    )


@st.composite
def graph_kwargs(draw):
    kind = draw(st.sampled_from(["watts_strogatz", "random_regular", "erdos_renyi", "path", "cycle", "star", "complete", "edges"]))
    n_nodes = draw(st.integers(3, 6))
    if kind == "edges":
        pairs = draw(st.lists(st.tuples(st.integers(0, n_nodes - 1), st.integers(0, n_nodes - 1)), min_size=1, max_size=8))
        kwargs = dict(edges=[list(pair) for pair in pairs], directed=draw(st.booleans()), n_nodes=n_nodes)
    else:
        kwargs = dict(graph=kind, n_nodes=n_nodes)
        if kind == "watts_strogatz":
            kwargs.update(k=2, p=draw(st.floats(0.0, 1.0)))
        elif kind == "random_regular":
            kwargs.update(degree=2)
        elif kind == "erdos_renyi":
            kwargs.update(p=draw(st.floats(0.3, 1.0)))
    n_users = draw(st.integers(1, 4))
    kwargs.update(
        horizon=draw(st.integers(1, 4)), slip=draw(st.floats(0.0, 0.5)),
        n_goals=draw(st.integers(1, min(n_users, 3))), length_scale=draw(st.floats(0.5, 3.0)),
        n_users=n_users, features=draw(st.sampled_from(["one_hot", "one_hot_time"])),
        model_seed=draw(st.integers(0, 10_000)),
    )
    return kwargs


@st.composite
def chain_kwargs(draw):
    n_states = draw(st.integers(2, 4))
    n_actions = draw(st.integers(2, 3))
    horizon = draw(st.integers(n_states, n_states + 3))
    n_users = draw(st.integers(1, 4))
    features = draw(st.sampled_from(["one_hot", "one_hot_time"]))
    dimension = n_states * n_actions * (horizon if features == "one_hot_time" else 1)
    return dict(
        n_states=n_states, n_actions=n_actions, horizon=horizon, slip=draw(st.floats(0.0, 0.4)),
        n_users=n_users, rank=draw(st.integers(1, min(n_users, dimension))),
        distractor=draw(st.floats(0.0, 1.0)), features=features, model_seed=draw(st.integers(0, 10_000)),
    )


@st.composite
def contextual_bandit_kwargs(draw):
    n_queries = draw(st.integers(1, 5))
    n_answers = draw(st.integers(1 if n_queries > 1 else 2, 4))
    n_features, context_dim = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    return dict(
        n_queries=n_queries, n_answers=n_answers, n_features=n_features, context_dim=context_dim,
        rank=draw(st.integers(1, min(n_features, context_dim))), n_users=draw(st.integers(1, 4)),
        shift=draw(st.floats(0.0, 1.0)), model_seed=draw(st.integers(0, 10_000)),
    )


KWARGS_STRATEGIES = {
    "lr_mdp_env/RandomLowRank-v0": random_low_rank_kwargs(),
    "lr_mdp_env/GridWorld-v0": gridworld_kwargs(),
    "lr_mdp_env/Graph-v0": graph_kwargs(),
    "lr_mdp_env/Chain-v0": chain_kwargs(),
    "lr_mdp_env/ContextualBandit-v0": contextual_bandit_kwargs(),
}


def test_the_five_ids_are_registered():
    assert set(ENV_IDS) == set(KWARGS_STRATEGIES)
    assert all(env_id in gym.registry for env_id in ENV_IDS)


@pytest.mark.parametrize("env_id", sorted(KWARGS_STRATEGIES))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_check_env_passes_on_every_registered_id(env_id, data):
    kwargs = data.draw(KWARGS_STRATEGIES[env_id], label="kwargs")
    kwargs["observation"] = data.draw(st.sampled_from(["discrete", "multi_discrete"]), label="observation")
    kwargs["reward_visible"] = data.draw(st.booleans(), label="reward_visible")
    json.dumps(kwargs)  # the drawn kwargs themselves are plain JSON
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        env = gym.make(env_id, **kwargs)
        check_env(env.unwrapped)
        vector = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", **kwargs)
        observations, _ = vector.reset(seed=0)
        assert observations in vector.observation_space
        observations, *_ = vector.step(vector.action_space.sample())
        assert observations in vector.observation_space


def test_default_make_and_default_make_vec_work_for_every_id():
    for env_id in ENV_IDS:
        env = gym.make(env_id)
        observation, info = env.reset(seed=1)
        assert observation in env.observation_space and info["time"] == 0
        vector = gym.make_vec(env_id, num_envs=8, vectorization_mode="vector_entry_point")
        assert isinstance(vector, TabularPreferenceVectorEnv)
        assert vector.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        n_users = vector.n_users
        np.testing.assert_array_equal(vector.users, np.arange(8) % n_users)


# -- JSON-serialisable kwargs --------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spec_kwargs_are_json_and_round_trip(env_id):
    spec = gym.spec(env_id)
    text = json.dumps(spec.kwargs)
    assert json.loads(spec.to_json())["kwargs"] == json.loads(text)
    env = gym.make(env_id, **json.loads(text))
    reference = gym.make(env_id)
    np.testing.assert_array_equal(env.unwrapped.params.reward_table, reference.unwrapped.params.reward_table)
    # Every default of the factories' builders is a JSON value as well.
    builder, _ = registration.FAMILIES[env_id.split("/")[1].removesuffix("-v0")]
    for name, parameter in inspect.signature(builder).parameters.items():
        json.dumps(parameter.default if parameter.default is not inspect.Parameter.empty else None)


def test_spec_of_a_made_env_keeps_json_kwargs():
    env = gym.make("lr_mdp_env/GridWorld-v0", width=3, height=3, walls=[[1, 1]], start=None, user=1)
    assert json.loads(json.dumps(env.spec.kwargs))["walls"] == [[1, 1]]
    env = gym.make("lr_mdp_env/Graph-v0", edges=[[0, 1], [1, 2]], directed=True)
    json.dumps(env.spec.kwargs)


# -- both ways of making -------------------------------------------------------------------------

COLON_SCRIPT = r"""
import json, sys
import gymnasium as gym
assert "lr_mdp_env" not in sys.modules
out = {}
for env_id in json.loads(sys.argv[1]):
    env = gym.make("lr_mdp_env:" + env_id)
    observation, _ = env.reset(seed=0)
    trace, done = [int(observation)], False
    while not done:
        observation, reward, done, _, _ = env.step(0)
        trace += [int(observation), float(reward)]
    out[env_id] = trace
vector = gym.make_vec("lr_mdp_env:lr_mdp_env/Chain-v0", num_envs=3, vectorization_mode="vector_entry_point")
out["vector"] = [type(vector).__name__, vector.reset(seed=0)[0].tolist()]
print(json.dumps(out))
"""


def _trace(env):
    observation, _ = env.reset(seed=0)
    trace, done = [int(observation)], False
    while not done:
        observation, reward, done, _, _ = env.step(0)
        trace += [int(observation), float(reward)]
    return trace


def test_make_with_module_prefix_in_a_fresh_interpreter():
    result = subprocess.run(
        [sys.executable, "-c", COLON_SCRIPT, json.dumps(list(ENV_IDS))],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    traces = json.loads(result.stdout)
    for env_id in ENV_IDS:
        assert traces[env_id] == _trace(gym.make(env_id))
    vector = gym.make_vec("lr_mdp_env/Chain-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert traces["vector"] == ["TabularPreferenceVectorEnv", vector.reset(seed=0)[0].tolist()]


def test_make_with_module_prefix_in_process():
    assert _trace(gym.make("lr_mdp_env:lr_mdp_env/Graph-v0")) == _trace(gym.make("lr_mdp_env/Graph-v0"))


def test_register_envs_is_idempotent():
    specs = {env_id: gym.spec(env_id) for env_id in ENV_IDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering would warn "Overriding environment"
        lr_mdp_env.register_envs()
    assert all(gym.spec(env_id) is specs[env_id] for env_id in ENV_IDS)


# -- single environment: episodes, rewards, observations ------------------------------------------


def _skewed_world(n_states, n_actions, horizon, *, n_users, rank, seed, concentration=1.0):
    """Stage-dependent transitions, a non-uniform ``rho`` and step-dependent rewards.

    Each of the three makes a class of indexing mistakes visible (wrong step row, ignoring
    ``rho``, reward of the wrong step), which a stationary model with uniform ``rho`` would hide.
    """
    base = lr_mdp_env.random_mdp(n_states, n_actions, horizon, stationary=False, concentration=concentration, seed=seed)
    rho = np.random.default_rng(seed).dirichlet(np.ones(n_states))
    mdp = lr_mdp_env.TabularMDP(base.transitions, rho, features="one_hot_time")
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, n_users, rank, mdp=mdp, seed=seed + 1)
    return registration.World(mdp, rewards)


@pytest.fixture(scope="module")
def small_world():
    return _skewed_world(5, 3, 4, n_users=3, rank=2, seed=3)


def _rollout(env, actions, seed):
    """Observations, rewards, flags and infos of consecutive episodes driven by ``actions``."""
    records = []
    observation, info = env.reset(seed=seed)
    for action in actions:
        step = env.step(int(action))
        records.append((np.asarray(observation).tolist(), info, *step[1:4], step[4]))
        observation, info = step[0], step[4]
        if step[2]:
            observation, info = env.reset()
    return records


def test_same_seed_same_episodes_and_different_seeds_differ(small_world):
    env = TabularPreferenceEnv(*small_world, user=1)
    actions = np.random.default_rng(0).integers(3, size=400)
    assert _rollout(env, actions, seed=7) == _rollout(env, actions, seed=7)
    # 100 episodes of 4 random transitions among 5 states cannot coincide for two seeds.
    assert _rollout(env, actions, seed=7) != _rollout(env, actions, seed=8)


def test_reward_is_the_table_entry_or_zero_when_hidden(small_world):
    mdp, rewards = small_world
    table = rewards.reward_table(mdp)
    visible = TabularPreferenceEnv(mdp, rewards, user=2)
    hidden = TabularPreferenceEnv(mdp, rewards, user=2, reward_visible=False)
    np.testing.assert_array_equal(visible.params.reward_table, table)
    actions = np.random.default_rng(1).integers(3, size=200)
    shown = _rollout(visible, actions, seed=3)
    masked = _rollout(hidden, actions, seed=3)
    for action, record, masked_record in zip(actions, shown, masked):
        _, before, reward, _, _, _ = record
        assert reward == table[2, before["time"], before["state"], action]
        assert isinstance(reward, float) and masked_record[2] == 0.0
        # Hiding the reward changes nothing else: same states, same flags.
        assert masked_record[0] == record[0] and masked_record[3:] == record[3:]


def test_terminated_exactly_at_horizon_and_errors_outside_an_episode(small_world):
    env = TabularPreferenceEnv(*small_world)
    with pytest.raises(ResetNeeded, match="before reset"):
        env.step(0)
    horizon = small_world.mdp.horizon
    for episode in range(3):
        env.reset(seed=episode)
        flags = [env.step(0)[2:4] for _ in range(horizon)]
        assert flags == [(False, False)] * (horizon - 1) + [(True, False)]
        with pytest.raises(ResetNeeded, match="reset"):
            env.step(0)


@pytest.mark.parametrize("observation", ["discrete", "multi_discrete"])
def test_observation_encodes_time_and_state(small_world, observation):
    env = TabularPreferenceEnv(*small_world, observation=observation)
    n_states, horizon = small_world.mdp.n_states, small_world.mdp.horizon
    expected_space = (
        gym.spaces.Discrete((horizon + 1) * n_states) if observation == "discrete"
        else gym.spaces.MultiDiscrete([horizon + 1, n_states])
    )
    assert env.observation_space == expected_space
    observed, info = env.reset(seed=2)
    for step in range(horizon + 1):
        hand = info["time"] * n_states + info["state"] if observation == "discrete" else [info["time"], info["state"]]
        assert np.array_equal(observed, hand) and info["time"] == step
        assert observed in env.observation_space
        assert tuple(map(int, env.decode(observed))) == (info["time"], info["state"])
        assert np.array_equal(env.encode(info["time"], info["state"]), observed)
        if step < horizon:
            observed, _, _, _, info = env.step(1)


def test_reset_option_switches_the_user_for_later_episodes(small_world):
    env = TabularPreferenceEnv(*small_world, user=0)
    table = env.params.reward_table
    _, info = env.reset(seed=0, options={"user": 2})
    assert info["user"] == 2
    _, info = env.reset()
    state = info["state"]
    _, reward, _, _, info = env.step(1)
    assert info["user"] == 2 and env.user == 2 and reward == table[2, 0, state, 1]


def test_render_ansi_describes_the_state(small_world):
    env = TabularPreferenceEnv(*small_world, render_mode="ansi")
    _, info = env.reset(seed=0)
    assert env.render() == f"user 0, step 0/4, state {info['state']}"


def test_visit_frequencies_match_occupancy(frequency_tolerance):
    mdp, rewards = _skewed_world(4, 3, 3, n_users=2, rank=1, seed=11, concentration=0.5)
    env = TabularPreferenceEnv(mdp, rewards, user=1)
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    policy = np.random.default_rng(5).dirichlet(np.ones(n_actions), size=(horizon, n_states))
    policy_cdf = np.cumsum(policy, axis=-1)
    policy_cdf[..., -1] = 1.0
    agent = np.random.default_rng(6)
    n_episodes = 20_000
    counts = np.zeros((horizon, n_states, n_actions))
    final_counts = np.zeros(n_states)
    env.reset(seed=7)
    for episode in range(n_episodes):
        _, info = env.reset()
        uniforms = agent.random(horizon)
        for step in range(horizon):
            state = info["state"]
            action = int(np.searchsorted(policy_cdf[step, state], uniforms[step], side="right"))
            counts[step, state, action] += 1
            _, _, _, _, info = env.step(action)
        final_counts[info["state"]] += 1
    expected = occupancy(mdp, policy)
    # Each cell count is Binomial(n, q) with variance n q (1 - q); `frequency_tolerance` is the
    # Bernstein half-width t = (L/3 + sqrt(L^2/9 + 2 n L q (1 - q))) / n, L = log(2 m / 1e-6),
    # union-bounded over the m cells compared (see tests/conftest.py).
    tolerance = frequency_tolerance(expected, n_episodes)
    assert np.all(np.abs(counts / n_episodes - expected) <= tolerance)
    # The last observation's state s_H ~ sum_{s,a} q[H-1, s, a] P[H-1, s, a, :].
    final_expected = np.einsum("sa,sat->t", expected[-1], mdp.transitions[-1])
    assert np.all(np.abs(final_counts / n_episodes - final_expected) <= frequency_tolerance(final_expected, n_episodes))


def test_pickle_round_trip_keeps_stepping_identically(small_world):
    raw = TabularPreferenceEnv(*small_world, user=1, observation="multi_discrete")
    made = gym.make("lr_mdp_env/GridWorld-v0", user=3)
    wrapped = PreferenceFeedback(TabularPreferenceEnv(*small_world), Teacher(beta=0.5))
    actions = np.random.default_rng(4).integers(3, size=60)
    for env in (raw, made, wrapped):
        env.reset(seed=5)
        for action in actions[:3]:
            env.step(int(action))  # mid-episode (H >= 4), with the random stream advanced
        copy = pickle.loads(pickle.dumps(env))
        for action in actions[3:]:
            first, second = env.step(int(action)), copy.step(int(action))
            assert repr(first) == repr(second)
            if first[2]:
                assert repr(env.reset()) == repr(copy.reset())
    params = pickle.loads(pickle.dumps(raw.params))
    assert isinstance(params, PreferenceEnvParams) and not params.reward_table.flags.writeable
    np.testing.assert_array_equal(params.transition_cdf, raw.params.transition_cdf)


# -- preference feedback -------------------------------------------------------------------------


def _freedman_half_width(conditional_variance: float, n_terms: int, failure_probability: float = FAILURE_PROBABILITY) -> float:
    """``t`` with ``Pr(|sum_j (y_j - p_j)| >= t) <= failure_probability``.

    Given the trajectories, the labels ``y_j`` are Bernoulli(``p_j``) draws from fresh uniforms,
    so ``sum_j (y_j - p_j)`` is a martingale with increments bounded by 1 and predictable
    variance ``V = sum_j p_j (1 - p_j)``. Freedman's inequality gives
    ``Pr(|S| >= t) <= 2 exp(-t^2 / (2 (V + t / 3)))``; solving ``t^2 = 2 L (V + t / 3)`` with
    ``L = log(2 / delta)`` gives ``t = L / 3 + sqrt(L^2 / 9 + 2 L V)``.
    """
    log_term = np.log(2 / failure_probability)
    return log_term / 3 + np.sqrt(log_term**2 / 9 + 2 * log_term * conditional_variance)


def test_preference_probability_matches_teacher_and_labels_follow_it(small_world):
    teacher = Teacher(beta=2.0, mistake=0.1)
    env = PreferenceFeedback(TabularPreferenceEnv(*small_world, user=2), teacher)
    horizon = small_world.mdp.horizon
    agent = np.random.default_rng(1)
    returns, probabilities, labels = [], [], []
    n_episodes = 10_000
    env.reset(seed=4)
    for episode in range(n_episodes):
        if episode:
            env.reset()
        total = 0.0
        for _ in range(horizon):
            _, reward, terminated, _, info = env.step(int(agent.integers(3)))
            total += reward
        assert terminated
        returns.append(total)
        if episode == 0:
            assert "preference" not in info
            continue
        preference = info["preference"]
        assert preference["episodes"] == (episode - 1, episode)
        assert preference["answered"] is True and preference["label"] in (0.0, 1.0)
        exact = teacher.preference_probability(returns[-2], returns[-1])
        assert preference["probability"] == pytest.approx(float(exact), abs=1e-12)
        probabilities.append(preference["probability"])
        labels.append(preference["label"])
    probabilities, labels = np.array(probabilities), np.array(labels)
    assert np.ptp(probabilities) > 0.3  # the pairs are informative, not coin flips
    tolerance = _freedman_half_width(np.sum(probabilities * (1 - probabilities)), probabilities.size)
    assert abs(np.sum(labels - probabilities)) <= tolerance
    # Calibration within each fifth of the probabilities (5 more assertions at 1e-6 each).
    edges = np.quantile(probabilities, [0.2, 0.4, 0.6, 0.8])
    for bin_index in range(5):
        group = np.digitize(probabilities, edges) == bin_index
        part = probabilities[group]
        assert abs(np.sum(labels[group] - part)) <= _freedman_half_width(np.sum(part * (1 - part)), part.size)


def test_preference_uses_true_rewards_when_hidden_and_a_reference(small_world):
    mdp, rewards = small_world
    table = rewards.reward_table(mdp)
    steps = np.arange(mdp.horizon)
    reference = (np.array([0, 1, 2, 3]), np.array([2, 2, 0, 1]))
    reference_return = table[1, steps, reference[0], reference[1]].sum()
    teacher = Teacher(beta=1.5)
    env = PreferenceFeedback(TabularPreferenceEnv(mdp, rewards, user=1, reward_visible=False), teacher, reference)
    agent = np.random.default_rng(2)
    _, info = env.reset(seed=0)
    for episode in range(20):
        if episode:
            _, info = env.reset()
        states, actions = [], []
        for _ in range(mdp.horizon):
            states.append(info["state"])
            actions.append(int(agent.integers(3)))
            _, reward, _, _, info = env.step(actions[-1])
            assert reward == 0.0
        preference = info["preference"]
        own_return = table[1, steps, states, actions].sum()
        assert preference["episodes"] == (REFERENCE_EPISODE, episode)
        assert preference["returns"] == pytest.approx((reference_return, own_return), abs=1e-12)
        assert preference["probability"] == pytest.approx(float(teacher.preference_probability(reference_return, own_return)))
        np.testing.assert_array_equal(env.last_trajectory[0], states)


def test_preferences_are_reproducible_from_the_reset_seed(small_world):
    env = PreferenceFeedback(TabularPreferenceEnv(*small_world), Teacher(beta=1.0, mistake=0.2))
    actions = np.random.default_rng(3).integers(3, size=200)

    def labels():
        found = []
        for record in _rollout(env, actions, seed=9):
            if "preference" in record[-1]:
                found.append(record[-1]["preference"])
        return found

    first = labels()
    assert len(first) == 200 // 4 - 1 and first[0]["episodes"] == (0, 1)
    assert labels() == first


def test_skipping_teacher_leaves_pairs_unanswered(small_world):
    env = PreferenceFeedback(TabularPreferenceEnv(*small_world), Teacher(skip=1e9))
    env.reset(seed=0)
    for _ in range(2 * small_world.mdp.horizon):
        _, _, terminated, _, info = env.step(0)
        if terminated and env.episode == 0:
            env.reset()
    assert info["preference"]["answered"] is False and info["preference"]["label"] == 0.5


def test_abandoned_episode_is_not_compared(small_world):
    env = PreferenceFeedback(TabularPreferenceEnv(*small_world))
    horizon = small_world.mdp.horizon
    env.reset(seed=0)
    for _ in range(horizon):
        env.step(0)
    env.reset()  # episode 1, abandoned after one step
    env.step(1)
    env.reset()  # episode 2
    for _ in range(horizon):
        _, _, _, _, info = env.step(2)
    assert info["preference"]["episodes"] == (0, 2)


# -- vector environment --------------------------------------------------------------------------


def test_vector_env_with_one_copy_reproduces_the_single_env(small_world):
    # Both draw one uniform per reset and per step from the same seeded stream and invert the
    # same cumulative rows, so they must agree transition by transition.
    single = TabularPreferenceEnv(*small_world, user=2)
    vector = TabularPreferenceVectorEnv(*small_world, num_envs=1, users=[2])
    actions = np.random.default_rng(8).integers(3, size=100)
    observation, _ = single.reset(seed=12)
    vector_observation, _ = vector.reset(seed=12)
    pending_reset = False
    for action in actions:
        assert vector_observation[0] == observation
        step = vector.step(np.array([action]))
        vector_observation = step[0]
        if pending_reset:
            observation, _ = single.reset()
            pending_reset = False
            assert step[1][0] == 0.0 and not step[2][0]
            continue
        observation, reward, terminated, _, _ = single.step(int(action))
        assert step[1][0] == reward and step[2][0] == terminated
        pending_reset = terminated


def test_vector_returns_follow_evaluate_policy():
    mdp, rewards = random_low_rank_world(5, 3, 4, n_users=3, rank=2, model_seed=21)
    table = rewards.reward_table(mdp)
    num_envs, n_steps = 60, 1000
    vector = gym.make_vec(
        "lr_mdp_env/RandomLowRank-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
        n_states=5, n_actions=3, horizon=4, n_users=3, rank=2, model_seed=21,
    )
    np.testing.assert_array_equal(vector.params.reward_table, table)
    agent = np.random.default_rng(0)
    vector.reset(seed=1)
    running = np.zeros(num_envs)
    finished_returns, finished_users = [], []
    for _ in range(n_steps):
        _, reward, terminated, truncated, info = vector.step(agent.integers(3, size=num_envs))
        # The entry point's time limit is this model's H = 4, not the registered default H = 5:
        # it marks exactly the steps that end an episode.
        np.testing.assert_array_equal(truncated, terminated)
        running += reward
        finished_returns.append(running[terminated])
        finished_users.append(info["user"][terminated])
        running[terminated] = 0.0
    finished_returns, finished_users = np.concatenate(finished_returns), np.concatenate(finished_users)
    # Uniform random actions are the uniform Markov policy: its exact mean and variance per user.
    mean, variance = return_moments(mdp, uniform_policy(mdp), table)
    bound = mdp.horizon * np.abs(table).max(axis=(1, 2, 3))
    for user in range(3):
        sample = finished_returns[finished_users == user]
        n = sample.size
        assert n >= 3000  # 20 copies per user, one episode per H + 1 = 5 steps
        # Bernstein for a mean of n i.i.d. returns in [-B, B]: |mean - J| <= sqrt(2 V L / n) + 4 B L / (3 n),
        # L = log(2 m / 1e-6) with a union bound over the m = 3 users.
        log_term = np.log(2 * 3 / FAILURE_PROBABILITY)
        tolerance = np.sqrt(2 * variance[user] * log_term / n) + 4 * bound[user] * log_term / (3 * n)
        assert abs(sample.mean() - mean[user]) <= tolerance
    np.testing.assert_allclose(mean, lr_mdp_env.evaluate_policy(mdp, uniform_policy(mdp), table))


def test_vector_next_step_autoreset(small_world):
    horizon = small_world.mdp.horizon
    vector = TabularPreferenceVectorEnv(*small_world, num_envs=4, users=[0, 1, 2, 0])
    observations, info = vector.reset(seed=0)
    np.testing.assert_array_equal(info["time"], 0)
    for step in range(1, horizon + 1):
        observations, rewards, terminated, truncated, info = vector.step(np.array([0, 1, 2, 1]))
        np.testing.assert_array_equal(info["time"], step)
        assert terminated.tolist() == [step == horizon] * 4 and not truncated.any()
    # The next step resets instead of stepping: first observation, no reward, not terminated.
    observations, rewards, terminated, _, info = vector.step(np.array([2, 2, 2, 2]))
    np.testing.assert_array_equal(info["time"], 0)
    np.testing.assert_array_equal(rewards, 0.0)
    assert not terminated.any()
    np.testing.assert_array_equal(observations, info["state"])  # h = 0: index 0 * S + s
    _, _, _, _, info = vector.step(np.array([0, 0, 0, 0]))
    np.testing.assert_array_equal(info["time"], 1)


def test_vector_same_step_autoreset(small_world):
    mdp = small_world.mdp
    vector = TabularPreferenceVectorEnv(*small_world, num_envs=3, observation="multi_discrete", autoreset_mode="SameStep")
    assert vector.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    vector.reset(seed=0)
    for _ in range(mdp.horizon - 1):
        _, _, terminated, _, info = vector.step(np.array([0, 1, 2]))
        assert not terminated.any() and "final_obs" not in info
    observations, _, terminated, _, info = vector.step(np.array([0, 1, 2]))
    assert terminated.all() and info["_final_obs"].all()
    np.testing.assert_array_equal(observations[:, 0], 0)  # already the next episode
    assert [final[0] for final in info["final_obs"]] == [mdp.horizon] * 3
    np.testing.assert_array_equal(info["final_info"]["time"], mdp.horizon)
    _, _, _, _, info = vector.step(np.array([0, 1, 2]))
    np.testing.assert_array_equal(info["time"], 1)


def test_vector_disabled_autoreset_needs_masked_reset(small_world):
    vector = TabularPreferenceVectorEnv(*small_world, num_envs=2, autoreset_mode=AutoresetMode.DISABLED)
    vector.reset(seed=0)
    for _ in range(small_world.mdp.horizon):
        vector.step(np.array([0, 0]))
    with pytest.raises(ResetNeeded, match="reset_mask"):
        vector.step(np.array([0, 0]))
    _, info = vector.reset(options={"reset_mask": np.array([True, False])})
    # Only the reset copy reports (SyncVectorEnv's layout); the other one still waits at h = H.
    assert info["_time"].tolist() == [True, False] and info["time"][0] == 0
    assert vector.times.tolist() == [0, small_world.mdp.horizon]


def test_vector_env_is_reproducible_and_pickles(small_world):
    vector = TabularPreferenceVectorEnv(*small_world, num_envs=5)
    actions = np.random.default_rng(0).integers(3, size=(30, 5))

    def run(env, seed):
        outputs = [env.reset(seed=seed)[0].tolist()]
        for action in actions:
            observation, reward, terminated, _, _ = env.step(action)
            outputs.append((observation.tolist(), reward.tolist(), terminated.tolist()))
        return outputs

    assert run(vector, 3) == run(vector, 3)
    vector.reset(seed=3)
    vector.step(actions[0])
    copy = pickle.loads(pickle.dumps(vector))
    for action in actions[1:]:
        assert repr(vector.step(action)[:4]) == repr(copy.step(action)[:4])


# -- the families' reward designs ----------------------------------------------------------------


def _span_residual(rewards_by_state: np.ndarray, prototypes: np.ndarray) -> float:
    """Relative residual of the rows of ``rewards_by_state`` outside the span of ``prototypes``."""
    coefficients, *_ = np.linalg.lstsq(prototypes.T, rewards_by_state.T, rcond=None)
    return float(np.linalg.norm(prototypes.T @ coefficients - rewards_by_state.T) / np.linalg.norm(rewards_by_state))


def _state_rewards(mdp, rewards) -> np.ndarray:
    """Users' rewards as functions of the state alone (asserting they ignore action and step)."""
    table = rewards.reward_table(mdp)
    np.testing.assert_allclose(table, np.broadcast_to(table[:, :1, :, :1], table.shape), atol=1e-12)
    return table[:, 0, :, 0]


def _has_goal_set(by_state: np.ndarray, distances: np.ndarray, n_goals: int, length_scale: float) -> bool:
    bumps = np.exp(-distances / length_scale)
    return any(
        _span_residual(by_state, bumps[list(goals)]) < 1e-9
        for goals in itertools.combinations(range(distances.shape[0]), n_goals)
    )


def test_gridworld_users_combine_goal_bumps_of_manhattan_distance():
    width, height, length_scale = 4, 3, 1.5
    mdp, rewards = gridworld_world(width, height, 6, n_goals=2, length_scale=length_scale, n_users=5, model_seed=4)
    cells = [(x, y) for x in range(width) for y in range(height)]
    assert list(lr_mdp_env.gridworld_graph(width, height).nodes) == cells
    distances = np.array([[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in cells] for a in cells], dtype=float)
    by_state = _state_rewards(mdp, rewards)
    assert _has_goal_set(by_state, distances, 2, length_scale)
    assert not _has_goal_set(by_state, distances, 1, length_scale)  # genuinely two goals


def test_graph_goals_follow_edge_directions():
    # Directed cycle 0 -> 1 -> 2 -> 3 -> 4 -> 0: the distance from s to g is (g - s) mod 5.
    edges = [[k, (k + 1) % 5] for k in range(5)]
    mdp, rewards = graph_world(edges=edges, directed=True, horizon=4, n_goals=1, n_users=3, model_seed=2)
    assert (mdp.n_states, mdp.n_actions) == (5, 2)
    distances = np.array([[(g - s) % 5 for s in range(5)] for g in range(5)], dtype=float)
    by_state = _state_rewards(mdp, rewards)
    assert _has_goal_set(by_state, distances, 1, 1.0)
    assert not _has_goal_set(by_state, distances.T, 1, 1.0)  # distances against the edges do not fit


def test_chain_mdp_returns_the_advancing_actions_it_draws():
    for slip in (0.0, 0.3):
        mdp, advancing = lr_mdp_env.chain_mdp(6, 7, n_actions=4, slip=slip, seed=8, return_advancing=True)
        # Same model as without the flag: the flag only adds the actions to the return value.
        np.testing.assert_array_equal(mdp.transitions, lr_mdp_env.chain_mdp(6, 7, n_actions=4, slip=slip, seed=8).transitions)
        assert advancing.shape == (6,) and advancing.dtype.kind == "i"
        states = np.arange(6)
        forward = np.minimum(states + 1, 5)
        # Oracle: the advancing action reaches the next state with probability 1 - slip and
        # every other action reaches it only by slipping (or stays at the end by slipping).
        np.testing.assert_allclose(mdp.transitions[0, states, advancing, forward], 1 - slip)
        others = np.ones((6, 4), dtype=bool)
        others[states, advancing] = False
        assert np.all(mdp.transitions[0, states[:, None], np.nonzero(others)[1].reshape(6, 3), forward[:, None]] == slip)
        np.testing.assert_array_equal(lr_mdp_env.families.advancing_actions(mdp), advancing)
    with pytest.raises(TypeError, match="return_advancing must be a bool"):
        lr_mdp_env.chain_mdp(3, 3, return_advancing="yes")


def test_chain_world_draws_the_users_once(monkeypatch):
    calls = []
    drawing = chain.low_rank_rewards

    def counted(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        return drawing(*args, **kwargs)

    monkeypatch.setattr(chain, "low_rank_rewards", counted)
    mdp, rewards = chain_world(5, 8, n_users=4, rank=2, distractor=0.5, model_seed=3)
    assert len(calls) == 1
    # The users are the personal draw plus the shared base, and the base is one column for all.
    personal = rewards.theta - rewards.base
    np.testing.assert_allclose(personal, rewards.low_rank_part + rewards.tail, atol=0)
    np.testing.assert_array_equal(rewards.base, np.repeat(rewards.base[:, :1], 4, axis=1))


def test_chain_users_all_go_to_the_good_end():
    for slip, distractor in ((0.0, 0.0), (0.0, 0.8), (0.2, 0.5)):
        mdp, rewards = chain_world(5, 8, n_actions=3, slip=slip, distractor=distractor, n_users=6, rank=2, model_seed=1)
        states = np.arange(5)
        advancing = np.argmax(mdp.transitions[0, states, :, np.minimum(states + 1, 4)], axis=1)
        always_advance = np.zeros((8, 5, 3))
        always_advance[:, states, advancing] = 1.0
        end_time = occupancy(mdp, always_advance)[:, -1].sum()
        optimal, _ = backward_induction(mdp, rewards.reward_table(mdp))
        # Every user's optimal policy spends as long at the end as the policy that always advances.
        np.testing.assert_allclose(occupancy(mdp, optimal)[:, :, -1].sum(axis=(1, 2)), end_time, atol=1e-9)
        if slip == 0.0:
            assert end_time == pytest.approx(8 - 4)
            # The uniform policy is at the end at step S - 1 only with probability A^-(S-1).
            assert occupancy(mdp, uniform_policy(mdp))[4, -1].sum() == pytest.approx(3.0**-4)
        # The base is the shared end bonus (every action) plus the distractor in state 0.
        base = rewards.base.reshape(5, 3, -1)
        assert np.all(base[-1] == base[-1, 0, 0]) and base[-1, 0, 0] > 0
        np.testing.assert_allclose(base[0, np.arange(3) != advancing[0]], distractor)
        assert np.all(base[1:-1] == 0.0) and np.all(base[0, advancing[0]] == 0.0)


def test_contextual_bandit_reward_is_context_times_features():
    mdp, rewards = contextual_bandit_world(6, 3, n_features=5, context_dim=4, rank=2, n_users=7, model_seed=5)
    assert (mdp.horizon, mdp.n_states, mdp.n_actions) == (1, 6, 3)
    np.testing.assert_allclose(mdp.initial_distribution, 1 / 6)
    features = mdp.features[0]
    by_hand = np.einsum("ix,xd,sad->isa", rewards.contexts, rewards.theta_c, features)
    env = TabularPreferenceEnv(mdp, rewards, user=4)
    np.testing.assert_allclose(env.params.reward_table[:, 0], by_hand, atol=1e-12)
    _, info = env.reset(seed=0)
    _, reward, terminated, _, after = env.step(2)
    assert terminated and reward == pytest.approx(by_hand[4, info["state"], 2])
    assert after["state"] == info["state"]  # the query stays


@pytest.mark.parametrize("builder", [random_low_rank_world, gridworld_world, graph_world, chain_world, contextual_bandit_world])
def test_return_differences_are_of_order_one(builder):
    # Rewards are scaled with mdp=: two uniform trajectories differ by about `scale` = 1, i.e.
    # sqrt(mean_i 2 Var_i(R)) = 1 exactly for the personal part (Theta - Theta_0).
    mdp, rewards = builder(model_seed=6)
    personal = rewards.theta if not hasattr(rewards, "base") else rewards.theta - rewards.base
    _, variance = return_moments(mdp, uniform_policy(mdp), mdp.reward(personal.T))
    assert np.sqrt(np.mean(2 * variance)) == pytest.approx(1.0, rel=1e-9)


def test_model_seed_changes_the_model_and_only_it():
    first = gym.make("lr_mdp_env/RandomLowRank-v0", model_seed=1).unwrapped.params.reward_table
    again = gym.make("lr_mdp_env/RandomLowRank-v0", model_seed=1).unwrapped.params.reward_table
    other = gym.make("lr_mdp_env/RandomLowRank-v0", model_seed=2).unwrapped.params.reward_table
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


# -- bad arguments -------------------------------------------------------------------------------


def _bad_calls(world):
    mdp, rewards = world
    theta = rewards.theta
    table = rewards.reward_table(mdp)
    env = TabularPreferenceEnv(mdp, rewards)
    return [
        (lambda: TabularPreferenceEnv(mdp, rewards, user=3), ValueError, r"user=3 is out of range"),
        (lambda: TabularPreferenceEnv(mdp, rewards, user=-1), ValueError, r"user=-1"),
        (lambda: TabularPreferenceEnv(mdp, rewards, user=1.0), TypeError, r"user must be an integer"),
        (lambda: TabularPreferenceEnv(mdp, rewards, observation="tuple"), ValueError, r"observation must be one of"),
        (lambda: TabularPreferenceEnv(mdp, theta[1:]), ValueError, r"rewards as Theta"),
        (lambda: TabularPreferenceEnv(mdp, table[:, :, 1:]), ValueError, r"rewards must have shape"),
        (lambda: TabularPreferenceEnv(mdp, np.full_like(theta, np.nan)), ValueError, r"rewards must be finite"),
        (lambda: TabularPreferenceEnv(mdp, None), TypeError, r"rewards is required"),
        (lambda: TabularPreferenceEnv(table, rewards), TypeError, r"mdp must be a TabularMDP"),
        (lambda: TabularPreferenceEnv(mdp, rewards, reward_visible="yes"), TypeError, r"reward_visible"),
        (lambda: TabularPreferenceEnv(mdp, rewards, render_mode="human"), ValueError, r"render_mode"),
        (lambda: env.reset(options={"user": 7}), ValueError, r"options\['user'\]=7"),
        (lambda: env.reset(options={"users": [1]}), ValueError, r"options has unknown keys \['users'\]"),
        (lambda: (env.reset(seed=0), env.step(3)), ValueError, r"action=3"),
        (lambda: (env.reset(seed=0), env.step(1.5)), TypeError, r"action must be an integer"),
        (lambda: TabularPreferenceVectorEnv(mdp, rewards, 0), ValueError, r"num_envs must be at least 1"),
        (lambda: TabularPreferenceVectorEnv(mdp, rewards, 2, users=[0]), ValueError, r"users must have one entry"),
        (lambda: TabularPreferenceVectorEnv(mdp, rewards, 2, users=[0, 9]), ValueError, r"users contains user 9"),
        (lambda: TabularPreferenceVectorEnv(mdp, rewards, 2, autoreset_mode="sometimes"), ValueError, r"autoreset_mode"),
        (lambda: (vector := TabularPreferenceVectorEnv(mdp, rewards, 2), vector.reset(seed=0), vector.step(np.zeros(3, dtype=int))),
         ValueError, r"actions must have shape \(2,\)"),
        (lambda: PreferenceFeedback(gym.make("CartPole-v1")), TypeError, r"env must be a TabularPreferenceEnv"),
        (lambda: PreferenceFeedback(env, teacher=1.0), TypeError, r"teacher must be"),
        (lambda: PreferenceFeedback(env, reference=(np.zeros(2, dtype=int), np.zeros(2, dtype=int))), ValueError, r"reference states"),
    ]


@pytest.mark.parametrize("case", range(23))
def test_bad_arguments_raise_errors_naming_them(small_world, case):
    calls = _bad_calls(small_world)
    assert len(calls) == 23
    call, error, message = calls[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        ("lr_mdp_env/RandomLowRank-v0", {"n_states": 0}, r"n_states must be at least 1"),
        ("lr_mdp_env/RandomLowRank-v0", {"rank": 100}, r"rank must be at most"),
        ("lr_mdp_env/RandomLowRank-v0", {"model_seed": -1}, r"model_seed must be at least 0"),
        ("lr_mdp_env/RandomLowRank-v0", {"features": "dense"}, r"n_features"),
        ("lr_mdp_env/GridWorld-v0", {"walls": [[9, 9]]}, r"wall \(9, 9\)"),
        ("lr_mdp_env/GridWorld-v0", {"n_goals": 17}, r"n_goals must be at most 16"),
        ("lr_mdp_env/GridWorld-v0", {"n_goals": 3, "n_users": 2}, r"n_goals=3 must be at most n_users=2"),
        ("lr_mdp_env/GridWorld-v0", {"features": "dense"}, r"features must be 'one_hot' or 'one_hot_time'"),
        ("lr_mdp_env/GridWorld-v0", {"length_scale": 0.0}, r"length_scale must be greater than 0"),
        ("lr_mdp_env/Graph-v0", {"graph": "lattice"}, r"graph must be one of"),
        ("lr_mdp_env/Graph-v0", {"graph": "path", "edges": [[0, 1]]}, r"either graph .* or edges"),
        ("lr_mdp_env/Graph-v0", {"graph": "path", "k": 2}, r"k do not apply to graph='path'"),
        ("lr_mdp_env/Graph-v0", {"edges": [[0, 1.5]]}, r"edges must be a list of \[u, v\] pairs"),
        ("lr_mdp_env/Graph-v0", {"edges": [[0, 4]], "n_nodes": 3}, r"edges use node 4 but n_nodes=3"),
        ("lr_mdp_env/Graph-v0", {"graph": "random_regular", "degree": 3, "n_nodes": 5}, r"degree \* n_nodes even"),
        ("lr_mdp_env/Chain-v0", {"horizon": 3}, r"horizon must be at least 6"),
        ("lr_mdp_env/Chain-v0", {"slip": 0.6}, r"slip must be below 0.5"),
        ("lr_mdp_env/ContextualBandit-v0", {"n_queries": 0}, r"n_queries must be at least 1"),
        ("lr_mdp_env/ContextualBandit-v0", {"rank": 9}, r"rank must be at most"),
        ("lr_mdp_env/RandomLowRank-v0", {"user": 8}, r"user=8 is out of range"),
        ("lr_mdp_env/RandomLowRank-v0", {"observation": "box"}, r"observation must be one of"),
    ],
)
def test_bad_registered_kwargs_raise_errors_naming_them(env_id, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        gym.make(env_id, **kwargs)


def test_bad_vector_factory_arguments():
    with pytest.raises(ValueError, match="either user .* or users"):
        gym.make_vec("lr_mdp_env/Chain-v0", num_envs=2, vectorization_mode="vector_entry_point", user=0, users=[0, 1])
    vector = gym.make_vec("lr_mdp_env/Chain-v0", num_envs=3, vectorization_mode="vector_entry_point", user=5)
    np.testing.assert_array_equal(vector.users, 5)
