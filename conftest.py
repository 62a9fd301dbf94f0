"""Collection rules for the whole checkout (pytest reads this before setup.cfg's testpaths).

``refsim/flower`` imports Flower, an optional extra (``pip install 'refsim[flower]'``): without
it, its modules are not collected for doctests, instead of failing the run on ImportError. Its
tests skip themselves with a reason (tests/test_flower_*.py).
"""

import importlib.util


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


collect_ignore_glob = [] if _has("flwr") else ["refsim/flower/*.py"]
