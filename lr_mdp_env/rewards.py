"""Users' reward parameters: the aggregated low-rank (P-ShareLoRA) and contextual (LoCo-RLHF) models.

Ground truth is kept in immutable arrays so that evaluation can compare estimates with it:
the shared subspace, the singular values, the users' coordinates and the tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import as_generator, as_real_array, check_int, check_real, frozen
from .dynamic_programming import return_moments, uniform_policy
from .mdp import TabularMDP


@dataclass(frozen=True, eq=False)
class LowRankRewards:
    """Aggregated reward matrix ``Theta* = Theta_0 + U* diag(sigma*) W*^T + E_tail`` (docs/model.md, Users).

    User ``i`` has reward ``r_i[h, s, a] = phi[h, s, a] . theta_i`` with ``theta_i`` the
    ``i``-th column of :attr:`theta`.

    Attributes
    ----------
    base : ndarray, shape (d, N)
        ``Theta_0``, the known base reward (zeros by default).
    subspace : ndarray, shape (d, r)
        ``U*``, orthonormal columns: the subspace shared by all users.
    user_factors : ndarray, shape (N, r)
        ``W*``, orthonormal columns: each user's coordinates in the shared subspace.
    singular_values : ndarray, shape (r,)
        ``sigma*_1 >= ... >= sigma*_r > 0``.
    tail : ndarray, shape (d, N)
        ``E_tail``, whose column and row spaces are orthogonal to ``U*`` and ``W*``, so the
        singular values of ``Theta* - Theta_0`` are exactly ``sigma*`` together with
        :attr:`tail_singular_values`.
    tail_singular_values : ndarray
    """

    base: np.ndarray
    subspace: np.ndarray
    user_factors: np.ndarray
    singular_values: np.ndarray
    tail: np.ndarray
    tail_singular_values: np.ndarray

    @property
    def theta(self) -> np.ndarray:
        """``Theta*``, shape ``(d, N)``: column ``i`` is user ``i``'s parameter."""
        return self.base + self.low_rank_part + self.tail

    @property
    def low_rank_part(self) -> np.ndarray:
        """``U* diag(sigma*) W*^T``, shape ``(d, N)``."""
        return (self.subspace * self.singular_values) @ self.user_factors.T

    @property
    def n_features(self) -> int:
        return self.subspace.shape[0]

    @property
    def n_users(self) -> int:
        return self.user_factors.shape[0]

    @property
    def rank(self) -> int:
        return self.subspace.shape[1]

    @property
    def condition_number(self) -> float:
        """``nu = sigma*_1 / sigma*_r``: how diverse the users' preferences are."""
        return float(self.singular_values[0] / self.singular_values[-1])

    @property
    def tail_energy(self) -> float:
        """``||E_tail||_F / ||U* diag(sigma*) W*^T||_F``: distance from exact rank ``r``."""
        return float(np.linalg.norm(self.tail_singular_values) / np.linalg.norm(self.singular_values))

    def reward_table(self, mdp: TabularMDP) -> np.ndarray:
        """Every user's reward ``r_i[h, s, a]``, shape ``(N, H, S, A)``."""
        return mdp.reward(self.theta.T)


@dataclass(frozen=True, eq=False)
class ContextualRewards:
    """Contextual bilinear rewards ``r(x, h, s, a) = x^T Theta_c* phi[h, s, a]`` (docs/model.md, Users).

    ``Theta_c* = U_x diag(sigma*) V*^T`` has rank ``r``. A finite population of users has
    contexts :attr:`contexts` (rows of ``X``), drawn from the collection distribution
    ``N(0, I / d_x)``; the evaluation distribution is ``N(shift * m, I / d_x)`` with ``m`` the unit
    vector :attr:`shift_direction` (context shift). Both are sampled by :meth:`sample_contexts`.

    Attributes
    ----------
    theta_c : ndarray, shape (d_x, d)
    contexts : ndarray, shape (N, d_x)
    context_subspace : ndarray, shape (d_x, r)
        ``U_x``, orthonormal.
    subspace : ndarray, shape (d, r)
        ``V*``, orthonormal: every ``theta(x)`` lies in its span.
    singular_values : ndarray, shape (r,)
    shift : float
    shift_direction : ndarray, shape (d_x,)
    """

    theta_c: np.ndarray
    contexts: np.ndarray
    context_subspace: np.ndarray
    subspace: np.ndarray
    singular_values: np.ndarray
    shift: float
    shift_direction: np.ndarray

    @property
    def theta(self) -> np.ndarray:
        """The aggregated matrix ``Theta_c*^T X^T``, shape ``(d, N)``: rank at most ``r``."""
        return self.theta_c.T @ self.contexts.T

    @property
    def n_features(self) -> int:
        return self.theta_c.shape[1]

    @property
    def context_dim(self) -> int:
        return self.theta_c.shape[0]

    @property
    def n_users(self) -> int:
        return self.contexts.shape[0]

    @property
    def rank(self) -> int:
        return self.subspace.shape[1]

    @property
    def condition_number(self) -> float:
        return float(self.singular_values[0] / self.singular_values[-1])

    def theta_for(self, contexts: Any) -> np.ndarray:
        """``theta(x) = Theta_c*^T x`` for each row ``x`` of ``contexts`` ``(n, d_x)``: ``(n, d)``."""
        contexts = as_real_array("contexts", contexts, (1, 2))
        if contexts.shape[-1] != self.context_dim:
            raise ValueError(
                f"contexts must have {self.context_dim} columns (d_x), got shape {contexts.shape}"
            )
        return contexts @ self.theta_c

    def sample_contexts(self, n: int, *, seed: Any = None, shifted: bool = False) -> np.ndarray:
        """Draw ``n`` contexts from the collection (or, ``shifted=True``, evaluation) distribution."""
        n = check_int("n", n, minimum=0)
        rng = as_generator(seed)
        draws = rng.standard_normal((n, self.context_dim)) / np.sqrt(self.context_dim)
        return draws + self.shift * self.shift_direction if shifted else draws

    def reward_table(self, mdp: TabularMDP) -> np.ndarray:
        """Reward ``r(x_i, h, s, a)`` of every user in :attr:`contexts`, shape ``(N, H, S, A)``."""
        return mdp.reward(self.theta.T)


def _haar_orthonormal(rng: np.random.Generator, n_rows: int, n_columns: int, keep: int | None = None) -> np.ndarray:
    """Haar-distributed ``n_rows x n_columns`` matrix with orthonormal columns, or its first ``keep``.

    The first ``keep`` columns of the Q factor depend only on the first ``keep`` columns of the
    Gaussian draw, so they are computed from those alone; the whole draw is still made, which
    keeps the generator's stream (and every later draw) the same whatever ``keep`` is.
    """
    gaussian = rng.standard_normal((n_rows, n_columns))
    q, r = np.linalg.qr(gaussian if keep is None else gaussian[:, :keep])
    return q * np.sign(np.diag(r))


def geometric_spectrum(rank: int, condition_number: float) -> np.ndarray:
    """The planted singular values before scaling: geometric from 1 down to ``1 / condition_number``.

    ``sigma_k = nu^(-(k - 1) / (r - 1))`` for ``k = 1..r`` (``sigma = (1,)`` when ``r = 1``), so
    ``sigma_1 / sigma_r = nu`` exactly (docs/model.md, Users).

    Parameters
    ----------
    rank : int
        ``r >= 1``.
    condition_number : float
        ``nu >= 1``.

    Returns
    -------
    ndarray, shape (r,)
        Non-increasing, ``sigma_1 = 1``.

    References
    ----------
    Liu, Wang, Li, Shen and Yang, arXiv:2503.19201, 2025 (P-ShareLoRA), whose bounds depend on
    ``nu``.
    """
    rank = check_int("rank", rank, minimum=1)
    condition_number = check_real("condition_number", condition_number, 1.0)
    if rank == 1:
        return np.ones(1)
    return condition_number ** (-np.arange(rank) / (rank - 1))


def tail_profile(n_tail: int) -> np.ndarray:
    """The shape of the tail's singular values before scaling: ``t_k`` proportional to ``1 / k``.

    Parameters
    ----------
    n_tail : int
        Number of tail directions, ``min(d, N) - r``.

    Returns
    -------
    ndarray, shape (n_tail,)
    """
    n_tail = check_int("n_tail", n_tail, minimum=0)
    return 1.0 / np.arange(1, n_tail + 1)


def tail_energy_limit(rank: int, n_tail: int, condition_number: float) -> float:
    """The tail energies :func:`low_rank_rewards` accepts are those strictly below this limit.

    The tail's singular values ``t`` follow :func:`tail_profile` with ``||t|| = tail ||sigma||``,
    so the largest is ``tail ||sigma|| / ||profile||``; it must stay below ``sigma_r`` for the
    planted ``U*`` to remain the top-``r`` singular subspace of ``Theta* - Theta_0``:
    ``tail < sigma_r ||profile|| / ||sigma||`` with ``sigma`` the :func:`geometric_spectrum`.

    Parameters
    ----------
    rank : int
    n_tail : int
        ``min(d, N) - r``; without room for a tail (0) the limit is 0.
    condition_number : float

    Returns
    -------
    float
    """
    spectrum = geometric_spectrum(rank, condition_number)
    profile = tail_profile(n_tail)
    return float(spectrum[-1] * np.linalg.norm(profile) / np.linalg.norm(spectrum))


def _scale_factor(directions: np.ndarray, n_users: int, mdp: TabularMDP | None, scale: float) -> float:
    """Factor ``c`` such that ``c * Theta`` has the typical size ``scale`` (docs/model.md, Users).

    ``Theta = directions @ Q^T`` (``d x N``) is given by its ``d x m`` left factor for some ``N x m``
    ``Q`` with orthonormal columns, which the size does not depend on. Without an MDP, the size is
    the root-mean-square of the users' ``||theta_i||``: ``||directions||_F / sqrt(N)``. With one,
    it is the root-mean-square over users of the standard deviation of ``R_i(tau1) - R_i(tau0)``
    for two independent trajectories of the uniform policy, ``sqrt(mean_i 2 Var(R_i(tau)))``: of
    order one this keeps Bradley-Terry labels informative but not deterministic. With
    ``Sigma_psi`` the covariance of ``psi(tau)``,
    ``mean_i Var(theta_i . psi) = tr(Theta^T Sigma_psi Theta) / N = sum_k Var(directions_k . psi) / N``,
    so the return variances of the ``m`` directions are needed, not those of the ``N`` users.
    """
    if mdp is None:
        size = np.sqrt(np.sum(directions**2) / n_users)
        what = "every user's parameter is zero"
    else:
        if mdp.n_features != directions.shape[0]:
            raise ValueError(
                f"mdp has {mdp.n_features} features but the rewards have n_features={directions.shape[0]}"
            )
        mean, variance = return_moments(mdp, uniform_policy(mdp), mdp.reward(directions.T))
        # The variance is E[R^2] - E[R]^2, accurate only to a few ulps of E[R^2]: a spread below
        # that noise is a constant return, which must not be blown up to the requested scale.
        informative = variance > 1e-10 * (mean**2 + variance)
        size = np.sqrt(2 * np.sum(np.where(informative, variance, 0.0)) / n_users)
        what = "every trajectory of mdp has the same return for every user"
    if not size > 1e-12:
        raise ValueError(f"the rewards cannot be scaled to scale={scale}: {what}")
    return scale / size


def base_matrix(base: Any, n_features: int, n_users: int) -> np.ndarray:
    """The known base reward ``Theta_0`` as a new ``(d, N)`` array (docs/model.md, Users).

    Parameters
    ----------
    base : array_like of shape (d,) or (d, N), or None
        One base shared by every user (``(d,)``), one per user (``(d, N)``), or none (zeros).
    n_features, n_users : int
        ``d`` and ``N``.

    Returns
    -------
    ndarray, shape (d, N)
        A writable copy.

    Raises
    ------
    ValueError
        If ``base`` has another shape or is not finite (the message names ``base``).
    """
    if base is None:
        return np.zeros((n_features, n_users))
    base = as_real_array("base", base, (1, 2))
    if base.ndim == 1:
        base = base[:, None]
    if base.shape[0] != n_features or base.shape[1] not in (1, n_users):
        raise ValueError(
            f"base must have shape ({n_features},) or ({n_features}, {n_users}), got {base.shape}"
        )
    return np.broadcast_to(base, (n_features, n_users)).copy()


def reward_matrix(rewards: Any, n_features: int) -> np.ndarray:
    """The users' reward parameters ``Theta`` of a reward structure, shape ``(d, N)``.

    Column ``i`` is user ``i``'s ``theta_i``, so that ``r_i[h, s, a] = phi[h, s, a] . theta_i``
    (docs/model.md, Users).

    Parameters
    ----------
    rewards : LowRankRewards, ContextualRewards or array_like
        A reward structure (its ``theta``: for :class:`ContextualRewards`, the users of its
        :attr:`~ContextualRewards.contexts`), or ``Theta`` itself, ``(d, N)``, or ``(d,)`` for
        a single user.
    n_features : int
        ``d``, the feature dimension of the MDP the rewards are for.

    Returns
    -------
    ndarray, shape (d, N)

    Raises
    ------
    ValueError
        If ``rewards`` has another number of features, more than two axes or non-finite entries
        (the message names ``rewards``).
    """
    if isinstance(rewards, (LowRankRewards, ContextualRewards)):
        theta = rewards.theta
    else:
        theta = as_real_array("rewards", rewards, (1, 2))
        theta = theta[:, None] if theta.ndim == 1 else theta
    if theta.shape[0] != n_features:
        raise ValueError(
            f"rewards have {theta.shape[0]} features but the MDP has n_features={n_features}: rewards as "
            f"Theta must have shape (d, N) with d = {n_features}, got shape {theta.shape}"
        )
    return theta


def low_rank_rewards(
    n_features: int,
    n_users: int,
    rank: int,
    *,
    condition_number: float = 1.0,
    tail: float = 0.0,
    base: Any = None,
    subspace: Any = None,
    mdp: TabularMDP | None = None,
    scale: float = 1.0,
    seed: Any = None,
) -> LowRankRewards:
    """Draw users whose rewards share a rank-``r`` subspace (P-ShareLoRA's model).

    ``Theta* = Theta_0 + c (U* diag(sigma) W*^T + E_tail)`` where ``U*`` and ``W*`` are Haar
    random with orthonormal columns (or ``U*`` is given), ``sigma`` is geometric from 1 to
    ``1 / condition_number``, and ``E_tail = U_perp diag(t) W_perp^T`` lives in the orthogonal
    complements with ``t_k`` proportional to ``1 / k`` and ``||t|| = tail ||sigma||``. One scalar
    ``c`` sets the reward scale (see ``scale``), so rank, condition number and tail energy are
    exactly as asked.

    Parameters
    ----------
    n_features : int
        ``d``.
    n_users : int
        ``N``.
    rank : int
        ``r``, at most ``min(d, N)``.
    condition_number : float, default 1.0
        ``nu = sigma*_1 / sigma*_r >= 1``: preference diversity.
    tail : float, default 0.0
        Tail energy ``||E_tail||_F / ||U* diag(sigma*) W*^T||_F``. Must keep the largest tail
        singular value below ``sigma*_r``, so that ``U*`` stays the top-``r`` singular subspace:
        below :func:`tail_energy_limit`.
    base : array_like of shape (d,) or (d, N), optional
        ``Theta_0``, added as given (not rescaled). Default zero.
    subspace : array_like of shape (d, r), optional
        Columns spanning ``U*`` (orthonormalised here); default Haar random.
    mdp : TabularMDP, optional
        If given, ``scale`` is the typical return difference between two uniform-policy
        trajectories in this MDP, ``sqrt(mean_i 2 Var_unif(R_i(tau)))``; otherwise it is the
        root-mean-square of the users' ``||theta_i - Theta_0[:, i]||``.
    scale : float, default 1.0
    seed : int, SeedSequence or Generator, optional

    Returns
    -------
    LowRankRewards

    References
    ----------
    Liu, Wang, Li, Shen and Yang, *A Shared Low-Rank Adaptation Approach to Personalized RLHF*,
    arXiv:2503.19201, 2025 (P-ShareLoRA).
    """
    n_features = check_int("n_features", n_features, minimum=1)
    n_users = check_int("n_users", n_users, minimum=1)
    rank = check_int("rank", rank, minimum=1, maximum=min(n_features, n_users))
    condition_number = check_real("condition_number", condition_number, 1.0)
    tail = check_real("tail", tail, 0.0)
    scale = check_real("scale", scale, 0.0, strict_minimum=True)
    base = base_matrix(base, n_features, n_users)
    rng = as_generator(seed)

    n_tail = min(n_features, n_users) - rank
    if tail > 0 and n_tail == 0:
        raise ValueError(
            f"tail={tail} needs room outside the rank: rank={rank} already equals min(d, N)"
        )
    # Without a tail only the first r columns of each basis are used: the rest are drawn (the
    # generator's stream stays the same) but not orthonormalised.
    used = rank + n_tail if tail > 0 else rank
    if subspace is None:
        feature_basis = _haar_orthonormal(rng, n_features, rank + n_tail, keep=used)
    else:
        subspace = as_real_array("subspace", subspace, (2,))
        if subspace.shape != (n_features, rank):
            raise ValueError(f"subspace must have shape ({n_features}, {rank}), got {subspace.shape}")
        q, r_factor = np.linalg.qr(subspace)
        if np.min(np.abs(np.diag(r_factor))) < 1e-10 * max(1.0, np.abs(r_factor).max()):
            raise ValueError(f"subspace columns must be linearly independent (rank {rank})")
        complement = rng.standard_normal((n_features, n_tail))
        if tail > 0:
            complement -= q @ (q.T @ complement)
            feature_basis = np.hstack([q, np.linalg.qr(complement)[0]])
        else:
            feature_basis = q
    user_basis = _haar_orthonormal(rng, n_users, rank + n_tail, keep=used)

    singular_values = geometric_spectrum(rank, condition_number)
    tail_values = np.zeros(0)
    if tail > 0:
        tail_values = tail_profile(n_tail)
        tail_values *= tail * np.linalg.norm(singular_values) / np.linalg.norm(tail_values)
        if tail >= tail_energy_limit(rank, n_tail, condition_number):
            raise ValueError(
                f"tail={tail} is too large: its largest singular value {tail_values[0]:.3g} reaches "
                f"sigma_r = {singular_values[-1]:.3g}, so the planted subspace would no longer be the "
                "top-r singular subspace; lower tail or condition_number"
            )
    subspace_matrix = feature_basis[:, :rank]
    user_factors = user_basis[:, :rank]
    tail_basis = feature_basis[:, rank : rank + tail_values.size]
    tail_matrix = (tail_basis * tail_values) @ user_basis[:, rank : rank + tail_values.size].T
    # Theta - Theta_0 = [U* E_basis] diag(sigma, t) [W* W_tail]^T, the right factor orthonormal.
    factor = _scale_factor(np.hstack([subspace_matrix * singular_values, tail_basis * tail_values]),
                           n_users, mdp, scale)
    return LowRankRewards(
        base=frozen(base),
        subspace=frozen(subspace_matrix),
        user_factors=frozen(user_factors),
        singular_values=frozen(factor * singular_values),
        tail=frozen(factor * tail_matrix if tail > 0 else np.zeros_like(base)),
        tail_singular_values=frozen(factor * tail_values),
    )


def contextual_rewards(
    n_features: int,
    context_dim: int,
    rank: int,
    *,
    n_users: int,
    condition_number: float = 1.0,
    shift: float = 0.0,
    mdp: TabularMDP | None = None,
    scale: float = 1.0,
    seed: Any = None,
) -> ContextualRewards:
    """Draw a rank-``r`` contextual reward model and ``N`` users' contexts (LoCo-RLHF's model).

    ``Theta_c* = c U_x diag(sigma) V*^T`` with Haar ``U_x`` (``d_x x r``) and ``V*`` (``d x r``),
    ``sigma`` geometric from 1 to ``1 / condition_number``. Users' contexts come from the
    collection distribution ``N(0, I / d_x)``; :meth:`ContextualRewards.sample_contexts` with
    ``shifted=True`` draws from ``N(shift * m, I / d_x)``, ``m`` a random unit vector.
    ``c`` is fixed on the ``N`` users exactly as in :func:`low_rank_rewards`.

    Parameters
    ----------
    n_features : int
        ``d``, the feature dimension of ``phi``.
    context_dim : int
        ``d_x``.
    rank : int
        ``r <= min(d_x, d)``.
    n_users : int
        Number of users (contexts) drawn now.
    condition_number : float, default 1.0
    shift : float, default 0.0
        Mean shift of the evaluation contexts, in units of a typical context norm (1).
    mdp : TabularMDP, optional
    scale : float, default 1.0
        As in :func:`low_rank_rewards`, measured on the ``N`` users.
    seed : int, SeedSequence or Generator, optional

    Returns
    -------
    ContextualRewards

    References
    ----------
    Lee, Sun and Liu, *Low-Rank Contextual Reinforcement Learning from Heterogeneous Human
    Feedback*, arXiv:2412.19436.
    """
    n_features = check_int("n_features", n_features, minimum=1)
    context_dim = check_int("context_dim", context_dim, minimum=1)
    rank = check_int("rank", rank, minimum=1, maximum=min(n_features, context_dim))
    n_users = check_int("n_users", n_users, minimum=1)
    condition_number = check_real("condition_number", condition_number, 1.0)
    shift = check_real("shift", shift, 0.0)
    scale = check_real("scale", scale, 0.0, strict_minimum=True)
    rng = as_generator(seed)

    context_subspace = _haar_orthonormal(rng, context_dim, rank)
    feature_subspace = _haar_orthonormal(rng, n_features, rank)
    singular_values = geometric_spectrum(rank, condition_number)
    direction = rng.standard_normal(context_dim)
    direction /= np.linalg.norm(direction)
    contexts = rng.standard_normal((n_users, context_dim)) / np.sqrt(context_dim)
    theta_c = (context_subspace * singular_values) @ feature_subspace.T
    # Theta = Theta_c*^T X^T = (V* diag(sigma) U_x^T X^T): with X U_x diag(sigma) = Q R (thin QR),
    # Theta = (V* R^T) Q^T, Q orthonormal.
    _, user_part = np.linalg.qr(contexts @ (context_subspace * singular_values))
    factor = _scale_factor(feature_subspace @ user_part.T, n_users, mdp, scale)
    return ContextualRewards(
        theta_c=frozen(factor * theta_c),
        contexts=frozen(contexts),
        context_subspace=frozen(context_subspace),
        subspace=frozen(feature_subspace),
        singular_values=frozen(factor * singular_values),
        shift=shift,
        shift_direction=frozen(direction),
    )
