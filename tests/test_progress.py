"""Progress bars: drawn on a terminal only, never into captured output, silenced by progress=False."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import agents
import lr_mdp_env
from lr_mdp_env import _progress
from lr_mdp_env._progress import progress_bar, terminal_stream


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal (what tqdm writes to it stays readable)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """A function replacing standard error by a fake terminal, bars drawn at once (no delay).

    Called in the test body: pytest's own capture re-installs its ``sys.stderr`` between a
    fixture's setup and the test."""
    def use() -> FakeTerminal:
        stream = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setattr(_progress, "DELAY_SECONDS", 0.0)
        return stream

    return use


@pytest.fixture(scope="module")
def small_problem():
    mdp, rewards = lr_mdp_env.envs.random_low_rank_world(n_states=6, n_actions=3, horizon=4, n_users=8, rank=2,
                                                         model_seed=0)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 20, seed=1)
    return mdp, rewards, dataset


def test_the_bar_is_drawn_on_a_terminal(terminal):
    terminal = terminal()
    with progress_bar(3, "working") as bar:
        for _ in range(3):
            bar.update()
    text = terminal.getvalue()
    # Redraws are rate-limited (tqdm's mininterval): the opening draw shows the total.
    assert "working" in text and "0/3" in text


def test_no_bar_when_standard_error_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()  # isatty() is False: a pipe, a log file, a test runner's capture
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(_progress, "DELAY_SECONDS", 0.0)
    with progress_bar(2, "working") as bar:
        bar.update(2)
    assert stream.getvalue() == ""


def test_progress_false_is_silent_on_a_terminal(terminal):
    terminal = terminal()
    with progress_bar(2, "working", False) as bar:
        bar.update(2)
    assert terminal.getvalue() == ""


def test_the_delay_keeps_quick_calls_silent(monkeypatch):
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(_progress, "DELAY_SECONDS", 60.0)  # the call ends long before
    with progress_bar(2, "working") as bar:
        bar.update(2)
    assert stream.getvalue() == ""


def test_a_given_stream_is_used_only_if_it_is_a_terminal():
    terminal, plain = FakeTerminal(), io.StringIO()
    assert terminal_stream(terminal) is terminal
    assert terminal_stream(plain) is None
    assert terminal_stream(False) is None
    with pytest.raises(TypeError, match="progress"):
        terminal_stream(3)


def test_fits_and_evaluate_draw_on_a_terminal(terminal, small_problem):
    mdp, rewards, dataset = small_problem
    terminal = terminal()
    agent = agents.make("p-sharelora", rank=2, pessimism="rectangular").fit(dataset, mdp)
    agents.evaluate(agent, mdp, rewards)
    text = terminal.getvalue()
    # The fit's bar counts the five ridge candidates and the final fit; evaluate's its stages.
    assert "fitting PShareLoRA" in text and "0/6" in text
    assert "evaluate" in text and "0/4" in text


def test_fits_and_evaluate_are_silent_with_progress_false(terminal, small_problem):
    mdp, rewards, dataset = small_problem
    terminal = terminal()
    agent = agents.make("p-sharelora", rank=2, pessimism="rectangular", progress=False).fit(dataset, mdp)
    agents.evaluate(agent, mdp, rewards, progress=False)
    assert terminal.getvalue() == ""


def test_library_calls_print_nothing_into_captured_output(capsys, monkeypatch, small_problem):
    """Under pytest's capture standard error is not a terminal: no bar, whatever the delay."""
    monkeypatch.setattr(_progress, "DELAY_SECONDS", 0.0)
    mdp, rewards, dataset = small_problem
    agent = agents.make("independent", pessimism="none").fit(dataset, mdp)
    report = agents.evaluate(agent, mdp, rewards)
    agents.estimation_report(agent.estimator, mdp, rewards)
    agents.check_agent("pooled", n_instances=1, skip=("wrong_shape",))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert np.all(np.isfinite(report["value"]))


def test_check_agent_draws_over_its_instances(terminal):
    terminal = terminal()
    agents.check_agent("pooled", n_instances=2, skip=("wrong_shape",))
    assert "check_agent" in terminal.getvalue() and "0/2" in terminal.getvalue()


@pytest.mark.parametrize("value", [1, "yes", None])
def test_progress_must_be_a_bool(value, small_problem):
    mdp, rewards, dataset = small_problem
    with pytest.raises(TypeError, match="progress"):
        agents.PooledMLE(progress=value)
    agent = agents.make("pooled", pessimism="none").fit(dataset, mdp)
    with pytest.raises(TypeError, match="progress"):
        agents.evaluate(agent, mdp, rewards, progress=value)
