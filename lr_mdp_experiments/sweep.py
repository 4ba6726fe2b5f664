"""Running a sweep: serially, on a local process pool, or on a Dask cluster, with the same table.

Cells are independent and seeded by their identity (:mod:`.cell`), so the engine and the number
of workers change only the order in which rows arrive; the store sorts them.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

from lr_mdp_env._progress import progress_bar

import pandas as pd

from .cell import error_row, run_cell
from .config import Cell, SweepConfig
from .store import ResultStore, rows_to_table

ENGINES = ("serial", "processes", "dask")
#: Seconds between two rebuilds of the results table while cells finish.
TABLE_INTERVAL = 2.0


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C (``SIGINT``); the finished cells are saved and a re-run resumes.

    Attributes
    ----------
    saved, total : int
        Cells completed in the output directory, and cells in the grid.
    directory : pathlib.Path
    """

    def __init__(self, saved: int, total: int, directory: Path) -> None:
        super().__init__(f"{saved} of {total} cells are saved in {directory}")
        self.saved, self.total, self.directory = saved, total, directory


@dataclass(frozen=True)
class SweepSummary:
    """What a run did: cells in the grid, skipped (done before), run now, failed now."""

    total: int
    skipped: int
    ran: int
    failed: int
    seconds: float
    table: Path | None


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    engine: str = "processes",
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | TextIO = False,
) -> SweepSummary:
    """Run every cell of ``config`` not yet completed in ``out``.

    Parameters
    ----------
    config : SweepConfig
    out : path
        Output directory (:class:`~.store.ResultStore`).
    engine : {"serial", "processes", "dask"}, default "processes"
        ``"processes"``: a local pool of ``workers`` processes (default: the CPU count);
        ``"dask"``: ``dask.distributed`` on the scheduler at ``scheduler``, or on a
        ``LocalCluster`` of ``workers`` single-threaded processes it starts.
    workers : int, optional
    scheduler : str, optional
        Address of a running Dask scheduler (``engine="dask"`` only).
    overwrite : bool, default False
        Discard results of a different configuration found in ``out``.
    progress : bool or text stream, default False
        Show a progress bar over the cells with the failures so far (``True``: on standard
        error; a stream: on it), drawn only on a terminal and once the sweep runs a couple of
        seconds (:func:`lr_mdp_env._progress.progress_bar`).

    Returns
    -------
    SweepSummary

    Raises
    ------
    SweepInterrupted
        On Ctrl-C: running cells are abandoned (worker processes stopped), finished ones stay
        saved and the table is rebuilt from them; running the same sweep again resumes.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if scheduler is not None and engine != "dask":
        raise ValueError("scheduler is an address of a Dask scheduler: it needs engine='dask'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    workers = workers or os.cpu_count() or 1
    store = ResultStore(out, config, overwrite=overwrite)
    store.write_manifest(engine, workers)
    done = store.completed()
    pending = [cell for cell in config.cells() if cell.cell_id not in done]
    total = len(config.cells())
    bar = progress_bar(len(pending), "sweep", progress, unit="cell")
    start = time.perf_counter()
    failed, last_table = 0, time.perf_counter()
    results = {"serial": _serial, "processes": _processes, "dask": _dask}[engine](config, pending, workers, scheduler)
    try:
        for cell, row in results:
            store.record(row)
            failed += row["status"] != "ok"
            bar.set_postfix_str(f"{failed} failed", refresh=False)
            bar.update()
            if time.perf_counter() - last_table > TABLE_INTERVAL:
                store.write_table()
                last_table = time.perf_counter()
    except KeyboardInterrupt:
        results.close()  # stops the engine's workers
        if store.rows():
            store.write_table()
        bar.close()
        raise SweepInterrupted(len(store.completed()), total, store.directory) from None
    table = store.write_table() if store.rows() else None
    bar.close()
    return SweepSummary(total, total - len(pending), len(pending), failed, time.perf_counter() - start, table)


def run_serially(config: SweepConfig) -> pd.DataFrame:
    """Every cell in this process, without a store: the reference table of a configuration."""
    return rows_to_table([run_cell(config, cell) for cell in config.cells()])


# -- engines: each yields (cell, row) as cells finish ------------------------------------------


def _serial(config: SweepConfig, cells: list[Cell], workers: int, scheduler: str | None) -> Iterator[tuple[Cell, dict]]:
    from threadpoolctl import threadpool_limits

    # Cells are small problems: one BLAS thread runs them faster than several (measured ~1.7x).
    with threadpool_limits(1):
        for cell in cells:
            yield cell, run_cell(config, cell)


def _single_threaded_worker() -> None:
    """Workers use one BLAS thread each (``workers`` processes then use ``workers`` cores) and
    leave Ctrl-C to the main process, which stops them: a terminal sends ``SIGINT`` to the whole
    process group, and each worker would otherwise print its own ``KeyboardInterrupt``."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Abandon the running cells: cancel the queue and end the worker processes now (a clean
    shutdown would wait for every running cell)."""
    # The executor has no public way to end its workers before Python 3.14's terminate_workers().
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)


def _processes(config: SweepConfig, cells: list[Cell], workers: int, scheduler: str | None) -> Iterator[tuple[Cell, dict]]:
    pending = deque(cells)
    while pending:
        # A worker that dies (killed by the OS, os._exit in a plugin) breaks the pool: the cells
        # then running are recorded as errors, and a new pool takes the rest of the queue.
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), initializer=_single_threaded_worker) as pool:
            try:
                yield from _pool_results(pool, config, pending, workers)
            except BaseException:  # Ctrl-C, or the consumer closing this generator
                _stop(pool)
                raise


def _pool_results(pool: ProcessPoolExecutor, config: SweepConfig, pending: deque,
                  workers: int) -> Iterator[tuple[Cell, dict]]:
    """Submit ``pending`` cells to ``pool`` within a bounded window and yield them as they finish,
    until the queue is empty or the pool breaks (a dead worker)."""
    running: dict[Any, Cell] = {}
    broken = False
    while True:
        # A bounded window of submissions keeps memory flat on large grids.
        while not broken and pending and len(running) < 2 * workers:
            try:
                future = pool.submit(run_cell, config, pending[0])
            except BrokenProcessPool:
                broken = True
            else:
                running[future] = pending.popleft()
        if not running:
            return
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            cell = running.pop(future)
            yield cell, _result_or_error(future, config, cell)


def _dask(config: SweepConfig, cells: list[Cell], workers: int, scheduler: str | None) -> Iterator[tuple[Cell, dict]]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError("engine='dask' needs dask.distributed: pip install 'lr-mdp-env[dask]'") from None
    if not cells:
        return
    cluster = None
    if scheduler is None:
        # Worker processes inherit an ignored SIGINT (and Python keeps it ignored), so Ctrl-C
        # reaches only this process, which closes the cluster; a Ctrl-C while it starts is lost.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        finally:
            signal.signal(signal.SIGINT, previous)
    client = Client(scheduler if scheduler is not None else cluster)
    try:
        client.run(_single_threaded_worker)
        futures = {client.submit(run_cell, config, cell, pure=False): cell for cell in cells}
        for future in as_completed(futures):
            yield futures[future], _result_or_error(future, config, futures[future])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _result_or_error(future: Any, config: SweepConfig, cell: Cell) -> dict[str, Any]:
    """The row a worker returned, or an error row if the worker itself died."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - e.g. a worker process killed by the OS
        return error_row(config, cell, f"{type(error).__name__}: {error} (the worker running this cell died)")
