"""``refsim run`` (refsim/cli/run.py): tiny runs, byte-identical reruns, TOML configs, bad flags."""

import csv
import importlib.util
import json

import numpy as np
import pytest

from refsim import cli
from refsim.backend import available_backends
from refsim.cli import run_settings

TINY = ["--rounds", "2", "--clients", "10", "--train-limit", "1000", "--test-limit", "200",
        "--quiet", "--plot", "no"]


def _run(argv, capsys):
    code = cli.main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_still_works(capsys):
    assert cli.main(["info"]) == 0
    assert "mlp_2nn" in capsys.readouterr().out


def test_tiny_comparison_writes_the_run_directory_and_reruns_identically(tmp_path, capsys):
    code, out, err = _run([*TINY, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    for name in ("iid-float", "iid-quant-huffman", "shards-float", "shards-quant-huffman"):
        assert name in out
        run = tmp_path / "a" / name
        csv = (run / "metrics.csv").read_text().splitlines()
        assert len(csv) == 3 and csv[0].startswith("round,lr,clients")
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
        summary = json.loads((run / "summary.json").read_text())
        assert summary["seed"] == 0 and summary["wall_time_s"] > 0
        assert summary["versions"]["numpy"] == np.__version__
        assert "wall" not in csv[0]
    table = (tmp_path / "a" / "comparison.txt").read_text()
    assert table in out and "bits/param" in table
    rows = json.loads((tmp_path / "a" / "comparison.json").read_text())
    by = {r["run"]: r for r in rows}
    assert by["iid-quant-huffman"]["compression_ratio"] > 4
    assert by["iid-quant-huffman"]["entropy_bits_per_parameter"] <= \
        by["iid-quant-huffman"]["bits_per_parameter"]
    assert by["iid-float"]["entropy_bits_per_parameter"] is None
    # A rerun is byte-identical (metrics and final weights), wall time aside.
    assert _run([*TINY, "--out", str(tmp_path / "b")], capsys)[0] == 0
    for name in ("iid-float", "shards-quant-huffman"):
        for f in ("metrics.csv", "metrics.jsonl"):
            a, b = tmp_path / "a" / name / f, tmp_path / "b" / name / f
            assert a.read_bytes() == b.read_bytes()
        np.testing.assert_array_equal(np.load(tmp_path / "a" / name / "final_weights.npy"),
                                      np.load(tmp_path / "b" / name / "final_weights.npy"))
    assert (tmp_path / "a" / "comparison.txt").read_bytes() == \
        (tmp_path / "b" / "comparison.txt").read_bytes()


def test_client_threads_give_the_same_run_files(tmp_path, capsys):
    argv = [*TINY, "--partition", "iid", "--codec", "quant-huffman"]
    assert _run([*argv, "--out", str(tmp_path / "one")], capsys)[0] == 0
    assert _run([*argv, "--client-threads", "3", "--out", str(tmp_path / "three")], capsys)[0] == 0
    for name in ("metrics.csv", "final_weights.npy"):
        assert (tmp_path / "three" / "iid-quant-huffman" / name).read_bytes() == \
            (tmp_path / "one" / "iid-quant-huffman" / name).read_bytes(), name
    summary = json.loads((tmp_path / "three" / "iid-quant-huffman" / "summary.json").read_text())
    assert summary["config"]["client_threads"] == 3


def test_resume_and_trace_flags(tmp_path, capsys):
    argv = [*TINY, "--partition", "iid", "--codec", "float", "--out", str(tmp_path), "--trace"]
    assert _run(argv, capsys)[0] == 0
    first = (tmp_path / "iid-float" / "metrics.csv").read_bytes()
    code, out, _ = _run([*argv, "--resume"], capsys)
    assert code == 0
    assert (tmp_path / "iid-float" / "metrics.csv").read_bytes() == first
    assert (tmp_path / "iid-float" / "trace" / "round_000002.npz").exists()


@pytest.mark.parametrize("argv, flag", [
    (["--fraction", "1.5"], "--fraction"),
    (["--fraction", "abc"], "--fraction"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "ten"], "--batch-size"),
    (["--lr", "-0.1"], "--lr"),
    (["--rounds", "0"], "--rounds"),
    (["--epochs", "0"], "--epochs"),
    (["--clients", "0"], "--clients"),
    (["--bits", "17"], "--bits"),
    (["--seed", "-1"], "--seed"),
    (["--server-momentum", "0.9"], "--server-momentum"),
    (["--server-opt", "adam", "--server-beta2", "1.0"], "--server-beta2"),
    (["--server-opt", "yogi", "--server-tau", "0"], "--server-tau"),
    (["--model", "resnet"], "--model"),
    (["--partition", "dirichlet"], "--partition"),
    (["--targets", "1.5"], "--targets"),
    (["--clients", "70000"], "--clients"),
    (["--client-threads", "0"], "--client-threads"),
    (["--client-threads", "two"], "--client-threads"),
])
def test_invalid_values_give_one_line_naming_the_flag_and_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse-level errors exit through SystemExit
        raise SystemExit(cli.main(["run", *argv, "--quiet"]))
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "error" in lines[0], err
    assert out == ""


def test_fedadam_from_the_command_line(tmp_path, capsys):
    argv = [*TINY, "--partition", "iid", "--codec", "float", "--server-opt", "adam",
            "--server-lr", "0.01", "--server-bias-correction", "--out", str(tmp_path)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    server = json.loads((tmp_path / "iid-float" / "summary.json").read_text())["config"]["server"]
    assert server["kind"] == "adam" and server["bias_correction"] is True
    with np.load(tmp_path / "iid-float" / "checkpoint.npz") as z:
        assert {"state_m", "state_v"} <= set(z.files)


def test_toml_config_and_flag_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('partition = ["iid"]\ncodec = "quant"\nrounds = 5\nclients = 10\n'
                   'train_limit = 1000\ntest_limit = 200\nbatch_size = "inf"\nplot = "no"\n')
    code, out, err = _run(["--config", str(cfg), "--rounds", "1", "--quiet",
                           "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "iid-quant" / "summary.json").read_text())
    assert summary["rounds"] == 1  # the flag wins over the file
    assert summary["config"]["batch_size"] is None  # "inf" = the whole client
    assert not (tmp_path / "o" / "shards-quant").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 0.1\n")
    code, _, err = _run(["--config", str(bad)], capsys)
    assert code == 2 and "unknown key 'learning_rate'" in err and len(err.splitlines()) == 1
    bad.write_text("fraction = 3\n")
    code, _, err = _run(["--config", str(bad)], capsys)
    assert code == 2 and "--fraction" in err
    code, _, err = _run(["--config", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "--config" in err


@pytest.mark.parametrize("name", ["mnist_2nn_iid", "mnist_2nn_noniid", "mnist_cnn_iid",
                                  "mnist_cnn_noniid", "mnist_cnn_grid", "femnist_cnn_writers"])
def test_shipped_configs_are_valid(name):
    args = cli.build_parser().parse_args(["run", "--config", name])
    s = run_settings.settings(args)
    assert s["model"] in ("2nn", "cnn") and s["fraction"] == 0.1
    configs = [run_settings.make_config(s, codec, e, b) for codec in s["codec"]
               for e, b in run_settings.grid(s)]
    assert all(c.fraction == 0.1 and c.lr == 0.1 for c in configs)
    if name == "mnist_cnn_grid":  # the paper's Table 2 grid, FedSGD first
        assert [(c.epochs, c.batch_size) for c in configs] == [
            (e, b) for e in (1, 5, 20) for b in (None, 50, 10)]


def test_eb_grid_runs_every_pair(tmp_path, capsys):
    code, out, err = _run(["--partition", "iid", "--codec", "float", "--clients", "5",
                           "--train-limit", "200", "--test-limit", "100", "--rounds", "1",
                           "--epochs", "1", "2", "--batch-size", "inf", "20", "--quiet",
                           "--plot", "no", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    names = ["iid-float-E1-Binf", "iid-float-E1-B20", "iid-float-E2-Binf", "iid-float-E2-B20"]
    for name in names:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        e, b = name.split("-")[2:]
        assert summary["config"]["epochs"] == int(e[1:])
        assert summary["config"]["batch_size"] == (None if b == "Binf" else int(b[1:]))
        assert name in out
    rows = list(csv.DictReader(open(tmp_path / "iid-float-E2-B20" / "metrics.csv")))
    m = len(rows[0]["clients"].split())  # max(floor(0.1 * 5), 1) = 1 client of 40 examples
    assert m == 1 and int(rows[0]["batches"]) == 2 * m * 2  # E * ceil(40 / 20) per client


def test_femnist_writers_with_per_writer_federated_evaluation(tmp_path, capsys):
    code, _, err = _run(["--dataset", "femnist", "--partition", "writers", "--codec", "float",
                         "--model", "logistic", "--fraction", "0.02", "--rounds", "2",
                         "--quiet", "--plot", "no", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "writers-float" / "summary.json").read_text())
    from refsim.data import load_femnist
    writers = np.unique(load_femnist(only_digits=True).groups_train)
    assert summary["num_clients"] == len(writers) == 207  # writers with training digits
    rows = list(csv.DictReader(open(tmp_path / "writers-float" / "metrics.csv")))
    assert len(rows[0]["clients"].split()) == 4  # floor(0.02 * 207)
    assert 0 < float(rows[-1]["fed_eval_accuracy"]) <= 1
    code, _, err = _run(["--dataset", "femnist", "--partition", "iid"], capsys)
    assert code == 2 and "--partition" in err and len(err.splitlines()) == 1


def test_downlink_codec_and_backend_flags(tmp_path, capsys):
    base = ["--partition", "iid", "--codec", "float", "--clients", "5", "--train-limit", "300",
            "--test-limit", "100", "--rounds", "2", "--quiet", "--plot", "no"]
    code, _, err = _run([*base, "--out", str(tmp_path / "raw")], capsys)
    assert code == 0, err
    code, _, err = _run([*base, "--downlink", "quant-huffman", "--downlink-bits", "6",
                         "--out", str(tmp_path / "q")], capsys)
    assert code == 0, err
    raw = json.loads((tmp_path / "raw" / "iid-float" / "summary.json").read_text())
    q = json.loads((tmp_path / "q" / "iid-float" / "summary.json").read_text())
    assert raw["total_broadcast_bits"] == 2 * 1 * 32 * 199_210
    assert q["total_broadcast_bits"] < raw["total_broadcast_bits"] / 4
    assert "huffman=True" in q["config"]["downlink"] and raw["config"]["downlink"] is None
    code, _, err = _run([*base, "--downlink-bits", "17"], capsys)
    assert code == 2 and "--downlink-bits" in err
    if "cupy" not in available_backends():
        code, _, err = _run([*base, "--backend", "cupy", "--out", str(tmp_path / "c")], capsys)
        assert code == 2 and "cupy" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None,
                    reason="matplotlib is installed")
def test_plot_yes_without_matplotlib_names_the_extra(tmp_path, capsys):
    argv = [*TINY[:-2], "--partition", "iid", "--codec", "float", "--rounds", "1",
            "--plot", "yes", "--out", str(tmp_path)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "pip install 'refsim[plot]'" in err


def test_plots_are_written_with_matplotlib(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = [*TINY[:-2], "--partition", "iid", "--rounds", "1", "--plot", "yes",
            "--out", str(tmp_path)]
    assert _run(argv, capsys)[0] == 0
    for f in ("accuracy.png", "loss.png", "accuracy_vs_bits.png"):
        assert (tmp_path / f).stat().st_size > 0
