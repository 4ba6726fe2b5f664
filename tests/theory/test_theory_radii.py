"""The confidence radii and likelihood-ratio levels of :mod:`lr_mdp_env.theory` against scipy's
quantiles, closed forms and the published formulas.

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


def published_theory_radius(gram, ridge, delta, feature_bound, norm_bound):
    """Zhu, Jordan and Jiao (2023, Lemma 3.1) with the constants of Abbasi-Yadkori et al. (2011,
    Theorem 1) and Li, Lu and Zhou (2017), written from the papers: ``(1 / gamma) (sigma sqrt(2
    log(1/delta) + log(det M / lambda^k)) + sqrt(lambda) B)`` with the sub-Gaussian constant
    ``sigma = 1/2`` of a Bernoulli noise and ``gamma = inf_{|x| <= L B} sigmoid'(x)``."""
    k = gram.shape[0]
    margin = feature_bound * norm_bound
    gamma = expit(margin) * expit(-margin)  # sigmoid'(L B), the slope at the end of the range
    log_det_ratio = np.linalg.slogdet(gram)[1] - k * np.log(ridge)
    return (0.5 * np.sqrt(2 * np.log(1 / delta) + log_det_ratio) + np.sqrt(ridge) * norm_bound) / gamma


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), n=st.integers(1, 40), delta=st.floats(1e-6, 0.5),
       ridge=st.floats(0.01, 10.0), bounds=st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 3.0)))
def test_theory_radius_is_the_published_formula(seed, k, n, delta, ridge, bounds):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    gram = ridge * np.eye(k) + z.T @ z
    expected = published_theory_radius(gram, ridge, delta, *bounds)
    assert theory.theory_radius(gram, ridge, delta, *bounds) == pytest.approx(expected, rel=1e-9)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), n=st.integers(1, 40))
def test_theory_radius_grows_with_information_at_most_at_the_log_determinant_rate(seed, k, n):
    """Adding comparisons increases ``M`` in the Loewner order, hence ``log det M``, hence the
    radius (the price of a data-dependent, self-normalised set). Doubling every comparison adds
    at most ``k log 2`` to the log-determinant ratio (``lambda I + 2 S <= 2 (lambda I + S)``), so the
    deviation term ``gamma radius - sqrt(lambda) B`` grows by at most that inside its square root."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    ridge, delta = 1.0, 0.1
    gram = ridge * np.eye(k) + z.T @ z
    doubled = ridge * np.eye(k) + 2 * z.T @ z
    base = theory.theory_radius(gram, ridge, delta, 1.0, 1.0)
    more = theory.theory_radius(doubled, ridge, delta, 1.0, 1.0)
    assert more > base
    gamma = expit(1.0) * expit(-1.0)

    def squared_deviation(radius):  # 2 log(1/delta) + log-determinant ratio, from the radius
        return ((radius * gamma - 1.0) / 0.5) ** 2

    assert squared_deviation(more) - squared_deviation(base) <= k * np.log(2) + 1e-8


@given(k=st.integers(1, 300), delta=DELTAS)
def test_wilks_level_is_half_the_chi_square_quantile(k, delta):
    level = theory.wilks_level(k, delta)
    # Through the distribution function, not ppf.
    assert chi2.cdf(2 * level, k) == pytest.approx(1 - delta, rel=1e-9, abs=1e-12)


@given(delta=DELTAS)
def test_wilks_level_closed_form_in_two_dimensions(delta):
    # chi^2_2 is exponential with mean 2: its quantile is -2 log(delta), half of it -log(delta).
    assert theory.wilks_level(2, delta) == pytest.approx(-np.log(delta), rel=1e-9)


def test_the_mixture_threshold_is_its_formula_for_every_prior_and_problem():
    """``min_p [F_p + 1/2 sum_i log(1 + beta^2 g_i / (4 lambda_p))] + log(P / delta)`` with ``g_i`` the
    eigenvalues of ``G``, recomputed with ``slogdet`` for each problem and prior."""
    rng = np.random.default_rng(0)
    minima = rng.uniform(0, 20, size=(4, 3))
    z = rng.normal(size=(4, 10, 2))
    grams = np.einsum("uni,unj->uij", z, z)
    precisions = np.array([0.1, 1.0, 10.0])
    beta, delta = 1.7, 0.05
    got = theory.likelihood_mixture_threshold(minima, grams, precisions, beta, delta)
    for user in range(4):
        candidates = [minima[user, p] + 0.5 * np.linalg.slogdet(np.eye(2) + beta**2 * grams[user] / (4 * lam))[1]
                      for p, lam in enumerate(precisions)]
        assert got[user] == pytest.approx(min(candidates) + np.log(3 / delta), rel=1e-12)
    single = theory.likelihood_mixture_threshold(minima[0], grams[0], precisions, beta, delta)
    assert isinstance(single, float) and single == pytest.approx(got[0], rel=1e-12)


def test_theory_radius_is_infinite_without_warnings_when_the_curvature_underflows():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert theory.theory_radius(np.eye(2), 1.0, 0.1, 40.0, 40.0) == np.inf
        assert theory.logistic_curvature(40.0, 40.0) == 0.0


@pytest.mark.parametrize("call, name", [
    (lambda: theory.logistic_curvature(-1.0, 1.0), "feature_bound"),
    (lambda: theory.logistic_curvature(1.0, float("nan")), "norm_bound"),
    (lambda: theory.wald_radius(3, 1.5), "delta"),
    (lambda: theory.wilks_level(0, 0.1), "dimension"),
    (lambda: theory.wilks_level(2, 0.0), "delta"),
    (lambda: theory.likelihood_mixture_threshold([1.0, 2.0], np.eye(2), [1.0], 1.0, 0.1), "penalised_minima"),
    (lambda: theory.likelihood_mixture_threshold([1.0], np.eye(2)[None], [1.0], 1.0, 0.1), "gram"),
    (lambda: theory.likelihood_mixture_threshold([1.0], -np.eye(2), [1.0], 1.0, 0.1), "gram"),
    (lambda: theory.likelihood_mixture_threshold([1.0], np.eye(2), [-1.0], 1.0, 0.1), "prior_precisions"),
    (lambda: theory.likelihood_mixture_threshold([1.0], np.eye(2), [1.0], 1.0, 1.0), "delta"),
    (lambda: theory.likelihood_mixture_threshold([1.0], np.eye(2), [1.0], 0.0, 0.1), "beta"),
])
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=name):
        call()
