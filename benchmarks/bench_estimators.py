"""Fit time of every estimator, and P-ShareLoRA against per-user scikit-learn fits.

Setting (the one of the learning benchmark): one-hot features of a 100-state, 5-action MDP,
d = 500, N = 100 users, n = 200 comparisons each, rank r = 5. Every estimator uses the fixed
ridge lambda = 1 (the ridge-selection rule would multiply every time by the grid size); the
contextual estimators get d_x = 10 contexts. The peer: scikit-learn's ``LogisticRegression``
(L2 penalty ``C = 1 / lambda``, no intercept, tol 1e-6) fitted to each user's comparisons in the
full dimension d.

Run: ``python benchmarks/bench_estimators.py`` (needs ``pip install scikit-learn``).
"""

from __future__ import annotations

import warnings

import numpy as np
from _timing import best_time
from sklearn.linear_model import LogisticRegression

import agents
import lr_mdp_env

N_STATES, N_ACTIONS, HORIZON = 100, 5, 20
N_USERS, PAIRS, RANK, RIDGE = 100, 200, 5, 1.0


def main() -> None:
    mdp = lr_mdp_env.random_mdp(N_STATES, N_ACTIONS, HORIZON, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, N_USERS, RANK, condition_number=2.0, mdp=mdp,
                                          scale=3.0, seed=1)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, PAIRS, seed=2)
    contextual = lr_mdp_env.contextual_rewards(mdp.n_features, 10, RANK, n_users=N_USERS, mdp=mdp, scale=3.0, seed=3)
    contextual_dataset = lr_mdp_env.collect_preferences(mdp, contextual, PAIRS, seed=4)
    estimators = {
        "pooled": (lambda: agents.PooledMLE(ridge=RIDGE), dataset),
        "independent": (lambda: agents.IndependentMLE(ridge=RIDGE), dataset),
        "oracle-subspace": (lambda: agents.OracleSubspaceMLE(rewards.subspace, ridge=RIDGE), dataset),
        "p-sharelora": (lambda: agents.PShareLoRA(RANK, ridge=RIDGE), dataset),
        "loco-prs": (lambda: agents.LoCoPRS(RANK, ridge=RIDGE), contextual_dataset),
    }

    def with_sets(make, data):
        estimator = make().fit(data, mdp)
        for user in range(N_USERS):
            estimator.confidence_set(user)
        return estimator

    print(f"estimator fits, d={mdp.n_features} N={N_USERS} n={PAIRS} per user r={RANK}, ridge={RIDGE} "
          "(all users' confidence sets included)")
    times = {}
    for name, (make, data) in estimators.items():
        times[name] = best_time(lambda: with_sets(make, data), 2)
        print(f"  {name:16s} {times[name]:8.3f} s")

    z = dataset.feature_differences(mdp)
    labels = dataset.labels.astype(int)

    def sklearn_independent() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for user in range(N_USERS):
                rows = dataset.users == user
                LogisticRegression(C=1.0 / RIDGE, fit_intercept=False, tol=1e-6, max_iter=1000).fit(z[rows], labels[rows])

    peer = best_time(sklearn_independent, 2)
    print(f"  scikit-learn LogisticRegression, {N_USERS} per-user fits {peer:8.3f} s")
    print(f"  P-ShareLoRA / scikit-learn independent: {times['p-sharelora'] / peer:.2f}  (target <= 1)")


if __name__ == "__main__":
    main()
