"""docs/validation.md is executed: every ```python block and every ``$ refsim ...`` line of
its ```console blocks, in document order, in one namespace and a fresh directory. Each command
must exit 0 (the replay must agree with refsim), the printed verdict must be the one the page
shows, and the PyTorch FedAvg must be the 20 lines the page promises."""

import pathlib
import re
import shlex

import pytest

from refsim.cli import main

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "validation.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def _blocks() -> list[tuple[str, str]]:
    """[(language, body)] of the fenced blocks, in order."""
    return FENCE.findall(DOC.read_text(encoding="utf-8"))


def _replay_block() -> str:
    blocks = [body for lang, body in _blocks()
              if lang == "python" and 'np.savez("torch_fedavg.npz"' in body]
    assert len(blocks) == 1, "exactly one block writes torch_fedavg.npz"
    return blocks[0]


def test_the_pytorch_replay_is_20_lines_after_its_imports():
    lines = [line for line in _replay_block().splitlines()
             if line.strip() and not line.startswith(("import ", "from "))]
    assert len(lines) == 20, "\n".join(lines)
    assert max(map(len, _replay_block().splitlines())) <= 100


@pytest.mark.torch
def test_the_walkthrough_runs_and_the_replay_agrees(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch", reason="the walkthrough replays in PyTorch: "
                                                "pip install torch==2.13.0 (CPU)")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace, outputs = {"__name__": "validation_md"}, []
    try:
        for lang, body in _blocks():
            if lang == "python":
                exec(compile(body, str(DOC), "exec"), namespace)
            elif lang == "console":
                for line in body.splitlines():
                    assert line.startswith("$ refsim "), f"not a refsim command: {line}"
                    code = main(shlex.split(line)[2:])
                    out, err = capsys.readouterr()
                    assert code == 0, f"{line}\n{out}{err}"
                    outputs.append(out)
    finally:
        torch.set_num_threads(threads)
    assert namespace["result"].agree and namespace["result"].rounds == (1, 2, 3)
    compare_output = next(out for out in outputs if out.startswith("A: torch_fedavg.npz"))
    shown = [b for lang, b in _blocks() if lang == "text" and b.startswith("A: torch_fedavg")]
    assert len(shown) == 1
    verdict = [line for line in shown[0].splitlines() if line.startswith("AGREE")]
    assert verdict and verdict[0] in compare_output.splitlines()
    assert shown[0].splitlines()[:2] == compare_output.splitlines()[:2]
    # The float32 walkthrough: compare-steps agrees on every step, as the page shows; the
    # band comparison finds "yours" inside.
    steps_output = next(out for out in outputs if out.startswith("candidate: torch_steps.npz"))
    shown = [b for lang, b in _blocks() if lang == "text" and b.startswith("candidate: ")]
    assert len(shown) == 1
    assert shown[0].splitlines()[:3] == steps_output.splitlines()[:3]
    rows = [line.split()[:4] for line in steps_output.splitlines() if line[:5].strip().isdigit()]
    assert rows == [line.split()[:4] for line in shown[0].splitlines()
                    if line[:5].strip().isdigit()]
    assert all(r[3] == "agree" for r in rows) and len(rows) == 12
    assert any("candidate: runs/yours" in out and "\nINSIDE: " in out for out in outputs)
    assert namespace["report"].agree
    assert (tmp_path / "runs" / "api-demo" / "trace" / "init.json").exists()
