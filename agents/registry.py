"""Agents by name: ``agents.make(name, **kwargs)`` and ``agents.register(name, factory)``.

Built-in agents are registered exactly as a user's own agent is, with a factory that turns
keyword arguments into an unfitted agent. A factory's signature is its list of options: a
misspelt or missing option is reported with the valid ones before the factory runs.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from .agent import PessimisticAgent
from .contextual import FullRankContextual, LoCoPRS
from .estimators import IndependentMLE, OracleSubspaceMLE, PooledMLE, PShareLoRA

_REGISTRY: dict[str, Callable[..., Any]] = {}
#: Registered names whose agents learn a contextual reward (their data must carry contexts).
_CONTEXTUAL: set[str] = set()
#: Options of the planner (:class:`PessimisticAgent`); the rest go to the estimator.
_AGENT_OPTIONS = ("safeguard", "pessimism", "reference", "transitions", "tol")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def register(name: str, factory: Callable[..., Any], *, overwrite: bool = False, contextual: bool = False) -> None:
    """Make ``agents.make(name, **kwargs)`` return ``factory(**kwargs)``.

    Parameters
    ----------
    name : str
        Non-empty; taken names need ``overwrite=True``.
    factory : callable
        A class or function returning an object with ``fit(dataset, mdp)`` and ``policy(user)``.
        Its keyword parameters are the agent's options: :func:`make` refuses others (unless it
        takes ``**kwargs``) and asks for those without a default.
    overwrite : bool, default False
    contextual : bool, default False
        Whether the agent learns a contextual reward ``theta(x)`` and so needs comparisons
        that carry users' contexts (:func:`is_contextual`).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable (a class or function), got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"an agent named {name!r} is already registered; pass overwrite=True to replace it")
    if not isinstance(contextual, bool):
        raise TypeError(f"contextual must be a bool, got {contextual!r}")
    _REGISTRY[name] = factory
    if contextual:
        _CONTEXTUAL.add(name)
    else:
        _CONTEXTUAL.discard(name)


def make(name: str, **kwargs: Any) -> Any:
    """A new, unfitted agent registered under ``name``.

    Built-in names (each a :class:`PessimisticAgent` around an estimator) and their required
    arguments: ``pooled``, ``independent``, ``p-sharelora`` (``rank=``; also
    ``subspace_error="bootstrap"``, or ``"ignore"`` for a set that covers only the truth's
    projection onto the estimated subspace, ``n_bootstrap=None`` (``max(19, ceil(2 / delta) - 1)`` refits)
    and ``max_sine=0.4`` (the bound on the subspace angle beyond which the sets fall back to the
    full-dimensional ones)), ``loco-prs`` (``rank=``; also ``balance=1.0``, ``subspaces=None``, ``subspace_error="bootstrap"``,
    ``n_bootstrap=None`` (``max(19, ceil(2 / delta) - 1)`` refits)), ``oracle-subspace`` (``subspace=``,
    the true ``U*``), ``full-rank``. Every built-in name takes, with these defaults:

    - the planner's ``pessimism="exact"`` (or ``"rectangular"``, ``"none"``: greedy),
      ``reference="behavior"`` (the data's behaviour policy; or ``"uniform"``, or a policy
      array), ``transitions="known"`` (or ``"estimated"``), ``tol=1e-08`` (relative gap of
      the exact planner) and ``safeguard=True`` (rectangular pessimism falls back on the
      reference policy where its own has ``L(pi) < 0``);
    - the estimator's ``ridge=None`` (chosen from ``ridge_grid`` by held-out log-likelihood),
      ``ridge_grid=(100.0, 10.0, 1.0, 0.1, 0.01)``, ``beta=1.0``, ``confidence="wald"`` (the
      kind of confidence set: ``"wald"``, ``"likelihood"`` (Wilks likelihood ratio), ``"finite"``
      (finite-sample likelihood ratio) or ``"theory"`` (self-normalised ellipsoid, vacuous in
      practice); docs/confidence_sets.md), ``delta=0.1``, ``norm_bound=None`` (for ``"theory"``;
      a data-driven guess), ``inference_ridge=0.0001`` (of the refit the sets are built around),
      ``base=None`` (no known base reward), ``seed=0`` (of the ridge-selection split) and
      ``progress=True`` (a bar over the fits on a terminal; ``False``: none).

    ``agents.options(name)`` lists the options of any registered name with their defaults.

    Raises
    ------
    ValueError
        For an unknown name (with the nearest registered one) or a value the agent rejects.
    TypeError
        For an option the agent does not have (with the nearest valid one and the full list),
        a missing required one, or a value of the wrong type.
    """
    factory = _factory(name)
    accepted = options(name)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise TypeError(f"agent {name!r} has no option {key!r}{_suggestion(key, accepted)}; "
                                f"its options are {_listing(accepted)}")
    missing = [key for key, default in _parameters(factory).items()
               if default is inspect.Parameter.empty and key not in kwargs]
    if missing:
        raise TypeError(f"agent {name!r} needs {', '.join(f'{key}=' for key in missing)}; "
                        f"its options are {_listing(accepted or _parameters(factory))}")
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise TypeError(f"agent {name!r}: {error}") from None
    except ValueError as error:
        raise ValueError(f"agent {name!r}: {error}") from None


def options(name: str) -> dict[str, Any] | None:
    """The options ``agents.make(name, ...)`` accepts, with their defaults.

    Required options map to ``inspect.Parameter.empty``. ``None`` when the factory takes
    ``**kwargs`` (any keyword may be valid) or has no signature.
    """
    factory = _factory(name)
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return _parameters(factory)


def takes(agent: str | Callable[..., Any], argument: str) -> bool:
    """Whether a factory, or the factory registered under the name ``agent``, accepts the
    keyword ``argument`` (explicitly or through ``**kwargs``); the built-in agents take ``seed``."""
    if isinstance(agent, str):
        agent = _factory(agent)
    try:
        parameters = inspect.signature(agent).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def is_contextual(agent: Any) -> bool:
    """Whether an agent learns a contextual reward, so that its data must carry contexts.

    Parameters
    ----------
    agent : str or object
        A registered name (its ``contextual`` flag of :func:`register`; ``loco-prs`` and
        ``full-rank`` among the built-in names), or an agent (or estimator): contextual when its
        ``estimator`` (or itself) is one of the built-in contextual estimators,
        :class:`~agents.LoCoPRS` and :class:`~agents.FullRankContextual`.

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        For a name that is not registered.

    References
    ----------
    Lee, Sun and Liu, arXiv:2412.19436 (LoCo-RLHF's contextual reward model).
    """
    if isinstance(agent, str):
        _factory(agent)
        return agent in _CONTEXTUAL
    estimator = getattr(agent, "estimator", agent)
    return isinstance(estimator, _CONTEXTUAL_ESTIMATORS)


def registered() -> list[str]:
    """Names :func:`make` accepts."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., Any]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown agent {name!r}{_suggestion(name, _REGISTRY)}; registered agents: {registered()}")
    return _REGISTRY[name]


def _parameters(factory: Callable[..., Any]) -> dict[str, Any]:
    """Named keyword parameters of ``factory`` and their defaults (empty when unavailable)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {parameter.name: parameter.default for parameter in parameters if parameter.kind in _NAMED}


def _suggestion(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(parameters: dict[str, Any]) -> str:
    return ", ".join(key if default is inspect.Parameter.empty else f"{key}={default!r}"
                     for key, default in parameters.items())


def _estimator_parameters(estimator_class: type) -> list[inspect.Parameter]:
    """The estimator's own parameters, then those its ``**kwargs`` pass to its base classes."""
    found: dict[str, inspect.Parameter] = {}
    for klass in estimator_class.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        for parameter in parameters:
            if parameter.kind in _NAMED:
                found.setdefault(parameter.name, parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
            break
    return list(found.values())


def _built_in(estimator_class: type) -> Callable[..., PessimisticAgent]:
    def factory(**kwargs: Any) -> PessimisticAgent:
        agent_options = {key: kwargs.pop(key) for key in _AGENT_OPTIONS if key in kwargs}
        return PessimisticAgent(estimator_class(**kwargs), **agent_options)

    planner = inspect.signature(PessimisticAgent).parameters
    estimator = [parameter for parameter in _estimator_parameters(estimator_class)
                 if parameter.name not in _AGENT_OPTIONS]  # "tol" is the planner's
    # Required options first: a signature lists parameters without defaults before the others.
    ordered = sorted(estimator, key=lambda parameter: parameter.default is not inspect.Parameter.empty)
    factory.__signature__ = inspect.Signature([*ordered, *(planner[key] for key in _AGENT_OPTIONS)])
    factory.__name__ = f"make_{estimator_class.__name__}"
    factory.__doc__ = f"A :class:`PessimisticAgent` around :class:`{estimator_class.__name__}`."
    return factory


#: The built-in agents: name, estimator, and whether the estimator learns a contextual reward.
_BUILT_IN: tuple[tuple[str, type, bool], ...] = (
    ("pooled", PooledMLE, False),
    ("independent", IndependentMLE, False),
    ("p-sharelora", PShareLoRA, False),
    ("loco-prs", LoCoPRS, True),
    ("oracle-subspace", OracleSubspaceMLE, False),
    ("full-rank", FullRankContextual, True),
)
_CONTEXTUAL_ESTIMATORS = tuple(estimator for _, estimator, contextual in _BUILT_IN if contextual)
for _name, _estimator, _contextual in _BUILT_IN:
    register(_name, _built_in(_estimator), contextual=_contextual)
