"""``refsim flower-app`` (refsim/cli/flower_app.py): the app folder and the exact commands, and
core refsim's promise that nothing outside ``refsim.flower`` imports flwr. Runs without flwr."""

import ast
import os
import pathlib
import shlex
import subprocess
import sys
import tomllib

import refsim
from refsim import cli
from refsim.cli.flower_app import app_dir

ROOT = pathlib.Path(refsim.__file__).parent


def _lines(capsys, *argv):
    code = cli.main(["flower-app", *argv])
    out, err = capsys.readouterr()
    return code, [line for line in out.splitlines() if line and not line.startswith("#")], err


def test_prints_the_app_folder_and_the_one_machine_commands(capsys):
    code, lines, _ = _lines(capsys, "--nodes", "3")
    assert code == 0
    assert lines[0] == f"Flower app folder: {app_dir()}"
    with open(os.path.join(app_dir(), "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["tool"]["flwr"]["app"]["components"]["clientapp"] == \
            "refsim.flower:client_app"
    link = next(shlex.split(x) for x in lines if x.startswith("flower-superlink"))
    assert link == ["flower-superlink", "--host", "127.0.0.1", "--port", "9093",
                    "--disable-runtime-dependency-installation", "--insecure"]
    nodes = [shlex.split(x) for x in lines if x.startswith("flower-supernode")]
    assert [n[n.index("--node-config") + 1] for n in nodes] == [
        f"partition-id={k} num-partitions=3" for k in range(3)]
    assert [n[n.index("--port") + 1] for n in nodes] == ["9094", "9095", "9096"]
    assert all(n[n.index("--superlink") + 1] == "127.0.0.1:9093" and "--insecure" in n and
               n[n.index("--host") + 1] == "127.0.0.1" for n in nodes)
    toml = "\n".join(lines[lines.index("[superlink.refsim]"):][:3])
    assert tomllib.loads(toml) == {"superlink": {"refsim": {"address": "127.0.0.1:9093",
                                                            "insecure": True}}}
    run = next(shlex.split(x) for x in lines if x.startswith("flwr run"))
    assert run[:4] == ["flwr", "run", app_dir(), "refsim"] and run[4] == "--run-config"


def test_several_machines_with_tls(capsys):
    code, lines, _ = _lines(capsys, "--nodes", "2", "--superlink-host", "10.0.0.5",
                            "--port", "443", "--tls-dir", "/etc/refsim/tls")
    assert code == 0
    link = next(shlex.split(x) for x in lines if x.startswith("flower-superlink"))
    assert link[:5] == ["flower-superlink", "--host", "0.0.0.0", "--port", "443"]
    assert "--insecure" not in link and link[link.index("--ssl-certfile") + 1] == \
        "/etc/refsim/tls/server.pem"
    nodes = [shlex.split(x) for x in lines if x.startswith("flower-supernode")]
    assert len(nodes) == 2 and all(n[n.index("--superlink") + 1] == "10.0.0.5:443" and
                                   n[n.index("--root-certificates") + 1] ==
                                   "/etc/refsim/tls/ca.crt" for n in nodes)
    assert 'root-certificates = "/etc/refsim/tls/ca.crt"' in lines


def test_a_bad_node_count_is_a_usage_error(capsys):
    code, _, err = _lines(capsys, "--nodes", "0")
    assert code == 2 and "--nodes must be >= 1, got 0" in err


def test_refsim_and_its_cli_never_import_flwr():
    code = ("import sys; import refsim.backend, refsim.nn, refsim.compress, refsim.data, "
            "refsim.fedavg, refsim.cli; from refsim.cli import main; main(['flower-app']); "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'flwr']; "
            "print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in ROOT.rglob("*.py"):
        if "flower" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            assert not any(n.split(".")[0] == "flwr" for n in names), f"{path} imports flwr"
            assert not any(n.startswith("refsim.flower") for n in names), \
                f"{path} imports refsim.flower"


def test_without_flwr_the_cli_still_works_and_refsim_flower_says_what_to_install():
    hide = "import sys; sys.modules['flwr'] = None; "
    result = subprocess.run([sys.executable, "-c", hide + "from refsim.cli import main; "
                             "sys.exit(main(['flower-app']))"], capture_output=True, text=True,
                            cwd=ROOT.parent)
    assert result.returncode == 0 and "flwr is not installed here" in result.stdout
    result = subprocess.run([sys.executable, "-c", hide + "import refsim.flower"],
                            capture_output=True, text=True, cwd=ROOT.parent)
    assert result.returncode == 1
    assert "refsim.flower needs Flower: pip install 'refsim[flower]'" in result.stderr
