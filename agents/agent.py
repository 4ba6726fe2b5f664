"""The agent protocol and the built-in agent: an estimator followed by a planner (docs/algorithms.md, Agents).

An agent is anything with ``fit(dataset, mdp) -> agent`` and ``policy(user) -> (H, S, A)``;
:func:`agents.evaluate` needs nothing more. Agents that also expose ``theta_hat``,
``confidence_set(user)`` and ``reference_features`` get the pessimism diagnostics too.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from lr_mdp_env import PreferenceDataset, TabularMDP
from lr_mdp_env._validation import as_real_array, check_int, check_real, frozen
from lr_mdp_env.dynamic_programming import (
    check_policy,
    expected_features,
    l1_transition_radius,
    uniform_policy,
)

from . import planning
from .confidence import Ellipsoid
from .exceptions import not_fitted

PESSIMISM = ("exact", "rectangular", "none")
TRANSITIONS = ("known", "estimated")


@runtime_checkable
class Agent(Protocol):
    """What :func:`agents.evaluate` and :func:`agents.register` expect of an agent."""

    def fit(self, dataset: PreferenceDataset, mdp: TabularMDP) -> "Agent":
        """Learn from an offline preference dataset collected in ``mdp``; return ``self``."""

    def policy(self, user: int) -> np.ndarray:
        """The Markov policy ``pi[h, s, a]`` chosen for ``user``, shape ``(H, S, A)``."""


def behaviour_policy(dataset: PreferenceDataset, *, per_user: bool | None = None) -> np.ndarray:
    """The behaviour policy that collected ``dataset``: uniform when the data say so, otherwise
    the empirical ``pi_h(a | s) = N(h, s, a) / N(h, s)`` of both trajectories of every pair
    (uniform where ``(h, s)`` was never visited).

    Parameters
    ----------
    dataset : PreferenceDataset
    per_user : bool, optional
        ``True``: one empirical policy per user from that user's trajectories, shape
        ``(N, H, S, A)``; ``False``: one policy from all trajectories, ``(H, S, A)``. Default:
        per user exactly when the data were collected with per-user behaviours
        (``metadata["behavior"] == "per_user"``, e.g. :func:`lr_mdp_env.collection.epsilon_optimal_policies`).
    """
    shape = (dataset.horizon, dataset.n_states, dataset.n_actions)
    if per_user is None:
        per_user = dataset.metadata.get("behavior") == "per_user"
    if dataset.metadata.get("behavior") == "uniform":
        uniform = np.full(shape, 1.0 / dataset.n_actions)
        return np.broadcast_to(uniform, (dataset.n_users, *shape)).copy() if per_user else uniform
    states = np.concatenate([dataset.states0, dataset.states1])
    actions = np.concatenate([dataset.actions0, dataset.actions1])
    steps = np.broadcast_to(np.arange(dataset.horizon), states.shape)
    groups = np.concatenate([dataset.users, dataset.users]) if per_user else np.zeros(states.shape[0], dtype=int)
    n_groups = dataset.n_users if per_user else 1
    full_shape = (n_groups, *shape)
    owners = np.broadcast_to(groups[:, None], states.shape)
    flat = np.ravel_multi_index((owners, steps, states, actions), full_shape).ravel()
    counts = np.bincount(flat, minlength=int(np.prod(full_shape))).reshape(full_shape).astype(float)
    visits = counts.sum(axis=-1, keepdims=True)
    policy = np.where(visits > 0, counts / np.where(visits > 0, visits, 1.0), 1.0 / dataset.n_actions)
    return policy if per_user else policy[0]


class PessimisticAgent:
    """A reward estimator followed by greedy, rectangular or exact pessimistic planning.

    Parameters
    ----------
    estimator : RewardEstimator
        Any estimator of :mod:`agents` (or one with ``fit``, ``theta_hat`` and
        ``confidence_set``).
    pessimism : {"exact", "rectangular", "none"}, default "exact"
        ``"exact"``: :func:`agents.planning.robust_optimize` of
        ``L(pi) = min_{theta in C} theta . (d_pi - d_ref)``; ``"rectangular"``: backward
        induction on ``r_hat - radius ||G phi||_{M^{-1}}``; ``"none"``: greedy on ``theta_hat``.
    reference : {"behavior", "uniform"} or array_like of shape (H, S, A) or (N, H, S, A), default "behavior"
        The policy whose expected features are ``d_ref``: by default the behaviour policy of the
        data (:func:`behaviour_policy`), one per user when the data were collected with per-user
        behaviours. Each user is planned against their own ``d_ref``, and ``reference_features``
        is then ``(N, d)``; a new context (contextual estimators) is planned against the pooled
        behaviour.
    transitions : {"known", "estimated"}, default "known"
        ``"estimated"`` plans in the empirical MDP of the dataset's transitions; rectangular
        pessimism then also takes the worst case over an L1 ball around each row.
    tol : float, default 1e-8
        Relative gap of the exact robust solver.
    safeguard : bool, default True
        Rectangular pessimism returns the reference policy for the users whose rectangular
        policy has ``L(pi) < L(ref) = 0`` (:func:`agents.planning.rectangular`), so that
        ``J(pi) >= J(ref)`` whenever the truth is in the set. Exact pessimism needs no
        safeguard: it maximises ``L`` over all policies, the reference among them, so its
        ``L(pi) >= 0`` up to the solver's certified gap.
    """

    def __init__(self, estimator: Any, *, pessimism: str = "exact", reference: Any = "behavior",
                 transitions: str = "known", tol: float = 1e-8, safeguard: bool = True) -> None:
        if pessimism not in PESSIMISM:
            raise ValueError(f"pessimism must be one of {PESSIMISM}, got {pessimism!r}")
        if transitions not in TRANSITIONS:
            raise ValueError(f"transitions must be one of {TRANSITIONS}, got {transitions!r}")
        if isinstance(reference, str) and reference not in ("behavior", "uniform"):
            raise ValueError(f"reference must be 'behavior', 'uniform' or a policy array, got {reference!r}")
        self.estimator = estimator
        self.pessimism = pessimism
        self.reference = reference
        self.transitions = transitions
        self.tol = check_real("tol", tol, 0.0, strict_minimum=True)
        if not isinstance(safeguard, (bool, np.bool_)):
            raise TypeError(f"safeguard must be a bool, got {type(safeguard).__name__}")
        self.safeguard = bool(safeguard)

    def __repr__(self) -> str:
        return (f"PessimisticAgent({type(self.estimator).__name__}, pessimism={self.pessimism!r}, "
                f"transitions={self.transitions!r}, safeguard={self.safeguard!r})")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails (or a property's estimator is unfitted).
        if not name.startswith("__") and "mdp_" not in self.__dict__:
            raise not_fitted(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, dataset: PreferenceDataset, mdp: TabularMDP) -> PessimisticAgent:
        """Fit the estimator, choose ``d_ref`` and the planning MDP; policies are planned lazily."""
        if not isinstance(dataset, PreferenceDataset):
            raise TypeError(f"dataset must be a PreferenceDataset, got {type(dataset).__name__}")
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
        dataset.check_compatible(mdp)
        self.estimator.fit(dataset, mdp)
        self.mdp_ = mdp
        self.transition_radius_ = None
        if self.transitions == "estimated":
            counts = dataset.transition_counts()
            self.mdp_ = planning.empirical_mdp(mdp, counts)
            self.transition_radius_ = l1_transition_radius(counts, getattr(self.estimator, "delta", 0.1))
        if isinstance(self.reference, str):
            reference = uniform_policy(mdp) if self.reference == "uniform" else behaviour_policy(dataset)
        else:
            reference = check_policy(mdp, self.reference, "reference")
        if reference.ndim == 4 and reference.shape[0] != dataset.n_users:
            raise ValueError(f"reference holds {reference.shape[0]} user policies but the dataset has "
                             f"{dataset.n_users} users")
        # New contexts have no behaviour of their own: they are planned against the pooled one.
        self._context_reference_policy = reference if reference.ndim == 3 else \
            (behaviour_policy(dataset, per_user=False) if isinstance(self.reference, str) else reference.mean(axis=0))
        self.reference_policy = reference
        self.reference_features = expected_features(self.mdp_, reference)
        self.context_reference_features = expected_features(self.mdp_, self._context_reference_policy)
        self._policies: dict[Any, np.ndarray] = {}
        self._all_policies: np.ndarray | None = None  # (N, H, S, A), once every user is planned
        self._solutions: dict[Any, Any] = {}
        return self

    # -- what the agent knows ------------------------------------------------------------------

    @property
    def theta_hat(self) -> np.ndarray:
        """Point estimates ``(N, d)``."""
        return self.estimator.theta_hat

    @property
    def subspace(self) -> np.ndarray | None:
        return getattr(self.estimator, "subspace", None)

    @property
    def n_users(self) -> int:
        return self.estimator.theta_hat.shape[0]

    def confidence_set(self, user: int | None = None, *, context: Any = None) -> Ellipsoid:
        """The estimator's set for ``user`` (or, for contextual estimators, ``context=x``)."""
        if "mdp_" not in self.__dict__:
            raise not_fitted(self, "confidence_set")
        if context is not None:
            return self.estimator.confidence_set(context=context)
        return self.estimator.confidence_set(user)

    # -- planning ------------------------------------------------------------------------------

    def policy(self, user: int | None = None, *, context: Any = None) -> np.ndarray:
        """The planned ``(H, S, A)`` policy of ``user`` (or of a context, for contextual agents)."""
        if "mdp_" not in self.__dict__:
            raise not_fitted(self, "policy")
        if (user is None) == (context is None):
            raise ValueError("give exactly one of user and context")
        if context is not None:
            context = as_real_array("context", context, (1,))
            key: Any = ("context", context.tobytes())
        else:
            key = check_int("user", user, minimum=0, maximum=self.n_users - 1)
        if key not in self._policies:
            if self.pessimism == "none" and context is None:
                self._plan_greedy_all()
            elif self.pessimism == "rectangular" and context is None:
                self._plan_rectangular_all()
            else:
                self._policies[key] = frozen(self._plan_one(user, context))
        return self._policies[key]

    def policies(self) -> np.ndarray:
        """Every user's policy, ``(N, H, S, A)``, read-only (exact pessimism solves all users
        together). One array, planned once: ``policy(user)`` is a view of its row."""
        if "mdp_" not in self.__dict__:
            raise not_fitted(self, "policies")
        if self._all_policies is None and self.pessimism == "exact":
            # Users already planned one at a time keep their solutions; the rest are solved together.
            missing = np.array([user for user in range(self.n_users) if user not in self._policies], dtype=int)
            if len(missing):
                sets = [self.confidence_set(int(user)) for user in missing]
                per_user = self.reference_policy.ndim == 4
                solutions = planning.robust_optimize(
                    self.mdp_, sets, self._reference_rows()[missing], self.tol,
                    reference_policy=self.reference_policy[missing] if per_user else self.reference_policy)
                for user, solution in zip(missing, solutions):
                    self._solutions[int(user)], self._policies[int(user)] = solution, solution.policy
            self._keep_policies(np.stack([self._policies[user] for user in range(self.n_users)]))
        elif self._all_policies is None:
            self.policy(0)  # greedy and rectangular planning plan every user in one batch
        return self._all_policies

    def _keep_policies(self, policies: np.ndarray) -> None:
        """Keep every user's policy as rows of one read-only array (no second copy per user)."""
        self._all_policies = frozen(policies)
        for user in range(self.n_users):
            self._policies[user] = self._all_policies[user]

    def _plan_greedy_all(self) -> None:
        self._keep_policies(planning.greedy(self.mdp_, self.theta_hat))

    def _plan_rectangular_all(self) -> None:
        sets = [self.confidence_set(user) for user in range(self.n_users)]
        solution = planning.rectangular(self.mdp_, sets, self._reference_rows(),
                                        transition_radius=self.transition_radius_,
                                        reference_policy=self.reference_policy if self.safeguard else None)
        self._keep_policies(solution.policy)

    def _reference_rows(self) -> np.ndarray:
        """``d_ref`` of every user, ``(N, d)``."""
        return np.broadcast_to(self.reference_features, (self.n_users, self.reference_features.shape[-1]))

    def _plan_one(self, user: int | None, context: Any) -> np.ndarray:
        confidence_set = self.confidence_set(user, context=context)
        if self.pessimism == "none":
            return planning.greedy(self.mdp_, confidence_set.theta_hat)
        if context is not None:
            reference_policy, reference = self._context_reference_policy, self.context_reference_features
        else:
            per_user = self.reference_policy.ndim == 4
            reference_policy = self.reference_policy[user] if per_user else self.reference_policy
            reference = self._reference_rows()[user]
        if self.pessimism == "rectangular":
            return planning.rectangular(self.mdp_, confidence_set, reference,
                                        transition_radius=self.transition_radius_,
                                        reference_policy=reference_policy if self.safeguard else None).policy
        solution = planning.robust_optimize(self.mdp_, confidence_set, reference, self.tol,
                                            reference_policy=reference_policy)
        self._solutions[user if context is None else ("context", np.asarray(context).tobytes())] = solution
        return solution.policy
