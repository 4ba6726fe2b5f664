"""lr-mdp-env: tabular MDPs with low-rank personalized rewards and simulated preference feedback.

The world of docs/model.md: :class:`TabularMDP` and its families, users' low-rank reward
structures, the Bradley-Terry teacher, offline preference datasets, exact dynamic programming and
the Gymnasium environments (registered on import under the ``lr_mdp_env`` namespace).
Pictures: :mod:`lr_mdp_env.plotting` (figures of rewards, policies, occupancy measures and users
in the shared subspace) placed by :mod:`lr_mdp_env.layouts`, which the environments' frames use
too.
"""

from .collection import collect_preferences, epsilon_optimal_policies, user_parameters
from .dataset import FeaturePreferenceDataset, PreferenceDataset
from .dynamic_programming import (
    backward_induction,
    evaluate_policy,
    expected_features,
    occupancy,
    return_moments,
    uniform_policy,
)
from .families import chain_mdp, graph_mdp, gridworld_graph, gridworld_mdp, random_mdp
from .mdp import TabularMDP, dense_features, one_hot_features, one_hot_time_features
from .rewards import ContextualRewards, LowRankRewards, contextual_rewards, low_rank_rewards
from .sampling import sample_trajectories
from .subspace import principal_angle_distance
from .teacher import Teacher
from . import theory

__version__ = "0.1.0"

__all__ = [
    "ContextualRewards",
    "FeaturePreferenceDataset",
    "LowRankRewards",
    "PreferenceDataset",
    "TabularMDP",
    "Teacher",
    "backward_induction",
    "chain_mdp",
    "collect_preferences",
    "contextual_rewards",
    "dense_features",
    "epsilon_optimal_policies",
    "evaluate_policy",
    "expected_features",
    "graph_mdp",
    "gridworld_graph",
    "gridworld_mdp",
    "low_rank_rewards",
    "occupancy",
    "one_hot_features",
    "one_hot_time_features",
    "principal_angle_distance",
    "random_mdp",
    "return_moments",
    "sample_trajectories",
    "theory",
    "uniform_policy",
    "user_parameters",
]

# Gymnasium environments: importing the package registers the ``lr_mdp_env/...`` ids.
from .envs import (  # noqa: E402
    PreferenceEnvParams,
    PreferenceEnvState,
    PreferenceFeedback,
    TabularPreferenceEnv,
    TabularPreferenceVectorEnv,
    register_envs,
)

register_envs()

__all__ += [
    "PreferenceEnvParams",
    "PreferenceEnvState",
    "PreferenceFeedback",
    "TabularPreferenceEnv",
    "TabularPreferenceVectorEnv",
]
