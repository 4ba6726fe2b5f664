"""agents.check_agent: the built-in agents pass; each deliberately broken agent is caught by name."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings

import agents
import lr_mdp_env
from agents import AgentCheckError, CheckInstance, IndependentMLE, PessimisticAgent, check_agent, draw_instances
from lr_mdp_env.testing import mdps, preference_datasets

BUILT_INS = ("pooled", "independent", "p-sharelora", "loco-prs", "oracle-subspace", "full-rank")


# -- agents, good and broken ---------------------------------------------------------------------------

class WinCountAgent:
    """A valid agent without confidence sets: greedy on per-user win counts of the visited features."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, dataset, mdp):
        signed = (2 * dataset.labels - 1)[:, None] * dataset.feature_differences(mdp)  # checks the sizes
        scores = np.zeros((dataset.n_users, mdp.n_features))
        np.add.at(scores, dataset.users, signed)
        return scores

    def fit(self, dataset, mdp):
        self._policies, _ = lr_mdp_env.backward_induction(mdp, mdp.reward(self.scores(dataset, mdp)))
        return self

    def policy(self, user):
        return self._policies[user]


class UnnormalisedAgent(WinCountAgent):
    """Returns 0.9 times a policy: rows sum to 0.9."""

    def policy(self, user):
        return 0.9 * self._policies[user]


class SeedIgnoringAgent(WinCountAgent):
    """Perturbs its scores with numpy's global random state instead of a Generator built from
    ``seed``. The noise (scale 100) swamps the win counts (at most 30 per feature), so two fits plan
    greedily on nearly independent random rewards: their policies for 4 users on 9 (h, s) rows
    each agree only with negligible probability, so the check cannot pass by chance."""

    def fit(self, dataset, mdp):
        noise = np.random.normal(scale=100.0, size=(dataset.n_users, mdp.n_features))
        self._policies, _ = lr_mdp_env.backward_induction(mdp, mdp.reward(self.scores(dataset, mdp) + noise))
        return self


class LabelMutatingAgent(WinCountAgent):
    """Recodes the labels to -1/+1 in place (after making the read-only array writeable)."""

    def fit(self, dataset, mdp):
        labels = dataset.labels
        labels.flags.writeable = True
        labels *= 2
        labels -= 1
        signed = labels[:, None] * dataset.feature_differences(mdp)
        scores = np.zeros((dataset.n_users, mdp.n_features))
        np.add.at(scores, dataset.users, signed)
        self._policies, _ = lr_mdp_env.backward_induction(mdp, mdp.reward(scores))
        return self


class MetadataMutatingAgent(WinCountAgent):
    """Records itself in the dataset's metadata dict."""

    def fit(self, dataset, mdp):
        dataset.metadata["fitted_by"] = type(self).__name__
        return super().fit(dataset, mdp)


class VisitTableAgent(WinCountAgent):
    """Counts the winners' visits in an (H, S, A) table sized by the MDP, trusting the dataset's
    indices: a dataset with more states, actions or steps indexes past the table."""

    def fit(self, dataset, mdp):
        table = np.zeros((mdp.horizon, mdp.n_states, mdp.n_actions))
        steps = np.arange(dataset.horizon)
        for states, actions, sign in ((dataset.states1, dataset.actions1, dataset.labels),
                                      (dataset.states0, dataset.actions0, 1 - dataset.labels)):
            np.add.at(table, (steps, states, actions), sign[:, None])
        self._policies, _ = lr_mdp_env.backward_induction(mdp, np.broadcast_to(table, (dataset.n_users,) + table.shape))
        return self


class ReshapingAgent(WinCountAgent):
    """Counts visits with bincount and reshapes to (H, S, A): a larger dataset makes numpy's
    reshape raise ValueError from inside numpy."""

    def fit(self, dataset, mdp):
        H, S, A = mdp.horizon, mdp.n_states, mdp.n_actions  # noqa: N806
        flat = (np.arange(dataset.horizon) * S + dataset.states1) * A + dataset.actions1
        table = np.reshape(np.bincount(flat.ravel(), minlength=H * S * A).astype(float), (H, S, A))
        self._policies, _ = lr_mdp_env.backward_induction(mdp, np.broadcast_to(table, (dataset.n_users, H, S, A)))
        return self


class UncheckedAgent(WinCountAgent):
    """Plans uniformly without looking at the data: a dataset of the wrong sizes goes unnoticed."""

    def fit(self, dataset, mdp):
        uniform = lr_mdp_env.uniform_policy(mdp)
        self._policies = np.broadcast_to(uniform, (dataset.n_users,) + uniform.shape)
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class ClaimedCentreEllipsoid(agents.Ellipsoid):
    """An ellipsoid that claims the centre of ``center`` but whose membership is that of ``actual``."""

    actual: agents.Ellipsoid | None = None

    def contains(self, theta, *, atol=1e-9, project=False):
        return self.actual.contains(theta, atol=atol, project=project)

    def distance(self, theta):
        return self.actual.distance(theta)


class OffCentreAgent(PessimisticAgent):
    """Reports sets whose claimed centre theta_hat is twice the radius away from the set."""

    def confidence_set(self, user=None, *, context=None):
        region = super().confidence_set(user, context=context)
        step = np.zeros(region.dimension)
        step[0] = 2 * region.radius / np.sqrt(region.matrix[0, 0])  # ||step||_M = 2 radius
        return ClaimedCentreEllipsoid(offset=region.offset, basis=region.basis, center=region.center + step,
                                      matrix=region.matrix, radius=region.radius, actual=region)


class WorstPolicyAgent(PessimisticAgent):
    """Claims exact pessimism but returns the policy that is greedy for -theta_hat."""

    def policy(self, user=None, *, context=None):
        worst, _ = lr_mdp_env.backward_induction(self.mdp_, self.mdp_.reward(-self.theta_hat[user]))
        return worst

    def policies(self):
        return np.stack([self.policy(user) for user in range(self.n_users)])


def independent_around(agent_class):
    def factory(seed=0):
        return agent_class(IndependentMLE(ridge=1.0, seed=seed), pessimism="exact")
    factory.__qualname__ = f"independent_around({agent_class.__name__})"
    return factory


def failure(agent_or_factory, **kwargs) -> AgentCheckError:
    with pytest.raises(AgentCheckError) as caught:
        check_agent(agent_or_factory, **kwargs)
    return caught.value


# -- built-in agents pass ------------------------------------------------------------------------------

@pytest.mark.parametrize("pessimism", ["exact", "rectangular", "none"])
@pytest.mark.parametrize("name", BUILT_INS)
def test_every_built_in_agent_passes(name, pessimism):
    assert set(BUILT_INS) <= set(agents.registered())
    report = check_agent(name, options={"pessimism": pessimism})
    not_exact = {"pessimism_lemma": "the agent's pessimism is not 'exact'"}
    assert report.skipped == ({} if pessimism == "exact" else not_exact)
    assert set(report.passed) | set(report.skipped) == set(agents.checker.PROPERTIES)
    # 3 instances of 4 users; the confidence-set facts are checked where the truth is covered.
    assert report.cases == 12
    assert len(report.instances) == 3


def test_the_confidence_facts_are_not_vacuous_for_the_built_ins():
    """The lower bound and the lemma bind only where the truth lies in the set; on the drawn
    instances that happens for most users of the per-user estimators (Wald sets at delta = 0.1)."""
    report = check_agent("independent", options={"pessimism": "exact"})
    assert report.covered_cases >= report.cases // 4


def test_a_valid_agent_without_confidence_sets_passes_and_skips_their_facts():
    report = check_agent(WinCountAgent)
    assert {"protocol", "policies", "mutation", "determinism", "wrong_shape"} <= set(report.passed)
    assert set(report.skipped) == {"center_in_set", "lower_bound", "pessimism_lemma"}
    assert "no confidence_set" in report.skipped["center_in_set"]
    assert report.cases == 0
    assert "WinCountAgent passed 5 properties on 3 instance(s)" in str(report)


def test_an_agent_instance_is_checked_through_deep_copies():
    agent = agents.make("independent", pessimism="none", ridge=1.0)
    report = check_agent(agent)
    assert "determinism" in report.passed
    assert not hasattr(agent, "mdp_")  # the given agent itself is never fitted


# -- broken agents are caught, by name ----------------------------------------------------------------

def test_rows_that_do_not_sum_to_one_are_caught():
    error = failure(UnnormalisedAgent)
    assert error.property == "policies"
    assert "agent.policy(0)[h=0, s=0] sums to 0.9" in str(error)
    assert str(error).startswith("[policies]")


def test_an_agent_that_ignores_its_seed_is_caught():
    error = failure(SeedIgnoringAgent)
    assert error.property == "determinism"
    assert "Two agents made by `SeedIgnoringAgent(seed=" in str(error)
    assert "global random state" in str(error)


def test_global_randomness_is_caught_also_for_an_agent_instance():
    error = failure(SeedIgnoringAgent(seed=3))
    assert error.property == "determinism"
    assert "copy.deepcopy(agent)" in str(error)


@pytest.mark.parametrize("agent_class, changed", [(LabelMutatingAgent, "dataset.labels"),
                                                   (MetadataMutatingAgent, "dataset.metadata")])
def test_an_agent_that_mutates_the_dataset_is_caught(agent_class, changed):
    error = failure(agent_class)
    assert error.property == "mutation"
    assert f"`agent.fit(dataset, mdp)` changed {changed} in place" in str(error)


def test_a_set_that_excludes_its_own_centre_is_caught():
    error = failure(independent_around(OffCentreAgent))
    assert error.property == "center_in_set"
    message = str(error)
    assert "`agent.confidence_set(0)` does not contain its own centre `theta_hat`" in message
    # The centre moved by 2 radius in the set's norm: the reported distance is twice the radius.
    distance = float(re.search(r"its distance (\S+)", message).group(1))
    radius = float(re.search(r"exceeds the radius (\S+)", message).group(1))
    assert distance == pytest.approx(2 * radius, rel=1e-5)  # both printed to 6 significant digits


def test_a_policy_that_does_not_maximise_the_pessimistic_objective_breaks_the_lemma():
    """The policy greedy for -theta_hat loses about the whole range of values, far more than the
    lemma's bound on an instance where the set is small enough to contain the truth tightly."""
    error = failure(independent_around(WorstPolicyAgent), skip=("determinism",))
    assert error.property == "pessimism_lemma"
    assert "the truth lies in the confidence set, yet the sub-optimality" in str(error)


def test_an_index_error_on_a_wrong_shaped_dataset_is_caught():
    error = failure(VisitTableAgent)
    assert error.property == "wrong_shape"
    assert "with n_states=4 fitted with the instance's MDP (n_states=3), `agent.fit` crashed with IndexError" \
        in str(error)


def test_a_value_error_from_inside_numpy_is_caught():
    error = failure(ReshapingAgent)
    assert error.property == "wrong_shape"
    assert "raised ValueError from inside numpy" in str(error)


def test_silently_fitting_a_wrong_shaped_dataset_is_caught():
    error = failure(UncheckedAgent)
    assert error.property == "wrong_shape"
    assert "`agent.fit` succeeded silently" in str(error)


def test_a_fit_that_does_not_return_the_agent_is_caught():
    class ReturnsPolicies(WinCountAgent):
        def fit(self, dataset, mdp):
            super().fit(dataset, mdp)
            return self._policies

    error = failure(ReturnsPolicies)
    assert error.property == "protocol"
    assert "returned ndarray instead of the agent itself" in str(error)


def test_options_may_depend_on_the_instance_and_override_the_built_in_ones():
    seen = []

    def options(instance):
        seen.append(instance.mdp.n_features)
        return {"rank": 1, "pessimism": "none"}

    report = check_agent("p-sharelora", options=options, n_instances=2)
    assert seen[:2] == [6, 6]  # one-hot features of the first instance (3 states x 2 actions), twice
    assert report.agent == "'p-sharelora'"


def test_a_contextual_agent_on_plain_data_gets_a_hint():
    error = failure(lambda seed: agents.make("full-rank", seed=seed))
    assert error.property == "protocol"
    assert "pass contextual=True" in str(error)
    check_agent(lambda seed: agents.make("full-rank", seed=seed), contextual=True, n_instances=1)


# -- reproducing a failure -----------------------------------------------------------------------------

def test_failures_name_the_instance_and_how_to_reproduce_it():
    error = failure(UnnormalisedAgent, seed=7, n_instances=2)
    assert error.instance.startswith("0 of 2: mdp = random_mdp(3, 2, 3, seed=")
    assert error.reproduce.startswith("agents.check_agent(UnnormalisedAgent, n_instances=2, seed=7); the failing "
                                      "agent is UnnormalisedAgent(seed=")
    assert f"  reproduce: {error.reproduce}" in str(error)


def test_drawn_instances_are_rebuilt_by_their_description():
    for instance in draw_instances(3, seed=11) + draw_instances(1, seed=11, contextual=True):
        namespace = {name: getattr(lr_mdp_env, name) for name in lr_mdp_env.__all__}
        exec(instance.description, namespace)  # noqa: S102 -- our own generated source
        for name in ("users", "states0", "actions0", "states1", "actions1", "labels"):
            np.testing.assert_array_equal(getattr(namespace["dataset"], name), getattr(instance.dataset, name))
        np.testing.assert_array_equal(namespace["rewards"].theta, instance.rewards.theta)


def test_instance_k_does_not_depend_on_how_many_are_drawn():
    first, second = draw_instances(1, seed=5)[0], draw_instances(3, seed=5)[0]
    assert first.description == second.description
    assert draw_instances(1, seed=6)[0].description != first.description


# -- user-provided instances -----------------------------------------------------------------------------

# Two actions at least: with one action there is a single policy and, for one-hot features, no
# identifiable reward direction at all (the built-in estimators then have no set to build).
@settings(max_examples=10, deadline=None)
@given(preference_datasets(mdps(min_actions=2, max_states=3, max_horizon=3), max_users=3, max_pairs_per_user=6))
def test_check_agent_runs_on_hypothesis_instances(case):
    report = check_agent(lambda seed: agents.make("independent", pessimism="rectangular", ridge=1.0, seed=seed),
                         instances=[case])
    assert report.instances[0].startswith("given instance: TabularMDP(")


def test_a_given_instance_is_accepted_alone_or_in_a_list():
    instance = draw_instances(1, seed=1)[0]
    triple = (instance.mdp, instance.rewards, instance.dataset)
    assert len(check_agent(WinCountAgent, instances=triple).instances) == 1
    assert len(check_agent(WinCountAgent, instances=[instance, triple]).instances) == 2
    error = failure(UnnormalisedAgent, instances=[triple])
    assert "reproduce: agents.check_agent(" in str(error) and "instances=instances" in error.reproduce


# -- arguments ---------------------------------------------------------------------------------------------

def test_arguments_are_validated():
    with pytest.raises(ValueError, match=r"skip has unknown properties \['nope'\]"):
        check_agent(WinCountAgent, skip=("nope",))
    with pytest.raises(ValueError, match="protocol cannot be skipped"):
        check_agent(WinCountAgent, skip=("protocol",))
    with pytest.raises(ValueError, match="unknown agent 'nope'"):
        check_agent("nope")
    with pytest.raises(TypeError, match="agent_or_factory must be"):
        check_agent(3)
    with pytest.raises(ValueError, match="an agent instance takes none"):
        check_agent(WinCountAgent(), options={"seed": 1})
    with pytest.raises(TypeError, match=r"instances\[0\] must be a CheckInstance"):
        check_agent(WinCountAgent, instances=[3])
    with pytest.raises(ValueError, match="n_instances must be at least 1"):
        check_agent(WinCountAgent, n_instances=0)
    assert isinstance(draw_instances(1)[0], CheckInstance)


def test_skipped_properties_are_reported_and_not_checked():
    report = check_agent(UnnormalisedAgent, skip=("policies",), n_instances=1)
    assert report.skipped["policies"] == "skipped on request"
    assert "policies" not in report.passed
