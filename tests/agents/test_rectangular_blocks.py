"""Rectangular planning in blocks of users: the same solution as one set at a time.

The batched planner splits the users into blocks (so that only the returned policy is ever
``(N, H, S, A)``); each set's solution must not depend on the block it falls in, so every block
size is compared with the single-set calls, which go through no batching at all.
"""

from __future__ import annotations

import numpy as np
import pytest

import lr_mdp_env
from agents import Ellipsoid, planning


def _sets(n_features: int, count: int, seed: int) -> list[Ellipsoid]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n_features, 3))  # an estimator's sets usually share their basis
    sets = []
    for index in range(count):
        basis = shared if index % 2 else rng.normal(size=(n_features, 3))
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        sets.append(Ellipsoid(offset=np.zeros(n_features), basis=basis, center=rng.normal(size=3),
                              matrix=(q * np.exp(rng.uniform(-1, 1, size=3))) @ q.T, radius=0.5))
    return sets


@pytest.mark.parametrize("stationary", [True, False])
@pytest.mark.parametrize("users_per_block", [1, 3, 100])
def test_blocks_of_users_give_each_sets_own_solution(monkeypatch, stationary: bool, users_per_block: int) -> None:
    mdp = lr_mdp_env.random_mdp(5, 3, 4, stationary=stationary, features="dense", n_features=6, seed=2)
    sets = _sets(mdp.n_features, 7, seed=4)
    rng = np.random.default_rng(5)
    reference_policy = rng.dirichlet(np.ones(mdp.n_actions), size=(mdp.horizon, mdp.n_states))
    reference = lr_mdp_env.expected_features(mdp, reference_policy)
    block_bytes = users_per_block * 8 * mdp.horizon * mdp.n_states * mdp.n_actions
    monkeypatch.setattr(planning, "_RECTANGULAR_BLOCK_BYTES", block_bytes)
    assert planning._rectangular_block_size(mdp) == users_per_block
    batch = planning.rectangular(mdp, sets, reference, reference_policy=reference_policy)
    np.testing.assert_array_equal(batch.bonus, planning.rectangular_bonus(mdp, sets))
    for user, item in enumerate(sets):
        alone = planning.rectangular(mdp, item, reference, reference_policy=reference_policy)
        np.testing.assert_array_equal(batch.policy[user], alone.policy)
        np.testing.assert_allclose(batch.bonus[user], alone.bonus, rtol=1e-12, atol=1e-14)
        assert batch.value[user] == pytest.approx(alone.value, rel=1e-12, abs=1e-14)
        assert batch.safeguarded[user] == alone.safeguarded
