"""The predicted-rate functions of :mod:`lr_mdp_env.theory` against their closed forms.

Their shapes are checked against measured curves in test_theory_rate_statistics.py (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents import rtv_coordinates
from lr_mdp_env import theory

SIZES = st.lists(st.integers(1, 10**6), min_size=1, max_size=5).map(np.array)


@given(n=SIZES, d=st.integers(1, 50))
def test_independent_mle_rate_is_root_d_over_n_for_arrays(n, d):
    rate = theory.independent_mle_rate(n, d)
    assert isinstance(rate, np.ndarray) and rate.shape == n.shape
    np.testing.assert_allclose(rate, np.sqrt(d / n), rtol=1e-15)
    assert isinstance(theory.independent_mle_rate(int(n[0]), d), float)
    np.testing.assert_allclose(theory.independent_mle_rate(n, d, delta=0.05, constant=3.0),
                               3.0 * np.sqrt((d + np.log(20.0)) / n), rtol=1e-14)


@given(d=st.integers(1, 60), data=st.data())
def test_p_sharelora_sits_between_the_oracle_and_independent_mle(d, data):
    r = data.draw(st.integers(1, d))
    n_users = data.draw(st.integers(1, 10**4))
    n = np.array([10.0, 1000.0])
    rate = theory.p_sharelora_rate(n, d, r, n_users)
    np.testing.assert_allclose(rate, np.sqrt((r + d * r / n_users) / n), rtol=1e-14)
    # The oracle that knows U* needs r coordinates per user; sharing costs d r / N more.
    assert np.all(rate >= np.sqrt(r / n))
    # It beats the independent MLE exactly when r + d r / N < d, i.e. N (d - r) > r d (integers).
    # (At equality the two floats may differ by rounding either way: not checked.)
    if n_users * (d - r) != r * d:
        beats = bool(rate[0] < theory.independent_mle_rate(n[0], d))
        assert beats == (n_users * (d - r) > r * d)
    # More users, never a worse rate; the limit is the oracle's.
    assert np.all(theory.p_sharelora_rate(n, d, r, n_users + 1) <= rate)
    np.testing.assert_allclose(theory.p_sharelora_rate(n, d, r, 10**12), np.sqrt(r / n), rtol=1e-9)


@given(n=SIZES, d=st.integers(1, 40), n_users=st.integers(1, 500), data=st.data())
def test_p_sharelora_subspace_rate_uses_all_comparisons(n, d, n_users, data):
    r = data.draw(st.integers(1, d))
    np.testing.assert_allclose(theory.p_sharelora_subspace_rate(n, d, r, n_users),
                               np.sqrt(d * r / (n_users * n)), rtol=1e-14)


@given(d_x=st.integers(1, 12), d=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_loco_dimension_counts_the_rtv_coordinates(d_x, d, seed, data):
    """Oracle: the coordinates ``agents.rtv_coordinates`` actually builds for random subspaces."""
    r = data.draw(st.integers(1, min(d_x, d)))
    rng = np.random.default_rng(seed)
    context_subspace = np.linalg.qr(rng.normal(size=(d_x, r)))[0]
    feature_subspace = np.linalg.qr(rng.normal(size=(d, r)))[0]
    assert theory.loco_dimension(d_x, d, r) == rtv_coordinates(context_subspace, feature_subspace).dimension
    # Never more than the full-rank MLE's d_x d, and equal exactly at full rank.
    assert theory.loco_dimension(d_x, d, r) <= theory.full_rank_dimension(d_x, d)
    assert (theory.loco_dimension(d_x, d, r) == theory.full_rank_dimension(d_x, d)) == (r == min(d_x, d))
    n = np.array([50, 5000])
    np.testing.assert_allclose(theory.loco_rate(n, d_x, d, r), np.sqrt(((d_x + d) * r - r * r) / n), rtol=1e-14)
    np.testing.assert_allclose(theory.full_rank_rate(n, d_x, d), np.sqrt(d_x * d / n), rtol=1e-14)


@given(exponent=st.floats(-3.0, 3.0), constant=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_slope_and_constant_recover_an_exact_power_law(exponent, constant, seed):
    predicted = np.exp(np.random.default_rng(seed).uniform(-5, 5, size=6))
    predicted[0], predicted[1] = 1e-2, 1e2  # two distinct values at least
    measured = constant * predicted**exponent
    assert theory.log_log_slope(predicted, measured) == pytest.approx(exponent, abs=1e-9)
    assert theory.rate_constant(predicted, constant * predicted) == pytest.approx(constant, rel=1e-9)


def test_rate_constant_is_the_geometric_mean_ratio():
    assert theory.rate_constant([1.0, 1.0], [2.0, 8.0]) == pytest.approx(4.0, rel=1e-14)


@pytest.mark.parametrize("call, error, name", [
    (lambda: theory.independent_mle_rate([10, 0], 3), ValueError, "n"),
    (lambda: theory.independent_mle_rate(10, 0), ValueError, "n_features"),
    (lambda: theory.p_sharelora_rate(10, 3, 4, 5), ValueError, "rank"),
    (lambda: theory.p_sharelora_rate(10, 3, 1, 0), ValueError, "n_users"),
    (lambda: theory.loco_rate(10, 2, 5, 3), ValueError, "rank"),
    (lambda: theory.loco_dimension(2.5, 5, 1), TypeError, "context_dim"),
    (lambda: theory.parametric_rate(10, 3, delta=0.0), ValueError, "delta"),
    (lambda: theory.parametric_rate(10, -1.0), ValueError, "dimension"),
    (lambda: theory.log_log_slope([1.0, 1.0], [1.0, 2.0]), ValueError, "predicted must not be constant"),
    (lambda: theory.log_log_slope([1.0, 2.0], [1.0, -2.0]), ValueError, "measured"),
    (lambda: theory.rate_constant([1.0, 2.0], [1.0]), ValueError, "shape"),
])
def test_bad_arguments_are_named(call, error, name):
    with pytest.raises(error, match=name):
        call()
