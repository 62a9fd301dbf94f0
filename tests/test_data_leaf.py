"""LEAF JSON reader: small files written here, and one real LEAF file when ../shared is present."""

import gzip
import json
import pathlib

import numpy as np
import pytest

from refsim.data import load_femnist
from refsim.data.leaf import leaf_to_uint8, read_leaf_json

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = SHARED / "emnist/leaf_json/slz-ai__leaf-torch/test/all_data_4_niid_05_keep_0_test_9.json.gz"


def leaf_doc(users, rng, width=784):
    doc = {"users": [], "num_samples": [], "user_data": {}}
    for user, n in users:
        x = rng.integers(0, 256, (n, width)) / 255.0
        doc["users"].append(user)
        doc["num_samples"].append(n)
        doc["user_data"][user] = {"x": x.tolist(), "y": rng.integers(0, 62, n).tolist()}
    return doc


def test_read_two_files_json_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    a = leaf_doc([("f0001_01", 3), ("f0002_02", 1)], rng)
    b = leaf_doc([("f0003_03", 2)], rng)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(b).encode()))
    d = read_leaf_json([tmp_path / "a.json", tmp_path / "b.json.gz"])
    assert d.users == ["f0001_01", "f0002_02", "f0003_03"]
    assert d.groups.tolist() == [0, 0, 0, 1, 2, 2]
    assert d.x.shape == (6, 784)
    np.testing.assert_array_equal(d.x[3], a["user_data"]["f0002_02"]["x"][0])
    assert d.y.tolist() == a["user_data"]["f0001_01"]["y"] + a["user_data"]["f0002_02"]["y"] \
        + b["user_data"]["f0003_03"]["y"]
    images = leaf_to_uint8(d.x)
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.reshape(6, -1) / 255.0, d.x)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("user_data"), "needs keys"),
    (lambda d: d["num_samples"].append(1), "2 users but 3 num_samples"),
    (lambda d: d.__setitem__("num_samples", [4, 1]), "num_samples says 4"),
    (lambda d: d["user_data"].pop("u2"), "'u2' has no x/y"),
    (lambda d: d["user_data"]["u2"].__setitem__("y", [0.5]), "labels must be integers"),
    (lambda d: d["user_data"]["u2"].__setitem__("x", [[0.0, 1.0]]), "rows of 2 values"),
    (lambda d: d["user_data"]["u2"]["x"][0].__setitem__(0, "a"), "numeric rows"),
    (lambda d: d.__setitem__("users", ["u1", "u1"]), "'u1' occurs twice"),
])
def test_bad_json_names_file_and_problem(tmp_path, mutate, message):
    doc = leaf_doc([("u1", 3), ("u2", 1)], np.random.default_rng(1), width=4)
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as info:
        read_leaf_json(path)
    assert "bad.json" in str(info.value)


def test_truncated_and_invalid_files(tmp_path):
    doc = leaf_doc([("u1", 2)], np.random.default_rng(2), width=4)
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(json.dumps(doc).encode())[:-10])
    with pytest.raises(ValueError, match="t.json.gz: truncated gzip"):
        read_leaf_json(path)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc)[:-3])
    with pytest.raises(ValueError, match="t.json: not valid LEAF JSON"):
        read_leaf_json(path)


def test_leaf_to_uint8_refuses_lossy_values():
    with pytest.raises(ValueError, match="k/255"):
        leaf_to_uint8(np.full((1, 784), 0.5))
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        leaf_to_uint8(np.zeros((1, 10)))


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/data LEAF JSON not present")
def test_real_leaf_file_matches_embedded_femnist():
    d = read_leaf_json(REAL)
    assert d.users[:2] == ["f3209_08", "f3115_25"] and len(d.y) == 88
    femnist = load_femnist()
    names = femnist.group_names.tolist()
    for g, user in enumerate(d.users):
        mine = femnist.groups_test == names.index(user)
        np.testing.assert_array_equal(leaf_to_uint8(d.x[d.groups == g]), femnist.x_test[mine])
        np.testing.assert_array_equal(d.y[d.groups == g], femnist.y_test[mine])
