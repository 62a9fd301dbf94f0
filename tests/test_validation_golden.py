"""The golden vectors (refsim/validation/golden*.py, ``refsim golden``, docs/golden.md).

Three kinds of check. (1) Regenerating gives the committed files byte for byte, twice in one
process too, and index.json describes them. (2) Independent re-checks, written here from the
formulas of the docs, so the vectors mean what docs/golden.md says: plain NumPy layers and
models, a pure-Python SplitMix64, the quantizer formula, a Huffman decoder written from
docs/formats.md, a 20-line NumPy FedAvg; and refsim's own fast paths (``Model.loss_and_grad``,
``run_fedavg``) agree with the loop-oracle values the files hold. (3) The command line.
"""

import hashlib
import json
import math
import pathlib
import re
import zipfile

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import refsim
from refsim import cli
from refsim.compress import Codec
from refsim.fedavg import run_fedavg
from refsim.nn import cnn_cifar, cnn_mnist, logistic, mlp_2nn
from refsim.validation import golden_fedavg
from refsim.validation.golden import (FORMAT_VERSION, GOLDEN_FILES, INDEX, read_golden_dir,
                                      shipped_files, write_golden)
from refsim.validation.golden_check import check_files
from refsim.validation.golden_inputs import fixed_params
from refsim.validation.golden_models import golden_mlp
from refsim.validation.stable_npz import npz_bytes, read_npz

SHIPPED = pathlib.Path(refsim.__file__).parent / "validation" / "golden_v1"
DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "golden.md"
NAMES = [f.name for f in GOLDEN_FILES]


def _cli(argv, capsys):
    """``refsim ARGV`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- (1) regeneration and the index ----------------------------------------------------------

@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """The golden files written by ``write_golden`` (one regeneration for the module)."""
    out = tmp_path_factory.mktemp("golden") / "v1"
    index = write_golden(out)
    assert index["format_version"] == FORMAT_VERSION and len(index["files"]) == len(NAMES)
    return out


@pytest.fixture(scope="module")
def vectors(out_dir):
    """{file name: {array name: array}} read back with allow_pickle=False."""
    return {name: dict(np.load(out_dir / name, allow_pickle=False)) for name in NAMES}


@pytest.fixture(scope="module")
def index(out_dir):
    return json.loads((out_dir / INDEX).read_text())


def test_regenerating_gives_the_committed_files_byte_for_byte(out_dir):
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(NAMES + [INDEX])
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(NAMES + [INDEX])
    for name in NAMES + [INDEX]:
        assert (out_dir / name).read_bytes() == (SHIPPED / name).read_bytes(), (
            f"{name} regenerates differently from refsim/validation/golden_v1/{name}: a change "
            f"altered the golden vectors (if intended, regenerate them: docs/golden.md, Layout)")


def test_generating_twice_in_one_process_is_identical(out_dir, tmp_path, capsys):
    code, out, err = _cli(["golden", "--out", str(tmp_path / "again")], capsys)  # refsim golden
    assert code == 0 and err == "" and "wrote 16 golden files and index.json" in out
    assert read_golden_dir(tmp_path / "again") == read_golden_dir(out_dir)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(NAMES + [INDEX])


def test_the_index_describes_every_file(out_dir, index):
    assert index["format_version"] == FORMAT_VERSION == 1
    assert [e["name"] for e in index["files"]] == NAMES
    assert set(index) == {"format_version", "spec", "files"}  # no date, no refsim version
    assert refsim.__version__ not in (out_dir / INDEX).read_text()
    total = 0
    for entry in index["files"]:
        data = (out_dir / entry["name"]).read_bytes()
        total += len(data)
        assert set(entry) == {"name", "description", "sha256", "bytes", "tolerance", "arrays"}
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        with np.load(out_dir / entry["name"], allow_pickle=False) as z:
            listed = [(a["name"], a["dtype"], tuple(a["shape"])) for a in entry["arrays"]]
            assert listed == [(k, z[k].dtype.str, z[k].shape) for k in sorted(z.files)]
            assert int(z["format_version"]) == FORMAT_VERSION
            floats = {z[k].dtype.name for k in z.files if z[k].dtype.kind == "f"}
            assert set(entry["tolerance"]) == floats
            assert all(z[k].dtype.kind in "biuf" for k in z.files)
        with zipfile.ZipFile(out_dir / entry["name"]) as zf:  # the byte-stable container
            infos = zf.infolist()
            assert [i.filename for i in infos] == sorted(i.filename for i in infos)
            assert {(i.date_time, i.compress_type) for i in infos} == {
                ((1980, 1, 1, 0, 0, 0), zipfile.ZIP_STORED)}
    assert total < 400_000, f"the golden files take {total} bytes"
    assert shipped_files()[INDEX] == (out_dir / INDEX).read_bytes()


def test_the_npz_writer_is_byte_stable_and_refuses_pickles():
    arrays = {"b": np.arange(3, dtype=">i4"), "a.x": np.float64(2.5), "c": np.eye(2).T}
    data = npz_bytes(arrays)
    assert data == npz_bytes(dict(reversed(list(arrays.items()))))
    back = read_npz(data)
    assert back["a.x"].shape == () and back["b"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(back["c"], np.eye(2))
    with pytest.raises(TypeError, match="object"):
        npz_bytes({"o": np.array([{}], dtype=object)})
    with pytest.raises(ValueError, match="array name"):
        npz_bytes({"a/b": np.zeros(1)})
    with pytest.raises(ValueError, match="<bytes> is truncated or corrupt"):
        read_npz(data[:40])


def test_docs_golden_md_specifies_every_array_and_tolerance(index):
    """Each file has a section whose tables name every array (``<case>`` = any name part), and
    a row of the tolerance table with the index's numbers."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^### `([a-z0-9_]+\.npz)`$", text, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2]))
    assert list(sections) == NAMES
    for entry in index["files"]:
        tokens = re.findall(r"`([^`]+)`", sections[entry["name"]])
        patterns = [re.compile(re.sub(r"<[a-z]+>", "[A-Za-z0-9_]+", re.escape(t).replace(
            r"\<", "<").replace(r"\>", ">"))) for t in tokens]
        for array in entry["arrays"]:
            assert array["name"] == "format_version" or any(
                p.fullmatch(array["name"]) for p in patterns), (
                f"docs/golden.md does not describe {entry['name']}: {array['name']}")
        row = re.search(rf"^\| `{re.escape(entry['name'])}` \| ([^|]+) \|", text, flags=re.M)
        assert row, f"no tolerance row for {entry['name']}"
        tol = entry["tolerance"]
        if all(t["rtol"] == t["atol"] == 0 for t in tol.values()):
            expected = "exact"
        else:
            expected = "; ".join(f"{d}: rtol {t['rtol']:.0e}, atol {t['atol']:.0e}"
                                 for d, t in sorted(tol.items()))
        assert row.group(1).strip() == expected, entry["name"]


# -- (2) independent re-checks ---------------------------------------------------------------

M64 = 2**64 - 1


def splitmix64(key: int, i: int) -> int:
    """docs/compression.md section 1, in Python integers."""
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def uniform(key: int, i: int) -> float:
    return (splitmix64(key, i) >> 11) * 2.0**-53


def close(actual, expected, what, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def conv_ref(x, w, b, pads, dy):
    """Convolution as a sum over sliding windows (einsum), its three gradients by the taps."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), tuple(pads), tuple(pads)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # (N, C, Ho, Wo, K, K)
    y = np.einsum("ncijpq,ocpq->noij", win, w) + b[None, :, None, None]
    dxp = np.zeros_like(xp)
    ho, wo = y.shape[2:]
    for p in range(k):
        for q in range(k):
            dxp[:, :, p:p + ho, q:q + wo] += np.einsum("noij,oc->ncij", dy, w[:, :, p, q])
    h, w_ = x.shape[2:]
    return (y, dxp[:, :, pads[0]:pads[0] + h, pads[0]:pads[0] + w_],
            np.einsum("noij,ncijpq->ocpq", dy, win), dy.sum(axis=(0, 2, 3)))


def test_layer_vectors_match_plain_numpy(vectors):
    v = vectors["layer_conv2d.npz"]
    assert v["same.padding"].tolist() == [1, 2] and v["valid.padding"].tolist() == [0, 0]
    for case in ("valid", "same", "pad1"):
        g = {k.split(".", 1)[1]: a for k, a in v.items() if k.startswith(case + ".")}
        for name, ref in zip(("y", "dx", "dw", "db"),
                             conv_ref(g["x"], g["w"], g["b"], g["padding"], g["dy"])):
            close(g[name], ref, f"conv2d {case} {name}")
    d = vectors["layer_dense.npz"]
    close(d["y"], d["x"] @ d["w"] + d["b"], "dense y")
    close(d["dx"], d["dy"] @ d["w"].T, "dense dx")
    close(d["dw"], d["x"].T @ d["dy"], "dense dw")
    close(d["db"], d["dy"].sum(axis=0), "dense db")
    r = vectors["layer_relu.npz"]
    assert (r["x"] == 0).any() and (r["x"] < 0).any()
    np.testing.assert_array_equal(r["y"], np.maximum(r["x"], 0))
    np.testing.assert_array_equal(r["dx"], np.where(r["x"] > 0, r["dy"], 0.0))
    f = vectors["layer_flatten.npz"]
    np.testing.assert_array_equal(f["y"], f["x"].reshape(2, -1))
    np.testing.assert_array_equal(f["dx"], f["dy"].reshape(f["x"].shape))
    s = vectors["loss_softmax_cross_entropy.npz"]
    z, y = s["z"], s["labels"]
    shifted = z - z.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    close(s["loss"], np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(4), y]),
          "loss")
    close(s["dz"], (p - np.eye(5)[y]) / 4, "dz")


def test_maxpool_vectors_route_to_the_first_maximum(vectors):
    v = vectors["layer_maxpool2d.npz"]
    for case in ("valid", "same"):
        x, dy = v[f"{case}.x"], v[f"{case}.dy"]
        n, c, ho, wo = dy.shape
        if case == "same":
            x = np.pad(x, ((0, 0), (0, 0), (0, 2 * ho - x.shape[2]), (0, 2 * wo - x.shape[3])),
                       constant_values=-np.inf)
        win = x[:, :, :2 * ho, :2 * wo].reshape(n, c, ho, 2, wo, 2).transpose(0, 1, 2, 4, 3, 5)
        win = win.reshape(n, c, ho, wo, 4)  # taps (0,0), (0,1), (1,0), (1,1)
        assert (np.sort(win, axis=-1)[..., -1] == np.sort(win, axis=-1)[..., -2]).any(), "ties"
        np.testing.assert_array_equal(v[f"{case}.y"], win.max(axis=-1))
        np.testing.assert_array_equal(v[f"{case}.argmax"], win.argmax(axis=-1))
        dx = np.zeros((n, c, 2 * ho, 2 * wo))
        k = win.argmax(axis=-1)
        ni, ci, ii, ji = np.indices(k.shape)
        dx[ni, ci, 2 * ii + k // 2, 2 * ji + k % 2] = dy
        h, w = v[f"{case}.x"].shape[2:]
        full = np.zeros((n, c, h, w))
        full[:, :, :min(h, 2 * ho), :min(w, 2 * wo)] = dx[:, :, :h, :w]
        np.testing.assert_array_equal(v[f"{case}.dx"], full)


def test_model_params_follow_the_documented_rule_and_refsim_agrees(vectors, index):
    v = vectors["models.npz"]
    tol = {e["name"]: e["tolerance"] for e in index["files"]}["models.npz"]["float64"]
    for factory, key in ((cnn_mnist, 701), (mlp_2nn, 711), (logistic, 721), (cnn_cifar, 731)):
        model, m = factory(), factory().name
        bounds = {}
        for spec in model.layout:  # fan_in from the shapes, bias like its weight
            layer = spec.name.rsplit(".", 1)[0]
            fan_in = int(np.prod(spec.shape[1:])) if len(spec.shape) == 4 else spec.shape[0]
            bounds.setdefault(layer, 1.0 / math.sqrt(fan_in))
        positions = v[f"{m}.positions"]
        offsets = v[f"{m}.tensor_offsets"]
        assert offsets.tolist() == [s.offset for s in model.layout] + [model.num_params]
        for spec in model.layout:
            mine = positions[(positions >= spec.offset) & (positions < spec.offset + spec.size)]
            assert mine[0] == spec.offset and mine[-1] == spec.offset + spec.size - 1
            assert len(mine) == min(spec.size, 16)
            bound = bounds[spec.name.rsplit(".", 1)[0]]
            expected = [bound * (2.0 * uniform(key, int(i)) - 1.0) for i in mine]
            np.testing.assert_array_equal(v[f"{m}.params_at"][np.isin(positions, mine)], expected)
        # refsim's vectorised path (BLAS) against the loop-oracle values of the file
        params = fixed_params(model, key)  # the rule just checked at the sampled positions
        np.testing.assert_array_equal(params[positions], v[f"{m}.params_at"])
        loss, grad = model.loss_and_grad(params, v[f"{m}.x"], v[f"{m}.labels"])
        close(v[f"{m}.loss"], loss, f"{m} loss", tol["rtol"], tol["atol"])
        close(v[f"{m}.logits"], model.forward(params, v[f"{m}.x"]), f"{m} logits",
              tol["rtol"], tol["atol"])
        close(v[f"{m}.grad_at"], grad[positions], f"{m} grad", tol["rtol"], tol["atol"])
        norms = [np.linalg.norm(grad[s.offset:s.offset + s.size]) for s in model.layout]
        close(v[f"{m}.grad_norms"], norms, f"{m} grad norms", 1e-12)
        if m == "logistic":  # and a plain NumPy softmax regression, written out
            x = v[f"{m}.x"].reshape(2, -1)
            w, b, y = params[:7840].reshape(784, 10), params[7840:], v[f"{m}.labels"]
            z = x @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            close(v[f"{m}.loss"], -np.mean(np.log(p[[0, 1], y])), "logistic loss (NumPy)")
            d = (p - np.eye(10)[y]) / 2
            close(v[f"{m}.grad_at"], np.concatenate([(x.T @ d).ravel(), d.sum(0)])[positions],
                  "logistic grad (NumPy)")


def test_sgd_step_casts_the_learning_rate_to_the_dtype(vectors):
    v = vectors["sgd_step.npz"]
    model = golden_mlp()
    for d, tol in (("float64", (1e-10, 1e-12)), ("float32", (2e-4, 2e-6))):
        p, g = v[f"{d}.params"], v[f"{d}.grad"]
        assert p.dtype == g.dtype == v[f"{d}.params_after"].dtype == np.dtype(d)
        np.testing.assert_array_equal(v[f"{d}.params_after"], p - p.dtype.type(v["lr"]) * g)
        loss, grad = model.loss_and_grad(p, v[f"{d}.x"], v["labels"])
        close(grad, g, f"{d} grad", *tol)
        close(loss, v[f"{d}.loss"], f"{d} loss", *tol)


def test_aggregation_is_weighted_by_client_size(vectors):
    v = vectors["aggregation.npz"]
    n = v["weights"]
    assert len(set(n.tolist())) == len(n), "client sizes must differ"
    for d in ("float64", "float32"):
        u = v[f"{d}.updates"].astype(np.float64)
        expected = ((n[0] * u[0] + n[1] * u[1]) + n[2] * u[2]) / n.sum()
        np.testing.assert_array_equal(v[f"{d}.mean"], expected.astype(d))
        np.testing.assert_array_equal(v[f"{d}.uniform_mean"], (u.sum(axis=0) / 3).astype(d))
        assert np.abs(v[f"{d}.mean"] - v[f"{d}.uniform_mean"]).min() > 1e-3


def test_server_optimizers_follow_the_flower_formulas(vectors, index):
    v = vectors["server_optimizers.npz"]
    tolerance = {e["name"]: e["tolerance"] for e in index["files"]}["server_optimizers.npz"]
    for d in ("float64", "float32"):
        for name in ("sgd", "momentum", "fedadam", "adam", "fedyogi", "fedadagrad"):
            h = {k: float(v[f"{name}.{k}"]) for k in ("lr", "momentum", "beta1", "beta2", "tau")}
            w = v[f"{d}.params0"].astype(np.float64)
            mom = m1 = m2 = np.zeros_like(w)
            for t in range(1, 4):
                delta = v[f"{d}.mean_deltas"][t - 1].astype(np.float64)
                if name in ("sgd", "momentum"):
                    mom = h["momentum"] * mom - delta
                    w = w - h["lr"] * (mom if name == "momentum" else -delta)
                else:
                    m1 = h["beta1"] * m1 + (1 - h["beta1"]) * delta
                    if name in ("fedadam", "adam"):
                        m2 = h["beta2"] * m2 + (1 - h["beta2"]) * delta**2
                    elif name == "fedyogi":
                        m2 = m2 - (1 - h["beta2"]) * delta**2 * np.sign(m2 - delta**2)
                    else:
                        m2 = m2 + delta**2
                    eta = h["lr"]
                    if bool(v[f"{name}.bias_correction"]):
                        eta *= math.sqrt(1 - h["beta2"] ** (t + 1)) / (1 - h["beta1"] ** (t + 1))
                    w = w + eta * m1 / (np.sqrt(m2) + h["tau"])
                close(v[f"{d}.{name}.params"][t - 1], w, f"{d} {name} t={t}",
                      tolerance[d]["rtol"], tolerance[d]["atol"])
    assert bool(v["fedadam.bias_correction"]) and not bool(v["adam.bias_correction"])


def test_partitions_cover_every_example_and_replay(vectors):
    v = vectors["partitions.npz"]
    labels, seed = v["labels"], int(v["seed"])
    assert len(set(np.bincount(labels).tolist())) > 1, "classes of unequal size"
    parts = {}
    for key in v:
        if key.endswith(".indices"):
            case = key[:-len(".indices")]
            idx, off = v[key], v[f"{case}.offsets"]
            np.testing.assert_array_equal(np.sort(idx), np.arange(60))
            parts[case] = [idx[off[k]:off[k + 1]] for k in range(len(off) - 1)]
            assert all((np.diff(p) > 0).all() for p in parts[case])
    perm = np.random.default_rng([seed, 1]).permutation(60)
    assert [p.tolist() for p in parts["iid"]] == [np.sort(b).tolist()
                                                   for b in np.array_split(perm, 6)]
    order = np.argsort(labels, kind="stable")
    deal = np.random.default_rng([seed, 1]).permutation(12)
    assert [p.tolist() for p in parts["shards"]] == [
        sorted(order[5 * deal[2 * k]:5 * deal[2 * k] + 5].tolist()
               + order[5 * deal[2 * k + 1]:5 * deal[2 * k + 1] + 5].tolist()) for k in range(6)]
    assert [len(np.unique(labels[p])) for p in parts["classes_per_client"]] == [2] * 6
    assert min(len(p) for p in parts["dirichlet"]) >= 2
    assert min(len(p) for p in parts["quantity_skew"]) >= 2
    assert max(len(p) for p in parts["shards_remainder"]) == 20
    groups = v["groups"]
    assert [p.tolist() for p in parts["by_group"]] == [
        np.flatnonzero(groups == g).tolist() for g in np.unique(groups)]


def test_batch_orders_replay_from_the_rng_rule(vectors):
    v = vectors["batch_order.npz"]
    for case in ("case0", "case1", "case2"):
        s, r, c = (int(v[f"{case}.{k}"]) for k in ("seed", "round", "client"))
        idx = v[f"{case}.indices"]
        expected = [idx[np.random.default_rng([s, 3, r, c, e]).permutation(len(idx))]
                    for e in range(int(v["epochs"]))]
        np.testing.assert_array_equal(v[f"{case}.order"], np.stack(expected))
        assert len({tuple(row) for row in v[f"{case}.order"]}) == 3, "epochs differ"


def test_quantization_uniforms_are_splitmix64_and_levels_follow_the_formula(vectors):
    v = vectors["quantize.npz"]
    assert splitmix64(0, 0) == 0xE220A8397B1DCDAF == int(v["rng.raw"][0, 0])
    for row, key in enumerate(v["rng.keys"].tolist()):
        assert v["rng.raw"][row].tolist() == [splitmix64(key, i) for i in range(16)]
        assert v["rng.uniforms"][row].tolist() == [uniform(key, i) for i in range(16)]
    seed = int(v["seed"])
    assert v["u"].tolist() == [uniform(seed, i) for i in range(40)]
    for (s, r, c), key in zip(v["quantize_key.seed_round_client"].tolist(),
                              v["quantize_key.keys"].tolist()):
        assert key == int(np.random.default_rng([s, 4, r, c]).integers(0, 2**64, dtype=np.uint64))
    k = int(v["tensor_key.key"])
    assert v["tensor_key.keys"].tolist() == [splitmix64(k, j) for j in range(4)]
    for prefix, x, widths in (("", v["x"], (1, 2, 3, 4, 8, 12, 16)), ("f32.", v["f32.x"], (4, 8))):
        lo, hi = float(x.min()), float(x.max())
        assert (lo, hi) == (float(v[f"{prefix}min"]), float(v[f"{prefix}max"]))
        for b in widths:
            top = 2.0**b - 1
            t = (x.astype(np.float64) - lo) * (top / (hi - lo))
            f = np.floor(t)
            for kind, lev in (("stochastic", f + (v["u"] < t - f)), ("nearest", np.rint(t))):
                lev = np.clip(lev, 0, top)
                got = v[f"{prefix}b{b}.{kind}_levels"]
                assert got.dtype == (np.uint8 if b <= 8 else np.uint16)
                np.testing.assert_array_equal(got, lev, err_msg=f"{prefix}b{b} {kind}")
                np.testing.assert_array_equal(v[f"{prefix}b{b}.{kind}_values"],
                                              (lo + lev * ((hi - lo) / top)).astype(x.dtype))
    assert v["ties.nearest_levels"].tolist() == [0, 0, 2, 2, 3, 1, 2, 0]  # half to even
    x, norm = v["x"], 0.0
    for value in x.tolist():
        norm += value * value  # sequential, as docs/compression.md section 3
    assert float(v["qsgd.norm"]) == math.sqrt(norm)
    for s in (1, 4, 127):
        t = np.abs(x) * (s / math.sqrt(norm))
        lev = np.minimum(np.floor(t) + (v["u"] < t - np.floor(t)), s)
        sym = np.where(x > 0, s + lev, s - lev)
        np.testing.assert_array_equal(v[f"qsgd.s{s}.symbols"], sym)
        np.testing.assert_array_equal(v[f"qsgd.s{s}.values"], (sym - s) * (math.sqrt(norm) / s))


def huffman_decode(data: bytes) -> list[int]:
    """A decoder written from docs/formats.md section 1 (no refsim code)."""
    assert data[0] == 1 and data[1] in (1, 2)
    width, n = data[1], int.from_bytes(data[2:10], "little")
    if n == 0:
        assert len(data) == 10
        return []
    mode, count, off = data[10], int.from_bytes(data[11:15], "little"), 15
    if mode == 0:
        syms = [int.from_bytes(data[off + width * i:off + width * (i + 1)], "little")
                for i in range(count)]
        off += width * count
    else:
        syms = list(range(count))
    lengths = {s: ln for s, ln in zip(syms, data[off:off + count]) if ln}
    off += count
    codes, code, prev = {}, 0, 0
    for s, ln in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= ln - prev
        codes[(ln, code)], code, prev = s, code + 1, ln
    sizes = [int.from_bytes(data[off + 4 * r:off + 4 * r + 4], "little") for r in range(3)]
    off += 12
    sizes.append(len(data) - off - sum(sizes))
    out = [None] * n
    for r in range(4):
        bits = "".join(f"{byte:08b}" for byte in data[off:off + sizes[r]])
        off += sizes[r]
        pos = 0
        for i in range(r, n, 4):
            ln = 1
            while (ln, int(bits[pos:pos + ln], 2)) not in codes:
                ln += 1
            out[i], pos = codes[(ln, int(bits[pos:pos + ln], 2))], pos + ln
        assert len(bits) - pos < 8 and set(bits[pos:]) <= {"0"}, "exact stream, zero padding"
    return out


def test_huffman_bytes_decode_to_the_input(vectors):
    v = vectors["huffman.npz"]
    doc = "01 01 0500000000000000 01 04000000 02 02 00 01 01000000 01000000 01000000 40 00 00 c0"
    assert v["doc.encoded"].tobytes() == bytes.fromhex(doc.replace(" ", ""))  # formats.md
    for case in ("doc", "skewed8", "sparse16", "single", "empty", "fib"):
        symbols, data = v[f"{case}.symbols"], v[f"{case}.encoded"].tobytes()
        assert huffman_decode(data) == symbols.tolist(), case
        lengths = v[f"{case}.code_lengths"].astype(int)
        if len(lengths) > 1:
            assert sum(2.0 ** -lengths) == 1.0, f"{case}: a complete prefix code"
    assert v["fib.code_lengths"].max() == 10 and v["sparse16.symbols"].dtype == np.uint16
    assert v["sparse16.encoded"][10] == 0 and v["skewed8.encoded"][10] == 1  # sparse, dense


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        v, shift, pos = v | ((data[pos] & 127) << shift), shift + 7, pos + 1
        if data[pos - 1] < 128:
            return v, pos


def huffman_v2_decode(data: bytes) -> list[int]:
    """A decoder written from docs/formats.md section 2 (no refsim code)."""
    assert data[0] == 2 and data[1] in (1, 2)
    n, pos = _varint(data, 2)
    if n == 0:
        assert pos == len(data)
        return []
    size, pos = _varint(data, pos)
    bits = "".join(f"{b:08b}"[::-1] for b in data[pos:])  # LSB first
    at = [0]

    def take(k):  # a k-bit field, MSB first
        at[0] += k
        return int(bits[at[0] - k:at[0]] or "0", 2)

    def canonical(lengths):  # {(length, codeword): symbol}, RFC 1951 order
        codes, code, prev = {}, 0, 0
        for s_, ln in sorted(((s_, ln) for s_, ln in enumerate(lengths) if ln),
                             key=lambda item: (item[1], item[0])):
            code <<= ln - prev
            codes[(ln, code)], code, prev = s_, code + 1, ln
        return codes

    def symbol(codes):
        code, ln = 0, 0
        while (ln, code) not in codes:
            code, ln = 2 * code + take(1), ln + 1
        return codes[(ln, code)]

    order = [25, 24, 0] + [d for k in range(1, 12) for d in (k, 24 - k)] + [12]
    kk = take(5) + 1
    token_lengths = [0] * 26
    for t in order[:kk]:
        token_lengths[t] = take(3)
    tokens = canonical(token_lengths)
    lengths, p = [], 1
    while len(lengths) < size:
        t = symbol(tokens)
        if t == 25:  # REPEAT, Elias gamma
            zeros = 0
            while take(1) == 0:
                zeros += 1
            lengths += [lengths[-1]] * ((1 << zeros) | take(zeros))
        elif t == 24:
            lengths.append(0)
        else:
            p = (p - 1 + t) % 24 + 1
            lengths.append(p)
    assert len(lengths) == size and lengths[-1] > 0
    pos += (at[0] + 7) // 8
    sizes = []
    for _ in range(3):
        v, pos = _varint(data, pos)
        sizes.append(v)
    sizes.append(len(data) - pos - sum(sizes))
    codes, seg, out = canonical(lengths), 2 * ((n + 7) // 8), []
    for r in range(4):
        bits, at[0] = "".join(f"{b:08b}"[::-1] for b in data[pos:pos + sizes[r]]), 0
        pos += sizes[r]
        out += [symbol(codes) for _ in range(r * seg, min(n, (r + 1) * seg))]
        assert len(bits) - at[0] < 8 and set(bits[at[0]:]) <= {"0"}, "exact stream"
    return out


def test_huffman_v2_bytes_decode_to_the_input(vectors):
    v = vectors["huffman.npz"]
    doc = "02 01 05 04 44 82 c4 13 01 01 01 00 06 01"  # formats.md section 2
    assert v["v2.doc.encoded"].tobytes() == bytes.fromhex(doc.replace(" ", ""))
    for case in ("doc", "skewed8", "sparse16", "single", "empty", "fib"):
        data = v[f"v2.{case}.encoded"].tobytes()
        assert huffman_v2_decode(data) == v[f"{case}.symbols"].tolist(), case
        assert len(data) < len(v[f"{case}.encoded"]) or case == "single", case


def test_codec_bytes_decode_to_the_stored_tensors(vectors):
    v = vectors["codec.npz"]
    methods = {"identity": 0, "quant8": 1, "quant3_nearest": 1, "quant4_huffman": 1,
               "quant2_huffman_block4": 1, "qsgd4_huffman": 2, "qsgd1": 2, "topk3": 3,
               "quant8_threshold5": 1, "quant8_float64": 1}
    for case, method in methods.items():
        data = v[f"{case}.encoded"].tobytes()
        assert data[:8] == b"RSC\x01" + (3).to_bytes(4, "little") and data[8] == method, case
        for j, t in enumerate(Codec.decode(data)):
            np.testing.assert_array_equal(t, v[f"{case}.decoded.{j}"], err_msg=case)
    for j in range(3):
        np.testing.assert_array_equal(v[f"identity.decoded.{j}"],
                                      v[f"update.{j}"].astype(np.float32))
        assert np.count_nonzero(v[f"topk3.decoded.{j}"]) == 3
    np.testing.assert_array_equal(v["quant8_threshold5.decoded.1"],  # 4 elements: sent raw
                                  v["update.1"].astype(np.float32))
    for case, method in methods.items():  # version 2: the same tensors
        data = v[f"v2.{case}.encoded"].tobytes()
        assert data[:8] == b"RSC\x02" + (3).to_bytes(4, "little") and data[8] == method, case
        for j, t in enumerate(Codec.decode(data)):
            np.testing.assert_array_equal(t, v[f"{case}.decoded.{j}"], err_msg=f"v2.{case}")
    for case, k in (("topk4_coded", (4, 4, 4)), ("topk_half_bits3", (6, 2, 6))):
        data = v[f"v2.{case}.encoded"].tobytes()
        assert data[8] == 4, case  # method 4
        for j, t in enumerate(Codec.decode(data)):
            np.testing.assert_array_equal(t, v[f"v2.{case}.decoded.{j}"], err_msg=case)
            assert np.count_nonzero(t) == k[j], (case, j)
    for j in range(3):  # float values: exactly the largest entries of the update
        x = v[f"update.{j}"].astype(np.float32).ravel()
        top = np.sort(np.argsort(-np.abs(x), kind="stable")[:4])
        np.testing.assert_array_equal(v[f"v2.topk4_coded.decoded.{j}"].ravel()[top], x[top])


def _mlp_grad(w, x, y):
    """golden_mlp by hand: 16 -> 6 (ReLU) -> 3, mean softmax cross-entropy."""
    w1, b1, w2, b2 = w[:96].reshape(16, 6), w[96:102], w[102:120].reshape(6, 3), w[120:]
    x = x.reshape(len(x), 16)
    h = x @ w1 + b1
    a = np.maximum(h, 0)
    z = a @ w2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    d = (p / p.sum(1, keepdims=True) - np.eye(3)[y]) / len(y)
    dh = (d @ w2.T) * (h > 0)
    return np.concatenate([(x.T @ dh).ravel(), dh.sum(0), (a.T @ d).ravel(), d.sum(0)])


def _numpy_fedavg(v, weighting):
    """Three rounds of FedAvg by docs/fedavg.md, with plain NumPy and the rng rules."""
    seed, e_, b_, lr = int(v["seed"]), int(v["epochs"]), int(v["batch_size"]), float(v["lr"])
    off = v["partition_offsets"]
    parts = [v["partition_indices"][off[k]:off[k + 1]] for k in range(len(off) - 1)]
    w, out = v["w0"].copy(), []
    for t in range(1, 4):
        chosen = np.sort(np.random.default_rng([seed, 2, t]).choice(len(parts), 2, replace=False))
        total, weight_sum = np.zeros_like(w), 0.0
        for k in chosen:
            wk = w.copy()
            for e in range(e_):
                order = parts[k][np.random.default_rng([seed, 3, t, k, e]).permutation(
                    len(parts[k]))]
                for i in range(0, len(order), b_):
                    batch = order[i:i + b_]
                    wk = wk - lr * _mlp_grad(wk, v["x_train"][batch], v["y_train"][batch])
            n_k = len(parts[k]) if weighting == "examples" else 1
            total, weight_sum = total + n_k * (wk - w), weight_sum + n_k
        w = w + total / weight_sum
        out.append(w)
    return np.stack(out)


def test_fedavg_rounds_replay_in_numpy_and_in_run_fedavg(vectors, index):
    v = vectors["fedavg.npz"]
    np.testing.assert_allclose(_numpy_fedavg(v, "examples"), v["fedavg.weights"], rtol=1e-12,
                               atol=1e-14)
    unweighted = _numpy_fedavg(v, "uniform")
    assert np.abs(unweighted[-1] - v["fedavg.weights"][-1]).max() > 1e-4  # weighting matters
    sizes = np.diff(v["partition_offsets"])
    assert len(set(sizes[np.unique(v["fedavg.clients"])].tolist())) > 1
    tol = {e["name"]: e["tolerance"] for e in index["files"]}["fedavg.npz"]["float64"]
    data = golden_fedavg.fedavg_data()
    part = golden_fedavg.fedavg_partition(data)
    for run, config in golden_fedavg.FEDAVG_RUNS.items():  # refsim's own loop (BLAS)
        history = run_fedavg(config, golden_mlp(), data, part)
        np.testing.assert_array_equal(history.initial_params, v["w0"])
        assert [r.clients for r in history.rounds] == [tuple(c) for c in v[f"{run}.clients"]]
        assert [r.uplink_bits for r in history.rounds] == v[f"{run}.uplink_bits"].tolist()
        close(history.params, v[f"{run}.weights"][-1], run, tol["rtol"], tol["atol"])
    assert np.abs(v["quant8_momentum.weights"] - v["fedavg.weights"]).max() > 1e-3


# -- (3) the command line --------------------------------------------------------------------

def test_refsim_golden_alone_checks_a_fresh_regeneration(capsys):
    code, out, err = _cli(["golden"], capsys)
    assert code == 0, err
    assert out.count("identical bytes") == len(NAMES) and "all 16 golden files" in out


def test_check_accepts_values_within_tolerance_and_reports_the_rest(out_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in NAMES:
        (copy / name).write_bytes((out_dir / name).read_bytes())
    assert _cli(["golden", "--check", str(copy)], capsys)[0] == 0

    arrays = read_npz((out_dir / "models.npz").read_bytes())
    arrays["logistic.loss"] = arrays["logistic.loss"] * (1 + 1e-13)  # rtol 1e-10: fine
    (copy / "models.npz").write_bytes(npz_bytes(arrays))
    code, out, _ = _cli(["golden", "--check", str(copy)], capsys)
    assert code == 0 and "models.npz" in out and "within tolerance" in out

    arrays["logistic.loss"] = arrays["logistic.loss"] * (1 + 1e-8)  # beyond it
    (copy / "models.npz").write_bytes(npz_bytes(arrays))
    bad = read_npz((out_dir / "partitions.npz").read_bytes())
    bad["iid.indices"] = bad["iid.indices"][::-1].copy()  # integers must be exact
    (copy / "partitions.npz").write_bytes(npz_bytes(bad))
    code, out, _ = _cli(["golden", "--check", str(copy)], capsys)
    assert code == 1
    assert "FAIL" in out and "'logistic.loss'" in out and "'iid.indices'" in out
    assert "2 of 16 golden files" in out


@pytest.mark.parametrize("damage", ["missing_dir", "missing_file", "truncated_file"])
def test_check_rejects_a_missing_or_corrupt_directory(out_dir, tmp_path, capsys, damage):
    copy = tmp_path / "copy"
    if damage != "missing_dir":
        copy.mkdir()
        for name in NAMES:
            (copy / name).write_bytes((out_dir / name).read_bytes())
    if damage == "missing_file":
        (copy / "huffman.npz").unlink()
    if damage == "truncated_file":
        (copy / "codec.npz").write_bytes((out_dir / "codec.npz").read_bytes()[:300])
    code, out, err = _cli(["golden", "--check", str(copy)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("refsim golden: error: ") and err.count("\n") == 1
    assert {"missing_dir": "no such directory", "missing_file": "huffman.npz is missing",
            "truncated_file": "codec.npz is truncated or corrupt"}[damage] in err


def test_out_refuses_a_directory_holding_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, out, err = _cli(["golden", "--out", str(tmp_path)], capsys)
    assert code == 2 and "notes.txt" in err and err.startswith("refsim golden: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    code, _, err = _cli(["golden", "--out", str(tmp_path / "notes.txt")], capsys)
    assert code == 2 and "not a directory" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["golden", "--out", str(tmp_path), "--check", str(tmp_path)])
    assert exc.value.code == 2


def test_check_files_compares_against_any_reference(out_dir):
    files = read_golden_dir(out_dir)
    assert all(r.ok and r.detail == "identical bytes" for r in check_files(files, files))
