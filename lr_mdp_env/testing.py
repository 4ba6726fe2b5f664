"""Hypothesis strategies for property-testing code built on lr-mdp-env.

The strategies draw small, valid worlds — MDPs, policies, reward tables, low-rank and contextual
reward structures, teachers and whole preference datasets — so that a property of an agent or a
planner can be checked on many of them, and a failure shrinks to a minimal MDP. Transition rows,
initial distributions and policies are normalised small integer weights: they contain exact
zeros, rows with a single 1 and exact ties, the cases where tabular code usually breaks.

This module imports `hypothesis <https://hypothesis.readthedocs.io>`_ at the top; it is a test
dependency, installed with ``pip install 'lr-mdp-env[test]'``. The rest of the package does not
need it.

Examples
--------
The optimal policy is at least as good as any other policy, for every drawn MDP:

>>> from hypothesis import given, settings, strategies as st
>>> from lr_mdp_env import backward_induction, evaluate_policy
>>> from lr_mdp_env.testing import mdps, policies, reward_tables
>>> @settings(max_examples=10, deadline=None)
... @given(st.data())
... def test_optimal_policy_dominates(data):
...     mdp = data.draw(mdps(max_states=3, max_horizon=3))
...     reward = data.draw(reward_tables(mdp))
...     policy = data.draw(policies(mdp))
...     optimal_policy, _ = backward_induction(mdp, reward)
...     assert evaluate_policy(mdp, optimal_policy, reward) >= evaluate_policy(mdp, policy, reward) - 1e-9
>>> test_optimal_policy_dominates()

Whole datasets come with the world that generated them:

>>> from lr_mdp_env.testing import preference_datasets
>>> @settings(max_examples=5, deadline=None)
... @given(preference_datasets(max_users=3, max_pairs_per_user=4))
... def test_dataset_fits_its_world(case):
...     mdp, rewards, dataset = case
...     dataset.check_compatible(mdp)
...     assert dataset.n_users == rewards.n_users
>>> test_dataset_fits_its_world()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ._validation import check_int, check_real
from .collection import collect_preferences, epsilon_optimal_policies
from .dataset import PreferenceDataset
from .mdp import TabularMDP
from .rewards import ContextualRewards, LowRankRewards, contextual_rewards, low_rank_rewards, tail_energy_limit
from .teacher import Teacher

__all__ = [
    "CollectedPreferences",
    "FEATURE_KINDS",
    "contextual_reward_structures",
    "low_rank_reward_structures",
    "mdps",
    "policies",
    "preference_datasets",
    "probability_arrays",
    "reward_tables",
    "seeds",
    "teachers",
]

#: Feature maps :func:`mdps` can draw.
FEATURE_KINDS = ("one_hot", "one_hot_time", "dense")

_MAX_WEIGHT = 4


class CollectedPreferences(NamedTuple):
    """A preference dataset together with the world it was collected in.

    Unpacks as ``mdp, rewards, dataset = case``. The teacher's parameters, the behaviour and the
    seed are in ``dataset.metadata``.

    Attributes
    ----------
    mdp : TabularMDP
    rewards : LowRankRewards or ContextualRewards
        The users' true rewards.
    dataset : PreferenceDataset
    """

    mdp: TabularMDP
    rewards: LowRankRewards | ContextualRewards
    dataset: PreferenceDataset


def _size_range(name: str, low: int, high: int, minimum: int) -> tuple[int, int]:
    low = check_int(f"min_{name}", low, minimum=minimum)
    high = check_int(f"max_{name}", high, minimum=low)
    return low, high


def seeds() -> st.SearchStrategy[int]:
    """Seeds accepted by every ``seed=`` argument of the package: integers in ``[0, 2^32)``."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def _normalised_rows(weights: np.ndarray) -> np.ndarray:
    """Rows of non-negative integer weights as probability vectors.

    An all-zero row becomes a point mass (on the entry given by the row's position), so that the
    minimal example hypothesis shrinks to is a deterministic world rather than an invalid one.
    """
    n_outcomes = weights.shape[-1]
    flat = weights.astype(float).reshape(-1, n_outcomes)
    empty = np.flatnonzero(flat.sum(axis=1) == 0)
    flat[empty, empty % n_outcomes] = 1.0
    return (flat / flat.sum(axis=1, keepdims=True)).reshape(weights.shape)


def probability_arrays(shape: Sequence[int], *, allow_zeros: bool = True) -> st.SearchStrategy[np.ndarray]:
    """Arrays whose rows along the last axis are probability vectors.

    Each row is a vector of integer weights in ``0..4`` divided by its sum, so rows have exact
    zeros, single ones and repeated entries.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array; the last axis indexes outcomes and must be at least 1.
    allow_zeros : bool, default True
        If False every entry is positive.

    Returns
    -------
    SearchStrategy[ndarray]
    """
    shape = tuple(check_int("shape entries", n, minimum=0) for n in shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"shape must have a last axis of length at least 1, got {shape}")
    weights = arrays(np.int64, shape, elements=st.integers(0 if allow_zeros else 1, _MAX_WEIGHT))
    return weights.map(_normalised_rows)


def _feature_kinds(features: str | Sequence[str]) -> tuple[str, ...]:
    kinds = (features,) if isinstance(features, str) else tuple(features)
    unknown = [kind for kind in kinds if kind not in FEATURE_KINDS]
    if not kinds or unknown:
        raise ValueError(f"features must be one or more of {FEATURE_KINDS}, got {features!r}")
    return kinds


_FEATURE_VALUES = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


def mdps(
    *,
    min_states: int = 1,
    max_states: int = 4,
    min_actions: int = 1,
    max_actions: int = 3,
    min_horizon: int = 1,
    max_horizon: int = 4,
    stationary: bool | None = None,
    features: str | Sequence[str] = FEATURE_KINDS,
    max_features: int = 4,
) -> st.SearchStrategy[TabularMDP]:
    """Valid :class:`~lr_mdp_env.TabularMDP` instances of bounded size.

    Parameters
    ----------
    min_states, max_states, min_actions, max_actions, min_horizon, max_horizon : int
        Inclusive bounds on ``S``, ``A`` and ``H`` (all at least 1).
    stationary : bool, optional
        Stationary ``(S, A, S)`` or stage-dependent ``(H, S, A, S)`` transitions; drawn if None.
    features : str or sequence of str, default all of :data:`FEATURE_KINDS`
        The feature map, drawn among those given: ``"one_hot"`` of ``(s, a)``, ``"one_hot_time"``
        of ``(h, s, a)``, or ``"dense"`` features with entries in ``[-1, 1]`` (stationary or
        stage-dependent, drawn) of dimension ``1..max_features``.
    max_features : int, default 4
        Largest ``d`` of dense features.

    Returns
    -------
    SearchStrategy[TabularMDP]
        Transition rows and the initial distribution are normalised integer weights, so they
        include zero entries and deterministic rows.
    """
    min_states, max_states = _size_range("states", min_states, max_states, 1)
    min_actions, max_actions = _size_range("actions", min_actions, max_actions, 1)
    min_horizon, max_horizon = _size_range("horizon", min_horizon, max_horizon, 1)
    max_features = check_int("max_features", max_features, minimum=1)
    kinds = _feature_kinds(features)
    if stationary is not None and not isinstance(stationary, bool):
        raise TypeError(f"stationary must be True, False or None, got {stationary!r}")
    return _mdps(
        (min_states, max_states), (min_actions, max_actions), (min_horizon, max_horizon), stationary, kinds, max_features
    )


@st.composite
def _mdps(draw: Any, states, actions, horizons, stationary, kinds, max_features) -> TabularMDP:
    (min_states, max_states), (min_actions, max_actions), (min_horizon, max_horizon) = states, actions, horizons
    n_states = draw(st.integers(min_states, max_states))
    n_actions = draw(st.integers(min_actions, max_actions))
    horizon = draw(st.integers(min_horizon, max_horizon))
    is_stationary = draw(st.booleans()) if stationary is None else stationary
    leading = (n_states, n_actions) if is_stationary else (horizon, n_states, n_actions)
    transitions = draw(probability_arrays(leading + (n_states,)))
    initial = draw(probability_arrays((n_states,)))
    kind = draw(st.sampled_from(kinds))
    if kind == "dense":
        n_features = draw(st.integers(1, max_features))
        stage_features = draw(st.booleans())
        shape = ((horizon,) if stage_features else ()) + (n_states, n_actions, n_features)
        feature_spec: Any = draw(arrays(np.float64, shape, elements=_FEATURE_VALUES))
    else:
        feature_spec = kind
    return TabularMDP(transitions, initial, horizon=horizon, features=feature_spec)


def policies(
    mdp: TabularMDP, *, deterministic: bool | None = False, n_policies: int | None = None
) -> st.SearchStrategy[np.ndarray]:
    """Markov policies ``pi[h, s, a]`` of ``mdp``.

    Parameters
    ----------
    mdp : TabularMDP
    deterministic : bool or None, default False
        One-hot rows if True; stochastic rows (with zeros and ties) if False; drawn if None.
    n_policies : int, optional
        Draw a batch ``(n_policies, H, S, A)`` instead of one policy ``(H, S, A)``.

    Returns
    -------
    SearchStrategy[ndarray]
    """
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    leading = (mdp.horizon, mdp.n_states)
    if n_policies is not None:
        leading = (check_int("n_policies", n_policies, minimum=1),) + leading
    one_hot = arrays(np.int64, leading, elements=st.integers(0, mdp.n_actions - 1)).map(
        lambda actions: np.eye(mdp.n_actions)[actions]
    )
    stochastic = probability_arrays(leading + (mdp.n_actions,))
    if deterministic is None:
        return st.one_of(one_hot, stochastic)
    return one_hot if deterministic else stochastic


def reward_tables(mdp: TabularMDP, *, n_users: int | None = None, max_abs: float = 1.0) -> st.SearchStrategy[np.ndarray]:
    """Arbitrary reward tables ``r[h, s, a]`` (not necessarily linear in the features).

    Parameters
    ----------
    mdp : TabularMDP
    n_users : int, optional
        Draw a batch ``(n_users, H, S, A)``, user axis first.
    max_abs : float, default 1.0
        Entries lie in ``[-max_abs, max_abs]``.

    Returns
    -------
    SearchStrategy[ndarray]
    """
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    max_abs = check_real("max_abs", max_abs, 0.0, strict_minimum=True)
    shape = (mdp.horizon, mdp.n_states, mdp.n_actions)
    if n_users is not None:
        shape = (check_int("n_users", n_users, minimum=1),) + shape
    elements = st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)
    return arrays(np.float64, shape, elements=elements)


def _dimension_and_mdp(mdp_or_n_features: TabularMDP | int) -> tuple[int, TabularMDP | None]:
    if isinstance(mdp_or_n_features, TabularMDP):
        return mdp_or_n_features.n_features, mdp_or_n_features
    return check_int("n_features", mdp_or_n_features, minimum=1), None


def low_rank_reward_structures(
    mdp_or_n_features: TabularMDP | int,
    *,
    min_users: int = 1,
    max_users: int = 5,
    max_rank: int | None = None,
    max_condition_number: float = 10.0,
    allow_tail: bool = True,
    with_base: bool = False,
    normalize: bool = False,
    scale: float = 1.0,
) -> st.SearchStrategy[LowRankRewards]:
    """:class:`~lr_mdp_env.LowRankRewards` with drawn ``N``, ``r``, condition number and tail.

    Parameters
    ----------
    mdp_or_n_features : TabularMDP or int
        The world (its ``n_features`` is ``d``) or ``d`` itself.
    min_users, max_users : int
        Inclusive bounds on ``N``.
    max_rank : int, optional
        Upper bound on ``r``; always at most ``min(d, N)``.
    max_condition_number : float, default 10.0
        ``nu`` is drawn in ``[1, max_condition_number]``.
    allow_tail : bool, default True
        Draw a tail energy between 0 and 90% of the largest that keeps the planted subspace the
        top-``r`` singular subspace (when ``r < min(d, N)``); otherwise no tail.
    with_base : bool, default False
        Draw a base reward ``Theta_0`` of shape ``(d,)`` with entries in ``[-1, 1]``.
    normalize : bool, default False
        Pass the MDP to :func:`~lr_mdp_env.low_rank_rewards` so that ``scale`` is the typical
        uniform-policy return difference. Draws where no two trajectories of the MDP differ in
        return are rejected, so combine with MDPs that have choices (``min_actions=2``).
    scale : float, default 1.0

    Returns
    -------
    SearchStrategy[LowRankRewards]
    """
    n_features, mdp = _dimension_and_mdp(mdp_or_n_features)
    min_users, max_users = _size_range("users", min_users, max_users, 1)
    if max_rank is not None:
        max_rank = check_int("max_rank", max_rank, minimum=1)
    max_condition_number = check_real("max_condition_number", max_condition_number, 1.0)
    if normalize and mdp is None:
        raise ValueError("normalize=True needs a TabularMDP as mdp_or_n_features")
    scale = check_real("scale", scale, 0.0, strict_minimum=True)
    return _low_rank_reward_structures(
        n_features, mdp if normalize else None, (min_users, max_users), max_rank, max_condition_number,
        allow_tail, with_base, scale,
    )


@st.composite
def _low_rank_reward_structures(
    draw: Any, n_features, mdp, users, max_rank, max_condition_number, allow_tail, with_base, scale
) -> LowRankRewards:
    min_users, max_users = users
    n_users = draw(st.integers(min_users, max_users))
    rank_limit = min(n_features, n_users) if max_rank is None else min(n_features, n_users, max_rank)
    rank = draw(st.integers(1, rank_limit))
    condition_number = draw(st.floats(1.0, max_condition_number))
    tail = 0.0
    n_tail = min(n_features, n_users) - rank
    if allow_tail and n_tail > 0:
        largest = tail_energy_limit(rank, n_tail, condition_number)
        tail = draw(st.one_of(st.just(0.0), st.floats(0.0, 0.9 * largest)))
    base = draw(arrays(np.float64, (n_features,), elements=_FEATURE_VALUES)) if with_base else None
    seed = draw(seeds())
    try:
        return low_rank_rewards(
            n_features, n_users, rank, condition_number=condition_number, tail=tail, base=base,
            mdp=mdp, scale=scale, seed=seed,
        )
    except ValueError:
        if mdp is None:
            raise
        assume(False)  # every trajectory has the same return: no scale to normalise
        raise  # unreachable: assume(False) always raises


def contextual_reward_structures(
    mdp_or_n_features: TabularMDP | int,
    *,
    min_users: int = 1,
    max_users: int = 5,
    max_context_dim: int = 4,
    max_rank: int | None = None,
    max_condition_number: float = 10.0,
    max_shift: float = 2.0,
    normalize: bool = False,
    scale: float = 1.0,
) -> st.SearchStrategy[ContextualRewards]:
    """:class:`~lr_mdp_env.ContextualRewards` with drawn ``d_x``, ``N``, ``r``, ``nu`` and shift.

    Parameters
    ----------
    mdp_or_n_features : TabularMDP or int
    min_users, max_users : int
    max_context_dim : int, default 4
        ``d_x`` is drawn in ``1..max_context_dim``.
    max_rank : int, optional
        Upper bound on ``r``; always at most ``min(d, d_x)``.
    max_condition_number : float, default 10.0
    max_shift : float, default 2.0
        The evaluation context shift is drawn in ``[0, max_shift]``.
    normalize, scale
        As in :func:`low_rank_reward_structures`.

    Returns
    -------
    SearchStrategy[ContextualRewards]
    """
    n_features, mdp = _dimension_and_mdp(mdp_or_n_features)
    min_users, max_users = _size_range("users", min_users, max_users, 1)
    max_context_dim = check_int("max_context_dim", max_context_dim, minimum=1)
    if max_rank is not None:
        max_rank = check_int("max_rank", max_rank, minimum=1)
    max_condition_number = check_real("max_condition_number", max_condition_number, 1.0)
    max_shift = check_real("max_shift", max_shift, 0.0)
    if normalize and mdp is None:
        raise ValueError("normalize=True needs a TabularMDP as mdp_or_n_features")
    scale = check_real("scale", scale, 0.0, strict_minimum=True)
    return _contextual_reward_structures(
        n_features, mdp if normalize else None, (min_users, max_users), max_context_dim, max_rank,
        max_condition_number, max_shift, scale,
    )


@st.composite
def _contextual_reward_structures(
    draw: Any, n_features, mdp, users, max_context_dim, max_rank, max_condition_number, max_shift, scale
) -> ContextualRewards:
    min_users, max_users = users
    context_dim = draw(st.integers(1, max_context_dim))
    n_users = draw(st.integers(min_users, max_users))
    rank_limit = min(n_features, context_dim) if max_rank is None else min(n_features, context_dim, max_rank)
    rank = draw(st.integers(1, rank_limit))
    condition_number = draw(st.floats(1.0, max_condition_number))
    shift = draw(st.floats(0.0, max_shift))
    seed = draw(seeds())
    try:
        return contextual_rewards(
            n_features, context_dim, rank, n_users=n_users, condition_number=condition_number,
            shift=shift, mdp=mdp, scale=scale, seed=seed,
        )
    except ValueError:
        if mdp is None:
            raise
        assume(False)
        raise


def teachers(*, allow_infinite_beta: bool = True, noise: bool = True) -> st.SearchStrategy[Teacher]:
    """Simulated :class:`~lr_mdp_env.Teacher` instances.

    Parameters
    ----------
    allow_infinite_beta : bool, default True
        Also draw the deterministic teacher ``beta = inf``.
    noise : bool, default True
        Draw the B-Pref noise parameters (mistake in ``[0, 0.5]``, myopia in ``[0.5, 1]``, skip
        and equal thresholds in ``[0, 1]``, each often exactly at its neutral value); if False
        the teacher is pure Bradley-Terry-Luce.

    Returns
    -------
    SearchStrategy[Teacher]
    """
    finite_beta = st.floats(0.1, 10.0)
    beta = st.one_of(finite_beta, st.just(float("inf"))) if allow_infinite_beta else finite_beta
    if not noise:
        return st.builds(Teacher, beta=beta)

    def neutral_or(value: float, low: float, high: float) -> st.SearchStrategy[float]:
        return st.one_of(st.just(value), st.floats(low, high))

    return st.builds(
        Teacher,
        beta=beta,
        mistake=neutral_or(0.0, 0.0, 0.5),
        myopia=neutral_or(1.0, 0.5, 1.0),
        skip=neutral_or(0.0, 0.0, 1.0),
        equal=neutral_or(0.0, 0.0, 1.0),
    )


def preference_datasets(
    mdp: TabularMDP | st.SearchStrategy[TabularMDP] | None = None,
    *,
    max_users: int = 4,
    max_pairs_per_user: int = 5,
    teacher: Teacher | st.SearchStrategy[Teacher] | None = None,
    contextual: bool | None = False,
) -> st.SearchStrategy[CollectedPreferences]:
    """Preference datasets collected by :func:`~lr_mdp_env.collect_preferences` in a drawn world.

    Draws the MDP (unless given), the users' rewards, the teacher, the behaviour (uniform,
    epsilon-optimal with a drawn epsilon, or two drawn policies ``(mu0, mu1)``), each user's
    number of pairs in ``0..max_pairs_per_user`` and the seed.

    Parameters
    ----------
    mdp : TabularMDP or SearchStrategy[TabularMDP], optional
        Default :func:`mdps` with its default bounds.
    max_users : int, default 4
    max_pairs_per_user : int, default 5
    teacher : Teacher or SearchStrategy[Teacher], optional
        Default :func:`teachers` (noise included, so pairs may be skipped or declared equal and
        a dataset may be empty).
    contextual : bool or None, default False
        Contextual rewards (the dataset then has contexts); drawn if None.

    Returns
    -------
    SearchStrategy[CollectedPreferences]
        Unpacks as ``mdp, rewards, dataset``.
    """
    max_users = check_int("max_users", max_users, minimum=1)
    max_pairs_per_user = check_int("max_pairs_per_user", max_pairs_per_user, minimum=0)
    if mdp is None:
        mdp = mdps()
    if not isinstance(mdp, (TabularMDP, st.SearchStrategy)):
        raise TypeError(f"mdp must be a TabularMDP or a strategy of them, got {type(mdp).__name__}")
    if teacher is None:
        teacher = teachers()
    if not isinstance(teacher, (Teacher, st.SearchStrategy)):
        raise TypeError(f"teacher must be a Teacher or a strategy of them, got {type(teacher).__name__}")
    if contextual is not None and not isinstance(contextual, bool):
        raise TypeError(f"contextual must be True, False or None, got {contextual!r}")
    return _preference_datasets(mdp, max_users, max_pairs_per_user, teacher, contextual)


@st.composite
def _preference_datasets(draw: Any, mdp, max_users, max_pairs_per_user, teacher, contextual) -> CollectedPreferences:
    world = draw(mdp) if isinstance(mdp, st.SearchStrategy) else mdp
    is_contextual = draw(st.booleans()) if contextual is None else contextual
    if is_contextual:
        rewards: Any = draw(contextual_reward_structures(world, max_users=max_users))
    else:
        rewards = draw(low_rank_reward_structures(world, max_users=max_users))
    chosen_teacher = draw(teacher) if isinstance(teacher, st.SearchStrategy) else teacher
    counts = draw(arrays(np.int64, (rewards.n_users,), elements=st.integers(0, max_pairs_per_user)))
    behaviour_kind = draw(st.sampled_from(("uniform", "epsilon_optimal", "pair")))
    if behaviour_kind == "uniform":
        behavior: Any = None
    elif behaviour_kind == "epsilon_optimal":
        behavior = epsilon_optimal_policies(world, rewards, draw(st.floats(0.0, 1.0)))
    else:
        behavior = (draw(policies(world, deterministic=None)), draw(policies(world, deterministic=None)))
    dataset = collect_preferences(
        world, rewards, counts, behavior=behavior, teacher=chosen_teacher, seed=draw(seeds())
    )
    return CollectedPreferences(world, rewards, dataset)
