"""The ``lr-mdp`` command and the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lr_mdp_experiments as experiments
from lr_mdp_experiments.cli import build_parser, main, results_table
from lr_mdp_env.theory import log_log_slope
from lr_mdp_experiments.plots import (
    _slope_label,
    bootstrap_slope_interval,
    panel_columns,
    plot_results,
    results_figure,
    summarise,
)


def _synthetic_results(slopes: dict[str, float], replicates: int = 3) -> pd.DataFrame:
    """Rows of a fake sweep: metric = c x^slope times a replicate-specific factor."""
    rows = []
    for setting, (n_users, x) in enumerate((u, x) for u in (10, 40) for x in (25, 50, 100, 200)):
        for agent_index, (agent, slope) in enumerate(slopes.items()):
            for replicate in range(replicates):
                rows.append({"cell_id": f"{setting}-{agent_index}-{replicate}", "setting": setting,
                             "agent": agent, "agent_index": agent_index, "replicate": replicate,
                             "n_users": n_users, "n_pairs_per_user": x, "status": "ok", "error": "",
                             "suboptimality": (1 + 0.1 * replicate) * 3.0 * x**slope})
    return pd.DataFrame(rows)


def test_summary_gives_the_mean_and_the_t_interval_over_replicates():
    table = _synthetic_results({"a": -0.5})
    summary = summarise(table, "suboptimality", "n_pairs_per_user", ["n_users"])
    assert len(summary) == 8 and (summary["replicates"] == 3).all()
    first = summary.iloc[0]
    values = 3.0 * 25**-0.5 * np.array([1.0, 1.1, 1.2])
    assert first["mean"] == pytest.approx(values.mean())
    assert first["half_width"] == pytest.approx(stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3))


def test_failed_cells_are_left_out_of_the_summary():
    table = _synthetic_results({"a": -0.5})
    table.loc[0, ["status", "suboptimality"]] = ["error", np.nan]
    summary = summarise(table, "suboptimality", "n_pairs_per_user", ["n_users"])
    assert summary.iloc[0]["replicates"] == 2


def test_the_legend_slope_is_the_theory_slope_over_the_points_with_a_logarithm():
    x = np.array([25, 50, 100, 200, 400])
    mean = 2.0 * x**-0.5
    mean[2] = 0.0  # an error that vanished: no logarithm, left out of the fit
    rows = pd.DataFrame({"n": x, "metric": mean})
    label = _slope_label(x, mean, rows, "metric", "n")
    assert label == "  slope -0.50"  # one replicate: no bootstrap interval
    # Fewer than two sizes left: no slope at all.
    assert _slope_label(x[:2], np.array([0.0, 1.0]), rows.iloc[:2], "metric", "n") == ""


def test_panels_are_the_grid_values_other_than_x():
    table = _synthetic_results({"a": -0.5, "b": -1.0})
    assert panel_columns(table, "n_pairs_per_user") == ["n_users"]
    assert panel_columns(table[table["n_users"] == 10], "n_pairs_per_user") == []


def test_plot_writes_a_png_with_the_fitted_slopes_in_the_legend(tmp_path, monkeypatch):
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.plot

    def recording_plot(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    path = plot_results(_synthetic_results({"a": -0.5, "b": -1.0}), tmp_path / "figure.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Replicate factors are the same at every x, so every resample's mean is exactly c' x^slope:
    # the slopes and their bootstrap intervals are exact.
    assert labels.count("a  slope -0.50 [-0.50, -0.50]") == 2 and labels.count("b  slope -1.00 [-1.00, -1.00]") == 2


def test_plot_refuses_unknown_metrics(tmp_path):
    with pytest.raises(ValueError, match="results have no column 'regret'"):
        plot_results(_synthetic_results({"a": -0.5}), tmp_path / "x.png", metric="regret")


def test_results_table_prints_agents_by_x_in_panels():
    text = results_table(_synthetic_results({"a": -0.5}), "suboptimality", "n_pairs_per_user")
    assert "[n_users=10]" in text and "[n_users=40]" in text
    assert "n_pairs_per_user=25" in text and "n_pairs_per_user=200" in text


@pytest.mark.parametrize("command", ["demo", "sweep", "plot", "reproduce"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lr-mdp " + command in capsys.readouterr().out


def test_sweep_and_plot_commands_write_results_and_figures(tmp_path, tiny_config_text, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config_text())
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out), "--workers", "1", "--no-progress",
                 "--metric", "suboptimality", "--metric", "reward_error"]) == 0
    printed = capsys.readouterr().out
    assert "tiny: 12 cells (0 already done, 12 run, 0 failed)" in printed
    assert "reward_error (mean ± 95% CI over replicates)" in printed
    assert (out / "suboptimality.png").exists() and (out / "reward_error.png").exists()
    table = experiments.load_results(out)
    assert len(table) == 12
    assert main(["plot", str(out / "results.parquet"), "--metric", "coverage", "--linear"]) == 0
    assert (out / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    # A second run finds everything done.
    assert main(["sweep", str(config), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "(12 already done, 0 run, 0 failed)" in capsys.readouterr().out


def test_a_bad_config_exits_with_status_2_and_names_the_key(tmp_path, tiny_config_text, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(tiny_config_text().replace("n_states = 4", "n_states = -4"))
    assert main(["sweep", str(config), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lr-mdp: config error: config key 'world'") and "n_states" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, engine, workers, scheduler", [
    ([], "processes", None, None),
    (["--workers", "1"], "serial", 1, None),
    (["--workers", "3"], "processes", 3, None),
    (["--dask-workers", "2"], "dask", 2, None),
    (["--scheduler", "tcp://10.0.0.5:8786"], "dask", None, "tcp://10.0.0.5:8786"),
])
def test_engine_flags_choose_the_engine(tmp_path, tiny_config_text, monkeypatch, flags, engine, workers, scheduler):
    import lr_mdp_experiments.cli as cli

    calls = []

    def fake_run_sweep(config, out, **options):
        calls.append(options)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "run_sweep", fake_run_sweep)
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config_text())
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), *flags]) == 2
    assert (calls[0]["engine"], calls[0]["workers"], calls[0]["scheduler"]) == (engine, workers, scheduler)


def test_scheduler_and_dask_workers_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "x.toml", "--scheduler", "tcp://a:1", "--dask-workers", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--x", "nope"], "--x 'nope' is not a column of this sweep's table"),
    (["--metric", "suboptimalty"], "--metric 'suboptimalty' is not a metric"),
])
def test_bad_plot_options_of_a_sweep_are_refused_before_it_runs(tmp_path, tiny_config_text, capsys, flags, message):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config_text())
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_plot_names_the_problem_with_its_inputs(tmp_path):
    table = _synthetic_results({"a": -0.5})
    with pytest.raises(ValueError, match="results have no column 'nope' \\(--x\\)"):
        plot_results(table, tmp_path / "x.png", x="nope")
    with pytest.raises(ValueError, match="--metric 'error' is not a numeric column"):
        plot_results(table, tmp_path / "x.png", metric="error")
    failed = table.assign(status="error", error="ValueError: boom")
    with pytest.raises(ValueError, match="all 24 cells failed; first error: ValueError: boom"):
        plot_results(failed, tmp_path / "x.png")


def test_agents_keep_the_order_of_the_configuration():
    table = _synthetic_results({"zeta": -0.5, "Alpha": -1.0})
    text = results_table(table, "suboptimality", "n_pairs_per_user")
    assert text.index("zeta") < text.index("Alpha")


def test_a_sweep_with_failed_cells_exits_with_status_1(tmp_path, tiny_config_text, plugin_path, capsys):
    config = tmp_path / "fragile.toml"
    config.write_text(tiny_config_text(plugins=True, extra='[[agents]]\nname = "fragile"\n'))
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 1
    assert "2 cell(s) failed:" in capsys.readouterr().out


def test_the_slope_interval_is_the_bootstrap_over_replicates_of_the_slow_tests():
    """The same computation as the slow statistical tests' (replicates resampled jointly across
    sizes, 2000 draws, percentiles 2.5 and 97.5), rebuilt here from its definition."""
    rng = np.random.default_rng(1)
    x = np.array([25.0, 50.0, 100.0, 200.0])
    rows = 2.0 * x[:, None] ** -0.5 * np.exp(rng.normal(0.0, 0.3, (4, 6)))
    picks = np.random.default_rng(0).integers(6, size=(2000, 6))
    slopes = np.polyfit(np.log(x), np.log(rows[:, picks].mean(axis=2)), 1)[0]
    expected = np.percentile(slopes, [2.5, 97.5])
    low, high = bootstrap_slope_interval(x, rows)
    assert (low, high) == pytest.approx(tuple(expected), abs=1e-12)
    assert low < log_log_slope(x, rows.mean(axis=1)) < high
    # One replicate, or a missing one everywhere: no interval.
    assert np.isnan(bootstrap_slope_interval(x, rows[:, :1])[0])


def test_replicates_are_resampled_jointly_across_sizes():
    """Two worlds with slopes -0.4 and -0.6 and constants 1 and 10: every mixture of the two has a
    log-log slope between -0.6 and -0.4; resampling each size on its own would mix a size's
    large constant with another's small one and leave that range."""
    x = np.array([10.0, 100.0, 1000.0])
    rows = np.column_stack([x**-0.4, 10 * x**-0.6, x**-0.4, 10 * x**-0.6])
    low, high = bootstrap_slope_interval(x, rows)
    # A resample of one world alone gives its slope exactly, up to the rounding of the fit.
    assert -0.6 - 1e-12 <= low < high <= -0.4 + 1e-12
    with_gap = rows.copy()
    with_gap[1, 0] = np.nan  # a failed cell: that replicate is left out at that size only
    assert np.isfinite(bootstrap_slope_interval(x, with_gap)).all()


def test_bands_are_clipped_to_the_metrics_range():
    rows = []
    for setting, x in enumerate((25, 50, 100)):
        for replicate, covered in enumerate((1.0, 1.0, 0.0, 1.0)):  # mean 0.75, t-band wider than 0.25
            rows.append({"cell_id": f"{setting}-{replicate}", "setting": setting, "agent": "a", "agent_index": 0,
                         "replicate": replicate, "n_pairs_per_user": x, "status": "ok", "error": "",
                         "coverage": covered, "subspace_distance": 1.0 - covered})
    table = pd.DataFrame(rows)
    assert summarise(table, "coverage", "n_pairs_per_user")["half_width"].iloc[0] > 0.25
    for metric in ("coverage", "subspace_distance"):
        figure = results_figure(table, metric=metric, loglog=False)
        band = figure.axes[0].collections[0].get_paths()[0].vertices[:, 1]
        assert band.min() >= 0.0 and band.max() <= 1.0 and band.max() - band.min() > 0.5


def test_coinciding_curves_stay_visible():
    """Two agents with identical numbers (same estimate, different planner): different markers
    and line styles, and x positions dodged apart, on log and linear axes."""
    table = _synthetic_results({"a": -0.5})
    twin = table.assign(agent="twin", agent_index=1, cell_id=table["cell_id"] + "-twin")
    both = pd.concat([table, twin], ignore_index=True)
    for loglog in (True, False):
        lines = [line for line in results_figure(both, loglog=loglog).axes[0].get_lines() if line.get_label()[0] != "_"]
        first, second = lines
        np.testing.assert_array_equal(first.get_ydata(), second.get_ydata())
        assert first.get_marker() != second.get_marker()
        assert np.all(np.asarray(first.get_xdata()) < np.asarray(second.get_xdata()))
        ratio = np.asarray(second.get_xdata()) / np.asarray(first.get_xdata())
        assert np.all(ratio < 1.1)  # close to the true x: a dodge, not a move


def test_plot_command_titles_its_figures_with_the_sweeps_name(tmp_path, tiny_config_text, monkeypatch, capsys):
    import lr_mdp_experiments.cli as cli

    config = experiments.parse_config(tiny_config_text())
    experiments.run_sweep(config, tmp_path, engine="serial")
    titles = []
    real = cli.plot_results

    def recording(*args, **kwargs):
        titles.append(kwargs.get("title"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "plot_results", recording)
    assert main(["plot", str(tmp_path)]) == 0
    assert main(["plot", str(tmp_path / "results.parquet"), "--out", str(tmp_path / "figures")]) == 0
    assert titles == ["tiny", "tiny"]


def test_plot_help_prints_percent_signs_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["plot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% confidence bands" in text and "%%" not in text
