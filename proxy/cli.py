"""Command line: argv -> commands (run, validate, certs, demo, and the hidden worker). The only module
that reads argv or the environment.

Owns argument parsing, printing config problems as `FILE:LINE: key.path: message`, and exit codes.
Must not build runtime objects itself: `run` hands a loaded config to the runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from proxy.config.load import ConfigError, ConfigUnreadable, LoadedConfig, load_config, parse_config, read_config


def _load_or_report(path: str, unreadable_prefix: str = "", source: str | None = None) -> LoadedConfig | None:
    """The loaded config, or None after printing why not: every problem and a summary for an invalid file;
    one line (after `unreadable_prefix`) for a file that cannot be read, which has no lines to point at.
    `source`: read the bytes from there instead (a worker's snapshot), still named and resolved as `path`."""
    try:
        return load_config(path) if source is None else parse_config(read_config(source), path)
    except ConfigUnreadable as error:
        print(f"{unreadable_prefix}{error.problems[0]}", file=sys.stderr)
        return None
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        count = len(error.problems)
        print(f"{path}: invalid config: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    config = loaded.config
    routes = sum(len(listener.routes) for listener in config.listeners)
    print(
        f"{args.config}: valid: {len(config.listeners)} listener(s), {routes} route(s), "
        f"{len(config.clusters)} cluster(s); version {loaded.version_hash[:12]}"
    )
    return 0


def _workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'auto' (got {text!r})") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {count})")
    return count


def _worker_count(requested: int | str) -> int:
    """`auto` is one worker per CPU: SO_REUSEPORT workers scale the data plane across cores."""
    if requested == "auto":
        return os.cpu_count() or 1
    return int(requested)


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.app import unsupported_keys
    from proxy.runtime import run, setup_logging

    # CONTRACT: a config that cannot be read is a cause other than an invalid config: one line naming it.
    loaded = _load_or_report(args.config, unreadable_prefix="sidecar: cannot start: ")
    if loaded is None:
        return 1
    missing = unsupported_keys(loaded.config)
    if missing:
        for key in missing:
            print(f"{args.config}: not supported yet: {key}", file=sys.stderr)
        print(
            f"{args.config}: cannot run: {len(missing)} key(s) name features that do not exist yet",
            file=sys.stderr,
        )
        return 1
    workers = _worker_count(args.workers if args.workers is not None else loaded.config.workers)
    setup_logging(args.log_level, log_format=args.log_format)
    # The downward API's spec.nodeName (deploy/kubernetes): Kubernetes discovery reads the node's zone from it.
    return run(loaded, workers=workers, log_level=args.log_level, node_name=os.environ.get("NODE_NAME") or None,
               log_format=args.log_format)


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker of a multi-process sidecar; started by the supervisor (`run` with workers > 1) only."""
    from proxy.runtime import run_worker, setup_logging

    loaded = _load_or_report(args.config, source=args.snapshot)
    if loaded is None:
        return 1
    ports: dict[str, int] = {}
    for item in args.port:
        name, _, port = item.rpartition("=")
        ports[name] = int(port)
    setup_logging(args.log_level, tag=f"worker-{args.index}", log_format=args.log_format)
    return run_worker(loaded, args.admin_socket, ports, Path(args.snapshot) if args.snapshot else None,
                      os.environ.get("NODE_NAME") or None, args.stdout_fd)


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    import uvloop

    from proxy.config.load import ConfigError
    from proxy.demo import DEMO_CONFIG, run_demo
    from proxy.runtime import setup_logging

    setup_logging("warning")
    uvloop.install()
    try:
        return asyncio.run(run_demo(Path(args.config) if args.config else DEMO_CONFIG))
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sidecar demo: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1


def cmd_certs_init(args: argparse.Namespace) -> int:
    from proxy.security.certs import CertError, init_ca

    try:
        files = init_ca(Path(args.dir), args.trust_domain, force=args.force)
    except CertError as exc:
        print(f"sidecar certs: {exc}", file=sys.stderr)
        return 1
    print(f"CA written: {files.cert} (key {files.key}), trust domain {files.trust_domain}")
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from proxy.security.certs import CertError, issue

    try:
        files = issue(Path(args.dir), args.id, Path(args.out), days=args.days, dns_names=args.dns or None)
    except CertError as exc:
        print(f"sidecar certs: {exc}", file=sys.stderr)
        return 1
    print(f"certificate written: {files.cert} (key {files.key}) for {files.spiffe_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar", description="horizon-sidecar: a service-mesh sidecar proxy"
    )
    # metavar lists the public commands: `worker` is internal (the supervisor's way to start a worker).
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,validate,demo,certs}")

    run = commands.add_parser("run", help="run the sidecar")
    run.add_argument("-c", "--config", required=True, help="the YAML config file")
    run.add_argument("--workers", type=_workers_arg, help="override `workers:` (a number or 'auto')")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"],
                     help="the process log on stderr: text, or one JSON object per line")
    run.set_defaults(func=cmd_run)

    worker = commands.add_parser("worker")
    worker.add_argument("--config", required=True)
    worker.add_argument("--snapshot", help="read the config's bytes from here: the supervisor's approved copy")
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--admin-socket", required=True, help="serve this worker's admin view here")
    worker.add_argument("--port", action="append", default=[], help="NAME=PORT: bind listener NAME on PORT")
    worker.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    worker.add_argument("--log-format", default="text", choices=["text", "json"])
    worker.add_argument("--stdout-fd", type=int, help="the supervisor's stdout (the access log's `stdout`)")
    worker.set_defaults(func=cmd_worker)

    validate = commands.add_parser("validate", help="check a config file and print every problem")
    validate.add_argument("-c", "--config", required=True, help="the YAML config file")
    validate.set_defaults(func=cmd_validate)

    demo = commands.add_parser("demo", help="run two demo services behind the sidecar and print curl commands")
    demo.add_argument("-c", "--config", help="the demo config (default: config/demo.yaml)")
    demo.set_defaults(func=cmd_demo)

    certs = commands.add_parser("certs", help="development CA and workload certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_commands.add_parser("init", help="create a development CA")
    init.add_argument("--dir", required=True)
    init.add_argument("--trust-domain", default="cluster.local")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_certs_init)
    issue = certs_commands.add_parser("issue", help="issue a workload certificate with a SPIFFE ID")
    issue.add_argument("--dir", required=True, help="the CA directory")
    issue.add_argument("--id", required=True, help="spiffe://TRUST_DOMAIN/ns/NS/sa/SA")
    issue.add_argument("--out", required=True, help="output prefix: PREFIX.pem and PREFIX-key.pem")
    issue.add_argument("--days", type=int, default=90)
    issue.add_argument("--dns", action="append", help="an extra DNS SAN (repeatable)")
    issue.set_defaults(func=cmd_certs_issue)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
