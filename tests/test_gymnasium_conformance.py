"""Gymnasium's own generic environment tests, adapted to the five ids and ``PreferenceFeedback``.

The models are Gymnasium's tests of its registered environments (``tests/envs/test_envs.py``:
checker, determinism, pickling; ``tests/envs/registration``: ``make``, ``make_vec`` and spec
round trips) and of ``SyncVectorEnv``, which is the oracle for the numpy vector environment: on
worlds whose dynamics are deterministic, both must return equal data, step by step, in every
autoreset mode.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import RenderCollection, TimeAwareObservation, TimeLimit

import lr_mdp_env  # noqa: F401  (registers the ids)
from lr_mdp_env import Teacher
from lr_mdp_env.envs import ENV_IDS, PreferenceFeedback, TabularPreferenceEnv, TabularPreferenceVectorEnv

SEED = 0
NUM_STEPS = 50

#: Kwargs that make each family's dynamics deterministic (fixed start, no slip), so that the
#: numpy vector env and SyncVectorEnv, which draw their randomness differently, must agree exactly.
DETERMINISTIC = {
    "lr_mdp_env/RandomLowRank-v0": {"n_states": 1},
    "lr_mdp_env/GridWorld-v0": {"slip": 0.0, "start": [0, 0]},
    "lr_mdp_env/Graph-v0": {"start": 0, "slip": 0.0},
    "lr_mdp_env/Chain-v0": {"slip": 0.0},
    "lr_mdp_env/ContextualBandit-v0": {"n_queries": 1},
}


def _has_wrapper(env: gym.Env, wrapper_type: type) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, wrapper_type):
            return True
        env = env.env
    return False


def _assert_equivalent(first, second, where: str = "") -> None:
    assert data_equivalence(first, second, exact=True), f"{where}: {first!r} != {second!r}"


# -- the single environments ---------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_passes_the_env_checker_without_warnings(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make(env_id, disable_env_checker=True).unwrapped
        check_env(env)  # with a spec, this also renders in every declared mode
        env.close()
    assert [str(warning.message) for warning in caught] == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_determinism_rollout(env_id):
    assert gym.spec(env_id).nondeterministic is False
    env_1, env_2 = gym.make(env_id), gym.make(env_id)
    _assert_equivalent(env_1.reset(seed=SEED), env_2.reset(seed=SEED), "reset")
    env_1.action_space.seed(SEED)
    for step in range(NUM_STEPS):
        action = env_1.action_space.sample()
        result_1, result_2 = env_1.step(action), env_2.step(action)
        _assert_equivalent(result_1, result_2, f"step {step}")
        assert env_1.observation_space.contains(result_1[0])
        if result_1[2] or result_1[3]:
            _assert_equivalent(env_1.reset(seed=SEED), env_2.reset(seed=SEED), f"reset after {step}")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickled_env_continues_identically(env_id):
    env = gym.make(env_id)
    env.reset(seed=SEED)
    copy = pickle.loads(pickle.dumps(env))
    _assert_equivalent(env.reset(), copy.reset(), "reset")
    action = env.action_space.sample()
    _assert_equivalent(env.step(action), copy.step(action), "step")


# -- make: render modes, time limit, spec round trips --------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_sees_the_render_modes_of_the_entry_point(env_id):
    entry_point = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    assert entry_point.metadata["render_modes"] == TabularPreferenceEnv.metadata["render_modes"]
    env = gym.make(env_id, render_mode="ansi_list")
    assert _has_wrapper(env, RenderCollection) and env.render_mode == "ansi_list"
    env.reset(seed=SEED)
    env.step(0)
    frames = env.render()
    assert isinstance(frames, list) and len(frames) == 2 and all(isinstance(frame, str) for frame in frames)
    assert frames[0].startswith("user 0, step 0/") and frames[1].startswith("user 0, step 1/")


def test_make_warns_about_an_unknown_render_mode_before_the_env_rejects_it():
    message = "not in the possible render_modes"
    with pytest.warns(UserWarning, match=re.escape(message)), pytest.raises(ValueError, match="render_mode must be None or one of"):
        gym.make("lr_mdp_env/GridWorld-v0", render_mode="no mode")


def _episode_flags(env: gym.Env) -> list[tuple[bool, bool]]:
    """``(terminated, truncated)`` of every step of one episode (action 0 throughout)."""
    env.reset(seed=SEED)
    found: list[tuple[bool, bool]] = []
    while not (found and any(found[-1])):
        found.append(tuple(env.step(0)[2:4]))
    return found


def _flags(length: int, terminated: bool) -> list[tuple[bool, bool]]:
    """An episode of ``length`` steps whose last one is truncated (and terminated if it is step H)."""
    return [(False, False)] * (length - 1) + [(terminated, True)]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_made_spec_reports_the_model_horizon(env_id):
    # The registry holds no limit (it would cut other horizons); the made env declares its own H.
    assert gym.spec(env_id).max_episode_steps is None
    env = gym.make(env_id)
    horizon = env.unwrapped.mdp.horizon
    assert env.spec.max_episode_steps == horizon
    assert _has_wrapper(env, TimeLimit)
    # The model ends every episode at step H; the entry point's TimeLimit(H) marks the same step truncated.
    assert _episode_flags(env) == _flags(horizon, terminated=True)
    # max_episode_steps=-1 drops only the limit gym.make would add: the entry point's stays.
    unlimited = gym.make(env_id, max_episode_steps=-1)
    assert unlimited.spec.max_episode_steps == horizon and _episode_flags(unlimited) == _flags(horizon, terminated=True)


#: The ids whose builder takes ``horizon`` (the bandit has H = 1).
HORIZON_IDS = [env_id for env_id in ENV_IDS if "horizon" in gym.spec(env_id).kwargs]


@pytest.mark.parametrize("env_id", HORIZON_IDS)
@pytest.mark.parametrize("change", [-2, 3], ids=["shorter", "longer"])
@pytest.mark.parametrize("max_episode_steps", [None, -1, "H - 1", "H", "H + 2"])
def test_every_horizon_lasts_its_own_length(env_id, change, max_episode_steps):
    horizon = gym.spec(env_id).kwargs["horizon"] + change
    # The limit given to gym.make: none, none at all (-1), or one relative to this horizon.
    limit = {None: None, -1: -1, "H - 1": horizon - 1, "H": horizon, "H + 2": horizon + 2}[max_episode_steps]
    given = {} if limit is None else {"max_episode_steps": limit}
    env = gym.make(env_id, horizon=horizon, **given)
    assert env.unwrapped.mdp.horizon == horizon
    # An episode lasts H steps unless the user asked for a shorter limit, which cuts it there.
    cut = limit is not None and 0 < limit < horizon
    flags = _episode_flags(env)
    assert flags == (_flags(limit, terminated=False) if cut else _flags(horizon, terminated=True))
    # The spec reports the limit in force: this model's H, or the one the user gave.
    assert env.spec.max_episode_steps == (horizon if limit in (None, -1) else limit)
    # The spec rebuilds an environment whose episodes end at the same step with the same flags.
    assert _episode_flags(gym.make(env.spec)) == flags
    assert _episode_flags(gym.make(EnvSpec.from_json(env.spec.to_json()))) == flags
    # make_vec follows the same limit, with its vector entry point and with SyncVectorEnv.
    for mode in ("vector_entry_point", "sync"):
        envs = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, horizon=horizon, **given)
        envs.reset(seed=SEED)
        for step, expected in enumerate(flags):
            _, _, terminated, truncated, _ = envs.step(np.zeros(2, dtype=np.int64))
            assert terminated.tolist() == [expected[0]] * 2 and truncated.tolist() == [expected[1]] * 2, (mode, step)
        envs.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("observation", ["discrete", "multi_discrete"])
def test_time_aware_observation_counts_the_steps(env_id, observation):
    env = TimeAwareObservation(gym.make(env_id, observation=observation), flatten=False)
    horizon = env.unwrapped.mdp.horizon
    assert env.max_timesteps == horizon
    observation_, _ = env.reset(seed=SEED)
    assert observation_["time"] == 0 and observation_ in env.observation_space
    for step in range(1, horizon + 1):
        observation_, *_ = env.step(0)
        assert observation_["time"] == step and observation_ in env.observation_space
        # The time Gymnasium counts is the one the model puts in the observation.
        assert int(env.unwrapped.decode(observation_["obs"])[0]) == step


@pytest.mark.parametrize("env_id", HORIZON_IDS)
@pytest.mark.parametrize("change", [-2, 3], ids=["shorter", "longer"])
def test_time_aware_observation_normalises_by_the_made_horizon(env_id, change):
    horizon = gym.spec(env_id).kwargs["horizon"] + change
    env = TimeAwareObservation(gym.make(env_id, horizon=horizon), flatten=False, normalize_time=True)
    assert env.max_timesteps == horizon
    observation, _ = env.reset(seed=SEED)
    times = [observation["time"]]
    for _ in range(horizon):
        times.append(env.step(0)[0]["time"])
    # The time reaches 1 exactly at the model's last observation, h = H.
    np.testing.assert_allclose(np.concatenate(times), np.arange(horizon + 1) / horizon, rtol=1e-6)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_full_spec_round_trip_with_wrappers(env_id):
    env = gym.make(env_id, render_mode="ansi", observation="multi_discrete")
    env = gym.wrappers.TimeAwareObservation(env)
    env = gym.wrappers.NormalizeReward(env, gamma=0.8)
    env_spec = env.spec
    assert len(env_spec.additional_wrappers) == 2
    recreated_spec = EnvSpec.from_json(env_spec.to_json())
    assert recreated_spec == env_spec
    recreated = gym.make(recreated_spec)
    assert recreated.render_mode == "ansi" and recreated.gamma == 0.8
    assert isinstance(recreated.env, gym.wrappers.TimeAwareObservation)
    assert isinstance(recreated.unwrapped, TabularPreferenceEnv)
    _assert_equivalent(env.reset(seed=42), recreated.reset(seed=42), "reset")
    env.action_space.seed(1)
    for step in range(3 * env.unwrapped.mdp.horizon):
        action = env.action_space.sample()
        result = env.step(action)
        _assert_equivalent(result, recreated.step(action), f"step {step}")
        if result[2] or result[3]:
            _assert_equivalent(env.reset(), recreated.reset(), f"reset after {step}")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_specs_to_and_from_json(env_id):
    made = gym.make(env_id, user=1, model_seed=4)
    for spec in (gym.spec(env_id), made.unwrapped.spec, made.spec, gym.wrappers.NormalizeReward(made).spec):
        assert EnvSpec.from_json(spec.to_json()) == spec
    assert made.spec.kwargs["user"] == 1 and made.spec.kwargs["model_seed"] == 4


# -- PreferenceFeedback through specs ------------------------------------------------------------


def _labels(env, n_episodes: int, seed: int) -> list:
    found = []
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for episode in range(n_episodes):
        if episode:
            env.reset()
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        found.append(info.get("preference"))
    return found


def test_preference_feedback_records_its_arguments_and_is_rebuilt_from_the_spec():
    horizon = gym.spec("lr_mdp_env/Chain-v0").kwargs["horizon"]
    reference = (np.zeros(horizon, dtype=np.int64), np.ones(horizon, dtype=np.int64))
    teacher = Teacher(beta=2.0, mistake=0.1, equal=0.01)
    for kwargs in ({"teacher": teacher}, {"teacher": teacher, "reference": reference}, {}):
        env = PreferenceFeedback(gym.make("lr_mdp_env/Chain-v0", reward_visible=False, user=2), **kwargs)
        wrapper_spec = env.spec.additional_wrappers[-1]
        assert wrapper_spec.name == "PreferenceFeedback"
        assert wrapper_spec.kwargs["teacher"] == {"beta": 2.0, "mistake": 0.1, "myopia": 1.0, "skip": 0.0, "equal": 0.01} \
            if "teacher" in kwargs else wrapper_spec.kwargs["teacher"] == {"beta": 1.0, "mistake": 0.0, "myopia": 1.0, "skip": 0.0, "equal": 0.0}
        for spec in (env.spec, EnvSpec.from_json(env.spec.to_json())):
            recreated = gym.make(spec)
            assert isinstance(recreated, PreferenceFeedback) and recreated.teacher == env.teacher
            if "reference" in kwargs:
                np.testing.assert_array_equal(recreated.reference[1], reference[1])
            # The rebuilt stack labels the same episodes with the same labels.
            assert _labels(recreated, 6, seed=3) == _labels(env, 6, seed=3)


def test_preference_feedback_accepts_teacher_arguments():
    env = PreferenceFeedback(gym.make("lr_mdp_env/Chain-v0"), teacher={"beta": 3.0})
    assert env.teacher == Teacher(beta=3.0)
    with pytest.raises(ValueError, match="beta"):
        PreferenceFeedback(gym.make("lr_mdp_env/Chain-v0"), teacher={"beta": -1.0})


# -- make_vec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("vectorization_mode", ["vector_entry_point", "sync"])
@pytest.mark.parametrize("num_envs", [1, 3])
def test_make_vec_num_envs_and_modes(env_id, vectorization_mode, num_envs):
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode, render_mode=None)
    assert envs.num_envs == num_envs
    expected = TabularPreferenceVectorEnv if vectorization_mode == "vector_entry_point" else SyncVectorEnv
    assert isinstance(envs, expected)
    observations, _ = envs.reset(seed=SEED)
    assert observations in envs.observation_space
    envs.close()


def test_make_vec_default_mode_is_the_vector_entry_point_and_async_works():
    assert isinstance(gym.make_vec("lr_mdp_env/Chain-v0", num_envs=2), TabularPreferenceVectorEnv)
    envs = gym.make_vec("lr_mdp_env/Chain-v0", num_envs=2, vectorization_mode="async")
    try:
        observations, info = envs.reset(seed=SEED)
        np.testing.assert_array_equal(observations, 0)  # h = 0, state 0: the chain's start
        assert info["time"].tolist() == [0, 0]
    finally:
        envs.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_envs": 3}, {"vectorization_mode": "sync"}, {"render_mode": "ansi"}, {"render_mode": None},
     {"max_episode_steps": 2}, {"autoreset_mode": "SameStep"}, {"vectorization_mode": "sync", "num_envs": 2}],
)
def test_make_vec_with_spec(env_id, kwargs):
    envs = gym.make_vec(env_id, **kwargs)
    recreated = gym.make_vec(envs.spec)
    assert envs.spec == recreated.spec and type(envs) is type(recreated)
    assert envs.num_envs == recreated.num_envs and envs.render_mode == recreated.render_mode
    assert envs.observation_space == recreated.observation_space
    assert envs.single_observation_space == recreated.single_observation_space
    assert envs.action_space == recreated.action_space and envs.single_action_space == recreated.single_action_space
    assert envs.metadata["autoreset_mode"] == recreated.metadata["autoreset_mode"]
    envs.close()
    recreated.close()


def test_vector_entry_point_truncates_at_the_horizon_or_earlier():
    horizon = gym.spec("lr_mdp_env/Chain-v0").kwargs["horizon"]

    def vector(**kwargs):
        return gym.make_vec("lr_mdp_env/Chain-v0", num_envs=2, vectorization_mode="vector_entry_point", **kwargs)

    assert vector().max_episode_steps == horizon
    assert vector(horizon=horizon + 4).max_episode_steps == horizon + 4
    assert vector(max_episode_steps=3).max_episode_steps == 3
    # As for the copies of gym.make: a limit beyond H never fires, -1 means no limit but H.
    assert vector(max_episode_steps=horizon + 5).max_episode_steps == horizon
    assert vector(max_episode_steps=-1).max_episode_steps == horizon
    with pytest.raises(ValueError, match="max_episode_steps must be at least 1"):
        vector(max_episode_steps=0)
    with pytest.raises(TypeError, match="max_episode_steps must be an integer"):
        vector(max_episode_steps=2.5)
    with pytest.raises(ValueError, match="render_mode must be None or one of"):
        vector(render_mode="no mode")


# -- the vector environment against SyncVectorEnv ------------------------------------------------


def _vector_pair(env_id, num_envs, autoreset_mode, **kwargs):
    common = dict(num_envs=num_envs, user=0, **DETERMINISTIC[env_id], **kwargs)
    ours = gym.make_vec(env_id, vectorization_mode="vector_entry_point", autoreset_mode=autoreset_mode, **common)
    sync = gym.make_vec(env_id, vectorization_mode="sync", vector_kwargs={"autoreset_mode": autoreset_mode}, **common)
    assert ours.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == AutoresetMode(autoreset_mode)
    return ours, sync


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("autoreset_mode", [mode.value for mode in AutoresetMode])
@pytest.mark.parametrize("observation", ["discrete", "multi_discrete"])
@pytest.mark.parametrize("max_episode_steps", [None, 2])
def test_vector_env_returns_what_sync_vector_env_returns(env_id, autoreset_mode, observation, max_episode_steps):
    limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    ours, sync = _vector_pair(env_id, 3, autoreset_mode, observation=observation, **limit)
    horizon = ours.mdp.horizon
    rng = np.random.default_rng(7)
    _assert_equivalent(ours.reset(seed=SEED), sync.reset(seed=SEED), "reset")
    # A partial reset part-way puts the copies out of step, so they end at different steps.
    partial_at = min(horizon, max_episode_steps or horizon) - 1
    ended = np.zeros(3, dtype=bool)
    for step in range(4 * horizon + 3):
        if step == partial_at and partial_at > 0 or (autoreset_mode == "Disabled" and ended.any()):
            mask = ended.copy() if ended.any() else np.array([True, False, True])
            _assert_equivalent(ours.reset(options={"reset_mask": mask}), sync.reset(options={"reset_mask": mask}), f"partial reset {step}")
        actions = rng.integers(ours.single_action_space.n, size=3)
        result = ours.step(actions)
        _assert_equivalent(result, sync.step(actions), f"step {step}")
        ended = result[2] | result[3]
    ours.close()
    sync.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_partial_reset_reports_only_the_reset_copies(env_id):
    ours, sync = _vector_pair(env_id, 4, "NextStep")
    ours.reset(seed=SEED)
    sync.reset(seed=SEED)
    mask = np.array([1, 0, 1, 0], bool)
    ours_info = ours.reset(options={"reset_mask": mask})[1]
    assert ours_info["_user"].tolist() == ours_info["_time"].tolist() == ours_info["_state"].tolist() == mask.tolist()
    _assert_equivalent(ours_info, sync.reset(options={"reset_mask": mask})[1], "partial reset info")
    listed = gym.wrappers.vector.DictInfoToList(ours)
    listed.reset(seed=SEED)
    infos = listed.reset(options={"reset_mask": mask})[1]
    assert [sorted(info) for info in infos] == [["state", "time", "user"], [], ["state", "time", "user"], []]


@pytest.mark.parametrize("observation", ["discrete", "multi_discrete"])
def test_same_step_final_obs_hold_the_single_env_types(observation):
    ours, sync = _vector_pair("lr_mdp_env/Chain-v0", 2, "SameStep", observation=observation)
    horizon = ours.mdp.horizon
    for envs in (ours, sync):
        envs.reset(seed=SEED)
    for _ in range(horizon):
        ours_info, sync_info = ours.step(np.zeros(2, dtype=np.int64))[4], sync.step(np.zeros(2, dtype=np.int64))[4]
    assert ours_info["_final_obs"].all()
    single = gym.make("lr_mdp_env/Chain-v0", observation=observation)
    single.reset(seed=SEED)
    for _ in range(horizon):
        final = single.step(0)[0]
    assert [type(value) for value in ours_info["final_obs"]] == [type(final)] * 2
    assert [type(value) for value in sync_info["final_obs"]] == [type(final)] * 2
    _assert_equivalent(ours_info, sync_info, "same-step info")


#: Malformed inputs: ``SyncVectorEnv``'s error type is the reference for each.
BAD_VECTOR_INPUTS = [
    ("reset", np.array([1, 0, 1])),
    ("reset", np.array([1.0, 0.0, 1.0])),
    ("reset", [True, False, True]),
    ("reset", np.array([False, False, False])),
    ("reset", np.array([True, False])),
    ("reset", np.array([[True, False, True]])),
    ("step", 1),
    ("step", np.int64(1)),
    ("step", np.array([0.5, 1.0, 0.0])),
    ("step", np.array([0, 1])),
    ("step", np.array([[0, 1, 1]])),
    ("step", np.array([0, 1, 9])),
]


@pytest.mark.parametrize(("method", "value"), BAD_VECTOR_INPUTS)
def test_bad_vector_inputs_raise_what_sync_vector_env_raises(method, value):
    errors = []
    for envs in _vector_pair("lr_mdp_env/Chain-v0", 3, "NextStep"):
        envs.reset(seed=SEED)
        with pytest.raises((TypeError, ValueError)) as raised:
            if method == "reset":
                envs.reset(options={"reset_mask": value})
            else:
                envs.step(value)
        errors.append(raised.type)
    assert errors[0] is errors[1]


# -- common wrappers -------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_common_wrappers(env_id):
    env = gym.make(env_id, observation="discrete")
    horizon = env.unwrapped.mdp.horizon
    env = gym.wrappers.RecordEpisodeStatistics(gym.wrappers.FlattenObservation(env))
    assert isinstance(env.observation_space, gym.spaces.Box)  # one-hot of h S + s
    observation, info = env.reset(seed=SEED)
    assert observation.sum() == 1 and observation[info["time"] * env.unwrapped.mdp.n_states + info["state"]] == 1
    total, done = 0.0, False
    while not done:
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += reward
        done = terminated or truncated
    assert info["episode"]["l"] == horizon and info["episode"]["r"] == pytest.approx(total)
    # The wrapper stack records its constructor arguments: the spec rebuilds it.
    rebuilt = gym.make(env.spec)
    assert isinstance(rebuilt, gym.wrappers.RecordEpisodeStatistics)
    assert isinstance(rebuilt.env, gym.wrappers.FlattenObservation)
    json.loads(env.spec.to_json())


def test_vector_wrappers_record_episode_statistics():
    envs = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.make_vec("lr_mdp_env/Chain-v0", num_envs=3, vectorization_mode="vector_entry_point")
    )
    horizon = envs.unwrapped.mdp.horizon
    envs.reset(seed=SEED)
    totals = np.zeros(3)
    for _ in range(horizon):
        _, rewards, terminated, truncated, info = envs.step(np.zeros(3, dtype=np.int64))
        totals += rewards
    assert terminated.all() and truncated.all()
    np.testing.assert_array_equal(info["episode"]["l"], horizon)
    np.testing.assert_allclose(info["episode"]["r"], totals)
