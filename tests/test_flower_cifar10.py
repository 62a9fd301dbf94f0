"""The Flower CIFAR-10 tutorial as refsim runs it (``--config flower_cifar10``), on synthetic
CIFAR-format folders written here (the real files are not shipped): preprocessing, the
federated evaluation share, the config, and one line for a missing or damaged folder."""

import json

import numpy as np
import pytest
from cifar_files import write_cifar_folder

from refsim import cli
from refsim.data import ImageData, load_cifar10
from refsim.fedavg import from_images


def test_normalize_is_torchvisions_to_tensor_then_normalize_bit_for_bit(tmp_path):
    torch = pytest.importorskip("torch")
    write_cifar_folder(tmp_path / "c", 7, seed=0)
    images = load_cifar10(tmp_path / "c")
    data = from_images(images, np.float32, normalize=(0.5, 0.5))
    assert data.x_train.shape == (35, 3, 32, 32) and data.x_train.dtype == np.float32
    # torchvision: ToTensor() = uint8 -> float32 / 255; Normalize = sub_(mean).div_(std)
    mean = torch.tensor([0.5] * 3)[:, None, None]
    x = torch.from_numpy(images.x_train).to(torch.float32).div(255).sub(mean).div(mean)
    np.testing.assert_array_equal(data.x_train, x.numpy())
    assert data.x_train.min() >= -1 and data.x_train.max() <= 1
    grey = ImageData(x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2, np.int64),
                     x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.int64))
    assert from_images(grey).x_train.shape == (2, 1, 28, 28)


def _run(argv, capsys):
    code = cli.main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_tutorial_config_is_flowers_tutorial():
    from refsim.cli import run_settings
    from refsim.fedavg.client_opt import ClientOpt, ClientStatePolicy
    args = cli.build_parser().parse_args(["run", "--config", "flower_cifar10", "--data-dir", "d"])
    s = run_settings.settings(args)
    (cfg,) = [run_settings.make_config(s, c, e, b) for c in s["codec"]
              for e, b in run_settings.grid(s)]
    assert (s["dataset"], s["model"], s["normalize"], s["clients"]) == (
        "cifar10", "cnn-cifar", [0.5, 0.5], 10)
    assert (cfg.fraction, cfg.epochs, cfg.batch_size, cfg.lr, cfg.rounds) == (1.0, 1, 32, 1e-3, 5)
    assert cfg.client_opt.kind is ClientOpt.ADAM and cfg.client_opt.state is ClientStatePolicy.RESET
    assert (cfg.client_opt.beta1, cfg.client_opt.beta2, cfg.client_opt.eps) == (0.9, 0.999, 1e-8)
    assert (cfg.eval_holdout, cfg.fraction_evaluate, cfg.codec) == (0.1, 0.5, cfg.codec)
    assert cfg.init.value == "torch"


def test_the_tutorial_runs_on_a_synthetic_cifar_folder(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder, 60, seed=2)  # 300 training images: 10 clients of 30 (27 + 3)
    out = tmp_path / "run"
    code, stdout, err = _run(["--config", "flower_cifar10", "--data-dir", str(folder),
                              "--rounds", "2", "--out", str(out), "--plot", "no"], capsys)
    assert code == 0, err
    summary = json.loads((out / "iid-float" / "summary.json").read_text())
    assert summary["model"] == "cnn_cifar" and summary["num_clients"] == 10
    rows = (out / "iid-float" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        cells = dict(zip(header, row.split(",")))
        assert cells["clients"] == " ".join(map(str, range(10)))  # fraction_fit 1.0
        assert cells["examples"] == "270" and cells["batches"] == str(10 * 1)  # 27 < B = 32
        assert cells["fed_eval_accuracy"] != "" and cells["test_accuracy"] != ""
    again = tmp_path / "again"
    assert _run(["--config", "flower_cifar10", "--data-dir", str(folder), "--rounds", "2",
                 "--out", str(again), "--plot", "no"], capsys)[0] == 0
    assert (again / "iid-float" / "metrics.csv").read_bytes() == \
        (out / "iid-float" / "metrics.csv").read_bytes()  # the same seed, the same bits


@pytest.mark.parametrize("damage, message", [
    ("missing", "batch data_batch_4 not found"),
    ("truncated", "data_batch_4: not a readable CIFAR-10 pickle"),
    ("empty", "data_batch_4: not a readable CIFAR-10 pickle"),
    ("foreign", "data_batch_4: refusing to unpickle global"),
])
def test_a_missing_or_damaged_folder_is_one_line_naming_the_file(tmp_path, capsys, damage,
                                                                  message):
    import os
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder, 5, seed=3)
    path = folder / "data_batch_4"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}, protocol=4))
    code, _, err = _run(["--config", "flower_cifar10", "--data-dir", str(folder), "--rounds",
                         "1", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("refsim run: error: --data-dir: ")
