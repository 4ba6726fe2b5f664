"""Check an agent against the protocol and the deterministic facts of docs/theory.md.

The agent counterpart of Gymnasium's ``gymnasium.utils.env_checker.check_env``: it fits the agent
on small instances (drawn here from a seed, or given by the caller), and raises
:class:`AgentCheckError` naming the first property that fails, with the instance that shows it.
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy

import lr_mdp_env
from lr_mdp_env import PreferenceDataset, TabularMDP
from lr_mdp_env._progress import progress_bar
from lr_mdp_env._validation import check_int
from lr_mdp_env.dynamic_programming import check_policy
from lr_mdp_env.rewards import ContextualRewards, LowRankRewards

from . import registry
from .agent import Agent
from .confidence import ConfidenceSet, Ellipsoid
from .evaluation import evaluate

#: The properties :func:`check_agent` checks, in the order it checks them on each instance.
PROPERTIES: dict[str, str] = {
    "protocol": "fit(dataset, mdp) returns the agent itself and policy(user) answers for every user",
    "policies": "policy(user) is an (H, S, A) array whose rows are finite, non-negative and sum to 1",
    "mutation": "fit and planning leave every array of the dataset and of the MDP bitwise unchanged",
    "center_in_set": ("confidence_set(user) is an agents.ConfidenceSet that contains its own centre theta_hat, "
                      "whose lower() is attained by its minimizer()"),
    "lower_bound": "J(pi_hat) - J(ref) >= L(pi_hat) whenever the truth lies in the confidence set",
    "pessimism_lemma": "0 <= J(pi*) - J(pi_hat) <= bound whenever the truth lies in the set (exact pessimism)",
    "determinism": "two agents made alike (with the same seed, if they take one) give identical policies",
    "wrong_shape": "fitting on data of other sizes raises ValueError or TypeError, not a crash or a result",
}

# Built-in names that need an argument taken from the instance.
_BUILT_IN_OPTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "p-sharelora": lambda instance: {"rank": instance.rewards.rank},
    "loco-prs": lambda instance: {"rank": instance.rewards.rank},
    "oracle-subspace": lambda instance: {"subspace": instance.rewards.subspace},
}

# Sizes of the drawn instances: small enough that exact pessimism's planner, which dominates a
# check, stays quick, large enough that users differ (N > r) and that the truth lies in many users'
# confidence sets, where the facts bind.
_N_STATES, _N_ACTIONS, _HORIZON = 3, 2, 3
_N_USERS, _RANK, _CONTEXT_DIM, _PAIRS_PER_USER = 4, 2, 3, 30
_WRONG_PAIRS_PER_USER = 4

# Libraries whose own frames must not be where an agent's refusal of bad data comes from.
_LIBRARY_DIRECTORIES = tuple(os.path.dirname(module.__file__) + os.sep for module in (np, scipy, pd))


class AgentCheckError(AssertionError):
    """An agent violates a property of :func:`check_agent`.

    Attributes
    ----------
    property : str
        The key of :data:`PROPERTIES` that failed.
    instance : str
        The instance that shows it: its index, and for a drawn instance the calls that rebuild it.
    reproduce : str
        A call that repeats the failing check.
    """

    def __init__(self, property_: str, message: str, *, agent: str, instance: str, reproduce: str) -> None:
        self.property = property_
        self.instance = instance
        self.reproduce = reproduce
        super().__init__(
            f"[{property_}] {message}\n"
            f"  property: {PROPERTIES[property_]}\n"
            f"  agent: {agent}\n"
            f"  instance: {instance}\n"
            f"  reproduce: {reproduce}"
        )


@dataclass(frozen=True, eq=False)
class CheckInstance:
    """A world to check an agent in: an MDP, its users' true rewards and a dataset collected there.

    Attributes
    ----------
    mdp : TabularMDP
    rewards : LowRankRewards, ContextualRewards or ndarray of shape (d, N)
    dataset : PreferenceDataset
    description : str
        For a drawn instance, Python statements that rebuild it with :mod:`lr_mdp_env`.
    """

    mdp: TabularMDP
    rewards: Any
    dataset: PreferenceDataset
    description: str


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_agent` checked on an agent that passed.

    Attributes
    ----------
    agent : str
    instances : tuple of str
        Descriptions of the instances.
    passed : tuple of str
        Properties checked (keys of :data:`PROPERTIES`).
    skipped : dict
        Property -> why it was not checked.
    covered_cases : int
        ``(instance, user)`` cases whose truth lay in the confidence set, where ``lower_bound``
        and ``pessimism_lemma`` have something to check.
    cases : int
        All ``(instance, user)`` cases.
    """

    agent: str
    instances: tuple[str, ...]
    passed: tuple[str, ...]
    skipped: dict = field(default_factory=dict)
    covered_cases: int = 0
    cases: int = 0

    def __str__(self) -> str:
        lines = [f"{self.agent} passed {len(self.passed)} properties on {len(self.instances)} instance(s):"]
        lines += [f"  ok    {name}: {PROPERTIES[name]}" for name in self.passed]
        lines += [f"  skip  {name}: {reason}" for name, reason in self.skipped.items()]
        if self.cases:
            lines.append(f"  truth in the confidence set in {self.covered_cases} of {self.cases} "
                         "(instance, user) cases")
        return "\n".join(lines)


# -- instances ---------------------------------------------------------------------------------


def _recorded(text: list[str], target: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, appending ``target = function(...)`` to ``text`` as source."""
    def shown(value: Any) -> str:
        if isinstance(value, TabularMDP):
            return "mdp"
        if isinstance(value, (LowRankRewards, ContextualRewards)):
            return "rewards"
        return repr(value)

    arguments = [shown(value) for value in args] + [f"{key}={shown(value)}" for key, value in kwargs.items()]
    text.append(f"{target} = {function.__name__}({', '.join(arguments)})")
    return function(*args, **kwargs)


def draw_instances(n_instances: int = 3, *, seed: int = 0, contextual: bool = False) -> list[CheckInstance]:
    """Small instances for :func:`check_agent`, drawn from ``numpy.random.SeedSequence(seed)``.

    Instance ``k`` uses the ``k``-th spawned child for every seed it needs, so instance ``k`` does
    not depend on ``n_instances``. The MDPs cycle through a random MDP with one-hot features, a
    chain (whose far end uniform data rarely reach) and a stage-dependent random MDP with dense
    features; users are rank-``2`` low-rank rewards (or, with ``contextual=True``, rank-``2``
    contextual rewards over ``3``-dimensional contexts), and each answers ``30`` comparisons of
    uniform trajectories from the Bradley-Terry teacher.

    Parameters
    ----------
    n_instances : int, default 3
    seed : int, default 0
    contextual : bool, default False

    Returns
    -------
    list of CheckInstance
        Each ``description`` is Python source that rebuilds the instance with :mod:`lr_mdp_env`.
    """
    n_instances = check_int("n_instances", n_instances, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(contextual, bool):
        raise TypeError(f"contextual must be a bool, got {contextual!r}")
    instances = []
    for k, child in enumerate(np.random.SeedSequence(seed).spawn(n_instances)):
        mdp_seed, reward_seed, data_seed = (int(value) for value in child.generate_state(3))
        text: list[str] = []
        if k % 3 == 0:
            mdp = _recorded(text, "mdp", lr_mdp_env.random_mdp, _N_STATES, _N_ACTIONS, _HORIZON, seed=mdp_seed)
        elif k % 3 == 1:
            mdp = _recorded(text, "mdp", lr_mdp_env.chain_mdp, _N_STATES, _HORIZON, n_actions=_N_ACTIONS,
                            seed=mdp_seed)
        else:
            mdp = _recorded(text, "mdp", lr_mdp_env.random_mdp, _N_STATES, _N_ACTIONS, _HORIZON, stationary=False,
                            features="dense", n_features=4, seed=mdp_seed)
        if contextual:
            rewards = _recorded(text, "rewards", lr_mdp_env.contextual_rewards, mdp.n_features, _CONTEXT_DIM, _RANK,
                                n_users=_N_USERS, condition_number=2.0, mdp=mdp, scale=2.0, seed=reward_seed)
        else:
            rewards = _recorded(text, "rewards", lr_mdp_env.low_rank_rewards, mdp.n_features, _N_USERS, _RANK,
                                condition_number=2.0, mdp=mdp, scale=2.0, seed=reward_seed)
        dataset = _recorded(text, "dataset", lr_mdp_env.collect_preferences, mdp, rewards, _PAIRS_PER_USER,
                            seed=data_seed)
        instances.append(CheckInstance(mdp, rewards, dataset, "; ".join(text)))
    return instances


def _as_instance(value: Any, index: int) -> CheckInstance:
    if isinstance(value, CheckInstance):
        return value
    try:
        mdp, rewards, dataset = value
    except (TypeError, ValueError):
        raise TypeError(
            f"instances[{index}] must be a CheckInstance or an (mdp, rewards, dataset) triple such as "
            f"lr_mdp_env.testing.CollectedPreferences, got {type(value).__name__}"
        ) from None
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"instances[{index}]: mdp must be a TabularMDP, got {type(mdp).__name__}")
    if not isinstance(dataset, PreferenceDataset):
        raise TypeError(f"instances[{index}]: dataset must be a PreferenceDataset, got {type(dataset).__name__}")
    dataset.check_compatible(mdp)
    description = (f"given instance: {mdp!r}, {dataset.n_users} users, {dataset.n_pairs} pairs"
                   + (", contextual" if dataset.contexts is not None else ""))
    return CheckInstance(mdp, rewards, dataset, description)


# -- making agents -----------------------------------------------------------------------------


class _Source:
    """Makes fresh agents for an instance from a name, a factory or (by deep copy) an agent."""

    def __init__(self, agent_or_factory: Any, options: Any) -> None:
        self.template = None
        self.options = options
        self.instance_options = None
        self.contextual = False
        if isinstance(agent_or_factory, str):
            if agent_or_factory not in registry.registered():
                raise ValueError(f"unknown agent {agent_or_factory!r}; registered agents: {registry.registered()}")
            name = agent_or_factory
            self.factory = lambda **kwargs: registry.make(name, **kwargs)
            self.takes_seed = registry.takes(name, "seed")
            self.maker, self.leading = "agents.make", [repr(name)]
            self.instance_options = _BUILT_IN_OPTIONS.get(name)
            self.contextual = registry.is_contextual(name)
            self.description = repr(name)
        elif isinstance(agent_or_factory, type) or (callable(agent_or_factory)
                                                     and not isinstance(agent_or_factory, Agent)):
            # A class is checked first: the class of an agent has fit and policy too.
            self.factory = agent_or_factory
            self.takes_seed = registry.takes(agent_or_factory, "seed")
            self.description = getattr(agent_or_factory, "__qualname__", repr(agent_or_factory))
            self.maker, self.leading = self.description, []
        elif isinstance(agent_or_factory, Agent):
            if options is not None:
                raise ValueError("options are arguments of a factory; an agent instance takes none")
            self.template = agent_or_factory
            self.takes_seed = False
            self.description = repr(agent_or_factory)
            self.contextual = registry.is_contextual(agent_or_factory)
        else:
            raise TypeError(
                "agent_or_factory must be a registered name, a class or factory returning an agent, or an "
                f"agent with fit(dataset, mdp) and policy(user); got {type(agent_or_factory).__name__}"
            )
        if isinstance(options, Mapping):
            self.description += f", options={dict(options)!r}"

    def kwargs(self, instance: CheckInstance, seed: int) -> dict[str, Any]:
        kwargs = dict(self.instance_options(instance)) if self.instance_options else {}
        kwargs.update((self.options(instance) if callable(self.options) else self.options) or {})
        if self.takes_seed:
            kwargs["seed"] = seed
        return kwargs

    def make(self, instance: CheckInstance, seed: int) -> Any:
        if self.template is not None:
            return copy.deepcopy(self.template)
        return self.factory(**self.kwargs(instance, seed))

    def call_text(self, instance: CheckInstance, seed: int) -> str:
        """The call that makes the agent checked on ``instance`` (arrays shown by their shape)."""
        if self.template is not None:
            return "copy.deepcopy(agent)"
        try:
            kwargs = self.kwargs(instance, seed)
        except Exception:  # noqa: BLE001 -- the failure itself is reported by the caller
            return f"{self.maker}(...)"
        shown = [f"{key}=<array {np.shape(value)}>" if isinstance(value, np.ndarray) else f"{key}={value!r}"
                 for key, value in kwargs.items()]
        return f"{self.maker}({', '.join(self.leading + shown)})"


# -- the checks --------------------------------------------------------------------------------


def check_agent(
    agent_or_factory: Any,
    *,
    instances: Sequence[Any] | None = None,
    n_instances: int = 3,
    seed: int = 0,
    options: Mapping[str, Any] | Callable[[CheckInstance], Mapping[str, Any]] | None = None,
    contextual: bool | None = None,
    skip: Sequence[str] = (),
    progress: bool = True,
) -> CheckReport:
    """Check that an agent follows the protocol of docs/algorithms.md, Agents and the facts of docs/theory.md.

    On each instance the agent is made, fitted and asked for every user's policy; the properties
    of :data:`PROPERTIES` are checked in this order:

    ``protocol``
        ``fit(dataset, mdp)`` returns the agent itself and ``policy(user)`` answers for each user.
    ``policies``
        Each policy has shape ``(H, S, A)``, is finite and non-negative, and its rows sum to 1
        within ``1e-8`` (the tolerance of :class:`~lr_mdp_env.TabularMDP`'s transition rows).
    ``mutation``
        Every array of the :class:`~lr_mdp_env.PreferenceDataset` (and its metadata) and of the
        MDP is bitwise the same after ``fit`` and after planning as before.
    ``center_in_set``, ``lower_bound``, ``pessimism_lemma``
        For agents exposing ``confidence_set(user)``, ``reference_features`` and ``theta_hat``:
        the set is an :class:`~agents.ConfidenceSet` (the set protocol) containing its own centre
        ``theta_hat`` (which may differ from the point estimate ``theta_hat[user]`` when the set is
        built around an inference refit), and on a few random directions ``v`` its
        ``minimizer(v)`` lies in it and attains ``lower(v) <= theta_hat . v <= upper(v)``; by
        :func:`agents.evaluate`, whenever the truth (its projection, for reduced sets) lies in the
        set, ``J(pi_hat) - J(ref) >= L(pi_hat)`` up to the misspecification of the projection,
        and, for agents whose ``pessimism`` attribute is ``"exact"``,
        ``0 <= J(pi*) - J(pi_hat) <= bound`` up to the planner's relative gap ``tol``.
        Skipped for agents planning in estimated transitions (``transitions != "known"``): the
        facts are about the true MDP.
    ``determinism``
        A second agent made with the same seed and fitted on the same data gives bitwise the
        same policies. For an agent *instance* both agents are deep copies of it, so global or
        unseeded randomness is caught but whether a ``seed`` argument is honoured is not.
    ``wrong_shape`` (first instance only)
        Fitting on data collected in an MDP with one more state, action or step raises
        ``ValueError`` or ``TypeError`` from the agent's own code (not ``IndexError``, not an
        error from inside numpy, scipy or pandas, and not a successful fit). A dataset does not
        record features, so fitting it with an MDP that differs only in ``n_features`` may also
        succeed (then its policies are checked) unless the agent was configured for the first
        ``d`` (e.g. ``oracle-subspace``'s ``subspace``), when it must raise.

    Parameters
    ----------
    agent_or_factory : str, callable or agent
        A registered name (:func:`agents.registered`); a class or function returning a new
        agent, called with ``seed=`` when it takes ``seed`` or ``**kwargs``; or an agent, which
        is deep-copied for every fit.
    instances : sequence, optional
        Worlds to check on: :class:`CheckInstance` or ``(mdp, rewards, dataset)`` triples such
        as the ``CollectedPreferences`` drawn by
        :func:`lr_mdp_env.testing.preference_datasets`. Default: ``draw_instances(n_instances,
        seed=seed, contextual=contextual)``.
    n_instances : int, default 3
    seed : int, default 0
        Seeds the drawn instances and the agents (``SeedSequence(seed).spawn``).
    options : dict or callable, optional
        Keyword arguments for the factory, or a function of the :class:`CheckInstance` returning
        them (e.g. ``lambda instance: {"rank": instance.rewards.rank}``). Built-in names get
        ``rank`` (``p-sharelora``, ``loco-prs``) and ``subspace`` (``oracle-subspace``) from the
        instance's true rewards unless given.
    contextual : bool, optional
        Draw contextual instances (given instances are used as they are). Default: for the
        agents :func:`agents.registry.is_contextual` names (``loco-prs``, ``full-rank``, names
        registered with ``contextual=True`` and agents around the contextual estimators).
    skip : sequence of str
        Properties not to check (any of :data:`PROPERTIES` but ``protocol``).
    progress : bool, default True
        A bar over the instances on a terminal once the check runs a couple of seconds
        (``lr_mdp_env._progress``); ``False``: none. Nothing is printed otherwise.

    Returns
    -------
    CheckReport
        What was checked and skipped.

    Raises
    ------
    AgentCheckError
        At the first violated property; the message names it and the instance, with a call that
        reproduces it.

    References
    ----------
    Gymnasium's ``gymnasium.utils.env_checker.check_env``, of which this is the agent
    counterpart. Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback
    from Pairwise or K-wise Comparisons*, ICML 2023 (the pessimism lemma).
    """
    seed = check_int("seed", seed, minimum=0)
    n_instances = check_int("n_instances", n_instances, minimum=1)
    if isinstance(skip, str):
        skip = (skip,)
    unknown = sorted(set(skip) - set(PROPERTIES))
    if unknown:
        raise ValueError(f"skip has unknown properties {unknown}; known: {list(PROPERTIES)}")
    if "protocol" in skip:
        raise ValueError("protocol cannot be skipped: every other property needs a fitted agent")
    if options is not None and not (callable(options) or isinstance(options, Mapping)):
        raise TypeError(f"options must be a dict or a function of the instance, got {type(options).__name__}")
    source = _Source(agent_or_factory, options)
    if contextual is None:
        contextual = source.contextual
    if instances is None:
        instances = draw_instances(n_instances, seed=seed, contextual=contextual)
        given = False
    else:
        if isinstance(instances, CheckInstance) or (
                isinstance(instances, tuple) and len(instances) == 3 and isinstance(instances[0], TabularMDP)):
            instances = [instances]  # one instance rather than a sequence of them
        instances = [_as_instance(value, index) for index, value in enumerate(instances)]
        if not instances:
            raise ValueError("instances must not be empty")
        given = True
    agent_seeds = [int(child.generate_state(1)[0])
                   for child in np.random.SeedSequence([seed, 1]).spawn(len(instances))]

    skipped = {name: "skipped on request" for name in skip}
    where = "instances=instances" if given else f"n_instances={len(instances)}, seed={seed}"
    if not given and contextual != source.contextual:
        where += f", contextual={contextual}"
    if skip:
        where += f", skip={tuple(skip)!r}"
    checker = _Checker(source, skipped, where, instances)
    with progress_bar(len(instances), f"check_agent {source.description}", progress, unit="instance") as bar:
        for instance, agent_seed in zip(instances, agent_seeds):
            checker.check_instance(instance, agent_seed)
            bar.update()
    if "wrong_shape" not in skipped:
        checker.check_wrong_shapes(instances[0], agent_seeds[0])
    passed = tuple(name for name in PROPERTIES if name not in skipped)
    return CheckReport(source.description, tuple(instance.description for instance in instances), passed,
                       skipped, checker.covered, checker.cases)


class _Checker:
    """Runs the checks of :func:`check_agent`; ``skipped`` grows as properties turn out not to apply."""

    def __init__(self, source: _Source, skipped: dict, where: str, instances: list) -> None:
        self.source = source
        self.skipped = skipped
        self.where = where
        self.n_instances = len(instances)
        self.index = {id(instance): index for index, instance in enumerate(instances)}
        self.covered = 0
        self.cases = 0

    # -- reporting -----------------------------------------------------------------------------

    def fail(self, property_: str, message: str, instance: CheckInstance, agent_seed: int) -> None:
        reproduce = (f"agents.check_agent({self.source.description}, {self.where}); the failing agent is "
                     f"{self.source.call_text(instance, agent_seed)}")
        label = f"{self.index[id(instance)]} of {self.n_instances}: {instance.description}"
        raise AgentCheckError(property_, message, agent=self.source.description, instance=label,
                              reproduce=reproduce)

    def wanted(self, property_: str) -> bool:
        return property_ not in self.skipped

    # -- one instance ----------------------------------------------------------------------------

    def check_instance(self, instance: CheckInstance, agent_seed: int) -> None:
        mdp, dataset = instance.mdp, instance.dataset
        agent = self.make(instance, agent_seed)
        before = _fingerprint(dataset, mdp)
        self.fit(agent, dataset, mdp, instance, agent_seed)
        self.unchanged(before, "fit(dataset, mdp)", instance, agent_seed)
        policies = self.policies(agent, mdp, dataset.n_users, instance, agent_seed)
        self.unchanged(before, "policy(user)", instance, agent_seed)
        self.confidence_facts(agent, instance, agent_seed)
        self.unchanged(before, "confidence_set(user) and agents.evaluate", instance, agent_seed)
        if self.wanted("determinism"):
            twin = self.make(instance, agent_seed)
            self.fit(twin, dataset, mdp, instance, agent_seed)
            twin_policies = self.policies(twin, mdp, dataset.n_users, instance, agent_seed)
            for user, (first, second) in enumerate(zip(policies, twin_policies)):
                if not (first.shape == second.shape and np.array_equal(first, second)):
                    made = self.source.call_text(instance, agent_seed)
                    difference = np.max(np.abs(first - second)) if first.shape == second.shape else "shapes differ"
                    self.fail("determinism",
                              f"Two agents made by `{made}` and fitted on the same data gave different policies "
                              f"for user {user} (largest difference {difference}). Most likely the agent draws "
                              "from numpy's global random state or an unseeded Generator instead of one built "
                              "from its `seed`.", instance, agent_seed)

    def make(self, instance: CheckInstance, agent_seed: int) -> Any:
        made = self.source.call_text(instance, agent_seed)
        try:
            agent = self.source.make(instance, agent_seed)
        except Exception as error:  # noqa: BLE001 -- any failure to build is reported as such
            self.fail("protocol", f"Could not make an agent: `{made}` raised {type(error).__name__}: {error} "
                      "(pass options= for required arguments)", instance, agent_seed)
        if not isinstance(agent, Agent):
            self.fail("protocol", f"`{made}` returned {type(agent).__name__}, which lacks fit(dataset, mdp) or "
                      "policy(user).", instance, agent_seed)
        return agent

    def fit(self, agent: Any, dataset: PreferenceDataset, mdp: TabularMDP, instance: CheckInstance,
            agent_seed: int) -> None:
        try:
            result = agent.fit(dataset, mdp)
        except Exception as error:  # noqa: BLE001
            hint = ("; the dataset has no contexts: pass contextual=True for agents that need contextual data"
                    if dataset.contexts is None and "context" in str(error) else "")
            self.fail("protocol", f"`agent.fit(dataset, mdp)` raised {type(error).__name__} on a valid instance: "
                      f"{error}{hint}", instance, agent_seed)
        if result is not agent:
            self.fail("protocol", f"`agent.fit(dataset, mdp)` returned {type(result).__name__} instead of the "
                      "agent itself (`return self`), so `agent.fit(...).policy(0)` would not work.",
                      instance, agent_seed)

    def policies(self, agent: Any, mdp: TabularMDP, n_users: int, instance: CheckInstance,
                 agent_seed: int) -> list[np.ndarray]:
        expected = (mdp.horizon, mdp.n_states, mdp.n_actions)
        policies = []
        for user in range(n_users):
            try:
                policy = agent.policy(user)
            except Exception as error:  # noqa: BLE001
                self.fail("protocol", f"`agent.policy({user})` raised {type(error).__name__}: {error}",
                          instance, agent_seed)
            array = np.asarray(policy)
            if self.wanted("policies"):
                if array.shape != expected:
                    self.fail("policies", f"`agent.policy({user})` has shape {array.shape}, not (H, S, A) = "
                              f"{expected}.", instance, agent_seed)
                if array.dtype.kind not in "fiub":
                    self.fail("policies", f"`agent.policy({user})` has dtype {array.dtype}, not real numbers.",
                              instance, agent_seed)
                try:
                    check_policy(mdp, array, f"agent.policy({user})")
                except (ValueError, TypeError) as error:
                    self.fail("policies", f"{error}.", instance, agent_seed)
            policies.append(np.array(array, copy=True))
        return policies

    def unchanged(self, before: dict, during: str, instance: CheckInstance, agent_seed: int) -> None:
        if not self.wanted("mutation"):
            return
        after = _fingerprint(instance.dataset, instance.mdp)
        changed = [name for name in before if before[name] != after[name]]
        if changed:
            self.fail("mutation", f"`agent.{during}` changed {', '.join(changed)} in place. An agent must treat "
                      "the dataset and the MDP as read-only (copy an array before changing it).",
                      instance, agent_seed)

    # -- confidence sets -----------------------------------------------------------------------

    def confidence_facts(self, agent: Any, instance: CheckInstance, agent_seed: int) -> None:
        names = ("center_in_set", "lower_bound", "pessimism_lemma")
        if not any(self.wanted(name) for name in names):
            return
        missing = [name for name in ("confidence_set", "reference_features", "theta_hat") if not hasattr(agent, name)]
        if missing:
            for name in names:
                self.skipped.setdefault(name, f"the agent has no {', '.join(missing)}")
            return
        if getattr(agent, "transitions", "known") != "known":
            for name in names:
                self.skipped.setdefault(name, "the agent plans in estimated transitions; the facts are about "
                                              "the true MDP")
            return
        mdp, dataset = instance.mdp, instance.dataset
        if self.wanted("center_in_set"):
            theta_hat = np.asarray(agent.theta_hat, dtype=float)
            if theta_hat.shape != (dataset.n_users, mdp.n_features):
                self.fail("center_in_set", f"`agent.theta_hat` has shape {theta_hat.shape}, not (N, d) = "
                          f"{(dataset.n_users, mdp.n_features)}.", instance, agent_seed)
            directions = np.random.default_rng([agent_seed, 3]).standard_normal((3, mdp.n_features))
            for user in range(dataset.n_users):
                region = agent.confidence_set(user)
                if not isinstance(region, ConfidenceSet):
                    self.fail("center_in_set", f"`agent.confidence_set({user})` returned {type(region).__name__}, "
                              "not an agents.ConfidenceSet (the set protocol the planners use).", instance, agent_seed)
                self.set_protocol(region, user, directions, instance, agent_seed)
        if not (self.wanted("lower_bound") or self.wanted("pessimism_lemma")):
            return
        try:
            report = evaluate(agent, mdp, instance.rewards, progress=False)
        except (ValueError, TypeError) as error:
            self.fail("policies", f"`agents.evaluate(agent, mdp, rewards)` refused the agent's policies: {error}",
                      instance, agent_seed)
        exact = getattr(agent, "pessimism", None) == "exact"
        if not exact:
            self.skipped.setdefault("pessimism_lemma", "the agent's pessimism is not 'exact'")
        gap_tolerance = float(getattr(agent, "tol", 1e-8))
        for row in report.itertuples():
            self.cases += 1
            if not row.truth_in_set:
                continue
            self.covered += 1
            # Both sides are exact dynamic-programming values, equal up to rounding (~1e-15 relative
            # per operation) and contains()'s 1e-12 relative slack on the radius: 1e-9 relative to
            # the values involved is far above both and far below any real violation.
            rounding = 1e-9 * (1.0 + abs(row.value) + abs(row.reference_value) + abs(row.lower_bound))
            # For reduced sets only the truth's projection is in the set; the rest of the truth
            # moves theta* . (d_pi - d_ref) by at most misspecification / 2 (evaluate's column).
            slack = 0.5 * row.misspecification
            gain = row.value - row.reference_value
            if self.wanted("lower_bound") and gain < row.lower_bound - slack - rounding:
                self.fail("lower_bound", f"For user {row.user} the truth lies in the confidence set, yet "
                          f"J(pi_hat) - J(ref) = {gain:.9g} is below the pessimistic objective "
                          f"L(pi_hat) = {row.lower_bound:.9g} (misspecification slack {slack:.3g}). The set's "
                          "lower(v) is not a lower bound over its own members: lower() and contains() disagree.",
                          instance, agent_seed)
            if exact and self.wanted("pessimism_lemma"):
                # The exact planner stops at a relative gap tol: L(pi_hat) >= max L - tol max(1, |L|),
                # which enters the lemma's bound additively.
                gap = gap_tolerance * max(1.0, abs(row.lower_bound))
                if not -rounding <= row.suboptimality <= row.bound + gap + rounding:
                    self.fail("pessimism_lemma", f"For user {row.user} the truth lies in the confidence set, "
                              f"yet the sub-optimality {row.suboptimality:.9g} is outside [0, bound + gap] = "
                              f"[0, {row.bound:.9g} + {gap:.3g}]. The policy does not maximise the pessimistic "
                              "objective of its set.", instance, agent_seed)

    def set_protocol(self, region: ConfidenceSet, user: int, directions: np.ndarray, instance: CheckInstance,
                     agent_seed: int) -> None:
        """The facts of the set protocol that the planners rely on, for any kind of set: the set
        contains its own ``theta_hat`` (the rectangular bonus ``theta_hat . v - lower(v)`` and the
        exact planner's first answer are taken there), and ``minimizer(v)`` is a member attaining
        ``lower(v) <= theta_hat . v <= upper(v)`` (the exact planner's certificates and
        Frank-Wolfe steps are minimisers)."""
        label = f"`agent.confidence_set({user})`"
        member = np.asarray(region.theta_hat, dtype=float)
        if not region.contains(member):
            where = (f"its distance {region.distance(member):.6g} exceeds the radius {region.radius:.6g} (or it is "
                     "off the set's span)" if isinstance(region, Ellipsoid) else "contains() says it is outside")
            self.fail("center_in_set", f"{label} does not contain its own centre `theta_hat`: {where}. A set's "
                      "theta_hat must be a member of it: the planners start from it.", instance, agent_seed)
        lower = np.asarray(region.lower(directions), dtype=float)
        upper = np.asarray(region.upper(directions), dtype=float)
        minimizers = np.asarray(region.minimizer(directions), dtype=float)
        centre = directions @ member
        # Support functions are a few dozen floating-point operations on O(1) numbers: 1e-9
        # relative to the values involved is far above rounding and far below any real error.
        scale = 1e-9 * (1.0 + np.abs(centre) + np.abs(lower) + np.abs(upper))
        for row, v in enumerate(directions):
            attained = float(minimizers[row] @ v)
            if not (lower[row] <= centre[row] + scale[row] and centre[row] <= upper[row] + scale[row]):
                self.fail("center_in_set", f"{label}: lower(v) = {lower[row]:.9g} <= theta_hat . v = {centre[row]:.9g} "
                          f"<= upper(v) = {upper[row]:.9g} fails for a random v: lower() and upper() are not the "
                          "extremes of theta . v over a set containing theta_hat.", instance, agent_seed)
            # The minimiser lies on the boundary, where contains() is as exact as the set's
            # conditioning allows: the point a millionth of the way back towards theta_hat is asked.
            inside = region.contains(member + (1 - 1e-6) * (minimizers[row] - member))
            if abs(attained - lower[row]) > scale[row] or not inside:
                self.fail("center_in_set", f"{label}: minimizer(v) . v = {attained:.9g} does not attain lower(v) = "
                          f"{lower[row]:.9g} for a random v, or minimizer(v) is outside the set.", instance, agent_seed)

    # -- wrong shapes ----------------------------------------------------------------------------

    def check_wrong_shapes(self, instance: CheckInstance, agent_seed: int) -> None:
        mdp, dataset = instance.mdp, instance.dataset
        rng = np.random.default_rng([agent_seed, 2])  # the other worlds, seeded like the agent
        for size in ("n_states", "n_actions", "horizon"):
            sizes = {"n_states": mdp.n_states, "n_actions": mdp.n_actions, "horizon": mdp.horizon}
            sizes[size] += 1
            other_mdp = lr_mdp_env.random_mdp(sizes["n_states"], sizes["n_actions"], sizes["horizon"], seed=rng)
            other_data = _collect_like(other_mdp, dataset, rng)
            what = (f"a dataset collected in an MDP with {size}={sizes[size]} fitted with the instance's MDP "
                    f"({size}={sizes[size] - 1})")
            self.refuses(instance, agent_seed, other_data, mdp, what, may_succeed=False)
        features = lr_mdp_env.dense_features(mdp.n_states, mdp.n_actions, mdp.n_features + 1, seed=rng)
        other_mdp = TabularMDP(mdp.transitions, mdp.initial_distribution, features=features)
        what = f"the instance's dataset fitted with an MDP of n_features={mdp.n_features + 1} (not {mdp.n_features})"
        self.refuses(instance, agent_seed, dataset, other_mdp, what, may_succeed=True)

    def refuses(self, instance: CheckInstance, agent_seed: int, dataset: PreferenceDataset, mdp: TabularMDP,
                what: str, *, may_succeed: bool) -> None:
        agent = self.make(instance, agent_seed)
        try:
            agent.fit(dataset, mdp)
            if may_succeed:  # the fit must have produced a working agent; one user shows it
                self.policies(agent, mdp, 1, instance, agent_seed)
        except (ValueError, TypeError) as error:
            origin = _library_origin(error)
            if origin is not None:
                self.fail("wrong_shape", f"On {what}, `agent.fit` raised {type(error).__name__} from inside "
                          f"{origin} ({error}) instead of checking the sizes itself; compare the dataset's "
                          "n_states, n_actions and horizon with the MDP's first, e.g. with "
                          "`dataset.check_compatible(mdp)`.", instance, agent_seed)
            return
        except AgentCheckError:
            raise
        except Exception as error:  # noqa: BLE001
            self.fail("wrong_shape", f"On {what}, `agent.fit` crashed with {type(error).__name__}: {error}. It "
                      "should raise ValueError naming the mismatched size, e.g. with "
                      "`dataset.check_compatible(mdp)`.", instance, agent_seed)
        if not may_succeed:
            self.fail("wrong_shape", f"On {what}, `agent.fit` succeeded silently. It should raise ValueError "
                      "naming the mismatched size, e.g. with `dataset.check_compatible(mdp)`.",
                      instance, agent_seed)


def _collect_like(mdp: TabularMDP, dataset: PreferenceDataset, rng: np.random.Generator) -> PreferenceDataset:
    """A few pairs for the same number of users in ``mdp``, contextual when ``dataset`` is."""
    if dataset.contexts is not None:
        rewards = lr_mdp_env.contextual_rewards(mdp.n_features, dataset.contexts.shape[1], 1,
                                                n_users=dataset.n_users, mdp=mdp, seed=rng)
    else:
        rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, dataset.n_users, 1, mdp=mdp, seed=rng)
    return lr_mdp_env.collect_preferences(mdp, rewards, _WRONG_PAIRS_PER_USER, seed=rng)


def _library_origin(error: BaseException) -> str | None:
    """``"numpy"``, ``"scipy"`` or ``"pandas"`` when the innermost frame of ``error`` is theirs."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    filename = os.path.abspath(frames[-1].filename)
    for directory in _LIBRARY_DIRECTORIES:
        if filename.startswith(directory):
            return os.path.basename(os.path.dirname(directory))
    return None


def _fingerprint(dataset: PreferenceDataset, mdp: TabularMDP) -> dict[str, tuple]:
    """Every array of the dataset and the MDP as ``(dtype, shape, bytes)``, plus sizes and metadata."""
    arrays = {f"dataset.{name}": getattr(dataset, name) for name in
              ("users", "states0", "actions0", "states1", "actions1", "labels", "probabilities", "contexts")}
    arrays.update({f"mdp.{name}": getattr(mdp, name) for name in
                   ("transitions", "initial_distribution", "features")})
    fingerprint = {}
    for name, array in arrays.items():
        if array is None:
            fingerprint[name] = (None,)
        else:
            array = np.asarray(array)
            fingerprint[name] = (array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes())
    for name in ("n_users", "n_states", "n_actions", "horizon"):
        fingerprint[f"dataset.{name}"] = (getattr(dataset, name),)
    fingerprint["dataset.metadata"] = (json.dumps(dataset.metadata, sort_keys=True, default=repr),)
    return fingerprint
