"""Progress bars of long library calls: on a terminal only, and only once a call runs a while.

Every long call of the library (an estimator's fits, :func:`agents.evaluate`,
:func:`agents.check_agent`, a sweep or a reproduction) takes ``progress=True`` by default and
opens its bar with :func:`progress_bar`. The bar is a ``tqdm`` bar on standard error, drawn only
when standard error is a terminal and only after :data:`DELAY_SECONDS` (a call that finishes
sooner prints nothing); ``progress=False`` silences it. Output captured by a test runner, a log
file or a pipe is not a terminal and never receives a bar, so library code prints nothing there.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

#: Seconds a call runs before its bar is drawn.
DELAY_SECONDS = 2.0


def progress_bar(total: int | None, description: str, progress: Any = True, *, unit: str = "step") -> tqdm:
    """A ``tqdm`` bar of ``total`` steps, or a silent stand-in with the same methods.

    Parameters
    ----------
    total : int, optional
        Number of steps (``None``: unknown, a counter).
    description : str
        What is running, shown before the bar.
    progress : bool or text stream, default True
        ``True``: draw on standard error (looked up at the call, so a redirected ``sys.stderr``
        counts) when it is a terminal; a stream: draw on it when it is a terminal; ``False``:
        never.
    unit : str, default "step"

    Returns
    -------
    tqdm.tqdm
        Use as a context manager and call ``update()`` per step; disabled (prints nothing) unless
        the stream is a terminal.

    Raises
    ------
    TypeError
        If ``progress`` is neither a bool nor a writable stream.
    """
    stream = terminal_stream(progress)
    return tqdm(total=total, desc=description, unit=unit, file=stream, disable=stream is None,
                delay=DELAY_SECONDS, leave=False, dynamic_ncols=True)


def terminal_stream(progress: Any) -> TextIO | None:
    """The stream a bar may be drawn on for the ``progress`` argument, or ``None`` (see
    :func:`progress_bar`)."""
    if isinstance(progress, bool) or progress is None:
        stream = sys.stderr if progress else None
    elif hasattr(progress, "write"):
        stream = progress
    else:
        raise TypeError(f"progress must be True, False or a text stream, got {type(progress).__name__}")
    if stream is None:
        return None
    isatty = getattr(stream, "isatty", None)
    return stream if callable(isatty) and isatty() else None
