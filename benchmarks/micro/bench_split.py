"""Micro-benchmark: cost per request of the weighted split (`proxy.routing.split.Split.pick`).

Times `pick` for a plain cluster (no draw), the 90/10 canary split of the realistic config, and 3- and
10-way splits (one bisect over more boundaries), next to `rng.random()` alone, the floor any weighted
pick pays. Run: `python -m benchmarks.micro.bench_split [--iterations N]`.
"""

from __future__ import annotations

import random
import sys

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.config.model import SplitEntryConfig
from proxy.routing.split import Split


def split_of(*weights: int) -> Split:
    return Split.from_config(None, [SplitEntryConfig(cluster=f"c{i}", weight=w) for i, w in enumerate(weights)])


def main(argv: list[str]) -> None:
    number = iterations(argv, 500_000, __doc__.splitlines()[0])
    ns: dict[str, object] = {
        "single": Split.from_config("c", None),
        "canary": split_of(90, 10),
        "three": split_of(50, 30, 20),
        "ten": split_of(*range(1, 11)),
        "rng": random.Random(1),
    }
    # The split must still honour its weights (a fast wrong pick is no result): about 90% to c0.
    rng = random.Random(2)
    share = sum(ns["canary"].pick(rng) == "c0" for _ in range(10_000)) / 10_000  # type: ignore[attr-defined]
    assert 0.87 < share < 0.93, share
    results = {
        "rng.random() alone (floor)": ns_per_op("rng.random()", ns, number),
        "pick, single cluster (no draw)": ns_per_op("single.pick(rng)", ns, number),
        "pick, 90/10": ns_per_op("canary.pick(rng)", ns, number),
        "pick, 50/30/20": ns_per_op("three.pick(rng)", ns, number),
        "pick, 10-way": ns_per_op("ten.pick(rng)", ns, number),
    }
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
