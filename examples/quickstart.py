"""Quickstart: a random MDP, five users with rank-2 rewards, and their preference data.

Run: ``python examples/quickstart.py``
"""

import numpy as np

import lr_mdp_env


def main() -> None:
    mdp = lr_mdp_env.random_mdp(n_states=20, n_actions=4, horizon=10, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(
        mdp.n_features, n_users=5, rank=2, condition_number=3.0, mdp=mdp, seed=1
    )
    print(mdp)
    print(
        f"users: N={rewards.n_users}, d={rewards.n_features}, rank r={rewards.rank}, "
        f"singular values {np.round(rewards.singular_values, 3)}, "
        f"condition number {rewards.condition_number:.2f}"
    )

    teacher = lr_mdp_env.Teacher(beta=1.0)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, n_pairs_per_user=200, teacher=teacher, seed=2)
    print(f"\ncollected {dataset.n_pairs} labelled pairs ({dataset.pairs_per_user().tolist()} per user)")
    frame = dataset.to_pandas()
    print("first pairs: user, label y (1 = second trajectory preferred), Pr(y = 1)")
    print(frame[["user", "label", "probability"]].head(5).to_string(index=False))
    print(f"mean |Pr(y=1) - 1/2| = {np.mean(np.abs(dataset.probabilities - 0.5)):.3f} "
          "(0: coin flips, 0.5: deterministic labels)")

    reward_table = rewards.reward_table(mdp)
    optimal_policies, _ = lr_mdp_env.backward_induction(mdp, reward_table)
    optimal = lr_mdp_env.evaluate_policy(mdp, optimal_policies, reward_table)
    uniform = lr_mdp_env.evaluate_policy(mdp, lr_mdp_env.uniform_policy(mdp), reward_table)
    # How much each user loses by following another user's optimal policy.
    cross = np.array([lr_mdp_env.evaluate_policy(mdp, optimal_policies[j], reward_table) for j in range(rewards.n_users)])
    print("\nuser  optimal value  uniform policy  best other user's policy")
    for user in range(rewards.n_users):
        others = np.delete(cross[:, user], user)
        print(f"{user:4d}  {optimal[user]:13.3f}  {uniform[user]:14.3f}  {others.max():24.3f}")


if __name__ == "__main__":
    main()
