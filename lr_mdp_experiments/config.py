"""Sweep configurations: a TOML file validated into a :class:`SweepConfig` before anything runs.

A configuration names where its worlds come from (a registered Gymnasium id, or a builder
function of the user's: :mod:`.worlds`), their fixed arguments, the data collection, a grid of
values to cross, the agents, and how many seeded replicates to run::

    name = "example"
    env = "lr_mdp_env/RandomLowRank-v0"   # or builder = "my_worlds:two_rooms"
    seed = 0              # root of every cell's SeedSequence
    replicates = 3        # seeds per setting

    [world]               # keyword arguments of the environment's builder
    n_states = 8
    rank = 2

    [data]
    n_pairs_per_user = 50
    behavior = "uniform"  # or "epsilon-optimal" (with epsilon)

    [teacher]             # lr_mdp_env.Teacher arguments
    beta = 1.0

    [evaluation]
    contexts = "collection"   # contextual worlds: "collection", "shifted" or "users"

    [grid]                # crossed; a key names a field of world, data, teacher or evaluation
    n_pairs_per_user = [25, 50, 100]
    n_users = [10, 40]

    [[agents]]
    name = "p-sharelora"  # a name agents.make knows (after importing `plugins`)
    label = "P-ShareLoRA" # optional; default the name plus the pessimism
    rank = "$rank"        # "$key": the cell's value of a setting, or "$true_rank", "$true_subspace"
    pessimism = "exact"

Unknown keys, wrong types, unknown environments and agents, agent options and values a
builder or an agent rejects are reported as :class:`ConfigError` naming the key, before any cell
runs: every distinct world is built, and every built-in agent is made and fitted once on a few
pairs of it (so that, e.g., a rank larger than the world's dimension fails here, not in every cell).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import itertools
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lr_mdp_env import collect_preferences
from lr_mdp_env.collection import epsilon_optimal_policies
from lr_mdp_env.envs.registration import ENV_IDS, World
from lr_mdp_env.rewards import ContextualRewards
from lr_mdp_env.teacher import Teacher

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import agents

from .worlds import WorldSource

#: Top-level keys and sections a configuration may hold.
TOP_LEVEL = {"name": str, "env": str, "builder": str, "seed": int, "replicates": int, "plugins": list,
             "world": dict, "data": dict, "teacher": dict, "evaluation": dict, "grid": dict,
             "agents": list, "description": str}
#: Fields of ``[data]`` with their defaults.
DATA_DEFAULTS: dict[str, Any] = {"n_pairs_per_user": 50, "behavior": "uniform", "epsilon": 0.5}
BEHAVIORS = ("uniform", "epsilon-optimal")
#: Fields of ``[evaluation]`` with their defaults.
EVALUATION_DEFAULTS: dict[str, Any] = {"contexts": "collection", "n_contexts": 100}
CONTEXT_CHOICES = ("collection", "shifted", "users")
#: Substitutions ``"$name"`` an agent argument may use besides the setting's own keys.
TRUTH_VARIABLES = ("true_rank", "true_subspace")
#: Pairs per user of the small dataset every built-in agent is fitted on before the sweep.
DRY_RUN_PAIRS = 2


class ConfigError(ValueError):
    """A sweep configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class AgentSpec:
    """One agent of a sweep: a registered name, its label, and ``agents.make`` arguments."""

    label: str
    name: str
    kwargs: tuple[tuple[str, Any], ...]

    def arguments(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments with every ``"$key"`` replaced by ``variables[key]``."""
        return {key: variables[value[1:]] if _is_variable(value) else value for key, value in self.kwargs}


@dataclass(frozen=True)
class Setting:
    """One point of the grid: the world's arguments, the data, the teacher and the evaluation."""

    index: int
    world: tuple[tuple[str, Any], ...]
    data: tuple[tuple[str, Any], ...]
    teacher: tuple[tuple[str, Any], ...]
    evaluation: tuple[tuple[str, Any], ...]
    varied: tuple[str, ...]

    def values(self) -> dict[str, Any]:
        """Every field by its bare name (world, data, teacher and evaluation fields are disjoint)."""
        return {**dict(self.world), **dict(self.data), **dict(self.teacher), **dict(self.evaluation)}


@dataclass(frozen=True)
class Cell:
    """One unit of work: a setting, an agent, a replicate. ``cell_id`` is stable across runs."""

    setting: Setting
    agent_index: int
    replicate: int

    @property
    def cell_id(self) -> str:
        return f"s{self.setting.index:04d}-a{self.agent_index:02d}-r{self.replicate:03d}"


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: see the module docstring for the file format.

    Attributes
    ----------
    name : str
    env : str or None
        The Gymnasium id of the worlds (``env = ...``), or ``None`` with a ``builder``.
    world_builder : str or None
        ``"module:function"`` building the worlds (``builder = ...``), or ``None`` with an ``env``.
    seed, replicates : int
    plugins : tuple of str
        Modules imported before environments are resolved and agents are made (they may call
        ``gym.register`` or ``agents.register``); they are looked up on ``sys.path`` and in
        ``plugin_path``, the configuration file's directory.
    settings : tuple of Setting
        The grid, in a fixed order (the product of the ``[grid]`` lists, last key fastest).
    agents : tuple of AgentSpec
    source : str
        The TOML text, stored beside the results.
    """

    name: str
    env: str | None
    seed: int
    replicates: int
    plugins: tuple[str, ...]
    settings: tuple[Setting, ...]
    agents: tuple[AgentSpec, ...]
    grid_keys: tuple[str, ...]
    source: str = field(repr=False)
    plugin_path: str | None = field(default=None, repr=False)
    world_builder: str | None = None

    @property
    def worlds(self) -> WorldSource:
        """Where the worlds come from (:class:`~.worlds.WorldSource`)."""
        return WorldSource(env=self.env, builder=self.world_builder)

    def cells(self) -> list[Cell]:
        """Every cell: settings x agents x replicates."""
        return [Cell(setting, agent_index, replicate)
                for setting in self.settings
                for agent_index in range(len(self.agents))
                for replicate in range(self.replicates)]

    @property
    def fingerprint(self) -> str:
        """A hash of what determines each cell's results (not the file's comments or layout, nor
        the number of replicates: more replicates only add cells)."""
        content = {"env": self.env, "seed": self.seed,
                   "plugins": self.plugins, "agents": [(a.label, a.name, a.kwargs) for a in self.agents],
                   "settings": [(s.world, s.data, s.teacher, s.evaluation) for s in self.settings]}
        if self.world_builder is not None:
            content["builder"] = self.world_builder
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def build_world(self, setting: Setting, model_seed: int) -> World:
        """The world of ``setting``; ``model_seed`` is used unless the configuration fixes one
        (or the source takes none)."""
        return self.worlds.build(dict(setting.world), model_seed)


def load_config(source: str | Path) -> SweepConfig:
    """Read and validate a sweep configuration from a ``.toml`` path.

    Raises
    ------
    ConfigError
        On unreadable TOML, unknown keys, wrong types, unknown environment or agent names,
        empty grids, or values the environment's builder or ``agents.make`` rejects.
    """
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {str(path)!r}: {error.strerror}") from None
    return parse_config(text, origin=str(path))


def parse_config(text: str, *, origin: str = "<config>") -> SweepConfig:
    """Validate TOML text into a :class:`SweepConfig` (see :func:`load_config`)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin} is not valid TOML: {error}") from None
    for key, value in raw.items():
        if key not in TOP_LEVEL:
            raise ConfigError(f"unknown config key {key!r}{_suggestion(key, TOP_LEVEL)}; allowed: {sorted(TOP_LEVEL)}")
        _check_type(key, value, TOP_LEVEL[key])
    plugins = tuple(raw.get("plugins", []))
    search_path = str(Path(origin).resolve().parent) if origin != "<config>" else None
    for index, module in enumerate(plugins):
        _check_type(f"plugins[{index}]", module, str)
        try:
            import_plugin(module, search_path)
        except ImportError as error:
            raise ConfigError(f"config key 'plugins[{index}]': cannot import {module!r}: {error}") from None
    worlds = _world_source(raw, search_path)
    world_fields, open_world = worlds.fields()

    teacher_fields = {name: parameter.default for name, parameter in
                      inspect.signature(Teacher).parameters.items()}
    sections = {"world": world_fields, "data": DATA_DEFAULTS, "teacher": teacher_fields,
                "evaluation": EVALUATION_DEFAULTS}
    fixed: dict[str, dict[str, Any]] = {}
    for section, fields in sections.items():
        fixed[section] = {}
        for key, value in raw.get(section, {}).items():
            qualified = f"{section}.{key}"
            if key not in fields and not (section == "world" and open_world):
                raise ConfigError(f"unknown config key {qualified!r}{_suggestion(key, fields)}; "
                                  f"{section} takes {sorted(fields)}")
            fixed[section][key] = _check_field(qualified, section, key, value, fields.get(key))

    grid: dict[tuple[str, str], list[Any]] = {}
    for key, values in raw.get("grid", {}).items():
        section, name = _grid_field(key, sections, open_world)
        qualified = f"grid.{key}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"config key {qualified!r} must be a non-empty list of values, got {values!r}")
        if name in fixed[section]:
            raise ConfigError(f"config key {qualified!r} is also fixed in [{section}]; give it in one place")
        grid[(section, name)] = [_check_field(qualified, section, name, value, sections[section].get(name))
                                 for value in values]

    settings = []
    grid_keys = tuple(name for _, name in grid)
    for index, combination in enumerate(itertools.product(*grid.values())):
        chosen = {section: dict(values) for section, values in fixed.items()}
        for (section, name), value in zip(grid, combination):
            chosen[section][name] = value
        data = {**DATA_DEFAULTS, **chosen["data"]}
        evaluation = {**EVALUATION_DEFAULTS, **chosen["evaluation"]}
        settings.append(Setting(index, _hashable_items(chosen["world"]), _hashable_items(data),
                                _hashable_items(chosen["teacher"]), _hashable_items(evaluation), grid_keys))

    specs = _agent_specs(raw.get("agents"), settings[0], set(world_fields))
    config = SweepConfig(
        name=raw.get("name", Path(origin).stem if origin != "<config>" else "sweep"),
        env=worlds.env, world_builder=worlds.builder, seed=raw.get("seed", 0), replicates=raw.get("replicates", 1),
        plugins=plugins, settings=tuple(settings), agents=specs, grid_keys=grid_keys, source=text,
        plugin_path=search_path if plugins or worlds.builder else None,
    )
    if config.replicates < 1:
        raise ConfigError(f"config key 'replicates' must be at least 1, got {config.replicates}")
    if config.seed < 0:
        raise ConfigError(f"config key 'seed' must be non-negative, got {config.seed}")
    _dry_run(config)
    return config


# -- validation helpers ------------------------------------------------------------------------


def import_plugin(module: str, search_path: str | None) -> None:
    """Import a plugin module, looking also in ``search_path`` (a configuration's directory)."""
    if search_path is not None and search_path not in sys.path:
        sys.path.append(search_path)
    importlib.import_module(module)


def _world_source(raw: dict[str, Any], search_path: str | None) -> WorldSource:
    """``env`` or ``builder``, resolved now so that a bad one is reported before anything runs."""
    if ("env" in raw) == ("builder" in raw):
        raise ConfigError("a config needs exactly one of 'env' (a registered Gymnasium id, e.g. one of "
                          f"{list(ENV_IDS)}) and 'builder' ('module:function' returning (mdp, rewards))"
                          + ("; it has both" if "env" in raw else ""))
    key = "env" if "env" in raw else "builder"
    if key == "builder" and search_path is not None and search_path not in sys.path:
        sys.path.append(search_path)  # a builder module may sit next to the configuration
    source = WorldSource(**{key: raw[key]})
    try:
        source.fields()
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config key {key!r}: {error}") from None
    return source


def _suggestion(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, [str(choice) for choice in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _check_type(key: str, value: Any, expected: Any) -> None:
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"config key {key!r} must be {_type_name(expected)}, got {type(value).__name__} {value!r}")


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Type-check ``value`` against the field's default: ints for ints, numbers for floats,
    booleans for booleans, strings for strings; fields without a default take any TOML value."""
    if isinstance(default, bool):
        _check_type(key, value, bool)
    elif isinstance(default, int):
        _check_type(key, value, int)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
    elif isinstance(default, str):
        _check_type(key, value, str)
    elif isinstance(value, dict):
        raise ConfigError(f"config key {key!r} must be a value or a list, not a table")
    return value


def _check_field(key: str, section: str, name: str, value: Any, default: Any) -> Any:
    """:func:`_check_value`, then the range of ``[data]`` and ``[evaluation]`` fields; ``key`` is
    where the value was written (``data.epsilon`` or ``grid.epsilon``)."""
    value = _check_value(key, value, default)
    if section == "data" and name == "n_pairs_per_user" and value < 1:
        raise ConfigError(f"config key {key!r} must be a positive integer, got {value!r}")
    if section == "data" and name == "behavior" and value not in BEHAVIORS:
        raise ConfigError(f"config key {key!r} must be one of {BEHAVIORS}, got {value!r}")
    if section == "data" and name == "epsilon" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"config key {key!r} must lie in [0, 1], got {value!r}")
    if section == "evaluation" and name == "contexts" and value not in CONTEXT_CHOICES:
        raise ConfigError(f"config key {key!r} must be one of {CONTEXT_CHOICES}, got {value!r}")
    if section == "evaluation" and name == "n_contexts" and value < 1:
        raise ConfigError(f"config key {key!r} must be positive, got {value}")
    return value


def _grid_field(key: str, sections: dict[str, dict[str, Any]], open_world: bool) -> tuple[str, str]:
    """Resolve a grid key, bare (``n_users``) or qualified (``world.n_users``), to its section."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections or (name not in sections[section] and not (section == "world" and open_world)):
            raise ConfigError(f"unknown config key 'grid.{key}': no field {name!r} in [{section}]")
        return section, name
    owners = [section for section, fields in sections.items() if key in fields]
    if not owners:
        known = sorted(set().union(*sections.values()))
        raise ConfigError(f"unknown config key 'grid.{key}'{_suggestion(key, known)}; grid keys are fields of "
                          f"world, data, teacher or evaluation: {known}")
    if len(owners) > 1:
        raise ConfigError(f"config key 'grid.{key}' is ambiguous ({owners}); write e.g. '{owners[0]}.{key}'")
    return owners[0], key


def _is_variable(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$")


def _agent_specs(raw_agents: Any, first: Setting, world_fields: set[str]) -> tuple[AgentSpec, ...]:
    if not raw_agents:
        raise ConfigError(f"config key 'agents' must list at least one [[agents]] table; registered agents: "
                          f"{agents.registered()}")
    known_variables = set(first.values()) | world_fields | set(TRUTH_VARIABLES)
    specs, labels = [], set()
    for index, entry in enumerate(raw_agents):
        where = f"agents[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"config key {where!r} must be a table ([[agents]]), got {type(entry).__name__}")
        entry = dict(entry)
        name = entry.pop("name", None)
        if name is None:
            raise ConfigError(f"config key '{where}.name' is required: one of {agents.registered()}")
        _check_type(f"{where}.name", name, str)
        if name not in agents.registered():
            raise ConfigError(f"config key '{where}.name': unknown agent {name!r}{_suggestion(name, agents.registered())}; "
                              f"registered: {agents.registered()}")
        label = entry.pop("label", None)
        if label is None:
            label = f"{name} ({entry['pessimism']})" if "pessimism" in entry else name
        _check_type(f"{where}.label", label, str)
        if label in labels:
            raise ConfigError(f"config key '{where}.label': two agents are labelled {label!r}; labels must differ")
        labels.add(label)
        _check_agent_options(where, name, entry)
        for key, value in entry.items():
            if _is_variable(value) and value[1:] not in known_variables:
                raise ConfigError(f"config key '{where}.{key}': unknown variable {value!r}"
                                  f"{_suggestion(value[1:], known_variables)}; variables are {sorted(known_variables)}")
        specs.append(AgentSpec(label, name, _hashable_items(entry)))
    return tuple(specs)


def _check_agent_options(where: str, name: str, entry: dict[str, Any]) -> None:
    """Every key of an ``[[agents]]`` table is an option of the agent, and the required ones are given."""
    options = agents.registry.options(name)
    if options is None:  # the factory takes **kwargs: agents.make will judge
        return
    listing = ", ".join(key if default is inspect.Parameter.empty else f"{key}={default!r}"
                        for key, default in options.items())
    for key in entry:
        if key not in options:
            raise ConfigError(f"config key '{where}.{key}': agent {name!r} has no option {key!r}"
                              f"{_suggestion(key, options)}; its options are name, label, {listing}")
    for key, default in options.items():
        if default is inspect.Parameter.empty and key not in entry:
            raise ConfigError(f"config key '{where}.{key}' is required: agent {name!r} needs {key}= "
                              f"(e.g. {key} = \"$true_rank\" or a value)" if key == "rank" else
                              f"config key '{where}.{key}' is required: agent {name!r} needs {key}=")


def _agent_error(index: int, spec: AgentSpec, error: Exception, context: str = "") -> ConfigError:
    """A ConfigError naming the ``[[agents]]`` key the agent's message is about, when it names one."""
    message = str(error)
    prefix = f"agent {spec.name!r}: "
    bare = message[len(prefix):] if message.startswith(prefix) else message
    keys = [key for key, _ in spec.kwargs if bare.startswith((f"{key} ", f"{key}="))]
    where = f"agents[{index}].{keys[0]}" if keys else f"agents[{index}]"
    return ConfigError(f"config key {where!r} ({spec.label}): {bare}{context}")


def collection_behavior(data: Mapping[str, Any], world: World) -> Any:
    """The ``behavior`` argument of :func:`~lr_mdp_env.collect_preferences` that ``[data]`` asks for."""
    if data["behavior"] == "epsilon-optimal":
        return epsilon_optimal_policies(world.mdp, world.rewards, data["epsilon"])
    return "uniform"


def _dry_run(config: SweepConfig) -> None:
    """Build every distinct world, make every agent once and fit every built-in agent on a few
    pairs of each world, so bad values fail before the sweep."""
    worlds: dict[tuple, World] = {}
    for setting in config.settings:
        if setting.world in worlds:
            continue
        try:
            worlds[setting.world] = config.build_world(setting, model_seed=0)
        except (ValueError, TypeError, MemoryError) as error:
            keys = ", ".join(f"world.{key}={value!r}" for key, value in setting.world)
            raise ConfigError(f"config key 'world' ({keys}): {error}") from None
    fitted: set[tuple] = set()
    for setting in config.settings:
        world = worlds[setting.world]
        variables = cell_variables(config, setting, world)
        contextual_world = isinstance(world.rewards, ContextualRewards)
        for index, spec in enumerate(config.agents):
            arguments = spec.arguments(variables)
            try:
                agent = agents.make(spec.name, **arguments)
            except (ValueError, TypeError) as error:
                raise _agent_error(index, spec, error) from None
            estimator = getattr(agent, "estimator", None)
            if estimator is not None and agents.registry.is_contextual(agent) != contextual_world:
                kind = "contextual" if contextual_world else "user-indexed (non-contextual)"
                raise ConfigError(f"config key 'agents[{index}]' ({spec.label}): {config.worlds.description} has "
                                  f"{kind} rewards, which agent {spec.name!r} cannot learn")
            # The planner's options do not change the fit: agents differing only there fit once.
            fit_arguments = {key: value for key, value in arguments.items() if key not in ("pessimism", "tol")}
            key = (setting.world, dict(setting.data)["behavior"], spec.name, repr(sorted(fit_arguments.items())))
            if isinstance(agent, agents.PessimisticAgent) and key not in fitted:
                fitted.add(key)
                # A fixed ridge skips the ridge selection (five fits): the sizes are what is checked.
                if "ridge" in (agents.registry.options(spec.name) or {}) and "ridge" not in arguments:
                    agent = agents.make(spec.name, ridge=1.0, **arguments)
                _dry_fit(agent, index, spec, setting, world)
        try:
            Teacher(**dict(setting.teacher))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"config key 'teacher': {error}") from None


def _dry_fit(agent: Any, index: int, spec: AgentSpec, setting: Setting, world: World) -> None:
    """Fit a built-in agent on :data:`DRY_RUN_PAIRS` pairs per user of ``world``: what only the
    data's sizes can refuse (a rank above ``min(d, N)``, a subspace of the wrong dimension)
    fails here."""
    data = dict(setting.data)
    dataset = collect_preferences(world.mdp, world.rewards, min(DRY_RUN_PAIRS, data["n_pairs_per_user"]),
                                  behavior=collection_behavior(data, world), seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few pairs per user fit roughly: only refusals matter here
            agent.fit(dataset, world.mdp)
    except (ValueError, TypeError) as error:
        keys = ", ".join(f"world.{key}={value!r}" for key, value in setting.world)
        raise _agent_error(index, spec, error, f" (in the world {keys or 'of the defaults'})") from None


def cell_variables(config: SweepConfig, setting: Setting, world: World) -> dict[str, Any]:
    """What ``"$name"`` may refer to in an agent's arguments: the setting's values, the
    world's defaults for the arguments the configuration leaves out, and the truth."""
    rewards = world.rewards
    defaults = {key: value for key, value in config.worlds.fields()[0].items()
                if value is not inspect.Parameter.empty}
    return {**defaults, **setting.values(), "true_rank": int(rewards.rank),
            "true_subspace": getattr(rewards, "subspace", None)}


def _hashable(value: Any) -> Any:
    """Lists (TOML arrays) as tuples, recursively, so settings are hashable."""
    return tuple(_hashable(item) for item in value) if isinstance(value, (list, tuple)) else value


def _hashable_items(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((key, _hashable(value)) for key, value in mapping.items())
