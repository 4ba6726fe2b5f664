"""Time and peak memory of every stage against the number of users N and the feature dimension d.

The world is ``lr_mdp_env/RandomLowRank-v0`` with one-hot ``(s, a)`` features: 10 actions,
``d / 10`` states, horizon 20, rank 5, ``--pairs`` comparisons per user (20 by default). Each cell
``(N, d)`` of the grid runs the stages in order in a fresh process (so that one cell's memory does
not leak into the next, and a cell that exceeds ``--memory-limit`` is recorded as failed instead
of taking the machine down):

- ``world``, ``collect``: ``random_low_rank_world`` and ``collect_preferences``;
- one stage per estimator fit (pooled, independent, oracle-subspace, P-ShareLoRA with its default
  sets and ``p-sharelora ignore`` with ``subspace_error="ignore"``; a fixed ridge, ``--ridge``, or
  with ``--select`` the default ridge selection), and beside them
  ``sklearn per-user``: scikit-learn's ``LogisticRegression`` (lbfgs, ``C = 1 / ridge``, no
  intercept, tol ``--sklearn-tol``, 1e-6 by default: 1e-7 matches the joint fits' gradient norm
  at 1000 users, d = 2000, 50 pairs) fitted to each user's comparisons in the full dimension,
  from the sparse feature differences (with ``--select``: over the same grid and split, plus the
  refit);
- ``loco-prs joint``: LoCo-RLHF's rank-5 factored fit (contexts of dimension 10, one per user,
  with its own collect), and ``loco-prs``: LoCo-PRS's whole fit on those data;
- ``report <estimator>``: :func:`agents.estimation_report` of that estimator's fit (reward errors,
  coverage of every user's set, subspace distance; reward errors only for LoCo-PRS's contextual
  truth). ``report p-sharelora`` includes the subspace-error bootstrap of the default sets,
  ``report p-sharelora ignore`` the sets in ``U_hat``'s span alone;
- ``greedy planning``, ``rect. planning``: every user's policy from ``p-sharelora ignore``'s fit,
  greedy and with rectangular pessimism (the estimator is not refitted; the planners' time, not
  the bootstrap's);
- ``evaluate greedy``, ``evaluate rect.``: :func:`agents.evaluate` of those agents (exact values,
  optimal policies, pessimism diagnostics; the policies already planned);
- with ``--loco-planning`` (or by name with ``--stages``): ``loco-prs ignore`` (LoCo-PRS with
  ``subspace_error="ignore"`` on the contextual data), ``loco first set`` (the first context's set:
  inference refit, ``k x k`` Fisher matrix, its factor), ``loco further sets`` (every other user's),
  ``loco rect. bonus`` (:func:`agents.planning.rectangular_bonus` of all users' sets: ``M^{-1}``
  and the bonus tensor once, then each context), ``loco greedy planning`` / ``loco rect. planning``
  and ``evaluate loco greedy`` / ``evaluate loco rect.`` (as above, under the contextual truth).

Stages are the entries of ``STAGES``: a name and a function of the cell's state (a dict holding
``mdp``, ``rewards``, ``dataset`` and the options), so later stages (planning, evaluation) are
appended there; a stage that needs an earlier one (a fit, a planned agent) fails with a note
when that one was not run. For every stage the script prints wall-clock seconds and the peak resident memory
of the process during the stage (``VmHWM``, reset before each stage; estimators and agents that no
later stage reads are released after each stage, so the peak is the stage's own plus what later
stages need, mainly the dataset), then the exponents of
``time ~ N^a`` (at each d) and ``time ~ d^b`` (at each N) fitted by least squares on log-log
axes, and draws both on log-log axes into ``--figure``.

Run: ``python benchmarks/bench_scale.py --figure docs/scale.png`` (the quick grid, N in
{100, 1000}, d in {100, 500, 2000}: a few minutes), ``--full`` for N in {100, 1000, 10000} and d
in {100, 500, 2000}. Needs scikit-learn. One BLAS thread by default (``--blas-threads``), as the other
benchmarks: timings on a shared machine are noisy, ratios measured in the same cell less so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

QUICK_USERS, QUICK_FEATURES = (100, 1000), (100, 500, 2000)
FULL_USERS, FULL_FEATURES = (100, 1000, 10000), (100, 500, 2000)
N_ACTIONS, HORIZON, RANK, CONTEXT_DIM = 10, 20, 5, 10


# -- the stages -------------------------------------------------------------------------------------

def _world(state: dict) -> None:
    from lr_mdp_env.envs import random_low_rank_world

    state["mdp"], state["rewards"] = random_low_rank_world(
        n_states=state["d"] // N_ACTIONS, n_actions=N_ACTIONS, horizon=HORIZON, n_users=state["N"], rank=RANK,
        model_seed=0)


def _collect(state: dict) -> None:
    import lr_mdp_env

    state["dataset"] = lr_mdp_env.collect_preferences(state["mdp"], state["rewards"], state["pairs"], seed=1)


def _estimator(name: str) -> Callable[[dict], None]:
    def fit(state: dict) -> None:
        import agents

        ridge = None if state["select"] else state["ridge"]
        estimator = {
            "pooled": lambda: agents.PooledMLE(ridge=ridge),
            "independent": lambda: agents.IndependentMLE(ridge=ridge),
            "oracle-subspace": lambda: agents.OracleSubspaceMLE(state["rewards"].subspace, ridge=ridge),
            "p-sharelora": lambda: agents.PShareLoRA(RANK, ridge=ridge),
            "p-sharelora ignore": lambda: agents.PShareLoRA(RANK, ridge=ridge, subspace_error="ignore"),
        }[name]().fit(state["dataset"], state["mdp"])
        state.setdefault("notes", {})[name] = {"ridge": estimator.ridge_, **estimator.diagnostics}
        state.setdefault("fitted", {})[name] = estimator

    return fit


class _AlreadyFitted:
    """An estimator fitted by an earlier stage, whose ``fit`` is a no-op: the planning stages
    time the planner alone."""

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator

    def fit(self, dataset: Any, mdp: Any) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._estimator, name)


def _fitted(state: dict, name: str) -> Any:
    if name not in state.get("fitted", {}):
        raise RuntimeError(f"needs the {name!r} stage first")
    return state["fitted"][name]


def _report(name: str) -> Callable[[dict], None]:
    def report(state: dict) -> None:
        import agents

        estimator = _fitted(state, name)
        rewards = state["contextual"][0] if name == "loco-prs" else state["rewards"]
        table = agents.estimation_report(estimator, state["mdp"], rewards)
        if "truth_in_set" in table:  # contextual rewards: the report has reward errors only
            state.setdefault("notes", {}).setdefault(f"report {name}", {})["coverage"] = float(
                table["truth_in_set"].mean())

    return report


def _planning(pessimism: str) -> Callable[[dict], None]:
    """P-ShareLoRA's sets in ``U_hat``'s span (``subspace_error="ignore"``, fitted by its stage)
    planned greedily or with rectangular pessimism: the planner's time, not the subspace-error
    bootstrap's (which ``report p-sharelora`` measures)."""
    def plan(state: dict) -> None:
        import agents

        agent = agents.PessimisticAgent(_AlreadyFitted(_fitted(state, "p-sharelora ignore")), pessimism=pessimism)
        agent.fit(state["dataset"], state["mdp"])
        agent.policies()
        state.setdefault("agents", {})[pessimism] = agent

    return plan


def _evaluate(pessimism: str) -> Callable[[dict], None]:
    """``agents.evaluate`` of the agent planned by the planning stage (its policies cached)."""
    def evaluate(state: dict) -> None:
        import agents

        if pessimism not in state.get("agents", {}):
            raise RuntimeError(f"needs the {pessimism!r} planning stage first")
        table = agents.evaluate(state["agents"][pessimism], state["mdp"], state["rewards"], progress=False)
        state.setdefault("notes", {}).setdefault(f"evaluate {pessimism}", {})["suboptimality"] = float(
            table["suboptimality"].mean())

    return evaluate


def _sklearn_per_user(state: dict) -> None:
    """scikit-learn's per-user fits (the peer): every user's own full-dimensional ridge logistic
    regression; with ``select``, over the ridge grid on the estimators' split, then the refit."""
    from sklearn.linear_model import LogisticRegression

    from agents.data import comparison_data
    from agents.tuning import DEFAULT_RIDGE_GRID, held_out_split, log_likelihood

    data = comparison_data(state["dataset"], state["mdp"])
    features, labels, users = data.differences.tocsr(), data.labels, data.users
    order = np.argsort(users, kind="stable")
    starts = np.searchsorted(users[order], np.arange(data.n_users + 1))

    tol = state.get("sklearn_tol", 1e-6)

    def fit(rows: np.ndarray, ridge: float) -> np.ndarray:
        coefficients = np.zeros((data.n_users, features.shape[1]))
        chosen = np.zeros(data.n_pairs, dtype=bool)
        chosen[rows] = True
        for user in range(data.n_users):
            mine = order[starts[user]:starts[user + 1]]
            mine = mine[chosen[mine]]
            if np.unique(labels[mine]).size < 2:  # one class: scikit-learn refuses; the ridge MLE is 0
                continue
            coefficients[user] = LogisticRegression(C=1.0 / ridge, fit_intercept=False, tol=tol, max_iter=1000).fit(
                features[mine], (labels[mine] > 0.5).astype(int)).coef_.ravel()
        return coefficients

    everything = np.arange(data.n_pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own ConvergenceWarning at max_iter
        if not state["select"]:
            fit(everything, state["ridge"])
            return
        train, held_out = held_out_split(data, seed=0)
        scores = {}
        for ridge in DEFAULT_RIDGE_GRID:
            coefficients = fit(train, ridge)
            logits = np.asarray(features[held_out].multiply(coefficients[users[held_out]]).sum(axis=1)).ravel()
            scores[ridge] = float(np.mean(log_likelihood(logits, labels[held_out])))
        best = max(scores, key=lambda ridge: (scores[ridge], ridge))
        fit(everything, best)
        state.setdefault("notes", {})["sklearn per-user"] = {"ridge": best}


def _loco_joint(state: dict) -> None:
    """LoCo-RLHF's factored fit (the first step of LoCo-PRS) on users with contexts."""
    import lr_mdp_env
    from agents.data import comparison_data
    from agents.factorized import fit_factored
    from lr_mdp_env.identifiability import unidentified_directions

    mdp = state["mdp"]
    rewards = lr_mdp_env.contextual_rewards(mdp.n_features, CONTEXT_DIM, RANK, n_users=state["N"], mdp=mdp, seed=3)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, state["pairs"], seed=4)
    state["contextual"] = (rewards, dataset)
    data = comparison_data(dataset, mdp)
    fit = fit_factored(data.contexts, data.differences, data.labels, RANK, offsets=data.offsets,
                       ridge=state["ridge"], balance=1.0, hidden=unidentified_directions(mdp), tol=1e-6)
    state.setdefault("notes", {})["loco-prs joint"] = {"converged": bool(fit.converged),
                                                        "iterations": int(fit.iterations)}


def _loco_prs(state: dict) -> None:
    """LoCo-PRS's whole fit on the users with contexts of the joint-fit stage (its dataset)."""
    import agents

    if "contextual" not in state:
        raise RuntimeError("needs the 'loco-prs joint' stage first")
    rewards, dataset = state["contextual"]
    estimator = agents.LoCoPRS(RANK, ridge=state["ridge"]).fit(dataset, state["mdp"])
    state.setdefault("notes", {})["loco-prs"] = {"ridge": estimator.ridge_, **estimator.diagnostics}
    state.setdefault("fitted", {})["loco-prs"] = estimator


def _loco_ignore(state: dict) -> None:
    """LoCo-PRS with ``subspace_error="ignore"`` (the sets of the RTV coordinates alone, no dropped-block
    bootstrap) on the contextual data: the estimator of the LoCo planning stages."""
    import agents

    if "contextual" not in state:
        raise RuntimeError("needs the 'loco-prs joint' stage first")
    rewards, dataset = state["contextual"]
    estimator = agents.LoCoPRS(RANK, ridge=state["ridge"], subspace_error="ignore").fit(dataset, state["mdp"])
    state.setdefault("fitted", {})["loco-prs ignore"] = estimator


def _loco_sets(step: str) -> Callable[[dict], None]:
    """The per-context sets of ``loco-prs ignore``: the first (the inference refit, the ``k x k``
    Fisher matrix and its factor), every further user's context, and the rectangular bonus of all
    of them (``M^{-1}`` and the bonus tensor once, then each context)."""
    def sets(state: dict) -> None:
        from agents import planning

        estimator = _fitted(state, "loco-prs ignore")
        if step == "first":
            estimator.confidence_set(0)
        elif step == "further":
            for user in range(1, estimator.user_contexts.shape[0]):
                estimator.confidence_set(user)
        else:
            items = [estimator.confidence_set(user) for user in range(estimator.user_contexts.shape[0])]
            planning.rectangular_bonus(state["mdp"], items)

    return sets


def _loco_planning(pessimism: str) -> Callable[[dict], None]:
    """Every user's policy from ``loco-prs ignore``'s sets of the users' contexts, greedy or rectangular."""
    def plan(state: dict) -> None:
        import agents

        rewards, dataset = state["contextual"]
        agent = agents.PessimisticAgent(_AlreadyFitted(_fitted(state, "loco-prs ignore")), pessimism=pessimism)
        agent.fit(dataset, state["mdp"])
        agent.policies()
        state.setdefault("agents", {})[f"loco {pessimism}"] = agent

    return plan


def _loco_evaluate(pessimism: str) -> Callable[[dict], None]:
    """``agents.evaluate`` of the LoCo agent planned by its planning stage, under the contextual truth."""
    def evaluate(state: dict) -> None:
        import agents

        if f"loco {pessimism}" not in state.get("agents", {}):
            raise RuntimeError(f"needs the 'loco {pessimism}' planning stage first")
        table = agents.evaluate(state["agents"][f"loco {pessimism}"], state["mdp"], state["contextual"][0],
                                progress=False)
        state.setdefault("notes", {}).setdefault(f"evaluate loco {pessimism}", {})["suboptimality"] = float(
            table["suboptimality"].mean())

    return evaluate


STAGES: list[tuple[str, Callable[[dict], None]]] = [
    ("world", _world),
    ("collect", _collect),
    ("pooled", _estimator("pooled")),
    ("independent", _estimator("independent")),
    ("oracle-subspace", _estimator("oracle-subspace")),
    ("p-sharelora", _estimator("p-sharelora")),
    ("p-sharelora ignore", _estimator("p-sharelora ignore")),
    ("sklearn per-user", _sklearn_per_user),
    ("loco-prs joint", _loco_joint),
    ("report p-sharelora ignore", _report("p-sharelora ignore")),
    ("report p-sharelora", _report("p-sharelora")),
    ("report oracle-subspace", _report("oracle-subspace")),
    ("report pooled", _report("pooled")),
    ("greedy planning", _planning("none")),
    ("evaluate greedy", _evaluate("none")),
    ("rect. planning", _planning("rectangular")),
    ("evaluate rect.", _evaluate("rectangular")),
    ("report independent", _report("independent")),
    # Last: LoCo-PRS fits (d_x + d) r - r^2 coordinates (10,025 at d = 2000) from the sparse pair
    # features; its report (contextual rewards) has reward errors only, no sets.
    ("loco-prs", _loco_prs),
    ("report loco-prs", _report("loco-prs")),
    # LoCo-PRS's per-context sets and planning (with --loco-planning or --stages).
    ("loco-prs ignore", _loco_ignore),
    ("loco first set", _loco_sets("first")),
    ("loco further sets", _loco_sets("further")),
    ("loco rect. bonus", _loco_sets("bonus")),
    ("loco greedy planning", _loco_planning("none")),
    ("evaluate loco greedy", _loco_evaluate("none")),
    ("loco rect. planning", _loco_planning("rectangular")),
    ("evaluate loco rect.", _loco_evaluate("rectangular")),
]
#: Stages run only when asked for (--loco-planning, or by name with --stages): minutes at d = 2000.
LOCO_PLANNING_STAGES = [name for name, _ in STAGES[STAGES.index(("loco-prs ignore", _loco_ignore)):]]


# -- one cell, in its own process --------------------------------------------------------------------

def _reset_peak_memory() -> bool:
    """Reset the process's resident-memory high-water mark (Linux), so that the next read is the
    peak of one stage."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_memory_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # since the start: an upper bound


def _needs(stage: str) -> set[tuple[str, str]]:
    """What a stage reads from the cell's state besides world and data: ``(kind, name)`` of
    fitted estimators and planned agents."""
    if stage.startswith("report "):
        return {("fitted", stage.removeprefix("report "))}
    if stage in ("greedy planning", "rect. planning"):
        return {("fitted", "p-sharelora ignore")}
    if stage.startswith("loco ") and stage != "loco-prs joint":
        return {("fitted", "loco-prs ignore")}
    if stage.startswith("evaluate loco "):
        return {("agents", {"evaluate loco greedy": "loco none", "evaluate loco rect.": "loco rectangular"}[stage])}
    if stage.startswith("evaluate "):
        return {("agents", {"evaluate greedy": "none", "evaluate rect.": "rectangular"}[stage])}
    return set()


def _release(state: dict, later: list[str]) -> None:
    """Drop the estimators and agents no later stage reads, so that a stage's peak memory is its
    own and what later stages need, not every earlier stage's results (a session would let them go too)."""
    needed = set().union(*(_needs(stage) for stage in later)) if later else set()
    for kind in ("fitted", "agents"):
        for name in list(state.get(kind, {})):
            if (kind, name) not in needed:
                del state[kind][name]
    if not any(stage.startswith(("loco", "evaluate loco")) or stage == "report loco-prs" for stage in later):
        state.pop("contextual", None)


def run_cell(options: dict) -> dict:
    """Run every stage on one ``(N, d)`` cell; returns ``{stage: {"seconds", "peak_mb"}}``."""
    from threadpoolctl import threadpool_limits

    import agents  # noqa: F401  (imports are not part of any stage's time)
    import lr_mdp_env.envs  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    state = dict(options)
    results: dict[str, Any] = {}
    limits = threadpool_limits(limits=options["blas_threads"], user_api="blas") if options["blas_threads"] else None
    try:
        for name, stage in STAGES:
            if name not in options["stages"]:
                continue
            _reset_peak_memory()
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                stage(state)
            except MemoryError:  # its arrays are freed: the later stages still run
                results[name] = {"error": "out of memory"}
                continue
            except RuntimeError as error:  # an earlier stage it needs was not run
                results[name] = {"error": str(error)}
                continue
            results[name] = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
                             "peak_mb": _peak_memory_mb()}
            _release(state, [later for later, _ in STAGES[STAGES.index((name, stage)) + 1:]
                             if later in options["stages"]])
    finally:
        if limits is not None:
            limits.unregister()
    results["notes"] = state.get("notes", {})
    return results


def _cell_in_subprocess(options: dict, memory_limit_gb: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--cell", json.dumps(options),
               "--memory-limit", str(memory_limit_gb)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        lines = (finished.stderr or "").strip().splitlines()
        return {"failed": lines[-1] if lines else f"exit status {finished.returncode}"}
    return json.loads(finished.stdout.strip().splitlines()[-1])


# -- the grid, the exponents, the figure ---------------------------------------------------------------

def fitted_exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Least-squares slope of ``log seconds`` on ``log size`` (None with fewer than two points)."""
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def _series(grid: dict, stage: str, axis: str, fixed: int, values: tuple[int, ...]) -> tuple[list, list]:
    sizes, seconds = [], []
    for value in values:
        key = (value, fixed) if axis == "N" else (fixed, value)
        entry = grid.get(key, {}).get(stage, {})
        if "seconds" in entry:
            sizes.append(value)
            seconds.append(entry["seconds"])
    return sizes, seconds


def report(grid: dict, users: tuple[int, ...], features: tuple[int, ...], stages: list[str]) -> None:
    cells = [(n, d) for d in features for n in users]
    print("\nwall-clock seconds / peak resident memory (MB) during the stage")
    header = "".join(f"{f'N={n} d={d}':>22s}" for n, d in cells)
    print(f"{'stage':24s}{header}")
    for stage in stages:
        row = ""
        for cell in cells:
            entry = grid.get(cell, {})
            if "failed" in entry:
                row += f"{'failed':>22s}"
            elif stage in entry and "seconds" in entry[stage]:
                row += f"{entry[stage]['seconds']:>12.2f} /{entry[stage]['peak_mb']:>7.0f}"
            else:
                row += f"{entry.get(stage, {}).get('error', '-')[:20]:>22s}"
        print(f"{stage:24s}{row}")
    print("\nprocess CPU seconds during the stage (less sensitive than wall-clock to a loaded machine)")
    print(f"{'stage':24s}" + "".join(f"{f'N={n} d={d}':>14s}" for n, d in cells))
    for stage in stages:
        print(f"{stage:24s}" + "".join(
            f"{grid.get(cell, {}).get(stage, {}).get('cpu_seconds', float('nan')):>14.2f}" for cell in cells))
    print("\nP-ShareLoRA / scikit-learn per-user fits, same cell:",
          ", ".join(f"N={n} d={d}: {grid[(n, d)]['p-sharelora']['seconds'] / grid[(n, d)]['sklearn per-user']['seconds']:.2f}"
                    for n, d in cells if "seconds" in grid.get((n, d), {}).get("p-sharelora", {})
                    and "seconds" in grid.get((n, d), {}).get("sklearn per-user", {})))
    print("\nfitted exponents: time ~ N^a at each d | time ~ d^b at each N")
    for stage in stages:
        by_users = [fitted_exponent(*_series(grid, stage, "N", d, users)) for d in features]
        by_features = [fitted_exponent(*_series(grid, stage, "d", n, features)) for n in users]
        text = lambda values: ", ".join("-" if value is None else f"{value:.2f}" for value in values)  # noqa: E731
        print(f"  {stage:24s} a = {text(by_users):22s} (d = {', '.join(map(str, features))}) | "
              f"b = {text(by_features)} (N = {', '.join(map(str, users))})")
    print("\nconvergence (relative gradient norm of every fit; P-ShareLoRA's L-BFGS and Newton steps):")
    for n, d in cells:
        notes = grid.get((n, d), {}).get("notes", {})
        if not notes:
            continue
        worst = max((facts.get("relative_gradient_norm", 0.0) for fits in notes.values() if isinstance(fits, dict)
                     for facts in fits.values() if isinstance(facts, dict)), default=0.0)
        converged = all(facts.get("converged", True) for fits in notes.values() if isinstance(fits, dict)
                        for facts in [fits, *fits.values()] if isinstance(facts, dict))
        joint = notes.get("p-sharelora", {}).get("joint", {})
        print(f"  N={n} d={d}: all converged {converged}, worst relative gradient {worst:.1e}; P-ShareLoRA "
              f"{joint.get('quasi_newton_steps', '-')} + {joint.get('iterations', '-')} steps"
              + (f", chosen ridges {dict((name, fits['ridge']) for name, fits in notes.items() if 'ridge' in fits)}"
                 if any("ridge" in fits for fits in notes.values()) and grid[(n, d)].get("select") else ""))


def draw(grid: dict, users: tuple[int, ...], features: tuple[int, ...], stages: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_users, by_features) = plt.subplots(1, 2, figsize=(11, 4.4))
    largest_d, middle_n = features[-1], users[len(users) // 2]
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for index, stage in enumerate(stages):
        # Line style by kind of stage (fits and data, reports, planning and evaluation), colour by stage.
        style = "--" if stage.startswith("sklearn") else ":" if stage.startswith("report") else \
            "-." if "planning" in stage or stage.startswith("evaluate") else "-"
        for axes, axis, fixed, values in ((by_users, "N", largest_d, users), (by_features, "d", middle_n, features)):
            sizes, seconds = _series(grid, stage, axis, fixed, values)
            if sizes:
                exponent = fitted_exponent(sizes, seconds)
                label = stage if exponent is None else f"{stage} ({exponent:.2f})"
                axes.loglog(sizes, seconds, marker="o", linestyle=style, color=colours[index % 20], label=label)
    by_users.set(xlabel="users N", ylabel="seconds", title=f"d = {largest_d} (fitted exponent)")
    by_features.set(xlabel="features d", title=f"N = {middle_n} (fitted exponent)")
    for axes in (by_users, by_features):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print(f"figure written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", help="path of the log-log figure (PNG)")
    parser.add_argument("--full", action="store_true", help="N in {100, 1000, 10000}, d in {100, 500, 2000}")
    parser.add_argument("--users", type=int, nargs="*", help="N values (overrides the grid)")
    parser.add_argument("--features", type=int, nargs="*", help="d values, multiples of 10 (overrides the grid)")
    parser.add_argument("--pairs", type=int, default=20, help="comparisons per user")
    parser.add_argument("--ridge", type=float, default=10.0, help="fixed ridge of every fit")
    parser.add_argument("--select", action="store_true", help="default ridge selection instead of --ridge")
    parser.add_argument("--sklearn-tol", type=float, default=1e-6, help="tol of scikit-learn's per-user fits")
    parser.add_argument("--stages", nargs="*", help="stages to run (default: all but LoCo's planning stages)")
    parser.add_argument("--loco-planning", action="store_true",
                        help="also LoCo-PRS's per-context sets, planning and evaluation (" +
                        ", ".join(LOCO_PLANNING_STAGES) + ")")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (0: no limit)")
    parser.add_argument("--memory-limit", type=float, default=8.0, help="address-space limit of a cell, GB")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.cell:  # a cell, in its own process
        if arguments.memory_limit > 0:
            limit = int(arguments.memory_limit * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(run_cell(json.loads(arguments.cell))))
        return
    users = tuple(arguments.users or (FULL_USERS if arguments.full else QUICK_USERS))
    features = tuple(arguments.features or (FULL_FEATURES if arguments.full else QUICK_FEATURES))
    chosen = arguments.stages if arguments.stages is not None else \
        [name for name, _ in STAGES if arguments.loco_planning or name not in LOCO_PLANNING_STAGES]
    stages = [name for name, _ in STAGES if name in chosen]
    grid = {}
    for d in features:
        for n in users:
            options = dict(N=n, d=d, pairs=arguments.pairs, ridge=arguments.ridge, select=arguments.select,
                           stages=stages, blas_threads=arguments.blas_threads, sklearn_tol=arguments.sklearn_tol)
            start = time.perf_counter()
            result = _cell_in_subprocess(options, arguments.memory_limit)
            result["select"] = arguments.select
            grid[(n, d)] = result
            print(f"cell N={n} d={d}: {time.perf_counter() - start:.0f} s"
                  + (f" (failed: {result['failed']})" if "failed" in result else ""), flush=True)
    report(grid, users, features, stages)
    if arguments.figure:
        draw(grid, users, features, stages, arguments.figure)


if __name__ == "__main__":
    main()
