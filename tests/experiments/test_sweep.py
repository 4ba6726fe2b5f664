"""Sweeps: identical tables on every engine, resumption after a kill, failing cells, the store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import lr_mdp_experiments as experiments
from lr_mdp_experiments import store as store_module
from lr_mdp_experiments.cell import METRIC_COLUMNS, RECORD_COLUMNS, cell_seed


def _deterministic(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=list(experiments.TIMING_COLUMNS)).reset_index(drop=True)


def test_serial_processes_and_dask_give_identical_tables(tmp_path, tiny_config_text):
    pytest.importorskip("dask.distributed")
    config = experiments.parse_config(tiny_config_text())
    reference = _deterministic(experiments.run_serially(config))
    assert len(reference) == 2 * 3 * 2 and (reference["status"] == "ok").all(), reference["error"].unique()
    tables = {}
    for engine, workers in (("serial", 1), ("processes", 2), ("dask", 2)):
        summary = experiments.run_sweep(config, tmp_path / engine, engine=engine, workers=workers)
        assert (summary.total, summary.ran, summary.failed) == (12, 12, 0)
        tables[engine] = _deterministic(experiments.load_results(tmp_path / engine))
        # The table file and the journal agree.
        pd.testing.assert_frame_equal(_deterministic(experiments.load_results(summary.table)), tables[engine],
                                      check_dtype=False)
    for engine, table in tables.items():
        pd.testing.assert_frame_equal(table[reference.columns], reference, check_dtype=False, obj=engine)
    # The numbers are real: every agent has a finite sub-optimality, and they differ between agents.
    assert np.isfinite(reference["suboptimality"]).all()
    assert reference.groupby("agent")["suboptimality"].mean().nunique() == 3


def test_cells_are_seeded_by_identity_not_by_grid_size(tiny_config_text):
    """Adding replicates leaves the existing rows unchanged: seeds depend on the cell only."""
    small = experiments.parse_config(tiny_config_text())
    large = experiments.parse_config(tiny_config_text().replace("replicates = 2", "replicates = 3"))
    small_rows = _deterministic(experiments.run_serially(small))
    large_rows = _deterministic(experiments.run_serially(large))
    kept = large_rows[large_rows["replicate"] < 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, small_rows)
    # Each replicate draws its own world, shared by the settings that do not change the world
    # (here n_pairs_per_user): 3 replicates, 3 distinct optimal values, each seen in both settings.
    optimal = large_rows[large_rows["agent_index"] == 0].groupby("replicate")["optimal_value"]
    assert optimal.nunique().eq(1).all() and optimal.first().nunique() == 3
    assert cell_seed(small, 0, 1) != cell_seed(small, 0, 2)


def test_a_killed_sweep_resumes_without_duplicates_or_lost_rows(tmp_path, tiny_config_text, plugin_path):
    extra = """
    [[agents]]
    name = "killer"
    """
    config_path = tmp_path / "kill.toml"
    config_path.write_text(tiny_config_text(plugins=True, extra=extra))
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
                   "LR_MDP_KILL_MARKER": str(tmp_path / "killed")}
    command = [sys.executable, "-m", "lr_mdp_experiments", "sweep", str(config_path), "--out", str(out),
               "--workers", "1", "--no-progress"]
    first = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert first.returncode == -9, first.stderr  # SIGKILL, mid-sweep: no clean-up ran
    journal = sorted(p.name for p in (out / "cells").glob("*.json"))
    # The grid has 16 cells; the killer dies on its first 40-pairs cell, after the 8 of 20 pairs.
    assert 8 <= len(journal) < 16, journal
    for path in (out / "cells").glob("*.json"):
        json.loads(path.read_text())  # every journal file is complete
    second = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"({len(journal)} already done, {16 - len(journal)} run, 0 failed)" in second.stdout
    table = experiments.load_results(out)
    assert table["cell_id"].is_unique and len(table) == 16
    config = experiments.load_config(config_path)
    reference = _deterministic(experiments.run_serially(config))
    pd.testing.assert_frame_equal(_deterministic(table)[reference.columns], reference, check_dtype=False)
    # The table file written at the end holds the same rows as the journal.
    pd.testing.assert_frame_equal(experiments.load_results(out / "results.parquet"), table, check_dtype=False)


def test_a_failing_cell_is_recorded_and_the_rest_completes(tmp_path, tiny_config_text, plugin_path):
    extra = """
    [[agents]]
    name = "fragile"
    """
    config = experiments.parse_config(tiny_config_text(plugins=True, extra=extra))
    summary = experiments.run_sweep(config, tmp_path, engine="processes", workers=2)
    assert (summary.total, summary.failed) == (16, 2)
    table = experiments.load_results(tmp_path)
    failed = table[table["status"] == "error"]
    assert set(failed["agent"]) == {"fragile"} and set(failed["n_pairs_per_user"]) == {40}
    assert failed["error"].str.contains("ValueError: fragile agent refuses 40 pairs per user").all()
    assert failed["suboptimality"].isna().all()
    ok = table[table["status"] == "ok"]
    assert len(ok) == 14 and np.isfinite(ok["suboptimality"]).all()
    # Warnings raised inside a cell are kept with its row.
    warned = ok[ok["agent"] == "fragile"]
    assert len(warned) == 2 and (warned["warnings"] == "UserWarning: fragile agent is uneasy").all()
    # A re-run retries only the failed cells.
    again = experiments.run_sweep(config, tmp_path, engine="serial")
    assert (again.skipped, again.ran, again.failed) == (14, 2, 2)


def test_results_fall_back_to_csv_without_pyarrow(tmp_path, tiny_config_text, monkeypatch):
    monkeypatch.setattr(store_module, "has_pyarrow", lambda: False)
    config = experiments.parse_config(tiny_config_text())
    summary = experiments.run_sweep(config, tmp_path, engine="serial")
    assert summary.table.name == "results.csv"
    from_csv = experiments.load_results(summary.table)
    pd.testing.assert_frame_equal(_deterministic(from_csv), _deterministic(experiments.load_results(tmp_path)),
                                  check_dtype=False)


def test_a_stale_csv_table_is_removed_when_the_parquet_one_is_written(tmp_path, tiny_config_text, monkeypatch):
    pytest.importorskip("pyarrow")
    config = experiments.parse_config(tiny_config_text())
    monkeypatch.setattr(store_module, "has_pyarrow", lambda: False)
    experiments.run_sweep(config, tmp_path, engine="serial")
    assert (tmp_path / "results.csv").exists()
    monkeypatch.undo()
    again = experiments.run_sweep(config, tmp_path, engine="serial")  # nothing to run: only the table
    assert again.ran == 0 and again.table.name == "results.parquet"
    assert sorted(path.name for path in tmp_path.glob("results.*")) == ["results.parquet"]


def test_an_output_directory_of_another_config_is_refused(tmp_path, tiny_config_text):
    first = experiments.parse_config(tiny_config_text())
    experiments.run_sweep(first, tmp_path, engine="serial")
    other = experiments.parse_config(tiny_config_text().replace("seed = 11", "seed = 12"))
    with pytest.raises(ValueError, match="holds results of a different configuration"):
        experiments.run_sweep(other, tmp_path, engine="serial")
    summary = experiments.run_sweep(other, tmp_path, engine="serial", overwrite=True)
    assert (summary.skipped, summary.ran) == (0, 12)
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert stored["fingerprint"] == other.fingerprint and stored["lr_mdp_env_version"] != "unknown"
    assert (tmp_path / "config.toml").read_text() == other.source


def test_leftover_temporary_files_of_a_killed_writer_are_ignored_and_removed(tmp_path, tiny_config_text):
    config = experiments.parse_config(tiny_config_text())
    (tmp_path / "cells").mkdir()
    half_written = tmp_path / "cells" / ".s0000-a00-r000.json.abc.tmp"
    half_written.write_text('{"cell_id": "s00')
    summary = experiments.run_sweep(config, tmp_path, engine="serial")
    assert summary.ran == 12 and not half_written.exists()


@pytest.mark.parametrize("engine, workers, scheduler, message", [
    ("threads", None, None, "engine must be one of"),
    ("processes", 0, None, "workers must be a positive integer"),
    ("processes", None, "tcp://127.0.0.1:8786", "needs engine='dask'"),
])
def test_bad_engine_arguments_are_named(tmp_path, tiny_config_text, engine, workers, scheduler, message):
    config = experiments.parse_config(tiny_config_text())
    with pytest.raises(ValueError, match=message):
        experiments.run_sweep(config, tmp_path, engine=engine, workers=workers, scheduler=scheduler)
    assert not (tmp_path / "cells").exists()


def test_progress_bar_counts_cells_on_a_terminal_only(tmp_path, tiny_config_text, monkeypatch):
    """The sweep's bar (lr_mdp_env._progress) on a stream that is a terminal; none on one that is not."""
    from lr_mdp_env import _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(_progress, "DELAY_SECONDS", 0.0)
    config = experiments.parse_config(tiny_config_text())
    terminal, plain = Terminal(), io.StringIO()
    experiments.run_sweep(config, tmp_path / "a", engine="serial", progress=terminal)
    experiments.run_sweep(config, tmp_path / "b", engine="serial", progress=plain)
    assert "sweep" in terminal.getvalue() and "/12" in terminal.getvalue()
    assert plain.getvalue() == ""


def test_a_running_dask_scheduler_gives_the_same_table(tmp_path, tiny_config_text):
    """``--scheduler ADDRESS``: cells go to an existing cluster (here a LocalCluster started by the
    test, reached only through its address) and the table matches the serial one."""
    distributed = pytest.importorskip("dask.distributed")
    config = experiments.parse_config(tiny_config_text())
    reference = _deterministic(experiments.run_serially(config))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        summary = experiments.run_sweep(config, tmp_path, engine="dask", scheduler=cluster.scheduler_address)
        assert (summary.ran, summary.failed) == (12, 0)
        assert json.loads((tmp_path / "sweep.json").read_text())["engine"] == "dask"
    table = _deterministic(experiments.load_results(tmp_path))
    pd.testing.assert_frame_equal(table[reference.columns], reference, check_dtype=False)


def test_a_dying_worker_process_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_config_text, plugin_path):
    extra = """
    [[agents]]
    name = "dying"
    """
    config = experiments.parse_config(tiny_config_text(plugins=True, extra=extra))
    summary = experiments.run_sweep(config, tmp_path, engine="processes", workers=2)
    table = experiments.load_results(tmp_path)
    assert len(table) == summary.total == 16 and table["cell_id"].is_unique
    dying = table[(table["agent"] == "dying") & (table["n_pairs_per_user"] == 40)]
    assert (dying["status"] == "error").all()
    assert dying["error"].str.contains("the worker running this cell died").all()
    # Cells that were running beside a dying one may be lost with it; the others complete.
    assert (table["status"] == "ok").sum() >= 16 - 2 * 2 * 2
    again = experiments.run_sweep(config, tmp_path, engine="processes", workers=2)
    assert again.skipped == (table["status"] == "ok").sum()


def test_more_replicates_extend_a_sweep_and_fewer_are_refused(tmp_path, tiny_config_text):
    experiments.run_sweep(experiments.parse_config(tiny_config_text()), tmp_path, engine="serial")
    more = experiments.parse_config(tiny_config_text().replace("replicates = 2", "replicates = 3"))
    summary = experiments.run_sweep(more, tmp_path, engine="serial")
    assert (summary.skipped, summary.ran) == (12, 6)
    fewer = experiments.parse_config(tiny_config_text().replace("replicates = 2", "replicates = 1"))
    with pytest.raises(ValueError, match="holds results of a different configuration"):
        experiments.run_sweep(fewer, tmp_path, engine="serial")


def test_overwrite_removes_the_old_table_and_figures(tmp_path, tiny_config_text):
    experiments.run_sweep(experiments.parse_config(tiny_config_text()), tmp_path, engine="serial")
    (tmp_path / "suboptimality.png").write_bytes(b"old figure")
    other = experiments.parse_config(tiny_config_text().replace("seed = 11", "seed = 12"))
    (tmp_path / "cells" / "s0000-a00-r000.json").unlink()  # the new run must not see old rows either
    experiments.ResultStore(tmp_path, other, overwrite=True)
    assert not (tmp_path / "suboptimality.png").exists() and not (tmp_path / "results.parquet").exists()
    assert not list((tmp_path / "cells").glob("*.json"))


def test_a_cell_measures_exactly_the_documented_metrics(tiny_config_text):
    config = experiments.parse_config(tiny_config_text())
    row = experiments.run_cell(config, config.cells()[0])
    measured = set(row) - set(config.settings[0].values()) - {
        "cell_id", "setting", "agent", "agent_name", "agent_index", "replicate", "status", "error", "warnings"}
    assert measured == set(METRIC_COLUMNS) | set(RECORD_COLUMNS)
    # The records: the world's rank and the agent's arguments with "$rank" substituted.
    p_sharelora = experiments.run_cell(config, config.cells()[2])
    assert p_sharelora["true_rank"] == 2 and json.loads(p_sharelora["arguments"])["rank"] == 2
