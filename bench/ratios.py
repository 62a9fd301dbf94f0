"""Print same-run ratios from a pytest-benchmark JSON file.

Within each benchmark group, every benchmark whose ``extra_info["role"]`` is not
"baseline" is divided by the group's baseline: median time / baseline median time.

    python bench/ratios.py results.json
"""

import json
import sys
from collections import defaultdict


def ratios(path: str) -> list[tuple[str, str, float, float, float]]:
    """(group, name, median seconds, baseline median seconds, ratio) for each candidate."""
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    rows = []
    for group, benches in sorted(groups.items()):
        baselines = [b for b in benches if b["extra_info"].get("role") == "baseline"]
        if len(baselines) != 1:
            continue
        base = baselines[0]["stats"]["median"]
        for b in benches:
            if b is not baselines[0]:
                median = b["stats"]["median"]
                rows.append((group, b["name"], median, base, median / base))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    print(f"{'group':<34} {'benchmark':<44} {'median ms':>10} {'baseline ms':>12} {'ratio':>7}")
    for group, name, median, base, ratio in ratios(argv[1]):
        print(f"{group:<34} {name:<44} {median * 1e3:>10.2f} {base * 1e3:>12.2f} {ratio:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
