"""Learners that fit personalized rewards from offline preferences (docs/algorithms.md).

Estimators take a :class:`~lr_mdp_env.PreferenceDataset` and the :class:`~lr_mdp_env.TabularMDP`
it came from (or a :class:`~lr_mdp_env.FeaturePreferenceDataset` of feature differences alone),
and expose each user's point estimate ``theta_hat`` and a confidence set. They work on the
world's arrays, never on Gymnasium environments.
"""

from . import planning
from .agent import Agent, PessimisticAgent, behaviour_policy
from .checker import AgentCheckError, CheckInstance, CheckReport, check_agent, draw_instances
from .confidence import (
    ComplementSeminorm,
    ConfidenceSet,
    Ellipsoid,
    LinearSeminorm,
    LowRankEllipsoid,
    Seminorm,
    theory_radius,
    wald_radius,
)
from .contextual import BilinearCoordinates, FullRankContextual, LoCoPRS, rtv_coordinates
from .contextual_sets import ContextualEllipsoid, ContextualSetParts
from .data import ComparisonData, comparison_data
from .evaluation import evaluate
from .exceptions import NotFittedError
from .estimators import IndependentMLE, OracleSubspaceMLE, PooledMLE, PShareLoRA, RewardEstimator
from .likelihood_set import LikelihoodRatioSet, finite_sample_likelihood_threshold
from .factorized import FactoredFit, fit_factored, spectral_start
from .logistic import ConvergenceWarning, LogisticFit, fit_logistic
from .metrics import coverage, estimation_report, preference_accuracy, reward_errors, subspace_distance
from .registry import make, register, registered
from .subspace_error import SubspaceErrorSet
from .tuning import DEFAULT_RIDGE_GRID, select_ridge

__all__ = [
    "Agent",
    "AgentCheckError",
    "CheckInstance",
    "CheckReport",
    "PessimisticAgent",
    "behaviour_policy",
    "check_agent",
    "draw_instances",
    "evaluate",
    "make",
    "planning",
    "register",
    "registered",
    "BilinearCoordinates",
    "ComparisonData",
    "ComplementSeminorm",
    "ConfidenceSet",
    "ConvergenceWarning",
    "DEFAULT_RIDGE_GRID",
    "ContextualEllipsoid",
    "ContextualSetParts",
    "Ellipsoid",
    "FactoredFit",
    "FullRankContextual",
    "IndependentMLE",
    "LoCoPRS",
    "LikelihoodRatioSet",
    "LinearSeminorm",
    "LowRankEllipsoid",
    "LogisticFit",
    "NotFittedError",
    "OracleSubspaceMLE",
    "PShareLoRA",
    "PooledMLE",
    "RewardEstimator",
    "Seminorm",
    "SubspaceErrorSet",
    "comparison_data",
    "coverage",
    "estimation_report",
    "fit_factored",
    "finite_sample_likelihood_threshold",
    "fit_logistic",
    "preference_accuracy",
    "reward_errors",
    "rtv_coordinates",
    "select_ridge",
    "spectral_start",
    "subspace_distance",
    "theory_radius",
    "wald_radius",
]
