"""Collecting offline preference data: behaviour policies, trajectory pairs and teacher labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._validation import as_generator, check_int, check_real
from .dataset import PreferenceDataset
from .dynamic_programming import backward_induction, check_policy, uniform_policy
from .mdp import TabularMDP
from .rewards import ContextualRewards, reward_matrix
from .sampling import step_major_trajectories, transition_sampler
from .teacher import Teacher


def user_parameters(rewards: Any, n_features: int) -> np.ndarray:
    """Users' reward parameters as an ``(N, d)`` array (user axis first): ``Theta^T``.

    Accepts what :func:`~lr_mdp_env.rewards.reward_matrix` accepts: :class:`LowRankRewards`,
    :class:`ContextualRewards` (its users' contexts), or a raw ``Theta`` of shape ``(d, N)``
    (or ``(d,)``) as in docs/model.md, Users.
    """
    return reward_matrix(rewards, n_features).T


def epsilon_optimal_policies(mdp: TabularMDP, rewards: Any, epsilon: float) -> np.ndarray:
    """Each user's behaviour ``(1 - epsilon) pi*_i + epsilon uniform``, shape ``(N, H, S, A)``.

    Small ``epsilon`` concentrates the data on the optimal policy's path (good coverage, low
    concentrability); ``epsilon = 1`` is the uniform policy.
    """
    epsilon = check_real("epsilon", epsilon, 0.0, 1.0)
    optimal, _ = backward_induction(mdp, mdp.reward(user_parameters(rewards, mdp.n_features)))
    return (1.0 - epsilon) * optimal + epsilon * uniform_policy(mdp)


def _behaviour_batch(
    mdp: TabularMDP, behavior: Any, users: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resolve ``behavior`` into a policy batch and the policy index of all ``2 n`` trajectories.

    The first ``n`` trajectories (``tau0``) follow ``mu0`` and the next ``n`` (``tau1``) ``mu1``;
    a policy shared by all users stays a single ``(H, S, A)`` block instead of ``N`` copies.
    """
    if behavior is None or (isinstance(behavior, str) and behavior == "uniform"):
        behavior = uniform_policy(mdp)
    elif isinstance(behavior, str):
        raise ValueError(f"behavior must be 'uniform', a policy array or a pair of them, got {behavior!r}")
    pair = behavior if isinstance(behavior, tuple) else (behavior, behavior)
    if len(pair) != 2:
        raise ValueError(f"behavior as a tuple must be (mu0, mu1), got {len(pair)} entries")
    blocks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    for name, policy in zip(("behavior[0]", "behavior[1]"), pair):
        if indices and policy is pair[0]:
            indices.append(indices[0])
            continue
        name = name if isinstance(behavior, tuple) else "behavior"
        policy = check_policy(mdp, policy, name)
        offset = sum(block.shape[0] for block in blocks)
        if policy.ndim == 3:
            blocks.append(policy[None])
            indices.append(np.full(users.size, offset))
        else:
            if policy.shape[0] != n_users:
                raise ValueError(f"{name} has {policy.shape[0]} user policies but there are {n_users} users")
            blocks.append(policy)
            indices.append(users + offset)
    return np.concatenate(blocks), np.concatenate(indices)


def _return_accumulator(
    reward_table: np.ndarray, users: np.ndarray, myopia: float, returns: np.ndarray
) -> Callable[[int, np.ndarray], None]:
    """Per-step hook adding ``r_i[h, s_h, a_h]`` to each trajectory's (myopic) return.

    Horner's rule ``R <- gamma R + r_h`` gives the teacher's ``sum_h gamma^(H - 1 - h) r_h``. The
    step's rewards are one gather from the flat ``(N, H, S, A)`` table at ``i H S A + s A + a``,
    counted from the step's first entry ``h S A``.
    """
    _, horizon, n_states, n_actions = reward_table.shape
    flat = reward_table.reshape(-1)
    user_cells = users * (horizon * n_states * n_actions)
    step_rewards = np.empty(users.size)

    def visit(step: int, rows: np.ndarray) -> None:
        rows += user_cells
        np.take(flat[step * n_states * n_actions:], rows, out=step_rewards, mode="wrap")  # in range
        if myopia != 1.0:
            np.multiply(returns, myopia, out=returns)
        np.add(returns, step_rewards, out=returns)

    return visit


def _behaviour_kind(behavior: Any) -> str:
    """``"uniform"``, ``"given"`` (one policy, or a pair, shared by all users) or ``"per_user"``
    (some trajectories follow a policy of their own user): what agents need to pick ``d_ref``."""
    if behavior is None or isinstance(behavior, str):
        return "uniform"
    pair = behavior if isinstance(behavior, tuple) else (behavior,)
    return "per_user" if any(np.ndim(policy) == 4 for policy in pair) else "given"


def collect_preferences(
    mdp: TabularMDP,
    rewards: Any,
    n_pairs_per_user: Any,
    *,
    behavior: Any = None,
    teacher: Teacher | None = None,
    seed: Any = None,
) -> PreferenceDataset:
    """Sample trajectory pairs for every user and label them with the simulated teacher.

    All ``2 sum_i n_i`` trajectories are drawn in one vectorised pass (the loop of
    :func:`~lr_mdp_env.sampling.sample_trajectories`), and each trajectory's (myopic) return is
    accumulated from the ``(N, H, S, A)`` reward table step by step as it is drawn; the teacher
    labels every pair at once. Pairs the teacher
    skips are dropped (their number is in ``metadata["skipped"]``).

    Parameters
    ----------
    mdp : TabularMDP
    rewards : LowRankRewards, ContextualRewards or array_like of shape (d, N)
        The users' true reward parameters.
    n_pairs_per_user : int or array_like of int, shape (N,)
    behavior : None, "uniform", array_like or tuple, optional
        ``mu0 = mu1``: a policy ``(H, S, A)`` shared by all users or one per user
        ``(N, H, S, A)`` (e.g. :func:`epsilon_optimal_policies`); a tuple ``(mu0, mu1)`` gives the
        two trajectories of each pair different behaviours. Default uniform.
    teacher : Teacher, optional
        Default ``Teacher()`` (Bradley-Terry-Luce with ``beta = 1``, no noise).
    seed : int, SeedSequence or Generator, optional
        Trajectories and labels use independent streams spawned from it.

    Returns
    -------
    PreferenceDataset
        With contexts when ``rewards`` is contextual, and the generating parameters in
        ``metadata``.
    """
    theta = user_parameters(rewards, mdp.n_features)
    n_users = theta.shape[0]
    if isinstance(n_pairs_per_user, (int, np.integer)) and not isinstance(n_pairs_per_user, bool):
        counts = np.full(n_users, check_int("n_pairs_per_user", n_pairs_per_user, minimum=0))
    else:
        counts = np.asarray(n_pairs_per_user)
        if counts.dtype.kind not in "iu":
            raise TypeError(
                f"n_pairs_per_user must be an int or an integer array, got dtype {counts.dtype}"
            )
        if counts.shape != (n_users,):
            raise ValueError(
                f"n_pairs_per_user must be an int or an integer array of shape ({n_users},), "
                f"got {counts.dtype} {counts.shape}"
            )
        if counts.size and counts.min() < 0:
            raise ValueError(f"n_pairs_per_user must be non-negative, got {counts.min()} for user {counts.argmin()}")
    teacher = Teacher() if teacher is None else teacher
    if not isinstance(teacher, Teacher):
        raise TypeError(f"teacher must be a Teacher, got {type(teacher).__name__}")
    trajectory_seed, label_seed = np.random.SeedSequence(
        as_generator(seed).integers(2**63)
    ).spawn(2)

    users = np.repeat(np.arange(n_users), counts)
    n = users.size
    policies, policy_index = _behaviour_batch(mdp, behavior, users, n_users)
    returns = np.zeros(2 * n)
    visit = _return_accumulator(mdp.reward(theta), np.concatenate([users, users]), teacher.myopia, returns)
    states, actions = step_major_trajectories(
        mdp, policies, policy_index, np.random.default_rng(trajectory_seed), transition_sampler(mdp), visit
    )
    states, actions = states.T, actions.T
    answers = teacher.answer_returns(returns[:n], returns[n:], seed=label_seed)
    keep = answers.answered
    if keep.all():
        keep = slice(None)  # a view instead of a copy when the teacher answered every pair
    contexts = None
    if isinstance(rewards, ContextualRewards):
        contexts = rewards.contexts[users[keep]]
    metadata = {
        "teacher": {"beta": teacher.beta if np.isfinite(teacher.beta) else "inf", "mistake": teacher.mistake,
                    "myopia": teacher.myopia, "skip": teacher.skip, "equal": teacher.equal},
        "behavior": _behaviour_kind(behavior),
        "n_pairs_requested": int(n),
        "skipped": int(n - answers.answered.sum()),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None,
    }
    return PreferenceDataset(
        users=users[keep],
        states0=states[:n][keep],
        actions0=actions[:n][keep],
        states1=states[n:][keep],
        actions1=actions[n:][keep],
        labels=answers.labels[keep],
        probabilities=answers.probabilities[keep],
        n_users=n_users,
        n_states=mdp.n_states,
        n_actions=mdp.n_actions,
        horizon=mdp.horizon,
        contexts=contexts,
        metadata=metadata,
    )
