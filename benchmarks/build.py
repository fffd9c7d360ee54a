"""Which build of the sidecar a benchmark runs: the compiled one (what ships) or the interpreted source.

Owns making the compiled build for a run: `scripts/build-compiled` copies the tree into the run's temp dir
and compiles the request path there with mypyc (docs/decisions/0008-compiled-request-path.md). A target
runs `python -m proxy` with that copy as its working directory, so the copy's package is the one imported;
the interpreted build runs from the repository itself.
"""

from __future__ import annotations

import os
import signal
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


def _is_compiled(tree: Path) -> bool:
    return any((tree / "proxy").glob("outbound.*.so"))


def interpreted() -> SidecarBuild:
    """The repository's own source; says so when compiled modules in it shadow the source."""
    if _is_compiled(REPO):
        return SidecarBuild(REPO, True, "compiled modules found in the source tree itself (not interpreted)")
    return SidecarBuild(REPO, False, "interpreted (the source tree)")


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
        # Its own process group: on a timeout (or Ctrl-C) the compilers it started go too, not on measuring.
        build = subprocess.Popen([str(REPO / "scripts" / "build-compiled"), str(tree)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        return SidecarBuild(REPO, False, f"interpreted: compiling failed ({exc})")
    try:
        _out, err = build.communicate(timeout=BUILD_TIMEOUT)
    except BaseException as exc:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            return SidecarBuild(REPO, False, f"interpreted: compiling took over {BUILD_TIMEOUT:g}s")
        raise
    if build.returncode != 0 or not _is_compiled(tree):
        reason = (err.strip().splitlines() or ["no output"])[-1]
        return SidecarBuild(REPO, False, f"interpreted: compiling failed ({reason})")
    return SidecarBuild(tree, True, "compiled with mypyc (scripts/build-compiled)")
