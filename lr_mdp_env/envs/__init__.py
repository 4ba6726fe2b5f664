"""Gymnasium environments (docs/model.md, Environments): one user's episodes, preference feedback, batched copies.

- :class:`TabularPreferenceEnv`: a :class:`~lr_mdp_env.TabularMDP` and its users' rewards as a
  ``gymnasium.Env``, for one user at a time; parameters (:class:`PreferenceEnvParams`) and
  simulation state (:class:`PreferenceEnvState`) are kept apart.
- :class:`PreferenceFeedback`: a wrapper whose final ``info`` carries the simulated teacher's
  preference between the episode and the previous one (or a reference trajectory).
- :class:`TabularPreferenceVectorEnv`: ``num_envs`` copies stepped with numpy.
- :mod:`.registration`: the five registered families and their builders.
"""

from .registration import (
    ENV_IDS,
    World,
    build_graph,
    chain_world,
    contextual_bandit_world,
    graph_world,
    gridworld_world,
    random_low_rank_world,
    register_envs,
)
from .tabular import PreferenceEnvParams, PreferenceEnvState, TabularPreferenceEnv, reward_table_of
from .vector import TabularPreferenceVectorEnv
from .wrappers import REFERENCE_EPISODE, PreferenceFeedback

__all__ = [
    "ENV_IDS",
    "REFERENCE_EPISODE",
    "PreferenceEnvParams",
    "PreferenceEnvState",
    "PreferenceFeedback",
    "TabularPreferenceEnv",
    "TabularPreferenceVectorEnv",
    "World",
    "build_graph",
    "chain_world",
    "contextual_bandit_world",
    "graph_world",
    "gridworld_world",
    "random_low_rank_world",
    "register_envs",
    "reward_table_of",
]
