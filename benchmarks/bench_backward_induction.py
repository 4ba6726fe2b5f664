"""Batched backward induction against per-user calls and against its unavoidable matrix products.

Setting: S=200, A=10, H=20, dense stage-dependent transitions, 100 users. Prints
- batched (one pass for all users) vs 100 single-user calls (target: >= 5x faster);
- batched vs the bare matrix products ``V (N, S) @ P_h^T (S, S A)`` for every step, timed alone in
  the same run (target: within 1.5x; this is the machine's floor).

Run: ``python benchmarks/bench_backward_induction.py``
"""

from __future__ import annotations

import numpy as np
from _timing import best_time

import lr_mdp_env

N_STATES, N_ACTIONS, HORIZON, N_USERS = 200, 10, 20, 100


def main() -> None:
    mdp = lr_mdp_env.random_mdp(N_STATES, N_ACTIONS, HORIZON, stationary=False, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, N_USERS, 5, seed=1)
    table = rewards.reward_table(mdp)
    batched = best_time(lambda: lr_mdp_env.backward_induction(mdp, table))
    single = best_time(lambda: [lr_mdp_env.backward_induction(mdp, table[i]) for i in range(N_USERS)], 3)

    matrices = [np.ascontiguousarray(mdp.transitions[h]).reshape(-1, N_STATES) for h in range(HORIZON)]
    values = np.random.default_rng(2).standard_normal((N_USERS, N_STATES))

    def bare_products() -> None:
        for matrix in matrices:
            values @ matrix.T

    floor = best_time(bare_products)
    policy, _ = lr_mdp_env.backward_induction(mdp, table)
    singles = np.stack([lr_mdp_env.backward_induction(mdp, table[i])[0] for i in range(N_USERS)])
    assert np.array_equal(policy, singles), "batched and single-user policies differ"

    print(f"backward induction, S={N_STATES} A={N_ACTIONS} H={HORIZON} dense transitions, N={N_USERS} users")
    print(f"  batched, one pass          {batched * 1e3:9.2f} ms")
    print(f"  {N_USERS} single-user calls     {single * 1e3:9.2f} ms   speed-up {single / batched:6.1f}x  (target >= 5x)")
    print(f"  bare matrix products alone {floor * 1e3:9.2f} ms   batched / floor {batched / floor:5.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
