"""Reproduce CNN rows of Table 2 of the FedAvg paper on the embedded MNIST, C = 0.1.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Table 2: communication rounds for the MNIST CNN
to reach 99% test accuracy with K = 100 clients and C = 0.1, for E in {1, 5, 20} and
B in {inf, 50, 10}, IID and pathological non-IID (200 shards of 300, 2 per client). The paper
tuned the learning rate per setting and does not list it; pass ``--lr``. Each row evaluates every
round on all 10,000 test images and stops at the first round that reaches the target, or at
``--max-rounds``. ``--backend cupy`` runs on a GPU. From the repository root:

    PYTHONPATH=. python bench/reproduce_table2.py --rows iid:5:10 --lr 0.1 --max-rounds 60
"""

from __future__ import annotations

import argparse
import time

from reproduce_table1 import run_row
from refsim.nn import cnn_mnist

# Table 2, CNN, C = 0.1, rounds to 99%: (partition, E, B) -> rounds; B = None is B = inf.
PAPER = {("iid", 1, None): 626, ("iid", 5, None): 179, ("iid", 1, 50): 65,
         ("iid", 20, None): 234, ("iid", 1, 10): 34, ("iid", 5, 50): 29, ("iid", 20, 50): 32,
         ("iid", 5, 10): 20, ("iid", 20, 10): 18,
         ("noniid", 1, None): 483, ("noniid", 5, None): 1000, ("noniid", 1, 50): 600,
         ("noniid", 20, None): 672, ("noniid", 1, 10): 350, ("noniid", 5, 50): 334,
         ("noniid", 20, 50): 426, ("noniid", 5, 10): 229, ("noniid", 20, 10): 173}


def _row(spec: str) -> tuple[str, int, int | None]:
    kind, e, b = spec.split(":")
    return kind, int(e), None if b == "inf" else int(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=["iid:5:10"],
                   help="kind:E:B triples, kind in iid/noniid, E in 1 5 20, B in inf 50 10")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--max-rounds", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--client-stack", type=int, default=1,
                   help="train up to N equal-sized clients side by side (client_stack)")
    p.add_argument("--client-threads", type=int, default=1,
                   help="train up to N clients at once on threads (client_threads; the same "
                        "bits; start with OPENBLAS_NUM_THREADS=1)")
    args = p.parse_args()
    print(f"CNN, C=0.1, K=100, lr={args.lr}, target {args.target}, seed {args.seed}, "
          f"backend {args.backend}, client_stack {args.client_stack}, "
          f"client_threads {args.client_threads}")
    print(f"{'partition':<10}{'E':>4}{'B':>5}{'paper':>8}{'refsim':>8}{'best acc (round)':>20}"
          f"{'time s':>9}")
    for spec in args.rows:
        kind, e, b = _row(spec)
        start = time.perf_counter()
        rounds, best = run_row(kind, 0.1, args.lr, args.target, args.max_rounds, args.seed,
                               model=cnn_mnist(), epochs=e, batch_size=b, backend=args.backend,
                               progress=True, client_stack=args.client_stack,
                               client_threads=args.client_threads)
        ours = str(rounds) if rounds is not None else f">{args.max_rounds}"
        print(f"{kind:<10}{e:>4}{'inf' if b is None else b:>5}{PAPER[(kind, e, b)]:>8}{ours:>8}"
              f"{f'{best[0]:.4f} ({best[1]})':>20}{time.perf_counter() - start:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
