"""``lr_mdp_env/Chain-v0``: a combination lock whose far end every user wants."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .._validation import check_int, check_real, frozen
from ..dynamic_programming import backward_induction
from ..families import advancing_actions, chain_mdp
from ..rewards import low_rank_rewards
from .world import World, check_one_hot, model_seeds, theta_of_tables


def _end_seeking(policy: np.ndarray, advancing: np.ndarray, horizon: int) -> bool:
    """Whether every policy of the batch advances wherever the end is still ahead.

    In state ``s < S-1`` at step ``h`` the end can still be reached when ``h + (S-1-s) <= H-1``;
    in the end state, staying matters while a step is left (``h <= H-2``).
    """
    n_states = advancing.size
    steps = np.arange(horizon)[:, None]
    states = np.arange(n_states)[None, :]
    ahead = np.where(states < n_states - 1, steps + (n_states - 1 - states) <= horizon - 1, steps <= horizon - 2)
    chosen = policy[:, :, np.arange(n_states), advancing]  # (N, H, S)
    return bool(np.all(chosen[:, ahead] == 1.0))


def chain_world(
    n_states: int = 6,
    horizon: int = 10,
    *,
    n_actions: int = 2,
    slip: float = 0.0,
    n_users: int = 8,
    rank: int = 2,
    condition_number: float = 2.0,
    tail: float = 0.0,
    distractor: float = 0.0,
    features: str = "one_hot",
    scale: float = 1.0,
    model_seed: int = 0,
) -> World:
    """A combination-lock chain whose good end every user wants (``lr_mdp_env/Chain-v0``).

    The MDP is :func:`lr_mdp_env.chain_mdp`: start in state 0, one advancing action per state,
    every other action falls back to state 0, so the uniform policy reaches the end with
    probability about ``A^-(S-1)``. Each user's reward is

    - a personal low-rank part (``low_rank_rewards`` with ``mdp=``, typical return difference
      ``scale``), plus
    - the shared base ``Theta_0`` (passed as ``base=``): a bonus ``b`` in the end state for
      every action, and ``distractor`` in state 0 for every non-advancing action (a nearby,
      well-covered reward that a greedy estimate may prefer to the unseen end).

    ``b`` is the smallest ``M 2^j`` (``M`` the largest absolute personal-plus-distractor reward)
    for which every user's optimal policy advances wherever the end is still reachable and then
    stays there; it is checked by backward induction, so the claim holds for the returned model.
    Uniformly collected data rarely show the end: the setting where pessimism matters.

    Parameters
    ----------
    n_states : int, default 6
        Chain length ``S >= 2``.
    horizon : int, default 10
        ``H >= S`` so that the end can be reached.
    n_actions : int, default 2
    slip : float in [0, 0.5), default 0.0
        Probability of the other outcome (advance instead of fall back, and vice versa).
    n_users, rank, condition_number, tail, scale, model_seed
        As in :func:`random_low_rank_world`.
    distractor : float, default 0.0
        Base reward of the non-advancing actions in state 0.
    features : {"one_hot", "one_hot_time"}, default "one_hot"

    Returns
    -------
    World
    """
    features = check_one_hot(features, "Chain")
    n_states = check_int("n_states", n_states, minimum=2)
    horizon = check_int("horizon", horizon, minimum=n_states)
    slip = check_real("slip", slip, 0.0)
    if not slip < 0.5:
        raise ValueError(f"slip must be below 0.5 (so the advancing action moves forward), got {slip}")
    distractor = check_real("distractor", distractor)
    mdp_seed, reward_seed = model_seeds(model_seed, 2)
    mdp, advancing = chain_mdp(
        n_states, horizon, n_actions=n_actions, slip=slip, features=features, seed=mdp_seed,
        return_advancing=True,
    )
    personal = low_rank_rewards(
        mdp.n_features, n_users, rank, condition_number=condition_number, tail=tail, mdp=mdp,
        scale=scale, seed=reward_seed,
    )
    personal_table = personal.reward_table(mdp)
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    lure = np.zeros(shape)
    lure[:, 0, :] = distractor
    lure[:, 0, advancing[0]] = 0.0
    end = np.zeros(shape)
    end[:, -1, :] = 1.0
    bonus = float(np.abs(personal_table).max() + abs(distractor))
    for _ in range(64):
        policy, _ = backward_induction(mdp, personal_table + lure + bonus * end)
        if _end_seeking(policy, advancing, horizon):
            break
        bonus *= 2.0
    else:  # pragma: no cover - the advantage of advancing grows linearly with the bonus
        raise RuntimeError("no end bonus made every user's optimal policy reach the end of the chain")
    # The base is not rescaled (low_rank_rewards adds it as given), so the users drawn above
    # only gain the shared Theta_0.
    base = theta_of_tables(mdp, (lure + bonus * end)[None])
    rewards = replace(personal, base=frozen(np.repeat(base, n_users, axis=1)))
    return World(mdp, rewards)


__all__ = ["chain_world"]
