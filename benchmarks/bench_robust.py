"""Exact pessimism at scale: time against the set's dimension k and the number of users N.

Table (``--table``): a random MDP with S=50, A=10, H=10 and one-hot (s, a) features (d = 500).
The sets are those of the ``independent`` agent (ridge 1, Wald radius at delta = 0.1) fitted on
20 users with 3000 uniform comparisons each, k = S A - 1 = 499; a set of dimension k < 499 keeps
the first k coordinates of each set (its matrix block, centre and basis columns) with the Wald
radius of k coordinates. N users cycle through the 20 sets with their centres perturbed, so
every problem is distinct. Each row times ``robust_optimize`` of all N users in one call
(``tol=1e-6``) and reports its processor time (on a machine shared with other jobs the wall
time grows with their load, the processor time much less), the method ``"auto"`` chose, the
median number of iterations, the time per user and iteration, the peak memory of the call
(growth of the process's peak resident size; for N <= 10, or where /proc is not available,
tracemalloc's peak of its allocations, in a separate run), and two ratios:

- to cvxpy with Clarabel *per user*: the conic program of one user (occupancy measure, flow
  constraints, one second-order cone), timed from the model's construction to its solution,
  once per k (three times, alternating with ours, when it takes less than 3 s: the N = 1 row then
  reports the medians), against our time divided by N;
- to the rectangular planner (:func:`agents.planning.rectangular`) on the same N sets.

Every row asserts that all gaps are certified below ``tol`` and that the first user's value agrees
with Clarabel's optimum within 1e-6 relative.

Targets (``--targets small-sets | full-dimensional | both``): 1000 users with sets of dimension 5
on S=200, A=10, H=20 (the sets of the oracle-subspace estimator, a 5-dimensional subspace,
ridge 1, 200 comparisons per user), and 1000 users of the independent agent (k = 499) on the
table's MDP.

``--workers 2`` runs the blocks of users on two threads (robust_optimize's ``workers``).

``--plot PATH`` draws time against k (at each N) and against N (at each k) on log-log axes with
the fitted exponents. BLAS runs on one thread by default (``--blas-threads``): multithreaded
OpenBLAS stalls on these products when other processes share the cores.

Run: ``python benchmarks/bench_robust.py --table --targets both --plot docs/robust_scaling.png``
(needs ``pip install cvxpy clarabel``).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import warnings

import cvxpy as cp
import numpy as np
import scipy.sparse
from threadpoolctl import threadpool_limits

import agents
import lr_mdp_env
from agents import Ellipsoid, planning
from lr_mdp_env.envs import random_low_rank_world

TOL = 1e-6
FITTED_USERS, PAIRS = 20, 3000


def independent_sets(n_states=50, n_actions=10, horizon=10):
    """The MDP, 20 fitted sets of the independent agent (k = S A - 1) and their d_ref ``(d,)`` (the
    uniform behaviour policy's expected features, shared by all users)."""
    mdp, rewards = random_low_rank_world(n_states=n_states, n_actions=n_actions, horizon=horizon,
                                         n_users=FITTED_USERS, rank=5, model_seed=0)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, PAIRS, seed=1)
    agent = agents.make("independent", pessimism="exact", ridge=1.0).fit(dataset, mdp)
    sets = [agent.confidence_set(user) for user in range(FITTED_USERS)]
    return mdp, sets, np.asarray(agent.reference_features)


def truncated(sets, k, n_users, seed=0):
    """``n_users`` sets of dimension ``k``: the first k coordinates of the fitted sets, cycled,
    centres perturbed by a standard normal in the set's own metric (one radius unit / 10)."""
    rng = np.random.default_rng(seed)
    out = []
    radius = agents.wald_radius(k, 0.1)
    for user in range(n_users):
        base = sets[user % len(sets)]
        matrix = base.matrix[:k, :k]
        factor = np.linalg.cholesky(matrix)
        shift = np.linalg.solve(factor.T, rng.normal(size=k)) * 0.1 if user >= len(sets) else 0.0
        out.append(Ellipsoid(offset=base.offset, basis=base.basis[:, :k], center=base.center[:k] + shift,
                             matrix=matrix, radius=radius, factor=factor))
    return out


def conic_solve(mdp, confidence_set, reference) -> tuple[float, float]:
    """One user's occupancy-measure program by cvxpy + Clarabel: (optimum, seconds)."""
    start = time.perf_counter()
    horizon, n_states, n_actions = mdp.horizon, mdp.n_states, mdp.n_actions
    pairs = n_states * n_actions
    q = cp.Variable((horizon, pairs), nonneg=True)
    summing = scipy.sparse.kron(scipy.sparse.eye(n_states), np.ones((n_actions, 1)), format="csr")
    constraints = [q[0] @ summing == mdp.initial_distribution]
    for step in range(horizon - 1):
        constraints.append(q[step + 1] @ summing == q[step] @ mdp.transitions[step].reshape(pairs, n_states))
    features = np.asarray(mdp.features[0]).reshape(pairs, -1)
    g = features.T @ cp.sum(q, axis=0) - reference
    objective = confidence_set.theta_hat @ g - confidence_set.radius * cp.norm(confidence_set.whitening @ g)
    problem = cp.Problem(cp.Maximize(objective), constraints)
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal", problem.status
    return float(problem.value), time.perf_counter() - start


def _resident_kib(field):
    """``VmRSS`` or ``VmHWM`` (peak) of this process in KiB, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def _reset_peak():
    """Reset the process's peak resident size (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def timed(function, separate_memory=False):
    """``(result, seconds, peak bytes, processor seconds)`` of one call.

    The call is timed untraced. With ``separate_memory`` (small calls, whose memory the process
    may already hold) it is run a second time under tracemalloc for its peak allocation; otherwise
    its peak memory is the growth of the process's peak resident size over its resident size before
    the call (Linux: the peak is reset first), which costs nothing, where tracemalloc would slow
    every allocation (by about a quarter for the interior point's many small arrays); without
    /proc, the call is traced."""
    if not separate_memory and _reset_peak():
        before = _resident_kib("VmRSS")
        start, processor = time.perf_counter(), time.process_time()
        result = function()
        seconds, processor = time.perf_counter() - start, time.process_time() - processor
        return result, seconds, 1024 * max(0, _resident_kib("VmHWM") - before), processor
    if separate_memory:
        start, processor = time.perf_counter(), time.process_time()
        result = function()
        seconds, processor = time.perf_counter() - start, time.process_time() - processor
        tracemalloc.start()
        function()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return result, seconds, peak, processor
    tracemalloc.start()
    start, processor = time.perf_counter(), time.process_time()
    result = function()
    seconds, processor = time.perf_counter() - start, time.process_time() - processor
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak, processor


WORKERS = 1  # robust_optimize's workers (--workers)


def row(mdp, sets, reference, k, n_users, conic_seconds, optimum):
    with warnings.catch_warnings():
        warnings.simplefilter("error", agents.ConvergenceWarning)
        solutions, seconds, peak, processor = timed(
            lambda: planning.robust_optimize(mdp, sets, reference, tol=TOL, workers=WORKERS),
            separate_memory=n_users <= 10)
    gaps = np.array([s.gap / max(1.0, abs(s.value)) for s in solutions])
    assert np.all(gaps <= TOL), gaps.max()
    if optimum is not None:
        assert abs(solutions[0].value - optimum) <= 1e-6 * max(1.0, abs(optimum)), (solutions[0].value, optimum)
    start = time.perf_counter()
    planning.rectangular(mdp, sets, reference)
    rectangular = time.perf_counter() - start
    iterations = int(np.median([s.iterations for s in solutions]))
    per_user = seconds / n_users
    # Seconds per user and iteration: comparable across N, and across runs on a machine whose
    # load changes.
    per_step = seconds / max(1, sum(s.iterations for s in solutions))
    return dict(k=k, N=n_users, seconds=seconds, method=solutions[0].method, iterations=iterations,
                clarabel=conic_seconds / per_user, rectangular=seconds / rectangular, memory=peak / 2**20,
                per_user=per_user, per_step=per_step, processor=processor)


def print_row(r):
    print(f"| {r['k']} | {r['N']} | {r['seconds']:.2f} s | {r['processor']:.2f} s | {r['method']} | {r['iterations']} | "
          f"{1e3 * r['per_step']:.1f} ms | {r['clarabel']:.0f}x | {r['rectangular']:.0f}x | {r['memory']:.0f} MB |",
          flush=True)


def table(ks, users):
    mdp, fitted, reference = independent_sets()
    ks = [mdp.n_features - 1 if k == -1 else k for k in ks]
    print(f"exact pessimism, S={mdp.n_states} A={mdp.n_actions} H={mdp.horizon}, one-hot features "
          f"(d={mdp.n_features}), independent-agent sets, tol={TOL}")
    print("| k | N | time | processor time | method | iterations (median) | per user and iteration | "
          "vs Clarabel per user | time / rectangular | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for k in ks:
        first = truncated(fitted, k, 1)[0]
        optimum, conic_seconds = conic_solve(mdp, first, reference)
        conic_times = [conic_seconds]
        for n_users in users:
            sets = truncated(fitted, k, n_users)
            references = np.broadcast_to(reference, (n_users, mdp.n_features))
            if n_users == 1 and conic_seconds < 3.0:
                # One user takes a fraction of a second: three rounds alternating with Clarabel,
                # and the ratio of the medians, so that a change of the machine's load between the
                # two timings does not make the ratio.
                repeats = []
                for _ in range(3):
                    repeats.append(row(mdp, sets, references, k, n_users, conic_seconds, optimum))
                    if len(conic_times) < 3:
                        conic_times.append(conic_solve(mdp, first, reference)[1])
                result = sorted(repeats, key=lambda r: r["seconds"])[1]
                result["clarabel"] = float(np.median(conic_times)) / result["per_user"]
                rows.append(result)
            else:
                rows.append(row(mdp, sets, references, k, n_users, float(np.median(conic_times)), optimum))
            print_row(rows[-1])
        times = ", ".join(f"{t:.2f}" for t in conic_times)
        print(f"  (Clarabel, one user, k={k}: {times} s, optimum {optimum:.8f})", flush=True)
    return rows


def target_small_sets(n_users=1000):
    """1000 users, sets of dimension 5, S=200, A=10, H=20 (target: 60 s)."""
    mdp, rewards = random_low_rank_world(n_states=200, n_actions=10, horizon=20, n_users=n_users, rank=5, model_seed=0)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 200, seed=1)
    estimator = agents.OracleSubspaceMLE(rewards.subspace, ridge=1.0)
    agent = agents.PessimisticAgent(estimator, pessimism="exact").fit(dataset, mdp)
    sets = [agent.confidence_set(user) for user in range(n_users)]
    reference = np.broadcast_to(agent.reference_features, (n_users, mdp.n_features))
    report_target("S=200 A=10 H=20, k=5", row(mdp, sets, reference, 5, n_users, np.nan, None), 60)


def target_full_sets(n_users=1000):
    """1000 users of the independent agent, k = 499, S=50, A=10, H=10 (target: 120 s)."""
    mdp, fitted, reference = independent_sets()
    k = mdp.n_features - 1
    sets = truncated(fitted, k, n_users)
    report_target("S=50 A=10 H=10, k=499", row(mdp, sets, np.broadcast_to(reference, (n_users, mdp.n_features)),
                                               k, n_users, np.nan, None), 120)


def report_target(label, r, seconds):
    # The targets are for N = 1000; a smaller --target-users run is extrapolated linearly.
    scale = 1000 / r["N"]
    extrapolated = "" if r["N"] == 1000 else f", {scale * r['seconds']:.0f} s extrapolated to N=1000"
    print(f"target: {label}, N={r['N']}: {r['seconds']:.1f} s{extrapolated} (processor time {r['processor']:.1f} s "
          f"over all threads; {r['method']}, median "
          f"{r['iterations']} iterations, {1e3 * r['per_step']:.1f} ms per user and iteration, peak "
          f"{r['memory']:.0f} MB, {r['rectangular']:.0f}x the rectangular planner, workers={WORKERS}; target "
          f"{seconds} s at N=1000; load average {os.getloadavg()[0]:.1f})", flush=True)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (by_k, by_n) = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, fixed, varied in ((by_k, "N", "k"), (by_n, "k", "N")):
        for value in sorted({r[fixed] for r in rows}):
            part = [r for r in rows if r[fixed] == value]
            if len(part) < 2:
                continue
            x, seconds = np.array([r[varied] for r in part]), np.array([r["seconds"] for r in part])
            slope = np.polyfit(np.log(x), np.log(seconds), 1)[0]  # the fitted exponent
            axis.loglog(x, seconds, "o-", label=f"{fixed}={value}: {varied}^{slope:.2f}")
    by_k.set(xlabel="set dimension k", ylabel="seconds (all N users)", title="time against k")
    by_n.set(xlabel="users N", title="time against N")
    for axis in (by_k, by_n):
        axis.legend(fontsize=7)
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--targets", choices=["small-sets", "full-dimensional", "both"], default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 20, 60, 120, 200, -1], help="-1 is S A - 1")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--plot", default=None)
    parser.add_argument("--blas-threads", type=int, default=1, help="0: no limit")
    parser.add_argument("--workers", type=int, default=1,
                        help="robust_optimize's threads over blocks of users (2 uses both cores of an idle 2-core machine)")
    parser.add_argument("--target-users", type=int, default=1000,
                        help="users of the --targets runs (the targets are for 1000; fewer are extrapolated)")
    args = parser.parse_args()
    global WORKERS
    WORKERS = args.workers
    with threadpool_limits(limits=args.blas_threads or None):
        rows = table(args.ks, args.users) if args.table else []
        if args.targets in ("small-sets", "both"):
            target_small_sets(args.target_users)
        if args.targets in ("full-dimensional", "both"):
            target_full_sets(args.target_users)
    if args.plot and rows:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
