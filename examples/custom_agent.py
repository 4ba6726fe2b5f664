"""Plug your own agent into lr-mdp-env: register it, then evaluate it beside the built-ins.

An agent needs two methods: ``fit(dataset, mdp)`` returning itself, and ``policy(user)``
returning an ``(H, S, A)`` Markov policy. This one scores each ``(s, a)`` by how often
trajectories that visit it win their comparison (a per-user Borda count, no model of the
noise) and plans greedily on that score with the library's backward induction.

Before comparing it, :func:`agents.check_agent` fits it on small drawn instances and checks the
protocol, its policies, that it leaves the data untouched, that it is deterministic and that it
refuses data of the wrong sizes (it raises :class:`agents.AgentCheckError` naming the property
that fails).

Run: ``python examples/custom_agent.py``
"""

import numpy as np

import agents
import lr_mdp_env


class BordaAgent:
    """Greedy planning on per-user win counts of the visited state-action pairs."""

    def __init__(self, smoothing: float = 1.0) -> None:
        self.smoothing = smoothing

    def fit(self, dataset: lr_mdp_env.PreferenceDataset, mdp: lr_mdp_env.TabularMDP) -> "BordaAgent":
        # z = psi(tau1) - psi(tau0); (2 y - 1) z counts the winner's visits positively.
        signed = (2 * dataset.labels - 1)[:, None] * dataset.feature_differences(mdp)
        scores = np.zeros((dataset.n_users, mdp.n_features))
        np.add.at(scores, dataset.users, signed)
        scores /= dataset.pairs_per_user()[:, None] + self.smoothing
        self._policies, _ = lr_mdp_env.backward_induction(mdp, mdp.reward(scores))
        return self

    def policy(self, user: int) -> np.ndarray:
        return self._policies[user]


def main() -> None:
    agents.register("borda", BordaAgent)
    print(agents.check_agent("borda"), end="\n\n")

    mdp = lr_mdp_env.random_mdp(n_states=15, n_actions=3, horizon=8, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, n_users=20, rank=2, condition_number=2.0,
                                          mdp=mdp, scale=2.0, seed=1)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, n_pairs_per_user=100, seed=2)

    contenders = {
        "borda (custom)": agents.make("borda"),
        "pooled": agents.make("pooled", pessimism="none"),
        "independent": agents.make("independent", pessimism="none"),
        "p-sharelora": agents.make("p-sharelora", rank=2, pessimism="none"),
        "p-sharelora, exact pessimism": agents.make("p-sharelora", rank=2, pessimism="exact"),
    }
    print(f"{rewards.n_users} users, rank {rewards.rank}, {dataset.pairs_per_user()[0]} comparisons each; "
          "exact sub-optimality J_i(pi*_i) - J_i(pi_hat_i):")
    print(f"{'agent':32s} {'mean':>8s} {'median':>8s} {'worst':>8s}")
    for name, agent in contenders.items():
        report = agents.evaluate(agent.fit(dataset, mdp), mdp, rewards)
        gaps = report["suboptimality"]
        print(f"{name:32s} {gaps.mean():8.3f} {gaps.median():8.3f} {gaps.max():8.3f}")


if __name__ == "__main__":
    main()
