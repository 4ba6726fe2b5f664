"""Shared test configuration: hypothesis profiles and statistical tolerances.

Profiles
--------
``ci`` (default, what CI runs): derandomized, 25 examples per property, no deadline, failing
examples printed as reproduction blobs. ``thorough``: 300 random examples per property, the
default of the slow command (``pytest -m slow``). The environment variable ``HYPOTHESIS_PROFILE``
overrides both, e.g. ``HYPOTHESIS_PROFILE=thorough pytest tests/theory``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """The slow command (``-m slow``) is the thorough one: it draws 300 fresh examples per
    property unless ``HYPOTHESIS_PROFILE`` chooses otherwise."""
    expression = config.getoption("markexpr", default="") or ""
    if "HYPOTHESIS_PROFILE" not in os.environ and "slow" in expression and "not slow" not in expression:
        settings.load_profile("thorough")

#: Probability that any single statistical assertion fails although the code is correct.
FAILURE_PROBABILITY = 1e-6


def _bernstein_tolerance(probabilities, n: int, failure_probability: float = FAILURE_PROBABILITY):
    """Half-width ``t`` such that every empirical frequency lies within ``t`` of its mean.

    For a count ``X ~ Binomial(n, q)`` Bernstein's inequality gives
    ``Pr(|X/n - q| >= t) <= 2 exp(-n t^2 / (2 q (1 - q) + 2 t / 3))``. Setting the right-hand side
    to ``delta / m`` (a union bound over the ``m`` cells compared at once) and solving the
    quadratic ``n t^2 - (2 L / 3) t - 2 L q (1 - q) = 0`` with ``L = log(2 m / delta)`` gives
    ``t = (L / 3 + sqrt(L^2 / 9 + 2 n L q (1 - q))) / n``. Unlike a normal approximation this stays
    valid for cells of tiny probability, where the ``L / (3 n)`` term dominates.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    log_term = np.log(2 * max(probabilities.size, 1) / failure_probability)
    variance = probabilities * (1 - probabilities)
    return (log_term / 3 + np.sqrt(log_term**2 / 9 + 2 * n * log_term * variance)) / n


@pytest.fixture
def frequency_tolerance():
    """``tolerance(q, n)``: simultaneous Bernstein half-widths for frequencies of ``n`` draws."""
    return _bernstein_tolerance
