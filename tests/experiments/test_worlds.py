"""Sweeps over the user's own worlds: a Gymnasium id a plugin registers, or a builder function."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import lr_mdp_experiments as experiments
from lr_mdp_experiments.worlds import WorldSource, world_of

#: A plugin as a user would write it: a world builder, an environment class exposing the world
#: (a TabularPreferenceEnv), and a plain gymnasium.Env exposing ``mdp`` and ``rewards``.
WORLD_PLUGIN = '''
import gymnasium as gym
import numpy as np

from lr_mdp_env import TabularPreferenceEnv, low_rank_rewards, random_mdp


def two_actions_world(n_states=4, horizon=3, n_users=6, rank=2, model_seed=0):
    mdp = random_mdp(n_states, 2, horizon, seed=model_seed)
    rewards = low_rank_rewards(mdp.n_features, n_users, rank, mdp=mdp, seed=model_seed + 1)
    return mdp, rewards


class TwoActionsEnv(TabularPreferenceEnv):
    def __init__(self, n_states=4, horizon=3, n_users=6, rank=2, model_seed=0, render_mode=None):
        super().__init__(*two_actions_world(n_states, horizon, n_users, rank, model_seed), render_mode=render_mode)


class PlainEnv(gym.Env):
    """Not a TabularPreferenceEnv: it only keeps the world where a sweep looks for it."""

    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, model_seed=0, **world):
        self.mdp, self.rewards = two_actions_world(model_seed=model_seed, **world)


for env_id, entry_point in (("plugin_test/TwoActions-v0", TwoActionsEnv), ("plugin_test/Plain-v0", PlainEnv)):
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=entry_point)
'''

CONFIG = """
name = "mine"
{source}
plugins = ["world_plugin"]
seed = 3
replicates = 2

[world]
n_states = 4
horizon = 3

[grid]
n_pairs_per_user = [15, 30]

[[agents]]
name = "p-sharelora"
rank = "$true_rank"
pessimism = "none"
"""


@pytest.fixture
def world_plugin(tmp_path, monkeypatch):
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "world_plugin.py").write_text(WORLD_PLUGIN)
    monkeypatch.syspath_prepend(str(directory))
    return directory


def _table(source: str) -> pd.DataFrame:
    config = experiments.parse_config(CONFIG.format(source=source))
    table = experiments.run_serially(config)
    assert (table["status"] == "ok").all(), table["error"].tolist()
    return table.drop(columns=list(experiments.TIMING_COLUMNS))


def test_a_sweep_runs_on_an_environment_a_plugin_registers(world_plugin):
    table = _table('env = "plugin_test/TwoActions-v0"')
    assert len(table) == 2 * 2 and np.isfinite(table["suboptimality"]).all()
    # The entry point takes model_seed: each replicate has its own world (shared across n).
    optimal = table.groupby("replicate")["optimal_value"]
    assert optimal.nunique().eq(1).all() and optimal.first().nunique() == 2
    # "$true_rank" is recorded with the value it stood for.
    assert (table["true_rank"] == 2).all()
    assert all(json.loads(arguments)["rank"] == 2 for arguments in table["arguments"])


def test_an_id_a_builder_and_a_plain_environment_give_the_same_worlds_and_results(world_plugin):
    """The three ways to the same world: through gym.make on a TabularPreferenceEnv, through a
    plain gymnasium.Env exposing mdp and rewards, and through the builder itself."""
    reference = _table('builder = "world_plugin:two_actions_world"')
    for source in ('env = "plugin_test/TwoActions-v0"', 'env = "plugin_test/Plain-v0"', 'env = "world_plugin:plugin_test/Plain-v0"'):
        pd.testing.assert_frame_equal(_table(source), reference, obj=source)


def test_the_world_a_source_builds_is_the_builders(world_plugin):
    import world_plugin as plugin

    expected_mdp, expected_rewards = plugin.two_actions_world(n_states=5, model_seed=7)
    for source in (WorldSource(env="plugin_test/TwoActions-v0"), WorldSource(builder="world_plugin:two_actions_world")):
        mdp, rewards = source.build({"n_states": 5}, model_seed=7)
        np.testing.assert_array_equal(mdp.transitions, expected_mdp.transitions)
        np.testing.assert_array_equal(rewards.theta, expected_rewards.theta)
        # [world] may fix the model for every replicate.
        fixed, _ = source.build({"n_states": 5, "model_seed": 7}, model_seed=99)
        np.testing.assert_array_equal(fixed.transitions, expected_mdp.transitions)
    fields, open_ = WorldSource(env="plugin_test/TwoActions-v0").fields()
    assert set(fields) == {"n_states", "horizon", "n_users", "rank", "model_seed"} and not open_
    assert WorldSource(env="plugin_test/Plain-v0").fields() == ({"model_seed": 0}, True)  # **world: open


@pytest.mark.parametrize("change, message", [
    (("n_states = 4", "n_statez = 4"), r"unknown config key 'world.n_statez' \(did you mean 'n_states'\?\); world "
                                       r"takes \['horizon', 'model_seed', 'n_states', 'n_users', 'rank'\]"),
    (("n_states = 4", "n_states = 1.5"), r"config key 'world.n_states' must be int, got float"),
    (("[grid]", "[grid]\nrank = [2, 9]"), r"config key 'world' \(world.n_states=4, world.horizon=3, world.rank=9\): "
                                          r"rank must be at most 6"),
])
def test_a_user_environments_arguments_are_checked_like_the_built_ins(world_plugin, change, message):
    old, new = change
    text = CONFIG.format(source='env = "plugin_test/TwoActions-v0"')
    with pytest.raises(experiments.ConfigError, match=message):
        experiments.parse_config(text.replace(old, new, 1))


def test_an_environment_without_a_tabular_world_is_refused_with_the_contract():
    text = CONFIG.format(source='env = "CartPole-v1"').replace('plugins = ["world_plugin"]\n', "")
    text = text.replace("n_states = 4\nhorizon = 3\n", "")
    with pytest.raises(experiments.ConfigError,
                       match=r"config key 'world' \(\): env 'CartPole-v1' does not expose its world: a sweep needs a "
                             r"TabularMDP as `mdp` and the users' LowRankRewards or ContextualRewards as `rewards`"):
        experiments.parse_config(text)
    with pytest.raises(TypeError, match=r"got mdp=NoneType, rewards=NoneType"):
        world_of(object())
