"""``refsim compare`` (refsim/validation/compare.py, weight_files.py, refsim/cli/compare.py)
on real traces of the 2NN: agreement, the first divergence, NaN, mismatched inputs, PyTorch
state dicts, plain and per-round npz files, flat vectors, JSON and usage errors."""

import json
import shutil

import numpy as np
import pytest

from refsim.cli import main
from refsim.data import load_mnist
from refsim.data.partition import iid
from refsim.fedavg import FedAvgConfig, InitScheme, from_images, run_fedavg
from refsim.nn import mlp_2nn, to_torch_state_dict
from refsim.validation.compare import compare_paths, default_tolerance, tensor_diff
from refsim.validation.weight_files import Layout, load_weights

MODEL = mlp_2nn()
SPEC = {s.name: s for s in MODEL.layout}


def _run(run_dir):
    """3 rounds of the 2NN on 80 MNIST examples, 4 IID clients, 2 per round, with a trace."""
    data = from_images(load_mnist(), np.float32, train_limit=80, test_limit=20)
    parts = iid(data.y_train, 4, np.random.default_rng(0))
    cfg = FedAvgConfig(fraction=0.5, batch_size=10, rounds=3, lr=0.1, seed=1,
                       init=InitScheme.TORCH)
    return run_fedavg(cfg, MODEL, data, parts, run_dir=run_dir, trace=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    _run(path)
    return path


def _weights(run_dir, t):
    name = "init.npz" if t == 0 else f"round_{t:06d}.npz"
    return np.load(run_dir / "trace" / name)["weights"]


def _copy_trace(run_dir, dest, edits):
    """A copy of the trace with ``edits`` {(round, tensor, flat index in the tensor): value}."""
    shutil.copytree(run_dir / "trace", dest)
    for t in sorted({t for t, _, _ in edits}):
        path = dest / f"round_{t:06d}.npz"
        arrays = dict(np.load(path))
        for (t_, name, i), value in edits.items():
            if t_ == t:
                arrays["weights"][SPEC[name].offset + i] = value
        np.savez(path, **arrays)
    return dest


def _cli(argv, capsys):
    code = main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_rerun_agrees_and_exits_0(run_dir, tmp_path, capsys):
    _run(tmp_path)
    code, out, err = _cli([tmp_path, run_dir / "trace"], capsys)
    assert code == 0, out + err
    assert "AGREE" in out and "DIVERGE" not in out and err == ""
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert all(r[1] == "6" and float(r[2]) == 0 for r in rows)  # 6 tensors, bit-identical
    c = compare_paths(tmp_path, run_dir)
    assert c.agree and c.rounds == (0, 1, 2, 3) and (c.rtol, c.atol) == default_tolerance("float32")


def test_a_perturbed_tensor_in_round_2_is_the_first_divergence(run_dir, tmp_path, capsys):
    b = _weights(run_dir, 2)[SPEC["fc2.bias"].offset + 17]
    tiny = _weights(run_dir, 1)[SPEC["fc1.weight"].offset + 5] * (1 + 1e-6)  # inside rtol 1e-4
    edited = _copy_trace(run_dir, tmp_path / "trace", {
        (1, "fc1.weight", 5): tiny,
        (2, "fc2.bias", 17): b + 1e-3,
        (3, "fc1.weight", 0): 1.0,             # a later divergence does not hide the first
    })
    code, out, _ = _cli([edited, run_dir], capsys)
    assert code == 1
    assert "first divergence: round 2, tensor fc2.bias (200,): 1 of 200 elements exceed" in out
    assert "worst element [17]" in out and "DIVERGE" in out
    c = compare_paths(edited, run_dir)
    first = c.first_divergence
    assert (first.round, first.name, first.worst_index, first.num_exceeding) == \
        (2, "fc2.bias", (17,), 1)
    assert first.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert first.worst_b == pytest.approx(float(b)) and first.worst_a == pytest.approx(b + 1e-3)
    # max_rel = max|a - b| / max|b| over the tensor.
    ref = _weights(run_dir, 2)[SPEC["fc2.bias"].offset:][:200].astype(np.float64)
    assert first.max_rel == pytest.approx(first.max_abs / np.abs(ref).max())
    summary = {r.round: r for r in c.by_round()}
    assert summary[1].num_exceeding_tensors == 0 and 0 < summary[1].max_abs < 1e-7
    assert summary[2].num_exceeding_tensors == 1 and summary[3].worst_tensor == "fc1.weight"


def test_nan_or_inf_diverges_even_where_both_sides_hold_it(run_dir, tmp_path, capsys):
    both_nan = _copy_trace(run_dir, tmp_path / "a", {(3, "fc3.bias", 2): np.nan})
    other = _copy_trace(run_dir, tmp_path / "b", {(3, "fc3.bias", 2): np.nan})
    c = compare_paths(both_nan, other)
    assert not c.agree and c.first_divergence.name == "fc3.bias"
    assert c.first_divergence.worst_index == (2,) and np.isnan(c.first_divergence.max_abs)
    code, out, _ = _cli([both_nan, run_dir], capsys)
    assert code == 1 and "round 3, tensor fc3.bias" in out and "nan" in out
    inf = _copy_trace(run_dir, tmp_path / "c", {(1, "fc1.bias", 0): np.inf})
    assert compare_paths(inf, inf).first_divergence.round == 1


def test_tensor_diff_uses_isclose_semantics_and_max_relative_to_the_reference_scale():
    b = np.array([1.0, -4.0, 0.0])
    at_edge = tensor_diff(b + np.array([0.5, 0.0, 0.25]), b, rtol=0.25, atol=0.25)
    assert at_edge.num_exceeding == 0  # |a - b| == atol + rtol |b| agrees, as in isclose
    over = tensor_diff(b + np.array([0.5 + 2**-40, 0.0, 0.25]), b, rtol=0.25, atol=0.25)
    assert over.num_exceeding == 1 and over.worst_index == (0,)
    assert over.max_rel == pytest.approx((0.5 + 2**-40) / 4.0)
    zero = tensor_diff(np.zeros(2), np.zeros(2), 0.0, 0.0)
    assert (zero.max_abs, zero.max_rel, zero.num_exceeding) == (0.0, 0.0, 0)
    assert default_tolerance("float64", "float64") == (1e-9, 1e-12)
    assert default_tolerance("float64", "float32") == default_tolerance("float32") == (1e-4, 1e-6)


def test_mismatched_names_shapes_and_rounds_are_errors_that_name_them(run_dir, tmp_path, capsys):
    named = MODEL.views(_weights(run_dir, 3).copy())
    renamed = {("dense1.weight" if k == "fc1.weight" else k): v for k, v in named.items()}
    np.savez(tmp_path / "renamed.npz", **renamed)
    with pytest.raises(ValueError, match=r"only in A .*\['dense1.weight'\].*only in B .*"
                                         r"\['fc1.weight'\]"):
        compare_paths(tmp_path / "renamed.npz", run_dir)
    short = {**named, "fc3.bias": named["fc3.bias"][:9]}
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(ValueError, match=r"tensor 'fc3.bias': shape \(9,\) in A"):
        compare_paths(tmp_path / "short.npz", run_dir)
    np.savez(tmp_path / "late.npz", **{f"round_7/{k}": v for k, v in named.items()})
    with pytest.raises(ValueError, match=r"no round in common.*\[7\].*\[0, 1, 2, 3\]"):
        compare_paths(tmp_path / "late.npz", run_dir)
    np.savez(tmp_path / "mixed.npz", **{"round_1/fc1.bias": named["fc1.bias"],
                                        "fc1.bias": named["fc1.bias"]})
    code, out, err = _cli([tmp_path / "mixed.npz", run_dir], capsys)
    assert code == 2 and out == ""
    assert err.startswith("refsim compare: error: ") and "mixes per-round keys" in err
    assert len(err.strip().splitlines()) == 1


def test_a_torch_state_dict_npz_is_mapped_with_the_traced_model(run_dir, tmp_path, capsys):
    per_round = {f"round_{t}/{k}": v for t in (1, 2, 3)
                 for k, v in to_torch_state_dict(MODEL, _weights(run_dir, t)).items()}
    assert per_round["round_1/fc1.weight"].shape == (200, 784)  # PyTorch (out, in)
    np.savez(tmp_path / "torch.npz", **per_round)
    code, out, _ = _cli([tmp_path / "torch.npz", run_dir], capsys)
    assert code == 0 and "from_torch_state_dict(mlp_2nn)" in out
    assert "not compared, only in B: rounds 0" in out
    series = load_weights(tmp_path / "torch.npz", Layout.TORCH)
    assert series.rounds == (1, 2, 3)
    assert series.snapshots[0].tensors["fc1.weight"].shape == (784, 200)
    # Read as refsim's layout, the transposed shapes are an error with a hint.
    code, _, err = _cli([tmp_path / "torch.npz", run_dir, "--layout", "refsim"], capsys)
    assert code == 2 and "transposed" in err and "--layout torch" in err
    # An element (i, j) of PyTorch's (out, in) weight is (j, i) in refsim's layout.
    per_round["round_3/fc1.weight"] = per_round["round_3/fc1.weight"].copy()
    per_round["round_3/fc1.weight"][3, 100] += 0.5
    np.savez(tmp_path / "torch_bad.npz", **per_round)
    first = compare_paths(tmp_path / "torch_bad.npz", run_dir).first_divergence
    assert (first.round, first.name, first.worst_index) == (3, "fc1.weight", (100, 3))
    # Every round of a per-round file must be the same state dict.
    del per_round["round_2/fc3.bias"]
    np.savez(tmp_path / "torch_gap.npz", **per_round)
    with pytest.raises(ValueError, match=r"torch_gap.npz, round 2: the names and shapes"):
        compare_paths(tmp_path / "torch_gap.npz", run_dir)
    # One state dict without rounds is compared with the reference's last round.
    np.savez(tmp_path / "final.npz", **to_torch_state_dict(MODEL, _weights(run_dir, 3)))
    c = compare_paths(tmp_path / "final.npz", run_dir)
    assert c.agree and c.rounds == (3,) and c.rounds_only_in_b == (0, 1, 2)


def test_plain_npz_checkpoint_and_flat_vector(run_dir, tmp_path, capsys):
    final = _weights(run_dir, 3)
    np.savez(tmp_path / "named.npz", **MODEL.views(final.copy()))
    c = compare_paths(run_dir, tmp_path / "named.npz")  # the reference side without rounds
    assert c.agree and c.rounds == (3,) and c.rounds_only_in_a == (0, 1, 2)
    assert "refsim's layout" in c.b.mapping and c.b.kind == "named arrays"
    # The checkpoint holds round 3; a flat .npy vector is cut by the other side's layout.
    np.save(tmp_path / "final_weights.npy", final)
    code, out, _ = _cli([tmp_path / "final_weights.npy", run_dir / "checkpoint.npz"], capsys)
    assert code == 0 and "refsim checkpoint" in out and "flat vector" in out
    np.save(tmp_path / "off.npy", final + np.float32(1e-2))
    c = compare_paths(tmp_path / "off.npy", run_dir / "checkpoint.npz")
    assert not c.agree and c.first_divergence.name == "fc1.weight" and c.rounds == (3,)
    note = c.float32_divergence()  # float32 weights: the advice to check steps one at a time
    assert note["from_round"] == 3 and note["last_round"] == 3
    assert "refsim compare-steps YOURS.npz TRACE --round 3" in note["advice"]
    np.save(tmp_path / "wrong_size.npy", final[:-1])
    with pytest.raises(ValueError, match="199209 parameters match no reference model"):
        compare_paths(tmp_path / "wrong_size.npy", tmp_path / "named.npz")


def test_json_output_carries_the_verdict_and_every_tensor(run_dir, tmp_path, capsys):
    edited = _copy_trace(run_dir, tmp_path / "trace", {(2, "fc2.weight", 7): 3.0})
    code, out, _ = _cli([edited, run_dir, "--json", "--rtol", "1e-6", "--atol", "0"], capsys)
    assert code == 1
    report = json.loads(out)
    assert report["verdict"] == "diverge" and (report["rtol"], report["atol"]) == (1e-6, 0.0)
    first = report["first_divergence"]
    assert (first["round"], first["name"], first["worst_index"]) == (2, "fc2.weight", [0, 7])
    assert len(report["tensors"]) == 4 * 6 and report["a"]["kind"] == "refsim trace"
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2, 3]


def test_usage_errors_exit_2_with_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [([tmp_path / "missing.npz", run_dir], "no such file"),
             ([tmp_path / "empty", run_dir], "without a refsim trace"),
             ([run_dir / "trace" / "round_000001.npz", run_dir], "one round file of a refsim"),
             ([run_dir, run_dir, "--rtol", "-1"], "must be >= 0")]
    for argv, message in cases:
        code, out, err = _cli(argv, capsys)
        assert code == 2 and out == "", argv
        assert err.startswith("refsim compare: error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(run_dir), str(run_dir), "--layout", "keras"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("refsim compare: error: argument --layout")
