"""Gymnasium environments (docs/model.md, Environments): one user's episodes, preference feedback, batched copies.

- :class:`TabularPreferenceEnv`: a :class:`~lr_mdp_env.TabularMDP` and its users' rewards as a
  ``gymnasium.Env``, for one user at a time; parameters (:class:`PreferenceEnvParams`) and
  simulation state (:class:`PreferenceEnvState`) are kept apart.
- :class:`PreferenceFeedback`: a wrapper whose final ``info`` carries the simulated teacher's
  preference between the episode and the previous one (or a reference trajectory).
- :class:`TabularPreferenceVectorEnv`: ``num_envs`` copies stepped with numpy.
- One module per registered family with its builder (``*_world``): :mod:`.random_low_rank`,
  :mod:`.gridworld`, :mod:`.graph`, :mod:`.chain`, :mod:`.contextual_bandit`; :mod:`.world`
  holds what they share.
- :mod:`.registration`: the factories Gymnasium calls and the registration of the five ids.
"""

from .chain import chain_world
from .contextual_bandit import contextual_bandit_world
from .graph import build_graph, graph_world
from .gridworld import gridworld_world
from .random_low_rank import random_low_rank_world
from .registration import ENV_IDS, register_envs
from .world import World
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
