"""Which radius an estimator's confidence sets use: the one rule every estimator follows.

An estimator fits a logistic model on ``k`` coordinates ``w`` and reports the ellipsoid
``{w : ||w - w_hat||_M <= radius}``. The rule, an estimator's ``radius`` option, decides both the
matrix and the radius: ``"wald"`` pairs the Fisher information at the estimate with the
asymptotic chi-square radius, ``"theory"`` pairs the unweighted Gram matrix with the
finite-sample radius of :func:`lr_mdp_env.theory.theory_radius` (docs/theory.md, Confidence
sets). :func:`set_matrix_and_radius` is that choice; the pooled, independent, oracle-subspace,
P-ShareLoRA, LoCo-RLHF and full-rank estimators all call it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np

from lr_mdp_env._validation import check_real
from lr_mdp_env.theory import theory_radius, wald_radius

__all__ = ["RADIUS_RULES", "check_radius_rule", "norm_bound_or_default", "set_matrix_and_radius"]

#: The rules an estimator's ``radius`` option accepts.
RADIUS_RULES = ("wald", "theory")

MatrixOrMaker = np.ndarray | Callable[[], np.ndarray]


def check_radius_rule(rule: Any, name: str = "radius") -> str:
    """``rule`` if it is one of :data:`RADIUS_RULES`.

    Raises
    ------
    ValueError
        Otherwise, naming ``name`` and the rules.
    """
    if not isinstance(rule, str) or rule not in RADIUS_RULES:
        raise ValueError(f"{name} must be one of {RADIUS_RULES}, got {rule!r}")
    return rule


def norm_bound_or_default(norm_bound: float | None, estimate_norm: float) -> float:
    """``B >= ||w*||`` of the theory radius: the given one, else twice the estimate's norm (1 if zero).

    Parameters
    ----------
    norm_bound : float or None
        The bound the user gave (an estimator's ``norm_bound``).
    estimate_norm : float
        The norm of the estimate the bound should cover (the largest over the problems sharing
        the default).

    Returns
    -------
    float
    """
    if norm_bound is not None:
        return float(norm_bound)
    return 2.0 * float(estimate_norm) or 1.0


@lru_cache(maxsize=256)
def _cached_wald_radius(dimension: int, delta: float) -> float:
    # Every user's set of a fit shares its dimension: the chi-square quantile is computed once.
    return wald_radius(dimension, delta)


def set_matrix_and_radius(
    rule: str,
    *,
    delta: float,
    fisher: MatrixOrMaker,
    features: MatrixOrMaker,
    beta: float,
    ridge: float,
    norm_bound: float | None,
    estimate_norm: float,
) -> tuple[np.ndarray, float]:
    """``(M, radius)`` of the ``1 - delta`` set ``{w : ||w - w_hat||_M <= radius}`` of a logistic fit.

    - ``"wald"``: ``M`` is the Fisher information at the estimate,
      ``sum_j sigmoid'(eta_j) (beta f_j)(beta f_j)^T + lambda I``, and the radius is
      :func:`~lr_mdp_env.theory.wald_radius` of ``k`` coordinates.
    - ``"theory"``: ``M = beta^2 F^T F + lambda I`` and the radius is
      :func:`~lr_mdp_env.theory.theory_radius` with ``L = beta max_j ||f_j||`` and ``B`` from
      :func:`norm_bound_or_default`.

    Parameters
    ----------
    rule : {"wald", "theory"}
    delta : float
        In ``(0, 1)``.
    fisher : ndarray of shape (k, k), or a function returning it
        The Fisher information at the estimate (ridge included); only the Wald rule needs it,
        so a function is called only then.
    features : ndarray of shape (n, k), or a function returning it
        The coordinates ``f_j`` of the pairs of the fit; only the theory rule (and the size
        ``k`` of the Wald rule, when ``fisher`` is a function that gives it) needs them.
    beta : float
        The rationality the fit assumed.
    ridge : float
        ``lambda > 0``, the fit's ridge.
    norm_bound : float or None
        ``B >= ||w*||`` given by the user.
    estimate_norm : float
        The estimate's norm, for the default ``B``.

    Returns
    -------
    matrix : ndarray, shape (k, k)
        Symmetrised (``(M + M^T) / 2``).
    radius : float
        ``0.0`` when ``k = 0`` (the set is one point).

    References
    ----------
    Zhu, Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise
    or K-wise Comparisons*, ICML 2023 (the confidence sets of the pessimistic MLE).
    """
    rule = check_radius_rule(rule)
    delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
    if rule == "wald":
        matrix = np.asarray(fisher() if callable(fisher) else fisher, dtype=float)
        k = matrix.shape[0]
        radius = _cached_wald_radius(k, delta) if k else 0.0
    else:
        coordinates = np.asarray(features() if callable(features) else features, dtype=float)
        k = coordinates.shape[1]
        matrix = beta**2 * coordinates.T @ coordinates + ridge * np.eye(k)
        if k:
            feature_bound = float(beta * np.max(np.linalg.norm(coordinates, axis=1), initial=0.0))
            radius = theory_radius(matrix, ridge, delta, feature_bound,
                                   norm_bound_or_default(norm_bound, estimate_norm))
        else:
            radius = 0.0
    return 0.5 * (matrix + matrix.T), radius
