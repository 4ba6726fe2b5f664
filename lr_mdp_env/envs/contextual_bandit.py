"""``lr_mdp_env/ContextualBandit-v0``: LoCo-RLHF's contextual bandit."""

from __future__ import annotations

import numpy as np

from .._validation import check_int
from ..mdp import TabularMDP, dense_features
from ..rewards import contextual_rewards
from .world import World, model_seeds


def contextual_bandit_world(
    n_queries: int = 10,
    n_answers: int = 4,
    *,
    n_features: int = 8,
    context_dim: int = 4,
    rank: int = 2,
    n_users: int = 8,
    condition_number: float = 2.0,
    shift: float = 0.0,
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """LoCo-RLHF's contextual bandit (``lr_mdp_env/ContextualBandit-v0``).

    ``H = 1``: a query (state) is drawn uniformly, the agent gives an answer (action) and the
    episode ends. Features ``phi(query, answer)`` are dense with norm at most 1; user ``i`` has
    context ``x_i`` and reward ``x_i^T Theta_c phi`` (:func:`lr_mdp_env.contextual_rewards`).
    The query does not change (the final observation repeats it).

    Parameters
    ----------
    n_queries, n_answers : int
    n_features : int, default 8
        ``d``.
    context_dim : int, default 4
        ``d_x``.
    rank : int, default 2
        Rank of ``Theta_c``.
    n_users : int, default 8
        Users (contexts) drawn from the collection distribution.
    condition_number : float, default 2.0
    shift : float, default 0.0
        Context shift of the evaluation distribution (``ContextualRewards.sample_contexts``).
    scale, model_seed
        As in :func:`random_low_rank_world`.

    Returns
    -------
    World
    """
    n_queries = check_int("n_queries", n_queries, minimum=1)
    n_answers = check_int("n_answers", n_answers, minimum=1)
    feature_seed, reward_seed = model_seeds(model_seed, 2)
    features = dense_features(n_queries, n_answers, n_features, seed=feature_seed)
    transitions = np.broadcast_to(np.eye(n_queries)[:, None, :], (n_queries, n_answers, n_queries))
    initial = np.full(n_queries, 1.0 / n_queries)
    mdp = TabularMDP(transitions, initial, horizon=1, features=features)
    rewards = contextual_rewards(
        n_features, context_dim, rank, n_users=n_users, condition_number=condition_number,
        shift=shift, mdp=mdp, scale=scale, seed=reward_seed,
    )
    return World(mdp, rewards)


__all__ = ["contextual_bandit_world"]
