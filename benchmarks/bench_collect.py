"""Vectorised preference collection against stepping the registered environment in Python.

Setting: S=100, A=5, H=20, uniform behaviour. ``collect_preferences`` draws every trajectory of
every user at once; the peer way is a Python loop over ``env.step`` of
``gym.make("lr_mdp_env/RandomLowRank-v0", ...)`` for the same number of steps (the episodes'
preference labels are not even computed on that side). Prints trajectory steps per second of
both and the ratio (target: >= 100x).

Run: ``python benchmarks/bench_collect.py``
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from _timing import best_time

import lr_mdp_env

N_STATES, N_ACTIONS, HORIZON = 100, 5, 20
N_USERS, PAIRS_PER_USER = 10, 2_000


def main() -> None:
    env = gym.make(
        "lr_mdp_env/RandomLowRank-v0",
        n_states=N_STATES, n_actions=N_ACTIONS, horizon=HORIZON, n_users=N_USERS, rank=3, model_seed=0,
    )
    mdp = env.unwrapped.params.mdp
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, N_USERS, 3, mdp=mdp, seed=0)
    n_steps = 2 * N_USERS * PAIRS_PER_USER * HORIZON

    # The first call also builds the MDP's transition table (kept for later calls on the same
    # MDP); it is reported on its own, the best of the following calls is the comparison.
    first = best_time(lambda: lr_mdp_env.collect_preferences(mdp, rewards, PAIRS_PER_USER, seed=1), 1)
    vectorised = best_time(lambda: lr_mdp_env.collect_preferences(mdp, rewards, PAIRS_PER_USER, seed=1), 3)

    def python_loop() -> None:
        actions = np.random.default_rng(2).integers(N_ACTIONS, size=n_steps)
        env.reset(seed=3)
        done = False
        for action in actions.tolist():
            if done:
                env.reset()
            _, _, done, _, _ = env.step(action)

    loop = best_time(python_loop, 1)
    print(f"trajectory sampling, S={N_STATES} A={N_ACTIONS} H={HORIZON}, {n_steps:,} steps "
          f"({N_USERS} users x {PAIRS_PER_USER} pairs x 2 trajectories)")
    print(f"  collect_preferences (labels included) {n_steps / vectorised:14,.0f} steps/s")
    print(f"    its first call on this MDP           {n_steps / first:14,.0f} steps/s")
    print(f"  env.step in a Python loop             {n_steps / loop:14,.0f} steps/s")
    print(f"  ratio {loop / vectorised:.0f}x  (target >= 100x)")


if __name__ == "__main__":
    main()
