"""The confidence radii of :mod:`lr_mdp_env.theory` against scipy's quantiles and closed forms.

``agents`` re-exports the same functions (one implementation); tests/agents/test_confidence.py
checks them through that name, with bad-input cases. Here: the formulas' ingredients, each
against an oracle that does not share code with them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import expit
from scipy.stats import chi2, norm

import agents
from lr_mdp_env import theory

DELTAS = st.floats(1e-9, 0.99)


def test_agents_reexport_the_theory_radii():
    assert agents.wald_radius is theory.wald_radius
    assert agents.theory_radius is theory.theory_radius
    assert agents.confidence.wald_radius is theory.wald_radius


@given(k=st.integers(1, 500), delta=DELTAS)
def test_wald_radius_is_the_root_of_the_chi_square_quantile(k, delta):
    radius = theory.wald_radius(k, delta)
    # Defining property of the quantile, through the distribution function (not ppf).
    assert chi2.cdf(radius**2, k) == pytest.approx(1 - delta, rel=1e-9, abs=1e-12)


@given(delta=DELTAS)
def test_wald_radius_closed_forms_in_one_and_two_dimensions(delta):
    # chi^2_1 is a squared standard normal; chi^2_2 is exponential with mean 2.
    assert theory.wald_radius(1, delta) == pytest.approx(norm.isf(delta / 2), rel=1e-9)
    assert theory.wald_radius(2, delta) == pytest.approx(np.sqrt(-2 * np.log(delta)), rel=1e-9)


@given(k=st.integers(1, 200), delta=st.floats(1e-6, 0.5))
def test_wald_radius_grows_with_dimension_and_confidence(k, delta):
    assert theory.wald_radius(k + 1, delta) > theory.wald_radius(k, delta)
    assert theory.wald_radius(k, delta / 2) > theory.wald_radius(k, delta)


@given(feature_bound=st.floats(0.0, 20.0), norm_bound=st.floats(0.0, 20.0))
def test_logistic_curvature_is_the_smallest_sigmoid_slope_on_the_logit_range(feature_bound, norm_bound):
    margin = feature_bound * norm_bound
    grid = np.linspace(-margin, margin, 2001)
    slopes = expit(grid) * expit(-grid)  # sigmoid' = sigmoid(x) sigmoid(-x), computed another way
    gamma = theory.logistic_curvature(feature_bound, norm_bound)
    # The minimum sits at the grid's end points, so the grid minimum is exact up to rounding.
    assert gamma == pytest.approx(slopes.min(), rel=1e-9, abs=1e-300)
    assert 0 < gamma <= 0.25


@given(k=st.integers(1, 6), delta=DELTAS, ridge=st.floats(1e-3, 10.0), feature_bound=st.floats(0.0, 5.0),
       norm_bound=st.floats(0.0, 5.0))
def test_theory_radius_without_data_is_its_closed_form(k, delta, ridge, feature_bound, norm_bound):
    """With no comparisons ``M = lambda I``: the log-determinant term vanishes and the radius is
    ``(0.5 sqrt(2 log(1/delta)) + sqrt(lambda) B) / gamma``."""
    gamma = expit(feature_bound * norm_bound) * expit(-feature_bound * norm_bound)
    expected = (0.5 * np.sqrt(2 * np.log(1 / delta)) + np.sqrt(ridge) * norm_bound) / gamma
    radius = theory.theory_radius(ridge * np.eye(k), ridge, delta, feature_bound, norm_bound)
    assert radius == pytest.approx(expected, rel=1e-9)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), n=st.integers(1, 40))
def test_theory_radius_grows_with_information_at_the_log_determinant_rate(seed, k, n):
    """Adding comparisons increases ``M`` in the Loewner order, hence ``log det M``, hence the
    radius (the price of a data-dependent, self-normalised set). Doubling every comparison adds
    at most ``k log 2`` to the log-determinant ratio (``lambda I + 2 S <= 2 (lambda I + S)``)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    ridge, delta = 1.0, 0.1
    gram = ridge * np.eye(k) + z.T @ z
    doubled = ridge * np.eye(k) + 2 * z.T @ z
    base = theory.theory_radius(gram, ridge, delta, 1.0, 1.0)
    more = theory.theory_radius(doubled, ridge, delta, 1.0, 1.0)
    assert more > base
    # Invert the formula for the log-determinant ratio: ((radius gamma - sqrt(lambda) B) / 0.5)^2 - 2 log(1/delta).
    gamma = theory.logistic_curvature(1.0, 1.0)

    def log_det_ratio(radius):
        return ((radius * gamma - 1.0) / 0.5) ** 2 - 2 * np.log(1 / delta)

    assert log_det_ratio(base) == pytest.approx(np.linalg.slogdet(gram)[1], rel=1e-8, abs=1e-8)
    assert log_det_ratio(more) - log_det_ratio(base) <= k * np.log(2) + 1e-8


def test_theory_radius_is_infinite_without_warnings_when_the_curvature_underflows():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert theory.theory_radius(np.eye(2), 1.0, 0.1, 40.0, 40.0) == np.inf
        assert theory.logistic_curvature(40.0, 40.0) == 0.0


@pytest.mark.parametrize("call, name", [
    (lambda: theory.logistic_curvature(-1.0, 1.0), "feature_bound"),
    (lambda: theory.logistic_curvature(1.0, float("nan")), "norm_bound"),
    (lambda: theory.wald_radius(3, 1.5), "delta"),
])
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=name):
        call()
