"""Cross-reference checks on an already schema-valid `Config`: what no single field can know alone.

Owns: routes and splits naming existing clusters, unique listener / route / cluster names, listener and
admin addresses that do not collide, readable TLS files, per-try timeouts that fit in the route timeout,
header rules and rewrites that their owners (proxy.filters) can compile, and caller identities used only
where a listener can have them (`match.peer_identity`, `rate_limit.key: peer_identity`).
Each finding is an `Issue` located by key path; `load.py` turns the path into a file line.

Must not: parse YAML, know line numbers, repeat per-field checks (those live in `model.py`), or open
anything but the TLS files it checks for readability.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import NamedTuple

from proxy.config.model import PEER_IDENTITY_KEY, Address, Config

__all__ = ["Issue", "Loc", "cross_check"]

Loc = tuple[str | int, ...]

# Binding one of these on a port takes the port for every local address too.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


class Issue(NamedTuple):
    """A cross-reference problem at a key path, e.g. (('listeners', 1, 'routes', 0, 'cluster'), '...')."""

    loc: Loc
    message: str


def cross_check(config: Config, base_dir: str | Path, *, assume_clusters: Collection[str] = (),
                check_admin: bool = True) -> list[Issue]:
    """Every cross-reference problem of `config`, in file order of the checks.

    Relative TLS paths resolve against `base_dir`. `assume_clusters` names clusters that exist in the file
    but failed the schema, and `check_admin=False` says `admin` did (the loader checks a partial config so
    that one run reports schema and cross-reference problems together, without false alarms).
    """
    base = Path(base_dir)
    issues: list[Issue] = []
    issues += _unique_names(config)
    issues += _cluster_references(config, set(assume_clusters))
    issues += _addresses(config, check_admin)
    issues += _tls_files(config, base)
    issues += _timeouts(config)
    issues += _route_rules(config)
    issues += _peer_identity_uses(config)
    return issues


def _peer_identity_uses(config: Config) -> Iterator[Issue]:
    # A caller has an identity only on a TLS listener that verifies client certificates (`tls.ca`): elsewhere
    # a `match.peer_identity` never holds and a `rate_limit.key: peer_identity` puts everyone in one bucket.
    for index, listener in enumerate(config.listeners):
        if listener.tls is not None and listener.tls.ca is not None:
            continue
        for route_index, route in enumerate(listener.routes):
            where: Loc = ("listeners", index, "routes", route_index)
            why = "this listener verifies no client certificates (it needs tls with ca), so callers have no identity"
            if route.match.peer_identity is not None:
                yield Issue((*where, "match", "peer_identity"), why)
            if route.rate_limit is not None and route.rate_limit.key == PEER_IDENTITY_KEY:
                yield Issue((*where, "rate_limit", "key"), why)


def _route_rules(config: Config) -> Iterator[Issue]:
    # Header rules and rewrites are compiled by their owners; compiling them here too means `validate`
    # refuses what `run` would refuse, with the file and line, instead of failing at start-up.
    from proxy.filters.headers import HeaderRewriter
    from proxy.filters.rewrite import Rewriter

    for index, listener in enumerate(config.listeners):
        for route_index, route in enumerate(listener.routes):
            where: Loc = ("listeners", index, "routes", route_index)
            if route.headers is not None:
                for side in ("request", "response"):
                    ops = getattr(route.headers, side)
                    try:
                        HeaderRewriter.from_config(ops)
                    except ValueError as exc:
                        yield Issue((*where, "headers", side), str(exc))
            try:
                Rewriter.from_config(route.rewrite, route.match)
            except ValueError as exc:
                yield Issue((*where, "rewrite"), str(exc))


def _unique_names(config: Config) -> Iterator[Issue]:
    # Names label metrics and pick clusters: two things with one name would silently merge or shadow.
    seen: dict[str, int] = {}
    for index, listener in enumerate(config.listeners):
        if listener.name in seen:
            yield Issue(("listeners", index, "name"),
                        f"duplicate listener name {listener.name!r} (also listeners[{seen[listener.name]}])")
        else:
            seen[listener.name] = index
        routes: dict[str, int] = {}
        for route_index, route in enumerate(listener.routes):
            if route.name in routes:
                yield Issue(("listeners", index, "routes", route_index, "name"),
                            f"duplicate route name {route.name!r} in this listener"
                            f" (also routes[{routes[route.name]}])")
            else:
                routes[route.name] = route_index
    clusters: dict[str, int] = {}
    for index, cluster in enumerate(config.clusters):
        if cluster.name in clusters:
            yield Issue(("clusters", index, "name"),
                        f"duplicate cluster name {cluster.name!r} (also clusters[{clusters[cluster.name]}])")
        else:
            clusters[cluster.name] = index


def _cluster_references(config: Config, assumed: set[str]) -> Iterator[Issue]:
    known = {cluster.name for cluster in config.clusters} | assumed
    for index, listener in enumerate(config.listeners):
        for route_index, route in enumerate(listener.routes):
            where: Loc = ("listeners", index, "routes", route_index)
            if route.cluster is not None and route.cluster not in known:
                yield Issue((*where, "cluster"), f"no cluster named {route.cluster!r}")
            for split_index, entry in enumerate(route.split or ()):
                if entry.cluster not in known:
                    yield Issue((*where, "split", split_index, "cluster"),
                                f"no cluster named {entry.cluster!r}")


def _overlaps(a: Address, b: Address) -> bool:
    # Port 0 asks the kernel for a free port: never a collision. With SO_REUSEPORT (used for workers) two
    # listeners on one address would both bind and silently share traffic, so refuse it here.
    if a.port == 0 or a.port != b.port:
        return False
    return a.host.lower() == b.host.lower() or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS


def _addresses(config: Config, check_admin: bool) -> Iterator[Issue]:
    for index, listener in enumerate(config.listeners):
        for earlier in range(index):
            other = config.listeners[earlier].address
            if _overlaps(listener.address, other):
                yield Issue(("listeners", index, "address"),
                            f"address {listener.address} collides with listeners[{earlier}]'s {other}")
                break
        if check_admin and _overlaps(listener.address, config.admin.address):
            yield Issue(("listeners", index, "address"),
                        f"address {listener.address} collides with admin.address {config.admin.address}")


def _tls_files(config: Config, base: Path) -> Iterator[Issue]:
    sections: list[tuple[Loc, dict[str, str | None]]] = []
    for index, listener in enumerate(config.listeners):
        if listener.tls is not None:
            tls = listener.tls
            sections.append((("listeners", index, "tls"), {"cert": tls.cert, "key": tls.key, "ca": tls.ca}))
    for index, cluster in enumerate(config.clusters):
        if cluster.tls is not None:
            ctls = cluster.tls
            sections.append((("clusters", index, "tls"), {"cert": ctls.cert, "key": ctls.key, "ca": ctls.ca}))
    for where, files in sections:
        for key, name in files.items():
            if name is None:
                continue
            path = base / name
            try:
                # Opening (not os.access) is the honest test: it is what the TLS context will do.
                with path.open("rb") as handle:
                    handle.read(1)
            except OSError as exc:
                yield Issue((*where, key), f"unreadable TLS file: {path}: {exc.strerror or exc}")


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _timeouts(config: Config) -> Iterator[Issue]:
    for index, listener in enumerate(config.listeners):
        for route_index, route in enumerate(listener.routes):
            retries = route.retries
            if route.timeout is None or retries is None or retries.per_try_timeout is None:
                continue
            if retries.per_try_timeout > route.timeout:
                yield Issue(
                    ("listeners", index, "routes", route_index, "retries", "per_try_timeout"),
                    f"per_try_timeout {_seconds(retries.per_try_timeout)} is longer than the route timeout "
                    f"{_seconds(route.timeout)}: the route timeout would always fire first")
