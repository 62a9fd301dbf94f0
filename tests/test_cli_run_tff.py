"""``refsim run``'s TFF settings (refsim/cli/run_tff.py) and the two TFF tutorial configs."""

import json
import re

import numpy as np
import pytest

from refsim import cli
from refsim.cli import run_settings
from refsim.cli.run_tff import format_size
from refsim.compress import tff_round_bits
from refsim.compress.tff_bits import TFF_TUTORIAL_CNN_SIZES
from refsim.fedavg import (InitScheme, RobustAggregator, ServerOpt, ServerOptConfig,
                           ServerSemantics)
from refsim.fedavg.robust import TFF_COMPRESSION_CODEC

TINY = ["--rounds", "1", "--clients", "4", "--train-limit", "200", "--test-limit", "50",
        "--partition", "iid", "--plot", "no"]


def _config(argv, codec="float"):
    s = run_settings.settings(cli.build_parser().parse_args(["run", *argv]))
    return run_settings.make_config(s, codec, s["epochs"][0], s["batch_size"][0])


def _run(argv, capsys):
    code = cli.main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_server_semantics_flag_takes_tffs_defaults():
    assert _config(["--server-opt", "adam", "--server-lr", "0.01"]).server == \
        ServerOptConfig(ServerOpt.ADAM, 0.01)  # Flower's: beta2 0.99, tau 1e-9
    tff = _config(["--server-semantics", "tff", "--server-opt", "adam", "--server-lr", "0.01"])
    assert tff.server == ServerOptConfig.tff_adam(0.01)
    yogi = _config(["--server-semantics", "tff", "--server-opt", "yogi", "--server-lr", "0.01",
                    "--server-beta2", "0.99", "--server-initial-preconditioner", "1e-4"])
    assert yogi.server == ServerOptConfig.tff_yogi(0.01, beta2=0.99, initial_preconditioner=1e-4)
    ada = _config(["--server-semantics", "tff", "--server-opt", "adagrad", "--server-lr", "0.5"])
    assert ada.server == ServerOptConfig.tff_adagrad(0.5)
    mom = _config(["--server-semantics", "tff", "--server-opt", "momentum",
                   "--server-momentum", "0.9"])
    assert mom.server == ServerOptConfig.tff_sgdm(1.0, 0.9)
    assert mom.server.semantics is ServerSemantics.TFF


def test_aggregator_flags():
    assert _config([]).aggregator is None
    agg = _config(["--aggregator", "tff-robust", "--zeroing-quantile", "0.9", "--no-clipping"])
    assert agg.aggregator.clipping is None and agg.aggregator.zeroing.target_quantile == 0.9
    assert agg.aggregator.zeroing.multiplier == 2.0 and agg.aggregator.codec is None
    assert _config(["--aggregator", "tff-robust"]).aggregator == RobustAggregator()
    comp = _config([], codec="tff-compression")
    assert comp.codec is None and comp.aggregator == RobustAggregator.tff_compression()
    assert comp.aggregator.codec == TFF_COMPRESSION_CODEC


@pytest.mark.parametrize("argv, flag", [
    (["--server-semantics", "tff", "--server-opt", "adagrad", "--server-beta1", "0.5"],
     "--server-beta1"),
    (["--server-semantics", "tff", "--server-opt", "adam", "--server-bias-correction"],
     "--server-bias-correction"),
    (["--server-opt", "yogi", "--server-initial-preconditioner", "1e-6"],
     "--server-initial-preconditioner"),
    (["--aggregator", "tff-robust", "--zeroing-initial", "-1"], "--zeroing-initial"),
    (["--aggregator", "tff-robust", "--clipping-quantile", "2"], "--clipping-quantile"),
    (["--aggregator", "median"], "--aggregator"),
    (["--progress", "keras"], "--progress"),
])
def test_bad_tff_settings_give_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(["run", *TINY, *argv, "--quiet"]))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1 and flag in lines[0], err
    assert out == ""


def test_toml_keys_for_tff(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('aggregator = "tff-robust"\nzeroing = false\nclipping_lr = 0.5\n'
                   'server_semantics = "tff"\nserver_opt = "adam"\nserver_lr = 0.01\n')
    c = _config(["--config", str(cfg)])
    assert c.aggregator.zeroing is None and c.aggregator.clipping.learning_rate == 0.5
    assert c.server == ServerOptConfig.tff_adam(0.01)


def test_robust_run_writes_the_bounds(tmp_path, capsys):
    code, _, err = _run([*TINY, "--codec", "float", "tff-compression", "--model", "2nn",
                         "--aggregator", "tff-robust", "--quiet", "--out", str(tmp_path)],
                        capsys)
    assert code == 0, err
    for run in ("iid-float", "iid-tff-compression"):
        row = json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])
        assert row["zeroing_norm"] == 21.0 and row["clipping_norm"] == 1.0
    row = json.loads((tmp_path / "iid-tff-compression" / "metrics.jsonl").read_text())
    assert row["uplink_bits"] < 32 * 199_210 * 4 and row["tff_uplink_bits"] is not None


LINE = re.compile(r"^\[(?P<run>[\w-]+)\] round +(?P<t>\d+), train_metrics=OrderedDict\(\["
                  r"\('sparse_categorical_accuracy', (?P<acc>[\d.e-]+)\), "
                  r"\('loss', (?P<loss>[\d.e-]+)\), \('num_examples', (?P<ex>\d+)\), "
                  r"\('num_batches', (?P<nb>\d+)\)\]\), broadcasted_bits=(?P<down>\S+), "
                  r"aggregated_bits=(?P<up>\S+)$")


def _tutorial_lines(out):
    return [m.groupdict() for m in map(LINE.match, out.splitlines()) if m]


def test_image_classification_tutorial_config(tmp_path, capsys):
    """2 rounds of TFF's image-classification tutorial: the logistic model from zeros, 10
    writers a round, E = 5, B = 20, lr 0.02, lines in the tutorial's terms."""
    s = run_settings.settings(cli.build_parser().parse_args(
        ["run", "--config", "tff_image_classification"]))
    cfg = run_settings.make_config(s, "float", s["epochs"][0], s["batch_size"][0])
    assert (s["model"], cfg.init, cfg.epochs, cfg.batch_size, cfg.lr, cfg.server.lr) == (
        "logistic", InitScheme.ZEROS, 5, 20, 0.02, 1.0)
    code, out, err = _run(["--config", "tff_image_classification", "--rounds", "2",
                           "--out", str(tmp_path), "--plot", "no"], capsys)
    assert code == 0, err
    lines = _tutorial_lines(out)
    assert [int(x["t"]) for x in lines] == [1, 2]
    rows = [json.loads(r) for r in (tmp_path / "writers-float" / "metrics.jsonl").read_text()
            .splitlines()]
    for line, row in zip(lines, rows):
        assert len(row["clients"]) == 10
        assert int(line["ex"]) == 5 * row["examples"] and int(line["nb"]) == row["batches"]
        assert float(line["acc"]) == pytest.approx(row["train_accuracy"], rel=1e-6)
    bits = 2 * tff_round_bits([7840, 10], 10, None)  # raw float32 weights both ways
    assert lines[1]["down"] == lines[1]["up"] == format_size(bits) == "4.79Mibit"
    w0 = np.load(tmp_path / "writers-float" / "final_weights.npy")
    assert w0.any()  # trained away from the zero start


def test_compression_tutorial_config(tmp_path, capsys):
    """TFF's compression tutorial, without and with tff-compression: the shipped config (10
    writers a round, E = 1, B = 20, lr 0.02), run for 2 rounds with 2 writers a round to keep
    the test short; each writer costs TFF's 53,227,840 bits down and up uncompressed and
    15,357,536 up compressed, printed cumulatively as the tutorial's format_size does."""
    s = run_settings.settings(cli.build_parser().parse_args(
        ["run", "--config", "tff_compression"]))
    assert s["codec"] == ["float", "tff-compression"] and s["model"] == "cnn"
    cfg = run_settings.make_config(s, "tff-compression", s["epochs"][0], s["batch_size"][0])
    assert (cfg.fraction, cfg.epochs, cfg.batch_size, cfg.lr) == (0.05, 1, 20, 0.02)
    assert cfg.aggregator == RobustAggregator.tff_compression()
    code, out, err = _run(["--config", "tff_compression", "--rounds", "2", "--fraction", "0.01",
                           "--test-limit", "100", "--out", str(tmp_path), "--plot", "no"],
                          capsys)
    assert code == 0, err
    lines = {(x["run"], int(x["t"])): x for x in _tutorial_lines(out)}
    assert sorted(lines) == [(r, t) for r in ("writers-float", "writers-tff-compression")
                             for t in (1, 2)]
    m = 2  # floor(0.01 * 207) writers a round
    raw, packed = (tff_round_bits(TFF_TUTORIAL_CNN_SIZES, m * 2, b) for b in (None, 8))
    assert lines[("writers-float", 2)]["up"] == format_size(raw)
    assert lines[("writers-tff-compression", 2)]["up"] == format_size(packed)
    assert lines[("writers-tff-compression", 2)]["down"] == format_size(raw)
    assert format_size(tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10, 8)) == "146.46Mibit"
