"""The rig's plumbing: tools, ports, CPU pinning, child processes and what /proc says about them.

Everything here is stdlib only and knows nothing about any particular peer (benchmarks/peers/ does).
Processes are started in their own session so a whole tree (nginx master + worker, the sidecar's
supervisor + workers) can be measured and killed together, and always are killed: `Rig.close()` runs in
a `finally`, on SIGTERM/SIGINT and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# What the full comparison can use, and what each is for (printed when something is missing).
TOOLS: dict[str, str] = {
    "nginx": "the backend (required) and the nginx peer",
    "wrk": "throughput (required for throughput and CPU)",
    "hey": "latency at fixed load",
    "haproxy": "the HAProxy peer",
    "caddy": "the Caddy peer",
    "taskset": "CPU pinning (without it nothing is pinned)",
}


def which(tool: str) -> str | None:
    """The tool's path; /usr/sbin is searched too (Debian's nginx and haproxy live there)."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the child binds it a moment later; races are unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it) as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the load side (load generator + backend) and the proxy under test run on."""

    load: str | None
    proxy: str | None
    note: str

    @classmethod
    def detect(cls) -> Pinning:
        if which("taskset") is None:
            return cls(None, None, "taskset not found: nothing is pinned")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            return cls(str(cpus[0]), str(cpus[1]),
                       f"load generator + backend on CPU {cpus[0]}, proxy under test on CPU {cpus[1]}")
        return cls(str(cpus[0]), str(cpus[0]), f"only one CPU: everything on CPU {cpus[0]} (ratios meaningless)")

    def wrap(self, cpu: str | None, argv: Sequence[str]) -> list[str]:
        return ["taskset", "-c", cpu, *argv] if cpu is not None else list(argv)


# -- /proc ----------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    return text[text.rfind(")") + 2:].split()


def tree(root: int) -> list[int]:
    """`root` and every live descendant (by walking /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime of the whole tree, plus what reaped children left in cutime+cstime (a worker that
    exited during a run still counts; a live child is never in its parent's cutime, so nothing twice)."""
    ticks = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the ")" split: index 11..14 are utime, stime, cutime, cstime (stat fields 14..17).
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def rss_bytes(root: int) -> int:
    """Sum of VmRSS over the tree: what a container would be charged for these processes."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def machine() -> dict[str, object]:
    """What the results were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output (stderr for nginx), or '' when it cannot say."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


# -- child processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child started in its own session (so its whole group can be signalled), logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `grace` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # The leader may be gone while its group lives on (an nginx worker): kill the group regardless.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(2)


@dataclass
class Rig:
    """The run's temp dir and every process started in it; `close()` kills them all."""

    workdir: Path
    pinning: Pinning
    procs: list[Proc] = field(default_factory=list)
    # Where `python -m proxy` runs from for the `sidecar` target: a compiled copy (benchmarks/build.py)
    # or the repository (the interpreted source).
    sidecar_tree: Path = REPO

    def __post_init__(self) -> None:
        atexit.register(self.close)

    def start(self, name: str, argv: Sequence[str], cpu: str | None, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with log.open("wb") as out:
            popen = subprocess.Popen(
                self.pinning.wrap(cpu, argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=str(cwd or self.workdir), start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            self.procs.pop().stop()


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the rig runs, so `finally` blocks kill the children."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- readiness --------------------------------------------------------------------------------------


def http_get(port: int, path: str = "/", timeout: float = 2.0, headers: str = "") -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body). Raises OSError when nothing answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if match is None:
        raise OSError(f"not an HTTP response: {head[:60]!r}")
    return int(match.group(1)), body


def wait_ready(proc: Proc, port: int, timeout: float = 15.0, path: str = "/") -> str | None:
    """Poll GET `path` until 200; None when ready, else why not (the process died, or it never answered)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            return f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}"
        try:
            status, _ = http_get(port, path)
            if status == 200:
                return None
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    return f"{proc.name} not ready after {timeout:g}s ({last}):\n{proc.log_tail()}"


def write_results(results: dict, out: Path, suffix: str, table: str) -> tuple[Path, Path, str]:
    """Write a run's results as `DAY-HOST{suffix}.json` and its table as `latest{suffix}.md` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    json_path = out / f"{day}-{results['machine']['host']}{suffix}.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    md_path = out / f"latest{suffix}.md"
    md_path.write_text(table)
    return json_path, md_path, table


def run_main(argv: list[str] | None, parse_args: Callable[[list[str] | None], Any],
             run: Callable[[Any], dict], write: Callable[[dict, Path], tuple[Path, Path, str]],
             say: Callable[[str], None], skip: type[Exception]) -> int:
    """A benchmark command's main: run, write the results, print the table; exit 2 when it cannot run."""
    args = parse_args(argv)
    try:
        results = run(args)
    except skip as exc:
        say(f"cannot run: {exc}")
        return 2
    json_path, md_path, table = write(results, args.out)
    print(table)
    say(f"wrote {json_path} and {md_path}")
    return 0
