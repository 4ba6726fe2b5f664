"""The ``lr-mdp`` command: ``demo``, ``sweep``, ``plot`` and ``reproduce``."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

import pandas as pd

from .config import ConfigError, SweepConfig, load_config, parse_config
from .cell import METRIC_COLUMNS
from .plots import RATE_METRICS, panel_columns, plot_results, summarise
from .store import load_results, sweep_name
from .sweep import SweepInterrupted, run_sweep

#: Shipped configurations of ``lr-mdp reproduce``: the horizontal axis and the metrics plotted.
REPRODUCTIONS = {
    "sharelora": ("n_pairs_per_user", ("suboptimality", "subspace_distance", "reward_error")),
    "loco": ("n_pairs", ("suboptimality", "reward_error")),
    "pessimism": ("epsilon", ("suboptimality", "lower_bound", "coverage")),
}
DEMO_METRICS = ("suboptimality", "reward_error")


def shipped_config(name: str) -> SweepConfig:
    """A configuration shipped in ``lr_mdp_experiments/configs`` (``demo`` or a reproduction)."""
    text = resources.files("lr_mdp_experiments").joinpath("configs", f"{name}.toml").read_text()
    return parse_config(text, origin=f"{name}.toml")


def results_table(table: pd.DataFrame, metric: str, x: str) -> str:
    """``metric`` (mean ± 95% half-width over replicates) with agents as rows and ``x`` as columns,
    one block per panel of other varying grid values."""
    panels = panel_columns(table, x)
    summary = summarise(table, metric, x, panels)
    summary["cell"] = [f"{mean:.3g} ± {width:.2g}" if width == width else f"{mean:.3g}"
                       for mean, width in zip(summary["mean"], summary["half_width"])]
    blocks = []
    for key, block in (summary.groupby(panels, sort=True, observed=True) if panels else [((), summary)]):
        key = key if isinstance(key, tuple) else (key,)
        heading = ", ".join(f"{column}={value}" for column, value in zip(panels, key))
        pivot = block.pivot(index="agent", columns=x, values="cell").reindex(
            [agent for agent in block["agent"].cat.categories if agent in set(block["agent"])])
        pivot.columns = [f"{x}={value}" for value in pivot.columns]
        blocks.append((f"[{heading}]\n" if heading else "") + pivot.to_string())
    return f"{metric} (mean ± 95% CI over replicates)\n" + "\n\n".join(blocks)


def _failures(table: pd.DataFrame) -> str:
    failed = table[table["status"] != "ok"] if "status" in table else table.iloc[:0]
    if failed.empty:
        return ""
    lines = [f"{len(failed)} cell(s) failed:"]
    lines += [f"  {row.cell_id} {row.agent}: {row.error}" for row in failed.head(10).itertuples()]
    return "\n".join(lines)


def _check_outputs(config: SweepConfig, metrics: Sequence[str], x: str) -> None:
    """Before a sweep runs: ``--x`` must be a column of the table and each ``--metric`` a number."""
    setting_columns = set(config.settings[0].values()) | {"replicate", "n_pairs"}
    if x not in setting_columns:
        raise ConfigError(f"--x {x!r} is not a column of this sweep's table; choose one of {sorted(setting_columns)}")
    for metric in metrics:
        if metric not in METRIC_COLUMNS:
            raise ConfigError(f"--metric {metric!r} is not a metric; choose one of {sorted(METRIC_COLUMNS)}")


def _run(config: SweepConfig, args: argparse.Namespace, out: Path, metrics: Sequence[str], x: str) -> int:
    _check_outputs(config, metrics, x)
    engine = "serial" if args.workers == 1 and not args.scheduler and not args.dask_workers else "processes"
    workers = args.workers
    if args.scheduler or args.dask_workers:
        engine, workers = "dask", args.dask_workers
    summary = run_sweep(config, out, engine=engine, workers=workers, scheduler=args.scheduler,
                        overwrite=args.overwrite, progress=not args.no_progress)
    table = load_results(out)
    print(f"{config.name}: {summary.total} cells ({summary.skipped} already done, {summary.ran} run, "
          f"{summary.failed} failed) in {summary.seconds:.1f} s on {engine}; results in {summary.table}")
    for metric in metrics:
        if metric in table and table[metric].notna().any():
            print()
            print(results_table(table, metric, x))
            figure = plot_results(table, out / f"{metric}.png", metric=metric, x=x, title=config.name)
            print(f"figure: {figure}")
    failures = _failures(table)
    if failures:
        print("\n" + failures)
        return 1
    return 0


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    engines = parser.add_mutually_exclusive_group()
    engines.add_argument("--workers", type=_positive, default=None,
                         help="local worker processes (default: all cores; 1 runs in this process)")
    dask = engines
    dask.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS")
    dask.add_argument("--dask-workers", type=_positive, metavar="N",
                      help="run on a Dask LocalCluster of N single-threaded worker processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard results of a different configuration in the output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lr-mdp", description="Personalized RLHF experiments on low-rank tabular MDPs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="a small end-to-end study: collect, fit, plan, evaluate, plot",
                               description="Collect preferences from 20 users of a random low-rank world "
                               "(10 states, 3 actions, H = 5, d = 12, rank 2) at 25 to 200 comparisons per "
                               "user; fit pooled, independent and P-ShareLoRA agents (the last two also with "
                               "exact pessimism); evaluate them exactly; print the tables and write figures. "
                               "60 cells, 3 replicates.")
    demo.add_argument("--out", type=Path, default=Path("lr-mdp-demo"), help="output directory (default: lr-mdp-demo)")
    _add_engine_options(demo)

    sweep = commands.add_parser("sweep", help="run a grid of settings x agents x seeds from a TOML config",
                                description="Run (or resume) a sweep: completed cells in --out are skipped, "
                                "failed cells are retried.")
    sweep.add_argument("config", type=Path, metavar="CONFIG.toml")
    sweep.add_argument("--out", type=Path, default=None, help="output directory (default: results/<config name>)")
    sweep.add_argument("--x", default="n_pairs_per_user", help="grid column of the printed table and figures")
    sweep.add_argument("--metric", action="append", default=None,
                       help="metric(s) to print and plot (default: suboptimality); repeatable")
    _add_engine_options(sweep)

    plot = commands.add_parser("plot", help="PNG figures of a sweep's results",
                               description="One line per agent with 95% confidence bands over replicates; "
                               "log-log axes with fitted slopes (and their 95% bootstrap intervals over "
                               "replicates) for rate metrics. Figures are titled with the sweep's name.")
    plot.add_argument("results", type=Path, metavar="RESULTS",
                      help="a sweep output directory, results.parquet or results.csv")
    plot.add_argument("--metric", action="append", default=None,
                      help=f"column(s) to plot (default: suboptimality); rate metrics: {', '.join(RATE_METRICS)}")
    plot.add_argument("--x", default="n_pairs_per_user", help="column on the horizontal axis")
    plot.add_argument("--out", type=Path, default=None,
                      help="directory of the figures (default: beside the results)")
    scale = plot.add_mutually_exclusive_group()
    scale.add_argument("--loglog", dest="loglog", action="store_true", default=None, help="force log-log axes")
    scale.add_argument("--linear", dest="loglog", action="store_false", help="force linear axes")

    reproduce = commands.add_parser("reproduce", help="run a shipped reproduction: " + ", ".join(REPRODUCTIONS),
                                    description="Run one of the shipped configurations and plot its metrics.")
    reproduce.add_argument("name", choices=sorted(REPRODUCTIONS))
    reproduce.add_argument("--out", type=Path, default=None, help="output directory (default: results/<name>)")
    _add_engine_options(reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _run(shipped_config("demo"), args, args.out, DEMO_METRICS, "n_pairs_per_user")
        if args.command == "sweep":
            config = load_config(args.config)
            out = args.out or Path("results") / config.name
            return _run(config, args, out, args.metric or ["suboptimality"], args.x)
        if args.command == "reproduce":
            config = shipped_config(args.name)
            x, metrics = REPRODUCTIONS[args.name]
            return _run(config, args, args.out or Path("results") / args.name, metrics, x)
        table = load_results(args.results)
        out = args.out or (args.results if args.results.is_dir() else args.results.parent)
        title = sweep_name(args.results)
        for metric in args.metric or ["suboptimality"]:
            print(plot_results(table, out / f"{metric}.png", metric=metric, x=args.x, loglog=args.loglog,
                               title=title))
        return 0
    except ConfigError as error:
        print(f"lr-mdp: config error: {error}", file=sys.stderr)
        return 2
    except (ValueError, ImportError) as error:
        print(f"lr-mdp: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. an output directory without write permission, a full disk
        where = f" {error.filename}" if error.filename else ""
        print(f"lr-mdp: error: cannot write{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    except SweepInterrupted as interrupted:
        print(f"\nlr-mdp: interrupted: {interrupted.saved} of {interrupted.total} cells are saved in "
              f"{interrupted.directory}; run the same command again to resume (saved cells are skipped)",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nlr-mdp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
