"""The experiment layer: sweep configurations, parallel and Dask execution, results, plots and
the ``lr-mdp`` command line (the README's Experiments section).

It sits on top of :mod:`lr_mdp_env` (the world) and :mod:`agents` (the learners); neither imports
it. A sweep is a grid of settings x agents x replicates; every cell is seeded from
``numpy.random.SeedSequence`` by its identity, so the results table does not depend on the engine
or the number of workers.
"""

from .cell import TIMING_COLUMNS, run_cell
from .config import AgentSpec, Cell, ConfigError, Setting, SweepConfig, load_config, parse_config
from .store import ResultStore, load_results
from .sweep import ENGINES, SweepInterrupted, SweepSummary, run_serially, run_sweep
from .worlds import WorldSource

__all__ = [
    "ENGINES",
    "TIMING_COLUMNS",
    "AgentSpec",
    "Cell",
    "ConfigError",
    "ResultStore",
    "Setting",
    "SweepConfig",
    "SweepInterrupted",
    "SweepSummary",
    "WorldSource",
    "load_config",
    "load_results",
    "parse_config",
    "run_cell",
    "run_serially",
    "run_sweep",
]
