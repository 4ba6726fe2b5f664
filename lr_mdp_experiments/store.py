"""The results of a sweep on disk: a journal of finished cells and the table built from it.

Layout of an output directory::

    config.toml          the configuration as given
    sweep.json           package version, config fingerprint, engine of the last run
    cells/<cell_id>.json one file per finished cell (its results row), written atomically
    results.parquet      the table: every journal row, sorted by cell (results.csv without pyarrow)

Every file is written to a temporary name and moved into place with :func:`os.replace`, which is
atomic: a sweep killed at any instant leaves each file either absent or complete. The journal is
the truth; the table is rebuilt from it after every batch of finished cells and at the end. A
re-run skips cells whose journal row says ``ok`` and retries the others.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .config import SweepConfig

CELLS = "cells"
#: The results table, as Parquet (with pyarrow) or CSV.
TABLE_NAMES = ("results.parquet", "results.csv")
_UMASK = os.umask(0)
os.umask(_UMASK)
SORT_COLUMNS = ["setting", "agent_index", "replicate"]


def has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def package_version() -> str:
    try:
        return metadata.version("lr-mdp-env")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for everybody to read
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ResultStore:
    """The output directory of one sweep.

    Parameters
    ----------
    directory : path
        Created if missing. If it holds results of a different configuration, opening it for
        ``config`` raises ``ValueError`` (pass ``overwrite=True`` to discard them).
    config : SweepConfig
    overwrite : bool, default False
    """

    def __init__(self, directory: str | Path, config: SweepConfig, *, overwrite: bool = False) -> None:
        self.directory = Path(directory)
        self.config = config
        self.cells_directory = self.directory / CELLS
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"out {str(self.directory)!r} is a file, not a directory")
        manifest_path = self.directory / "sweep.json"
        if manifest_path.exists() and not overwrite:
            try:
                manifest = json.loads(manifest_path.read_text())
            except (json.JSONDecodeError, OSError) as error:
                raise ValueError(f"{manifest_path} is unreadable ({error}); pass --overwrite (overwrite=True) "
                                 "to start afresh") from None
            # More replicates extend a sweep (cells are seeded by identity); anything else is another sweep.
            if manifest.get("fingerprint") != config.fingerprint or manifest.get("replicates", 0) > config.replicates:
                raise ValueError(
                    f"out directory {str(self.directory)!r} holds results of a different configuration; choose "
                    "another directory or pass --overwrite (overwrite=True) to discard them")
        elif manifest_path.exists():
            for stale in [*self.cells_directory.glob("*.json"), *self.directory.glob("results.*"),
                          *self.directory.glob("*.png")]:
                stale.unlink()
        self.cells_directory.mkdir(parents=True, exist_ok=True)
        for folder in (self.directory, self.cells_directory):  # temporary files of a killed writer
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink()
        atomic_write(self.directory / "config.toml", config.source.encode())
        # The journal is read once; finished cells are added to it as they are recorded.
        self._rows = {row["cell_id"]: row for row in read_journal(self.cells_directory)}
        if self._rows:  # a killed run may have journalled cells after its last table
            self.write_table()

    @property
    def table_path(self) -> Path:
        return self.directory / TABLE_NAMES[0 if has_pyarrow() else 1]

    def write_manifest(self, engine: str, workers: int) -> None:
        manifest = {"name": self.config.name, "fingerprint": self.config.fingerprint,
                    "replicates": self.config.replicates,
                    "lr_mdp_env_version": package_version(), "python": platform.python_version(),
                    "engine": engine, "workers": workers, "cells": len(self.config.cells())}
        atomic_write(self.directory / "sweep.json", json.dumps(manifest, indent=2).encode())

    def completed(self) -> set[str]:
        """Cell ids whose journal row has ``status == "ok"``."""
        return {cell_id for cell_id, row in self._rows.items() if row.get("status") == "ok"}

    def rows(self) -> list[dict[str, Any]]:
        """Every journalled row, as it reads back from its file."""
        return list(self._rows.values())

    def record(self, row: dict[str, Any]) -> None:
        """Journal one finished cell (replacing an earlier failed attempt)."""
        text = json.dumps({key: _json_value(value) for key, value in row.items()}, allow_nan=False)
        atomic_write(self.cells_directory / f"{row['cell_id']}.json", text.encode())
        self._rows[row["cell_id"]] = json.loads(text)

    def write_table(self) -> Path:
        """Rebuild the table from the journal; returns its path.

        The table of the other format (a ``results.csv`` written before pyarrow was installed,
        or the reverse) is removed, so the directory never holds a stale table beside the new one.
        """
        table = rows_to_table(self.rows())
        path = self.table_path
        if path.suffix == ".parquet":
            import io

            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            atomic_write(path, buffer.getvalue())
        else:
            atomic_write(path, table.to_csv(index=False, na_rep="NaN").encode())
        for stale in TABLE_NAMES:
            if stale != path.name:
                (self.directory / stale).unlink(missing_ok=True)
        return path


def read_journal(cells_directory: Path) -> list[dict[str, Any]]:
    """The rows of a journal directory, one per finished cell."""
    return [json.loads(path.read_text()) for path in sorted(cells_directory.glob("*.json"))]


def rows_to_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Journal rows as a table sorted by setting, agent and replicate."""
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(SORT_COLUMNS, kind="stable").reset_index(drop=True)


def load_results(path: str | Path) -> pd.DataFrame:
    """A sweep's results: from an output directory (its journal, always up to date), a
    ``results.parquet`` or a ``results.csv``."""
    path = Path(path)
    if path.is_dir():
        if not (path / CELLS).is_dir():
            raise ValueError(f"{str(path)!r} is not a sweep output directory (no {CELLS}/ inside)")
        return rows_to_table(read_journal(path / CELLS))
    if not path.exists():
        raise ValueError(f"results {str(path)!r} do not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        # Only "NaN" is missing: an empty error message stays an empty string.
        return pd.read_csv(path, keep_default_na=False, na_values=["NaN"])
    raise ValueError(f"results must be a sweep directory, a .parquet or a .csv file, got {str(path)!r}")


def sweep_name(path: str | Path) -> str | None:
    """The name of the sweep whose results are at ``path`` (an output directory or its table),
    from its ``sweep.json``; ``None`` for a table found elsewhere."""
    path = Path(path)
    manifest = (path if path.is_dir() else path.parent) / "sweep.json"
    try:
        name = json.loads(manifest.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _json_value(value: Any) -> Any:
    """NaN as ``None`` (JSON has no NaN); numpy scalars as Python ones."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
