"""Which build of the sidecar a benchmark runs: the compiled one (what ships) or the interpreted source.

Owns making the compiled build for a run: `scripts/build-compiled` copies the tree into the run's temp dir
and compiles the request path there with mypyc (docs/decisions/0008-compiled-request-path.md). A target
runs `python -m proxy` with that copy as its working directory, so the copy's package is the one imported;
the interpreted build runs from the repository itself.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.rig import REPO

BUILD_TIMEOUT = 900.0  # about 1.5 minutes on 2 cores; generous for a loaded machine
# Set by ./scripts/test, which has already compiled a copy for its own test run: reuse it.
COMPILED_TREE_ENV = "SIDECAR_COMPILED_TREE"


@dataclass(frozen=True)
class SidecarBuild:
    """Where to run `python -m proxy` from, and what that build is (for the report)."""

    tree: Path
    compiled: bool
    note: str


INTERPRETED = SidecarBuild(REPO, False, "interpreted (the source tree)")


def _is_compiled(tree: Path) -> bool:
    return any((tree / "proxy").glob("outbound.*.so"))


def compiled_build(workdir: Path, existing: str | None = None) -> SidecarBuild:
    """The compiled build: `existing` (or $SIDECAR_COMPILED_TREE) if given, else compiled now into workdir.

    Falls back to the interpreted build, saying why, when compiling is not possible here (no C compiler,
    no mypy): the run then still measures the sidecar, and the report says which build it was.
    """
    given = existing or os.environ.get(COMPILED_TREE_ENV)
    if given:
        tree = Path(given).resolve()
        if _is_compiled(tree):
            return SidecarBuild(tree, True, f"compiled with mypyc ({tree})")
        return SidecarBuild(REPO, False, f"interpreted: {tree} holds no compiled build")
    tree = workdir / "compiled"
    try:
        done = subprocess.run([str(REPO / "scripts" / "build-compiled"), str(tree)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SidecarBuild(REPO, False, f"interpreted: compiling failed ({exc})")
    if done.returncode != 0 or not _is_compiled(tree):
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return SidecarBuild(REPO, False, f"interpreted: compiling failed ({reason})")
    return SidecarBuild(tree, True, "compiled with mypyc (scripts/build-compiled)")
