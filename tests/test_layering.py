"""The layering contract of STYLE.md (backend < nn | compress | data < fedavg < cli), checked
with import-linter from the [importlinter] section of setup.cfg."""

import pathlib

import pytest

cli = pytest.importorskip("importlinter.cli", reason="import-linter comes with the test extra: "
                          "pip install -e '.[test]'")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_layers_import_only_downwards(monkeypatch):
    monkeypatch.chdir(ROOT)
    code = cli.lint_imports(config_filename=str(ROOT / "setup.cfg"), no_cache=True, no_logo=True)
    assert code == 0, \
        "a refsim module imports from a higher layer: run lint-imports for the details"
