"""theory.log_log_slope on several curves at once: each column is the slope of that curve alone."""

from __future__ import annotations

import numpy as np
import pytest

from lr_mdp_env import theory


def test_columns_are_fitted_one_by_one():
    rng = np.random.default_rng(0)
    predicted = np.array([10.0, 30.0, 100.0, 300.0, 1000.0])
    exponents = np.array([-0.5, -1.0, 0.25])
    curves = 3.0 * predicted[:, None] ** exponents * np.exp(rng.normal(0.0, 0.1, (5, 3)))
    slopes = theory.log_log_slope(predicted, curves)
    assert slopes.shape == (3,)
    # Oracle: the ordinary least-squares slope of each column, from numpy's polynomial fit.
    expected = [np.polyfit(np.log(predicted), np.log(curves[:, k]), 1)[0] for k in range(3)]
    np.testing.assert_allclose(slopes, expected, rtol=1e-12)
    np.testing.assert_allclose(slopes, [theory.log_log_slope(predicted, curves[:, k]) for k in range(3)], rtol=1e-12)
    # Exact power laws come back exactly.
    np.testing.assert_allclose(theory.log_log_slope(predicted, predicted[:, None] ** exponents), exponents, atol=1e-12)
    assert isinstance(theory.log_log_slope(predicted, curves[:, 0]), float)


@pytest.mark.parametrize("measured, match", [
    (np.ones((4, 2)), r"same shape and at least 2 entries"),
    (np.ones((3, 0)), r"measured must hold at least one curve"),
    (np.array([[1.0, 2.0], [1.0, 0.0], [2.0, 3.0]]), r"measured must be positive, got minimum 0\.0"),
    (np.ones((3, 2, 1)), r"measured must have 1 or 2 axes"),
])
def test_bad_curves_are_named(measured, match):
    with pytest.raises(ValueError, match=match):
        theory.log_log_slope([1.0, 2.0, 3.0], measured)
