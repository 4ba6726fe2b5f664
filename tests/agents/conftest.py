"""Fixtures shared by the agents' tests."""

from __future__ import annotations

import pytest

from lr_mdp_env import collect_preferences, low_rank_rewards, random_mdp


@pytest.fixture(scope="session")
def identified_world():
    """A small world whose shared subspace the data identify: 30 users of rank 2, 40 pairs each,
    on a 4-state, 3-action MDP with horizon 3."""
    mdp = random_mdp(4, 3, 3, seed=2)
    rewards = low_rank_rewards(mdp.n_features, 30, 2, mdp=mdp, scale=2.0, seed=3)
    dataset = collect_preferences(mdp, rewards, 40, seed=4)
    return mdp, rewards, dataset
