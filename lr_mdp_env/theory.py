"""The bounds of docs/theory.md as functions: confidence radii and likelihood-ratio levels, the
pessimism lemma, the misspecification of reduced sets, Wedin's subspace bound and the predicted rates.

Everything here is closed-form or one dynamic program; nothing is fitted. The functions take
plain numbers and arrays (and a :class:`~lr_mdp_env.TabularMDP` where a maximum over policies is
needed), so a learner of any package can put its measured curves next to the theory's:

>>> import numpy as np
>>> from lr_mdp_env import theory
>>> n = np.array([100, 400, 1600])
>>> theory.independent_mle_rate(n, 12)                      # sqrt(d / n)
array([0.34641016, 0.17320508, 0.08660254])
>>> measured = 2.0 * theory.independent_mle_rate(n, 12)     # a learner's error, say
>>> round(theory.log_log_slope(theory.independent_mle_rate(n, 12), measured), 12)
1.0
>>> round(theory.rate_constant(theory.independent_mle_rate(n, 12), measured), 12)
2.0

Symbols are those of ``docs/model.md``: ``d`` features, ``N`` users, ``r`` rank, ``d_x`` context
dimension, ``n`` comparisons, ``delta`` the confidence level, ``lambda`` the ridge, ``M`` the
confidence set's matrix, ``G`` the map to its coordinates, ``d_pi`` expected features.

References
----------
Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
K-wise Comparisons*, ICML 2023 (pessimistic MLE, its radius and sub-optimality bound).
Liu, Wang, Li, Shen and Yang, *A Shared Low-Rank Adaptation Approach to Personalized RLHF*,
arXiv:2503.19201, 2025 (P-ShareLoRA). Lee, Sun and Liu, *Low-Rank Contextual Reinforcement
Learning from Heterogeneous Human Feedback*, arXiv:2412.19436, 2024 (LoCo-RLHF, PRS).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import chi2

from ._validation import as_real_array, check_int, check_real
from .dynamic_programming import backward_induction
from .mdp import TabularMDP

__all__ = [
    "affine_projection",
    "full_rank_dimension",
    "full_rank_rate",
    "independent_mle_rate",
    "likelihood_mixture_threshold",
    "log_log_slope",
    "logistic_curvature",
    "loco_dimension",
    "loco_rate",
    "misspecification_term",
    "p_sharelora_dimension",
    "p_sharelora_rate",
    "p_sharelora_subspace_rate",
    "parametric_rate",
    "pessimism_bound",
    "rate_constant",
    "theory_radius",
    "wald_radius",
    "wedin_bound",
    "wedin_bound_for",
    "wilks_level",
]


def _scalar_or_array(value: np.ndarray) -> np.ndarray | float:
    return float(value) if np.ndim(value) == 0 else value


def _non_negative_array(name: str, value: Any) -> np.ndarray:
    array = as_real_array(name, value, tuple(range(8)))
    if np.any(array < 0):
        raise ValueError(f"{name} must be non-negative, got minimum {array.min()}")
    return array


# -- confidence radii --------------------------------------------------------------------------


def wald_radius(dimension: int, delta: float) -> float:
    """Asymptotic radius ``sqrt(chi2.ppf(1 - delta, k))``, used with the Fisher information.

    With ``M = sum_j sigmoid'(eta_j) (beta z_j)(beta z_j)^T + lambda I`` at the MLE,
    ``||w_hat - w*||_M^2`` is asymptotically ``chi^2_k``, so the set covers with probability
    ``-> 1 - delta`` as the number of comparisons grows (and the ridge's bias vanishes).

    Parameters
    ----------
    dimension : int
        ``k >= 1``, the number of free coordinates of the set.
    delta : float
        In ``(0, 1]`` (``delta = 1`` gives radius 0).

    Returns
    -------
    float

    Notes
    -----
    Assumptions: the model is well specified (Bradley-Terry-Luce with the assumed ``beta``), the
    Fisher matrix grows linearly with ``n`` (the comparisons span the set's coordinates), and
    ``lambda`` is small against it. None of this holds at small ``n``; the coverage then is
    whatever it is, which is why the finite-sample :func:`theory_radius` exists.

    References
    ----------
    van der Vaart, *Asymptotic Statistics*, 1998, chapter 5 (asymptotic normality of the MLE).
    """
    dimension = check_int("dimension", dimension, minimum=1)
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    return float(np.sqrt(chi2.ppf(1.0 - delta, dimension)))



def wilks_level(dimension: int, delta: float) -> float:
    """Level ``chi2_k(1 - delta) / 2`` (half the chi-square quantile) of the asymptotic likelihood-ratio set.

    The set ``{w : f(w) <= f(w_hat) + level}`` of a negative log-likelihood ``f`` with minimiser
    ``w_hat`` is ``{w : 2 (f(w) - f(w_hat)) <= chi2_k(1 - delta)}``; by Wilks' theorem
    ``2 (f(w*) - f(w_hat))`` is asymptotically ``chi^2_k``, so the set covers ``w*`` with
    probability ``-> 1 - delta``. For a quadratic ``f`` it is the Wald ellipsoid of radius
    :func:`wald_radius` (``level = radius^2 / 2``).

    Parameters
    ----------
    dimension : int
        ``k >= 1``, the number of free coordinates.
    delta : float
        In ``(0, 1]`` (``delta = 1`` gives level 0).

    Returns
    -------
    float

    Notes
    -----
    Assumptions: those of :func:`wald_radius` (well specified, information growing linearly in
    ``n`` along every coordinate, ridge small against it), but no quadratic approximation of the
    loss: the set follows the likelihood where it is skewed (confident labels, few comparisons).

    References
    ----------
    Wilks, *The large-sample distribution of the likelihood ratio for testing composite
    hypotheses*, Annals of Mathematical Statistics 1938. van der Vaart, *Asymptotic Statistics*,
    1998, chapter 16.
    """
    dimension = check_int("dimension", dimension, minimum=1)
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    # isf(delta) rather than ppf(1 - delta): 1 - delta rounds away the digits of a small delta.
    return float(chi2.isf(delta, dimension) / 2.0)


def likelihood_mixture_threshold(penalised_minima: Any, gram: Any, prior_precisions: Any, beta: float,
                                 delta: float) -> np.ndarray | float:
    """Finite-sample threshold for the logistic loss at the truth, from ridge minima over a prior grid.

    ``c = min_p [F_p + 1/2 log det(I + beta^2 G / (4 lambda_p)) + log(P / delta)]``, with
    ``F_p = min_w f0(w) + lambda_p / 2 ||w||^2`` the ridge minimum of the unpenalised logistic loss
    ``f0(w) = sum_j -log sigmoid(s_j (o_j + beta x_j . w))`` and ``G = sum_j x_j x_j^T``. Then
    ``P(exists n : f0(w*) > c) <= delta``.

    Derivation. Fix a prior ``Q = N(0, I / lambda)`` before the data. With ``p_w`` the likelihood of
    the labels, ``M_n = int prod_j p_w / prod_j p_{w*} dQ(w)`` is a non-negative martingale of mean 1
    under ``w*`` (also for pairs chosen from the past), so by Ville's inequality
    ``P(exists n : M_n >= 1 / delta) <= delta``, that is
    ``f0(w*) <= -log int exp(-f0) dQ + log(1 / delta)`` for all ``n``. The logistic curvature is at
    most ``1/4``, so with ``F = f0 + lambda/2 ||.||^2`` minimised at ``w_Q``,
    ``F(w) <= F(w_Q) + 1/2 (w - w_Q)^T (beta^2 G / 4 + lambda I) (w - w_Q)``; integrating the
    Gaussian gives ``-log int exp(-f0) dQ <= F(w_Q) + 1/2 log det(I + beta^2 G / (4 lambda))``.
    A union bound over the ``P`` priors of the grid (each at ``delta / P``) keeps the minimum valid.
    Any ``F_p`` at or above the true ridge minimum (an unconverged fit) keeps it valid too.

    Parameters
    ----------
    penalised_minima : array_like, shape (..., P)
        ``F_p`` for each prior of the grid (and each problem along the leading axes).
    gram : array_like, shape (..., k, k)
        ``G``, symmetric positive semi-definite.
    prior_precisions : array_like, shape (P,)
        ``lambda_p > 0``, fixed before the data.
    beta : float
        Rationality, ``> 0``.
    delta : float
        In ``(0, 1)``.

    Returns
    -------
    float, or ndarray of the leading shape

    Notes
    -----
    No bound on ``||w*||`` or on the features enters, and no ``exp(L B)`` curvature factor: the
    threshold exceeds the minimum of ``f0`` by about ``k/2 log(n) + log(P / delta)``, so the set
    ``{f0 <= c}`` shrinks like ``sqrt(k log(n) / n)``.

    References
    ----------
    Abeille, Faury and Calauzenes, *Instance-Wise Minimax-Optimal Algorithms for Logistic Bandits*,
    AISTATS 2021. Lee, Yun and Jun, *A Unified Confidence Sequence for Generalized Linear Models, with
    Applications to Bandits*, NeurIPS 2024. Ville, *Etude critique de la notion de collectif*, 1939.
    """
    minima = as_real_array("penalised_minima", penalised_minima, tuple(range(1, 8)))
    gram = as_real_array("gram", gram, tuple(range(2, 9)))
    precisions = as_real_array("prior_precisions", prior_precisions, (1,))
    beta = check_real("beta", beta, 0.0, strict_minimum=True)
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    if delta >= 1.0:
        raise ValueError(f"delta must be less than 1, got {delta}")
    if precisions.size == 0 or np.any(precisions <= 0):
        raise ValueError("prior_precisions must be a non-empty array of positive numbers")
    if minima.shape[-1] != precisions.size:
        raise ValueError(
            f"penalised_minima must have one entry per prior ({precisions.size}) on its last axis, got {minima.shape}"
        )
    if gram.shape[-1] != gram.shape[-2] or gram.shape[:-2] != minima.shape[:-1]:
        raise ValueError(
            f"gram must have shape {minima.shape[:-1]} + (k, k) to match penalised_minima, got {gram.shape}"
        )
    symmetric = 0.5 * (gram + np.swapaxes(gram, -1, -2))
    eigenvalues = np.linalg.eigvalsh(symmetric)
    if eigenvalues.size and eigenvalues.min() < -1e-9 * max(1.0, np.abs(eigenvalues).max()):
        raise ValueError("gram must be positive semi-definite")
    # log det(I + a G / lambda) from the eigenvalues of G, for every prior at once.
    curvature = 0.25 * beta**2 * np.clip(eigenvalues, 0.0, None)
    log_dets = np.sum(np.log1p(curvature[..., None, :] / precisions[:, None]), axis=-1)
    thresholds = np.min(minima + 0.5 * log_dets, axis=-1) + np.log(precisions.size / delta)
    return _scalar_or_array(thresholds)


def logistic_curvature(feature_bound: float, norm_bound: float) -> float:
    """``gamma = 1 / (2 + exp(L B) + exp(-L B))``, the smallest slope of the sigmoid on ``[-L B, L B]``.

    ``sigmoid'(x) = sigmoid(x) sigmoid(-x)`` is even and decreasing in ``|x|``, so over logits
    ``|eta| <= L B`` (features ``||beta z|| <= L``, parameters ``||w|| <= B``) it is smallest at
    the end points. ``1 / gamma`` (``kappa`` in the logistic-bandit literature) is the factor by
    which confident labels (large ``L B``) inflate the theory radius.

    Parameters
    ----------
    feature_bound : float
        ``L >= 0``.
    norm_bound : float
        ``B >= 0``.

    Returns
    -------
    float in ``(0, 1/4]``; 0.0 once ``L B`` exceeds about 710 (``1 / gamma`` overflows).

    References
    ----------
    Faury, Abeille, Calauzenes and Fercoq, *Improved Optimistic Algorithms for Logistic
    Bandits*, ICML 2020 (the constant ``kappa = 1 / gamma``).
    """
    feature_bound = check_real("feature_bound", feature_bound, 0.0)
    norm_bound = check_real("norm_bound", norm_bound, 0.0)
    return float(1.0 / _inverse_curvature(feature_bound * norm_bound))


def _inverse_curvature(margin: float) -> float:
    """``1 / gamma = 2 + 2 cosh(L B)``, ``inf`` without an overflow warning for huge margins."""
    with np.errstate(over="ignore"):
        return float(2.0 + 2.0 * np.cosh(margin))


def theory_radius(gram: np.ndarray, ridge: float, delta: float, feature_bound: float, norm_bound: float) -> float:
    """Finite-sample self-normalised radius for logistic models, with explicit constants.

    ``radius = (1 / gamma) (0.5 sqrt(2 log(1 / delta) + log(det M / det(lambda I))) + sqrt(lambda) B)``
    with the unnormalised Gram matrix ``M = lambda I + sum_j (beta z_j)(beta z_j)^T``,
    ``gamma = 1 / (2 + exp(L B) + exp(-L B))`` the smallest slope ``sigmoid'`` on ``|eta| <= L B``
    (:func:`logistic_curvature`), ``L >= max_j ||beta z_j||`` and ``B >= ||w*||``.

    The noise ``y - sigmoid(eta)`` is ``1/2``-sub-Gaussian, so the self-normalised bound of
    Abbasi-Yadkori, Pal and Szepesvari gives ``||sum_j noise_j beta z_j||_{M^{-1}} <= 0.5 sqrt(...)``
    with probability ``1 - delta``; the GLM argument of Li, Lu and Zhou turns it into a bound on
    ``||w_hat - w*||_M`` by dividing by ``gamma`` and adds the ridge's bias ``sqrt(lambda) B``.
    Since ``log det(M) / det(lambda I) <= k log(1 + n L^2 / (k lambda))``, this is the familiar
    ``C sqrt((k + log(1/delta)) / gamma^2 + lambda B^2)`` up to a logarithmic factor, with
    the constants spelled out.

    Parameters
    ----------
    gram : ndarray, shape (k, k)
        ``M``, symmetric positive definite.
    ridge : float
        ``lambda > 0``.
    delta : float
        In ``(0, 1]``.
    feature_bound : float
        ``L >= 0``.
    norm_bound : float
        ``B >= 0``.

    Returns
    -------
    float
        ``inf`` when ``L B`` is so large that ``gamma`` underflows (about 710).

    Notes
    -----
    Assumptions: labels follow the logistic model with the assumed ``beta``; the bounds ``L``
    and ``B`` hold (the set may miss the truth where ``B`` or ``L`` is underestimated); ``M`` is
    the Gram matrix of the very comparisons the estimate was fitted on. The ``1 / gamma`` factor
    is conservative: it grows like ``exp(L B)`` for confident labels, which Faury et al. remove
    with a local-curvature analysis that this radius does not use.

    References
    ----------
    Abbasi-Yadkori, Pal and Szepesvari, *Improved Algorithms for Linear Stochastic Bandits*,
    NeurIPS 2011, Theorem 1. Li, Lu and Zhou, *Provably Optimal Algorithms for Generalized Linear
    Contextual Bandits*, ICML 2017. Faury, Abeille, Calauzenes and Fercoq, ICML 2020.
    Zhu, Jordan and Jiao, ICML 2023, Lemma 3.1.
    """
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    ridge = check_real("ridge", ridge, 0.0, strict_minimum=True)
    feature_bound = check_real("feature_bound", feature_bound, 0.0)
    norm_bound = check_real("norm_bound", norm_bound, 0.0)
    gram = as_real_array("gram", gram, (2,))
    if gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square matrix, got shape {gram.shape}")
    k = gram.shape[0]
    # The sign of the determinant cannot tell a positive definite matrix from one with an even
    # number of negative eigenvalues: check the eigenvalues themselves.
    eigenvalues = np.linalg.eigvalsh(0.5 * (gram + gram.T))
    if not eigenvalues.min(initial=np.inf) > 0:
        raise ValueError("gram must be positive definite")
    log_det_ratio = float(np.sum(np.log(eigenvalues))) - k * np.log(ridge)
    # A Gram matrix below lambda I (not one of the form lambda I + sum z z^T) could make the
    # log-determinant ratio negative enough to leave the square root's domain: clip at 0.
    deviation = 0.5 * np.sqrt(max(2 * np.log(1 / delta) + log_det_ratio, 0.0))
    return float((deviation + np.sqrt(ridge) * norm_bound) * _inverse_curvature(feature_bound * norm_bound))


# -- the pessimism lemma and misspecification ----------------------------------------------------


def pessimism_bound(radius: Any, coverage: Any, misspecification: Any = 0.0) -> np.ndarray | float:
    """The pessimism lemma's bound ``2 radius ||G (d_pi* - d_ref)||_{M^{-1}} + misspecification``.

    If the truth ``theta*`` (for a reduced set: its projection onto the set's affine span) lies
    in the confidence set ``C``, then the policy ``pi_hat`` maximising
    ``L(pi) = min_{theta in C} theta . (d_pi - d_ref)`` satisfies
    ``0 <= J(pi*) - J(pi_hat) <= 2 radius ||G (d_pi* - d_ref)||_{M^{-1}} + misspecification``.
    Proof: with ``theta_p`` the projection and ``g* = d_pi* - d_ref``,
    ``theta_p . (d_pi_hat - d_ref) >= L(pi_hat) >= L(pi*) >= theta_p . g* - 2 radius ||G g*||_{M^{-1}}``
    (two members of ``C`` differ along ``g*`` by at most the set's width), and the rest
    ``(theta* - theta_p) . (d_pi* - d_pi_hat)`` is at most :func:`misspecification_term`.
    Only the comparator ``pi*`` enters (single-policy concentrability), not all policies.

    Parameters
    ----------
    radius : float or array_like
        The set's radius, ``>= 0``.
    coverage : float or array_like
        ``||G (d_pi* - d_ref)||_{M^{-1}} >= 0``; for an ``agents.Ellipsoid`` ``C`` this is
        ``C.dual_norm(d_star - d_ref)``.
    misspecification : float or array_like, default 0.0
        :func:`misspecification_term` for a reduced set; 0 when the set's span holds the truth.

    Returns
    -------
    float or ndarray (broadcast of the arguments)

    Notes
    -----
    The bound is for the exact maximiser of ``L``; a solver that stops at a certified gap adds
    the gap. It is deterministic: the only probabilistic statement is that the truth is in the
    set (with probability ``1 - delta`` for a valid radius).

    References
    ----------
    Zhu, Jordan and Jiao, ICML 2023, Theorem 3.2. Jin, Yang and Wang, *Is Pessimism Provably
    Efficient for Offline RL?*, ICML 2021. Lee, Sun and Liu, 2024 (pessimism in a reduced
    subspace, PRS).
    """
    radius = _non_negative_array("radius", radius)
    coverage = _non_negative_array("coverage", coverage)
    misspecification = _non_negative_array("misspecification", misspecification)
    return _scalar_or_array(2.0 * radius * coverage + misspecification)


def affine_projection(points: Any, offset: Any, basis: Any) -> np.ndarray:
    """Euclidean projection of ``points`` onto the affine span ``offset + range(basis)``.

    ``offset + B B^+ (theta - offset)``, by least squares, so ``basis`` need not be orthonormal
    nor injective. For a reduced confidence set this is ``theta*_proj``, the point whose
    membership is the coverage of a reduced set.

    Parameters
    ----------
    points : array_like, shape (d,) or (m, d)
    offset : array_like, shape (d,)
    basis : array_like, shape (d, k)

    Returns
    -------
    ndarray, same shape as ``points``
    """
    points = as_real_array("points", points, (1, 2))
    offset = as_real_array("offset", offset, (1,))
    basis = as_real_array("basis", basis, (2,))
    if offset.shape[0] != basis.shape[0] or points.shape[-1] != basis.shape[0]:
        raise ValueError(
            f"points (last axis {points.shape[-1]}), offset {offset.shape} and basis {basis.shape} "
            "must share the dimension d"
        )
    shifted = np.atleast_2d(points - offset).T  # (d, m)
    coefficients = np.linalg.lstsq(basis, shifted, rcond=None)[0]
    projected = offset + (basis @ coefficients).T
    return projected if points.ndim == 2 else projected[0]


def misspecification_term(mdp: TabularMDP, direction: Any, reference_features: Any) -> np.ndarray | float:
    """``2 max_pi |e . (d_pi - d_ref)|`` for ``e = theta* - theta*_proj``, exactly.

    ``e . d_pi`` is linear in the occupancy measure, so its maximum and minimum over all
    policies are attained by deterministic Markov policies and found by two backward inductions
    (on the rewards of ``+e`` and ``-e``): ``max_pi |e . d_pi - c| = max(max_pi e . d_pi - c,
    c - min_pi e . d_pi)`` with ``c = e . d_ref``. Batched over users: all ``2 N`` reward tables go
    through one backward induction.

    Parameters
    ----------
    mdp : TabularMDP
    direction : array_like, shape (d,) or (N, d)
        ``e``; for a reduced set, ``theta* - affine_projection(theta*, offset, basis)``.
    reference_features : array_like, shape (d,) or (N, d)
        ``d_ref`` (one for all users, or one per user).

    Returns
    -------
    float, or ndarray of shape (N,)

    Notes
    -----
    This is the price of a reduced set (P-ShareLoRA's ``U_hat``, LoCo-RLHF's RTV coordinates)
    that misses part of the truth, e.g. through subspace error or a tail beyond rank ``r``. It is
    0 when ``e`` is orthogonal to every ``d_pi - d_ref``, e.g. along the unidentified
    directions of one-hot features.

    References
    ----------
    Puterman, *Markov Decision Processes*, 1994, section 4.5 (deterministic Markov policies are
    optimal for linear objectives). Lee, Sun and Liu, 2024; Liu et al., 2025 (the bias of a
    reduced subspace in the sub-optimality bound).
    """
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    direction = as_real_array("direction", direction, (1, 2))
    reference = as_real_array("reference_features", reference_features, (1, 2))
    d = mdp.n_features
    if direction.shape[-1] != d or reference.shape[-1] != d:
        raise ValueError(
            f"direction {direction.shape} and reference_features {reference.shape} must have d={d} on their last axis"
        )
    batched = direction.ndim == 2 or reference.ndim == 2
    directions, references = np.atleast_2d(direction), np.atleast_2d(reference)
    if directions.shape[0] != references.shape[0] and 1 not in (directions.shape[0], references.shape[0]):
        raise ValueError(
            f"direction and reference_features hold {directions.shape[0]} and {references.shape[0]} rows"
        )
    directions, references = np.broadcast_arrays(directions, references)
    n_users = directions.shape[0]
    values = backward_induction(mdp, mdp.reward(np.concatenate([directions, -directions])), policy=False)
    best = values[:, 0] @ mdp.initial_distribution  # max_pi (+e) . d_pi, then max_pi (-e) . d_pi
    at_reference = np.sum(directions * references, axis=1)
    largest = np.maximum(best[:n_users] - at_reference, best[n_users:] + at_reference)
    # Mathematically >= 0 (the two gaps sum to the width of e . d_pi); clip rounding.
    term = 2.0 * np.maximum(largest, 0.0)
    return term if batched else float(term[0])


# -- subspace perturbation ---------------------------------------------------------------------


def wedin_bound(perturbation_norm: Any, smallest_singular_value: Any) -> np.ndarray | float:
    """``min(1, 2 ||E||_2 / sigma_r(A))``: Wedin's bound on ``sin`` of the largest principal angle.

    For ``A`` of rank ``r`` and ``A_hat = A + E``, the top-``r`` left singular subspaces satisfy
    ``||(I - U U^T) U_hat||_2 <= ||E||_2 / sigma_r(A_hat)`` (Wedin's ``sin Theta`` theorem with
    ``sigma_{r+1}(A) = 0``). Weyl's inequality gives ``sigma_r(A_hat) >= sigma_r(A) - ||E||_2``,
    which is at least ``sigma_r(A) / 2`` when ``||E||_2 <= sigma_r(A) / 2``; otherwise
    ``2 ||E||_2 / sigma_r(A) > 1`` and the bound is the trivial 1.

    Parameters
    ----------
    perturbation_norm : float or array_like
        ``||E||_2 >= 0``.
    smallest_singular_value : float or array_like
        ``sigma_r(A) >= 0``; 0 gives the trivial bound 1.

    Returns
    -------
    float or ndarray in ``[0, 1]``

    Notes
    -----
    For P-ShareLoRA, ``A`` is the low-rank part ``U* diag(sigma*) W*^T``, ``A_hat`` the fitted
    ``U W^T`` and the distance is the ``subspace_distance`` of docs/theory.md: a small ``sigma_r``
    (large condition number ``nu``, low preference diversity) makes the subspace hard to find.
    The bound holds for any ``E``, including adversarial ones; it is within a factor 2 of tight
    (a rotation of the ``r``-th singular direction attains ``||E|| / sigma_r`` to first order).

    References
    ----------
    Wedin, *Perturbation bounds in connection with singular value decomposition*, BIT 12, 1972.
    Stewart and Sun, *Matrix Perturbation Theory*, 1990, chapter V. Liu et al., 2025, Theorem 4.1
    (subspace recovery of P-ShareLoRA).
    """
    norm = _non_negative_array("perturbation_norm", perturbation_norm)
    sigma = _non_negative_array("smallest_singular_value", smallest_singular_value)
    norm, sigma = np.broadcast_arrays(norm, sigma)
    # sigma_r = 0: A has rank below r, its top-r subspace is not unique and only 1 is a bound.
    with np.errstate(over="ignore"):  # a ratio beyond the float range is a bound of 1 anyway
        ratio = np.where(sigma > 0, 2.0 * norm / np.where(sigma > 0, sigma, 1.0), 1.0)
    return _scalar_or_array(np.minimum(1.0, ratio))


def wedin_bound_for(matrix: Any, perturbed: Any, rank: int) -> float:
    """:func:`wedin_bound` computed from the matrices: ``||A_hat - A||_2`` and ``sigma_r(A)``.

    Parameters
    ----------
    matrix : array_like, shape (d, N)
        ``A``, of rank ``r`` (its singular values beyond the ``r``-th are taken as zero: a
        nonzero tail belongs in ``E``, so pass the rank-``r`` part here).
    perturbed : array_like, shape (d, N)
        ``A_hat = A + E``.
    rank : int
        ``r``, at least 1 and at most ``min(d, N)``.

    Returns
    -------
    float in ``[0, 1]``

    References
    ----------
    Wedin, BIT 12, 1972.
    """
    matrix = as_real_array("matrix", matrix, (2,))
    perturbed = as_real_array("perturbed", perturbed, (2,))
    if matrix.shape != perturbed.shape:
        raise ValueError(f"matrix {matrix.shape} and perturbed {perturbed.shape} must have the same shape")
    rank = check_int("rank", rank, minimum=1, maximum=min(matrix.shape))
    sigma_r = np.linalg.svd(matrix, compute_uv=False)[rank - 1]
    return float(wedin_bound(np.linalg.norm(perturbed - matrix, 2), sigma_r))


# -- predicted rates ---------------------------------------------------------------------------


def _sample_sizes(n: Any) -> np.ndarray:
    sizes = as_real_array("n", n, (0, 1))
    if np.any(sizes <= 0):
        raise ValueError(f"n must be positive, got minimum {sizes.min()}")
    return sizes


def parametric_rate(
    n: Any, dimension: float, *, delta: float | None = None, constant: float = 1.0
) -> np.ndarray | float:
    """``constant * sqrt((k + log(1/delta)) / n)``: the rate of a ``k``-parameter logistic MLE.

    With ``n`` comparisons whose design ``M / n`` stays well conditioned, ``||w_hat - w*||``
    (in the set's norm divided by ``sqrt(n)``) concentrates at ``sqrt(k / n)`` and the theory
    radius adds ``log(1/delta)``; the pessimism lemma's bound is the same rate times the
    concentrability of the optimal policy. The constants (``1 / gamma``, ``beta``, the design's
    conditioning) are not predicted: compare shapes, or calibrate with :func:`rate_constant`.

    Parameters
    ----------
    n : float or array_like
        Sample sizes, positive.
    dimension : float
        ``k > 0`` (may be fractional, as for :func:`p_sharelora_dimension`).
    delta : float, optional
        Adds ``log(1 / delta)`` (high-probability rather than typical error).
    constant : float, default 1.0

    Returns
    -------
    float, or ndarray like ``n``

    References
    ----------
    Zhu, Jordan and Jiao, ICML 2023, Lemma 3.1 and Theorem 3.2.
    """
    sizes = _sample_sizes(n)
    dimension = check_real("dimension", dimension, 0.0, strict_minimum=True)
    constant = check_real("constant", constant, 0.0)
    extra = 0.0 if delta is None else float(np.log(1.0 / check_real("delta", delta, 0.0, 1.0, strict_minimum=True)))
    return _scalar_or_array(constant * np.sqrt((dimension + extra) / sizes))


def independent_mle_rate(
    n: Any, n_features: int, *, delta: float | None = None, constant: float = 1.0
) -> np.ndarray | float:
    """Per-user rate of the independent (full-dimensional) MLE: ``sqrt(d / n)``, ``k = d``.

    Parameters
    ----------
    n : float or array_like
        Comparisons **per user**.
    n_features : int
        ``d``; with one-hot features pass the identifiable dimension
        (``lr_mdp_env.identifiability.identifiable_basis(mdp).shape[1]``: ``d - 1`` for one-hot
        ``(s, a)``, ``d - H`` for one-hot ``(h, s, a)``).
    delta, constant
        As in :func:`parametric_rate`.

    Returns
    -------
    float, or ndarray like ``n``

    References
    ----------
    Zhu, Jordan and Jiao, ICML 2023, Theorem 3.2.
    """
    return parametric_rate(n, check_int("n_features", n_features, minimum=1), delta=delta, constant=constant)


def p_sharelora_dimension(n_features: int, rank: int, n_users: int) -> float:
    """Effective parameters per user of P-ShareLoRA: ``r + d r / N``.

    ``Theta* - Theta_0 = U* W*^T`` has ``(d + N) r - r^2`` free parameters, learned from ``N n``
    comparisons. Per user: ``r`` own coordinates ``w_i`` (learned from that user's ``n`` pairs)
    and a ``1/N`` share of the ``d r`` parameters of the shared subspace (learned from all
    ``N n``); the ``r^2`` rotation freedom is lower order. Hence per-user squared error
    ``~ r / n + d r / (N n)``.

    Parameters
    ----------
    n_features : int
        ``d`` (the identifiable dimension with one-hot features).
    rank : int
        ``r``, at most ``d``.
    n_users : int
        ``N``.

    Returns
    -------
    float

    References
    ----------
    Liu et al., *A Shared Low-Rank Adaptation Approach to Personalized RLHF*, 2025 (sample
    complexity of P-ShareLoRA), arXiv:2503.19201.
    """
    n_features = check_int("n_features", n_features, minimum=1)
    rank = check_int("rank", rank, minimum=1, maximum=n_features)
    n_users = check_int("n_users", n_users, minimum=1)
    return rank + n_features * rank / n_users


def p_sharelora_rate(
    n: Any, n_features: int, rank: int, n_users: int, *, delta: float | None = None, constant: float = 1.0
) -> np.ndarray | float:
    """Per-user rate of P-ShareLoRA: ``sqrt((r + d r / N) / n)``, ``k = r + d r / N``.

    Between the oracle that knows ``U*`` (``sqrt(r / n)``, reached as ``N -> inf``) and the
    independent MLE (``sqrt(d / n)``, which it beats when ``r + d r / N < d``, i.e.
    ``N > r d / (d - r)``). See :func:`p_sharelora_dimension`.

    Parameters
    ----------
    n : float or array_like
        Comparisons **per user**.
    n_features, rank, n_users : int
        ``d``, ``r``, ``N``.
    delta, constant
        As in :func:`parametric_rate`.

    Returns
    -------
    float, or ndarray like ``n``

    Notes
    -----
    The hidden constant of the shared term grows with the condition number ``nu`` (through
    Wedin's ``1 / sigma_r``, see :func:`p_sharelora_subspace_rate`); a tail beyond rank ``r``
    adds a floor that no ``n`` removes (the misspecification term).

    References
    ----------
    Liu et al., 2025.
    """
    return parametric_rate(n, p_sharelora_dimension(n_features, rank, n_users), delta=delta, constant=constant)


def p_sharelora_subspace_rate(
    n: Any, n_features: int, rank: int, n_users: int, *, constant: float = 1.0
) -> np.ndarray | float:
    """Rate of P-ShareLoRA's shared subspace: ``sin theta(U_hat, U*) ~ sqrt(d r / (N n))``.

    The ``d r`` parameters of the subspace are learned from all ``N n`` comparisons; by Wedin
    (:func:`wedin_bound`) the distance is the error of the fitted matrix over ``sigma_r``, which
    brings the condition number ``nu`` into the constant.

    Parameters
    ----------
    n : float or array_like
        Comparisons **per user** (the total is ``N n``).
    n_features, rank, n_users : int
        ``d``, ``r``, ``N``.
    constant : float, default 1.0

    Returns
    -------
    float, or ndarray like ``n``

    References
    ----------
    Liu et al., 2025, Theorem 4.1 (subspace recovery guarantee).
    """
    n_features = check_int("n_features", n_features, minimum=1)
    rank = check_int("rank", rank, minimum=1, maximum=n_features)
    n_users = check_int("n_users", n_users, minimum=1)
    return parametric_rate(np.asarray(_sample_sizes(n)) * n_users, n_features * rank, constant=constant)


def loco_dimension(context_dim: int, n_features: int, rank: int) -> int:
    """Coordinates of LoCo-RLHF's reduced set: ``k = (d_x + d) r - r^2``.

    The RTV blocks ``r x r``, ``r x (d - r)`` and ``(d_x - r) x r`` of a rank-``r``
    ``d_x x d`` matrix (docs/algorithms.md, Estimators), i.e. the dimension of the rank-``r`` matrix manifold.

    Parameters
    ----------
    context_dim, n_features, rank : int
        ``d_x``, ``d``, ``r <= min(d_x, d)``.

    Returns
    -------
    int

    References
    ----------
    Lee, Sun and Liu, 2024.
    """
    context_dim = check_int("context_dim", context_dim, minimum=1)
    n_features = check_int("n_features", n_features, minimum=1)
    rank = check_int("rank", rank, minimum=1, maximum=min(context_dim, n_features))
    return (context_dim + n_features) * rank - rank * rank


def loco_rate(
    n: Any, context_dim: int, n_features: int, rank: int, *, delta: float | None = None, constant: float = 1.0
) -> np.ndarray | float:
    """Rate of LoCo-RLHF's PRS: ``sqrt(((d_x + d) r - r^2 + log(1/delta)) / n)``.

    The paper's sub-optimality gap ``O(sqrt(((d_x + d) r + log(1/delta)) / n))``; the same shape
    bounds ``||Theta_c_hat - Theta_c*||_F``. ``k`` is :func:`loco_dimension`.

    Parameters
    ----------
    n : float or array_like
        **Total** comparisons (over all contexts).
    context_dim, n_features, rank : int
        ``d_x``, ``d``, ``r``.
    delta, constant
        As in :func:`parametric_rate`.

    Returns
    -------
    float, or ndarray like ``n``

    References
    ----------
    Lee, Sun and Liu, *Low-Rank Contextual Reinforcement Learning from Heterogeneous Human
    Feedback*, 2024 (sub-optimality of the PRS policy).
    """
    return parametric_rate(n, loco_dimension(context_dim, n_features, rank), delta=delta, constant=constant)


def full_rank_dimension(context_dim: int, n_features: int) -> int:
    """Coordinates of the full-rank contextual MLE: ``k = d_x d``."""
    return check_int("context_dim", context_dim, minimum=1) * check_int("n_features", n_features, minimum=1)


def full_rank_rate(
    n: Any, context_dim: int, n_features: int, *, delta: float | None = None, constant: float = 1.0
) -> np.ndarray | float:
    """Rate of the full-rank contextual MLE: ``sqrt((d_x d + log(1/delta)) / n)``, ``k = d_x d``.

    LoCo-RLHF's advantage is the ratio ``sqrt(d_x d / ((d_x + d) r - r^2))``, large when
    ``r << min(d_x, d)``.

    Parameters
    ----------
    n : float or array_like
        **Total** comparisons.
    context_dim, n_features : int
        ``d_x``, ``d``.
    delta, constant
        As in :func:`parametric_rate`.

    Returns
    -------
    float, or ndarray like ``n``

    References
    ----------
    Zhu, Jordan and Jiao, ICML 2023 (applied to ``vec(Theta_c)`` with features ``x z^T``).
    """
    return parametric_rate(n, full_rank_dimension(context_dim, n_features), delta=delta, constant=constant)


def log_log_slope(predicted: Any, measured: Any) -> float | np.ndarray:
    """Least-squares slope of ``log(measured)`` on ``log(predicted)``: 1 when the shapes agree.

    With ``predicted`` a sample size (or a predicted rate) and ``measured`` an error, the slope is
    the measured rate's exponent: ``-1/2`` against ``n`` for the ``sqrt(k / n)`` rates, 1 against
    the rate functions of this module when measurement and prediction share a shape.

    Parameters
    ----------
    predicted : array_like, shape (m,)
        Positive, ``m >= 2``, not constant.
    measured : array_like, shape (m,) or (m, k)
        Positive; with two axes, ``k`` curves measured at the same ``m`` points (columns), each
        fitted on its own.

    Returns
    -------
    float, or ndarray of shape (k,) for a two-axis ``measured``

    Raises
    ------
    ValueError
        For non-positive or non-finite entries, too few points, mismatched lengths or a constant
        ``predicted`` (the message names the argument).
    """
    measured_array = as_real_array("measured", measured, (1, 2))
    columns = measured_array.reshape(measured_array.shape[0], -1)
    if columns.shape[1] == 0:
        raise ValueError(f"measured must hold at least one curve, got shape {measured_array.shape}")
    # Each column is checked against predicted exactly as a single curve would be.
    log_predicted, _ = _log_pair(predicted, columns[:, 0])
    if np.any(columns <= 0):
        raise ValueError(f"measured must be positive, got minimum {columns.min()}")
    log_measured = np.log(columns)
    centred = log_predicted - log_predicted.mean()
    if not np.any(centred):
        raise ValueError("predicted must not be constant: a slope needs at least two distinct values")
    slopes = centred @ (log_measured - log_measured.mean(axis=0)) / (centred @ centred)
    return float(slopes[0]) if measured_array.ndim == 1 else slopes


def rate_constant(predicted: Any, measured: Any) -> float:
    """The constant ``c`` minimising ``sum (log measured - log(c predicted))^2``: the geometric mean
    of ``measured / predicted``, to draw ``c * predicted`` over the measured curve.

    Parameters
    ----------
    predicted, measured : array_like, shape (m,)
        Positive.

    Returns
    -------
    float
    """
    log_predicted, log_measured = _log_pair(predicted, measured, minimum=1)
    return float(np.exp(np.mean(log_measured - log_predicted)))


def _log_pair(predicted: Any, measured: Any, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    predicted = as_real_array("predicted", predicted, (1,))
    measured = as_real_array("measured", measured, (1,))
    if predicted.shape != measured.shape or predicted.size < minimum:
        raise ValueError(
            f"predicted {predicted.shape} and measured {measured.shape} must have the same shape and at least "
            f"{minimum} entries"
        )
    for name, values in (("predicted", predicted), ("measured", measured)):
        if np.any(values <= 0):
            raise ValueError(f"{name} must be positive, got minimum {values.min()}")
    return np.log(predicted), np.log(measured)
