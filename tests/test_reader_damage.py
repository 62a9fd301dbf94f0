"""Every reader of a file a user hands refsim, under four kinds of damage: one byte flipped
(at many positions), truncated (at many lengths), empty, and random bytes.

API level: a ValueError naming the file in one line, or (for a flip that no checksum covers)
a result of the file's own shape. Formats with checksums (.npz: CRC-32 per member; .gz:
CRC-32 of the data) must then give exactly the undamaged result. CLI level: exit code 2,
one line on stderr naming the file, no traceback (refsim run --resume, refsim compare,
refsim golden --check, refsim run --config).
"""

import gzip
import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import cli
from refsim.cli import run_settings
from refsim.cli._common import UsageError
from refsim.data import datasets, load_femnist, load_mnist, read_idx, read_leaf_json
from refsim.data.idx import encode_idx
from refsim.fedavg import FedAvgConfig, from_images, run_fedavg
from refsim.fedavg.storage import load_checkpoint
from refsim.nn import logistic
from refsim.safe_npz import read_npz as read_npz_file
from refsim.validation.golden import SHIPPED_DIR, read_golden_dir
from refsim.validation.golden_check import check_files
from refsim.validation.weight_files import load_weights


def damages(data: bytes, seed: int = 0, flips: int = 24, cuts: int = 10):
    """(kind, damaged bytes): ``flips`` single-byte flips (the first, the last, the rest spread
    over the file, random masks), ``cuts`` truncations (0 < n < len, spread), empty, and 200
    random bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for pos in np.unique(np.linspace(0, len(data) - 1, flips).astype(int)):
        d = bytearray(data)
        d[pos] ^= int(rng.integers(1, 256))
        out.append((f"flip@{pos}", bytes(d)))
    for n in np.unique(np.linspace(1, len(data) - 1, cuts).astype(int)):
        out.append((f"cut@{n}", data[:n]))
    return out + [("empty", b""), ("random", rng.bytes(200))]


def _one_line_naming(err: Exception, name: str) -> None:
    text = str(err)
    assert "\n" not in text and name in text, text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 3-round run of the logistic model with a trace, and its data."""
    where = tmp_path_factory.mktemp("run")
    data = from_images(load_mnist(), np.float32, train_limit=120, test_limit=50)
    parts = [np.arange(k * 30, (k + 1) * 30) for k in range(4)]
    cfg = FedAvgConfig(fraction=0.5, epochs=1, batch_size=10, lr=0.1, rounds=3, seed=1)
    run_fedavg(cfg, logistic(), data, parts, run_dir=where, trace=True)
    return where


def _check(read, path, data: bytes, same):
    """Write each damaged version of ``data`` to ``path`` and read it with ``read``: a
    ValueError naming the file, or (a flip no checksum covers; a JSON file cut after its
    last brace) a result ``same`` as the undamaged one."""
    pristine = read()
    for kind, damaged in damages(data):
        path.write_bytes(damaged)
        try:
            result = read()
        except ValueError as err:
            _one_line_naming(err, path.name)
            continue
        assert kind not in ("empty", "random") and same(result, pristine), kind
    path.write_bytes(data)


def _same_checkpoint(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[3] == b[3] and \
        a[2].keys() == b[2].keys()


def test_checkpoint(run_dir, tmp_path):
    path = tmp_path / "checkpoint.npz"
    shutil.copy(run_dir / "checkpoint.npz", path)
    _check(lambda: load_checkpoint(path), path, path.read_bytes(), _same_checkpoint)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint.npz is empty \(0 bytes\); delete it to "
                                         r"start over, or restore a copy$"):
        load_checkpoint(path)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_checkpoint_flips_anywhere(run_dir, data):
    path = run_dir / "checkpoint.npz"
    raw = path.read_bytes()
    pristine = load_checkpoint(path)
    pos, mask = data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(1, 255))
    damaged = bytearray(raw)
    damaged[pos] ^= mask
    bad = run_dir / "bad.npz"  # a new file in the shared run directory
    bad.write_bytes(bytes(damaged))
    try:
        assert _same_checkpoint(load_checkpoint(bad), pristine)
    except ValueError as err:
        _one_line_naming(err, "bad.npz")
        assert str(err).endswith("delete it to start over, or restore a copy")


def _tensors(series):
    return [list(s.tensors.values()) for s in series.snapshots]


def _same_tensors(a, b):
    return all(len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
               for x, y in zip(_tensors(a), _tensors(b))) and len(a.snapshots) == len(b.snapshots)


@pytest.mark.parametrize("member", ["init.json", "init.npz", "round_000002.npz",
                                    "round_000003.npz"])
def test_trace_files(run_dir, member, tmp_path):
    trace = tmp_path / "trace"
    shutil.copytree(run_dir / "trace", trace)
    path = trace / member
    # init.json has no checksum: a flip may rename the model to one refsim does not know (a
    # reference model's layout is checked against the model's own), never cut the weights
    # otherwise (the layout must tile the vector)
    _check(lambda: load_weights(trace), path, path.read_bytes(), _same_tensors)


@pytest.mark.parametrize("edit", [
    lambda lay: [["fc.iias", *lay[0][1:]], *lay[1:]],  # one flipped byte in a name
    lambda lay: [[lay[0][0], [784, 11], 0], [lay[1][0], [9], 784 * 11]],  # shapes that tile
    lambda lay: lay[:1],  # a tensor missing
])
def test_a_trace_layout_that_still_parses_but_is_not_the_models(run_dir, tmp_path, edit):
    trace = tmp_path / "trace"
    shutil.copytree(run_dir / "trace", trace)
    header = json.loads((trace / "init.json").read_text())
    header["layout"] = edit(header["layout"])
    (trace / "init.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="its layout is not that of model logistic") as err:
        load_weights(str(trace))
    _one_line_naming(err.value, "init.json")


def test_named_arrays_and_flat_vectors(run_dir, tmp_path):
    params = load_checkpoint(run_dir / "checkpoint.npz")[1]
    named = tmp_path / "weights.npz"
    np.savez(named, **{k: v for k, v in logistic().views(params).items()})
    _check(lambda: load_weights(named), named, named.read_bytes(), _same_tensors)
    flat = tmp_path / "final_weights.npy"
    np.save(flat, params)
    pristine = flat.read_bytes()
    for kind, damaged in damages(pristine):
        flat.write_bytes(damaged)
        try:
            series = load_weights(flat)
        except ValueError as err:
            _one_line_naming(err, "final_weights.npy")
            continue
        # .npy carries no checksum: a flip in the data gives other numbers, not other shapes
        assert kind.startswith("flip") and series.model == "logistic", kind


def test_golden_files(tmp_path):
    from importlib import resources
    root = resources.files("refsim.validation") / SHIPPED_DIR
    for entry in root.iterdir():
        (tmp_path / entry.name).write_bytes(entry.read_bytes())
    path = tmp_path / "aggregation.npz"

    def check():
        results = check_files(read_golden_dir(tmp_path))
        assert all(r.ok for r in results)
        return results

    _check(check, path, path.read_bytes(), lambda a, b: True)  # check() asserts all pass


def test_idx_files(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    raw, gz = tmp_path / "images-idx3-ubyte", tmp_path / "images-idx3-ubyte.gz"
    raw.write_bytes(encode_idx(images))
    gz.write_bytes(encode_idx(images, compress=True))
    for path in (raw, gz):
        data = path.read_bytes()
        for kind, damaged in damages(data):
            path.write_bytes(damaged)
            try:
                back = read_idx(path)
            except ValueError as err:
                _one_line_naming(err, path.name)
                continue
            assert kind.startswith("flip"), kind
            if path == gz:  # gzip's CRC-32 covers the data; a header flip (mtime) is harmless
                np.testing.assert_array_equal(back, images)
            else:  # raw IDX has no checksum: a flipped pixel is another pixel
                assert back.shape == images.shape or back.size == images.size


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_idx_random_bytes(raw):
    from refsim.data import parse_idx
    try:
        parse_idx(raw, "x.idx")
    except ValueError as err:
        _one_line_naming(err, "x.idx")


def test_keras_mnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "mnist.npz"
    x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 6, dtype=np.uint8)
    np.savez_compressed(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    _check(lambda: load_mnist(path), path, path.read_bytes(),
           lambda a, b: np.array_equal(a.x_train, b.x_train))


LEAF = {"users": ["f_0", "f_1"], "num_samples": [2, 1],
        "user_data": {"f_0": {"x": [[0.0, 1.0], [0.5, 0.25]], "y": [3, 4]},
                      "f_1": {"x": [[1.0, 0.0]], "y": [7]}}}


@pytest.mark.parametrize("compressed", [False, True])
def test_leaf_json(tmp_path, compressed):
    text = json.dumps(LEAF).encode()
    path = tmp_path / ("data.json.gz" if compressed else "data.json")
    data = gzip.compress(text, mtime=0) if compressed else text
    path.write_bytes(data)
    pristine = read_leaf_json(path)
    for kind, damaged in damages(data):
        path.write_bytes(damaged)
        try:
            back = read_leaf_json(path)
        except ValueError as err:
            _one_line_naming(err, path.name)
            continue
        assert kind.startswith("flip"), kind  # JSON has no checksum: a digit may change
        if compressed:
            np.testing.assert_array_equal(back.x, pristine.x)


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["users", "num_samples", "user_data", "x",
                                                       "y", "f_0"]), inner, max_size=4),
                    max_leaves=12))
def test_leaf_json_of_any_structure(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("leaf") / "any.json"
    path.write_text(json.dumps(doc))
    try:
        read_leaf_json(path)
    except ValueError as err:
        _one_line_naming(err, "any.json")


def test_embedded_femnist(monkeypatch):
    raw = datasets.embedded_bytes("femnist_leaf_212writers.npz")
    for kind, damaged in damages(raw, flips=6, cuts=3):
        monkeypatch.setattr(datasets, "embedded_bytes", lambda name, verify=True: damaged)
        try:
            load_femnist(verify=False)
        except ValueError as err:
            _one_line_naming(err, "femnist_leaf_212writers.npz")
            continue
        assert kind.startswith("flip"), kind


def test_embedded_files_are_checked_against_their_md5(monkeypatch, tmp_path):
    (tmp_path / "embedded").mkdir()
    raw = datasets.embedded_bytes("t10k-labels-idx1-ubyte.gz")
    (tmp_path / "embedded" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        raw[:-1] + bytes([raw[-1] ^ 1]))
    monkeypatch.setattr(datasets.resources, "files", lambda package: tmp_path)
    with pytest.raises(ValueError, match="embedded file t10k-labels-idx1-ubyte.gz is corrupt: "
                                         "MD5"):
        datasets.embedded_bytes("t10k-labels-idx1-ubyte.gz")


TOML = b'model = "2nn"\npartition = ["iid"]\nrounds = 3\nlr = 0.05\nbatch_size = [10, 50]\n'


def test_toml_config(tmp_path):
    path = tmp_path / "run.toml"
    parser = cli.build_parser()
    for kind, damaged in damages(TOML):
        path.write_bytes(damaged)
        try:
            run_settings.settings(parser.parse_args(["run", "--config", str(path)]))
        except UsageError as err:
            _one_line_naming(err, "run.toml" if "--config" in str(err) else "")
            continue
        # TOML has no checksum, and a file cut at a line end is valid: fewer settings
        assert kind.startswith("flip") or kind.startswith("cut"), kind


# -- the command line: exit code 2, one line naming the file, no traceback --------------------

def _cli_error(argv, capsys, name: str, prog: str) -> int:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"refsim {prog}: error: "), err
        assert name in err and "Traceback" not in err, err
    return code


def test_cli_run_resume_with_a_damaged_checkpoint(tmp_path, capsys):
    argv = ["run", "--rounds", "2", "--clients", "5", "--train-limit", "200", "--test-limit",
            "50", "--partition", "iid", "--codec", "float", "--quiet", "--plot", "no",
            "--out", str(tmp_path)]
    ckpt = tmp_path / "iid-float" / "checkpoint.npz"
    assert cli.main(argv) == 0
    data = ckpt.read_bytes()
    done = (tmp_path / "iid-float" / "metrics.csv").read_bytes()
    for kind, damaged in damages(data, flips=5, cuts=3):
        ckpt.write_bytes(damaged)
        code = _cli_error([*argv, "--resume"], capsys, "checkpoint.npz", "run")
        if code == 2:
            assert ckpt.read_bytes() == damaged  # nothing overwritten: the user decides
        else:  # a flip of a field no checksum covers: the run resumed, same results
            assert code == 0 and kind.startswith("flip"), kind
            assert (tmp_path / "iid-float" / "metrics.csv").read_bytes() == done


def test_cli_compare_with_damaged_inputs(run_dir, tmp_path, capsys):
    trace = tmp_path / "trace"
    shutil.copytree(run_dir / "trace", trace)
    ckpt = tmp_path / "checkpoint.npz"
    shutil.copy(run_dir / "checkpoint.npz", ckpt)
    flat = tmp_path / "final_weights.npy"
    np.save(flat, load_checkpoint(ckpt)[1])
    for path, other in ((ckpt, trace), (trace / "init.json", ckpt), (trace / "init.npz", ckpt),
                        (trace / "round_000003.npz", ckpt), (flat, ckpt)):
        data = path.read_bytes()
        target = trace if path.parent == trace else path
        for kind, damaged in damages(data, flips=8, cuts=4):
            path.write_bytes(damaged)
            code = _cli_error(["compare", str(target), str(other)], capsys, path.name,
                              "compare")
            # 0 or 1: a flip of the .npy's data (no checksum) compared as other numbers, or
            # one no checksum covers, or init.json cut after its last brace
            assert code == 2 or kind.startswith("flip") or \
                kind.startswith("cut") and path.suffix == ".json", (path.name, kind)
        path.write_bytes(data)


def test_cli_golden_check_with_a_damaged_file(tmp_path, capsys):
    from importlib import resources
    for entry in (resources.files("refsim.validation") / SHIPPED_DIR).iterdir():
        (tmp_path / entry.name).write_bytes(entry.read_bytes())
    path = tmp_path / "sgd_step.npz"
    data = path.read_bytes()
    for kind, damaged in damages(data, flips=8, cuts=4):
        path.write_bytes(damaged)
        code = _cli_error(["golden", "--check", str(tmp_path)], capsys, "sgd_step.npz",
                          "golden")
        assert code == 2 or (code == 0 and kind.startswith("flip")), kind


def test_cli_run_config_with_a_damaged_toml(tmp_path, capsys):
    path = tmp_path / "run.toml"
    for kind, damaged in damages(TOML, flips=12, cuts=5):
        path.write_bytes(damaged)
        # --clients 0 stops every run whose file was read: exit 2 either way, never a run
        code = cli.main(["run", "--config", str(path), "--clients", "0"])
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (kind, err)
        assert err.startswith("refsim run: error: --config: ") or "--clients" in err, err


def test_a_damaged_shipped_golden_index_says_reinstall(tmp_path, monkeypatch):
    from importlib import resources

    from refsim.validation import golden
    shipped = tmp_path / SHIPPED_DIR
    shutil.copytree(resources.files("refsim.validation") / SHIPPED_DIR, shipped)
    monkeypatch.setattr(golden.resources, "files", lambda package: tmp_path)
    index = (shipped / "index.json").read_bytes()
    for kind, damaged in damages(index, flips=6, cuts=3):
        (shipped / "index.json").write_bytes(damaged)
        try:
            golden.shipped_files()
        except ValueError as err:
            assert "reinstall refsim" in str(err) and "\n" not in str(err), kind
            continue
        # a flipped description, or the file cut after its last brace: still consistent
        assert kind not in ("empty", "random"), kind


def test_cli_compare_steps_with_damaged_inputs(run_dir, tmp_path, capsys):
    trace = tmp_path / "trace"
    shutil.copytree(run_dir / "trace", trace)
    clients = json.loads((trace / "round_000001.json").read_text())["clients"]
    w = np.zeros(logistic().num_params, np.float32)
    candidate = tmp_path / "server.npz"
    np.savez(candidate, start=w, **{"global": w}, **{f"update_{k}": w for k in clients})
    argv = ["compare-steps", str(candidate), str(trace), "--round", "1", "--server"]
    assert cli.main(argv) in (0, 1)  # the undamaged inputs are read
    capsys.readouterr()
    for path in (candidate, trace / "init.npz", trace / "round_000001.json",
                 trace / "init.json"):
        data = path.read_bytes()
        for kind, damaged in damages(data, flips=60, cuts=3):
            path.write_bytes(damaged)
            code = _cli_error(argv, capsys, path.name, "compare-steps")
            assert code == 2 or kind.startswith("flip") or \
                kind.startswith("cut") and path.suffix == ".json", (path.name, kind)
        path.write_bytes(data)


def test_cli_compare_steps_of_a_client_with_damaged_inputs(run_dir, tmp_path, capsys):
    trace = tmp_path / "trace"
    shutil.copytree(run_dir / "trace", trace)
    client = json.loads((trace / "round_000001.json").read_text())["clients"][0]
    w = read_npz_file(trace / "init.npz")["weights"]
    candidate = tmp_path / "steps.npz"
    np.savez(candidate, step_0=w, step_1=w)
    argv = ["compare-steps", str(candidate), str(trace), "--round", "1", "--client",
            str(client)]
    assert cli.main(argv) in (0, 1)  # the undamaged inputs are read
    capsys.readouterr()
    for path in (candidate, trace / "round_000001.npz", trace / "round_000001.json"):
        data = path.read_bytes()
        for kind, damaged in damages(data, flips=16, cuts=3):
            path.write_bytes(damaged)
            code = _cli_error(argv, capsys, path.name, "compare-steps")
            assert code == 2 or kind.startswith("flip") or \
                kind.startswith("cut") and path.suffix == ".json", (path.name, kind)
        path.write_bytes(data)
