"""Run every micro-benchmark in turn: `python -m benchmarks.micro [--iterations N]`.

Each runs in its own interpreter (`python -m benchmarks.micro.bench_X`), so one's warm caches, imports
and garbage do not colour the next one's numbers. `--iterations` is passed on to each (default: each
benchmark's own).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def benchmarks() -> list[str]:
    """Module names of every bench_*.py here, in name order."""
    return [f"benchmarks.micro.{p.stem}" for p in sorted(HERE.glob("bench_*.py"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", "-n", type=int, help="timed iterations per measurement")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)
    failed = []
    for module in benchmarks():
        print(f"## {module}", flush=True)
        command = [sys.executable, "-m", module]
        if args.iterations:
            command += ["--iterations", str(args.iterations)]
        try:
            code = subprocess.run(command, cwd=REPO, timeout=args.timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            code = -1
        if code != 0:
            failed.append(module)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
