"""When pessimism helps: the value of greedy, rectangular and exact pessimism against the behaviour
policy, on data concentrated on each user's optimal policy and on uniform data.

The world is the README's chain (``chain_world(n_states=5, horizon=6, n_actions=3, n_users=8,
distractor=0.5, model_seed=0)``): a combination lock whose end every user wants, with a
distractor reward for idling in the first state. Each user's comparisons come either from their
own ``epsilon_optimal_policies(..., epsilon=0.1)`` (concentrated) or from the uniform policy, for
several numbers of pairs per user; one ``independent`` estimator is fitted per dataset with the
agents' defaults, and the planners of :mod:`agents.planning` run on its sets exactly as
:class:`agents.PessimisticAgent` runs them (``d_ref`` the behaviour policy of the data). Values are
averaged over users and over ``--replicates`` data seeds.

Two kinds of sets are planned against:

- ``estimator``: the estimator's own ``1 - delta`` sets (``confidence_set(user)``);
- ``calibrated``: an oracle that shows what the planners do when the sets keep their promise.
  In the coordinates of the estimator's set (its basis ``B``), ``M`` is the Fisher information
  of the user's comparisons at the truth, ``sum_j p_j (1 - p_j) (B^T z_j)(B^T z_j)^T`` with the
  true preference probabilities ``p_j``, plus ``I`` (a unit Gaussian prior on each coordinate, so
  that coordinates the data never see have a finite width); the radius is the Wald radius, and
  the centre is the truth's coordinates plus ``N(0, M^{-1})`` noise, the asymptotic law of the
  estimate this ``M`` describes. ``||center - truth||_M^2`` is then chi-square with ``k`` degrees
  of freedom: the set contains the truth with probability exactly ``1 - delta``.

It prints one ``MEASURED`` line per cell and writes ``docs/pessimism_value.png``.

Run: ``python benchmarks/pessimism_value.py [--replicates 3] [--sizes 10 30 100 300 1000]``

References
----------
Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
K-wise Comparisons*, ICML 2023. Jin, Yang and Wang, *Is Pessimism Provably Efficient for Offline
RL?*, ICML 2021.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

import agents
import lr_mdp_env
from agents import Ellipsoid, planning
from lr_mdp_env import backward_induction, expected_features, uniform_policy
from lr_mdp_env.collection import epsilon_optimal_policies
from lr_mdp_env.envs.chain import chain_world

PLANNERS = ("greedy", "rectangular", "rectangular, no safeguard", "exact", "behaviour")


def chain():
    world = chain_world(n_states=5, horizon=6, n_actions=3, n_users=8, distractor=0.5, model_seed=0)
    return world.mdp, world.rewards


def calibrated_sets(dataset, mdp, estimator_sets, theta, delta: float, rng: np.random.Generator) -> list[Ellipsoid]:
    """The calibrated oracle sets described in the module docstring, one per user."""
    z = np.asarray(dataset.feature_differences(mdp))
    weight = np.asarray(dataset.probabilities) * (1 - np.asarray(dataset.probabilities))
    sets = []
    for user, estimator_set in enumerate(estimator_sets):
        basis, offset = estimator_set.basis, estimator_set.offset
        coordinates = z[dataset.users == user] @ basis
        matrix = (coordinates.T * weight[dataset.users == user]) @ coordinates + np.eye(basis.shape[1])
        factor = np.linalg.cholesky(matrix)
        truth = np.linalg.lstsq(basis, theta[:, user] - offset, rcond=None)[0]
        noise = np.linalg.solve(factor.T, rng.standard_normal(basis.shape[1]))  # L^-T e ~ N(0, M^-1)
        sets.append(Ellipsoid(offset=offset, basis=basis, center=truth + noise, matrix=matrix,
                              radius=agents.wald_radius(basis.shape[1], delta), factor=factor))
    return sets


def values(mdp, rewards, behaviour, n_pairs: int, seed: int, sets_kind: str) -> dict[str, np.ndarray]:
    """Each planner's per-user true value ``J_i(pi_i)`` on one dataset, and which users' sets
    contain the truth (``covered``); greedy plans on the sets' centres."""
    theta = rewards.theta
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, n_pairs, behavior=behaviour, seed=seed)
    agent = agents.make("independent", pessimism="exact").fit(dataset, mdp)
    sets = [agent.confidence_set(user) for user in range(rewards.n_users)]
    if sets_kind == "calibrated":
        sets = calibrated_sets(dataset, mdp, sets, theta, agent.estimator.delta, np.random.default_rng([seed, 1]))
    covered = np.array([s.contains(theta[:, user], project=True) for user, s in enumerate(sets)])
    reference_policy = np.broadcast_to(agent.reference_policy, (rewards.n_users, *mdp.transitions.shape[:-1])) \
        if agent.reference_policy.ndim == 3 else agent.reference_policy
    d_ref = np.broadcast_to(agent.reference_features, (rewards.n_users, mdp.n_features))
    theta_hat = np.stack([s.theta_hat for s in sets]) if sets_kind == "calibrated" else agent.theta_hat
    policies = {
        "greedy": planning.greedy(mdp, theta_hat),
        "rectangular": planning.rectangular(mdp, sets, d_ref, reference_policy=reference_policy).policy,
        "rectangular, no safeguard": planning.rectangular(mdp, sets, d_ref).policy,
        "exact": np.stack([s.policy for s in planning.robust_optimize(mdp, sets, d_ref, agent.tol,
                                                                      reference_policy=reference_policy)]),
        "behaviour": np.asarray(reference_policy),
    }
    out = {name: np.einsum("id,di->i", expected_features(mdp, policy), theta) for name, policy in policies.items()}
    out["covered"] = covered
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--output", default=str(pathlib.Path(__file__).resolve().parents[1] / "docs" / "pessimism_value.png"))
    arguments = parser.parse_args()
    mdp, rewards = chain()
    optimal_value = float(np.mean(np.einsum("id,di->i", expected_features(
        mdp, backward_induction(mdp, mdp.reward(rewards.theta.T))[0]), rewards.theta)))
    behaviours = {"concentrated (epsilon = 0.1)": epsilon_optimal_policies(mdp, rewards, epsilon=0.1),
                  "uniform": uniform_policy(mdp)}
    curves: dict[tuple[str, str, str], list[float]] = {}
    for sets_kind in ("estimator", "calibrated"):
        for data_name, behaviour in behaviours.items():
            for n_pairs in arguments.sizes:
                per_replicate = [values(mdp, rewards, behaviour, n_pairs, seed=1000 * replicate + n_pairs,
                                        sets_kind=sets_kind) for replicate in range(arguments.replicates)]
                means = {name: float(np.mean([v[name] for v in per_replicate])) for name in PLANNERS}
                covered = np.concatenate([v["covered"] for v in per_replicate])
                # The lower-bound fact binds only where the truth is in the set.
                worst = {name: float(np.min(np.concatenate([(v[name] - v["behaviour"])[v["covered"]]
                                                            for v in per_replicate]), initial=np.inf))
                         for name in PLANNERS}
                worst_all = {name: float(np.min([np.min(v[name] - v["behaviour"]) for v in per_replicate]))
                             for name in PLANNERS}
                for name in PLANNERS:
                    curves.setdefault((sets_kind, data_name, name), []).append(means[name])
                print(f"MEASURED pessimism_value sets={sets_kind} data={data_name} n={n_pairs}: J* {optimal_value:.2f}; "
                      + "; ".join(f"{name} {means[name]:.2f}" for name in PLANNERS)
                      + f"; truth in set {covered.sum()}/{covered.size}; min over covered users of J - J(behaviour): "
                      + ", ".join(f"{name} {worst[name]:.2f}" for name in PLANNERS if name != "behaviour")
                      + "; over all users: "
                      + ", ".join(f"{name} {worst_all[name]:.2f}" for name in PLANNERS if name != "behaviour"),
                      flush=True)
    plot(curves, arguments.sizes, optimal_value, list(behaviours), arguments.output)


def plot(curves, sizes, optimal_value, data_names, output) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"greedy": ("tab:blue", "-"), "rectangular": ("tab:orange", "-"),
              "rectangular, no safeguard": ("tab:orange", ":"), "exact": ("tab:green", "-"),
              "behaviour": ("black", "--")}
    figure, axes = plt.subplots(2, len(data_names), figsize=(10, 6.5), sharex=True, sharey=True)
    for row, sets_kind in enumerate(("estimator", "calibrated")):
        for column, data_name in enumerate(data_names):
            axis = axes[row, column]
            for name in PLANNERS:
                colour, line = styles[name]
                axis.plot(sizes, curves[sets_kind, data_name, name], line, color=colour, marker="o", markersize=3,
                          label=name)
            axis.axhline(optimal_value, color="grey", linewidth=0.8, label="optimal J*")
            axis.set_xscale("log")
            title = "estimator's sets" if sets_kind == "estimator" else "calibrated sets (oracle)"
            axis.set_title(f"{data_name} data, {title}", fontsize=9)
            if row == 1:
                axis.set_xlabel("pairs per user")
            if column == 0:
                axis.set_ylabel("mean true value J")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    figure.suptitle("Chain (S = 5, A = 3, H = 6), 8 users, independent MLE", fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=90)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
