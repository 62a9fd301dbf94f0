"""refsim.data keeps the project's rules: layering, no global RNG, small modules, explicit API."""

import ast
import pathlib
import subprocess
import sys

import refsim.data

DATA = pathlib.Path(refsim.data.__file__).parent
SOURCES = sorted(DATA.rglob("*.py"))


def test_import_pulls_in_no_higher_layer_or_optional_package():
    code = ("import sys, refsim.data; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'torch', 'cupy', 'requests') or m.startswith(('refsim.nn', "
            "'refsim.fedavg', 'refsim.compress', 'refsim.cli'))]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=DATA.parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_allowed_imports():
    allowed = {"numpy", "scipy", "refsim"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top == "matplotlib":  # the lazy, optional import of stats.label_matrix_png
                    assert path.name == "stats.py"
                    continue
                assert top in allowed | stdlib, f"{path.name} imports {name}"
                if top == "refsim":
                    # layer 0 (setup.cfg): the backend, and the checked .npz reader
                    assert name in ("refsim.backend", "refsim.safe_npz") or \
                        name.startswith("refsim.data"), f"{path.name} imports {name}"


def test_no_global_random_state():
    legacy = {"seed", "rand", "randn", "randint", "random", "shuffle", "permutation", "choice",
              "normal", "uniform", "dirichlet", "lognormal", "RandomState"}
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in legacy and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "random":
                raise AssertionError(f"{path.name}:{node.lineno} uses np.random.{node.attr}")
        for node in tree.body:  # no module-level generators
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                assert "default_rng" not in ast.unparse(node), f"{path.name}:{node.lineno}"


def test_modules_are_small_and_declare_all():
    for path in SOURCES:
        text = path.read_text()
        assert len(text.splitlines()) <= 400, f"{path.name} has {len(text.splitlines())} lines"
        if not path.name.startswith("_") or path.name == "__init__.py":
            assert "__all__" in text, f"{path.name} has no __all__"
        assert text.startswith('"""'), f"{path.name} has no module docstring"
