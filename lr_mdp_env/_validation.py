"""Boundary checks with messages that name the argument and the offending entry.

Everything public validates its inputs here once; the numerical code behind it trusts them.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np

PROBABILITY_TOLERANCE = 1e-8


def as_real_array(name: str, value: Any, ndims: tuple[int, ...]) -> np.ndarray:
    """Return ``value`` as a finite float64 array whose number of axes is one of ``ndims``."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an array of real numbers, got {type(value).__name__}")
    try:
        # A complex cast would only warn and drop the imaginary part.
        is_complex = np.iscomplexobj(value)
        array = None if is_complex else np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array of real numbers ({error})") from None
    if array is None:
        raise TypeError(f"{name} must be an array of real numbers, got complex values")
    if array.ndim not in ndims:
        expected = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {expected} axes, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} must be finite, but {name}{list(bad)} = {array[bad]}")
    return array


def check_probability_rows(name: str, array: np.ndarray, index_names: tuple[str, ...]) -> None:
    """Check that every row along the last axis is a probability vector.

    ``index_names`` names the leading axes, so the message reads like
    ``transitions[h=2, s=0, a=1] sums to 0.9, not 1``.
    """
    def row(index: tuple[int, ...]) -> str:
        if array.ndim == 1:  # a single distribution has no row index to show
            return name
        return f"{name}[" + ", ".join(f"{axis}={int(i)}" for axis, i in zip(index_names, index)) + "]"

    negative = np.argwhere(array < 0)
    if negative.size:
        index = tuple(negative[0])
        raise ValueError(
            f"{name} must be non-negative, but {row(index[:-1])} has entry "
            f"{float(array[index])!r} at position {int(index[-1])}"
        )
    sums = array.sum(axis=-1)
    # atleast_1d: for a single distribution the sum is 0-d, and argwhere of a 0-d array is empty
    # even when the condition holds.
    off = np.argwhere(np.atleast_1d(np.abs(sums - 1.0) > PROBABILITY_TOLERANCE))
    if off.size:
        index = tuple(off[0]) if array.ndim > 1 else ()
        raise ValueError(
            f"{row(index)} sums to {float(sums[index])!r}, not 1 "
            f"(every row must be a probability distribution within {PROBABILITY_TOLERANCE})"
        )


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking its type and range."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def check_real(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict_minimum: bool = False,
    allow_infinite: bool = False,
) -> float:
    """Return ``value`` as a ``float`` after checking type, finiteness and range."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if np.isnan(value) or (np.isinf(value) and not allow_infinite):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and not value > minimum:
            raise ValueError(f"{name} must be greater than {minimum}, got {value}")
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def as_generator(seed: Any) -> np.random.Generator:
    """Turn a seed (int, ``SeedSequence``, ``Generator`` or ``None``) into a ``Generator``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise TypeError(
            f"seed must be a non-negative int, numpy.random.SeedSequence or Generator, got {seed!r}"
        )
    return np.random.default_rng(int(seed))


def frozen(array: np.ndarray) -> np.ndarray:
    """Return a read-only view so that model parameters cannot be changed in place."""
    view = array.view()
    view.flags.writeable = False
    return view


def immutable(array: np.ndarray) -> np.ndarray:
    """``array`` as an array nothing can change: itself if it already is one (see
    :func:`is_immutable`), else a read-only copy.

    A :func:`frozen` view still shows the writes made through the array it views; an array
    whose validation is done once and then trusted (a basis shared by every user's set) must
    not change afterwards."""
    if is_immutable(array):
        return array
    copy = np.array(array)
    copy.flags.writeable = False
    return copy


def is_immutable(array: np.ndarray) -> bool:
    """Whether ``array`` and every array it is a view of are read-only, down to memory numpy owns.

    Not a proof that the memory never changes: a view taken while the owner was still
    writable keeps its own write access, and numpy cannot list an array's views. The library
    makes its trusted arrays read-only when it creates them (:func:`immutable` copies), so no
    such view of them exists."""
    while isinstance(array, np.ndarray):
        if array.flags.writeable:
            return False
        array = array.base
    return array is None

