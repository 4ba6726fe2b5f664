"""One cell of a sweep: build the world, collect preferences, fit one agent, evaluate it exactly.

A cell is a pure function of the configuration and the cell's identity: every random draw comes
from ``SeedSequence(config.seed, spawn_key=...)`` keyed by the replicate, the setting and the
agent, never by the worker or the order of execution. All agents of a setting and replicate see
the same world and the same dataset (common random numbers), and the world of a replicate does
not depend on the grid values that leave the world unchanged (such as ``n_pairs_per_user``).
"""

from __future__ import annotations

import json
import time
import traceback
import warnings
from typing import Any

import numpy as np

import agents
from agents.metrics import reward_errors, subspace_distance
from lr_mdp_env import Teacher, collect_preferences
from lr_mdp_env.rewards import ContextualRewards

from .config import Cell, SweepConfig, cell_variables, collection_behavior, import_plugin

#: Columns that depend on the machine, not on the seed: left out when tables are compared.
TIMING_COLUMNS = ("seconds",)
#: What a cell records about its world and agent besides the metrics: the world's true rank and
#: the agent's arguments after substitution (JSON).
RECORD_COLUMNS = ("true_rank", "arguments")
#: The summaries :func:`evaluate_cell` measures: what plots and ``--metric`` may name.
METRIC_COLUMNS = ("n_pairs", "suboptimality", "suboptimality_max", "value", "optimal_value", "coverage", "bound",
                  "lower_bound", "reward_error", "subspace_distance", "seconds")
#: Spawn-key roots, so the world, data, agent and evaluation streams never coincide.
_WORLD, _DATA, _AGENT, _EVALUATION = range(4)


def cell_seed(config: SweepConfig, *key: int) -> int:
    """A 63-bit seed from ``SeedSequence(config.seed, spawn_key=key)``."""
    state = np.random.SeedSequence(config.seed, spawn_key=key).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def run_cell(config: SweepConfig, cell: Cell) -> dict[str, Any]:
    """The results row of ``cell``; an exception inside is recorded in the row, not raised.

    Returns
    -------
    dict
        ``cell_id``, ``setting``, ``agent``, ``agent_name``, ``agent_index``, ``replicate``, the
        setting's values, ``status`` (``"ok"`` or ``"error"``), ``error``, ``warnings`` (the
        distinct warnings raised while the cell ran), the metrics of :func:`evaluate_cell` and
        its records (``true_rank``, ``arguments``).
    """
    row = _header(config, cell)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            row.update(evaluate_cell(config, cell))
            row.update(status="ok", error="")
        except Exception as error:  # noqa: BLE001 - a failing cell is recorded, the sweep goes on
            frame = traceback.extract_tb(error.__traceback__)[-1]
            row.update(status="error",
                       error=f"{type(error).__name__}: {error} (at {frame.filename}:{frame.lineno})")
    # Warnings (e.g. a fit that stopped short of its tolerance) belong to the cell, not to stderr.
    messages = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
    row["warnings"] = " | ".join(messages)[:2000]
    return row


def _header(config: SweepConfig, cell: Cell) -> dict[str, Any]:
    """The identity of a cell's row: ids, agent, replicate and the setting's values."""
    spec = config.agents[cell.agent_index]
    row: dict[str, Any] = {"cell_id": cell.cell_id, "setting": cell.setting.index, "agent": spec.label,
                           "agent_name": spec.name, "agent_index": cell.agent_index, "replicate": cell.replicate}
    row.update({key: _scalar(value) for key, value in cell.setting.values().items()})
    return row


def error_row(config: SweepConfig, cell: Cell, message: str) -> dict[str, Any]:
    """The row of a cell that could not run at all (e.g. its worker process died)."""
    return {**_header(config, cell), "status": "error", "error": message, "warnings": ""}


def evaluate_cell(config: SweepConfig, cell: Cell) -> dict[str, float]:
    """Fit the cell's agent on the cell's data and summarise its exact evaluation over users.

    Returns
    -------
    dict
        ``n_pairs`` of the dataset; means over evaluated users of
        ``suboptimality`` (also its ``suboptimality_max``), ``value``, ``optimal_value``,
        ``reward_error``; ``coverage`` (fraction of users whose truth lies in their set),
        ``bound`` (the pessimism lemma's, mean), ``lower_bound``; ``subspace_distance`` (of the
        agent's subspace, or of the top-``r`` left singular subspace of ``Theta_hat - Theta_0``
        for agents without one; ``NaN`` for contextual worlds); ``seconds`` (fit, planning and
        exact evaluation); and the records ``true_rank`` (the world's) and ``arguments`` (the
        agent's, as JSON, after ``"$..."`` substitution and with the seed the cell gave it).
    """
    for module in config.plugins:
        import_plugin(module, config.plugin_path)
    setting, replicate = cell.setting, cell.replicate
    world = config.build_world(setting, model_seed=cell_seed(config, _WORLD, replicate) % 2**31)
    mdp, rewards = world
    data = dict(setting.data)
    dataset = collect_preferences(
        mdp, rewards, data["n_pairs_per_user"], behavior=collection_behavior(data, world),
        teacher=Teacher(**dict(setting.teacher)),
        seed=np.random.SeedSequence(config.seed, spawn_key=(_DATA, replicate, setting.index)),
    )
    spec = config.agents[cell.agent_index]
    arguments = spec.arguments(cell_variables(config, setting, world))
    if "seed" not in arguments and agents.registry.takes(spec.name, "seed"):
        # Not keyed by the agent: agents that differ only in their planner fit the same estimate.
        arguments["seed"] = cell_seed(config, _AGENT, replicate, setting.index)
    if "progress" not in arguments and "progress" in (agents.registry.options(spec.name) or {}):
        arguments["progress"] = False  # the sweep's bar counts the cells; no bars from inside them
    agent = agents.make(spec.name, **arguments)
    start = time.perf_counter()
    agent.fit(dataset, mdp)
    evaluated, truth = _evaluation_target(agent, rewards, dict(setting.evaluation),
                                          np.random.SeedSequence(config.seed, spawn_key=(_EVALUATION, replicate,
                                                                                         setting.index)))
    report = agents.evaluate(evaluated, mdp, truth, progress=False)
    seconds = time.perf_counter() - start
    summary = {
        "n_pairs": dataset.n_pairs,
        "suboptimality": report["suboptimality"].mean(),
        "suboptimality_max": report["suboptimality"].max(),
        "value": report["value"].mean(),
        "optimal_value": report["optimal_value"].mean(),
        "coverage": _mean_or_nan(report["truth_in_set"]),
        "bound": report["bound"].mean(),
        "lower_bound": report["lower_bound"].mean(),
        "reward_error": _reward_error(evaluated, mdp, truth),
        "subspace_distance": _subspace_distance(agent, mdp, rewards),
        "seconds": seconds,
    }
    return {**{key: float(value) if key != "n_pairs" else int(value) for key, value in summary.items()},
            "true_rank": int(rewards.rank), "arguments": _arguments_text(arguments)}


class ContextualView:
    """A fitted contextual agent seen as one user per evaluation context.

    ``policy(i)``, ``confidence_set(i)`` and ``theta_hat`` refer to ``contexts[i]``, so
    :func:`agents.evaluate` scores the agent on contexts it never saw.
    """

    def __init__(self, agent: Any, contexts: np.ndarray) -> None:
        self.agent, self.contexts = agent, contexts
        self.reference_features = getattr(agent, "context_reference_features",
                                          getattr(agent, "reference_features", None))
        if hasattr(agent, "confidence_set"):
            self.confidence_set = lambda user: agent.confidence_set(context=self.contexts[user])

    def fit(self, dataset: Any, mdp: Any) -> "ContextualView":  # pragma: no cover - already fitted
        raise TypeError("a ContextualView wraps a fitted agent")

    def policy(self, user: int) -> np.ndarray:
        return self.agent.policy(context=self.contexts[user])

    @property
    def theta_hat(self) -> np.ndarray:
        estimator = getattr(self.agent, "estimator", self.agent)
        return estimator.theta_for(self.contexts)


def _evaluation_target(agent: Any, rewards: Any, evaluation: dict[str, Any], seed: np.random.SeedSequence):
    """The agent and the true ``Theta (d, n)`` it is scored against: the training users, or fresh
    contexts from the collection or the shifted distribution (contextual worlds)."""
    if not isinstance(rewards, ContextualRewards) or evaluation["contexts"] == "users":
        return agent, rewards.theta
    contexts = rewards.sample_contexts(evaluation["n_contexts"], seed=seed,
                                       shifted=evaluation["contexts"] == "shifted")
    return ContextualView(agent, contexts), rewards.theta_for(contexts).T


def _reward_error(agent: Any, mdp: Any, truth: np.ndarray) -> float:
    theta_hat = getattr(agent, "theta_hat", None)
    if theta_hat is None:
        return float("nan")
    return float(np.mean(reward_errors(mdp, theta_hat, truth)))


def _subspace_distance(agent: Any, mdp: Any, rewards: Any) -> float:
    true_subspace = getattr(rewards, "subspace", None)
    if true_subspace is None or isinstance(rewards, ContextualRewards):
        return float("nan")
    estimate = getattr(agent, "subspace", None)
    if estimate is None:
        theta_hat = getattr(agent, "theta_hat", None)
        if theta_hat is None:
            return float("nan")
        centred = np.asarray(theta_hat, dtype=float).T - rewards.base
        estimate = np.linalg.svd(centred, full_matrices=False)[0][:, : true_subspace.shape[1]]
    distance = float(subspace_distance(mdp, true_subspace, estimate))
    # Rounding leaves ~1e-16 where the subspaces coincide (the oracle): report the exact zero.
    return 0.0 if distance < 1e-12 else distance


def _arguments_text(arguments: dict[str, Any]) -> str:
    """The agent's arguments as JSON, with ``"$..."`` substituted (arrays by their shape): the
    record of what, e.g., ``rank = "$true_rank"`` meant in this cell."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return f"array{value.shape}"
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return json.dumps({key: plain(value) for key, value in sorted(arguments.items())}, default=repr)


def _mean_or_nan(values: Any) -> float:
    known = [bool(value) for value in values if isinstance(value, (bool, np.bool_))]
    return float(np.mean(known)) if known else float("nan")


def _scalar(value: Any) -> Any:
    """Setting values as table cells: tuples (TOML arrays) become their JSON text."""
    if isinstance(value, tuple):
        return json.dumps(value)
    return value
