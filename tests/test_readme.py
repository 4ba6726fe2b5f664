"""Every ```python block of README.md runs as written.

The blocks run in order in one namespace (later sections continue the world the first one
builds), in a temporary directory, as a reader pasting them into one session would run them.
Functions a block defines whose names start with ``test_`` are called too, as pytest would
call them. Blocks added to the README later are picked up without changing this file.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every fenced ``python`` block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in _FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks_and_the_extraction_finds_each_fence():
    text = README.read_text()
    assert len(BLOCKS) == text.count("```python") >= 5
    assert python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n```python title\ny = 2\n```\n") == [
        (3, "x = 1\n"), (9, "y = 2\n")]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every block once, in order; the traceback of each failing block (``None`` if it ran)."""
    import matplotlib

    matplotlib.use("Agg")  # figures drawn by the examples go nowhere
    import matplotlib.pyplot as plt

    namespace: dict = {"__name__": "__readme__"}
    results = []
    directory = tmp_path_factory.mktemp("readme")
    previous = Path.cwd()
    os.chdir(directory)
    try:
        for line, code in BLOCKS:
            before = {name for name in namespace if name.startswith("test_")}
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
                for name in sorted(set(namespace) - before):
                    if name.startswith("test_") and callable(namespace[name]):
                        namespace[name]()
            except Exception:  # noqa: BLE001 - reported by the block's own test
                results.append(traceback.format_exc(limit=-6))
            else:
                results.append(None)
            plt.close("all")
    finally:
        os.chdir(previous)
    return results


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs_as_written(outcomes, index):
    failure = outcomes[index]
    assert failure is None, f"the block at README.md:{BLOCKS[index][0]} fails:\n{failure}"
