"""Agents by name: ``agents.make(name, **kwargs)`` and ``agents.register(name, factory)``.

Built-in agents are registered exactly as a user's own agent is, with a factory that turns
keyword arguments into an unfitted agent.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .agent import PessimisticAgent
from .contextual import FullRankContextual, LoCoPRS
from .estimators import IndependentMLE, OracleSubspaceMLE, PooledMLE, PShareLoRA

_REGISTRY: dict[str, Callable[..., Any]] = {}
_AGENT_OPTIONS = ("pessimism", "reference", "transitions", "tol")


def register(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Make ``agents.make(name, **kwargs)`` return ``factory(**kwargs)``.

    Parameters
    ----------
    name : str
        Non-empty; taken names need ``overwrite=True``.
    factory : callable
        A class or function returning an object with ``fit(dataset, mdp)`` and ``policy(user)``.
    overwrite : bool, default False
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable (a class or function), got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"an agent named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def make(name: str, **kwargs: Any) -> Any:
    """A new, unfitted agent registered under ``name``.

    Built-in names: ``pooled``, ``independent``, ``p-sharelora`` (``rank=``),
    ``loco-prs`` (``rank=``), ``oracle-subspace`` (``subspace=``), ``full-rank``. They take the
    planner's ``pessimism="exact" | "rectangular" | "none"``, ``reference``, ``transitions`` and
    ``tol``, and the estimator's ``ridge``, ``beta``, ``radius``, ``delta``, ``norm_bound``,
    ``base`` and ``seed``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown agent {name!r}; registered agents: {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as error:
        parameters = inspect.signature(_REGISTRY[name]).parameters
        raise TypeError(f"agent {name!r}: {error} (it takes {list(parameters)})") from None


def takes(agent: str | Callable[..., Any], argument: str) -> bool:
    """Whether a factory, or the factory registered under the name ``agent``, accepts the
    keyword ``argument`` (explicitly or through ``**kwargs``); the built-in agents take ``seed``."""
    if isinstance(agent, str):
        if agent not in _REGISTRY:
            raise ValueError(f"unknown agent {agent!r}; registered agents: {sorted(_REGISTRY)}")
        agent = _REGISTRY[agent]
    try:
        parameters = inspect.signature(agent).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def registered() -> list[str]:
    """Names :func:`make` accepts."""
    return sorted(_REGISTRY)


def _built_in(estimator_class: type) -> Callable[..., PessimisticAgent]:
    def factory(*args: Any, **kwargs: Any) -> PessimisticAgent:
        options = {key: kwargs.pop(key) for key in _AGENT_OPTIONS if key in kwargs}
        return PessimisticAgent(estimator_class(*args, **kwargs), **options)

    factory.__name__ = f"make_{estimator_class.__name__}"
    factory.__doc__ = f"A :class:`PessimisticAgent` around :class:`{estimator_class.__name__}`."
    return factory


for _name, _class in {
    "pooled": PooledMLE,
    "independent": IndependentMLE,
    "p-sharelora": PShareLoRA,
    "loco-prs": LoCoPRS,
    "oracle-subspace": OracleSubspaceMLE,
    "full-rank": FullRankContextual,
}.items():
    register(_name, _built_in(_class))
