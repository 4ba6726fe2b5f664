"""The one rule every estimator uses to choose its ridge (docs/algorithms.md, Ridge selection)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
from scipy.special import log_expit

from lr_mdp_env._progress import progress_bar
from lr_mdp_env.dataset import held_out_mask

from .data import ComparisonData
from .logistic import ConvergenceWarning

DEFAULT_RIDGE_GRID = (100.0, 10.0, 1.0, 0.1, 0.01)
HELD_OUT_FRACTION = 0.2


def held_out_split(data: ComparisonData, *, seed: Any = None, fraction: float = HELD_OUT_FRACTION
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, held_out)`` holding out ``round(fraction n_i)`` of each user's pairs."""
    held = held_out_mask(data.users, data.n_users, fraction, seed=seed)
    return np.flatnonzero(~held), np.flatnonzero(held)


def log_likelihood(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pair Bradley-Terry log-likelihood ``y log sigmoid(eta) + (1 - y) log sigmoid(-eta)``."""
    return labels * log_expit(logits) + (1.0 - labels) * log_expit(-logits)


def select_ridge(estimator: Any, data: ComparisonData, grid: Sequence[float], *, seed: Any = None,
                 stop_at_downturn: bool = True, progress: Any = True) -> tuple[float, dict[float, float]]:
    """Choose ``lambda`` from ``grid`` by held-out preference log-likelihood.

    Each user's pairs are split 80/20 (seeded); the estimator is fitted on the 80% with the
    candidates from the largest ridge to the smallest (so that iterative fits can warm-start), and
    each is scored by the mean log-likelihood of the held-out 20%. As along a regularisation path
    (glmnet), the scan stops at the first candidate whose score is below the best score so far:
    the held-out likelihood has turned down past its peak, and the smaller ridges, whose fits are
    the slowest, are not fitted. Ties go to the larger ridge.

    A :class:`~agents.ConvergenceWarning` of a candidate's fit names the candidate
    (``ridge selection, candidate lambda=0.01: ...``), and ``estimator.diagnostics`` is left as
    ``{"ridge_selection": {lambda: {"held_out_log_likelihood": ..., <fit>: {"converged": ...,
    ...}}}}`` with every candidate's fits, so a choice made on a fit that stopped short shows.

    Parameters
    ----------
    estimator : object
        Has ``_fit(data, ridge)``, ``pair_logits(data)`` and a ``diagnostics`` dict that
        ``_fit`` fills (all estimators in :mod:`agents`).
    data : ComparisonData
    grid : sequence of float
    seed : int, optional
    stop_at_downturn : bool, default True
        Stop the scan at the first downturn; ``False`` scores every candidate.
    progress : bool or tqdm bar, default True
        A bar over the candidates on a terminal once the scan runs a couple of seconds
        (:func:`lr_mdp_env._progress.progress_bar`), ``False`` none; or a caller's open bar,
        advanced once per candidate fitted (the estimators' bar over candidates and final fit).

    Returns
    -------
    best : float
    scores : dict
        Held-out mean log-likelihood of each candidate fitted (all of them with
        ``stop_at_downturn=False``).
    """
    train, held_out = held_out_split(data, seed=seed)
    train_data, held_out_data = data.subset(train), data.subset(held_out)
    scores: dict[float, float] = {}
    candidates: dict[float, dict] = {}
    own_bar = isinstance(progress, bool)
    bar = progress_bar(len(grid), "ridge selection", progress, unit="fit") if own_bar else progress
    try:
        for ridge in sorted(grid, reverse=True):
            bar.set_postfix_str(f"lambda={ridge:g}", refresh=False)
            estimator.diagnostics = {}
            with convergence_warnings_labelled(f"ridge selection, candidate lambda={ridge:g}"):
                estimator._fit(train_data, ridge)
            bar.update()
            score = float(np.mean(log_likelihood(estimator.pair_logits(held_out_data), held_out_data.labels)))
            turned_down = bool(scores) and score < max(scores.values())
            scores[ridge] = score
            candidates[ridge] = {"held_out_log_likelihood": score, **estimator.diagnostics}
            if stop_at_downturn and turned_down:
                break
    finally:
        if own_bar:
            bar.close()
    estimator.diagnostics = {"ridge_selection": candidates}
    best = max(scores, key=lambda ridge: (scores[ridge], ridge))
    return best, scores


@contextmanager
def convergence_warnings_labelled(label: str) -> Iterator[None]:
    """Re-issue the :class:`~agents.ConvergenceWarning` s raised inside as ``"{label}: {message}"``
    (other warnings pass through unchanged), so a warning says which fit it belongs to."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        message = warning.message
        if isinstance(message, ConvergenceWarning):
            message = ConvergenceWarning(f"{label}: {message}")
        warnings.warn_explicit(message, warning.category, warning.filename, warning.lineno, source=warning.source)
