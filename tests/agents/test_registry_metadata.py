"""agents.registry.is_contextual: the one place that says which agents need contexts."""

from __future__ import annotations

import pytest

import agents
from agents.registry import is_contextual


@pytest.mark.parametrize("name,contextual", [("pooled", False), ("independent", False), ("p-sharelora", False),
                                             ("oracle-subspace", False), ("loco-prs", True), ("full-rank", True)])
def test_built_in_names_and_their_agents_agree(name, contextual):
    assert is_contextual(name) is contextual
    options = {"rank": 1} if name in ("p-sharelora", "loco-prs") else {}
    options = {"subspace": [[1.0], [0.0]]} if name == "oracle-subspace" else options
    agent = agents.make(name, **options)
    assert is_contextual(agent) is contextual
    assert is_contextual(agent.estimator) is contextual


def test_a_registered_name_carries_its_flag_and_overwriting_resets_it():
    name = "contextual-flag-for-tests"
    agents.register(name, lambda: agents.make("loco-prs", rank=1), contextual=True, overwrite=True)
    assert is_contextual(name)
    agents.register(name, lambda: agents.make("pooled"), overwrite=True)
    assert not is_contextual(name)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"unknown agent 'no-such-agent'"):
        is_contextual("no-such-agent")
    with pytest.raises(TypeError, match=r"contextual must be a bool"):
        agents.register("contextual-flag-bad", lambda: None, contextual="yes")
    assert "contextual-flag-bad" not in agents.registered()
    assert not is_contextual(object())
