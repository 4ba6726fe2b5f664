"""Reward estimators for users identified by index: pooled, independent, oracle subspace, P-ShareLoRA.

Every estimator ends with the same step: for each user ``i`` a ridge logistic MLE in the
coordinates ``w`` of a basis ``B_i`` (``theta_i = Theta_0[:, i] + B_i w``), solved for all users at
once by :func:`agents.logistic.fit_logistic`, and a ``1 - delta`` confidence set built for inference
(a refit with a small ridge, :class:`RewardEstimator`; docs/confidence_sets.md). They differ in the basis and in the pairs each user's problem sees:

============================  ==========================  ==========================
estimator                     basis ``B_i``               pairs of user ``i``
============================  ==========================  ==========================
:class:`PooledMLE`            identifiable directions     everybody's (one shared ``w``)
:class:`IndependentMLE`       identifiable directions     user ``i``'s
:class:`OracleSubspaceMLE`    true ``U*``                 user ``i``'s
:class:`PShareLoRA`           estimated ``U_hat``         user ``i``'s
============================  ==========================  ==========================

The identifiable directions (:func:`lr_mdp_env.identifiability.identifiable_basis`) leave out
what comparisons never see, e.g. the all-ones direction of one-hot features (docs/algorithms.md, Planning).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse
from scipy.special import expit
from scipy.stats import chi2

from lr_mdp_env import FeaturePreferenceDataset, PreferenceDataset, TabularMDP
from lr_mdp_env._progress import progress_bar
from lr_mdp_env._validation import as_generator, as_real_array, check_int, check_real, immutable
from lr_mdp_env.identifiability import identifiable_basis, unidentified_directions
from lr_mdp_env.rewards import base_matrix

from .confidence import ConfidenceSet, Ellipsoid, LowRankEllipsoid, theory_radius, wald_radius
from .data import ComparisonData, comparison_data
from .exceptions import not_fitted
from .factorized import FactoredFit, fit_factored
from .likelihood_set import LikelihoodRatioSet, finite_sample_likelihood_threshold
from .logistic import LogisticFit, bernoulli_losses, fit_logistic
from .subspace_error import (MAX_IDENTIFIED_SINE, SubspaceErrorSet, SubspaceNotIdentifiedWarning, check_subspace_error,
                             coordinate_bound, epsilon_from_sine, pair_span_weights, sharelora_sine_bound, split_half_sine,
                             subspace_error_seed)
from .tuning import DEFAULT_RIDGE_GRID, convergence_warnings_labelled, select_ridge

#: Values of the estimators' ``confidence`` option (:class:`RewardEstimator`).
CONFIDENCE_SETS = ("wald", "likelihood", "finite", "theory")
#: Memory that the sets kept by an estimator may take (bytes); beyond it sets are rebuilt on demand.
SET_CACHE_BYTES = 512 * 2**20
#: Ridge of the inference refit behind the ``"wald"``, ``"likelihood"`` and ``"finite"`` sets.
DEFAULT_INFERENCE_RIDGE = 1e-4


def check_confidence(confidence: Any) -> str:
    """Validate the ``confidence`` option (one of :data:`CONFIDENCE_SETS`).

    Parameters
    ----------
    confidence : str

    Returns
    -------
    str
        ``confidence`` itself.

    Raises
    ------
    TypeError
        If it is not a string.
    ValueError
        If it is not one of the set kinds (the message lists them).
    """
    if not isinstance(confidence, str):
        raise TypeError(f"confidence must be one of {CONFIDENCE_SETS} (a string), got {type(confidence).__name__}")
    if confidence not in CONFIDENCE_SETS:
        raise ValueError(f"confidence must be one of {CONFIDENCE_SETS}, got {confidence!r}")
    return confidence


def _binary_labels(labels: np.ndarray, confidence: str) -> np.ndarray:
    """``labels`` if they are all 0 or 1 (what the likelihood-ratio sets' loss is written for)."""
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"confidence={confidence!r} needs labels in {{0, 1}}; the data have ties (0.5): "
                         "use confidence='wald'")
    return labels


class RewardEstimator:
    """Common machinery: ridge selection, per-user coordinate fits and confidence sets.

    Point estimate and confidence set are built for different purposes. ``theta_hat`` is the
    ridge MLE with the ridge chosen for prediction (held-out likelihood); a ridge of that size
    moves the estimate by ``lambda M^{-1} w*``, often as far as the set's radius, so a set centred
    there misses the truth (66-80% coverage at nominal 90% on the world of docs/confidence_sets.md).
    The ``"wald"``, ``"likelihood"`` and ``"finite"`` sets are instead built around an *inference
    refit*: each user's coordinate problem solved again with the small ``inference_ridge``
    (batched over users, warm-started from the tuned solution), whose bias is negligible against
    the radius (below). Each set's ``theta_hat`` is its own centre, the refit; the estimator's
    ``theta_hat`` stays the tuned one.

    Parameters
    ----------
    ridge : float, optional
        ``lambda``. Default: chosen from ``ridge_grid`` by held-out preference log-likelihood on a
        seeded 80/20 split of each user's pairs (:func:`agents.tuning.select_ridge`), the same
        rule for every estimator so comparisons are against tuned baselines.
    ridge_grid : sequence of float
    beta : float, default 1.0
        Rationality the model assumes.
    confidence : {"wald", "likelihood", "finite", "theory"}, default "wald"
        The ``1 - delta`` set of each user, in the coordinates ``w`` of the estimator's basis
        (``theta = Theta_0[:, i] + B w``; ``w_0`` the inference refit, ``M`` its Fisher matrix
        plus ``inference_ridge I``, ``f`` the negative log-likelihood of the user's pairs):

        - ``"wald"``: ellipsoid ``||w - w_0||_M <= sqrt(chi2_k(1 - delta))``
          (:func:`agents.confidence.wald_radius`); asymptotic.
        - ``"likelihood"``: ``f(w) + inference_ridge/2 ||w||^2 <= min + level``, the level
          Wilks' ``chi2_k(1 - delta) / 2`` or, where larger, the largest ``1 - delta`` quantile
          of the likelihood-ratio statistic in parametric bootstraps at the ridge MLEs along a
          fixed regularisation path (ridges 100 to 0.01 and the tuned one;
          :func:`bootstrap_likelihood_levels`, for ``k <= 64`` coordinates). Wilks' level alone
          covers 16% at nominal 90% with 1.5 pairs per coordinate, a bootstrap at the tuned
          estimate alone 72-86% at 1.5-3; the path covers at least ``1 - delta`` from 1.5 pairs
          per coordinate up in the slow coverage tests. Follows the likelihood's shape.
        - ``"finite"``: ``f(w) <= c``, with ``c`` a threshold valid for every ``n`` under the
          Bradley-Terry model (a mixture-martingale bound, no norm bound or curvature factor):
          ``P(theta* in C) >= 1 - delta`` even for adaptively collected pairs.
        - ``"theory"``: the self-normalised ellipsoid of Zhu, Jordan and Jiao around the tuned
          estimate (:func:`agents.confidence.theory_radius`). Valid when ``norm_bound`` bounds
          ``||w*||``, but its ``1 / gamma = 2 + exp(L B) + exp(-L B)`` factor makes it vacuous in
          practice (radii of 1e3 to 1e10 measured); kept for comparison.

        The two likelihood sets are :class:`agents.likelihood_set.LikelihoodRatioSet` s and need
        labels in ``{0, 1}``; the others are :class:`~agents.confidence.Ellipsoid` s.
    delta : float, default 0.1
        Confidence sets are ``1 - delta`` sets.
    norm_bound : float, optional
        ``B >= ||w*||`` for the theory radius; default twice the largest estimated ``||w_i||``
        (a data-driven guess: the finite-sample guarantee then holds only if it is an upper bound).
    inference_ridge : float, default 1e-4
        Ridge of the inference refit (``min(ridge, inference_ridge)`` is used; with a smaller
        ``ridge`` the tuned fit is the refit). It keeps the refit finite on separable data (few
        pairs per coordinate); its bias ``inference_ridge M^{-1} w*`` has ``M``-norm at most
        ``sqrt(inference_ridge) ||w*|| = 0.01 ||w*||``, under 1% of the smallest radius
        ``sqrt(chi2_1(0.9)) = 1.64`` for ``||w*|| <= 1.6`` and smaller still along every direction
        the data inform (there ``M >> inference_ridge``).
    base : array_like of shape (d,) or (d, N), optional
        Known base reward ``Theta_0``.
    seed : int, optional
        Seeds the ridge-selection split.
    tol : float, default 1e-8
        Relative gradient tolerance of the logistic fits. The joint rank-``r`` fit uses
        ``min(100 tol, 1e-4)``, ``1e-6`` by default: its last digits cost the most
        conjugate-gradient steps, and an error of that size in the factors is far below their
        statistical error.
    progress : bool, default True
        A bar over the fits (ridge candidates and the final fit) on a terminal once ``fit``
        runs a couple of seconds; ``False``: none. Nothing is printed otherwise.

    Attributes (after ``fit``)
    --------------------------
    theta_hat : ndarray, shape (N, d)
        The point estimates (tuned ridge).
    subspace : ndarray of shape (d, r), or None
    ridge_ : float
        The ridge used for ``theta_hat``.
    inference_ridge_ : float
        The ridge of the inference refit behind the sets.
    fisher_ : ndarray of shape (n_problems, k, k), or None
        ``M_b = beta^2 sum_j sigmoid'(eta_j) x_j x_j^T + ridge_ I`` of each coordinate problem at
        the tuned estimate (one problem for :class:`PooledMLE` and the contextual estimators, one
        per user otherwise); ``None`` for user-indexed estimators with ``k > 64`` coordinates,
        where the sets form theirs per user when asked (from the sparse differences for a pooled
        fit; as the low-rank factor for users with fewer pairs than coordinates).
    ridge_scores_ : dict
        Held-out mean log-likelihood of each candidate ridge fitted (the scan from the largest
        ridge down stops at the first score below the best: :func:`agents.tuning.select_ridge`;
        empty with a fixed ridge).
    diagnostics : dict
        Per fit with the ridge used (``"joint"``, ``"coordinates"``, and ``"inference"`` once a
        set was asked for): ``relative_gradient_norm``,
        ``iterations`` (Newton steps), ``converged``, and for the rank-``r`` joint fits
        ``quasi_newton_steps`` (the L-BFGS steps before the Newton steps). With a selected ridge,
        ``"ridge_selection"`` holds the same for every candidate ``lambda`` (and its
        ``held_out_log_likelihood``); :class:`~agents.ConvergenceWarning` s name the candidate
        or the final fit they come from.

    Notes
    -----
    Assumptions of the sets: the Bradley-Terry model with the assumed ``beta`` holds for every
    user's pairs (for :class:`PooledMLE`: all users share one reward), the truth lies in the span
    of the basis (for reduced estimators the sets are about the truth's projection), and for the
    asymptotic kinds enough pairs per coordinate for the likelihood to be locally quadratic. With
    separable data (very few pairs) the refit's Fisher matrix is small and the asymptotic sets are
    large: they over-cover rather than under-cover. docs/confidence_sets.md has the measured
    coverage of each kind.

    References
    ----------
    Wilks, *The large-sample distribution of the likelihood ratio for testing composite
    hypotheses*, Ann. Math. Statist. 1938. van der Vaart, *Asymptotic Statistics*, 1998, ch. 5
    and 16. Abeille, Faury and Calauzenes, *Instance-Wise Minimax-Optimal Algorithms for Logistic
    Bandits*, AISTATS 2021. Lee, Yun and Jun, *Improved Regret Bounds of (Multinomial) Logistic
    Bandits via Regret-to-Confidence-Set Conversion*, AISTATS 2024. Zhan, Uehara, Kallus, Lee and
    Sun, *Provable Offline Preference-Based Reinforcement Learning*, arXiv:2305.14816, 2023. Zhu,
    Jordan and Jiao, *Principled Reinforcement Learning with Human Feedback from Pairwise or
    K-wise Comparisons*, ICML 2023.
    """

    def __init__(
        self,
        *,
        ridge: float | None = None,
        ridge_grid: Any = DEFAULT_RIDGE_GRID,
        beta: float = 1.0,
        confidence: str = "wald",
        delta: float = 0.1,
        norm_bound: float | None = None,
        inference_ridge: float = DEFAULT_INFERENCE_RIDGE,
        base: Any = None,
        seed: int | None = 0,
        tol: float = 1e-8,
        progress: bool = True,
    ) -> None:
        self.ridge = None if ridge is None else check_real("ridge", ridge, 0.0, strict_minimum=True)
        self.ridge_grid = tuple(check_real("ridge_grid entry", value, 0.0, strict_minimum=True) for value in ridge_grid)
        if not self.ridge_grid:
            raise ValueError("ridge_grid must not be empty")
        self.beta = check_real("beta", beta, 0.0, strict_minimum=True)
        self.confidence = check_confidence(confidence)
        self.delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
        if delta >= 1:
            raise ValueError(f"delta must be below 1, got {delta}")
        self.norm_bound = None if norm_bound is None else check_real("norm_bound", norm_bound, 0.0, strict_minimum=True)
        self.inference_ridge = check_real("inference_ridge", inference_ridge, 0.0, strict_minimum=True)
        self.base = None if base is None else as_real_array("base", base, (1, 2))
        as_generator(seed)  # refuses what cannot seed the ridge-selection split, here rather than in fit
        self.seed = seed
        self.tol = check_real("tol", tol, 0.0, strict_minimum=True)
        # -- progress (lr_mdp_env._progress): a bar over the ridge candidates and the final fit
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {type(progress).__name__}")
        self.progress = progress

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: before fit, what fit sets is "not fitted yet".
        if not name.startswith("__") and "theta_hat" not in self.__dict__:
            raise not_fitted(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, dataset: PreferenceDataset | FeaturePreferenceDataset, mdp: TabularMDP | None = None
            ) -> RewardEstimator:
        """Estimate every user's reward; returns ``self``.

        Parameters
        ----------
        dataset : PreferenceDataset or FeaturePreferenceDataset
            Trajectory pairs collected in ``mdp``, or comparisons given directly as feature
            differences ``z`` (e.g. embeddings of real responses).
        mdp : TabularMDP, optional
            Required for trajectory pairs. Its features give ``z``, and comparisons never see the
            directions :func:`~lr_mdp_env.identifiability.unidentified_directions` finds (e.g.
            the all-ones direction of one-hot features), which the fit leaves out. Without an
            MDP every direction of ``R^d`` is fitted, and the ridge alone settles the ones the
            data do not reach.
        """
        data = comparison_data(dataset, mdp, beta=self.beta, base=self.base)
        d = data.n_features
        if mdp is None:
            self._hidden, self._identifiable = np.zeros((d, 0)), np.eye(d)
        else:
            self._hidden = unidentified_directions(mdp)
            self._identifiable = identifiable_basis(mdp, self._hidden)
        self._base = base_matrix(self.base, d, data.n_users)
        self._prepare(data, mdp)
        self.diagnostics: dict[str, dict] = {}
        n_fits = 1 if self.ridge is not None else len(self.ridge_grid) + 1
        with progress_bar(n_fits, f"fitting {type(self).__name__}", self.progress, unit="fit") as bar:
            if self.ridge is None:
                self.ridge_, self.ridge_scores_ = select_ridge(self, data, self.ridge_grid, seed=self.seed,
                                                               progress=bar)
            else:
                self.ridge_, self.ridge_scores_ = self.ridge, {}
            self.inference_ridge_ = min(self.ridge_, self.inference_ridge)
            chosen = "fixed" if self.ridge is not None else "selected"
            bar.set_postfix_str(f"final fit, lambda={self.ridge_:g}", refresh=False)
            with convergence_warnings_labelled(f"fit with the {chosen} ridge lambda={self.ridge_:g}"):
                self._fit(data, self.ridge_)
            bar.update(bar.total - bar.n)
        self._data = data
        self._sets: dict[int, ConfidenceSet] = {}
        for name in ("_basis_factors", "_problem_sizes", "_problem_order", "_sets_fit"):  # of the previous fit
            self.__dict__.pop(name, None)
        self._set_parts: dict[int, dict[str, Any]] = {}  # per coordinate problem
        self._inference: tuple[np.ndarray, np.ndarray | None] | None = None
        self._thresholds: np.ndarray | None = None
        self._levels: np.ndarray | None = None
        self._wald_radii: dict[int, float] = {}
        return self

    def _prepare(self, data: ComparisonData, mdp: TabularMDP) -> None:
        """Hook for work that does not depend on the ridge (run once before ridge selection)."""

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        """Fit with a given ridge: set ``theta_hat``, ``subspace`` and the per-user problems."""
        raise NotImplementedError

    def _solve_coordinates(self, data: ComparisonData, bases: np.ndarray, ridge: float, pooled: bool,
                           initial: np.ndarray | None) -> tuple[LogisticFit, np.ndarray, np.ndarray, Any]:
        """Ridge MLE of every coordinate problem in a shared basis ``(d, k)``, batched, warm-started
        from ``initial`` (coordinates, ``(n_problems, k)``) when given.

        Returns the fit, the coordinates ``(n_problems, k)``, ``theta = B w`` ``(n_problems, d)``
        and the pairs' coordinates ``B^T z_j`` (an array, or formed on indexing).

        A full-dimensional basis (the identifiable directions) with sparse feature differences is
        fitted in feature space, ``theta = B w``, from the sparse ``z_j`` themselves: the loss sees
        only ``B B^T theta`` and the ridge keeps the rest at zero, so it is the same minimiser with
        the same gradient norm, without the dense ``n x k`` coordinates ``B^T z_j``; they are
        formed per problem when a confidence set needs them."""
        groups = np.zeros(data.n_pairs, dtype=np.int64) if pooled else data.users
        n_problems = 1 if pooled else data.n_users
        in_feature_space = scipy.sparse.issparse(data.differences) and bases.shape[1] > _DENSE_COORDINATES_MAX
        if in_feature_space:
            features, coordinates = data.differences, _Coordinates(data.differences, bases, self._hidden)
            initial = None if initial is None else initial @ bases.T
        else:
            features = coordinates = np.asarray(data.differences @ bases)
        fit = fit_logistic(
            features, data.labels, groups=groups, n_problems=n_problems, offsets=data.offsets,
            beta=self.beta, ridge=ridge, initial=initial, tol=self.tol, fisher=bases.shape[1] <= _DENSE_COORDINATES_MAX,
        )
        if in_feature_space:  # theta is the answer; remove what rounding leaves along unseen directions
            theta = fit.theta - (fit.theta @ self._hidden) @ self._hidden.T
            solution = theta @ bases
        else:
            solution = fit.theta
            theta = solution @ bases.T
        return fit, solution, theta, coordinates

    def _fit_coordinates(self, data: ComparisonData, bases: np.ndarray, ridge: float, pooled: bool = False,
                         initial: np.ndarray | None = None) -> None:
        """Ridge MLE of each user's coordinates in a shared basis ``(d, k)`` (see
        :meth:`_solve_coordinates`); sets ``theta_hat`` and ``fisher_``."""
        fit, solution, theta, coordinates = self._solve_coordinates(data, bases, ridge, pooled, initial)
        self._record("coordinates", fit)
        repeat = (lambda rows: np.repeat(rows, data.n_users, axis=0)) if pooled else (lambda rows: rows)
        # Immutable: every user's set is handed this one array, whose entries are then checked once.
        self._basis, self._solution, self._pooled = immutable(bases), solution, pooled
        self._coordinate_features = coordinates
        self._groups = np.zeros(data.n_pairs, dtype=np.int64) if pooled else data.users
        self.fisher_ = fit.fisher
        self.theta_hat = self._base.T + repeat(theta)

    def _inference_fit(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The inference refit of every coordinate problem, once, batched: its coordinates
        ``(n_problems, k)`` and Fisher matrices ``(n_problems, k, k)`` (``None`` for ``k > 64``)."""
        if self._inference is None:
            if self.inference_ridge_ == self.ridge_:  # the tuned fit already has the small ridge
                self._inference = self._solution, self.fisher_
            else:
                # Warm-started from the tuned answer, a few Newton steps reach the refit.
                with convergence_warnings_labelled(f"inference refit with ridge {self.inference_ridge_:g}"):
                    fit, solution, _, _ = self._solve_coordinates(
                        self._data, self._basis, self.inference_ridge_, self._pooled, self._solution)
                self._record("inference", fit)
                self._inference = solution, fit.fisher
        return self._inference

    @property
    def _joint_tol(self) -> float:
        """Tolerance of the joint rank-``r`` fits (see ``tol``)."""
        return min(100 * self.tol, 1e-4)

    def _record(self, name: str, fit: LogisticFit | FactoredFit) -> None:
        relative = np.max(fit.relative_gradient_norm) if np.ndim(fit.relative_gradient_norm) else fit.relative_gradient_norm
        self.diagnostics[name] = {
            "relative_gradient_norm": float(relative),
            "iterations": int(fit.iterations),
            "converged": bool(np.all(fit.converged)),
        }
        if isinstance(fit, FactoredFit):
            self.diagnostics[name]["quasi_newton_steps"] = int(fit.quasi_newton_steps)

    # -- predictions -------------------------------------------------------------------------

    def pair_logits(self, data: ComparisonData) -> np.ndarray:
        """``beta theta_hat_{i_j} . z_j`` for comparison data (base included)."""
        return self.beta * data.row_dot(self.theta_hat[data.users])

    # -- confidence sets ---------------------------------------------------------------------

    def confidence_set(self, user: int) -> ConfidenceSet:
        """User ``user``'s ``1 - delta`` set (the kind of the ``confidence`` option).

        An :class:`~agents.confidence.Ellipsoid`
        ``{Theta_0[:, i] + B w : ||w - w_0||_M <= radius}`` for ``"wald"`` and ``"theory"``, a
        :class:`~agents.likelihood_set.LikelihoodRatioSet` for ``"likelihood"`` and
        ``"finite"``. A ``"wald"`` set of a user with fewer pairs than coordinates (``k > 64``:
        full-dimensional sets) is a :class:`~agents.confidence.LowRankEllipsoid`: its Fisher
        matrix ``A^T A + inference_ridge I`` kept as the ``n_i x k`` factor ``A``, every
        operation through the ``n_i x n_i`` system. Built when first asked for, then kept, unless
        every user's set together would exceed ``SET_CACHE_BYTES`` (full-dimensional sets of many
        users at large ``d``); those are rebuilt on each call, so that no ``k x k`` matrix (or
        factor) is kept for all users at once.
        """
        user = check_int("user", user, minimum=0, maximum=self.theta_hat.shape[0] - 1)
        if user in self._sets:
            return self._sets[user]
        confidence_set = self._build_set(user)
        if self._sets_fit_in_cache():
            self._sets[user] = confidence_set
        return confidence_set

    def _sets_fit_in_cache(self) -> bool:
        """Whether all users' sets fit in :data:`SET_CACHE_BYTES`: two ``k x k`` arrays per
        coordinate problem, or its ``n_i x k`` factor for a low-rank-plus-ridge set (once per fit:
        every set asks)."""
        if "_sets_fit" not in self.__dict__:
            k = self._basis.shape[1]
            pairs = self._pairs_per_problem()
            low_rank = self._low_rank_problems()
            self._sets_fit = 8 * k * float(np.sum(np.where(low_rank, pairs, 2 * k))) <= SET_CACHE_BYTES
        return self._sets_fit

    def _pairs_per_problem(self) -> np.ndarray:
        """Number of pairs of each coordinate problem, ``(n_problems,)``."""
        if "_problem_sizes" not in self.__dict__:
            self._problem_sizes = np.bincount(self._groups, minlength=self._solution.shape[0])
        return self._problem_sizes

    def _low_rank_problems(self) -> np.ndarray:
        """Which coordinate problems' Wald sets are :class:`~agents.confidence.LowRankEllipsoid` s:
        ``k > 64`` coordinates (no Fisher matrix from the fit) and fewer pairs than coordinates,
        so the ``n_i x k`` factor of the Fisher matrix is smaller than the matrix."""
        k = self._basis.shape[1]
        if self.confidence != "wald" or self._pooled or k <= _DENSE_COORDINATES_MAX:
            return np.zeros(self._solution.shape[0], dtype=bool)
        return self._pairs_per_problem() < k

    def _build_set(self, user: int) -> ConfidenceSet:
        """User ``user``'s set: the set in the basis' span (reduced estimators may add to it)."""
        return self._reduced_set(user)

    @property
    def _set_delta(self) -> float:
        """Level of the sets built in the estimator's coordinates (reduced estimators that add the
        subspace error keep ``delta / 2`` of it for that error)."""
        return self.delta

    def _problem(self, user: int) -> int:
        """The coordinate problem whose set user ``user`` has (all users share one when pooled)."""
        return 0 if self._pooled else user

    def _reduced_set(self, user: int) -> ConfidenceSet:
        """The set of user ``user`` in the span of the estimator's basis: ``Theta_0[:, i] + range(B)``.

        For :class:`PShareLoRA` that is ``U_hat``'s span, so the set is about the projection of
        the truth; a subspace-error term, if any, wraps this set."""
        offset, k = self._base[:, user], self._basis.shape[1]
        if k == 0:  # nothing identifiable: the set is the single point offset
            return Ellipsoid(offset=offset, basis=self._basis, center=np.zeros(0), matrix=np.zeros((0, 0)), radius=0.0)
        problem = self._problem(user)
        if problem in self._set_parts:
            parts = self._set_parts[problem]
        else:
            parts = self._set_parts_of(problem)
            if self._sets_fit_in_cache():
                self._set_parts[problem] = parts
        if "rows" in parts:  # a Fisher matrix of fewer pairs than coordinates, plus the ridge
            region = LowRankEllipsoid(offset=offset, basis=self._basis, **parts)
        elif self.confidence in ("wald", "theory"):
            region = Ellipsoid(offset=offset, basis=self._basis, **parts)
        else:
            return LikelihoodRatioSet(offset=offset, basis=self._basis, **parts)
        # The thin SVD of the shared basis, once per estimator (O(d k^2): 16 GFlop at d = 2000),
        # not once for each new set (sets rebuilt on demand, or in blocks of users).
        if "_basis_factors" not in self.__dict__:
            self._basis_factors = region.range_factors
        region.__dict__.setdefault("range_factors", self._basis_factors)
        return region

    def _problem_rows(self, problem: int) -> np.ndarray:
        """The pairs of one coordinate problem, in increasing order, from one stable sort of the
        pairs by problem (not a scan of all pairs for each of thousands of users)."""
        if "_problem_order" not in self.__dict__:
            order = np.argsort(self._groups, kind="stable")
            self._problem_order = order, np.searchsorted(self._groups[order], np.arange(self._solution.shape[0] + 1))
        order, starts = self._problem_order
        return order[starts[problem]:starts[problem + 1]]

    def _problem_pairs(self, problem: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates ``B^T z_j`` ``(m, k)``, labels and offsets of one coordinate problem's pairs."""
        rows = self._problem_rows(problem)
        return np.asarray(self._coordinate_features[rows]), self._data.labels[rows], self._data.offsets[rows]

    def _set_parts_of(self, problem: int) -> dict[str, Any]:
        """What the sets of one coordinate problem share (shared by all users when pooled):
        the keyword arguments of the set besides ``offset`` and ``basis``."""
        if self.confidence == "theory":
            features, _, _ = self._problem_pairs(problem)
            center = self._solution[problem]
            norm_bound = self.norm_bound if self.norm_bound is not None else \
                2.0 * float(np.max(np.linalg.norm(self._solution, axis=1), initial=0.0)) or 1.0
            return _ellipsoid_parts(*_theory_set_matrix(features, center, self.beta, self.ridge_, self._set_delta, norm_bound))
        solutions, fishers = self._inference_fit()
        center = solutions[problem]
        if self.confidence == "wald":
            radius = self._wald_radius(center.shape[0])
            if fishers is not None:
                matrix = fishers[problem]
            elif self._low_rank_problems()[problem]:
                features, _, offsets = self._problem_pairs(problem)
                return {"center": center, "rows": _fisher_rows(features, offsets, center, self.beta),
                        "ridge": self.inference_ridge_, "radius": radius}
            elif isinstance(self._coordinate_features, _Coordinates):  # sparse differences: B^T (Z^T W Z) B
                rows = self._problem_rows(problem)
                matrix = self._coordinate_features.fisher(rows, self._data.offsets[rows], center, self.beta,
                                                          self.inference_ridge_)
            else:
                features, _, offsets = self._problem_pairs(problem)
                matrix = _fisher_matrix(features, offsets, center, self.beta, self.inference_ridge_)
            return _ellipsoid_parts(matrix, center, radius)
        features, labels, offsets = self._problem_pairs(problem)
        threshold = None
        if isinstance(self._coordinate_features, np.ndarray):
            threshold = (self._finite_thresholds() if self.confidence == "finite" else self._likelihood_levels())[problem]
        return _likelihood_parts(self.confidence, features, labels, offsets, center, self.beta,
                                self.inference_ridge_, self._set_delta, threshold)

    def _likelihood_levels(self) -> np.ndarray:
        """The bootstrap-calibrated levels of every coordinate problem's likelihood-ratio set,
        ``(n_problems,)``, in batched solves (when the pairs' coordinates are formed: ``k <= 64``;
        beyond, the Wilks level), the largest over the bootstrap worlds of :meth:`_bootstrap_worlds`."""
        if self._levels is None:
            _binary_labels(self._data.labels, self.confidence)  # refuse ties before the bootstrap
            self._levels = bootstrap_likelihood_levels(
                self._coordinate_features, self._data.offsets, self._groups, self._solution.shape[0],
                self._bootstrap_worlds(), None, self.beta, self.inference_ridge_, self._set_delta,
                LIKELIHOOD_BOOTSTRAP_REPLICATES, self._bootstrap_generator(), max(self.tol, _BOOTSTRAP_TOL))
        return self._levels

    def _bootstrap_worlds(self) -> np.ndarray:
        """Candidate worlds of the likelihood sets' bootstrap, ``(n_worlds, n_problems, k)``: the
        ridge MLEs at every ridge of :data:`LIKELIHOOD_WORLD_RIDGES` and at ``ridge_`` (those above
        the inference ridge), from the largest ridge down, each fit warm-started from the previous.

        The quantile of the likelihood-ratio statistic depends on the unknown truth, and not
        monotonically in its size: a world shrunk more than the truth understates the inflation
        (the tuned estimate at 3 pairs per coordinate: 86% coverage at nominal 90%), and so does an
        over-fitted one (near separation its labels are nearly deterministic; the refit: 84%, and
        the tuned estimate itself when held-out selection picks a small ridge on separable data:
        72%). The path runs from nearly the zero world to nearly the refit, and the level is the
        largest quantile over it."""
        ridges = sorted({*LIKELIHOOD_WORLD_RIDGES, self.ridge_}, reverse=True)
        worlds, initial = [], None
        for ridge in ridges:
            if ridge <= self.inference_ridge_:
                break
            if ridge == self.ridge_:
                initial = self._tuned_world()
            else:
                with convergence_warnings_labelled(f"likelihood-set bootstrap world, ridge {ridge:g}"):
                    initial = self._world_at_ridge(ridge, initial)
            worlds.append(initial)
        if not worlds:  # the tuned ridge is the inference ridge and below the whole path
            worlds.append(self._tuned_world())
        return np.stack(worlds)

    def _tuned_world(self) -> np.ndarray:
        """The coordinates of every problem at the tuned ridge, ``(n_problems, k)``."""
        return self._solution

    def _world_at_ridge(self, ridge: float, initial: np.ndarray | None) -> np.ndarray:
        """The ridge MLE of every problem's coordinates at ``ridge``, ``(n_problems, k)``, warm-started
        from ``initial`` (the previous world of the path)."""
        return self._solve_coordinates(self._data, self._basis, ridge, self._pooled, initial)[1]

    def _bootstrap_generator(self) -> np.random.Generator:
        """The random stream of the likelihood sets' bootstrap: derived from ``seed`` (an int seed
        gets its own stream, independent of the ridge-selection split's)."""
        if isinstance(self.seed, (int, np.integer)):
            return np.random.default_rng([_LIKELIHOOD_STREAM, int(self.seed)])
        return as_generator(self.seed)

    def _finite_thresholds(self) -> np.ndarray:
        """The finite-sample thresholds of every coordinate problem, ``(n_problems,)``, in one
        batched call (when the pairs' coordinates are formed: ``k <= 64``)."""
        if self._thresholds is None:
            labels = _binary_labels(self._data.labels, self.confidence)
            self._thresholds = finite_sample_likelihood_threshold(
                self._coordinate_features, labels, self._data.offsets, self.beta, self._set_delta,
                groups=self._groups, n_problems=self._solution.shape[0])
        return self._thresholds

    def _wald_radius(self, k: int) -> float:
        """:func:`wald_radius` of ``k`` coordinates, computed once (every user's set shares it)."""
        if k not in self._wald_radii:
            self._wald_radii[k] = wald_radius(k, self._set_delta)
        return self._wald_radii[k]


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)


def _fisher_matrix(features: np.ndarray, offsets: np.ndarray, center: np.ndarray, beta: float, ridge: float
                  ) -> np.ndarray:
    """``beta^2 sum_j sigmoid'(eta_j) x_j x_j^T + ridge I`` at ``center`` (``eta_j = offset_j + beta x_j . center``)."""
    eta = offsets + beta * features @ center
    slope = expit(eta) * expit(-eta)
    return _symmetric(beta**2 * (features.T * slope) @ features + ridge * np.eye(center.shape[0]))


def _householder_complement(basis: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The Householder reflectors ``(v_j, tau_j)`` of the QR factor of ``hidden`` ``(d, m)`` when
    ``basis`` is its complement ``(H_1 ... H_m)[:, m:]`` (as
    :func:`~lr_mdp_env.identifiability.identifiable_basis` builds it) to ``1e-12``; else ``None``."""
    d, m = hidden.shape
    if m == 0 or basis.shape != (d, d - m):
        return None
    (raw, scales), _ = scipy.linalg.qr(hidden, mode="raw")
    vectors = np.tril(raw, -1)[:, :m].T.copy()
    vectors[np.arange(m), np.arange(m)] = 1.0
    complement = np.eye(d)[:, m:]
    for vector, scale in zip(vectors[::-1], scales[::-1]):  # H_1 (H_2 (... H_m [0; I]))
        complement -= np.outer(vector, scale * (vector @ complement))
    if np.max(np.abs(complement - basis)) > 1e-12:
        return None
    return vectors, scales


def _fisher_rows(features: np.ndarray, offsets: np.ndarray, center: np.ndarray, beta: float) -> np.ndarray:
    """``A`` with ``A^T A = beta^2 sum_j sigmoid'(eta_j) x_j x_j^T`` at ``center``: the rows
    ``beta sqrt(sigmoid'(eta_j)) x_j``, ``(n, k)``."""
    eta = offsets + beta * features @ center
    return (beta * np.sqrt(expit(eta) * expit(-eta)))[:, None] * features


def _theory_set_matrix(features: np.ndarray, center: np.ndarray, beta: float, ridge: float, delta: float,
                      norm_bound: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(M, center, radius)`` of the self-normalised set: the Gram matrix
    ``beta^2 sum_j x_j x_j^T + ridge I`` and :func:`agents.confidence.theory_radius`."""
    k = center.shape[0]
    matrix = _symmetric(beta**2 * features.T @ features + ridge * np.eye(k))
    feature_bound = float(beta * np.max(np.linalg.norm(features, axis=1), initial=0.0))
    return matrix, center, theory_radius(matrix, ridge, delta, feature_bound, norm_bound)


# Key of the random stream of the likelihood sets' bootstrap (next to the estimator's seed).
_LIKELIHOOD_STREAM = 0x11CE
#: Parametric-bootstrap replicates per world behind the level of the ``"likelihood"`` sets.
LIKELIHOOD_BOOTSTRAP_REPLICATES = 50
#: Ridges of the bootstrap worlds' regularisation path, besides the tuned one
#: (:meth:`RewardEstimator._bootstrap_worlds`).
LIKELIHOOD_WORLD_RIDGES = (100.0, 10.0, 1.0, 0.1, 0.01)
# Relative gradient tolerance of the replicates' refits: it moves a level by about 1e-5 (measured
# at 1.5-24 pairs per coordinate), far below the Monte-Carlo error of a 90% quantile from 50
# replicates (about one nat), and saves 10-20% of the bootstrap's time.
_BOOTSTRAP_TOL = 1e-5
# Replicates are fitted in chunks of at most this many pair-coordinates (floats) at once.
_BOOTSTRAP_CHUNK_ENTRIES = 4_000_000


def bootstrap_likelihood_levels(features: np.ndarray, offsets: np.ndarray, groups: np.ndarray, n_problems: int,
                                truth: np.ndarray, start: np.ndarray | None, beta: float, ridge: float, delta: float,
                                replicates: int, rng: np.random.Generator, tol: float = 1e-8) -> np.ndarray:
    """Levels of the likelihood-ratio sets of many problems: ``max(chi2_k(1 - delta), q) / 2``
    with ``q`` the ``1 - delta`` quantile of the likelihood-ratio statistic in a parametric
    bootstrap, the largest over one or several candidate worlds.

    In a world whose coordinates are ``truth`` (one row per problem), labels are redrawn for the
    same pairs ``replicates`` times; each replicate's penalised loss ``f_b`` is minimised again
    (all problems and replicates in batched :func:`agents.logistic.fit_logistic` solves, warm-started
    from ``start``), and ``T_b = 2 (f_b(truth) - min f_b)`` is the statistic whose ``chi2_k``
    limit Wilks' theorem gives. With few pairs per coordinate ``T`` is much larger than
    ``chi2_k`` (the MLE overfits; Sur and Candes 2019), so the Wilks level under-covers
    (16% at nominal 90% with 1.5 pairs per coordinate, docs/confidence_sets.md); the bootstrap
    quantile tracks that inflation, and as ``n`` grows ``T`` tends to ``chi2_k`` and the level to Wilks'.

    The inflation depends on the world, which is unknown: a quantile computed at a single
    estimate is only as good as that estimate (at 3 pairs per coordinate the shrunk tuned
    estimate gave 86% coverage at nominal 90%, the over-fitted refit 84%, the truth itself 92%).
    With several worlds (``truth`` of shape ``(n_worlds, n_problems, k)``, e.g. a regularisation
    path) the level is the largest of their quantiles, as in tests maximised over a set of
    plausible values of what is unknown (Berger and Boos 1994): it covers whenever the truth's
    quantile is at most that of some world.

    Parameters
    ----------
    features : ndarray, shape (n, k)
        Coordinates of the pairs.
    offsets : ndarray, shape (n,)
    groups : ndarray of int, shape (n,)
        Problem of each pair.
    n_problems : int
    truth : ndarray, shape (n_problems, k) or (n_worlds, n_problems, k)
        The bootstrap world, or candidate worlds (each draws its labels from ``rng`` in turn).
    start : ndarray of shape (n_problems, k), or None
        Warm start of the refits; ``None``: each world itself (a replicate's minimiser is near
        its world once the pairs inform every coordinate, so Newton needs few steps from there).
    beta, ridge, delta : float
    replicates : int
        Per world.
    rng : numpy.random.Generator
    tol : float, default 1e-8

    Returns
    -------
    ndarray, shape (n_problems,)

    References
    ----------
    Wilks 1938 (the chi-square limit). Efron and Tibshirani, *An Introduction to the Bootstrap*,
    1993, ch. 6 (parametric bootstrap). Beran, *Prepivoting test statistics: a bootstrap view of
    asymptotic refinements*, JASA 1988 (bootstrap calibration of a statistic's critical value).
    Berger and Boos, *P values maximized over a confidence set for the nuisance parameter*, JASA
    1994. Sur and Candes, *A modern maximum-likelihood theory for high-dimensional logistic
    regression*, PNAS 2019 (the inflation of the statistic for ``k / n`` not small, and its
    dependence on the signal strength).
    """
    if truth.ndim == 3:  # candidate worlds: the largest level over them
        return np.max([bootstrap_likelihood_levels(features, offsets, groups, n_problems, world, start, beta, ridge,
                                                   delta, replicates, rng, tol) for world in truth], axis=0)
    if start is None:
        start = truth
    n, k = features.shape
    eta = offsets + beta * np.einsum("jk,jk->j", features, truth[groups])
    probabilities = expit(eta)
    truth_penalty = 0.5 * ridge * np.sum(truth**2, axis=1)
    chunk = max(1, min(replicates, _BOOTSTRAP_CHUNK_ENTRIES // max(n * k, 1)))
    statistics = np.empty((replicates, n_problems))
    for first in range(0, replicates, chunk):
        count = min(chunk, replicates - first)
        labels = (rng.random((count, n)) < probabilities).astype(float)
        expanded = (np.arange(count)[:, None] * n_problems + groups[None, :]).ravel()
        fit = fit_logistic(np.tile(features, (count, 1)), labels.ravel(), groups=expanded,
                           n_problems=count * n_problems, offsets=np.tile(offsets, count), beta=beta, ridge=ridge,
                           initial=np.tile(start, (count, 1)), tol=tol, fisher=False)
        at_truth = np.zeros(count * n_problems)
        np.add.at(at_truth, expanded, bernoulli_losses(np.tile(eta, count), labels.ravel()))
        at_truth = at_truth.reshape(count, n_problems) + truth_penalty
        statistics[first:first + count] = 2.0 * (at_truth - fit.objective.reshape(count, n_problems))
    quantile = np.quantile(np.maximum(statistics, 0.0), 1.0 - delta, axis=0, method="higher")
    return 0.5 * np.maximum(chi2.ppf(1.0 - delta, k), quantile)


def _ellipsoid_parts(matrix: np.ndarray, center: np.ndarray, radius: float) -> dict[str, Any]:
    """Keyword arguments of an :class:`Ellipsoid` whose matrix is factored once (a matrix shared
    by many sets: the users of a pooled fit, the contexts of a contextual one)."""
    matrix = _symmetric(matrix)
    return {"center": center, "matrix": matrix, "radius": radius, "factor": Ellipsoid.checked_factor(matrix)}


def _likelihood_parts(confidence: str, features: np.ndarray, labels: np.ndarray, offsets: np.ndarray,
                     center: np.ndarray, beta: float, ridge: float, delta: float,
                     threshold: float | None = None) -> dict[str, Any]:
    """Keyword arguments (besides ``offset`` and ``basis``) of the likelihood-ratio set of one
    problem: ``"likelihood"`` (Wilks level on the loss with the inference ridge) or ``"finite"``
    (the finite-sample threshold ``c`` on the unpenalised loss ``f0``, as the level
    ``max(c - f0(center), 0)``: a threshold below ``f0(center)`` keeps the centre in the set and
    only enlarges it, so the set still contains ``{f0 <= c}``). ``threshold`` is ``c`` (for
    ``"finite"``) or the level (for ``"likelihood"``, e.g. from :func:`bootstrap_likelihood_levels`)
    when the caller computed it, batched over problems; by default ``c`` is computed here and the
    level is Wilks'."""
    from lr_mdp_env import theory

    labels = _binary_labels(labels, confidence)
    k = center.shape[0]
    common = {"features": features, "labels": labels, "offsets": offsets, "beta": beta, "center": center}
    if confidence == "likelihood":
        return {**common, "ridge": ridge, "level": theory.wilks_level(k, delta) if threshold is None else threshold}
    if threshold is None:
        threshold = finite_sample_likelihood_threshold(features, labels, offsets, beta, delta)
    unpenalised = float(np.sum(bernoulli_losses(offsets + beta * features @ center, labels)))
    return {**common, "ridge": 0.0, "level": max(float(threshold) - unpenalised, 0.0)}


# Up to this many coordinates the per-pair coordinates B^T z_j are formed and fitted directly.
_DENSE_COORDINATES_MAX = 64


class _Coordinates:
    """The coordinates ``B^T z_j`` of pairs, formed on indexing (``coordinates[rows]``, ``(m, k)``).

    The identifiable basis is the complement ``Q[:, m:]`` of the ``m`` unidentified directions in
    their complete QR factor, ``Q = H_1 ... H_m`` (Householder reflectors). When ``B`` is that
    (checked once), ``Z B`` is ``(Z H_1 ... H_m)[:, m:]``: ``O(n d m)`` work, against
    ``O(nnz(Z) k)`` for the sparse-times-dense product (40 nonzeros per pair and ``k = 1999``:
    about 20 times less for one-hot features at ``d = 2000``).
    """

    def __init__(self, differences: Any, basis: np.ndarray, hidden: np.ndarray | None = None) -> None:
        self._differences, self._basis = differences, basis
        self._reflectors = None
        if hidden is not None and scipy.sparse.issparse(differences) and differences.shape[0] > 0:
            # Dense rows and m reflectors, d (m + 1) per pair, against nnz k per pair.
            d, m = hidden.shape
            if d * (m + 1) < differences.nnz / differences.shape[0] * basis.shape[1]:
                self._reflectors = _householder_complement(basis, hidden)

    def __getitem__(self, rows: Any) -> np.ndarray:
        differences = self._differences[rows]
        if self._reflectors is None:
            return np.asarray(differences @ self._basis)
        vectors, scales = self._reflectors
        product = differences.toarray() if scipy.sparse.issparse(differences) else np.array(differences, dtype=float)
        for vector, scale in zip(vectors, scales):  # Z H_1 ... H_m, one reflector at a time
            product -= np.outer(scale * (product @ vector), vector)
        return product[:, vectors.shape[0]:]

    def fisher(self, rows: np.ndarray, offsets: np.ndarray, center: np.ndarray, beta: float, ridge: float
               ) -> np.ndarray:
        """``B^T (beta^2 sum_j sigmoid'(eta_j) z_j z_j^T) B + ridge I`` of the pairs ``rows`` at the
        coordinates ``center``, from the sparse ``z_j``: the ``d x d`` middle is a sparse product
        (a pair's difference has at most ``2 H`` nonzeros for one-hot features), so the dense
        ``(n, k)`` coordinates are never formed; two ``d x d x k`` products remain."""
        differences = self._differences[rows]
        eta = offsets + beta * (differences @ (self._basis @ center))
        weighted = scipy.sparse.diags(beta**2 * expit(eta) * expit(-eta)) @ differences
        middle = (differences.T @ weighted).toarray()
        return _symmetric(self._basis.T @ (middle @ self._basis) + ridge * np.eye(self._basis.shape[1]))


class PooledMLE(RewardEstimator):
    """One reward for everybody: homogeneous RLHF, the standard baseline (docs/algorithms.md, Estimators)."""

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        self.subspace = None
        self._fit_coordinates(data, self._identifiable, ridge, pooled=True)


class IndependentMLE(RewardEstimator):
    """One full-dimensional ridge MLE per user, no sharing (docs/algorithms.md, Estimators)."""

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        self.subspace = None
        self._fit_coordinates(data, self._identifiable, ridge)


class OracleSubspaceMLE(RewardEstimator):
    """Per-user MLE in the true shared subspace ``U*``: the benchmark P-ShareLoRA approaches.

    Parameters
    ----------
    subspace : array_like, shape (d, r)
        Columns spanning ``U*`` (orthonormalised here).
    **kwargs
        As :class:`RewardEstimator`.
    """

    def __init__(self, subspace: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        subspace = as_real_array("subspace", subspace, (2,))
        self._oracle = np.linalg.qr(subspace)[0]

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        if self._oracle.shape[0] != data.n_features:
            raise ValueError(f"subspace has {self._oracle.shape[0]} rows but the MDP has {data.n_features} features")
        self.subspace = self._oracle
        self._fit_coordinates(data, self._oracle, ridge)


class PShareLoRA(RewardEstimator):
    """P-ShareLoRA: shared low-rank subspace, personal coordinates (docs/algorithms.md, Estimators).

    1. Joint rank-``r`` MLE of ``Theta = Theta_0 + U W^T`` over ``U`` (``d x r``) and ``W``
       (``N x r``) on all users' data, from a spectral start
       (:func:`agents.factorized.fit_factored` with one-hot user contexts).
    2. ``U_hat``: top-``r`` left singular vectors of ``U W^T``.
    3. Personal refit: ``w_i`` = ridge MLE with features ``U_hat^T z`` (``r`` coordinates).
    4. Confidence set in ``U_hat``'s span from the ``r``-dimensional inference refit of each user
       (:class:`RewardEstimator`, ``confidence``), e.g. ``{Theta_0[:, i] + U_hat w : ||w - w_0||_{M_i} <= radius}``:
       a set for the projection of the truth onto that span.
    5. With ``subspace_error="bootstrap"`` (default), plus the subspace error: the set of user
       ``i`` is the :class:`~agents.subspace_error.SubspaceErrorSet` ``C_i + {e : e orthogonal
       to U_hat (and to the unidentified directions), ||e|| <= epsilon_i}``, with
       ``epsilon_i = tan(a) max_{theta in C_i} ||U_hat^T (theta - Theta_0[:, i])||``, where
       ``sin(a)`` bounds the sine of the largest principal angle between ``U*`` and ``U_hat``
       at level ``1 - delta / 2`` by a parametric bootstrap of step 1
       (:func:`~agents.subspace_error.sharelora_sine_bound`), and ``C_i`` is built at level
       ``1 - delta / 2``: the truth itself, not only its projection, is in the set with
       probability at least ``1 - delta`` when both hold (union bound). Computed when a set is
       first asked for.
    6. Identification check: ``U_hat`` counts as not identified by the data when the bootstrap
       bound reaches ``max_sine``, or when two joint fits on the two halves of the users (even
       and odd index, independent data) disagree by a sine of at least ``min(1, 2 max_sine)``
       (:func:`~agents.subspace_error.split_half_sine`; then one of them is at least
       ``max_sine`` from the truth). The second check does not rely on the fitted world, which
       near non-identification looks better identified than the truth (bootstrap bounds of
       0.52-0.56 were measured against true sines of 0.92-0.999). There the likelihood fit in
       ``U_hat``'s span no longer targets the projection of the truth, so ``C_i`` misses it.
       Every user's set is then the full-dimensional Wald set of the independent fit with
       the inference ridge ``lambda_0``, at level ``1 - delta / 2``: in an orthonormal basis
       ``S_i`` of the span of the user's pairs it is the ellipsoid
       ``{||a - a_0||_{M_S} <= rho}`` (``M_S = S_i^T F_i S_i + lambda_0 I``, ``F_i`` the Fisher
       matrix, ``rho = sqrt(chi2_k(1 - delta / 2))`` with ``k`` the identifiable dimension),
       plus the ball ``||e|| <= rho / sqrt(lambda_0)`` orthogonal to ``S_i`` (where
       ``M = lambda_0 I`` and the centre is 0): a :class:`~agents.subspace_error.SubspaceErrorSet`
       containing that ellipsoid. It does not use ``U_hat``; where the user's pairs do not reach,
       it is as wide as the inference ridge allows, which is the honest answer when neither the
       user's data nor the shared subspace inform a direction. ``subspace_identified_`` says which
       case holds, and a :class:`~agents.subspace_error.SubspaceNotIdentifiedWarning` is issued.
       The bootstrap stops at the first replicate that decides it (one refit with the defaults);
       the fallback's refit, batched over users, is in ``diagnostics["fallback"]``.

    Parameters
    ----------
    rank : int
        ``r``.
    subspace_error : {"bootstrap", "ignore"}, default "bootstrap"
        ``"ignore"``: the set is ``C_i`` at level ``1 - delta``, which covers only the projection of
        the truth onto ``U_hat``'s span (the truth itself almost never).
    n_bootstrap : int, optional
        Refits of the bootstrap. Default ``max(19, ceil(2 / delta) - 1)``: at least
        ``ceil(2 / delta) - 1`` are needed for a finite ``epsilon`` at level ``1 - delta / 2``.
    max_sine : float in (0, 1], default 0.4
        Bootstrap bound on the sine at and above which the subspace counts as not identified
        (step 6; :data:`~agents.subspace_error.MAX_IDENTIFIED_SINE`). ``1``: fall back only when
        the bound reaches 1.
    **kwargs
        As :class:`RewardEstimator`.

    Attributes (after the first set)
    --------------------------------
    sine_bound_ : float
        The bootstrap bound on the sine (a lower bound on it, ``>= max_sine``, when the bootstrap
        stopped early).
    split_sine_ : float
        :func:`~agents.subspace_error.split_half_sine` (computed only when ``sine_bound_ <
        max_sine``; ``nan`` otherwise, or when a half has fewer users than the rank, in which
        case only the bootstrap decides).
    subspace_identified_ : bool
        ``sine_bound_ < max_sine`` and ``split_sine_ < min(1, 2 max_sine)``: the sets use
        ``U_hat`` (steps 4-5) or fall back (step 6).

    References
    ----------
    Liu, Wang, Li, Shen and Yang, *A Shared Low-Rank Adaptation Approach to Personalized RLHF*,
    arXiv:2503.19201, 2025. Hu et al., *LoRA:
    Low-Rank Adaptation of Large Language Models*, ICLR 2022. Wedin, *Perturbation bounds in
    connection with singular value decomposition*, BIT 1972 (the angle of an estimated subspace
    is small only when the signal's smallest singular value dominates the error). Davison and
    Hinkley, *Bootstrap Methods and their Application*, Cambridge 1997, section 4.2 (the order
    statistic). Wald and the inference ridge: :class:`RewardEstimator`.
    """

    def __init__(self, rank: int, *, subspace_error: str = "bootstrap", n_bootstrap: int | None = None,
                 max_sine: float = MAX_IDENTIFIED_SINE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = check_int("rank", rank, minimum=1)
        self.subspace_error = check_subspace_error(subspace_error)
        self.n_bootstrap = max(19, math.ceil(2 / self.delta) - 1) if n_bootstrap is None else \
            check_int("n_bootstrap", n_bootstrap, minimum=1)
        self.max_sine = check_real("max_sine", max_sine, 0.0, 1.0, strict_minimum=True)

    def _prepare(self, data: ComparisonData, mdp: TabularMDP) -> None:
        if self.rank > min(data.n_features, data.n_users):
            raise ValueError(f"rank={self.rank} exceeds min(d, N) = {min(data.n_features, data.n_users)}")

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        for name in ("sine_bound_", "split_sine_", "subspace_identified_", "_fallback", "_fallback_sets_fit"):  # calibrated again
            self.__dict__.pop(name, None)
        # Every fit starts from the spectral start of its own data (no warm start along the ridge
        # grid): a large ridge collapses the factors to the saddle at zero, a poor start.
        factored = fit_factored(
            data.user_indicator(), data.differences, data.labels, self.rank, offsets=data.offsets,
            beta=self.beta, ridge=ridge, hidden=self._hidden, tol=self._joint_tol,
        )
        self._record("joint", factored)
        self.joint_fit = factored
        q, upper = np.linalg.qr(factored.right)  # U W^T = Q (R W^T): its SVD from an r x N one
        small_left, _, _ = np.linalg.svd(upper @ factored.left.T, full_matrices=False)
        subspace = q @ small_left[:, : self.rank]
        # The joint fit keeps U orthogonal to the unidentified directions (they carry no data and
        # the ridge puts them at zero); remove what rounding leaves of them, so that theta_hat lies
        # in the identifiable span like every other estimator's.
        subspace = self._identifiable @ (self._identifiable.T @ subspace)
        self.subspace = np.linalg.qr(subspace)[0]
        # The joint fit's users, theta_i = U w_i, in the new basis: close to the refit's answer.
        self._fit_coordinates(data, self.subspace, ridge, initial=factored.left @ (factored.right.T @ self.subspace))

    # -- the subspace error (agents.subspace_error): a wrapper around the set in U_hat's span ----------

    @property
    def _set_delta(self) -> float:
        return self.delta if self.subspace_error == "ignore" else self.delta / 2

    def _build_set(self, user: int) -> ConfidenceSet:
        if self.subspace_error == "ignore":
            return self._reduced_set(user)
        self._calibrate_subspace_error()
        if not self.subspace_identified_:
            return self._fallback_set(user)
        inner = self._reduced_set(user)
        offset = self._base[:, user]
        epsilon = epsilon_from_sine(self.sine_bound_, coordinate_bound(inner, offset, self.subspace))
        return SubspaceErrorSet(inner, np.hstack([self.subspace, self._hidden]), epsilon)

    def _calibrate_subspace_error(self) -> None:
        """``sine_bound_`` and ``subspace_identified_`` (class docstring, steps 5-6), once per fit."""
        if "sine_bound_" in self.__dict__:
            return
        bound = sharelora_sine_bound(self, n_bootstrap=self.n_bootstrap, level=1 - self.delta / 2,
                                     seed=subspace_error_seed(self.seed), stop_at=self.max_sine)
        if not np.isfinite(bound):
            raise ValueError(f"n_bootstrap={self.n_bootstrap} refits give no bound on the subspace angle at level "
                             f"1 - delta/2 = {1 - self.delta / 2:g} (raise n_bootstrap to at least "
                             f"{math.ceil(2 / self.delta) - 1})")
        self.sine_bound_ = float(bound)
        self.split_sine_ = split_half_sine(self) if bound < self.max_sine else math.nan
        split_limit = min(1.0, 2 * self.max_sine)
        self.subspace_identified_ = bool(bound < self.max_sine and not self.split_sine_ >= split_limit)
        if not self.subspace_identified_:
            reason = (f"the bootstrap bound on the sine of the subspace angle is at least {bound:.3g} >= max_sine = "
                      f"{self.max_sine:g}" if bound >= self.max_sine else
                      f"the subspaces fitted on the two halves of the users differ by a sine of {self.split_sine_:.3g} "
                      f">= min(1, 2 max_sine) = {split_limit:g}")
            warnings.warn(f"{reason}: U_hat is not identified by the data, and every user's set is the "
                          "full-dimensional Wald set of the independent fit (wide wherever the user's own pairs do "
                          "not reach)", SubspaceNotIdentifiedWarning, stacklevel=4)

    def _sets_fit_in_cache(self) -> bool:
        if self.__dict__.get("subspace_identified_", True):
            return super()._sets_fit_in_cache()
        if "_fallback_sets_fit" not in self.__dict__:
            width = self._fallback_parts()[1]  # the fallback sets hold a (d, m) basis and two (m, m) matrices
            d, m = self._data.n_features, int(np.max(width, initial=0))
            self._fallback_sets_fit = 8 * (d * m + 2 * m * m) * self.theta_hat.shape[0] <= SET_CACHE_BYTES
        return self._fallback_sets_fit

    # -- the fallback when U_hat is not identified (class docstring, step 6) ---------------------------

    def _fallback_parts(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The independent fit with the inference ridge, every user in the orthonormal basis of the
        span of their own pairs (:func:`~agents.subspace_error.pair_span_weights`), batched in one
        :func:`agents.logistic.fit_logistic` solve (the coordinates padded with zeros to the
        widest basis; the ridge keeps the padding at zero): centres ``(N, m_max)``, widths
        ``(N,)``, and each user's weights ``W`` and coordinates ``Z Z^T W`` (``m x m'``). The bases
        ``Z^T W`` themselves (``d x m'`` each) are formed per set."""
        if "_fallback" not in self.__dict__:
            data = self._data
            rows = [self._problem_rows(user) for user in range(data.n_users)]
            # A user's coordinates in the span of their pairs are Z Z^T W: only m x m work per user.
            spans = [pair_span_weights(data.differences[index]) for index in rows]
            weights = [span[0] for span in spans]
            coordinates = [gram @ span_weights for span_weights, gram in spans]
            width = np.array([block.shape[1] for block in coordinates], dtype=np.int64)
            padded = np.zeros((data.n_pairs, int(np.max(width, initial=0))))
            for index, block in zip(rows, coordinates):
                padded[index, : block.shape[1]] = block
            with convergence_warnings_labelled(f"full-dimensional fallback refit with ridge {self.inference_ridge_:g}"):
                fit = fit_logistic(padded, data.labels, groups=data.users, n_problems=data.n_users,
                                   offsets=data.offsets, beta=self.beta, ridge=self.inference_ridge_,
                                   tol=self.tol, fisher=False)
            self._record("fallback", fit)
            self._fallback = (fit.theta, width, weights, coordinates)
        return self._fallback

    def _fallback_set(self, user: int) -> SubspaceErrorSet:
        """The full-dimensional Wald set of user ``user``'s independent fit (class docstring, step 6)."""
        centres, width, weights, coordinates = self._fallback_parts()
        data, offset = self._data, self._base[:, user]
        rows = self._problem_rows(user)
        basis = (np.asarray(data.differences[rows].T @ weights[user], dtype=float) if width[user]
                 else np.zeros((data.n_features, 0)))
        k = self._identifiable.shape[1]
        radius = float(self._wald_radius(k)) if k else 0.0
        if basis.shape[1] == 0:
            inner = Ellipsoid(offset=offset, basis=basis, center=np.zeros(0), matrix=np.zeros((0, 0)), radius=0.0)
        else:
            center = centres[user, : width[user]]
            matrix = _fisher_matrix(coordinates[user], data.offsets[rows], center, self.beta, self.inference_ridge_)
            inner = Ellipsoid(offset=offset, basis=basis, center=center, matrix=matrix, radius=radius)
        return SubspaceErrorSet(inner, np.hstack([basis, self._hidden]), radius / math.sqrt(self.inference_ridge_))
