"""``lr_mdp_env/RandomLowRank-v0``: a Dirichlet random MDP whose users share a rank-``r`` subspace."""

from __future__ import annotations

from ..families import random_mdp
from ..rewards import low_rank_rewards
from .world import World, model_seeds


def random_low_rank_world(
    n_states: int = 10,
    n_actions: int = 3,
    horizon: int = 5,
    *,
    n_users: int = 8,
    rank: int = 2,
    condition_number: float = 2.0,
    tail: float = 0.0,
    features: str = "one_hot",
    n_features: int | None = None,
    concentration: float = 1.0,
    stationary: bool = True,
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """Random Dirichlet MDP with rank-``r`` users (``lr_mdp_env/RandomLowRank-v0``).

    Parameters
    ----------
    n_states, n_actions, horizon : int
    n_users, rank : int
        ``N`` users whose parameters span a ``rank``-dimensional subspace.
    condition_number : float, default 2.0
        ``sigma_1 / sigma_r`` of the users' matrix (preference diversity).
    tail : float, default 0.0
        Tail energy outside the rank (0: exactly low rank).
    features : {"one_hot", "one_hot_time", "dense"}, default "one_hot"
    n_features : int, optional
        ``d`` for ``features="dense"``.
    concentration : float, default 1.0
        Dirichlet parameter of the transition rows.
    stationary : bool, default True
    scale : float, default 1.0
        Typical return difference of two uniform trajectories.
    model_seed : int, default 0
        Seed of the model (transitions, features, users); reset seeds are separate.

    Returns
    -------
    World
    """
    mdp_seed, reward_seed = model_seeds(model_seed, 2)
    mdp = random_mdp(
        n_states, n_actions, horizon, stationary=stationary, concentration=concentration,
        features=features, n_features=n_features, seed=mdp_seed,
    )
    rewards = low_rank_rewards(
        mdp.n_features, n_users, rank, condition_number=condition_number, tail=tail, mdp=mdp,
        scale=scale, seed=reward_seed,
    )
    return World(mdp, rewards)


__all__ = ["random_low_rank_world"]
