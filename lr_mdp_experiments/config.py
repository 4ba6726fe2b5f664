"""Sweep configurations: a TOML file validated into a :class:`SweepConfig` before anything runs.

A configuration names a registered environment, its fixed arguments, the data collection, a grid
of values to cross, the agents, and how many seeded replicates to run::

    name = "example"
    env = "lr_mdp_env/RandomLowRank-v0"
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

Unknown keys, wrong types, unknown environments and agents, and values a builder rejects are
reported as :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lr_mdp_env.envs.registration import FAMILIES, NAMESPACE, World
from lr_mdp_env.rewards import ContextualRewards
from lr_mdp_env.teacher import Teacher

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import agents
from agents.contextual import FullRankContextual, LoCoPRS

#: Estimators that learn a contextual reward (and need a contextual world).
CONTEXTUAL_ESTIMATORS = (LoCoPRS, FullRankContextual)

#: Top-level keys and sections a configuration may hold.
TOP_LEVEL = {"name": str, "env": str, "seed": int, "replicates": int, "plugins": list,
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
    name, env : str
    seed, replicates : int
    plugins : tuple of str
        Modules imported before agents are made (they may call ``agents.register``); they are
        looked up on ``sys.path`` and in ``plugin_path``, the configuration file's directory.
    settings : tuple of Setting
        The grid, in a fixed order (the product of the ``[grid]`` lists, last key fastest).
    agents : tuple of AgentSpec
    source : str
        The TOML text, stored beside the results.
    """

    name: str
    env: str
    seed: int
    replicates: int
    plugins: tuple[str, ...]
    settings: tuple[Setting, ...]
    agents: tuple[AgentSpec, ...]
    grid_keys: tuple[str, ...]
    source: str = field(repr=False)
    plugin_path: str | None = field(default=None, repr=False)

    @property
    def builder(self):
        """The registered family's world builder (``lr_mdp_env.envs.*_world``)."""
        return FAMILIES[_family(self.env)][0]

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
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def build_world(self, setting: Setting, model_seed: int) -> World:
        """The world of ``setting``; ``model_seed`` is used unless the configuration fixes one."""
        world_kwargs = dict(setting.world)
        world_kwargs.setdefault("model_seed", model_seed)
        return self.builder(**world_kwargs)


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
            raise ConfigError(f"unknown config key {key!r}; allowed: {sorted(TOP_LEVEL)}")
        _check_type(key, value, TOP_LEVEL[key])
    if "env" not in raw:
        raise ConfigError(f"config key 'env' is required: one of {_env_ids()}")
    env = raw["env"]
    family = _family(env)
    builder = FAMILIES[family][0]
    plugins = tuple(raw.get("plugins", []))
    search_path = str(Path(origin).resolve().parent) if origin != "<config>" and plugins else None
    for index, module in enumerate(plugins):
        _check_type(f"plugins[{index}]", module, str)
        try:
            import_plugin(module, search_path)
        except ImportError as error:
            raise ConfigError(f"config key 'plugins[{index}]': cannot import {module!r}: {error}") from None

    world_fields = _builder_fields(builder)
    teacher_fields = {name: parameter.default for name, parameter in
                      inspect.signature(Teacher).parameters.items()}
    sections = {"world": world_fields, "data": DATA_DEFAULTS, "teacher": teacher_fields,
                "evaluation": EVALUATION_DEFAULTS}
    fixed: dict[str, dict[str, Any]] = {}
    for section, fields in sections.items():
        fixed[section] = {}
        for key, value in raw.get(section, {}).items():
            qualified = f"{section}.{key}"
            if key not in fields:
                raise ConfigError(f"unknown config key {qualified!r}; {section} takes {sorted(fields)}")
            fixed[section][key] = _check_value(qualified, value, fields[key])

    grid: dict[tuple[str, str], list[Any]] = {}
    for key, values in raw.get("grid", {}).items():
        section, name = _grid_field(key, sections)
        qualified = f"grid.{key}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"config key {qualified!r} must be a non-empty list of values, got {values!r}")
        if name in fixed[section]:
            raise ConfigError(f"config key {qualified!r} is also fixed in [{section}]; give it in one place")
        grid[(section, name)] = [_check_value(qualified, value, sections[section][name]) for value in values]

    settings = []
    grid_keys = tuple(name for _, name in grid)
    for index, combination in enumerate(itertools.product(*grid.values())):
        chosen = {section: dict(values) for section, values in fixed.items()}
        for (section, name), value in zip(grid, combination):
            chosen[section][name] = value
        data = {**DATA_DEFAULTS, **chosen["data"]}
        evaluation = {**EVALUATION_DEFAULTS, **chosen["evaluation"]}
        settings.append(Setting(index, _items(chosen["world"]), _items(data), _items(chosen["teacher"]),
                                _items(evaluation), grid_keys))
    for setting in settings:
        _check_data(setting)

    specs = _agent_specs(raw.get("agents"), settings[0], set(world_fields))
    config = SweepConfig(
        name=raw.get("name", Path(origin).stem if origin != "<config>" else "sweep"),
        env=env, seed=raw.get("seed", 0), replicates=raw.get("replicates", 1), plugins=plugins,
        settings=tuple(settings), agents=specs, grid_keys=grid_keys, source=text, plugin_path=search_path,
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


def _env_ids() -> list[str]:
    return [f"{NAMESPACE}/{family}-v0" for family in FAMILIES]


def _family(env: str) -> str:
    if env not in _env_ids():
        raise ConfigError(f"config key 'env': unknown environment {env!r}; known: {_env_ids()}")
    return env.split("/", 1)[1].rsplit("-v", 1)[0]


def _builder_fields(builder: Any) -> dict[str, Any]:
    return {name: parameter.default for name, parameter in inspect.signature(builder).parameters.items()}


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


def _grid_field(key: str, sections: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Resolve a grid key, bare (``n_users``) or qualified (``world.n_users``), to its section."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections or name not in sections[section]:
            raise ConfigError(f"unknown config key 'grid.{key}': no field {name!r} in [{section}]")
        return section, name
    owners = [section for section, fields in sections.items() if key in fields]
    if not owners:
        known = sorted(set().union(*sections.values()))
        raise ConfigError(f"unknown config key 'grid.{key}'; grid keys are fields of world, data, teacher "
                          f"or evaluation: {known}")
    if len(owners) > 1:
        raise ConfigError(f"config key 'grid.{key}' is ambiguous ({owners}); write e.g. '{owners[0]}.{key}'")
    return owners[0], key


def _check_data(setting: Setting) -> None:
    data, evaluation = dict(setting.data), dict(setting.evaluation)
    pairs = data["n_pairs_per_user"]  # an int: _check_value checked the type
    if pairs < 1:
        raise ConfigError(f"config key 'data.n_pairs_per_user' must be a positive integer, got {pairs!r}")
    if data["behavior"] not in BEHAVIORS:
        raise ConfigError(f"config key 'data.behavior' must be one of {BEHAVIORS}, got {data['behavior']!r}")
    if not 0.0 <= data["epsilon"] <= 1.0:
        raise ConfigError(f"config key 'data.epsilon' must lie in [0, 1], got {data['epsilon']!r}")
    if evaluation["contexts"] not in CONTEXT_CHOICES:
        raise ConfigError(f"config key 'evaluation.contexts' must be one of {CONTEXT_CHOICES}, "
                          f"got {evaluation['contexts']!r}")
    if evaluation["n_contexts"] < 1:
        raise ConfigError(f"config key 'evaluation.n_contexts' must be positive, got {evaluation['n_contexts']}")


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
            raise ConfigError(f"config key '{where}.name': unknown agent {name!r}; registered: {agents.registered()}")
        label = entry.pop("label", None)
        if label is None:
            label = f"{name} ({entry['pessimism']})" if "pessimism" in entry else name
        _check_type(f"{where}.label", label, str)
        if label in labels:
            raise ConfigError(f"config key '{where}.label': two agents are labelled {label!r}; labels must differ")
        labels.add(label)
        for key, value in entry.items():
            if _is_variable(value) and value[1:] not in known_variables:
                raise ConfigError(f"config key '{where}.{key}': unknown variable {value!r}; variables are "
                                  f"{sorted(known_variables)}")
        specs.append(AgentSpec(label, name, _items(entry)))
    return tuple(specs)


def _dry_run(config: SweepConfig) -> None:
    """Build every distinct world and make every agent once, so bad values fail before the sweep."""
    worlds: dict[tuple, World] = {}
    for setting in config.settings:
        if setting.world in worlds:
            continue
        try:
            worlds[setting.world] = config.build_world(setting, model_seed=0)
        except (ValueError, TypeError, MemoryError) as error:
            keys = ", ".join(f"world.{key}={value!r}" for key, value in setting.world)
            raise ConfigError(f"config key 'world' ({keys}): {error}") from None
    for setting in config.settings:
        variables = cell_variables(config, setting, worlds[setting.world])
        contextual_world = isinstance(worlds[setting.world].rewards, ContextualRewards)
        for index, spec in enumerate(config.agents):
            try:
                agent = agents.make(spec.name, **spec.arguments(variables))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"config key 'agents[{index}]' ({spec.label}): {error}") from None
            estimator = getattr(agent, "estimator", None)
            if estimator is not None and isinstance(estimator, CONTEXTUAL_ESTIMATORS) != contextual_world:
                kind = "contextual" if contextual_world else "user-indexed (non-contextual)"
                raise ConfigError(f"config key 'agents[{index}]' ({spec.label}): {config.env} has {kind} rewards, "
                                  f"which agent {spec.name!r} cannot learn")
        try:
            Teacher(**dict(setting.teacher))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"config key 'teacher': {error}") from None


def cell_variables(config: SweepConfig, setting: Setting, world: World) -> dict[str, Any]:
    """What ``"$name"`` may refer to in an agent's arguments: the setting's values, the
    builder's defaults for the world arguments the configuration leaves out, and the truth."""
    rewards = world.rewards
    defaults = {key: value for key, value in _builder_fields(config.builder).items()
                if value is not inspect.Parameter.empty}
    return {**defaults, **setting.values(), "true_rank": int(rewards.rank),
            "true_subspace": getattr(rewards, "subspace", None)}


def _frozen(value: Any) -> Any:
    """Lists (TOML arrays) as tuples, recursively, so settings are hashable."""
    return tuple(_frozen(item) for item in value) if isinstance(value, (list, tuple)) else value


def _items(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((key, _frozen(value)) for key, value in mapping.items())
