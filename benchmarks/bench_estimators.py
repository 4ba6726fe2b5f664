"""Fit time of every estimator, and P-ShareLoRA against per-user scikit-learn fits.

Setting (the one of the learning benchmark): one-hot features of a 100-state, 5-action MDP,
d = 500, N = 100 users, n = 200 comparisons each, rank r = 5. Every estimator uses the fixed
ridge lambda = 1 (the ridge-selection rule would multiply every time by the grid size); the
contextual estimators get d_x = 10 contexts. The peer: scikit-learn's ``LogisticRegression``
(L2 penalty ``C = 1 / lambda``, no intercept, tol 1e-6) fitted to each user's comparisons in the
full dimension d. For reference the script also times the peer doing what the estimators do
besides: a Wald set per user (the Fisher matrix at the fit and its Cholesky factor).

Run: ``python benchmarks/bench_estimators.py`` (needs ``pip install scikit-learn``). Both sides
run on one BLAS thread by default: multithreaded OpenBLAS stalls on these small products when
another process shares the cores, which makes the ratio depend on the machine's load;
``--blas-threads 0`` lifts the limit.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from _timing import best_time
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

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

    fitted = {}

    def with_sets(name, make, data):
        estimator = make().fit(data, mdp)
        for user in range(N_USERS):
            estimator.confidence_set(user)
        fitted[name] = estimator

    print(f"estimator fits, d={mdp.n_features} N={N_USERS} n={PAIRS} per user r={RANK}, ridge={RIDGE} "
          "(all users' confidence sets included)")
    times = {}
    for name, (make, data) in estimators.items():
        times[name] = best_time(lambda name=name, make=make, data=data: with_sets(name, make, data), 2)
        # The stationarity certificate of every fit inside the estimator (relative gradient norm).
        certificates = ", ".join(f"{fit} {facts['relative_gradient_norm']:.1e}"
                                 for fit, facts in fitted[name].diagnostics.items())
        print(f"  {name:16s} {times[name]:8.3f} s   relative gradient norms: {certificates}")

    z = dataset.feature_differences(mdp)
    labels = dataset.labels.astype(int)

    def sklearn_independent(with_sets: bool = False) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for user in range(N_USERS):
                rows = dataset.users == user
                fit = LogisticRegression(C=1.0 / RIDGE, fit_intercept=False, tol=1e-6, max_iter=1000).fit(
                    z[rows], labels[rows])
                if with_sets:  # what an estimator's Wald set needs: the Fisher matrix and its factor
                    slope = fit.predict_proba(z[rows])[:, 1]
                    slope = slope * (1.0 - slope)
                    fisher = (z[rows].T * slope) @ z[rows] + RIDGE * np.eye(z.shape[1])
                    np.linalg.cholesky(fisher)

    peer = best_time(sklearn_independent, 2)
    print(f"  scikit-learn LogisticRegression, {N_USERS} per-user fits {peer:8.3f} s")
    print(f"  P-ShareLoRA / scikit-learn independent: {times['p-sharelora'] / peer:.2f}  (target <= 1)")
    # For reference: the peer doing the work the estimators do, a confidence set per user.
    peer_with_sets = best_time(lambda: sklearn_independent(with_sets=True), 2)
    print(f"  scikit-learn per-user fits with Fisher matrices and their Cholesky factors {peer_with_sets:8.3f} s")
    print(f"  P-ShareLoRA / scikit-learn independent with sets: {times['p-sharelora'] / peer_with_sets:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads of both sides (0: no limit)")
    threads = parser.parse_args().blas_threads
    if threads == 0:
        main()
    else:
        with threadpool_limits(limits=threads, user_api="blas"):
            main()
