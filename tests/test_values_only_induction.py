"""``backward_induction(..., policy=False)``: the values of the full recursion, without the policy."""

from __future__ import annotations

import numpy as np
import pytest

from lr_mdp_env import backward_induction
from lr_mdp_env.families import random_mdp


@pytest.mark.parametrize("radius", [None, 0.3])
def test_values_only_equal_the_values_of_the_policy_path(radius: float | None) -> None:
    mdp = random_mdp(n_states=6, n_actions=3, horizon=4, seed=3)
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(7, mdp.horizon, mdp.n_states, mdp.n_actions))
    rewards[2] = np.round(rewards[2])  # exact ties: the values do not depend on the tie rule
    _, values = backward_induction(mdp, rewards, transition_radius=radius)
    only = backward_induction(mdp, rewards, transition_radius=radius, policy=False)
    np.testing.assert_array_equal(only, values)
    _, single = backward_induction(mdp, rewards[4], transition_radius=radius)
    np.testing.assert_array_equal(backward_induction(mdp, rewards[4], transition_radius=radius, policy=False), single)


def test_values_only_flag_must_be_a_bool() -> None:
    mdp = random_mdp(n_states=2, n_actions=2, horizon=2, seed=0)
    with pytest.raises(TypeError, match="policy"):
        backward_induction(mdp, np.zeros((2, 2, 2)), policy="no")
