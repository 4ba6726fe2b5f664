"""Sweep configurations: the grid, agent variables, and errors that name the key."""

from __future__ import annotations

import numpy as np
import pytest

import lr_mdp_experiments as experiments
from lr_mdp_experiments.cli import REPRODUCTIONS, shipped_config
from lr_mdp_experiments.config import cell_variables


def test_grid_is_the_product_of_its_lists_with_the_last_key_fastest(tiny_config_text):
    text = tiny_config_text().replace("horizon = 3\n", "").replace(
        "n_pairs_per_user = [20, 40]", "n_pairs_per_user = [20, 40]\nhorizon = [3, 4, 5]")
    config = experiments.parse_config(text)
    values = [(s.values()["n_pairs_per_user"], s.values()["horizon"]) for s in config.settings]
    assert values == [(20, 3), (20, 4), (20, 5), (40, 3), (40, 4), (40, 5)]
    assert [s.index for s in config.settings] == list(range(6))
    assert len(config.cells()) == 6 * 3 * 2
    assert len({cell.cell_id for cell in config.cells()}) == 36


def test_agent_variables_take_the_cells_values_and_the_truth(tiny_config_text):
    config = experiments.parse_config(tiny_config_text())
    setting = config.settings[0]
    world = config.build_world(setting, model_seed=5)
    variables = cell_variables(config, setting, world)
    assert config.agents[1].arguments(variables)["rank"] == 2
    np.testing.assert_array_equal(config.agents[2].arguments(variables)["subspace"], world.rewards.subspace)
    assert [spec.label for spec in config.agents] == ["independent (none)", "p-sharelora (exact)",
                                                      "oracle-subspace (rectangular)"]


def test_the_fingerprint_ignores_comments_but_not_values(tiny_config_text):
    base = experiments.parse_config(tiny_config_text())
    commented = experiments.parse_config("# a comment\n" + tiny_config_text())
    changed = experiments.parse_config(tiny_config_text().replace("n_states = 4", "n_states = 5"))
    assert base.fingerprint == commented.fingerprint != changed.fingerprint


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS) + ["demo"])
def test_shipped_configurations_are_valid(name):
    config = shipped_config(name)
    assert config.name == name and len(config.cells()) > 0


@pytest.mark.parametrize("change, message", [
    (("seed = 11", "seed = 11\ncolour = 1"), "unknown config key 'colour'"),
    (("n_states = 4", "n_statez = 4"), "unknown config key 'world.n_statez'"),
    (("n_states = 4", 'n_states = "four"'), "config key 'world.n_states' must be int, got str"),
    (("n_states = 4", "n_states = 4.5"), "config key 'world.n_states' must be int, got float"),
    (("replicates = 2", "replicates = true"), "config key 'replicates' must be int, got bool"),
    (("replicates = 2", "replicates = 0"), "config key 'replicates' must be at least 1"),
    (('env = "lr_mdp_env/RandomLowRank-v0"', 'env = "lr_mdp_env/RandomLowrank-v0"'),
     "config key 'env': unknown environment 'lr_mdp_env/RandomLowrank-v0': .*Did you mean: `RandomLowRank`"),
    (('env = "lr_mdp_env/RandomLowRank-v0"', 'env = "mine/MyWorld-v0"'),
     "config key 'env': unknown environment 'mine/MyWorld-v0': Namespace mine not found"),
    (('env = "lr_mdp_env/RandomLowRank-v0"', 'env = "lr_mdp_env/RandomLowRank-v0"\nbuilder = "x:y"'),
     "a config needs exactly one of 'env' .* and 'builder' .*; it has both"),
    (('env = "lr_mdp_env/RandomLowRank-v0"', 'builder = "no_such_module_here:world"'),
     "config key 'builder': cannot import 'no_such_module_here'"),
    (('env = "lr_mdp_env/RandomLowRank-v0"', 'builder = "lr_mdp_env.envs:random_low_rank_worlds"'),
     "config key 'builder': builder 'lr_mdp_env.envs:random_low_rank_worlds': module 'lr_mdp_env.envs' has no"),
    (("n_states = 4", "n_statez = 4"), "unknown config key 'world.n_statez' \\(did you mean 'n_states'\\?\\)"),
    (('name = "independent"', 'name = "independent"\npesimism = "exact"'),
     "config key 'agents\\[0\\].pesimism': agent 'independent' has no option 'pesimism' \\(did you mean 'pessimism'\\?\\); "
     "its options are name, label, ridge=None, "),
    (('rank = "$rank"', 'seed = 3'), "config key 'agents\\[1\\].rank' is required: agent 'p-sharelora' needs rank="),
    (('rank = "$rank"', 'rank = "$rank"\ndelta = "0.1"'),
     "config key 'agents\\[1\\].delta' \\(p-sharelora \\(exact\\)\\): delta must be a real number, got '0.1' \\(str\\)"),
    (('rank = "$rank"', 'rank = 50'),
     "config key 'agents\\[1\\].rank' \\(p-sharelora \\(exact\\)\\): rank=50 exceeds min\\(d, N\\) = 6 \\(in the world "
     "world.n_states=4, world.n_actions=2, world.horizon=3, world.n_users=6, world.rank=2\\)"),
    (("n_pairs_per_user = [20, 40]", "n_pairs_per_user = [20, -10]"),
     "config key 'grid.n_pairs_per_user' must be a positive integer, got -10"),
    (("[grid]", "[data]\nepsilon = 1.5\n[grid]"), "config key 'data.epsilon' must lie in \\[0, 1\\]"),
    (("n_pairs_per_user = [20, 40]", "epsilon = [0.5, 1.5]"), "config key 'grid.epsilon' must lie in \\[0, 1\\]"),
    (('name = "independent"', 'name = "indepndent"'), "config key 'agents\\[0\\].name': unknown agent 'indepndent'"),
    (('rank = "$rank"', 'rank = "$rnak"'), "config key 'agents\\[1\\].rank': unknown variable '\\$rnak'"),
    (('pessimism = "none"', 'pessimism = "sometimes"'), "config key 'agents\\[0\\].pessimism' \\(independent \\(sometimes\\)\\): pessimism must be one of"),
    (("n_pairs_per_user = [20, 40]", "n_pairs_per_user = 20"), "config key 'grid.n_pairs_per_user' must be a non-empty list"),
    (("n_pairs_per_user = [20, 40]", "n_pairs_per_user = []"), "config key 'grid.n_pairs_per_user' must be a non-empty list"),
    (("n_pairs_per_user = [20, 40]", "n_pairs = [20, 40]"), "unknown config key 'grid.n_pairs'"),
    (("n_pairs_per_user = [20, 40]", "n_pairs_per_user = [20, 0]"), "config key 'grid.n_pairs_per_user' must be a positive integer"),
    (("n_pairs_per_user = [20, 40]", 'n_pairs_per_user = [20, "many"]'), "config key 'grid.n_pairs_per_user' must be int"),
    (("rank = 2", "rank = 9"), "config key 'world'"),
    (("[grid]", "[teacher]\nbeta = -1.0\n[grid]"), "config key 'teacher'"),
    (("[grid]", "[teacher]\nrationality = 1.0\n[grid]"), "unknown config key 'teacher.rationality'"),
    (("[grid]", '[data]\nbehavior = "expert"\n[grid]'), "config key 'data.behavior' must be one of"),
    (("[grid]", '[evaluation]\ncontexts = "new"\n[grid]'), "config key 'evaluation.contexts' must be one of"),
    (("[grid]", "[world]\nhorizon = 4\n[grid]"), "is not valid TOML"),
    (("seed = 11", 'seed = 11\nplugins = ["no_such_module_here"]'), "config key 'plugins\\[0\\]': cannot import"),
])
def test_bad_configs_name_the_key(tiny_config_text, change, message):
    old, new = change
    text = tiny_config_text()
    assert old in text
    with pytest.raises(experiments.ConfigError, match=message):
        experiments.parse_config(text.replace(old, new, 1))


def test_a_grid_key_fixed_elsewhere_or_in_two_sections_is_refused(tiny_config_text):
    text = tiny_config_text().replace("[grid]", "[data]\nn_pairs_per_user = 30\n[grid]")
    with pytest.raises(experiments.ConfigError, match="'grid.n_pairs_per_user' is also fixed in \\[data\\]"):
        experiments.parse_config(text)


def test_missing_agents_and_unreadable_files_are_reported(tmp_path, tiny_config_text):
    text = tiny_config_text().split("[[agents]]")[0]
    with pytest.raises(experiments.ConfigError, match="config key 'agents' must list at least one"):
        experiments.parse_config(text)
    with pytest.raises(experiments.ConfigError, match="cannot read config"):
        experiments.load_config(tmp_path / "missing.toml")


def test_contextual_worlds_and_agents_must_match(tiny_config_text):
    text = tiny_config_text().replace('name = "independent"', 'name = "loco-prs"\nrank = 1')
    with pytest.raises(experiments.ConfigError, match="user-indexed \\(non-contextual\\) rewards, which agent 'loco-prs'"):
        experiments.parse_config(text)


def test_a_variable_may_name_a_builder_default(tiny_config_text):
    """``rank = "$rank"`` works when the world leaves ``rank`` at the builder's default (2)."""
    config = experiments.parse_config(tiny_config_text().replace("rank = 2\n", "", 1))
    setting = config.settings[0]
    world = config.build_world(setting, model_seed=0)
    assert config.agents[1].arguments(cell_variables(config, setting, world))["rank"] == 2


def test_plugins_are_found_next_to_the_config(tmp_path, tiny_config_text, monkeypatch):
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    (tmp_path / "neighbour_agents.py").write_text(
        "import agents\n"
        "if 'neighbour' not in agents.registered():\n"
        "    agents.register('neighbour', lambda seed=0: agents.make('independent', pessimism='none', seed=seed))\n")
    path = tmp_path / "sweep.toml"
    path.write_text(tiny_config_text().replace("seed = 11", 'seed = 11\nplugins = ["neighbour_agents"]')
                    + '\n[[agents]]\nname = "neighbour"\n')
    config = experiments.load_config(path)
    assert config.plugin_path == str(tmp_path.resolve()) and config.agents[-1].name == "neighbour"


def test_the_demo_is_the_small_study_its_help_and_the_readme_describe(capsys):
    """``lr-mdp demo`` is 60 cells of 20 users; its help and the README say so (and what it runs)."""
    from pathlib import Path

    from lr_mdp_experiments.cli import build_parser

    config = shipped_config("demo")
    world = dict(config.settings[0].world)
    assert len(config.cells()) == 60 and config.replicates == 3 and len(config.agents) == 5
    assert (world["n_users"], world["n_features"], world["rank"]) == (20, 12, 2)
    assert [setting.values()["n_pairs_per_user"] for setting in config.settings] == [25, 50, 100, 200]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    for text in (help_text, readme):
        assert "20 users" in text and "60 cells" in text and "3 replicates" in text
    assert "about a minute" not in readme
