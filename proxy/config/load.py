"""Loading a config file: bytes -> YAML nodes -> plain data with a line map -> a validated `Config`.

Owns: reading the file, YAML 1.2 scalar resolution (only true/false are booleans; `on:` is the key "on"),
the size budgets that refuse YAML alias bombs and absurd nesting before anything is built, duplicate keys,
turning every pydantic and cross-check error into one `FILE:LINE: key.path: message` `Problem`, resolving
relative file paths against the config file's directory, and the version hash. The redacted dump served by
/config_dump is `redact.py`'s (re-exported here).

Thread-safe: a reload runs `parse_config` in a worker thread (app.py), so nothing here keeps state between
calls or touches the event loop.

Must not: define the schema (that is `model.py`), decide cross-references (that is `validate.py`), or touch
anything at run time (no sockets, no watchers, no logging setup): `sidecar validate`, start-up and reload
all call `load_config` and act on its result or its `ConfigError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.composer import Composer

from proxy.config.model import Config
from proxy.config.redact import REDACTED, redacted_dump
from proxy.config.validate import Issue, Loc, cross_check

__all__ = [
    "MAX_ALIAS_BYTES",
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "MAX_NODES",
    "REDACTED",
    "ConfigError",
    "ConfigUnreadable",
    "LoadedConfig",
    "Problem",
    "format_path",
    "load_config",
    "parse_config",
    "read_and_hash",
    "read_config",
    "redacted_dump",
]

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, printed as `FILE:LINE: key.path: message`."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        if not self.line:  # about the file as a whole (it cannot be read): no line to name
            return f"{self.file}: {self.message}"
        if self.path:
            return f"{self.file}:{self.line}: {self.path}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one config file (never just the first), ordered by line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems: list[Problem] = sorted(problems, key=lambda p: (p.line, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigUnreadable(ConfigError):
    """The file could not be read at all (missing, a directory, no permission): one problem, no line.
    `sidecar run` reports it as a start failure in one line rather than as an invalid config."""

    def __init__(self, file: str, reason: str) -> None:
        self.reason = reason
        super().__init__([Problem(file, 0, "", f"cannot read the config file: {reason}")])


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config and where it came from. `path` is absolute but not symlink-resolved, so a watcher
    on it follows a Kubernetes ConfigMap's symlink swap."""

    config: Config
    path: Path
    base_dir: Path
    version_hash: str
    source_text: str
    raw: bytes = b""  # the file's bytes as read, which `version_hash` hashes (a supervisor hands them on)


def format_path(loc: Loc) -> str:
    """('listeners', 1, 'routes', 0, 'cluster') -> 'listeners[1].routes[0].cluster'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate one config file; raise `ConfigError` listing every problem."""
    return parse_config(read_config(path), path)


def read_config(path: str | Path) -> bytes:
    """The file's bytes (a reload hashes them before deciding whether to parse); `ConfigUnreadable` if
    they cannot be read."""
    try:
        return Path(os.path.abspath(path)).read_bytes()
    except OSError as exc:
        raise ConfigUnreadable(str(path), exc.strerror or str(exc)) from None


def read_and_hash(path: str | Path) -> tuple[bytes, str]:
    """The file's bytes and their hash (the `version_hash` they would load as), for a reload to compare
    before it parses anything."""
    raw = read_config(path)
    return raw, _content_hash(raw)


def _content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def parse_config(raw: bytes, path: str | Path) -> LoadedConfig:
    """Parse and validate `raw`, the content of the file at `path` (which names it in problems and anchors
    its relative paths); raise `ConfigError` listing every problem."""
    label = str(path)
    absolute = Path(os.path.abspath(path))
    base_dir = absolute.parent
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(label, line, "", "the config file is not UTF-8 text")]) from None
    config = _build(text, label, base_dir)
    return LoadedConfig(
        config=config,
        path=absolute,
        base_dir=base_dir,
        version_hash=_content_hash(raw),
        source_text=text,
        raw=raw,
    )


# --- YAML 1.2 ---------------------------------------------------------------------------------------------


# Budgets on what a config may expand to. They are checked while the YAML is composed into nodes, where an
# alias is still a single node pointing at its anchor's, so composing costs what the file's bytes cost; a file
# over budget is refused there, before a single dict is built or validated. A 3000-route config is about
# 120k nodes, all written out; nested aliases (a "billion laughs" bomb) are what turns a few hundred bytes
# into millions of nodes, hence the separate, lower budget for what aliases add.
MAX_NODES: Final = 1_000_000  # YAML nodes after alias expansion: about 25,000 routes
MAX_ALIAS_NODES: Final = 100_000  # of those, nodes copied in by aliases (each *alias adds its anchor's size)
# Bytes of scalar text copied in by aliases: one alias of a long scalar is one node, but each copy is built
# (header values, say) and sent on every request; 30,000 aliases of a 20 KB value are 600 MB.
MAX_ALIAS_BYTES: Final = 4 * 1024 * 1024
MAX_DEPTH: Final = 64  # levels of nesting, aliases expanded (the full example needs 9, scalars included)


class _Yaml12Resolver(yaml.resolver.BaseResolver):
    """Implicit scalar types of YAML 1.2 core: PyYAML's 1.1 rules would turn `on:` into the boolean True,
    `1:30` into 90 and `2024-01-01` into a date."""


_Yaml12Resolver.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?i:true|false)$", list("tTfF")),
    # int before float: both claim digits, and the first matching resolver wins.
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
):
    _Yaml12Resolver.add_implicit_resolver(_tag, re.compile(_pattern), _first)


class _OverBudget(Exception):
    """The file goes past one of the budgets above at `line`: refused whole, nothing built."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _BudgetComposer(Composer):
    """PyYAML's composer (events -> nodes, aliases resolved to their anchor's node), measuring as it goes:
    each node's size and height with aliases expanded, so an alias's cost is known the moment it appears
    (its anchor is complete by then) and the first alias, node or level over budget is refused at its line."""

    def __init__(self) -> None:
        super().__init__()
        self._nodes = 0  # so far, aliases expanded
        self._alias_nodes = 0  # so far, copied in by aliases
        self._alias_bytes = 0  # scalar text so far copied in by aliases
        self._depth = 0
        # Per node being composed (the bottom entry stands for the document): [size, height, scalar bytes
        # below it].
        self._open: list[list[int]] = [[0, 0, 0]]
        # anchor -> its node's (size, height, scalar bytes), once complete
        self._measured: dict[Any, tuple[int, int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]  # the event source is mixed in (_Loader)
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            # An alias of a node still being composed (its own ancestor) is not measured yet: counted as one
            # node here, reported as a recursive alias by the builder. An undefined one: the base raises.
            size, height, text = self._measured.get(event.anchor, (1, 1, 0))
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _OverBudget(line, f"alias *{event.anchor} expands the config past the limit of "
                                        f"{MAX_ALIAS_NODES} YAML nodes copied in by aliases (nested aliases multiply)")
            self._alias_bytes += text
            if self._alias_bytes > MAX_ALIAS_BYTES:
                raise _OverBudget(line, f"alias *{event.anchor} expands the config past the limit of "
                                        f"{MAX_ALIAS_BYTES} bytes of text copied in by aliases")
            self._count(size, line)
            if self._depth + height > MAX_DEPTH:
                raise _OverBudget(line, f"alias *{event.anchor} nests the config deeper than the limit of "
                                        f"{MAX_DEPTH} levels")
            self._close(size, height, text)
            return super().compose_node(parent, index)
        self._count(1, line)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _OverBudget(line, f"nested deeper than the limit of {MAX_DEPTH} levels")
        self._open.append([0, 0, 0])
        node = super().compose_node(parent, index)
        below, height_below, text_below = self._open.pop()
        self._depth -= 1
        own_text = len(event.value) if isinstance(event, yaml.ScalarEvent) else 0
        self._close(below + 1, height_below + 1, text_below + own_text)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._measured[anchor] = (below + 1, height_below + 1, text_below + own_text)
        return node

    def _count(self, size: int, line: int) -> None:
        self._nodes += size
        if self._nodes > MAX_NODES:
            raise _OverBudget(line, f"the config has more than the limit of {MAX_NODES} YAML nodes "
                                    "(aliases expanded)")

    def _close(self, size: int, height: int, text: int) -> None:
        """A child of the innermost open node is complete: add it to that node's size, height and text."""
        parent = self._open[-1]
        parent[0] += size
        if height > parent[1]:
            parent[1] = height
        parent[2] += text


# libyaml scans and parses in C, six times faster than PyYAML's Python scanner (a 3000-route config: 0.4 s
# instead of 2.5 s); composing stays Python, for the budgets. PyYAML without libyaml falls back to Python.
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Loader(_BudgetComposer, CParser, _Yaml12Resolver):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _BudgetComposer.__init__(self)
            _Yaml12Resolver.__init__(self)

else:  # pragma: no cover - the wheels on PyPI ship libyaml

    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,  # type: ignore[no-redef]
                  _BudgetComposer, _Yaml12Resolver):
        def __init__(self, text: str) -> None:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _BudgetComposer.__init__(self)
            _Yaml12Resolver.__init__(self)

        def dispose(self) -> None:
            yaml.parser.Parser.dispose(self)


def _compose(text: str) -> yaml.Node | None:
    """One YAML document -> its node graph (None when empty), within the budgets."""
    loader = _Loader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


class _Lines(NamedTuple):
    # A tuple, not a dataclass: one is made per YAML node, and a frozen dataclass's __init__ costs 5x more.
    key: int  # line of the key introducing the value (the item's own line for list items)
    value: int  # line where the value starts
    collection: bool


class _LineMap:
    """Key path -> lines, so any error located by key path can name a line."""

    def __init__(self) -> None:
        self._lines: dict[Loc, _Lines] = {}

    def record(self, loc: Loc, key_line: int, node: yaml.Node) -> None:
        self._lines[loc] = _Lines(key_line, node.start_mark.line + 1, not isinstance(node, yaml.ScalarNode))

    def _nearest(self, loc: Loc) -> _Lines:
        while loc not in self._lines and loc:
            loc = loc[:-1]
        return self._lines.get(loc, _Lines(1, 1, True))

    def key_line(self, loc: Loc) -> int:
        return self._nearest(loc).key

    def value_line(self, loc: Loc) -> int:
        """A scalar is reported where it is written; a mapping or list at the key that introduces it (its
        first child's line would point at an innocent key)."""
        found = self._nearest(loc)
        return found.key if found.collection else found.value


class _Builder:
    """Composed YAML nodes -> plain Python data, recording lines and collecting (not raising) problems so
    that one run reports them all."""

    def __init__(self) -> None:
        self.lines = _LineMap()
        self.problems: list[tuple[int, Loc, str]] = []
        self._active: set[int] = set()

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.ScalarNode):  # a leaf: cannot contain itself
            return self._scalar(node, loc)
        if id(node) in self._active:  # an alias of one of its own ancestors
            self.problems.append((node.start_mark.line + 1, loc, "recursive YAML alias"))
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            assert isinstance(node, yaml.SequenceNode)
            items = []
            for index, item in enumerate(node.value):
                item_loc = (*loc, index)
                self.lines.record(item_loc, item.start_mark.line + 1, item)
                items.append(self.build(item, item_loc))
            return items
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append((key_line, loc, "a key must be a plain string"))
                continue
            # Keys are the text as written ("on", "503"), never resolved to booleans or numbers.
            key = str(key_node.value)
            if key in first_line:
                message = f"duplicate key (first at line {first_line[key]})"
                self.problems.append((key_line, (*loc, key), message))
                continue
            first_line[key] = key_line
            value_loc = (*loc, key)
            self.lines.record(value_loc, key_line, value_node)
            out[key] = self.build(value_node, value_loc)
        return out

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        text: str = node.value
        tag = node.tag
        try:
            if tag == "tag:yaml.org,2002:str":
                return text
            if tag == "tag:yaml.org,2002:null":
                return None
            if tag == "tag:yaml.org,2002:bool":
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                return text.lower() == "true"
            if tag == "tag:yaml.org,2002:int":
                digits = text.lstrip("+-")
                sign = -1 if text.startswith("-") else 1
                if digits.startswith("0o"):
                    return sign * int(digits[2:], 8)
                if digits.startswith("0x"):
                    return sign * int(digits[2:], 16)
                return sign * int(digits, 10)
            if tag == "tag:yaml.org,2002:float":
                lowered = text.lower()
                if lowered.endswith(".inf"):
                    return float("-inf") if lowered.startswith("-") else float("inf")
                if lowered == ".nan":
                    return float("nan")
                return float(text)
        except ValueError:
            kind = tag.rsplit(":", 1)[-1]
            self.problems.append((node.start_mark.line + 1, loc, f"{text!r} is not a valid {kind}"))
            return None
        self.problems.append((node.start_mark.line + 1, loc, f"unsupported YAML tag {tag}"))
        return None


# --- validation and error mapping -------------------------------------------------------------------------


def _build(text: str, label: str, base_dir: Path) -> Config:
    try:
        root = _compose(text)
    except _OverBudget as exc:
        raise ConfigError([Problem(label, exc.line, "", exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([Problem(label, line, "", f"YAML syntax error: {detail}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(label, 1, "", f"YAML syntax error: {exc}")]) from None
    if root is None:
        raise ConfigError([Problem(label, 1, "", "the config is empty: expected a mapping of settings")])
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            [Problem(label, root.start_mark.line + 1, "", "the top level must be a mapping of settings")])

    builder = _Builder()
    builder.lines.record((), root.start_mark.line + 1, root)
    data = builder.build(root, ())
    problems = [Problem(label, line, format_path(loc), msg) for line, loc, msg in builder.problems]
    lines = builder.lines

    def at_value(issue: Issue) -> Problem:
        return Problem(label, lines.value_line(issue.loc), format_path(issue.loc), issue.message)

    try:
        # strict: a YAML `true` is not the integer 1, nor 1 the string "1".
        config = Config.model_validate(data, strict=True)
    except ValidationError as exc:
        trimmed = [(_trim(error["loc"], data, error["type"]), error) for error in exc.errors()]
        problems += _schema_problems(trimmed, lines, label)
        # Cross-references are still checked on what did validate, so one run shows everything.
        salvaged = _salvage(data, [loc for (loc, _), _ in trimmed])
        if salvaged is not None:
            partial, remap, dropped_clusters, admin_known = salvaged
            issues = cross_check(_resolve_paths(partial, base_dir), base_dir,
                                 assume_clusters=dropped_clusters, check_admin=admin_known)
            problems += [at_value(Issue(remap(issue.loc), issue.message)) for issue in issues]
        raise ConfigError(problems) from None

    config = _resolve_paths(config, base_dir)
    problems += [at_value(issue) for issue in cross_check(config, base_dir)]
    if problems:
        raise ConfigError(problems)
    return config


# Keys the model takes from inside another key's mapping: key -> the key the user writes it under.
_MOVED_KEYS = {"ring_hash": "load_balancer"}


def _trim(loc: tuple[int | str, ...], data: Any, kind: str) -> tuple[Loc, bool]:
    """Pydantic's loc with union-branch tags ('int', "literal['auto']") dropped: only real keys and indices
    remain. Also says whether a tag was dropped (errors from branches of one union are merged)."""
    out: list[str | int] = []
    current = data
    skipped = False
    for position, part in enumerate(loc):
        # A key a before-validator moved up out of its mapping (`load_balancer: {ring_hash: ...}` becomes the
        # cluster's `ring_hash`): point at where the user wrote it.
        moved_from = _MOVED_KEYS.get(part) if isinstance(part, str) and isinstance(current, dict) else None
        if moved_from is not None and part not in current and isinstance(current.get(moved_from), dict):
            current = current[moved_from]
            out.append(moved_from)
        in_dict = isinstance(current, dict) and isinstance(part, str) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
            out.append(part)
        elif kind == "missing" and position == len(loc) - 1:
            out.append(part)
        else:
            skipped = True
    return tuple(out), skipped


_TYPE_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
}


def _message(error: ErrorDetails) -> tuple[str, bool]:
    """A short human message, and whether the offending input is worth showing after it."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value error|Assertion failed), ", "", error["msg"]), False
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind], kind not in ("extra_forbidden", "missing")
    bounds = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}", True
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}", True
    return re.sub(r"^Input should be ", "must be ", error["msg"]), True


def _show(value: Any) -> str | None:
    """An input as the user wrote it in YAML, or None when it is too big to be worth echoing."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else None
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else None


def _schema_problems(trimmed: list[tuple[tuple[Loc, bool], ErrorDetails]], lines: _LineMap,
                     label: str) -> list[Problem]:
    merged: dict[Loc, tuple[list[str], bool, Any, str]] = {}  # loc -> messages, show input?, input, type
    problems: list[Problem] = []
    for (loc, from_union), error in trimmed:
        message, show = _message(error)
        if from_union and loc in merged:
            # The branches of `int | 'auto'` each complain; say it once: "must be an integer or 'auto'".
            messages = merged[loc][0]
            if message not in messages:
                messages.append(message)
            continue
        if from_union:
            merged[loc] = ([message], show, error.get("input"), error["type"])
            continue
        problems.append(_problem(label, lines, loc, error["type"], message, show, error.get("input")))
    for loc, (messages, show, value, kind) in merged.items():
        text = messages[0] + "".join(" or " + m.removeprefix("must be ") for m in messages[1:])
        problems.append(_problem(label, lines, loc, kind, text, show, value))
    return problems


def _problem(label: str, lines: _LineMap, loc: Loc, kind: str, message: str, show: bool,
             value: Any) -> Problem:
    if kind == "extra_forbidden":
        line = lines.key_line(loc)
    elif kind == "missing":
        line = lines.key_line(loc[:-1])  # the key is absent: point at the mapping that lacks it
    else:
        line = lines.value_line(loc)
    shown = _show(value) if show else None
    if shown is not None:
        message = f"{message} (got {shown})"
    return Problem(label, line, format_path(loc), message)


# Keys a list item cannot lose and stay meaningful: an error on one drops the whole item.
_ESSENTIAL = {
    "listeners": frozenset({"name", "address"}),
    "routes": frozenset({"name", "cluster", "split"}),
    "clusters": frozenset({"name", "endpoints", "discovery"}),
}


@dataclass
class _Pruning:
    """What to leave out of the raw data so that the rest validates."""

    top: set[str] = field(default_factory=set)
    listeners: set[int] = field(default_factory=set)
    routes: set[tuple[int, int]] = field(default_factory=set)
    clusters: set[int] = field(default_factory=set)
    keys: dict[Loc, set[str]] = field(default_factory=dict)  # item loc -> its keys to drop

    def item(self, drop: set[Any], item: Any, loc: Loc, key: Any, fine: bool, kind: str) -> None:
        # Finely, only the failing key of an item goes (its other keys stay checkable); coarsely, the item.
        if fine and isinstance(key, str) and key not in _ESSENTIAL[kind]:
            self.keys.setdefault(loc, set()).add(key)
        else:
            drop.add(item)

    def without_keys(self, value: Any, loc: Loc) -> Any:
        """The list item at `loc` without the keys `item` chose to drop from it (a copy when there are any)."""
        dropped_keys = self.keys.get(loc, set())
        return {k: v for k, v in value.items() if k not in dropped_keys} if isinstance(value, dict) else value


def _salvage(data: Any, bad: list[Loc]) -> tuple[Config, Callable[[Loc], Loc], frozenset[str], bool] | None:
    """The config without the keys, routes, listeners and clusters that failed the schema, so that
    cross-references can still be checked. Returns it with a function mapping its key paths back to the
    file's (dropped list items shift indices), the names of dropped clusters (routes naming them are not
    reported as dangling) and whether `admin` survived. None when even that does not validate."""
    if not isinstance(data, dict) or not all(bad):
        return None
    for fine in (True, False):
        pruning = _Pruning()
        for loc in bad:
            top = loc[0]
            rest = (*loc[2:], None, None)
            if top == "listeners" and len(loc) >= 2 and isinstance(loc[1], int):
                index = loc[1]
                if rest[0] == "routes" and isinstance(rest[1], int):
                    pruning.item(pruning.routes, (index, rest[1]), loc[:4], rest[2], fine, "routes")
                else:
                    pruning.item(pruning.listeners, index, loc[:2], rest[0], fine, "listeners")
            elif top == "clusters" and len(loc) >= 2 and isinstance(loc[1], int):
                pruning.item(pruning.clusters, loc[1], loc[:2], rest[0], fine, "clusters")
            else:
                pruning.top.add(str(top))
        result = _prune(data, pruning)
        if result is not None:
            return result
    return None


def _prune(data: dict[str, Any], pruning: _Pruning,
           ) -> tuple[Config, Callable[[Loc], Loc], frozenset[str], bool] | None:
    """`_salvage`'s result for one `pruning` of the raw data, or None when what is left does not validate."""
    pruned = {key: value for key, value in data.items() if key not in pruning.top}
    listener_map: list[int] = []
    route_maps: list[list[int]] = []
    if isinstance(pruned.get("listeners"), list):
        pruned["listeners"], listener_map, route_maps = _prune_listeners(pruned["listeners"], pruning)
    cluster_map: list[int] = []
    dropped: set[str] = set()
    if isinstance(pruned.get("clusters"), list):
        pruned["clusters"], cluster_map, dropped = _prune_clusters(pruned["clusters"], pruning)
    try:
        partial = Config.model_validate(pruned, strict=True)
    except ValidationError:
        return None
    remap = _IndexMap(listener_map, route_maps, cluster_map).remap
    return partial, remap, frozenset(dropped), "admin" not in pruning.top


def _prune_listeners(listeners: list[Any], pruning: _Pruning) -> tuple[list[Any], list[int], list[list[int]]]:
    """The listeners (and their routes) `pruning` keeps, with the file index of each kept listener and,
    per kept listener, the file index of each kept route."""
    kept_listeners = []
    listener_map: list[int] = []
    route_maps: list[list[int]] = []
    for index, raw_listener in enumerate(listeners):
        if index in pruning.listeners:
            continue
        listener = pruning.without_keys(raw_listener, ("listeners", index))
        kept_routes: list[int] = []
        if isinstance(listener, dict) and isinstance(listener.get("routes"), list):
            routes = listener["routes"]
            kept_routes = [i for i in range(len(routes)) if (index, i) not in pruning.routes]
            where = ("listeners", index, "routes")
            listener["routes"] = [pruning.without_keys(routes[i], (*where, i)) for i in kept_routes]
        kept_listeners.append(listener)
        listener_map.append(index)
        route_maps.append(kept_routes)
    return kept_listeners, listener_map, route_maps


def _prune_clusters(clusters: list[Any], pruning: _Pruning) -> tuple[list[Any], list[int], set[str]]:
    """The clusters `pruning` keeps, the file index of each, and the names of those it dropped."""
    kept_clusters = []
    cluster_map: list[int] = []
    dropped: set[str] = set()
    for index, cluster in enumerate(clusters):
        if index in pruning.clusters:
            if isinstance(cluster, dict) and isinstance(cluster.get("name"), str):
                dropped.add(cluster["name"])
            continue
        kept_clusters.append(pruning.without_keys(cluster, ("clusters", index)))
        cluster_map.append(index)
    return kept_clusters, cluster_map, dropped


@dataclass(frozen=True)
class _IndexMap:
    """Where the items a pruned config kept sit in the file: dropped list items shift later indices."""

    listeners: list[int]  # pruned listener index -> file index
    routes: list[list[int]]  # pruned listener index -> (pruned route index -> file index)
    clusters: list[int]  # pruned cluster index -> file index

    def remap(self, loc: Loc) -> Loc:
        """A key path in the pruned config -> the same key's path in the file."""
        if len(loc) >= 2 and loc[0] == "listeners" and isinstance(loc[1], int):
            new = loc[1]
            if len(loc) >= 4 and loc[2] == "routes" and isinstance(loc[3], int):
                return ("listeners", self.listeners[new], "routes", self.routes[new][loc[3]], *loc[4:])
            return ("listeners", self.listeners[new], *loc[2:])
        if len(loc) >= 2 and loc[0] == "clusters" and isinstance(loc[1], int):
            return ("clusters", self.clusters[loc[1]], *loc[2:])
        return loc


# --- paths ------------------------------------------------------------------------------------------------


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    """Relative file paths resolve against the config file's directory, not the process's cwd (the
    sidecar may be started from anywhere)."""

    def absolute(value: str | None) -> str | None:
        return None if value is None else str(base_dir / value)  # an absolute value stays as it is

    listeners = [
        listener if listener.tls is None else listener.model_copy(update={"tls": listener.tls.model_copy(
            update={"cert": absolute(listener.tls.cert), "key": absolute(listener.tls.key),
                    "ca": absolute(listener.tls.ca)})})
        for listener in config.listeners
    ]
    listeners = [
        listener.model_copy(update={"routes": [
            route if route.api_key is None else route.model_copy(update={"api_key": route.api_key.model_copy(
                update={"keys_file": absolute(route.api_key.keys_file)})})
            for route in listener.routes]})
        if any(route.api_key is not None for route in listener.routes) else listener
        for listener in listeners
    ]
    clusters = [
        cluster if cluster.tls is None else cluster.model_copy(update={"tls": cluster.tls.model_copy(
            update={"cert": absolute(cluster.tls.cert), "key": absolute(cluster.tls.key),
                    "ca": absolute(cluster.tls.ca)})})
        for cluster in config.clusters
    ]
    update: dict[str, Any] = {"listeners": listeners, "clusters": clusters}
    log = config.access_log
    if log is not None and log.path not in ("stdout", "stderr"):
        update["access_log"] = log.model_copy(update={"path": absolute(log.path)})
    return config.model_copy(update=update)
