"""Reward estimators for users identified by index: pooled, independent, oracle subspace, P-ShareLoRA.

Every estimator ends with the same step: for each user ``i`` a ridge logistic MLE in the
coordinates ``w`` of a basis ``B_i`` (``theta_i = Theta_0[:, i] + B_i w``), solved for all users at
once by :func:`agents.logistic.fit_logistic`, and an :class:`~agents.confidence.Ellipsoid` around it.
They differ in the basis and in the pairs each user's problem sees:

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

from typing import Any

import numpy as np
import scipy.sparse
from scipy.special import expit

from lr_mdp_env import FeaturePreferenceDataset, PreferenceDataset, TabularMDP
from lr_mdp_env._progress import progress_bar
from lr_mdp_env._validation import as_generator, as_real_array, check_int, check_real
from lr_mdp_env.identifiability import identifiable_basis, unidentified_directions

from .confidence import Ellipsoid, theory_radius, wald_radius
from .data import ComparisonData, base_matrix, comparison_data
from .exceptions import not_fitted
from .factorized import FactoredFit, fit_factored
from .logistic import LogisticFit, fit_logistic
from .tuning import DEFAULT_RIDGE_GRID, convergence_warnings_labelled, select_ridge

RADII = ("wald", "theory")


class RewardEstimator:
    """Common machinery: ridge selection, per-user coordinate fits and confidence sets.

    Parameters
    ----------
    ridge : float, optional
        ``lambda``. Default: chosen from ``ridge_grid`` by held-out preference log-likelihood on a
        seeded 80/20 split of each user's pairs (:func:`agents.tuning.select_ridge`), the same
        rule for every estimator so comparisons are against tuned baselines.
    ridge_grid : sequence of float
    beta : float, default 1.0
        Rationality the model assumes.
    radius : {"wald", "theory"}, default "wald"
        See :func:`agents.confidence.wald_radius` and :func:`agents.confidence.theory_radius`.
    delta : float, default 0.1
        Confidence sets are ``1 - delta`` sets.
    norm_bound : float, optional
        ``B >= ||w*||`` for the theory radius; default twice the largest estimated ``||w_i||``
        (a data-driven guess: the finite-sample guarantee then holds only if it is an upper bound).
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
    subspace : ndarray of shape (d, r), or None
    ridge_ : float
        The ridge used.
    ridge_scores_ : dict
        Held-out mean log-likelihood of each candidate ridge fitted (the scan from the largest
        ridge down stops at the first score below the best: :func:`agents.tuning.select_ridge`;
        empty with a fixed ridge).
    diagnostics : dict
        Per fit with the ridge used (``"joint"``, ``"coordinates"``): ``relative_gradient_norm``,
        ``iterations`` (Newton steps), ``converged``, and for the rank-``r`` joint fits
        ``quasi_newton_steps`` (the L-BFGS steps before the Newton steps). With a selected ridge,
        ``"ridge_selection"`` holds the same for every candidate ``lambda`` (and its
        ``held_out_log_likelihood``); :class:`~agents.ConvergenceWarning` s name the candidate
        or the final fit they come from.
    """

    def __init__(
        self,
        *,
        ridge: float | None = None,
        ridge_grid: Any = DEFAULT_RIDGE_GRID,
        beta: float = 1.0,
        radius: str = "wald",
        delta: float = 0.1,
        norm_bound: float | None = None,
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
        if radius not in RADII:
            raise ValueError(f"radius must be one of {RADII}, got {radius!r}")
        self.radius = radius
        self.delta = check_real("delta", delta, 0.0, 1.0, strict_minimum=True)
        if delta >= 1:
            raise ValueError(f"delta must be below 1, got {delta}")
        self.norm_bound = None if norm_bound is None else check_real("norm_bound", norm_bound, 0.0, strict_minimum=True)
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
        self._base = np.zeros((d, data.n_users)) if self.base is None else np.array(base_matrix(self.base, d, data.n_users))
        self._prepare(data, mdp)
        self.diagnostics: dict[str, dict] = {}
        n_fits = 1 if self.ridge is not None else len(self.ridge_grid) + 1
        with progress_bar(n_fits, f"fitting {type(self).__name__}", self.progress, unit="fit") as bar:
            if self.ridge is None:
                self.ridge_, self.ridge_scores_ = select_ridge(self, data, self.ridge_grid, seed=self.seed,
                                                               progress=bar)
            else:
                self.ridge_, self.ridge_scores_ = self.ridge, {}
            chosen = "fixed" if self.ridge is not None else "selected"
            bar.set_postfix_str(f"final fit, lambda={self.ridge_:g}", refresh=False)
            with convergence_warnings_labelled(f"fit with the {chosen} ridge lambda={self.ridge_:g}"):
                self._fit(data, self.ridge_)
            bar.update(bar.total - bar.n)
        self._data = data
        self._sets: dict[int, Ellipsoid] = {}
        self._set_matrices: dict[int, tuple[np.ndarray, float, np.ndarray]] = {}  # (M, radius, factor)
        self._wald_radii: dict[int, float] = {}
        return self

    def _prepare(self, data: ComparisonData, mdp: TabularMDP) -> None:
        """Hook for work that does not depend on the ridge (run once before ridge selection)."""

    def _fit(self, data: ComparisonData, ridge: float) -> None:
        """Fit with a given ridge: set ``theta_hat``, ``subspace`` and the per-user problems."""
        raise NotImplementedError

    def _fit_coordinates(self, data: ComparisonData, bases: np.ndarray, ridge: float, pooled: bool = False,
                         initial: np.ndarray | None = None) -> None:
        """Ridge MLE of each user's coordinates in a shared basis ``(d, k)`` (warm-started from
        ``initial`` when given); sets ``theta_hat``.

        A full-dimensional basis (the identifiable directions) with sparse feature differences is
        fitted in feature space, ``theta = B w``, from the sparse ``z_j`` themselves: the loss sees
        only ``B B^T theta`` and the ridge keeps the rest at zero, so it is the same minimiser with
        the same gradient norm, without the dense ``n x k`` coordinates ``B^T z_j``; they are
        formed per problem when a confidence set needs them."""
        groups = np.zeros(data.n_pairs, dtype=np.int64) if pooled else data.users
        n_problems = 1 if pooled else data.n_users
        in_feature_space = scipy.sparse.issparse(data.differences) and bases.shape[1] > _DENSE_COORDINATES_MAX
        if in_feature_space:
            features, coordinates = data.differences, _Coordinates(data.differences, bases)
            initial = None if initial is None else initial @ bases.T
        else:
            features = coordinates = np.asarray(data.differences @ bases)
        fit = fit_logistic(
            features, data.labels, groups=groups, n_problems=n_problems, offsets=data.offsets,
            beta=self.beta, ridge=ridge, initial=initial, tol=self.tol, fisher=bases.shape[1] <= 64,
        )
        self._record("coordinates", fit)
        if in_feature_space:  # theta is the answer; remove what rounding leaves along unseen directions
            theta = fit.theta - (fit.theta @ self._hidden) @ self._hidden.T
            solution = theta @ bases
        else:
            solution = fit.theta
            theta = solution @ bases.T
        repeat = (lambda rows: np.repeat(rows, data.n_users, axis=0)) if pooled else (lambda rows: rows)
        self._basis, self._centers, self._pooled = bases, repeat(solution), pooled
        self._coordinate_features, self._groups = coordinates, groups
        self._fisher = fit.fisher
        self.theta_hat = self._base.T + repeat(theta)

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

    def confidence_set(self, user: int) -> Ellipsoid:
        """User ``user``'s ``1 - delta`` set ``{Theta_0[:, i] + B w : ||w - w_hat_i||_{M_i} <= radius_i}``."""
        user = check_int("user", user, minimum=0, maximum=self.theta_hat.shape[0] - 1)
        if user not in self._sets:
            self._sets[user] = self._build_set(user)
        return self._sets[user]

    def _build_set(self, user: int) -> Ellipsoid:
        problem = 0 if self._pooled else user
        if problem not in self._set_matrices:
            matrix, radius = self._matrix_and_radius(problem)
            # Factored once per problem: the users of a pooled fit share one matrix.
            self._set_matrices[problem] = matrix, radius, Ellipsoid.checked_factor(matrix)
        matrix, radius, factor = self._set_matrices[problem]
        return Ellipsoid(offset=self._base[:, user], basis=self._basis, center=self._centers[user],
                         matrix=matrix, radius=radius, factor=factor)

    def _matrix_and_radius(self, problem: int) -> tuple[np.ndarray, float]:
        """``(M, radius)`` of one coordinate problem (shared by all users when pooled)."""
        center = self._centers[0 if self._pooled else problem]
        k = center.shape[0]
        ridge = self.ridge_
        if k == 0:  # nothing identifiable: the set is the single point offset
            return np.zeros((0, 0)), 0.0
        if self.radius == "wald" and self._fisher is not None:
            return self._symmetric(self._fisher[problem]), self._wald_radius(k)
        rows = np.flatnonzero(self._groups == problem)
        features = self._coordinate_features[rows]
        if self.radius == "wald":
            eta = self._data.offsets[rows] + self.beta * features @ center
            slope = expit(eta) * expit(-eta)
            matrix = self.beta**2 * (features.T * slope) @ features + ridge * np.eye(k)
            radius = self._wald_radius(k)
        else:
            matrix = self.beta**2 * features.T @ features + ridge * np.eye(k)
            feature_bound = float(self.beta * np.max(np.linalg.norm(features, axis=1), initial=0.0))
            norm_bound = self.norm_bound if self.norm_bound is not None else \
                2.0 * float(np.max(np.linalg.norm(self._centers, axis=1), initial=0.0)) or 1.0
            radius = theory_radius(matrix, ridge, self.delta, feature_bound, norm_bound)
        return self._symmetric(matrix), radius

    @staticmethod
    def _symmetric(matrix: np.ndarray) -> np.ndarray:
        return 0.5 * (matrix + matrix.T)

    def _wald_radius(self, k: int) -> float:
        """:func:`wald_radius` of ``k`` coordinates, computed once (every user's set shares it)."""
        if k not in self._wald_radii:
            self._wald_radii[k] = wald_radius(k, self.delta)
        return self._wald_radii[k]


# Up to this many coordinates the per-pair coordinates B^T z_j are formed and fitted directly.
_DENSE_COORDINATES_MAX = 64


class _Coordinates:
    """The coordinates ``B^T z_j`` of pairs, formed on indexing (``coordinates[rows]``, ``(m, k)``)."""

    def __init__(self, differences: Any, basis: np.ndarray) -> None:
        self._differences, self._basis = differences, basis

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.asarray(self._differences[rows] @ self._basis)


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
    3. Personal refit: ``w_i`` = ridge MLE with features ``U_hat^T z`` and its Fisher matrix ``M_i``.
    4. Confidence set ``C_i = {Theta_0[:, i] + U_hat w : ||w - w_hat_i||_{M_i} <= radius_i}``.

    Parameters
    ----------
    rank : int
        ``r``.
    **kwargs
        As :class:`RewardEstimator`.

    References
    ----------
    Liu, Wang, Li, Shen and Yang, *A Shared Low-Rank Adaptation Approach to Personalized RLHF*,
    arXiv:2503.19201, 2025. Hu et al., *LoRA:
    Low-Rank Adaptation of Large Language Models*, ICLR 2022.
    """

    def __init__(self, rank: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = check_int("rank", rank, minimum=1)

    def _prepare(self, data: ComparisonData, mdp: TabularMDP) -> None:
        if self.rank > min(data.n_features, data.n_users):
            raise ValueError(f"rank={self.rank} exceeds min(d, N) = {min(data.n_features, data.n_users)}")

    def _fit(self, data: ComparisonData, ridge: float) -> None:
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
