"""Where a sweep's worlds come from: a registered Gymnasium id, or a user's own builder.

A sweep needs, for every cell, the :class:`~lr_mdp_env.TabularMDP` and the users' true rewards
(a :class:`~lr_mdp_env.LowRankRewards` or :class:`~lr_mdp_env.ContextualRewards`). It gets them
in one of two ways (the README's Experiments section states the contract):

- ``env = "<id>"``: any id Gymnasium knows (``gym.spec`` parses it; ``"module:id"`` imports the
  module first, as ``gym.make`` does). ``gym.make(id, **world)`` must return an environment
  whose ``unwrapped`` has ``mdp`` and ``rewards`` attributes (a
  :class:`~lr_mdp_env.TabularPreferenceEnv` holds them in ``params``, which is also accepted).
  The five ``lr_mdp_env/...`` ids are built by their builders directly, without an environment.
- ``builder = "module:function"``: ``function(**world)`` returns ``(mdp, rewards)``.

Either way, when the entry point or builder takes ``model_seed``, each replicate gets its own
world drawn from the cell's seed; otherwise every replicate shares the one world the
arguments describe, and replicates differ in their data only.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym

from lr_mdp_env import TabularMDP
from lr_mdp_env.envs.registration import FAMILIES, NAMESPACE, World
from lr_mdp_env.rewards import ContextualRewards, LowRankRewards

#: Arguments of the environment itself, not of its world: never taken from ``[world]``.
ENVIRONMENT_ARGUMENTS = ("render_mode", "user", "users", "reward_visible", "observation", "num_envs")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class WorldSource:
    """A sweep's worlds: ``env`` (a Gymnasium id) or ``builder`` (``"module:function"``).

    Only names are stored, so a configuration pickles to worker processes, which resolve them
    after importing the configuration's plugins.
    """

    env: str | None = None
    builder: str | None = None

    @property
    def description(self) -> str:
        return f"env {self.env!r}" if self.env is not None else f"builder {self.builder!r}"

    def function(self) -> Callable[..., Any]:
        """What ``[world]`` is passed to: a family's builder, an environment's entry point or
        the user's builder."""
        if self.builder is not None:
            return load_callable(self.builder, "builder")
        spec = env_spec(self.env)
        return built_in_builder(spec) or entry_point(spec)

    def fields(self) -> tuple[dict[str, Any], bool]:
        """``({name: default}, open)``: the keyword arguments ``[world]`` may give (registered
        kwargs of an id count as defaults), and whether others may be valid too (``**kwargs``)."""
        function = self.function()
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        fields = {parameter.name: parameter.default for parameter in parameters
                  if parameter.kind in _NAMED and parameter.name not in ENVIRONMENT_ARGUMENTS}
        open_ = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)
        if self.env is not None and built_in_builder(env_spec(self.env)) is None:
            fields.update({key: value for key, value in env_spec(self.env).kwargs.items()
                           if key not in ENVIRONMENT_ARGUMENTS})
        return fields, open_

    def takes_model_seed(self) -> bool:
        return "model_seed" in self.fields()[0]

    def build(self, arguments: dict[str, Any], model_seed: int) -> World:
        """The world of ``arguments``, drawn with ``model_seed`` when the source takes one (and
        ``arguments`` do not fix it).

        Raises
        ------
        ValueError, TypeError
            What the builder raises, or a world that breaks the contract of the module docstring.
        """
        arguments = dict(arguments)
        if self.takes_model_seed():
            arguments.setdefault("model_seed", model_seed)
        if self.builder is not None:
            return _checked_world(load_callable(self.builder, "builder")(**arguments), self.description)
        spec = env_spec(self.env)
        builder = built_in_builder(spec)
        if builder is not None:
            return builder(**arguments)
        environment = gym.make(spec, disable_env_checker=True, **arguments)
        try:
            return world_of(environment, self.description)
        finally:
            environment.close()


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """Gymnasium's spec of ``env_id``; a ``"module:id"`` prefix is imported first.

    Raises
    ------
    ValueError
        With Gymnasium's own message (which suggests the nearest registered names).
    """
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"cannot import {module!r} (the module part of {env_id!r}): {error}") from None
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        raise ValueError(f"unknown environment {env_id!r}: {error}") from None


def built_in_builder(spec: gym.envs.registration.EnvSpec) -> Callable[..., World] | None:
    """The builder of one of the five ``lr_mdp_env`` ids, or ``None`` for any other id."""
    for family, (builder, _) in FAMILIES.items():
        if spec.id == f"{NAMESPACE}/{family}-v0":
            return builder
    return None


def entry_point(spec: gym.envs.registration.EnvSpec) -> Callable[..., Any]:
    """The callable behind ``spec.entry_point`` (a class, for most environments)."""
    if callable(spec.entry_point):
        return spec.entry_point
    return gym.envs.registration.load_env_creator(spec.entry_point)


def load_callable(path: str, what: str) -> Callable[..., Any]:
    """``module:attribute`` (dots inside the attribute reach nested names), imported."""
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ValueError(f"{what} must be written 'module:function', got {path!r}")
    try:
        target: Any = importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"cannot import {module!r} (the module part of {what} {path!r}): {error}") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise ValueError(f"{what} {path!r}: module {module!r} has no {attribute!r}")
        target = getattr(target, name)
    if not callable(target):
        raise ValueError(f"{what} {path!r} is not callable")
    return target


def world_of(environment: Any, source: str = "the environment") -> World:
    """The ``(mdp, rewards)`` an environment exposes: ``unwrapped.mdp`` and ``unwrapped.rewards``
    (or ``unwrapped.params.rewards``, as a :class:`~lr_mdp_env.TabularPreferenceEnv` keeps them)."""
    unwrapped = getattr(environment, "unwrapped", environment)
    mdp = getattr(unwrapped, "mdp", None)
    rewards = getattr(unwrapped, "rewards", None)
    if rewards is None:
        rewards = getattr(getattr(unwrapped, "params", None), "rewards", None)
    return _checked_world((mdp, rewards), source)


def _checked_world(world: Any, source: str) -> World:
    if isinstance(world, tuple) and len(world) == 2:
        mdp, rewards = world
    else:
        raise TypeError(f"{source} must give (mdp, rewards), got {type(world).__name__}")
    if not isinstance(mdp, TabularMDP) or not isinstance(rewards, (LowRankRewards, ContextualRewards)):
        raise TypeError(
            f"{source} does not expose its world: a sweep needs a TabularMDP as `mdp` and the users' "
            f"LowRankRewards or ContextualRewards as `rewards` (on env.unwrapped, or returned by a builder), "
            f"got mdp={type(mdp).__name__}, rewards={type(rewards).__name__}")
    if rewards.n_features != mdp.n_features:
        raise ValueError(f"{source}: rewards have {rewards.n_features} features but the MDP has {mdp.n_features}")
    return World(mdp, rewards)
