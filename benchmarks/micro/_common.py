"""Shared by the micro-benchmarks: the iteration-count argument and best-of-N timing."""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable


def iterations(argv: list[str], default: int, description: str = "") -> int:
    """`--iterations N` (or the older positional `N`); `default` when neither is given."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--iterations", "-n", type=int, help=f"timed iterations per measurement (default {default})")
    parser.add_argument("positional", nargs="?", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv[1:])
    number = args.iterations or args.positional or default
    if number < 1:
        parser.error("iterations must be at least 1")
    return int(number)


def ns_per_op(stmt: str, namespace: dict[str, object], number: int, repeat: int = 5) -> float:
    # Best of `repeat`: the minimum is the least disturbed by the rest of the machine.
    return min(timeit.repeat(stmt, globals=namespace, number=number, repeat=repeat)) / number * 1e9


def ns_per_call(fn: Callable[[int], float], number: int, repeat: int = 5) -> float:
    """Best of `repeat` for a function that runs `number` operations and returns the seconds they took."""
    return min(fn(number) for _ in range(repeat)) / number * 1e9


def print_results(number: int, results: dict[str, float]) -> None:
    width = max(map(len, results))
    print(f"{number} iterations, best of 5, Python {sys.version.split()[0]}")
    for name, value in results.items():
        print(f"{name:<{width}}  {value:8.0f} ns/op")
