"""Using an estimator or an agent before ``fit`` says so (as scikit-learn's ``NotFittedError``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import agents
from agents import FullRankContextual, IndependentMLE, LoCoPRS, NotFittedError, OracleSubspaceMLE, PooledMLE, PShareLoRA
from lr_mdp_env import collect_preferences, low_rank_rewards, random_mdp

ESTIMATORS = {
    "pooled": lambda: PooledMLE(),
    "independent": lambda: IndependentMLE(),
    "oracle-subspace": lambda: OracleSubspaceMLE(np.eye(6)[:, :2]),
    "p-sharelora": lambda: PShareLoRA(2),
    "loco-prs": lambda: LoCoPRS(1),
    "full-rank": lambda: FullRankContextual(),
}
CALLS = {
    "theta_hat": lambda fitted: fitted.theta_hat,
    "subspace": lambda fitted: fitted.subspace,
    "confidence_set": lambda fitted: fitted.confidence_set(0),
    "diagnostics": lambda fitted: fitted.diagnostics,
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimators_used_before_fit_say_call_fit_first(name, call):
    estimator = ESTIMATORS[name]()
    with pytest.raises(NotFittedError, match=r"is not fitted yet: call fit\(dataset, mdp\) before using"):
        CALLS[call](estimator)
    assert not hasattr(estimator, "theta_hat")  # an AttributeError too, so hasattr is False
    assert isinstance(NotFittedError("x"), ValueError)


@pytest.mark.parametrize("name", ["pooled", "p-sharelora", "loco-prs"])
def test_agents_used_before_fit_say_call_fit_first(name):
    agent = agents.make(name, rank=1) if name != "pooled" else agents.make(name)
    for use, attribute in ((lambda: agent.policy(0), "policy"), (lambda: agent.confidence_set(0), "confidence_set"),
                           (lambda: agent.theta_hat, "theta_hat"), (lambda: agent.reference_features,
                                                                    "reference_features")):
        with pytest.raises(NotFittedError, match=rf"PessimisticAgent is not fitted yet: .* before using {attribute}$"):
            use()
    copied = copy.deepcopy(agent)  # copies and pickles of unfitted agents still work
    assert copied.pessimism == agent.pessimism


def test_fitted_objects_report_missing_attributes_as_usual():
    mdp = random_mdp(3, 2, 2, seed=0)
    dataset = collect_preferences(mdp, low_rank_rewards(mdp.n_features, 2, 1, mdp=mdp, seed=1), 10, seed=2)
    agent = agents.make("independent", pessimism="none", ridge=1.0).fit(dataset, mdp)
    assert agent.policy(0).shape == (2, 3, 2) and agent.theta_hat.shape == (2, 6)
    for owner in (agent, agent.estimator):
        with pytest.raises(AttributeError, match=r"has no attribute 'theta_hatt'") as caught:
            owner.theta_hatt  # noqa: B018 - a typo on a fitted object is not "not fitted"
        assert not isinstance(caught.value, NotFittedError)
