"""The effective config as /config_dump shows it, with its secrets redacted by position.

Owns: turning a `LoadedConfig` into JSON-able data (`version_hash` first, durations in seconds, addresses
as 'host:port') and the list of places in that data whose values are secret. Secrets are found by where
they sit, never by what a header is called: a header value the config sets (`headers.request.set/add`,
`headers.response.set/add`) or matches (`match.headers`) may be a credential whatever its name
(`x-auth`, `x-upstream-pass`, `x-basic: Basic ...`), and so may a matched query value (`?token=...`).
Those are "[redacted]" unless `admin.config_dump` lists the name as public; names stay visible. Private
key paths (`tls.key`) and API key files (`api_key.keys_file`) are always redacted: the path says where
to look for the secret.

Must not: load or validate anything (that is `load.py`), or guess secrets from names: a place that can
hold a secret is listed in `SECRET_POSITIONS` (a unit test fails when the schema gains a string this
module has not classified).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Literal

from proxy.config.model import ConfigDumpConfig

if TYPE_CHECKING:
    # Only a type: load.py re-exports this module's names, so importing it at run time would be a cycle.
    from proxy.config.load import LoadedConfig

__all__ = ["REDACTED", "SECRET_POSITIONS", "redact", "redacted_dump"]

REDACTED: Final = "[redacted]"

# What a position holds: a header value (public when its header name is listed), a query parameter value
# (likewise), or a file that holds a secret (never shown).
Kind = Literal["header", "query", "file"]

# Where secrets sit in the dump. A path is a tuple of keys; "[]" stands for every item of a list and "*" for
# every key of a mapping whose keys the user chose (a header or query parameter name, which stays visible
# and decides whether the value is public).
_ROUTE = ("listeners", "[]", "routes", "[]")
_REQUEST, _RESPONSE = (*_ROUTE, "headers", "request"), (*_ROUTE, "headers", "response")
_HEADERS, _QUERY = (*_ROUTE, "match", "headers", "*"), (*_ROUTE, "match", "query", "*")
SECRET_POSITIONS: Final[tuple[tuple[tuple[str, ...], Kind], ...]] = (
    (("listeners", "[]", "tls", "key"), "file"),
    (("clusters", "[]", "tls", "key"), "file"),
    ((*_ROUTE, "api_key", "keys_file"), "file"),
    ((*_REQUEST, "set", "*"), "header"),
    ((*_REQUEST, "add", "*"), "header"),
    ((*_RESPONSE, "set", "*"), "header"),
    ((*_RESPONSE, "add", "*"), "header"),
    # A prefix or a regex gives the secret away as surely as an exact value does.
    ((*_HEADERS, "exact"), "header"),
    ((*_HEADERS, "prefix"), "header"),
    ((*_HEADERS, "regex"), "header"),
    ((*_QUERY, "exact"), "query"),
    ((*_QUERY, "prefix"), "query"),
    ((*_QUERY, "regex"), "query"),
)


def redacted_dump(loaded: LoadedConfig) -> dict[str, Any]:
    """The effective config as JSON-able data for /config_dump: `version_hash` first, durations in seconds,
    addresses as 'host:port', the values at `SECRET_POSITIONS` replaced by "[redacted]"."""
    config = loaded.config
    dumped: dict[str, Any] = config.model_dump(mode="json")
    # Addresses read better (and parse back) as the strings users wrote than as {host, port}.
    dumped["admin"]["address"] = str(config.admin.address)
    for listener_dump, listener in zip(dumped["listeners"], config.listeners, strict=True):
        listener_dump["address"] = str(listener.address)
    for cluster_dump, cluster in zip(dumped["clusters"], config.clusters, strict=True):
        if cluster.endpoints is not None:
            # "host:port" as written, or {address, weight, zone} when an endpoint has a weight or zone.
            cluster_dump["endpoints"] = [
                str(e.address) if e.weight == 1 and e.zone is None
                else {"address": str(e.address), "weight": e.weight, "zone": e.zone} for e in cluster.endpoints]
    redact(dumped, config.admin.config_dump)
    return {"version_hash": loaded.version_hash, **dumped}


def redact(dumped: dict[str, Any], settings: ConfigDumpConfig) -> None:
    """Replace the values at `SECRET_POSITIONS` in a config dump (`Config.model_dump(mode="json")`) by
    "[redacted]", in place, except header and query values whose name `settings` lists as public."""
    public: dict[Kind, frozenset[str]] = {
        # Header names compare lower-cased (the model lower-cases the public list); query names exactly.
        "header": frozenset(settings.public_headers),
        "query": frozenset(settings.public_query_params),
        "file": frozenset(),
    }
    for path, kind in SECRET_POSITIONS:
        for parent, key, name in _places(dumped, path, ""):
            shown = name.lower() if kind == "header" else name
            if kind == "file" or shown not in public[kind]:
                parent[key] = _redact(parent[key])


def _redact(value: Any) -> Any:
    # An absent optional value (a matcher's unused `exact`) stays null: there is no secret to hide, and
    # "[redacted]" would claim there was one.
    return None if value is None else REDACTED


def _places(node: Any, path: tuple[str, ...], name: str) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(mapping, key, user-chosen name on the way) for each place `path` reaches in `node`; the name is the
    key last matched by "*" ("" if none). Parts of the path that are absent or null are skipped."""
    step, rest = path[0], path[1:]
    if step == "[]":
        if isinstance(node, list):
            for item in node:
                yield from _places(item, rest, name)
        return
    if not isinstance(node, dict):
        return
    keys = [(key, key) for key in node] if step == "*" else [(step, name)] if step in node else []
    for key, chosen in keys:
        if rest:
            yield from _places(node[key], rest, chosen)
        else:
            yield node, key, chosen
