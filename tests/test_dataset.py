"""PreferenceDataset: validation, files without pickle, pandas, splits and derived arrays."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from lr_mdp_env import (
    FeaturePreferenceDataset,
    PreferenceDataset,
    TabularMDP,
    collect_preferences,
    contextual_rewards,
    low_rank_rewards,
    random_mdp,
)


@pytest.fixture(scope="module")
def world():
    mdp = random_mdp(3, 2, 4, stationary=False, seed=0)
    rewards = low_rank_rewards(mdp.n_features, 4, 2, mdp=mdp, seed=1)
    return mdp, rewards


@pytest.fixture(scope="module")
def dataset(world):
    mdp, rewards = world
    return collect_preferences(mdp, rewards, np.array([5, 10, 0, 7]), seed=2)


@pytest.fixture(scope="module")
def contextual_dataset(world):
    mdp, _ = world
    rewards = contextual_rewards(mdp.n_features, 3, 2, n_users=3, mdp=mdp, seed=4)
    return collect_preferences(mdp, rewards, 6, seed=5)


def _assert_same(left, right):
    for name in ("users", "states0", "actions0", "states1", "actions1", "labels", "probabilities"):
        a, b = getattr(left, name), getattr(right, name)
        if a is None:
            assert b is None, name
            continue
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert (left.n_users, left.n_states, left.n_actions, left.horizon) == (
        right.n_users, right.n_states, right.n_actions, right.horizon
    )
    assert left.metadata == right.metadata
    if left.contexts is None:
        assert right.contexts is None
    else:
        np.testing.assert_array_equal(left.contexts, right.contexts)


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["dataset", "contextual_dataset"])
def test_save_load_round_trip(which, request, tmp_path):
    original = request.getfixturevalue(which)
    path = tmp_path / "data.npz"
    original.save(path)
    loaded = PreferenceDataset.load(path)
    _assert_same(original, loaded)
    assert loaded.labels.flags.writeable is False
    _assert_same(original, PreferenceDataset.load(str(path)))


def _rewrite_archive(path, replace=None, remove=()):
    """Rewrite entries of an ``.npz`` (a zip of ``.npy`` files) in place."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for name in remove:
        del entries[name]
    entries.update(replace or {})
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)


def _npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.fixture
def saved(dataset, tmp_path):
    path = tmp_path / "data.npz"
    dataset.save(path)
    return path


def test_truncated_file_is_rejected(saved):
    payload = saved.read_bytes()
    saved.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match=r"is not a readable preference dataset \(truncated or corrupt \.npz\)"):
        PreferenceDataset.load(saved)


def test_file_that_is_not_an_npz_is_rejected(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("user,label\n0,1\n")
    with pytest.raises(ValueError, match=r"is not a readable preference dataset"):
        PreferenceDataset.load(text)
    single = tmp_path / "array.npy"
    np.save(single, np.arange(3))
    with pytest.raises(ValueError, match=r"single \.npy array, not an \.npz archive"):
        PreferenceDataset.load(single)
    with pytest.raises(FileNotFoundError):
        PreferenceDataset.load(tmp_path / "missing.npz")


def test_tampered_array_fails_the_checksum(saved, dataset):
    flipped = 1.0 - np.asarray(dataset.labels)  # still valid labels: only the checksum can tell
    _rewrite_archive(saved, replace={"labels.npy": _npy(flipped)})
    with pytest.raises(ValueError, match=r"failed its checksum: the arrays or metadata were modified after saving"):
        PreferenceDataset.load(saved)


def test_tampered_metadata_fails_the_checksum(saved):
    with zipfile.ZipFile(saved) as archive:
        header = json.loads(str(np.load(io.BytesIO(archive.read("header.npy")))))
    header["metadata"]["skipped"] = 12345
    _rewrite_archive(saved, replace={"header.npy": _npy(np.array(json.dumps(header)))})
    with pytest.raises(ValueError, match=r"failed its checksum"):
        PreferenceDataset.load(saved)


def test_unknown_array_is_rejected(saved):
    _rewrite_archive(saved, replace={"extra.npy": _npy(np.arange(3))})
    with pytest.raises(ValueError, match=r"unknown array\(s\) \['extra'\]"):
        PreferenceDataset.load(saved)


def test_save_adds_the_suffix_and_load_finds_it(tmp_path, dataset):
    written = dataset.save(tmp_path / "data")
    assert written == tmp_path / "data.npz" and written.exists()
    assert np.array_equal(PreferenceDataset.load(tmp_path / "data").labels, dataset.labels)


def test_tampered_dtype_fails_the_checksum(saved, dataset):
    _rewrite_archive(saved, replace={"users.npy": _npy(np.asarray(dataset.users, dtype=np.int32))})
    with pytest.raises(ValueError, match=r"failed its checksum"):
        PreferenceDataset.load(saved)


def test_missing_array_is_named(saved):
    _rewrite_archive(saved, remove=["labels.npy"])
    with pytest.raises(ValueError, match=r"is not a preference dataset: missing array\(s\) \['labels'\]"):
        PreferenceDataset.load(saved)


def test_invalid_header_is_rejected(saved):
    _rewrite_archive(saved, replace={"header.npy": _npy(np.array("not json"))})
    with pytest.raises(ValueError, match=r"has no valid header of format 'lr-mdp-env/preference-dataset/1'"):
        PreferenceDataset.load(saved)
    _rewrite_archive(saved, replace={"header.npy": _npy(np.array('{"format": "other/1"}'))})
    with pytest.raises(ValueError, match=r"has no valid header"):
        PreferenceDataset.load(saved)


def _flipped_copies(payload, stride=1):
    """Copies of ``payload`` with one byte inverted, at every ``stride``-th position."""
    for position in range(0, len(payload), stride):
        damaged = bytearray(payload)
        damaged[position] ^= 0xFF
        yield position, bytes(damaged)


@pytest.mark.parametrize("kind, stride", [(PreferenceDataset, 1), (FeaturePreferenceDataset, 5)])
def test_every_corrupted_byte_is_a_value_error_naming_the_file_or_loads_unchanged_data(kind, stride, tmp_path):
    """Invert each byte of a saved file in turn: the damage is either harmless (zip timestamps,
    padding) and the very same data loads, or ``load`` raises the documented ``ValueError`` that
    names the file, never a zlib, tokenizer or zipfile error. (Both kinds share the reader: every
    byte of the trajectory dataset, every fifth of the feature one.)"""
    mdp = random_mdp(3, 2, 2, seed=0)
    original = collect_preferences(mdp, low_rank_rewards(mdp.n_features, 2, 1, mdp=mdp, seed=1), 3, seed=2)
    if kind is FeaturePreferenceDataset:
        original = FeaturePreferenceDataset(original.feature_differences(mdp), original.users, original.labels,
                                            probabilities=original.probabilities)
    payload = original.save(tmp_path / "original.npz").read_bytes()
    path = tmp_path / "damaged.npz"
    outcomes = {"unchanged": 0, "refused": 0}
    for position, damaged in _flipped_copies(payload, stride):
        path.write_bytes(damaged)
        try:
            loaded = kind.load(path)
        except ValueError as error:
            assert repr(str(path)) in str(error), (position, str(error))
            outcomes["refused"] += 1
            continue
        names = ["users", "labels", "probabilities"]
        names += ["differences"] if kind is FeaturePreferenceDataset else ["states0", "actions0", "states1", "actions1"]
        for name in names:
            np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name), err_msg=f"byte {position}")
        outcomes["unchanged"] += 1
    # Most bytes are compressed data, headers or checksums: their damage must be detected.
    assert outcomes["refused"] > len(payload) // (2 * stride), outcomes


@pytest.mark.parametrize("entry", ["labels.npy", "extra.npy"])
def test_loading_never_unpickles(saved, monkeypatch, entry):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("pickle was used to load a dataset")

    # A valid file loads without pickle at all.
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    PreferenceDataset.load(saved)
    # An object array (which only pickle could decode) is refused, not unpickled.
    _rewrite_archive(saved, replace={entry: _npy(np.array([{"payload": 1}], dtype=object), allow_pickle=True)})
    with pytest.raises(ValueError, match=r"is not a readable preference dataset .*allow_pickle=False"):
        PreferenceDataset.load(saved)
    assert calls == []


# -- validation -------------------------------------------------------------------------------


def _valid_arguments():
    return dict(
        users=np.array([0, 1, 2]),
        states0=np.array([[0, 1], [1, 1], [0, 0]]),
        actions0=np.array([[1, 0], [0, 0], [1, 1]]),
        states1=np.array([[1, 1], [0, 1], [1, 0]]),
        actions1=np.array([[0, 0], [1, 1], [0, 1]]),
        labels=np.array([0.0, 0.5, 1.0]),
        probabilities=np.array([0.2, 0.5, 0.9]),
        n_users=3,
        n_states=2,
        n_actions=2,
        horizon=2,
    )


def _replace_entry(name, index, value):
    array = _valid_arguments()[name].copy()
    array[index] = value
    return {name: array}


@pytest.mark.parametrize(
    "change, error, match",
    [
        (_replace_entry("labels", 1, 0.3), ValueError, r"labels must be 0, 0\.5 or 1, but labels\[1\] = 0\.3"),
        (_replace_entry("labels", 2, -1.0), ValueError, r"labels must be 0, 0\.5 or 1, but labels\[2\] = -1\.0"),
        (_replace_entry("labels", 0, np.nan), ValueError, r"labels must be finite, but labels\[0\] = nan"),
        (dict(labels=np.array([0.0, 1.0])), ValueError, r"labels must have shape \(3,\), got \(2,\)"),
        (_replace_entry("users", 2, 3), ValueError, r"users\[2\] = 3 is outside 0\.\.2"),
        (_replace_entry("users", 0, -1), ValueError, r"users\[0\] = -1 is outside 0\.\.2"),
        (dict(users=np.array([0.0, 1.0, 2.0])), TypeError, r"users must be an integer array, got dtype float64"),
        (dict(users=np.array([[0, 1, 2]])), ValueError, r"users must have 1 axes, got shape \(1, 3\)"),
        (_replace_entry("states0", (0, 1), 2), ValueError, r"states0\[0, 1\] = 2 is outside 0\.\.1"),
        (_replace_entry("actions1", (2, 0), 5), ValueError, r"actions1\[2, 0\] = 5 is outside 0\.\.1"),
        (dict(actions1=np.zeros((3, 3), int)), ValueError, r"actions1 must have shape \(3, 2\), got \(3, 3\)"),
        (dict(states1=np.zeros((3, 2))), TypeError, r"states1 must be an integer array, got dtype float64"),
        (dict(states0=np.zeros(6, int)), ValueError, r"states0 must have 2 axes"),
        (_replace_entry("probabilities", 1, 1.5), ValueError, r"probabilities must lie in \[0, 1\], but probabilities\[1\] = 1\.5"),
        (_replace_entry("probabilities", 0, -0.1), ValueError, r"probabilities must lie in \[0, 1\]"),
        (dict(probabilities=np.full(4, 0.5)), ValueError, r"probabilities must have shape \(3,\), got \(4,\)"),
        (dict(contexts=np.zeros((2, 4))), ValueError, r"contexts must have 3 rows \(one per pair\), got \(2, 4\)"),
        (dict(contexts=np.zeros(3)), ValueError, r"contexts must have 2 axes"),
        (dict(contexts=np.full((3, 2), np.inf)), ValueError, r"contexts must be finite"),
        (dict(metadata=["seed", 1]), TypeError, r"metadata must be a dict, got list"),
        (dict(metadata={"rng": object()}), TypeError, r"metadata must be JSON-serialisable"),
        (dict(n_users=0), ValueError, r"n_users must be at least 1, got 0"),
        (dict(horizon=2.5), TypeError, r"horizon must be an integer, got 2\.5"),
        (dict(n_states=1), ValueError, r"states0\[0, 1\] = 1 is outside 0\.\.0"),
    ],
)
def test_invalid_datasets_are_named(change, error, match):
    arguments = _valid_arguments()
    arguments.update(change)
    with pytest.raises(error, match=match):
        PreferenceDataset(**arguments)


def test_valid_arguments_build_a_frozen_dataset():
    dataset = PreferenceDataset(**_valid_arguments())
    assert len(dataset) == dataset.n_pairs == 3
    np.testing.assert_array_equal(dataset.pairs_per_user(), [1, 1, 1])
    with pytest.raises(ValueError):
        dataset.users[0] = 2
    with pytest.raises(AttributeError):
        dataset.labels = np.zeros(3)


# -- views ------------------------------------------------------------------------------------


def test_to_pandas_columns(dataset, contextual_dataset):
    frame = dataset.to_pandas()
    steps = range(dataset.horizon)
    trajectory_columns = [f"{name}_{h}" for name in ("states0", "actions0", "states1", "actions1") for h in steps]
    assert list(frame.columns) == ["user", "label", "probability", *trajectory_columns]
    assert len(frame) == len(dataset)
    np.testing.assert_array_equal(frame["user"].to_numpy(), dataset.users)
    np.testing.assert_array_equal(frame["label"].to_numpy(), dataset.labels)
    np.testing.assert_array_equal(frame["probability"].to_numpy(), dataset.probabilities)
    np.testing.assert_array_equal(frame[[f"states1_{h}" for h in steps]].to_numpy(), dataset.states1)
    np.testing.assert_array_equal(frame[[f"actions0_{h}" for h in steps]].to_numpy(), dataset.actions0)
    assert all(frame[column].dtype.kind in "if" for column in frame.columns)  # plain values, no tuples
    assert frame.attrs["metadata"] == dataset.metadata
    assert frame.attrs["sizes"] == {"n_users": 4, "n_states": 3, "n_actions": 2, "horizon": 4}
    contextual = contextual_dataset.to_pandas()
    context_columns = [f"context_{k}" for k in range(contextual_dataset.contexts.shape[1])]
    assert list(contextual.columns)[-len(context_columns):] == context_columns
    np.testing.assert_array_equal(contextual[context_columns].to_numpy(), contextual_dataset.contexts)


@pytest.mark.parametrize("which", ["dataset", "contextual_dataset", "human"])
def test_csv_round_trip(which, request, world, tmp_path):
    mdp, _ = world
    original = request.getfixturevalue("dataset" if which == "human" else which)
    if which == "human":  # real data: no probabilities
        original = replace(original, probabilities=None)
    path = tmp_path / "pairs.csv"
    original.to_pandas().to_csv(path, index=False)
    frame = pd.read_csv(path)
    # A CSV keeps no sizes: they come from the MDP (and the users from the data, here all present).
    loaded = PreferenceDataset.from_pandas(frame, mdp=mdp, n_users=original.n_users, metadata=original.metadata)
    _assert_same(original, loaded)
    # In memory the frame carries its sizes and metadata: nothing to add.
    _assert_same(original, PreferenceDataset.from_pandas(original.to_pandas()))


def test_from_arrays_infers_sizes_and_validates_like_the_constructor(world):
    mdp, _ = world
    arguments = {name: value for name, value in _valid_arguments().items()
                 if name not in ("n_users", "n_states", "n_actions", "horizon", "probabilities")}
    lists = {name: value.tolist() for name, value in arguments.items()}
    inferred = PreferenceDataset.from_arrays(**lists)
    assert (inferred.n_users, inferred.n_states, inferred.n_actions, inferred.horizon) == (3, 2, 2, 2)
    assert inferred.probabilities is None
    sized = PreferenceDataset.from_arrays(**arguments, n_users=5, n_states=4, n_actions=3)
    assert (sized.n_users, sized.n_states, sized.n_actions) == (5, 4, 3)
    with pytest.raises(ValueError, match=r"the trajectories have 2 steps but the MDP has horizon 4"):
        PreferenceDataset.from_arrays(**arguments, mdp=mdp)
    bad = dict(arguments, labels=[0.0, 0.3, 1.0])
    with pytest.raises(ValueError, match=r"labels must be 0, 0\.5 or 1, but labels\[1\] = 0\.3"):
        PreferenceDataset.from_arrays(**bad)
    with pytest.raises(ValueError, match=r"states0\[0, 1\] = 1 is outside 0\.\.0"):
        PreferenceDataset.from_arrays(**arguments, n_states=1)
    with pytest.raises(TypeError, match=r"users must be an integer array, got dtype float64"):
        PreferenceDataset.from_arrays(**dict(arguments, users=[0.5, 1.0, 2.0]))


def _frame_of_valid_arguments():
    return PreferenceDataset(**_valid_arguments()).to_pandas()


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda f: f.assign(labels=1.0), ValueError,
         r"unknown column\(s\) \['labels'\]; the columns are user, label, probability, states0_0\.\."),
        (lambda f: f.drop(columns="user"), ValueError, r"the table has no 'user' column"),
        (lambda f: f.drop(columns="actions1_1"), ValueError,
         r"trajectory columns .* for the same steps h = 0\.\.H-1, got \{'states0': 2, 'actions0': 2, "
         r"'states1': 2, 'actions1': 1\}"),
        (lambda f: f.drop(columns="states0_0"), ValueError, r"columns states0_0 \.\. states0_1 must all be present"),
        (lambda f: f.assign(states1_0=[0.0, 1.5, 1.0]), ValueError,
         r"column 'states1_0' must hold integers, but row 1 is 1\.5"),
        (lambda f: f.assign(user=["a", "b", "c"]), TypeError, r"column\(s\) user must hold integers, got dtype object"),
        (lambda f: f.assign(probability=[0.2, np.nan, 0.9]), ValueError,
         r"column 'probability' is missing in row\(s\) \[1\]: give it for every pair or for none"),
        (lambda f: f.assign(label=[0.0, 2.0, 1.0]), ValueError, r"labels must be 0, 0\.5 or 1, but labels\[1\] = 2\.0"),
    ],
)
def test_from_pandas_names_what_is_wrong(change, error, match):
    with pytest.raises(error, match=match):
        PreferenceDataset.from_pandas(change(_frame_of_valid_arguments()))


def test_from_pandas_accepts_integral_floats_and_an_empty_probability_column():
    frame = _frame_of_valid_arguments()
    frame["states0_1"] = frame["states0_1"].astype(float)
    frame["probability"] = np.nan
    loaded = PreferenceDataset.from_pandas(frame)
    assert loaded.probabilities is None and loaded.states0.dtype == np.int64
    np.testing.assert_array_equal(loaded.states0, _valid_arguments()["states0"])


def test_probabilities_are_optional(dataset, tmp_path):
    human = replace(dataset, probabilities=None)
    assert human.probabilities is None
    assert human.subset(human.users == 1).probabilities is None
    train, held = human.split(0.5, seed=0)
    assert train.probabilities is None and held.probabilities is None
    loaded = PreferenceDataset.load(human.save(tmp_path / "human.npz"))
    assert loaded.probabilities is None
    np.testing.assert_array_equal(loaded.labels, dataset.labels)
    assert "probability" not in human.to_pandas().columns


def _rows(dataset):
    """Each pair as a hashable row, to compare datasets as multisets."""
    columns = [dataset.users[:, None], dataset.states0, dataset.actions0, dataset.states1, dataset.actions1,
               dataset.labels[:, None], dataset.probabilities[:, None]]
    return sorted(map(tuple, np.hstack(columns).tolist()))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_split_holds_out_each_users_fraction(dataset, fraction):
    train, held = dataset.split(fraction, seed=3)
    counts = dataset.pairs_per_user()
    np.testing.assert_array_equal(held.pairs_per_user(), np.round(fraction * counts).astype(int))
    np.testing.assert_array_equal(train.pairs_per_user() + held.pairs_per_user(), counts)
    assert _rows(dataset) == sorted(_rows(train) + _rows(held))
    again_train, _ = dataset.split(fraction, seed=3)
    np.testing.assert_array_equal(again_train.states0, train.states0)


def test_split_depends_on_the_seed(dataset):
    first, _ = dataset.split(0.5, seed=1)
    second, _ = dataset.split(0.5, seed=2)
    assert _rows(first) != _rows(second)


def test_subset_by_mask_and_indices(dataset, contextual_dataset):
    mask = dataset.users == 1
    chosen = dataset.subset(mask)
    np.testing.assert_array_equal(chosen.users, 1)
    np.testing.assert_array_equal(chosen.states0, dataset.states0[mask])
    picked = contextual_dataset.subset(np.array([3, 0]))
    np.testing.assert_array_equal(picked.contexts, contextual_dataset.contexts[[3, 0]])
    with pytest.raises(ValueError, match=r"a boolean mask must have shape \(22,\), got \(3,\)"):
        dataset.subset(np.array([True, False, True]))
    with pytest.raises(TypeError, match=r"indices must be integers or a boolean mask, got dtype float64"):
        dataset.subset(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"fraction must be at most 1\.0"):
        dataset.split(1.5)


def test_transition_counts_agree_with_the_trajectories(dataset):
    counts = dataset.transition_counts()
    expected = np.zeros((dataset.horizon, dataset.n_states, dataset.n_actions, dataset.n_states))
    for states, actions in ((dataset.states0, dataset.actions0), (dataset.states1, dataset.actions1)):
        for j in range(len(dataset)):
            for h in range(dataset.horizon - 1):
                expected[h, states[j, h], actions[j, h], states[j, h + 1]] += 1
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == 2 * len(dataset) * (dataset.horizon - 1)


@pytest.mark.parametrize("features", ["one_hot", "one_hot_time", "aggregated", "dense_stage", "dense"])
def test_feature_differences_are_naive_per_step_sums(features):
    rng = np.random.default_rng(0)
    # "aggregated": one non-zero per cell (states 1 and 2 share a feature, weight 0.5), the sparse path.
    aggregated = 0.5 * np.repeat(np.eye(2)[[0, 1, 1]][:, None, :], 2, axis=1)
    spec = {"dense_stage": rng.standard_normal((3, 3, 2, 4)), "dense": rng.standard_normal((3, 2, 4)),
            "aggregated": aggregated}.get(features, features)
    mdp = TabularMDP(random_mdp(3, 2, 3, seed=1).transitions[0], np.full(3, 1 / 3), horizon=3, features=spec)
    rewards = low_rank_rewards(mdp.n_features, 2, 1, seed=0)
    data = collect_preferences(mdp, rewards, 8, seed=3)
    z = data.feature_differences(mdp)
    expected = np.zeros((len(data), mdp.n_features))
    for j in range(len(data)):
        for h in range(mdp.horizon):
            expected[j] += mdp.features[h, data.states1[j, h], data.actions1[j, h]]
            expected[j] -= mdp.features[h, data.states0[j, h], data.actions0[j, h]]
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-12)
    # At most one feature per cell: also available as the canonical sparse matrix of the same values.
    sparse_z = data.feature_differences(mdp, sparse=True)
    assert scipy.sparse.issparse(sparse_z) == features.startswith(("one_hot", "aggregated"))
    if scipy.sparse.issparse(sparse_z):
        assert sparse_z.has_canonical_format and np.all(sparse_z.data != 0)
        np.testing.assert_array_equal(sparse_z.toarray(), z)


def test_incompatible_mdp_is_named(dataset):
    with pytest.raises(ValueError, match=r"dataset has \(n_states, n_actions, horizon\) = \(3, 2, 4\) but the MDP has \(3, 2, 5\)"):
        dataset.feature_differences(random_mdp(3, 2, 5, seed=0))


# -- comparisons given as feature differences ----------------------------------------------------


def _feature_dataset(**changes):
    rng = np.random.default_rng(0)
    arguments = dict(differences=rng.standard_normal((6, 3)), users=np.array([0, 1, 2, 0, 1, 2]),
                     labels=np.array([1.0, 0.0, 0.5, 1.0, 1.0, 0.0]))
    arguments.update(changes)
    return FeaturePreferenceDataset(**arguments)


def test_feature_dataset_infers_users_and_freezes_its_arrays():
    data = _feature_dataset()
    assert (data.n_pairs, data.n_features, data.n_users) == (6, 3, 3)
    assert data.probabilities is None and data.contexts is None
    np.testing.assert_array_equal(data.pairs_per_user(), [2, 2, 2])
    assert data.feature_differences() is data.differences
    with pytest.raises(ValueError):
        data.differences[0, 0] = 1.0
    sparse = _feature_dataset(differences=scipy.sparse.csr_matrix(data.differences))
    np.testing.assert_array_equal(sparse.differences, data.differences)
    assert _feature_dataset(n_users=5).pairs_per_user().tolist() == [2, 2, 2, 0, 0]


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(differences=np.zeros((5, 3))), ValueError, r"differences must have 6 rows \(one per pair\), got shape \(5, 3\)"),
        (dict(differences=np.zeros((6, 0))), ValueError, r"differences must have at least one feature column"),
        (dict(differences=np.full((6, 2), np.nan)), ValueError, r"differences must be finite, but differences\[0, 0\] = nan"),
        (dict(differences=np.zeros(6)), ValueError, r"differences must have 2 axes"),
        (dict(users=np.array([0, 1, 2, 0, 1, 7]), n_users=3), ValueError, r"users\[5\] = 7 is outside 0\.\.2"),
        (dict(users=np.zeros(6)), TypeError, r"users must be an integer array, got dtype float64"),
        (dict(labels=np.full(6, 0.7)), ValueError, r"labels must be 0, 0\.5 or 1, but labels\[0\] = 0\.7"),
        (dict(probabilities=np.full(6, 1.2)), ValueError, r"probabilities must lie in \[0, 1\]"),
        (dict(contexts=np.zeros((2, 2))), ValueError, r"contexts must have 6 rows"),
    ],
)
def test_invalid_feature_datasets_are_named(change, error, match):
    with pytest.raises(error, match=match):
        _feature_dataset(**change)


def test_feature_dataset_round_trips_through_csv_and_npz(tmp_path):
    data = _feature_dataset(probabilities=np.linspace(0.1, 0.9, 6), contexts=np.arange(12.0).reshape(6, 2),
                            metadata={"source": "embeddings"})
    path = tmp_path / "z.csv"
    data.to_pandas().to_csv(path, index=False)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["user", "label", "probability", "z_0", "z_1", "z_2", "context_0", "context_1"]
    for loaded in (FeaturePreferenceDataset.from_pandas(frame, metadata={"source": "embeddings"}),
                   FeaturePreferenceDataset.from_pandas(data.to_pandas()),
                   FeaturePreferenceDataset.load(data.save(tmp_path / "z"))):
        for name in ("differences", "users", "labels", "probabilities", "contexts"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name), err_msg=name)
        assert loaded.n_users == 3 and loaded.metadata == {"source": "embeddings"}
    with pytest.raises(ValueError, match=r"no feature-difference columns z_0"):
        FeaturePreferenceDataset.from_pandas(frame.drop(columns=["z_0", "z_1", "z_2"]))
    with pytest.raises(ValueError, match=r"is not a feature preference dataset: missing array\(s\) \['differences'\]"):
        FeaturePreferenceDataset.load(replace(_dataset_for_wrong_kind(), metadata={}).save(tmp_path / "pairs"))


def _dataset_for_wrong_kind():
    return PreferenceDataset(**_valid_arguments())


def test_feature_dataset_subsets_and_splits_by_user():
    data = _feature_dataset(probabilities=np.full(6, 0.5))
    picked = data.subset(np.array([5, 0]))
    np.testing.assert_array_equal(picked.differences, data.differences[[5, 0]])
    np.testing.assert_array_equal(picked.probabilities, [0.5, 0.5])
    train, held = data.split(0.5, seed=0)
    np.testing.assert_array_equal(held.pairs_per_user(), [1, 1, 1])
    assert train.n_pairs + held.n_pairs == 6 and train.n_users == 3
