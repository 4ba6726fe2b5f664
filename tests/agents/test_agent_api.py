"""The agent protocol, the registry, the built-in pessimistic agent and exact evaluation."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import agents
import lr_mdp_env
from agents.agent import behaviour_policy


@pytest.fixture(scope="module")
def world():
    mdp = lr_mdp_env.random_mdp(6, 3, 4, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, 6, 2, mdp=mdp, scale=2.0, seed=1)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 150, seed=2)
    return mdp, rewards, dataset


class TruthAgent:
    """Knows the true parameters: its greedy policies are optimal."""

    def __init__(self, theta):
        self.theta = np.asarray(theta)

    def fit(self, dataset, mdp):
        self._policies, _ = lr_mdp_env.backward_induction(mdp, mdp.reward(self.theta.T))
        return self

    def policy(self, user):
        return self._policies[user]


def test_built_in_names_are_registered():
    assert {"pooled", "independent", "p-sharelora", "loco-prs", "oracle-subspace", "full-rank"} <= set(agents.registered())


def test_make_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match=r"unknown agent 'nope'; registered agents: \["):
        agents.make("nope")
    with pytest.raises(ValueError, match=r"unknown agent 'p-sharelor' \(did you mean 'p-sharelora'\?\)"):
        agents.make("p-sharelor")
    with pytest.raises(TypeError, match=r"agent 'pooled' has no option 'rank'; its options are ridge=None, "):
        agents.make("pooled", rank=2)
    with pytest.raises(ValueError, match=r"agent 'pooled': pessimism must be one of"):
        agents.make("pooled", pessimism="optimistic")
    with pytest.raises(ValueError, match=r"transitions must be one of"):
        agents.make("pooled", transitions="learned")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rank=2, pesimism="exact"), TypeError,
         r"agent 'p-sharelora' has no option 'pesimism' \(did you mean 'pessimism'\?\); its options are rank, "
         r"subspace_error='bootstrap', n_bootstrap=None, max_sine=0.4, ridge=None, .*pessimism='exact', reference='behavior', transitions='known', tol=1e-08$"),
        (dict(pessimism="exact"), TypeError, r"agent 'p-sharelora' needs rank=; its options are rank, subspace_error='bootstrap', n_bootstrap=None, max_sine=0.4, ridge=None"),
        (dict(rank=2, delta="0.1"), TypeError, r"agent 'p-sharelora': delta must be a real number, got '0\.1' \(str\)$"),
        (dict(rank="2"), TypeError, r"agent 'p-sharelora': rank must be an integer, got '2' \(str\)$"),
        (dict(rank=2, seed="a"), TypeError, r"agent 'p-sharelora': seed must be a non-negative int"),
        (dict(rank=2, base="x"), TypeError, r"agent 'p-sharelora': base must be an array of real numbers"),
    ],
)
def test_misspelt_missing_and_mistyped_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        agents.make("p-sharelora", **kwargs)


def test_a_custom_factorys_signature_is_its_list_of_options():
    def factory(rank, *, smoothing=0.5):
        return TruthAgent(np.zeros((2, 1)))

    agents.register("custom-options-for-tests", factory, overwrite=True)
    assert agents.registry.options("custom-options-for-tests") == {"rank": inspect.Parameter.empty, "smoothing": 0.5}
    with pytest.raises(TypeError, match=r"has no option 'smothing' \(did you mean 'smoothing'\?\); its options are "
                                        r"rank, smoothing=0\.5"):
        agents.make("custom-options-for-tests", rank=1, smothing=1.0)
    with pytest.raises(TypeError, match=r"agent 'custom-options-for-tests' needs rank="):
        agents.make("custom-options-for-tests")
    assert isinstance(agents.make("custom-options-for-tests", rank=1), TruthAgent)
    agents.register("any-options-for-tests", lambda **kwargs: TruthAgent(np.zeros((2, 1))), overwrite=True)
    assert agents.registry.options("any-options-for-tests") is None  # **kwargs: anything may be valid
    agents.make("any-options-for-tests", whatever=1)


@pytest.mark.parametrize("name", ["pooled", "independent", "p-sharelora", "loco-prs", "oracle-subspace", "full-rank"])
def test_help_of_make_states_every_default_of_the_built_ins(name):
    """Every option of a built-in agent with a default appears in ``help(agents.make)`` as
    ``option=default``, so the documentation cannot drift from the code."""
    documentation = " ".join(agents.make.__doc__.split())
    for option, default in agents.registry.options(name).items():
        if default is inspect.Parameter.empty:
            assert f"``{option}=``" in documentation, option
        else:
            text = f'"{default}"' if isinstance(default, str) else repr(default)
            assert f"``{option}={text}``" in documentation, (option, text)
    assert agents.registry.options(name)["pessimism"] == "exact" and agents.registry.takes(name, "seed")


def test_register_validates_and_refuses_silent_overwrites():
    with pytest.raises(TypeError, match=r"factory must be callable"):
        agents.register("broken", 3)
    with pytest.raises(TypeError, match=r"name must be a non-empty string"):
        agents.register("", TruthAgent)
    with pytest.raises(ValueError, match=r"already registered; pass overwrite=True"):
        agents.register("pooled", TruthAgent)


def test_a_registered_custom_agent_is_made_and_evaluated(world):
    mdp, rewards, dataset = world
    agents.register("truth-for-tests", TruthAgent, overwrite=True)
    agent = agents.make("truth-for-tests", theta=rewards.theta).fit(dataset, mdp)
    report = agents.evaluate(agent, mdp, rewards)
    assert list(report["user"]) == list(range(rewards.n_users))
    np.testing.assert_allclose(report["suboptimality"], 0.0, atol=1e-10)
    # Without confidence sets the pessimism diagnostics are missing, not invented.
    assert report[["lower_bound", "coverage_term", "bound", "reference_value"]].isna().all().all()


def test_evaluate_values_are_exact(world):
    mdp, rewards, dataset = world
    agent = agents.make("independent", pessimism="none", ridge=1.0).fit(dataset, mdp)
    report = agents.evaluate(agent, mdp, rewards)
    table = rewards.reward_table(mdp)
    policies = np.stack([agent.policy(user) for user in range(rewards.n_users)])
    np.testing.assert_allclose(report["value"], lr_mdp_env.evaluate_policy(mdp, policies, table), atol=1e-10)
    optimal, _ = lr_mdp_env.backward_induction(mdp, table)
    np.testing.assert_allclose(report["optimal_value"], lr_mdp_env.evaluate_policy(mdp, optimal, table), atol=1e-10)
    reference = lr_mdp_env.evaluate_policy(mdp, lr_mdp_env.uniform_policy(mdp), table)
    np.testing.assert_allclose(report["reference_value"], reference, atol=1e-10)
    assert (report["suboptimality"] >= -1e-10).all()


def test_evaluate_rejects_bad_arguments(world):
    mdp, rewards, dataset = world
    with pytest.raises(TypeError, match=r"agent must have fit\(dataset, mdp\) and policy\(user\)"):
        agents.evaluate(object(), mdp, rewards)
    agent = agents.make("pooled", pessimism="none", ridge=1.0).fit(dataset, mdp)
    with pytest.raises(ValueError, match=r"the agent has policies for 6 users but rewards have 3"):
        agents.evaluate(agent, mdp, rewards.theta[:, :3])
    with pytest.raises(ValueError, match=r"rewards have 5 features but the MDP has n_features=18"):
        agents.evaluate(agent, mdp, np.zeros((5, 6)))


@pytest.mark.parametrize("name,options", [("independent", {}), ("p-sharelora", {"rank": 2}),
                                          ("oracle-subspace", None)])
def test_pessimism_lemma_and_lower_bound_hold_when_the_truth_is_in_the_set(world, name, options):
    """docs/theory.md: with theta* in C, 0 <= J(pi*) - J(pi_hat) <= 2 radius ||G(d* - d_ref)|| (+ the
    misspecification term of reduced sets) and J(pi_hat) - J(ref) >= L(pi_hat). Deterministic facts:
    checked on every user whose set contains the truth, exactly (tolerance = solver gap 1e-8)."""
    mdp, rewards, dataset = world
    options = {"subspace": rewards.subspace} if options is None else options
    agent = agents.make(name, pessimism="exact", ridge=1.0, **options).fit(dataset, mdp)
    report = agents.evaluate(agent, mdp, rewards)
    covered = report[report["truth_in_set"].astype(bool)]
    assert len(covered) > 0, "no user's set contains the truth: the check would be vacuous"
    slack = 1e-7 * (1 + report["optimal_value"].abs().max())
    assert (covered["suboptimality"] >= -slack).all()
    assert (covered["suboptimality"] <= covered["bound"] + slack).all()
    assert (covered["value"] - covered["reference_value"] >= covered["lower_bound"] - slack).all()


def test_rectangular_is_never_less_conservative_than_exact(world):
    mdp, rewards, dataset = world
    exact = agents.evaluate(agents.make("p-sharelora", rank=2, ridge=1.0).fit(dataset, mdp), mdp, rewards)
    rectangular = agents.evaluate(
        agents.make("p-sharelora", rank=2, ridge=1.0, pessimism="rectangular").fit(dataset, mdp), mdp, rewards)
    assert (rectangular["lower_bound"] <= exact["lower_bound"] + 1e-7).all()


def test_policies_are_valid_for_every_planner_and_transition_model(world):
    mdp, _, dataset = world
    for pessimism in ("none", "rectangular", "exact"):
        for transitions in ("known", "estimated"):
            agent = agents.make("independent", ridge=1.0, pessimism=pessimism, transitions=transitions)
            policies = agent.fit(dataset, mdp).policies()
            assert policies.shape == (dataset.n_users, mdp.horizon, mdp.n_states, mdp.n_actions)
            np.testing.assert_allclose(policies.sum(axis=-1), 1.0, atol=1e-9)
            assert (policies >= 0).all()
            # One read-only array, kept: each user's policy is its row, not a second copy.
            assert agent.policies() is policies and not policies.flags.writeable
            assert all(np.shares_memory(agent.policy(user), policies) for user in range(dataset.n_users))
            np.testing.assert_array_equal(agent.policy(1), policies[1])


def test_exact_policies_keep_users_planned_one_at_a_time_and_solve_only_the_others(world, monkeypatch):
    mdp, _, dataset = world
    agent = agents.make("independent", ridge=1.0, pessimism="exact").fit(dataset, mdp)
    alone = agent.policy(2)
    assert not alone.flags.writeable
    solved_sets = []
    original = agents.planning.robust_optimize

    def counting(mdp_, sets, *args, **kwargs):
        solved_sets.append(len(sets) if isinstance(sets, list) else 1)
        return original(mdp_, sets, *args, **kwargs)

    monkeypatch.setattr(agents.planning, "robust_optimize", counting)
    policies = agent.policies()
    assert solved_sets == [dataset.n_users - 1]
    np.testing.assert_array_equal(policies[2], alone)
    # The batch answers for the others equal one-at-a-time answers to the solver's tolerance.
    fresh = agents.make("independent", ridge=1.0, pessimism="exact").fit(dataset, mdp)
    reference = lr_mdp_env.expected_features(mdp, fresh.policy(4))
    np.testing.assert_allclose(lr_mdp_env.expected_features(mdp, policies[4]) @ fresh.theta_hat[4],
                               reference @ fresh.theta_hat[4], atol=1e-6)


def test_behaviour_policy_is_uniform_or_empirical(world):
    mdp, rewards, dataset = world
    np.testing.assert_allclose(behaviour_policy(dataset), lr_mdp_env.uniform_policy(mdp))
    deterministic = np.zeros((mdp.horizon, mdp.n_states, mdp.n_actions))
    deterministic[..., 1] = 1.0
    given = lr_mdp_env.collect_preferences(mdp, rewards, 20, behavior=deterministic, seed=3)
    estimate = behaviour_policy(given)
    visited = np.zeros((mdp.horizon, mdp.n_states), dtype=bool)
    visited[np.arange(mdp.horizon), given.states0] = True
    np.testing.assert_allclose(estimate[visited], deterministic[visited])
    np.testing.assert_allclose(estimate[~visited], 1.0 / mdp.n_actions)


def test_contextual_agent_plans_per_context():
    mdp = lr_mdp_env.random_mdp(5, 3, 1, features="dense", n_features=4, seed=0)
    rewards = lr_mdp_env.contextual_rewards(4, 3, 1, n_users=40, mdp=mdp, scale=2.0, seed=1)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 5, seed=2)
    agent = agents.make("loco-prs", rank=1, ridge=1.0, pessimism="exact").fit(dataset, mdp)
    context = rewards.sample_contexts(1, seed=3, shifted=True)[0]
    policy = agent.policy(context=context)
    assert policy.shape == (1, 5, 3)
    np.testing.assert_allclose(policy.sum(axis=-1), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match=r"give exactly one of user and context"):
        agent.policy(0, context=context)


@pytest.mark.parametrize("pessimism", ["none", "rectangular", "exact"])
@pytest.mark.parametrize("name", ["independent", "pooled"])
def test_a_world_with_nothing_identifiable_gives_point_sets_and_its_only_policy(name, pessimism):
    """One state and one action: every trajectory has the same features, comparisons identify no
    direction, the confidence set is the single point offset (dimension 0) and the only policy
    is optimal."""
    mdp = lr_mdp_env.TabularMDP(np.ones((1, 1, 1)), np.ones(1), horizon=2)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, 2, 1, seed=0)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 5, seed=1)
    agent = agents.make(name, pessimism=pessimism).fit(dataset, mdp)
    assert agent.confidence_set(0).dimension == 0
    report = agents.evaluate(agent, mdp, rewards)
    assert (report["suboptimality"] == 0).all() and report["truth_in_set"].all()
    assert (report["bound"] == 0).all()


def test_per_user_behaviours_give_each_user_their_own_reference():
    """With epsilon-optimal data every user's behaviour differs: the empirical behaviour of each
    user's own trajectories is their d_ref, and the exact agent plans each user against it."""
    from lr_mdp_env.collection import epsilon_optimal_policies

    mdp = lr_mdp_env.random_mdp(4, 2, 3, seed=0)
    rewards = lr_mdp_env.low_rank_rewards(mdp.n_features, 3, 1, mdp=mdp, seed=1)
    behaviours = epsilon_optimal_policies(mdp, rewards, 0.2)
    dataset = lr_mdp_env.collect_preferences(mdp, rewards, 40, behavior=behaviours, seed=2)
    assert dataset.metadata["behavior"] == "per_user"
    per_user = behaviour_policy(dataset)
    assert per_user.shape == (3, mdp.horizon, mdp.n_states, mdp.n_actions)
    for user in range(3):
        np.testing.assert_array_equal(per_user[user], behaviour_policy(dataset.subset(dataset.users == user),
                                                                       per_user=False))
    agent = agents.make("independent", pessimism="exact").fit(dataset, mdp)
    np.testing.assert_allclose(agent.reference_features, lr_mdp_env.expected_features(mdp, per_user))
    report = agents.evaluate(agent, mdp, rewards)
    expected = np.einsum("nd,dn->n", agent.reference_features, rewards.theta)
    np.testing.assert_allclose(report["reference_value"], expected)
    # The exact solution's pessimistic value is never below that of the user's own reference (L = 0).
    assert (report["lower_bound"] >= -1e-7).all()
