"""Sweep throughput: cells per second on 1 and 2 local worker processes, and the speed-up.

The sweep is the shipped ``sharelora`` grid restricted to 20 users and rank 2 (pooled,
independent, P-ShareLoRA and oracle-subspace MLE with greedy planning and exact evaluation,
25 to 400 pairs per user, 4 replicates): 80 cells of 0.05 to 3 s. It runs on a local process
pool of 1 and of 2 workers (one BLAS thread each), and the tables of both runs are checked to be
identical. On a 2-core machine the ideal speed-up is 2; process start-up and the uneven cost of
cells (P-ShareLoRA's fit dominates) take their share.

Run: ``python benchmarks/bench_sweep.py``
"""

from __future__ import annotations

import tempfile
import time

import pandas as pd

import lr_mdp_experiments as experiments
from lr_mdp_experiments.cli import shipped_config


def main() -> None:
    text = shipped_config("sharelora").source
    text = text.replace("n_users = [20, 80]", "n_users = [20]").replace("rank = [2, 5]", "rank = [2]")
    config = experiments.parse_config(text, origin="bench.toml")
    n_cells = len(config.cells())
    tables, rates = {}, {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            experiments.run_sweep(config, out, engine="processes", workers=workers)
            seconds = time.perf_counter() - start
            tables[workers] = experiments.load_results(out).drop(columns=list(experiments.TIMING_COLUMNS))
        rates[workers] = n_cells / seconds
        print(f"{workers} worker{'s' if workers > 1 else ' '}: {n_cells} cells in {seconds:6.1f} s "
              f"= {rates[workers]:5.2f} cells/s")
    pd.testing.assert_frame_equal(tables[1], tables[2])
    print(f"speed-up 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x (ideal 2x on 2 cores); tables identical")


if __name__ == "__main__":
    main()
