"""Process runtime: the event loop (uvloop), signals, worker processes, and running until drained.

Owns installing uvloop, logging set-up, SIGTERM/SIGINT -> drain, SIGHUP -> reload, the exit code,
and, for `workers: N > 1`, the supervisor: it spawns N worker processes that share every listener
through SO_REUSEPORT, restarts a worker that dies, serves `admin.address` itself by fanning out to the
workers' admin unix sockets, approves each reload for all workers (and moves its admin server) before
they apply it, and drains them all on shutdown (docs/decisions/0005-workers.md).
Must not build request-path objects (app.py does) or parse argv (cli.py does).

`workers: 1` runs the App in this very process, with no supervisor: a sidecar's idle memory is paid
once per pod, so the common case must not pay for a second interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import uvloop
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from proxy.admin.server import AdminServer
from proxy.app import App, BindError, bind_moved_admin, unsupported_keys
from proxy.config.load import ConfigError, ConfigUnreadable, LoadedConfig, parse_config, read_and_hash
from proxy.config.model import Config, host_port
from proxy.config.watch import ConfigWatcher
from proxy.security.tls import TlsError
from proxy.telemetry.exposition import OPENMETRICS, render_metrics
from proxy.telemetry.log_format import JsonFormatter, text_format
from proxy.telemetry.merge import MergedMetrics, Source, merge
from proxy.telemetry.metrics import RELOAD_RESULTS, Metrics

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("proxy.runtime")

# A worker that crashes again within STABLE_AFTER seconds of starting is crash-looping: its restart
# delay doubles from RESTART_DELAY_MIN up to RESTART_DELAY_MAX; a worker that ran longer starts over.
RESTART_DELAY_MIN: Final = 0.5
RESTART_DELAY_MAX: Final = 5.0
STABLE_AFTER: Final = 10.0
# Admin requests to a worker are tiny and local; a worker that cannot answer in this long is stuck.
WORKER_ADMIN_TIMEOUT: Final = 5.0
# After drain_timeout, workers get this long to finish stopping before SIGKILL.
STOP_GRACE: Final = 5.0


def setup_logging(level: str = "info", tag: str | None = None, log_format: str = "text") -> None:
    """Log to stderr, as text or one JSON object per line (`--log-format`); `tag` (e.g. "worker-1") marks
    a worker's lines, which share the supervisor's stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(tag) if log_format == "json" else logging.Formatter(text_format(tag)))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _wire_reload(app: App, *, watch: bool = True) -> None:
    """SIGHUP and a change of the config file on disk reload the App (CONTRACT "Reload and lifecycle");
    SIGUSR1 reopens the access log file (logrotate). A supervised worker does not watch the file: its
    supervisor does, and signals it once it approves."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    loop.add_signal_handler(signal.SIGUSR1, app.reopen_access_log)
    if watch:
        app.watch_config()


# -- one process (workers: 1) ----------------------------------------------------------------------


async def serve(loaded: LoadedConfig, node_name: str | None = None) -> int:
    """Run until SIGTERM/SIGINT or POST /shutdown, then drain; 0 after a clean drain. `node_name`: this pod's
    node (`$NODE_NAME`), whose zone Kubernetes discovery reads when `node.zone` is not set."""
    app = App(loaded)
    app.node_name = node_name
    try:
        await app.start()
    except OSError as exc:
        print(f"sidecar: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except TlsError as exc:  # a cluster's (or listener's) cert, key or CA that cannot make a context
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.request_shutdown)
    _wire_reload(app)
    log.info("%s", app.describe_bound())
    await app.wait_for_shutdown()
    log.info("draining (up to %gs)", loaded.config.drain_timeout)
    await app.drain_and_stop()
    log.info("stopped")
    return 0


def run(loaded: LoadedConfig, workers: int = 1, log_level: str = "info", node_name: str | None = None,
        log_format: str = "text") -> int:
    """Run the sidecar on uvloop: in this process for one worker, else as a supervisor of `workers` (each
    worker reads `$NODE_NAME` itself)."""
    uvloop.install()
    if workers <= 1:
        return asyncio.run(serve(loaded, node_name))
    return asyncio.run(supervise(loaded, workers, log_level, log_format))


# -- a worker process (spawned by the supervisor) --------------------------------------------------


class _EndOfInput(asyncio.Protocol):
    """Calls `on_eof` when the supervisor's end of our stdin pipe closes, i.e. when the supervisor died.

    Why a pipe rather than prctl(PR_SET_PDEATHSIG): the pipe exists before the fork, so a supervisor that
    dies while the worker is still starting is noticed too (the prctl call would come after exec, racing
    it), and it is portable. The worker then drains like on SIGTERM, so it never outlives its supervisor
    by more than its drain.
    """

    def __init__(self, on_eof: Callable[[], None]) -> None:
        self._on_eof = on_eof
        self.orphaned = False

    def eof_received(self) -> bool | None:
        self.connection_lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.orphaned = True
        self._on_eof()


def _report(message: dict[str, Any]) -> None:
    # One JSON line on stdout is the worker's only message to its supervisor: bound (with ports) or error.
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_worker(loaded: LoadedConfig, admin_socket: str, snapshot: Path | None = None,
                       ports: Mapping[str, int] | None = None, node_name: str | None = None,
                       stdout_fd: int | None = None) -> int:
    """Run one worker: listeners with SO_REUSEPORT, the admin view on `admin_socket`, reloads from the
    supervisor's `snapshot` of the config it approved, port-0 listeners pinned to `ports`; drain on
    SIGTERM, SIGINT, or when the supervisor goes away."""
    app = App(loaded, admin_unix=admin_socket, reuse_port=True, source=snapshot, pinned_ports=ports)
    app.node_name = node_name
    loop = asyncio.get_running_loop()
    # Signal handlers before the bound report: the supervisor forwards signals only to reported workers.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.request_shutdown)
    try:
        await app.start()
    except OSError as exc:
        _report({"error": str(exc.strerror or exc)})
        return 1
    except TlsError as exc:
        _report({"error": str(exc)})
        return 1
    _wire_reload(app, watch=False)
    _transport, supervisor = await loop.connect_read_pipe(lambda: _EndOfInput(app.request_shutdown), sys.stdin)
    # Only the supervisor's line names the listeners (CONTRACT: the first line of `run`'s log).
    log.debug("%s", app.describe_bound())
    _report({"bound": app.bound})
    # Nothing else may write to the report pipe (nobody reads it after the first line).
    sys.stdout = sys.stderr
    if stdout_fd is not None:
        # The supervisor's own stdout, passed down: the access log's `path: stdout` writes to fd 1.
        os.dup2(stdout_fd, 1)
        os.close(stdout_fd)
    await app.wait_for_shutdown()
    log.debug("draining (up to %gs)", loaded.config.drain_timeout)
    await app.drain_and_stop()
    if supervisor.orphaned:
        # The supervisor died without cleaning up: the last worker out removes the runtime directory
        # (rmdir fails, harmlessly, while a sibling's socket is still there).
        with contextlib.suppress(OSError):
            os.unlink(admin_socket)
            os.rmdir(os.path.dirname(admin_socket))
    return 0


def run_worker(loaded: LoadedConfig, admin_socket: str, ports: Mapping[str, int],
               snapshot: Path | None = None, node_name: str | None = None, stdout_fd: int | None = None) -> int:
    """The hidden `worker` command: one worker process of a supervised sidecar."""
    # A SIGHUP (or SIGUSR1) forwarded before the loop's handler exists must not kill the worker (the
    # default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    uvloop.install()
    return asyncio.run(serve_worker(loaded, admin_socket, snapshot, ports, node_name, stdout_fd))


# -- the supervisor (workers: N > 1) ---------------------------------------------------------------


def _unbindable_listeners(running: Config, new: Config) -> str:
    """The first listener the new config adds or moves whose address cannot be bound here, as workers bind
    it (SO_REUSEADDR and SO_REUSEPORT, so our own workers' sockets do not count), with the reason; "" when
    every new address binds. Port 0 is picked by the first worker, so it is never probed."""
    current = {(listener.address.host, listener.address.port) for listener in running.listeners}
    for listener in new.listeners:
        host, port = listener.address.host, listener.address.port
        if port == 0 or (host, port) in current:
            continue
        try:
            family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(where)
        except OSError as exc:
            return f"listener {listener.name} at {host_port(host, port)}: {exc.strerror or exc}"
    return ""


def _write_snapshot(path: Path, raw: bytes) -> None:
    """Replace the approved-config snapshot whole: a worker reading it sees the old bytes or the new."""
    partial = path.with_suffix(".partial")
    partial.write_bytes(raw)
    os.replace(partial, path)


def describe_exit(returncode: int) -> str:
    """'exited with code 3' or 'killed by SIGKILL', for the log line explaining a restart."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


@dataclasses.dataclass(eq=False)
class WorkerSlot:
    """One worker index: the process currently filling it (replaced on restart) and how it is doing."""

    index: int
    socket_path: str
    session: aiohttp.ClientSession
    proc: asyncio.subprocess.Process | None = None
    bound: dict[str, tuple[str, int]] | None = None
    started_at: float = 0.0
    restart_delay: float = 0.0
    state: str = "starting"  # why it is not serving, while `bound` is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def serving(self) -> bool:
        return self.bound is not None and self.pid is not None


class Supervisor:
    """Spawns and watches the worker processes of one sidecar, and drains them together."""

    def __init__(self, loaded: LoadedConfig, count: int, runtime_dir: Path, log_level: str) -> None:
        self.loaded = loaded
        self.runtime_dir = runtime_dir
        self.log_level = log_level
        # Ports the first worker got for listeners configured with port 0; every later (re)start binds these.
        self.ports: dict[str, int] = {}
        self.slots = [self._slot(i) for i in range(count)]
        # The supervisor's own registry, merged into /metrics (the same family definitions as a worker's).
        # Workers apply and count each reload themselves; merge.py takes the max for that family.
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.config_reloads = {result: self.metrics.config_reloads(result) for result in RELOAD_RESULTS}
        self.draining = False
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # What workers run: the bytes of the config this supervisor approved last. Workers start and reload
        # from it, never from the file itself, so none runs a file the supervisor refused (below).
        self.snapshot = runtime_dir / "config.yaml"
        _write_snapshot(self.snapshot, loaded.raw)
        # The admin server on `admin.address` (supervise() starts it) and its port, moved by a reload.
        self.admin: AdminServer | None = None
        self.admin_port = 0
        self._reload_lock = asyncio.Lock()
        self._reloader: asyncio.Task[None] | None = None
        self._reload_wanted = False
        self._refused_hash: str | None = None
        # Our stdout, passed to every worker (whose fd 1 is its report pipe) for the access log's `stdout`.
        self.stdout_fd = os.dup(1)
        # How workers format their log lines (`--log-format`).
        self.log_format = "text"

    def _slot(self, index: int) -> WorkerSlot:
        path = str(self.runtime_dir / f"worker-{index}.sock")
        # force_close: a restarted worker listens on the same path, so a pooled connection would point at
        # the dead process; admin traffic is too rare to need keep-alive.
        # Imported here: only a supervisor needs an HTTP client, and aiohttp costs a single-process
        # sidecar ~12 MB of idle RSS.
        import aiohttp

        connector = aiohttp.UnixConnector(path=path, force_close=True)
        session = aiohttp.ClientSession(connector=connector,
                                        timeout=aiohttp.ClientTimeout(total=WORKER_ADMIN_TIMEOUT))
        return WorkerSlot(index, path, session)

    # -- starting and restarting ---------------------------------------------------------------------

    def _command(self, slot: WorkerSlot) -> list[str]:
        command = [sys.executable, "-m", "proxy", "worker", "--config", str(self.loaded.path),
                   "--snapshot", str(self.snapshot), "--index", str(slot.index), "--admin-socket", slot.socket_path,
                   "--log-level", self.log_level, "--log-format", self.log_format,
                   "--stdout-fd", str(self.stdout_fd)]
        for name, port in self.ports.items():
            command += ["--port", f"{name}={port}"]
        return command

    async def _spawn(self, slot: WorkerSlot) -> str | None:
        """Start a process for `slot` and wait for its bound report; None on success, else why it failed.

        The worker reads the snapshot of the config approved last: a worker restarted after a reload starts
        on the same config as its reloaded siblings, and never on a file the supervisor refused.
        """
        slot.bound = None
        version = self.loaded.version_hash
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(slot), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                pass_fds=(self.stdout_fd,))
        except OSError as exc:  # out of processes or file descriptors: retried like a crash
            return f"cannot spawn: {exc.strerror or exc}"
        slot.proc = proc
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        try:
            message = json.loads(line) if line else {}
        except ValueError:
            message = {}
        if isinstance(message, dict) and "bound" in message:
            slot.bound = {name: (str(host), int(port)) for name, (host, port) in message["bound"].items()}
            slot.started_at = time.monotonic()
            if self._stopping.is_set():
                # Shutdown began while it was starting; it missed the forwarded SIGTERM.
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            elif self.loaded.version_hash != version:
                # A reload was approved while it was starting: it may have read the older snapshot, and
                # missed the forwarded SIGHUP.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        returncode = await proc.wait()
        error = message.get("error") if isinstance(message, dict) else None
        return str(error) if error else describe_exit(returncode)

    async def start(self) -> str | None:
        """Start every worker; None once all are bound, else the reason the sidecar cannot start."""
        configured = {listener.name: listener.address.port for listener in self.loaded.config.listeners}
        rest = self.slots
        if 0 in configured.values():
            # Port 0: the first worker learns which port the kernel picks; the others then share that one.
            first, rest = self.slots[0], self.slots[1:]
            error = await self._spawn(first)
            if error is not None:
                return f"worker 0: {error}"
            assert first.bound is not None
            self.ports = {name: port for name, (_host, port) in first.bound.items() if configured.get(name) == 0}
        errors = await asyncio.gather(*(self._spawn(slot) for slot in rest))
        # Workers usually fail alike (a port taken): name each distinct reason once, with its workers.
        failed: dict[str, list[str]] = {}
        for slot, error in zip(rest, errors, strict=True):
            if error is not None:
                failed.setdefault(error, []).append(str(slot.index))
        if failed:
            return "; ".join(f"worker{'s' if len(who) > 1 else ''} {', '.join(who)}: {error}"
                             for error, who in failed.items())
        for slot in self.slots:
            task = asyncio.create_task(self._watch(slot), name=f"watch worker {slot.index}")
            self._tasks.add(task)
        return None

    async def _sleep_unless_stopping(self, delay: float) -> bool:
        """Sleep `delay` seconds; False at once if shutdown begins meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        return not self._stopping.is_set()

    async def _watch(self, slot: WorkerSlot) -> None:
        """Restart the worker in `slot` whenever it dies, until shutdown."""
        while True:
            assert slot.proc is not None
            pid = slot.proc.pid
            returncode = await slot.proc.wait()
            slot.bound = None
            if self._stopping.is_set():
                slot.state = "stopped"
                return
            reason = describe_exit(returncode)
            crash_looping = time.monotonic() - slot.started_at < STABLE_AFTER and slot.restart_delay > 0
            delay = min(slot.restart_delay * 2, RESTART_DELAY_MAX) if crash_looping else RESTART_DELAY_MIN
            log.warning("worker %d (pid %d) %s; restarting in %gs", slot.index, pid, reason, delay)
            while True:
                slot.restart_delay = delay
                slot.state = f"restarting ({reason})"
                if not await self._sleep_unless_stopping(delay):
                    slot.state = "stopped"
                    return
                error = await self._spawn(slot)
                if error is None:
                    log.info("worker %d restarted (pid %d)", slot.index, slot.proc.pid)
                    break
                reason = f"failed to start: {error}"
                delay = min(delay * 2, RESTART_DELAY_MAX)
                log.warning("worker %d %s; retrying in %gs", slot.index, reason, delay)

    # -- reloads ---------------------------------------------------------------------------------------

    def watch_config(self) -> None:
        """Reload when the config file changes on disk (workers do not watch it themselves)."""
        watcher = ConfigWatcher(self.loaded.path, self.request_reload)
        task = asyncio.create_task(watcher.run(), name="config watch")
        self._tasks.add(task)

    def request_reload(self) -> None:
        """SIGHUP or a changed file: requests arriving while a reload runs collapse into one follow-up."""
        self._reload_wanted = True
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload_while_wanted(), name="config reload")

    async def _reload_while_wanted(self) -> None:
        while self._reload_wanted and not self.draining:
            self._reload_wanted = False
            await self.reload()

    async def reload(self) -> bool:
        """Approve the file or refuse it, for every worker at once (docs/decisions/0005-workers.md).

        The supervisor parses the file (in a thread) and refuses what a worker would refuse for the same
        reason (invalid, unsupported keys), and binds a moved `admin.address`, which is its own socket,
        before anything changes. Only then does it write the bytes to the snapshot and signal the workers,
        who apply them (and count the success). A refusal here is logged and counted once, here; workers
        never see the file. SIGHUP with the file unchanged is passed on as it is."""
        async with self._reload_lock:
            if self.draining:
                return False
            path = self.loaded.path
            try:
                raw, digest = await asyncio.to_thread(read_and_hash, path)
            except ConfigUnreadable as error:
                log.error("reload refused: %s; the running config (version %s) stays", error.problems[0],
                          self.loaded.version_hash[:12])
                self.config_reloads["failure"].inc()
                return False
            if digest == self.loaded.version_hash:
                self._refused_hash = None
                self.forward(signal.SIGHUP)  # each worker finds its snapshot unchanged too (and says so)
                return True
            if digest == self._refused_hash:
                log.info("reload: %s is the content already refused; not tried again until the file changes",
                         path)
                return False
            return await self._reload_from(raw, digest, path)

    async def _reload_from(self, raw: bytes, digest: str, path: Path) -> bool:
        """The part of a reload past the hash check: refuse what a worker would refuse for the same reason
        (invalid, unsupported keys, a listener it cannot bind), else approve it."""
        try:
            loaded = await asyncio.to_thread(parse_config, raw, path)
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload refused: %s", problem)
            return self._refuse(digest, f"{path}: {len(error.problems)} problem(s)")
        missing = unsupported_keys(loaded.config)
        if missing:
            for key in missing:
                log.error("reload refused: %s: not supported yet: %s", path, key)
            return self._refuse(digest, f"{path}: {len(missing)} key(s) name features that do not exist yet")
        unbindable = await asyncio.to_thread(_unbindable_listeners, self.loaded.config, loaded.config)
        if unbindable:
            # Workers would refuse it, each on its own, after this had approved it: a worker restarted
            # later would then start from a config its siblings refused. Refuse it here, once, for all.
            return self._refuse(digest, f"cannot bind {unbindable}")
        return await self._approve(loaded, raw, digest, path)

    async def _approve(self, loaded: LoadedConfig, raw: bytes, digest: str, path: Path) -> bool:
        """Bind a moved admin address and write the snapshot (refusing the reload if either fails), then
        signal the workers and let the moved admin server replace the old one."""
        address = loaded.config.admin.address
        moved: tuple[AdminServer, int] | None = None
        if address != self.loaded.config.admin.address:
            try:
                moved = await bind_moved_admin(SupervisorView(self), address, self.admin, self.admin_port)
            except BindError as exc:
                return self._refuse(digest, f"cannot bind {exc}")
        try:
            await asyncio.to_thread(_write_snapshot, self.snapshot, raw)
        except OSError as exc:
            if moved is not None:
                await moved[0].stop()
            return self._refuse(digest, f"cannot write {self.snapshot}: {exc.strerror or exc}")
        self._refused_hash = None
        self.loaded = loaded
        self.forward(signal.SIGHUP)
        log.info("reload approved: %s: version %s; signalled the workers", path, digest[:12])
        if moved is not None:
            old_admin, (self.admin, self.admin_port) = self.admin, moved
            log.info("admin moved to %s", host_port(address.host, self.admin_port))
            if old_admin is not None:
                await old_admin.stop()
        return True

    def _refuse(self, digest: str, why: str) -> bool:
        log.error("reload refused: %s; the running config (version %s) stays", why, self.loaded.version_hash[:12])
        self.config_reloads["failure"].inc()
        self._refused_hash = digest
        return False

    # -- signals and shutdown --------------------------------------------------------------------------

    def forward(self, signum: signal.Signals) -> None:
        """Send `signum` to every worker that has reported in (their handlers are installed by then)."""
        for slot in self.slots:
            if slot.serving and slot.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signum)

    def request_shutdown(self) -> None:
        """SIGTERM, SIGINT or POST /shutdown: /ready turns 503 at once, then the workers drain."""
        self.draining = True
        self._stopping.set()

    async def wait_for_shutdown(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Forward SIGTERM, wait for every worker's drain (each bounded by drain_timeout), then clean up."""
        self.request_shutdown()
        procs = [slot.proc for slot in self.slots if slot.proc is not None and slot.proc.returncode is None]
        for proc in procs:
            # Also to a worker still starting (not reported yet): it has nothing to drain, so the default
            # action (exit) before its handler exists is as good as the drain after.
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=self.loaded.config.drain_timeout + STOP_GRACE)
            for slot in self.slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    log.warning("worker %d (pid %d) did not stop in time; killing it", slot.index, slot.proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.kill()
            if pending:
                await asyncio.wait(pending)
        tasks = [*self._tasks, *([self._reloader] if self._reloader is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self) -> None:
        """Close the admin client sessions (after the admin server, whose pages use them, has stopped)."""
        for slot in self.slots:
            await slot.session.close()
        os.close(self.stdout_fd)

    # -- talking to workers ----------------------------------------------------------------------------

    async def ask(self, slot: WorkerSlot, method: str, path: str,
                  headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One admin request to a worker over its unix socket: (status, body)."""
        async with slot.session.request(method, f"http://worker-{slot.index}{path}", headers=headers) as response:
            return response.status, await response.text()

    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()


class SupervisorView:
    """The supervisor's `AdminSource`: answers for the whole sidecar by asking every worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    async def _each(self, call: Callable[[WorkerSlot], Awaitable[Any]]) -> list[Any]:
        # Serving workers in parallel; one that fails yields its exception rather than failing the page.
        return await asyncio.gather(*(call(slot) for slot in self._sup.slots), return_exceptions=True)

    async def ready(self) -> tuple[bool, str]:
        if self._sup.draining:
            return False, "draining"

        async def one(slot: WorkerSlot) -> str | None:
            if not slot.serving:
                return f"worker {slot.index} {slot.state}"
            status, text = await self._sup.ask(slot, "GET", "/ready")
            return None if status == 200 else f"worker {slot.index}: {text.strip()}"

        reasons = []
        for slot, answer in zip(self._sup.slots, await self._each(one), strict=True):
            if isinstance(answer, BaseException):
                reasons.append(f"worker {slot.index}: admin unreachable ({type(answer).__name__})")
            elif answer is not None:
                reasons.append(answer)
        return (False, "; ".join(reasons)) if reasons else (True, "ready")

    async def config_dump(self) -> dict[str, Any]:
        # Every worker runs the same file; the first one serving answers (worker 0 unless it is restarting).
        for slot in self._sup.slots:
            if slot.serving:
                status, text = await self._sup.ask(slot, "GET", "/config_dump")
                if status == 200:
                    dump: dict[str, Any] = json.loads(text)
                    return dump
        raise RuntimeError("no worker is serving")

    async def clusters(self) -> dict[str, Any]:
        """`{"workers": [{"index", "pid", "clusters": [...]}]}`: pools, breakers and counters are per worker."""

        async def one(slot: WorkerSlot) -> dict[str, Any]:
            entry: dict[str, Any] = {"index": slot.index, "pid": slot.pid}
            if not slot.serving:
                return {**entry, "error": slot.state, "clusters": []}
            status, text = await self._sup.ask(slot, "GET", "/clusters")
            if status != 200:
                return {**entry, "error": f"worker answered {status}", "clusters": []}
            clusters: list[Any] = json.loads(text)["clusters"]
            return {**entry, "clusters": clusters}

        workers = []
        for slot, answer in zip(self._sup.slots, await self._each(one), strict=True):
            if isinstance(answer, BaseException):
                answer = {"index": slot.index, "pid": slot.pid, "error": f"admin unreachable ({type(answer).__name__})",
                          "clusters": []}
            workers.append(answer)
        return {"workers": workers}

    async def metrics(self, accept: str | None) -> tuple[bytes, str]:
        async def one(slot: WorkerSlot) -> str | None:
            if not slot.serving:
                return None
            # OpenMetrics: it carries the workers' exemplars, which the merge keeps (merge.py).
            status, text = await self._sup.ask(slot, "GET", "/metrics", {"Accept": OPENMETRICS})
            return text if status == 200 else None

        sources = [Source(None, self._sup.metrics_text())]
        for slot, answer in zip(self._sup.slots, await self._each(one), strict=True):
            if isinstance(answer, str):
                sources.append(Source(str(slot.index), answer))
            elif isinstance(answer, BaseException):
                log.warning("metrics of worker %d unavailable: %s", slot.index, answer)
        return render_metrics(MergedMetrics(merge(sources)), accept)

    def request_shutdown(self) -> None:
        self._sup.request_shutdown()

    def log_level(self) -> str:
        return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()

    async def set_log_level(self, level: str) -> None:
        logging.getLogger().setLevel(level.upper())
        # Workers started from now on (restarts) inherit it through their command line.
        self._sup.log_level = level

        async def one(slot: WorkerSlot) -> None:
            if slot.serving:
                await self._sup.ask(slot, "POST", f"/logging?level={level}")

        for slot, answer in zip(self._sup.slots, await self._each(one), strict=True):
            if isinstance(answer, BaseException):
                log.warning("could not set the log level of worker %d: %s", slot.index, answer)




async def supervise(loaded: LoadedConfig, count: int, log_level: str, log_format: str = "text") -> int:
    """Run `count` workers behind one admin endpoint until SIGTERM/SIGINT/POST /shutdown; 0 after the drain."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="sidecar-"))  # mode 0700: only we reach the worker sockets
    supervisor = Supervisor(loaded, count, runtime_dir, log_level)
    supervisor.log_format = log_format
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.request_shutdown)
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)
    # Each worker writes its own access log lines: each reopens the file.
    loop.add_signal_handler(signal.SIGUSR1, supervisor.forward, signal.SIGUSR1)
    admin_address = loaded.config.admin.address
    supervisor.admin = AdminServer(SupervisorView(supervisor), admin_address.host, admin_address.port)
    try:
        # The admin endpoint first: a startup probe sees 503 "worker I starting", and a taken admin port
        # fails before any worker is spawned.
        try:
            admin_port = supervisor.admin_port = await supervisor.admin.start()
        except OSError as exc:
            print(f"sidecar: cannot start: admin {admin_address}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        error = await supervisor.start()
        if error is not None:
            print(f"sidecar: cannot start: {error}", file=sys.stderr)
            await supervisor.stop()
            return 1
        bound = supervisor.slots[0].bound or {}
        listeners = " ".join(f"{name}={host_port(host, port)}" for name, (host, port) in bound.items())
        pids = ",".join(str(slot.pid) for slot in supervisor.slots)
        log.info("listening: %s; admin %s; %d workers (pids %s)", listeners or "(no listeners)",
                 host_port(admin_address.host, admin_port), count, pids)
        supervisor.watch_config()
        await supervisor.wait_for_shutdown()
        log.info("draining %d workers (up to %gs)", count, supervisor.loaded.config.drain_timeout)
        await supervisor.stop()
        log.info("stopped")
        return 0
    finally:
        if supervisor.admin is not None:
            await supervisor.admin.stop()
        await supervisor.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)
