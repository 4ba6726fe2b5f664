"""Replicates are independent draws of the data even when the configuration fixes the world."""

from __future__ import annotations

import numpy as np

import lr_mdp_experiments as experiments
from lr_mdp_experiments import cell as cell_module


def _trajectories(dataset) -> np.ndarray:
    return np.stack([dataset.states0, dataset.actions0, dataset.states1, dataset.actions1])


def test_replicates_draw_different_data_when_the_world_is_fixed_by_model_seed(tiny_config_text, monkeypatch):
    text = tiny_config_text().replace("rank = 2\n\n[grid]", "rank = 2\nmodel_seed = 7\n\n[grid]")
    config = experiments.parse_config(text)
    assert dict(config.settings[0].world)["model_seed"] == 7
    drawn = []
    collect = cell_module.collect_preferences

    def recording(mdp, rewards, *args, **kwargs):
        dataset = collect(mdp, rewards, *args, **kwargs)
        drawn.append((rewards.theta, dataset))
        return dataset

    monkeypatch.setattr(cell_module, "collect_preferences", recording)
    setting = config.settings[0]
    cells = {(cell.agent_index, cell.replicate): cell for cell in config.cells() if cell.setting == setting}
    rows = {key: experiments.run_cell(config, cells[key]) for key in [(0, 0), (0, 1), (1, 0)]}
    (theta_0, data_0), (theta_1, data_1), (theta_other_agent, data_other_agent) = drawn
    # The world is the configured one in both replicates ...
    np.testing.assert_array_equal(theta_0, theta_1)
    assert rows[(0, 0)]["optimal_value"] == rows[(0, 1)]["optimal_value"]
    # ... but each replicate collects its own comparisons: a data seed that ignored the replicate
    # would give both the same trajectories and labels.
    assert data_0.n_pairs == data_1.n_pairs
    assert not np.array_equal(_trajectories(data_0), _trajectories(data_1))
    assert rows[(0, 0)]["reward_error"] != rows[(0, 1)]["reward_error"]
    # Within a replicate every agent sees the same data (common random numbers).
    np.testing.assert_array_equal(theta_other_agent, theta_0)
    np.testing.assert_array_equal(_trajectories(data_other_agent), _trajectories(data_0))
    np.testing.assert_array_equal(data_other_agent.labels, data_0.labels)
