"""Fit time of every estimator, and P-ShareLoRA against per-user scikit-learn fits.

Setting (the one of the learning benchmark): one-hot features of a 100-state, 5-action MDP,
d = 500, N = 100 users, n = 200 comparisons each, rank r = 5. Every estimator uses the fixed
ridge lambda = 1 (the ridge-selection rule would multiply every time by the grid size); the
contextual estimators get d_x = 10 contexts. The peer: scikit-learn's ``LogisticRegression``
(L2 penalty ``C = 1 / lambda``, no intercept, tol 1e-6) fitted to each user's comparisons in the
full dimension d, from features computed beforehand. For reference the script also times the peer
building its features from the dataset inside the timing (as the estimators do), with its
liblinear solver, and doing what the estimators do besides the fit: a Wald set per user (the
Fisher matrix at the fit and its Cholesky factor). P-ShareLoRA is compared with its Wald sets in
``U_hat``'s span (``subspace_error="ignore"``), the counterpart of the peer's; the time of its
default sets, which add the bootstrap of the subspace error (and its identification check), is
printed beside it.

Run: ``python benchmarks/bench_estimators.py`` (needs ``pip install scikit-learn``). Both sides
run on one BLAS thread by default: multithreaded OpenBLAS stalls on these small products when
another process shares the cores, which makes the ratio depend on the machine's load;
``--blas-threads 0`` lifts the limit.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Callable

import numpy as np
from _timing import best_time, paired_ratios
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
        # Against the peer: the fit and each user's Wald set in U_hat's span (what the peer's Wald
        # sets are); the default sets add the subspace error's bootstrap, timed on the next line.
        "p-sharelora": (lambda: agents.PShareLoRA(RANK, ridge=RIDGE, subspace_error="ignore"), dataset),
        "p-sharelora, default sets": (lambda: agents.PShareLoRA(RANK, ridge=RIDGE), dataset),
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
        # Best of several runs for the fast fits (a 2-core machine's noise is ~10% per run).
        repeats = 7 if name in ("p-sharelora", "oracle-subspace") else 2
        times[name] = best_time(lambda name=name, make=make, data=data: with_sets(name, make, data), repeats)
        # The stationarity certificate of every fit inside the estimator (relative gradient norm).
        certificates = ", ".join(f"{fit} {facts['relative_gradient_norm']:.1e}"
                                 for fit, facts in fitted[name].diagnostics.items())
        print(f"  {name:26s} {times[name]:8.3f} s   relative gradient norms: {certificates}")

    z = dataset.feature_differences(mdp)
    labels = dataset.labels.astype(int)
    user_rows = [dataset.users == user for user in range(N_USERS)]

    def sklearn_independent(with_sets: bool = False, solver: str = "lbfgs", features=None) -> None:
        features = z if features is None else features()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for rows in user_rows:
                fit = LogisticRegression(C=1.0 / RIDGE, fit_intercept=False, tol=1e-6, max_iter=1000,
                                         solver=solver).fit(features[rows], labels[rows])
                if with_sets:  # what an estimator's Wald set needs: the Fisher matrix and its factor
                    slope = fit.predict_proba(features[rows])[:, 1]
                    slope = slope * (1.0 - slope)
                    fisher = (features[rows].T * slope) @ features[rows] + RIDGE * np.eye(features.shape[1])
                    np.linalg.cholesky(fisher)

    # P-ShareLoRA and the peer alternate, round by round (see paired_ratios).
    def sharelora() -> None:
        make, data = estimators["p-sharelora"]
        with_sets("p-sharelora", make, data)

    def report(name: str, peer: Callable[[], None], rounds: int, target: str = "") -> None:
        ours, theirs, ratios = paired_ratios(sharelora, peer, rounds)
        print(f"  scikit-learn per-user fits, {name}: {theirs:.3f} s (P-ShareLoRA {ours:.3f} s); P-ShareLoRA / "
              f"scikit-learn: median {np.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} over "
              f"{rounds} rounds{target}")

    report("LogisticRegression (lbfgs)", sklearn_independent, 9, "  (target <= 1)")
    print("  for reference:")
    # starting, like the estimators, from the dataset: the features z_j built inside the timing
    report("features built from the dataset",
           lambda: sklearn_independent(features=lambda: dataset.feature_differences(mdp)), 5)
    # its fastest solver for these problems (trust-region Newton, its own stopping rule)
    report("liblinear solver", lambda: sklearn_independent(solver="liblinear"), 5)
    # doing the work the estimators do besides the fit: a Wald set per user
    report("with Fisher matrices and their Cholesky factors", lambda: sklearn_independent(with_sets=True), 5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads of both sides (0: no limit)")
    threads = parser.parse_args().blas_threads
    if threads == 0:
        main()
    else:
        with threadpool_limits(limits=threads, user_api="blas"):
            main()
