"""Ctrl-C and unwritable output directories end ``lr-mdp sweep`` with one clear message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lr_mdp_experiments.store as store_module
from lr_mdp_experiments.cli import main

#: An agent whose fit never returns while LR_MDP_STUCK is set: a sweep with it cannot finish,
#: so the interrupt always lands in the middle of the run.
STUCK_PLUGIN = '''
import os
import time

import agents


class Stuck:
    def __init__(self, seed=0):
        self.inner = agents.make("independent", pessimism="none", seed=seed)

    def fit(self, dataset, mdp):
        while os.environ.get("LR_MDP_STUCK"):
            time.sleep(0.05)
        self.inner.fit(dataset, mdp)
        return self

    def policy(self, user):
        return self.inner.policy(user)


if "stuck" not in agents.registered():
    agents.register("stuck", Stuck)
'''


def _saved_cells(out: Path) -> int:
    return sum(json.loads(path.read_text())["status"] == "ok" for path in (out / "cells").glob("*.json"))


def _group_is_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("engine", [
    ["--workers", "2"],
    # Starting a local Dask cluster twice takes 30-40 s on a busy 2-core machine: slow suite.
    pytest.param(["--dask-workers", "2"], marks=pytest.mark.slow),
])
def test_ctrl_c_saves_the_finished_cells_says_so_and_a_rerun_resumes(tmp_path, tiny_config_text, engine, capsys):
    if engine[0] == "--dask-workers":
        pytest.importorskip("dask.distributed")
    (tmp_path / "stuck_plugin.py").write_text(STUCK_PLUGIN)
    config = tmp_path / "stuck.toml"
    text = tiny_config_text().replace("seed = 11", 'seed = 11\nplugins = ["stuck_plugin"]')
    config.write_text(text.replace("replicates = 2", "replicates = 1") + '\n[[agents]]\nname = "stuck"\n')
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lr_mdp_experiments.cli", "sweep", str(config), "--out", str(out),
               "--no-progress", *engine]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LR_MDP_STUCK": "1"}
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the command, its
    # worker processes and a Dask cluster's. Its own session gives the test such a group.
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "cells").is_dir() or _saved_cells(out) < 1:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, error = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    saved = _saved_cells(out)
    assert process.returncode == 130, error
    assert "Traceback" not in error and "KeyboardInterrupt" not in error, error
    assert (f"lr-mdp: interrupted: {saved} of 8 cells are saved in {out}; run the same command again to resume"
            in error), error
    assert 1 <= saved < 8
    deadline = time.monotonic() + 30
    while not _group_is_gone(process.pid):  # the workers were stopped, not left running
        assert time.monotonic() < deadline, "worker processes outlived the interrupted sweep"
        time.sleep(0.05)
    # The same sweep again (here in this process, where the agent is not stuck) resumes.
    assert main(command[3:-2] + ["--workers", "1"]) == 0
    assert f"tiny: 8 cells ({saved} already done, {8 - saved} run, 0 failed)" in capsys.readouterr().out


def test_an_unwritable_output_directory_is_one_line_and_status_2(tmp_path, tiny_config_text, monkeypatch, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config_text())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["sweep", str(config), "--out", str(blocker / "out"), "--workers", "1"]) == 2
    assert capsys.readouterr().err == f"lr-mdp: error: cannot write {blocker / 'out' / 'cells'}: Not a directory\n"

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    # Running as root ignores permission bits, so the refusal is the file system's answer, simulated.
    monkeypatch.setattr(store_module, "atomic_write", refuse)
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out), "--workers", "1"]) == 2
    assert capsys.readouterr().err == f"lr-mdp: error: cannot write {out / 'config.toml'}: Permission denied\n"
