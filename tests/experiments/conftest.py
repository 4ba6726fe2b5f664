"""Fixtures of the experiment-layer tests: a tiny sweep configuration and plugin agents."""

from __future__ import annotations

import textwrap

import pytest

TINY = """
name = "tiny"
env = "lr_mdp_env/RandomLowRank-v0"
seed = 11
replicates = 2
{plugins}
[world]
n_states = 4
n_actions = 2
horizon = 3
n_users = 6
rank = 2

[grid]
n_pairs_per_user = [20, 40]

[[agents]]
name = "independent"
pessimism = "none"

[[agents]]
name = "p-sharelora"
rank = "$rank"
pessimism = "exact"

[[agents]]
name = "oracle-subspace"
subspace = "$true_subspace"
pessimism = "rectangular"
{extra}
"""

#: Agents a sweep loads through ``plugins``: one killing its own process (once, when the file
#: named by LR_MDP_KILL_MARKER does not exist yet) and one failing on 40 pairs per user.
PLUGIN = '''
import os
import signal
import warnings

import agents


class Killer:
    """Independent MLE that SIGKILLs the running process on its 40-pairs cell, once."""

    def __init__(self, seed=0):
        self.inner = agents.make("independent", pessimism="none", seed=seed)

    def fit(self, dataset, mdp):
        marker = os.environ.get("LR_MDP_KILL_MARKER")
        if marker and dataset.n_pairs == 40 * 6 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        self.inner.fit(dataset, mdp)
        return self

    def policy(self, user):
        return self.inner.policy(user)


class Fragile(Killer):
    """Fails with a ValueError on 40 pairs per user, and warns on 20."""

    def fit(self, dataset, mdp):
        if dataset.n_pairs == 40 * 6:
            raise ValueError("fragile agent refuses 40 pairs per user")
        warnings.warn("fragile agent is uneasy", UserWarning)
        return super().fit(dataset, mdp)


class Dying(Killer):
    """Ends its process abruptly (as the OS's out-of-memory killer would) on 40 pairs per user."""

    def fit(self, dataset, mdp):
        if dataset.n_pairs == 40 * 6:
            os._exit(3)
        return super().fit(dataset, mdp)


for name, factory in (("killer", Killer), ("fragile", Fragile), ("dying", Dying)):
    if name not in agents.registered():
        agents.register(name, factory)
'''


@pytest.fixture
def tiny_config_text():
    """``tiny_config_text(plugins=False, extra="")``: the TOML of a 12-cell sweep."""

    def make(plugins: bool = False, extra: str = "") -> str:
        return TINY.format(plugins='plugins = ["sweep_test_plugin"]' if plugins else "",
                           extra=textwrap.dedent(extra))

    return make


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A directory holding the ``sweep_test_plugin`` module, importable here and in children."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "sweep_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(directory))
    return directory
