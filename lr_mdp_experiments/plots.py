"""Figures of a sweep: a metric against a grid value, one line per agent, bands over replicates.

Each line is the mean over replicates; its band is the 95% t-interval of that mean
(``t_{0.975, m-1} s / sqrt(m)`` for ``m`` replicates), clipped to the metric's range (a
coverage or a subspace distance lies in ``[0, 1]``, errors and sub-optimalities are
non-negative). On log-log axes the legend gives the least-squares slope of ``log mean`` against
``log x`` with a 95% bootstrap interval over the replicates: the measured rate to compare with
the ``sqrt(k / n)`` shapes of :mod:`lr_mdp_env.theory`. Grid values other than ``x`` that vary get
one panel each. Agents get distinct markers and line styles and are dodged by a small
horizontal offset, so curves that coincide (two agents with the same estimate) stay visible.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lr_mdp_env import theory

from .cell import METRIC_COLUMNS, RECORD_COLUMNS

#: Metrics whose rates matter: plotted on log-log axes by default.
RATE_METRICS = ("suboptimality", "suboptimality_max", "reward_error", "subspace_distance", "bound")
#: Sample sizes: rates are slopes against these.
SAMPLE_COLUMNS = ("n_pairs_per_user", "n_pairs", "n_users")
#: The range each metric can take: confidence bands are clipped to it.
METRIC_RANGES = {"coverage": (0.0, 1.0), "subspace_distance": (0.0, 1.0), "suboptimality": (0.0, np.inf),
                 "suboptimality_max": (0.0, np.inf), "reward_error": (0.0, np.inf), "bound": (0.0, np.inf),
                 "seconds": (0.0, np.inf), "n_pairs": (0.0, np.inf)}
#: Draws of the bootstrap interval of a slope.
BOOTSTRAP_DRAWS = 2000
#: Horizontal offset between neighbouring agents: a fraction of a decade on log axes, of the
#: range of ``x`` on linear ones.
DODGE = 0.012
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def summarise(table: pd.DataFrame, metric: str, x: str, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, 95% half-width and replicate count of ``metric`` per agent, panel and ``x``.

    Failed cells (``status != "ok"``) and missing values are left out.

    Returns
    -------
    pandas.DataFrame
        Columns ``by + ["agent", x, "mean", "replicates", "minimum", "half_width"]``.
    """
    by = list(by or [])
    check_columns(table, metric, x)
    usable = table[(table.get("status", "ok") == "ok") & table[metric].notna()]
    usable = usable.assign(agent=pd.Categorical(usable["agent"], categories=agent_order(table)))
    grouped = usable.groupby([*by, "agent", x], sort=True, observed=True)[metric]
    summary = grouped.agg(["mean", "std", "count", "min"]).reset_index()
    counts = summary["count"].to_numpy()
    quantile = np.where(counts > 1, stats.t.ppf(0.975, np.maximum(counts - 1, 1)), np.nan)
    summary["half_width"] = quantile * summary["std"].fillna(0.0).to_numpy() / np.sqrt(counts)
    return summary.rename(columns={"count": "replicates", "min": "minimum"}).drop(columns="std")


def agent_order(table: pd.DataFrame) -> list[str]:
    """Agents in the order of the configuration (``agent_index``), else alphabetically."""
    if "agent_index" in table:
        return list(table.sort_values("agent_index", kind="stable")["agent"].unique())
    return sorted(table["agent"].unique())


def check_columns(table: pd.DataFrame, metric: str, x: str) -> None:
    """Refuse, with the reason, a table that cannot give ``metric`` against ``x``."""
    if table.empty:
        raise ValueError("the results are empty: no cell has finished")
    if "status" in table and not (table["status"] == "ok").any():
        first = table["error"].iloc[0] if "error" in table else ""
        raise ValueError(f"all {len(table)} cells failed; first error: {first}")
    for name, column in (("metric", metric), ("x", x)):
        if column not in table.columns:
            raise ValueError(f"results have no column {column!r} (--{name}); columns: {sorted(table.columns)}")
    if not pd.api.types.is_numeric_dtype(table[metric]) or pd.api.types.is_bool_dtype(table[metric]):
        raise ValueError(f"--metric {metric!r} is not a numeric column; numeric columns: "
                         f"{sorted(c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]))}")


def bootstrap_slope_interval(x: Any, per_replicate: Any, *, draws: int = BOOTSTRAP_DRAWS,
                             seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the log-log slope of the mean over replicates.

    Parameters
    ----------
    x : array_like, shape (k,)
    per_replicate : array_like, shape (k, m)
        The metric of replicate ``j`` at ``x[i]`` (``NaN`` where a cell is missing). A replicate
        is one world seen at every ``x``, so replicates are resampled jointly across ``x``.
    draws, seed : int
        Bootstrap resamples and the seed of their generator (the figure is reproducible).

    Returns
    -------
    (low, high) : floats, NaN when fewer than two replicates or two positive sizes.
    """
    x = np.asarray(x, dtype=float)
    rows = np.asarray(per_replicate, dtype=float)
    if rows.ndim != 2 or rows.shape[1] < 2 or np.sum(x > 0) < 2 or np.ptp(np.log(x[x > 0])) == 0:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(rows.shape[1], size=(draws, rows.shape[1]))
    values = rows[:, picks]  # (k, draws, m)
    present = np.isfinite(values)
    counts = present.sum(axis=2)
    sums = np.where(present, values, 0.0).sum(axis=2)
    means = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    usable = (x > 0)[:, None] & np.isfinite(means) & (np.nan_to_num(means) > 0)
    keep = usable[x > 0].all(axis=0)  # a resample with a zero mean has no log-log slope
    if keep.sum() < 2:
        return float("nan"), float("nan")
    slopes = theory.log_log_slope(x[x > 0], means[x > 0][:, keep])
    low, high = np.percentile(slopes, [2.5, 97.5])
    return float(low), float(high)


def panel_columns(table: pd.DataFrame, x: str) -> list[str]:
    """Setting columns that vary between settings sharing the same ``x``: one panel per combination."""
    if "setting" not in table:
        return []
    settings = table.drop_duplicates("setting")
    excluded = {x, "setting", "cell_id", "replicate", "agent", "agent_name", "agent_index", "status", "error",
                "warnings", *METRIC_COLUMNS, *RECORD_COLUMNS}
    columns = []
    for column in settings.columns:
        if column in excluded:
            continue
        if settings.groupby(x)[column].nunique(dropna=False).max() > 1:
            columns.append(column)
    return columns


def plot_results(
    table: pd.DataFrame,
    out: str | Path,
    *,
    metric: str = "suboptimality",
    x: str = "n_pairs_per_user",
    loglog: bool | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of ``metric`` against ``x``: one line per agent, one panel per other grid value.

    Parameters
    ----------
    table : pandas.DataFrame
        A sweep's results (:func:`~lr_mdp_experiments.load_results`).
    out : path
        The PNG to write.
    metric, x : str
        Columns of ``table``.
    loglog : bool, optional
        Default: log-log for the rate metrics (``RATE_METRICS``) against a sample size
        (``SAMPLE_COLUMNS``), linear otherwise.
    title : str, optional
        The figure's title (the sweep's name, as ``lr-mdp sweep`` and ``lr-mdp plot`` give it).

    Returns
    -------
    pathlib.Path
    """
    import matplotlib.pyplot as plt

    figure = results_figure(table, metric=metric, x=x, loglog=loglog, title=title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=80, format="png")
    plt.close(figure)
    # A figure has few colours: a 256-colour palette keeps it exact to the eye at a third the size.
    from PIL import Image

    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(out, optimize=True)
    return out


def results_figure(
    table: pd.DataFrame,
    *,
    metric: str = "suboptimality",
    x: str = "n_pairs_per_user",
    loglog: bool | None = None,
    title: str | None = None,
):
    """The matplotlib ``Figure`` :func:`plot_results` writes (same parameters, without ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    check_columns(table, metric, x)
    panels = panel_columns(table, x)
    summary = summarise(table, metric, x, panels)
    if summary.empty:
        raise ValueError(f"no successful cell has a value of {metric!r} to plot")
    if loglog is None:
        loglog = (metric in RATE_METRICS and x in SAMPLE_COLUMNS
                  and bool((summary[x] > 0).all() and (summary["mean"] > 0).any()))
    low, high = METRIC_RANGES.get(metric, (-np.inf, np.inf))
    usable = table[(table.get("status", "ok") == "ok") & table[metric].notna()]
    keys = [tuple(row) for row in summary[panels].drop_duplicates().itertuples(index=False)] if panels else [()]
    columns = int(np.ceil(np.sqrt(len(keys))))
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    order = agent_order(table)
    colours = dict(zip(order, itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])))
    # Dodge: agent k of K sits at x * 10^(DODGE (k - (K-1)/2)) on log axes (x + ... range on linear ones).
    shifts = {agent: DODGE * (k - (len(order) - 1) / 2) for k, agent in enumerate(order)}
    x_range = float(np.ptp(summary[x].to_numpy(dtype=float))) or 1.0
    for axis, key in zip(axes.ravel(), keys):
        panel, raw = summary, usable
        for column, value in zip(panels, key):
            panel, raw = panel[panel[column] == value], raw[raw[column] == value]
        for agent, line in panel.groupby("agent", sort=True, observed=True):
            line = line.sort_values(x)
            label = agent
            if loglog and not (line["mean"] > 0).all():
                # Exact zeros (e.g. the oracle's subspace distance) have no place on log axes.
                label += "  (zero: not shown)" if not (line["mean"] > 0).any() else "  (zeros not shown)"
                line = line[line["mean"] > 0]
            if loglog:
                label += _slope_label(line[x], line["mean"], raw[raw["agent"] == agent], metric, x)
            k = order.index(agent)
            position = (line[x] * 10 ** shifts[agent]) if loglog else (line[x] + shifts[agent] * x_range)
            style = dict(color=colours[agent], marker=MARKERS[k % len(MARKERS)],
                         linestyle=LINESTYLES[k // len(MARKERS) % len(LINESTYLES)] if len(order) <= len(MARKERS)
                         else LINESTYLES[k % len(LINESTYLES)])
            axis.plot(position, line["mean"], label=label, markersize=6 - 0.4 * (k % 4), **style)
            half_width = line["half_width"].fillna(0.0)
            lower = np.clip(line["mean"] - half_width, low, high)
            upper = np.clip(line["mean"] + half_width, low, high)
            if loglog:  # a band below every replicate would only stretch the log axis
                lower = np.maximum(lower, line["minimum"])
            if len(line) == 1:  # a band needs two points: show the interval as an error bar
                axis.errorbar(position, line["mean"], yerr=[line["mean"] - lower, upper - line["mean"]],
                              color=colours[agent], capsize=4, linestyle="none")
            axis.fill_between(position, lower, upper, color=colours[agent], alpha=0.2, linewidth=0)
        if loglog:
            axis.set_xscale("log")
            axis.set_yscale("log")
            values = np.sort(panel[x].unique())
            axis.set_xticks(values, [f"{value:g}" for value in values])
            axis.minorticks_off()
            # Narrow ranges get ticks at 1, 2 and 5 of every decade so that they still carry labels.
            bottom, top = axis.get_ylim()
            subs = (1.0, 2.0, 5.0) if top / bottom < 100 else (1.0,)
            axis.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
            axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_xlabel(x)
        axis.set_ylabel(metric)
        if panels:
            axis.set_title(", ".join(f"{column}={value}" for column, value in zip(panels, key)), fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(keys):]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def _slope_label(x: Any, mean: Any, rows: pd.DataFrame, metric: str, column: str) -> str:
    """``"  slope -0.52 [-0.60, -0.45]"``: the fitted slope of the mean and its bootstrap interval."""
    sizes, mean = np.asarray(x, dtype=float), np.asarray(mean, dtype=float)
    # A mean that vanished or a missing cell has no logarithm: the slope is fitted on the others.
    keep = (sizes > 0) & (mean > 0) & np.isfinite(sizes) & np.isfinite(mean)
    if np.unique(sizes[keep]).size < 2:
        return ""
    slope = theory.log_log_slope(sizes[keep], mean[keep])
    per_replicate = rows.pivot_table(index=column, columns="replicate", values=metric, aggfunc="mean") \
        if "replicate" in rows else pd.DataFrame()
    per_replicate = per_replicate.reindex(np.asarray(x))
    low, high = bootstrap_slope_interval(per_replicate.index.to_numpy(dtype=float), per_replicate.to_numpy())
    interval = f" [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else ""
    return f"  slope {slope:+.2f}{interval}"
